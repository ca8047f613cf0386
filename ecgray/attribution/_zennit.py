"""Import Zennit even where torchvision cannot be loaded.

Why this exists
---------------
``zennit/__init__.py`` imports ``zennit.torchvision``, which does::

    from torchvision.models.resnet import Bottleneck, BasicBlock

only to build canonizers for *torchvision's* ResNets (``isinstance`` checks).
ecgray never uses those canonizers, but the import is unconditional. In this
environment torch is the CPU build and the PyPI torchvision wheel cannot load
beside it (``RuntimeError: operator torchvision::nms does not exist`` while
registering its C++ ops), so a plain ``import zennit`` fails.

What :func:`import_zennit` does
-------------------------------
1. ``import zennit``; if it works (torchvision is fine, or zennit was already
   imported) that module is returned, nothing else happens.
2. If it fails, and the failure is torchvision's (``import torchvision``
   itself raises), the half-imported ``torchvision`` / ``torchvision.*``
   entries are removed from :data:`sys.modules`, a minimal stub package is
   installed -- ``torchvision``, ``torchvision.models`` and
   ``torchvision.models.resnet`` with placeholder ``Bottleneck`` /
   ``BasicBlock`` :class:`torch.nn.Module` subclasses, every stub module
   carrying ``__ecgray_stub__ = True`` -- and zennit is imported again.
3. The stub entries are then taken out of :data:`sys.modules` again (unless
   ``keep_stub=True``), so that any later ``import torchvision`` elsewhere
   fails exactly as it did before instead of silently getting a stub without
   ``transforms``/``ops``. zennit keeps its references to the placeholder
   classes; ``zennit.torchvision.ResNetBottleneck.__ecgray_stub__`` is ``True``
   there, and :func:`torchvision_is_stubbed` reports it.

The placeholders are never instantiated by ecgray, and no instance of them can
exist in a model, so zennit's torchvision ResNet canonizers simply match
nothing; every other part of zennit (rules, composites, the generic
canonizers, :mod:`zennit.layer`) is unaffected.

Only :mod:`ecgray.attribution.lrp.canonizers` calls this (imported lazily by
:mod:`ecgray.attribution.lrp` when a method is built), so importing ecgray (or
running the Captum methods) never pays for zennit.
"""
from __future__ import annotations

import importlib
import sys
import threading
import types
from types import ModuleType

_LOCK = threading.Lock()
_STUB_NAMES = ("torchvision", "torchvision.models", "torchvision.models.resnet")
_STUBBED = False


def _drop_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _torchvision_error() -> BaseException | None:
    """The exception ``import torchvision`` raises here, or ``None`` if it imports."""
    try:
        importlib.import_module("torchvision.models.resnet")
    except Exception as exc:  # noqa: BLE001 - RuntimeError/ImportError/OSError all seen in the wild
        return exc
    return None


def _make_stub() -> dict[str, ModuleType]:
    from torch import nn

    class Bottleneck(nn.Module):
        """Placeholder for ``torchvision.models.resnet.Bottleneck`` (ecgray stub; never instantiated)."""

        __ecgray_stub__ = True

    class BasicBlock(nn.Module):
        """Placeholder for ``torchvision.models.resnet.BasicBlock`` (ecgray stub; never instantiated)."""

        __ecgray_stub__ = True

    mods: dict[str, ModuleType] = {}
    for name in _STUB_NAMES:
        mod = types.ModuleType(name, "ecgray stub: the real torchvision cannot be imported here")
        mod.__ecgray_stub__ = True
        if name != "torchvision.models.resnet":
            mod.__path__ = []  # packages, so that ``import torchvision.models.resnet`` resolves
        mods[name] = mod
    resnet = mods["torchvision.models.resnet"]
    Bottleneck.__module__ = BasicBlock.__module__ = resnet.__name__
    resnet.Bottleneck, resnet.BasicBlock = Bottleneck, BasicBlock
    mods["torchvision"].models = mods["torchvision.models"]
    mods["torchvision.models"].resnet = resnet
    return mods


def import_zennit(*, keep_stub: bool = False) -> ModuleType:
    """Return the ``zennit`` module, working around a broken torchvision (see module docstring).

    ``keep_stub=True`` leaves the stub ``torchvision`` package in
    :data:`sys.modules` after zennit is imported (default: removed again).
    Raises the original ``ImportError``/``RuntimeError`` if zennit fails for a
    reason that is not torchvision's.
    """
    global _STUBBED
    mod = sys.modules.get("zennit")
    if mod is not None and hasattr(mod, "torchvision") and hasattr(mod, "composites"):
        return mod
    with _LOCK:
        try:
            return importlib.import_module("zennit")
        except Exception as first:  # noqa: BLE001
            tv_error = _torchvision_error()
            if tv_error is None:
                raise  # zennit is broken for another reason
            # Remove what the failed imports left behind: half-initialised torchvision
            # modules and the zennit package whose __init__ raised (its completed
            # submodules stay cached; they are complete and re-used).
            _drop_modules("torchvision")
            sys.modules.pop("zennit.torchvision", None)
            sys.modules.pop("zennit", None)
            stub = _make_stub()
            sys.modules.update(stub)
            try:
                zennit = importlib.import_module("zennit")
            except Exception as exc:  # noqa: BLE001
                raise ImportError(
                    f"zennit cannot be imported even with a torchvision stub: {exc!r} "
                    f"(torchvision failed with {tv_error!r})"
                ) from first
            finally:
                if not keep_stub:
                    for name in _STUB_NAMES:
                        if sys.modules.get(name) is stub[name]:
                            del sys.modules[name]
            _STUBBED = True
            return zennit


def torchvision_is_stubbed() -> bool:
    """``True`` if zennit was imported against the ecgray torchvision stub."""
    zt = sys.modules.get("zennit.torchvision")
    return _STUBBED or bool(zt is not None and getattr(getattr(zt, "ResNetBottleneck", None), "__ecgray_stub__", False))
