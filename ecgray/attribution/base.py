"""The base class and registry of attribution methods, and the helpers two or more methods share.

One class per method, one module per class (Captum's ``captum/attr/_core/`` layout):
:mod:`~ecgray.attribution.integrated_gradients`, :mod:`~ecgray.attribution.saliency`,
:mod:`~ecgray.attribution.input_x_gradient`, :mod:`~ecgray.attribution.deeplift`,
:mod:`~ecgray.attribution.gradient_shap` and :mod:`~ecgray.attribution.lrp`. Each module
registers its class with :func:`register_method` when imported; the package ``__init__``
imports them all.

Every method class works on *rows*: a row is one (record, target class) pair.
:func:`ecgray.attribution.attribute` stacks the records x targets of a call
into rows, cuts them into chunks of at most ``batch_size`` rows and calls
:meth:`AttributionMethod.attribute_rows` once per chunk, so a method never sees
more than a bounded batch and its results do not depend on how rows are
chunked (tested to 1e-5 relative with batch-invariant CPU kernels; with
oneDNN, float32 kernel choices differ with the batch size at the 1e-7 level,
which LRP's divisions amplify to ~5e-5 relative L2).

Parameters
----------
A method's parameters are the keyword-only arguments of its ``__init__``
(typed, with their defaults), collected into :attr:`AttributionMethod.defaults`
when the class is defined -- one source for the signature, the defaults and the
set of accepted names. A method can be built two ways, with the same result::

    IntegratedGradients(forward, n_steps=32, baselines=b)                  # keyword arguments
    IntegratedGradients(forward, {"n_steps": 32, "baselines": b})          # a mapping (the registry's way)

Either way the parameters are validated (:meth:`AttributionMethod.resolve_params`).
A renamed parameter stays accepted for one release under its old name
(:attr:`AttributionMethod.deprecated_params`, e.g. ``baseline`` -> ``baselines``), with a
``DeprecationWarning`` and the same result.
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Union

import numpy as np
import torch
from torch import nn

#: what ``baselines`` accepts: ``None`` (zeros), a scalar, or an array (numpy / torch / nested lists)
BaselineLike = Union[None, float, np.ndarray, torch.Tensor, Sequence]

_MISSING = object()

# ---------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------


class AttributionMethod:
    """Base class. Subclasses set the class attributes, declare their parameters as
    keyword-only arguments of ``__init__`` and implement :meth:`attribute_rows`.

    Instances are created once per :func:`~ecgray.attribution.attribute` call with the
    (frozen, eval-mode) forward module and the validated parameters.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: parameter -> default; only these keyword parameters are accepted (filled from ``__init__``)
    defaults: ClassVar[dict[str, Any]] = {}
    #: old parameter name -> new name: still accepted, with a ``DeprecationWarning``
    deprecated_params: ClassVar[dict[str, str]] = {}
    #: rows (records x targets) per chunk when ``batch_size`` is not given
    default_batch_size: ClassVar[int] = 32
    #: whether ``attribute_rows`` returns a delta (completeness / conservation error)
    has_delta: ClassVar[bool] = False
    #: whether results depend on ``seed``
    stochastic: ClassVar[bool] = False
    #: whether :meth:`attribute_records` (all targets of a record from one forward) is implemented
    shared_targets: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        keywords = {
            n: p for n, p in inspect.signature(init).parameters.items() if p.kind is p.KEYWORD_ONLY and n != "seed"
        }
        if not keywords:
            return
        if "defaults" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: declare parameters as keywords of __init__ or in defaults, not both")
        missing = [n for n, p in keywords.items() if p.default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"{cls.__name__}: parameters {missing} need defaults")
        cls.defaults = {n: p.default for n, p in keywords.items()}

    def __init__(
        self, forward: nn.Module, params: Mapping[str, Any] | None = None, *, seed: int = 0, **keywords: Any
    ) -> None:
        if params is None:
            params = keywords
        else:
            clash = sorted(k for k, v in keywords.items() if not _same(v, self.defaults.get(k, _MISSING)))
            if clash:
                raise TypeError(f"{type(self).__name__}: pass parameters as a mapping or as keywords, not both {clash}")
        self.forward = forward
        self.params = self.resolve_params(params)
        self.seed = int(seed)

    # -- parameters ---------------------------------------------------------
    @classmethod
    def accepts(cls, key: str) -> bool:
        """Whether ``key`` is one of this method's parameters (a deprecated name counts)."""
        return key in cls.defaults or key in cls.deprecated_params

    @classmethod
    def resolve_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate user parameters and fill in defaults (the *effective* parameters, a new dict)."""
        given = cls._rename_deprecated(params)
        unknown = sorted(set(given) - set(cls.defaults))
        if unknown:
            raise TypeError(
                f"method {cls.name!r} got unexpected parameter(s) {unknown}; accepted: {sorted(cls.defaults)}"
            )
        out = dict(cls.defaults)
        out.update(given)
        checked = cls.check_params(out)
        return out if checked is None else dict(checked)

    @classmethod
    def _rename_deprecated(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(params)
        for old, new in cls.deprecated_params.items():
            if old not in out:
                continue
            if new in out:
                raise TypeError(f"method {cls.name!r} got both {new!r} and its deprecated alias {old!r}")
            warnings.warn(
                f"method {cls.name!r}: parameter {old!r} is deprecated, use {new!r} (Captum's name); "
                f"{old!r} will be removed in the next release",
                DeprecationWarning,
                stacklevel=4,  # _rename_deprecated <- resolve_params <- attribute <- the caller
            )
            out[new] = out.pop(old)
        return out

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Raise ``ValueError`` for bad parameter values; return the checked parameters as a
        *new* dict (``params`` itself is never modified). Override, starting from ``dict(params)``."""
        return dict(params)

    def max_rows(self, batch_size: int) -> int:
        """Rows per chunk actually used, given the requested ``batch_size``."""
        return batch_size

    def provenance(self) -> dict[str, Any]:
        """JSON-serialisable effective parameters."""
        return {k: _jsonable(v) for k, v in self.params.items()}

    # -- work ---------------------------------------------------------------
    def attribute_rows(
        self, x: torch.Tensor, target: torch.Tensor, record: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Relevance ``(rows, leads, L)`` and delta ``(rows,)`` or ``None``.

        ``x``: the rows' inputs (already on the model's device and dtype),
        ``target``: class index per row (long), ``record``: index of the row's
        record in the caller's ``x`` (long; for per-record baselines).
        """
        raise NotImplementedError

    def attribute_records(
        self, x: torch.Tensor, targets: list[int], record: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fast path: relevance ``(records, T, leads, L)`` and delta ``(records, T)`` or ``None``
        for all ``targets`` (class indices) of the records ``x``, sharing each forward across targets
        (see :mod:`ecgray.attribution.fast`). Only where :attr:`shared_targets` is true."""
        raise NotImplementedError

    def close(self) -> None:
        """Release anything held between chunks (hooks, copies)."""


def _same(value: Any, default: Any) -> bool:
    """Whether a keyword argument was left at its default (identity, or an equal plain scalar)."""
    if value is default:
        return True
    return type(value) is type(default) and isinstance(value, (bool, int, float, str)) and value == default


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

METHODS: dict[str, type[AttributionMethod]] = {}
_ALIASES: dict[str, str] = {}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def register_method(cls: type[AttributionMethod]) -> type[AttributionMethod]:
    """Class decorator: add ``cls`` to :data:`METHODS` under its name and aliases."""
    METHODS[cls.name] = cls
    for alias in (cls.name, *cls.aliases):
        _ALIASES[_norm(alias)] = cls.name
    return cls


def resolve_method(method: str | type[AttributionMethod]) -> type[AttributionMethod]:
    """Method class for a name or alias (case-insensitive); ``ValueError`` if unknown."""
    if isinstance(method, type) and issubclass(method, AttributionMethod):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name, not {type(method).__name__}")
    key = _norm(method)
    if key not in _ALIASES:
        raise ValueError(f"unknown attribution method {method!r}; available: {', '.join(available_methods())}")
    return METHODS[_ALIASES[key]]


def available_methods(*, aliases: bool = False) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """Canonical method names; with ``aliases=True`` a dict name -> aliases."""
    if aliases:
        return {name: cls.aliases for name, cls in METHODS.items()}
    return tuple(METHODS)


# ---------------------------------------------------------------------------
# helpers shared by several methods
# ---------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.ndarray, torch.Tensor)):
        arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return arr.tolist() if arr.size <= 16 else _describe_array(arr)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (list, tuple)):
        arr = np.asarray(v, dtype=object)
        if arr.size > 16:  # an array given as nested lists: summarise, do not copy it into provenance
            return _describe_array(np.asarray(v, dtype=np.float32))
        return [_jsonable(e) for e in v]
    return v


def _describe_array(a: np.ndarray | torch.Tensor) -> str:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    digest = hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()[:16]
    return f"array(shape={list(arr.shape)}, sha256={digest})"


def _as_tensor(a: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(np.asarray(a), device=like.device, dtype=like.dtype)


def _row_baseline(baselines: BaselineLike, x: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
    """Baseline per row from ``None``/scalar (constant), ``(leads, L)`` or ``(N, leads, L)`` (per record)."""
    if baselines is None:
        return torch.zeros_like(x)
    b = _as_tensor(baselines, x)
    if b.ndim == 0:
        return torch.full_like(x, float(b))
    if b.ndim == 2:
        if tuple(b.shape) != tuple(x.shape[1:]):
            raise ValueError(f"baselines shape {tuple(b.shape)} != input shape {tuple(x.shape[1:])}")
        return b.expand_as(x).contiguous()
    if b.ndim == 3:
        if tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"baselines shape {tuple(b.shape)} does not match input (N, {tuple(x.shape[1:])})")
        return b[record.to(b.device)]
    raise ValueError(f"baselines must be a scalar, (leads, L) or (N, leads, L), got shape {tuple(b.shape)}")


def _check_baseline_param(value: Any, name: str = "baselines") -> None:
    if value is None or isinstance(value, (int, float)):
        return
    if isinstance(value, str):  # a named baseline (ecgray.attribution.baselines), resolved by attribute()
        from ecgray.attribution.baselines import parse

        parse(value)
        return
    arr = value if isinstance(value, (np.ndarray, torch.Tensor)) else np.asarray(value)
    if arr.ndim not in (0, 2, 3):
        raise ValueError(f"{name} must be a scalar, (leads, L) or (N, leads, L) array")


class _Quiet(warnings.catch_warnings):
    """Silence Captum's informational warnings (hooks set on activations, grads enabled on inputs)."""

    def __enter__(self):
        out = super().__enter__()
        warnings.filterwarnings("ignore", message=r".*Setting forward, backward hooks.*")
        warnings.filterwarnings("ignore", message=r".*did not already require gradients.*")
        return out


__all__ = [
    "AttributionMethod",
    "BaselineLike",
    "METHODS",
    "register_method",
    "resolve_method",
    "available_methods",
]
