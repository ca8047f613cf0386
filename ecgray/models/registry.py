"""Model names -> loaders: ``load_model("ribeiro2020", weights=...)``, ``load_model("demo")``, paths,
your own models.

Every model returned by :func:`load_model` is float32, in eval mode, with
``requires_grad_(False)`` parameters, on the requested device, and has
``.spec`` (:class:`~ecgray.models.spec.ModelSpec`: input rate, length, leads,
units, classes, activation; checked against one forward pass), ``.classes``
(tuple of output names) and ``.source`` (where it came from).

Bring your own model (any ``torch.nn.Module`` that returns ``(N, classes)``
scores for ``(N, leads, samples)`` inputs), resolved in this order:

1. a name registered with :func:`register_model` (``ribeiro2020``, ``demo``, ``random``);
2. a name registered by an installed package in the ``ecgray.models``
   entry-point group (:data:`ENTRY_POINT_GROUP`; ``[project.entry-points."ecgray.models"]
   mynet = "mypkg.models:build"`` in its ``pyproject.toml``);
3. ``package.module:factory`` -- imported and called;
4. a ``.hdf5``/``.h5``/``.safetensors`` file of the ResNet (by path).

A factory (2, 3) is called with no arguments and returns the module with a
``spec`` attribute (a ``ModelSpec`` or a mapping of its fields), or a pair
``(module, spec)``; ``weights=`` then names a ``.safetensors`` file loaded into
it with ``load_state_dict(strict=True)`` (weights only in formats that cannot
run code: never pickle / ``torch.load``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import importlib
import re
from importlib.metadata import entry_points

from ecgray.errors import ModelError
from ecgray.models.keras.shapes import check_published
from ecgray.models.ribeiro2020 import ResNet1d, ResNetConfig
from ecgray.models.spec import ModelSpec, check_model
from ecgray.models.weights import HDF5_SUFFIXES, SAFETENSORS_SUFFIXES, finalize_model, load_model_file

__all__ = ["load_model", "available_models", "register_model", "DEMO_WEIGHTS", "RIBEIRO_ENV", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "ecgray.models"
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

RIBEIRO_ENV = "ECGRAY_RIBEIRO_WEIGHTS"
DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights" / "demo.safetensors"
RIBEIRO_URL = "https://zenodo.org/records/3765717"

Loader = Callable[[str | None], ResNet1d]


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, loader: Loader, description: str, *, overwrite: bool = False) -> None:
    """Register ``loader(weights: str | None) -> ResNet1d`` under ``name``.

    ``weights`` is what the caller passed to :func:`load_model` (a path, or
    ``None``). Names that look like model files (``.hdf5``, ``.h5``,
    ``.safetensors``) are not allowed. Re-registering a name needs
    ``overwrite=True``.
    """
    if not name or not isinstance(name, str) or name.lower().endswith(HDF5_SUFFIXES + SAFETENSORS_SUFFIXES):
        raise ValueError(f"invalid model name {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(loader):
        raise TypeError("loader must be callable")
    _REGISTRY[name] = _Entry(loader, description)


def available_models() -> dict[str, str]:
    """Registered model names and their descriptions, then those of the ``ecgray.models`` entry points."""
    out = {name: e.description for name, e in _REGISTRY.items()}
    for ep in _entry_points():
        out.setdefault(ep.name, f"entry point {ep.value} (from {getattr(ep.dist, 'name', None) or 'a package'})")
    return out


def _entry_points() -> list:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _factory_model(ref: str, factory, weights: str | None):
    """Call a factory and load ``weights`` into what it returns; ``(module, spec)``."""
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001 - the user's code: say whose and what
        raise ModelError(f"model factory {ref} raised {type(e).__name__}: {e}") from None
    spec = None
    if isinstance(made, tuple) and len(made) == 2:
        made, spec = made
    if not isinstance(made, torch.nn.Module):
        raise ModelError(f"model factory {ref} returned {type(made).__name__}, not a torch.nn.Module "
                         "(or a (module, ModelSpec) pair)")
    spec = spec if spec is not None else getattr(made, "spec", None)
    if spec is None:
        raise ModelError(f"model factory {ref} returned a {type(made).__name__} without a spec: set "
                         "module.spec = ecgray.models.spec.ModelSpec(fs=..., n_samples=..., leads=..., classes=..., "
                         "activation=...) or return (module, spec)")
    made.spec = ModelSpec.from_dict(spec) if not isinstance(spec, ModelSpec) else spec
    if weights is not None:
        p = Path(weights)
        if p.suffix.lower() not in SAFETENSORS_SUFFIXES:
            raise ModelError(f"{p}: weights for {ref} must be a .safetensors file (formats that cannot run code)")
        if not p.is_file():
            raise ModelError(f"weights file not found: {p}")
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{p}: not a readable safetensors file: {type(e).__name__}: {e}") from None
        try:
            result = made.load_state_dict(state, strict=False)  # missing/unexpected keys: refused below
        except RuntimeError as e:  # a tensor of another shape
            raise ModelError(f"{p} does not fit {ref}: {str(e).strip().splitlines()[-1].strip()}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(f"{p} does not fit {ref}: missing tensors {list(result.missing_keys)[:5]}, "
                             f"unexpected tensors {list(result.unexpected_keys)[:5]}")
    return made


def _looks_like_path(s: str) -> bool:
    return s.lower().endswith(HDF5_SUFFIXES + SAFETENSORS_SUFFIXES) or os.sep in s or "/" in s


def load_model(name_or_path: str | os.PathLike, *, weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> ResNet1d:
    """A registered model by name, or a ``.hdf5``/``.h5``/``.safetensors`` file by path.

    ``weights`` is passed to the named model's loader (for ``"ribeiro2020"``:
    the path of the official ``model.hdf5``; for ``"demo"``: another
    safetensors file instead of the packaged one). Raises :class:`ModelError`
    with what to do when weights are missing or the name is unknown.
    """
    key = os.fspath(name_or_path)
    w = None if weights is None else os.fspath(weights)
    eps = {ep.name: ep for ep in _entry_points()} if key not in _REGISTRY else {}
    if key in _REGISTRY:
        model = _REGISTRY[key].loader(w)
        if not isinstance(model, ResNet1d):
            raise ModelError(f"loader for {key!r} returned {type(model).__name__}, not ResNet1d")
    elif key in eps:
        try:
            factory = eps[key].load()
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"entry point {key!r} ({eps[key].value}) cannot be loaded: {type(e).__name__}: "
                             f"{e}") from None
        model = _factory_model(f"entry point {key!r} ({eps[key].value})", factory, w)
    elif _FACTORY.match(key):
        mod_name, attr = key.split(":", 1)
        try:
            obj = importlib.import_module(mod_name)
        except ImportError as e:
            raise ModelError(f"model {key!r}: cannot import module {mod_name!r}: {e}") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ModelError(f"model {key!r}: module {mod_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ModelError(f"model {key!r}: {attr!r} is not callable")
        model = _factory_model(key, obj, w)
    elif _looks_like_path(key) or Path(key).exists():
        if w is not None:
            raise ModelError(f"weights= is only for named models; {key!r} is already a file")
        model = load_model_file(key)
    else:
        names = ", ".join(sorted(set(_REGISTRY) | set(eps)))
        raise ModelError(f"unknown model {key!r}: use one of {names} (registered or an installed "
                         f"{ENTRY_POINT_GROUP!r} entry point), package.module:factory, or a path to a "
                         ".hdf5/.h5/.safetensors file")
    if not getattr(model, "source", None):
        model.source = key
    model = finalize_model(model, device)
    check_model(model, model.spec, key)
    return model


# --------------------------------------------------------------------------- built-in models
def _load_ribeiro2020(weights: str | None) -> ResNet1d:
    path = weights or os.environ.get(RIBEIRO_ENV)
    if not path:
        raise ModelError(
            "model 'ribeiro2020' needs the official Keras weights file model.hdf5 of Ribeiro et al. 2020 "
            "(Nat. Commun. 11:1760), which ecgray does not ship. Download it from the authors' Zenodo record "
            f"({RIBEIRO_URL}; linked from github.com/antonior92/automatic-ecg-diagnosis), then pass "
            f"weights='path/to/model.hdf5' or set {RIBEIRO_ENV}=path/to/model.hdf5"
        )
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ribeiro2020 weights not found at {p} (from {'weights=' if weights else RIBEIRO_ENV}); "
                         f"download model.hdf5 from {RIBEIRO_URL}")
    if p.suffix.lower() not in HDF5_SUFFIXES + SAFETENSORS_SUFFIXES:
        raise ModelError(f"{p}: ribeiro2020 weights must be the Keras model.hdf5 (or an ecgray .safetensors copy)")
    model = load_model_file(p)
    check_published(model.config, p)
    return model


def _load_demo(weights: str | None) -> ResNet1d:
    p = Path(weights) if weights else DEMO_WEIGHTS
    if not p.is_file():
        raise ModelError(f"demo weights not found at {p}: produce them with `ecgray train-demo` "
                         "(trains the small demo network on synthetic ECGs and writes this file)")
    return load_model_file(p)


register_model("ribeiro2020", _load_ribeiro2020,
               "Ribeiro et al. 2020 12-lead ECG ResNet (6 abnormalities); official Keras weights model.hdf5 "
               f"from Zenodo, via weights= or ${RIBEIRO_ENV}")
register_model("demo", _load_demo,
               "ecgray demo weights (same architecture, trained by `ecgray train-demo`), "
               "ecgray/models/weights/demo.safetensors")


def _load_random(weights: str | None) -> ResNet1d:
    """The published architecture with seeded random weights (``weights`` may name the integer seed)."""
    try:
        seed = int(weights) if weights is not None else 0
    except ValueError:
        raise ModelError(f"model 'random' takes an integer seed as weights=, got {weights!r}") from None
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = ResNet1d(ResNetConfig())
    finally:
        torch.random.set_rng_state(gen_state)
    # Non-trivial BatchNorm statistics and biases, as a trained network has: with PyTorch's defaults
    # (mean 0, var 1, no biases) the network would be positively homogeneous, f(a x) = a f(x), and
    # integrated gradients exact at any step count -- useless for accuracy-vs-steps benchmarks.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                mod.weight.copy_(0.5 + torch.rand(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
    model.eval()
    model.source = f"random(seed={seed})"
    return model


register_model("random", _load_random,
               "the published architecture with seeded random weights (weights=SEED, default 0): "
               "checks the plumbing; its explanations mean nothing")
