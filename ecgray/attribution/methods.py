"""Registry of attribution methods, one small class per method (Captum style).

Every method class works on *rows*: a row is one (record, target class) pair.
:func:`ecgray.attribution.attribute` stacks the records x targets of a call
into rows, cuts them into chunks of at most ``batch_size`` rows and calls
:meth:`AttributionMethod.attribute_rows` once per chunk, so a method never sees
more than a bounded batch and its results do not depend on how rows are
chunked (tested to 1e-5 relative with batch-invariant CPU kernels; with
oneDNN, float32 kernel choices differ with the batch size at the 1e-7 level,
which LRP's divisions amplify to ~5e-5 relative L2).

=====================  ===========================  ==============================================
name                   aliases                      what
=====================  ===========================  ==============================================
integrated_gradients   ig, integratedgradients      Captum ``IntegratedGradients``; delta = sum(R) - (f(x) - f(b))
saliency               --                           Captum ``Saliency`` (``abs=True`` by default)
input_x_gradient       ixg, inputxgradient          Captum ``InputXGradient``
deeplift               deep_lift                    Captum ``DeepLift`` (rescale rule, zero baseline); delta as IG
gradient_shap          gradientshap, gradshap       expected gradients over random baselines (GradientShap)
lrp_epsilon            lrp, lrp_eps                 Zennit LRP-epsilon (see :mod:`ecgray.attribution.lrp`)
lrp_alpha_beta         lrp_ab, lrp_alpha2_beta1     Zennit LRP-alpha-beta (alpha=2, beta=1)
=====================  ===========================  ==============================================

Names are matched case-insensitively, ignoring ``_``, ``-`` and spaces, so
``"IntegratedGradients"``, ``"integrated-gradients"`` and ``"IG"`` all work.

Parameter names clash in one place: :func:`attribute` already has a ``method``
argument, so Captum's ``IntegratedGradients(method=...)`` (the quadrature
rule) is called ``integration_method`` here.

Captum and Zennit are imported lazily, inside the methods that use them.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------
# base class and registry
# ---------------------------------------------------------------------------


class AttributionMethod:
    """Base class. Subclasses set the class attributes and implement :meth:`attribute_rows`.

    Instances are created once per :func:`attribute` call with the (frozen,
    eval-mode) forward module and the validated parameters.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: parameter -> default; only these keyword parameters are accepted
    defaults: ClassVar[dict[str, Any]] = {}
    #: rows (records x targets) per chunk when ``batch_size`` is not given
    default_batch_size: ClassVar[int] = 32
    #: whether ``attribute_rows`` returns a delta (completeness / conservation error)
    has_delta: ClassVar[bool] = False
    #: whether results depend on ``seed``
    stochastic: ClassVar[bool] = False
    #: whether :meth:`attribute_records` (all targets of a record from one forward) is implemented
    shared_targets: ClassVar[bool] = False

    def __init__(self, forward: nn.Module, params: dict[str, Any], *, seed: int = 0):
        self.forward = forward
        self.params = params
        self.seed = int(seed)

    # -- parameters ---------------------------------------------------------
    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Validate user parameters and fill in defaults (the *effective* parameters)."""
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise TypeError(
                f"method {cls.name!r} got unexpected parameter(s) {unknown}; accepted: {sorted(cls.defaults)}"
            )
        out = dict(cls.defaults)
        out.update(params)
        cls.check_params(out)
        return out

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Raise ``ValueError`` for bad parameter values (override)."""

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
# helpers
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


def _row_baseline(baseline: Any, x: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
    """Baseline per row from ``None``/scalar (constant), ``(leads, L)`` or ``(N, leads, L)`` (per record)."""
    if baseline is None:
        return torch.zeros_like(x)
    b = _as_tensor(baseline, x)
    if b.ndim == 0:
        return torch.full_like(x, float(b))
    if b.ndim == 2:
        if tuple(b.shape) != tuple(x.shape[1:]):
            raise ValueError(f"baseline shape {tuple(b.shape)} != input shape {tuple(x.shape[1:])}")
        return b.expand_as(x).contiguous()
    if b.ndim == 3:
        if tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"baseline shape {tuple(b.shape)} does not match input (N, {tuple(x.shape[1:])})")
        return b[record.to(b.device)]
    raise ValueError(f"baseline must be a scalar, (leads, L) or (N, leads, L), got shape {tuple(b.shape)}")


def _check_baseline_param(value: Any, name: str = "baseline") -> None:
    if value is None or isinstance(value, (int, float)):
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


def _grad_of_target(forward: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d f(x)[row, target[row]] / d x for every row (rows are independent in eval mode)."""
    x = x.detach().requires_grad_(True)
    out = forward(x)
    sel = out.gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(sel, x)
    return g


# ---------------------------------------------------------------------------
# Captum methods
# ---------------------------------------------------------------------------


@register_method
class IntegratedGradients(AttributionMethod):
    """Integrated gradients (``multiply_by_inputs=True``), Captum's quadrature rules.

    Parameters: ``baseline`` (``None`` = zeros, a scalar, a ``(leads, L)`` array
    shared by all records or ``(N, leads, L)`` per record), ``n_steps`` (50),
    ``integration_method`` (Captum's ``method``: ``"gausslegendre"``,
    ``"riemann_trapezoid"``, ...; or ``"trapezoid"``: the composite trapezoid
    rule on ``n_steps`` equally spaced points -- weights summing to 1, unlike
    Captum's ``riemann_trapezoid``, whose sum to ``(n-1)/n`` -- fast path
    only), ``internal_batch_size`` (the most
    interpolated inputs in one forward/backward; ``None`` = as many as fit
    :func:`ecgray.attribution.fast.memory_budget`), ``rtol`` / ``atol``
    (``None``: exactly ``n_steps``; else *adaptive steps*: each record starts at
    ``min_steps`` (8) and doubles, up to ``n_steps``, until every target's
    completeness error ``|delta| <= rtol * |f(x) - f(b)| + atol``; the steps used per
    (record, target) are in ``Attribution.steps``). With ``"trapezoid"`` the
    adaptive levels are nested -- ``min_steps + 1`` points, then ``2 min_steps + 1``,
    ... (each grid holds the previous one) -- so each level evaluates only its new
    midpoints and a row's cost is its final point count, not the sum of the
    ladder. Delta = ``sum(R) - (f(x) - f(baseline))`` per row (Captum's
    convergence delta).

    Fast path (default): the interpolated points of a chunk of records go
    through the network once, and each target gets one backward (see
    :mod:`ecgray.attribution.fast`) -- the same points, weights and sums as
    Captum's ``IntegratedGradients`` (equal to it to float rounding, tested).
    The rows path (``multi_target="rows"``) calls Captum itself per (record,
    target) row.
    """

    name = "integrated_gradients"
    aliases = ("ig", "integratedgradients")
    defaults = {"baseline": None, "n_steps": 50, "integration_method": "gausslegendre", "internal_batch_size": None,
                "rtol": None, "atol": 0.0, "min_steps": 8}
    default_batch_size = 16
    has_delta = True
    shared_targets = True

    @classmethod
    def check_params(cls, p):
        if int(p["n_steps"]) < 1:
            raise ValueError("n_steps must be >= 1")
        if p["internal_batch_size"] is not None and int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")
        ok = ("gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "trapezoid")
        if p["integration_method"] not in ok:
            raise ValueError(f"integration_method must be one of {ok}")
        if p["integration_method"] == "trapezoid" and int(p["n_steps"]) < 2:
            raise ValueError("integration_method 'trapezoid' needs n_steps >= 2")
        if p["rtol"] is not None and float(p["rtol"]) < 0:
            raise ValueError("rtol must be >= 0")
        if float(p["atol"]) < 0:
            raise ValueError("atol must be >= 0")
        if int(p["min_steps"]) < 1:
            raise ValueError("min_steps must be >= 1")
        _check_baseline_param(p["baseline"])

    def __init__(self, forward, params, *, seed=0):
        super().__init__(forward, params, seed=seed)
        self._chunk: int | None = None
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def provenance(self):
        out = super().provenance()
        if self.params["baseline"] is None:
            out["baseline"] = "zeros"
        if self.params["internal_batch_size"] is None and self._chunk is not None:
            out["internal_batch_size"] = f"auto ({self._chunk})"
        return out

    def max_rows(self, batch_size):
        ibs = self.params["internal_batch_size"]
        return max(1, min(batch_size, int(ibs))) if ibs is not None else batch_size

    def _points_chunk(self, x):
        if self._chunk is None:
            from ecgray.attribution.fast import points_per_chunk

            ibs = self.params["internal_batch_size"]
            self._chunk = int(ibs) if ibs is not None else points_per_chunk(self.forward, x.shape[1:], x.device, x.dtype)
        return self._chunk

    def attribute_rows(self, x, target, record):
        from captum.attr import IntegratedGradients as _IG

        p = self.params
        if p["rtol"] is not None:
            raise ValueError("adaptive steps (rtol) need the shared-target path (multi_target='auto')")
        if p["integration_method"] == "trapezoid":
            raise ValueError("integration_method 'trapezoid' needs the shared-target path (multi_target='auto')")
        base = _row_baseline(p["baseline"], x, record)
        with _Quiet():
            attr, delta = _IG(self.forward, multiply_by_inputs=True).attribute(
                x.detach().requires_grad_(True),
                baselines=base,
                target=target,
                n_steps=int(p["n_steps"]),
                method=p["integration_method"],
                internal_batch_size=self._points_chunk(x),
                return_convergence_delta=True,
            )
        return attr.detach(), delta.detach()

    # -- fast path ------------------------------------------------------------
    def _rule(self, n_steps: int) -> tuple[list[float], list[float]]:
        """Points ``alpha_k`` and weights ``w_k`` of the quadrature rule with ``n_steps`` points."""
        if self.params["integration_method"] == "trapezoid":
            h = 1.0 / (n_steps - 1)
            return [k * h for k in range(n_steps)], [h / 2] + [h] * (n_steps - 2) + [h / 2]
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes, alphas = approximation_parameters(self.params["integration_method"])
        return list(alphas(n_steps)), list(step_sizes(n_steps))

    def _path_grads(self, x, base, targets, alphas, weights):
        """Sum_k w_k grad f_t(b + a_k (x - b)) for every record and target: ``(R, T, leads, L)``."""
        from ecgray.attribution.fast import target_grads

        n_steps = len(alphas)
        a = torch.tensor(alphas, dtype=x.dtype, device=x.device)
        w = torch.tensor(weights, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        R = x.shape[0]
        diff = x - base
        total = torch.zeros((R, len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        n_pts = R * n_steps
        chunk = self._points_chunk(x)
        for s in range(0, n_pts, chunk):
            idx = torch.arange(s, min(s + chunk, n_pts), device=x.device)
            r, k = idx // n_steps, idx % n_steps
            pts = base[r] + a[k, None, None] * diff[r]
            for j, g in target_grads(self.forward, pts, targets):
                total[:, j].index_add_(0, r, g * w[k, None, None])
        return total

    def attribute_records(self, x, targets, record):
        p = self.params
        base = _row_baseline(p["baseline"], x, record)
        with torch.no_grad():
            tt = torch.as_tensor(targets, device=x.device)
            gain = (self.forward(x) - self.forward(base))[:, tt]  # (R, T)
        n_max = int(p["n_steps"])
        nested = p["rtol"] is not None and p["integration_method"] == "trapezoid"
        if p["rtol"] is None:
            levels = [n_max]
        elif nested:  # 1 + m 2^j points: every grid holds the previous one
            levels, n = [], max(2, min(int(p["min_steps"]) + 1, n_max))
            while n <= n_max:
                levels.append(n)
                n = 2 * n - 1
            if levels[-1] != n_max:
                levels.append(n_max)  # the cap itself, evaluated afresh (not nested)
        else:
            levels, n = [], min(int(p["min_steps"]), n_max)
            while n < n_max:
                levels.append(n)
                n *= 2
            levels.append(n_max)
        R, T = x.shape[0], len(targets)
        rel = torch.zeros((R, T, *x.shape[1:]), dtype=x.dtype, device=x.device)
        delta = torch.zeros((R, T), dtype=x.dtype, device=x.device)
        steps = torch.zeros((R, T), dtype=torch.int32)
        todo = torch.ones((R, T), dtype=torch.bool, device=x.device)
        diff = x - base
        acc = torch.zeros_like(rel) if nested else None  # the trapezoid sum of the last grid, per row
        prev = None
        for n in levels:
            recs = torch.nonzero(todo.any(1))[:, 0]
            tpos = torch.nonzero(todo[recs].any(0))[:, 0]
            tsel = [targets[int(j)] for j in tpos]
            if nested:
                reuse = prev is not None and n == 2 * prev - 1
                if reuse:  # T_n = T_prev / 2 + h * (sum over the midpoints of the previous grid)
                    h = 1.0 / (n - 1)
                    alphas, weights = [(2 * i + 1) * h for i in range(prev - 1)], [h] * (prev - 1)
                else:
                    alphas, weights = self._rule(n)
                new = self._path_grads(x[recs], base[recs], tsel, alphas, weights)
                ri0, ti0 = torch.meshgrid(recs, tpos, indexing="ij")
                tot = (acc[ri0, ti0] / 2 if reuse else 0) + new
                acc[ri0, ti0] = tot
                prev = n
            else:
                tot = self._path_grads(x[recs], base[recs], tsel, *self._rule(n))
            attr = tot * diff[recs][:, None]
            d = attr.sum(dim=(2, 3)) - gain[recs][:, tpos]
            upd = todo[recs][:, tpos]
            ri, ti = torch.nonzero(upd, as_tuple=True)
            rel[recs[ri], tpos[ti]] = attr[ri, ti]
            delta[recs[ri], tpos[ti]] = d[ri, ti]
            steps[recs[ri].cpu(), tpos[ti].cpu()] = n
            if p["rtol"] is None:
                break
            ok = d.abs() <= float(p["rtol"]) * gain[recs][:, tpos].abs() + float(p["atol"])
            todo[recs[ri], tpos[ti]] = ~ok[ri, ti]
            if not todo.any():
                break
        self.steps.append((record.cpu(), steps))
        return rel.detach(), delta.detach()


@register_method
class Saliency(AttributionMethod):
    """Captum ``Saliency``: the gradient of the target output, absolute value by default (``abs=True``)."""

    name = "saliency"
    aliases = ()
    defaults = {"abs": True}

    def attribute_rows(self, x, target, record):
        from captum.attr import Saliency as _Saliency

        with _Quiet():
            attr = _Saliency(self.forward).attribute(
                x.detach().requires_grad_(True), target=target, abs=bool(self.params["abs"])
            )
        return attr.detach(), None

    shared_targets = True

    def attribute_records(self, x, targets, record):
        from ecgray.attribution.fast import target_grads

        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for j, g in target_grads(self.forward, x, targets):
            rel[:, j] = g.abs() if self.params["abs"] else g
        return rel, None


@register_method
class InputXGradient(AttributionMethod):
    """Captum ``InputXGradient``: ``x * df/dx``."""

    name = "input_x_gradient"
    aliases = ("ixg", "inputxgradient", "gradient_x_input", "gxi")
    defaults = {}

    def attribute_rows(self, x, target, record):
        from captum.attr import InputXGradient as _IxG

        with _Quiet():
            attr = _IxG(self.forward).attribute(x.detach().requires_grad_(True), target=target)
        return attr.detach(), None

    shared_targets = True

    def attribute_records(self, x, targets, record):
        from ecgray.attribution.fast import target_grads

        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for j, g in target_grads(self.forward, x, targets):
            rel[:, j] = x * g
        return rel, None


def _deeplift_maxpool_forward(self, x):
    """SameMaxPool1d.forward for DeepLift: pad (finite), then a hookable ``nn.MaxPool1d`` on a private copy."""
    from ecgray.models.ribeiro2020 import same_padding

    left, right = same_padding(x.shape[-1], self.pool, self.pool)
    if left or right:
        # finite instead of -inf so that DeepLift's (x - x_ref) is 0, not nan, at the pad
        x = torch.nn.functional.pad(x, (left, right), value=torch.finfo(x.dtype).min)
    # ``clone``: Captum hooks the *input tensor* of a non-linear module, and a tensor
    # hook sees the gradient from all consumers. The pre-BN sum feeding this pool also
    # feeds ``bn2``; hooking it directly would drop that branch's gradient.
    return self._ecgray_pool(x.clone())


def _deeplift_canonical(forward: nn.Module) -> nn.Module:
    """A deep copy of ``forward`` whose max-pools Captum's DeepLift can see.

    ``SameMaxPool1d`` calls ``F.max_pool1d``; DeepLift would treat the
    functional call as linear (plain gradient, winner-take-all) and the
    summation-to-delta property breaks (measured: |delta| ~ 20-40 % of
    f(x) - f(0) on the reduced test model). In the copy each pool calls an
    ``nn.MaxPool1d`` child, so Captum applies its max-pool rule. The user's
    model is never modified.
    """
    from ecgray.models.ribeiro2020 import SameMaxPool1d

    model = copy.deepcopy(forward)
    for mod in model.modules():
        if isinstance(mod, SameMaxPool1d):
            mod._ecgray_pool = nn.MaxPool1d(mod.pool, mod.pool)
            mod.forward = _deeplift_maxpool_forward.__get__(mod)
    return model


@register_method
class DeepLift(AttributionMethod):
    """Captum ``DeepLift`` (rescale rule, ``multiply_by_inputs=True``).

    Runs on a deep copy of the model in which the Keras-style max-pools of the
    skip path are exposed as ``nn.MaxPool1d`` modules (see
    :func:`_deeplift_canonical`). Every ReLU of ``ResNet1d`` is a separate
    module used once (the stem ``relu`` included), as DeepLift requires.
    Parameters: ``baseline`` (as for IG; default zeros), ``eps`` (Captum's
    1e-10). Delta = ``sum(R) - (f(x) - f(baseline))``.
    """

    name = "deeplift"
    aliases = ("deep_lift",)
    defaults = {"baseline": None, "eps": 1e-10}
    default_batch_size = 32
    has_delta = True

    @classmethod
    def check_params(cls, p):
        _check_baseline_param(p["baseline"])

    def __init__(self, forward, params, *, seed=0):
        super().__init__(forward, params, seed=seed)
        self.model = _deeplift_canonical(forward)

    def provenance(self):
        out = super().provenance()
        if self.params["baseline"] is None:
            out["baseline"] = "zeros"
        return out

    def attribute_rows(self, x, target, record):
        from captum.attr import DeepLift as _DeepLift

        base = _row_baseline(self.params["baseline"], x, record)
        with _Quiet():
            attr, delta = _DeepLift(self.model, multiply_by_inputs=True, eps=float(self.params["eps"])).attribute(
                x.detach().requires_grad_(True), baselines=base, target=target, return_convergence_delta=True
            )
        return attr.detach(), delta.detach()

    def close(self):
        self.model = None


def _record_seed(seed: int, record: torch.Tensor) -> int:
    """A 63-bit seed from the run seed and the record's *content*.

    Keyed by content, not position, so a record gets the same random draws
    whichever batch / shard / position it arrives in (Ray splits data sets
    arbitrarily) and whichever other targets are requested with it.
    """
    h = hashlib.blake2b(record.detach().cpu().to(torch.float32).numpy().tobytes(), digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


@register_method
class GradientShap(AttributionMethod):
    """GradientShap (expected gradients), computed the way Captum's ``GradientShap`` does.

    For each record ``n_samples`` draws are made: a baseline ``b`` (from the
    user's ``baselines`` distribution, uniformly, or zeros), plus Gaussian
    noise ``baseline_stdev`` on the baseline, Gaussian noise ``stdevs`` on the
    input (Captum's SmoothGrad-style ``stdevs``, default 0), and ``alpha ~ U(0,1)``;
    the attribution is ``mean_s (x_s - b_s) * grad f(b_s + alpha_s (x_s - b_s))``.

    Not Captum's class itself, for one reason: determinism at data-set scale.
    The draws come from a private ``torch.Generator`` seeded from ``seed`` and a
    hash of the record's samples, so results are identical whatever the
    chunking, batch, Ray shard or target list (Captum draws from the global RNG
    in chunk order); the global RNG is never touched.

    Parameters: ``n_samples`` (20), ``stdevs`` (0.0), ``baselines`` (``None``
    or an array ``(B, leads, L)`` = the baseline distribution), ``baseline_stdev``
    (noise std on the baseline; ``None`` = 0.01 input units (~10 uV for mV
    inputs) with the default zero baseline, 0 with user ``baselines``),
    (a single ``(leads, L)`` array is a one-point distribution),
    ``internal_batch_size`` (64 samples per forward/backward), ``compute_delta``
    (False; True gives ``sum(R) - mean_s(f(x_s) - f(b_s))``, the sampled
    expected-completeness error, at the price of 2 * n_samples extra forwards).
    """

    name = "gradient_shap"
    aliases = ("gradientshap", "gradshap", "expected_gradients")
    defaults = {
        "n_samples": 20,
        "stdevs": 0.0,
        "baselines": None,
        "baseline_stdev": None,
        "internal_batch_size": 64,
        "compute_delta": False,
    }
    default_batch_size = 8
    has_delta = True
    stochastic = True

    @classmethod
    def check_params(cls, p):
        if int(p["n_samples"]) < 1:
            raise ValueError("n_samples must be >= 1")
        if float(p["stdevs"]) < 0:
            raise ValueError("stdevs must be >= 0")
        if p["baseline_stdev"] is not None and float(p["baseline_stdev"]) < 0:
            raise ValueError("baseline_stdev must be >= 0")
        if p["baselines"] is not None:
            b = p["baselines"]
            nd = b.ndim if hasattr(b, "ndim") else np.asarray(b).ndim
            if nd not in (2, 3):
                raise ValueError("baselines must be an array (B, leads, L) (the distribution) or one (leads, L)")
        if p["baseline_stdev"] is None:
            p["baseline_stdev"] = 0.01 if p["baselines"] is None else 0.0
        if int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")

    def provenance(self):
        out = super().provenance()
        if self.params["baselines"] is None:
            out["baselines"] = "zeros"
        out["seed"] = self.seed
        out["rng"] = "torch.Generator per record, seeded by blake2b(seed, record samples)"
        return out

    def _draws(self, xrec: torch.Tensor):
        p = self.params
        n = int(p["n_samples"])
        gen = torch.Generator(device="cpu").manual_seed(_record_seed(self.seed, xrec))
        shape = (n, *xrec.shape)
        alphas = torch.rand(n, generator=gen, dtype=torch.float64)
        if p["baselines"] is not None:
            dist = _as_tensor(p["baselines"], xrec)
            if dist.ndim == 2:
                dist = dist[None]
            if tuple(dist.shape[1:]) != tuple(xrec.shape):
                raise ValueError(f"baselines shape {tuple(dist.shape)} does not match input {tuple(xrec.shape)}")
            idx = torch.randint(dist.shape[0], (n,), generator=gen)
            base = dist[idx.to(dist.device)]
        else:
            base = torch.zeros(shape, dtype=xrec.dtype, device=xrec.device)
        if float(p["baseline_stdev"]) > 0:
            base = base + float(p["baseline_stdev"]) * torch.randn(shape, generator=gen, dtype=torch.float32).to(base)
        xs = xrec.expand(shape)
        if float(p["stdevs"]) > 0:
            xs = xs + float(p["stdevs"]) * torch.randn(shape, generator=gen, dtype=torch.float32).to(xs)
        return alphas.to(device=xrec.device, dtype=xrec.dtype), base, xs.contiguous()

    def attribute_rows(self, x, target, record):
        p = self.params
        n = int(p["n_samples"])
        rows = x.shape[0]
        cache: dict[int, tuple] = {}
        draws = []
        for r in range(rows):
            key = int(record[r])
            if key not in cache:
                cache[key] = self._draws(x[r])
            draws.append(cache[key])
        alphas = torch.stack([d[0] for d in draws])  # (rows, n)
        base = torch.stack([d[1] for d in draws])  # (rows, n, C, L)
        xs = torch.stack([d[2] for d in draws])
        diff = xs - base
        points = base + alphas[:, :, None, None] * diff
        flat_points = points.reshape(rows * n, *x.shape[1:])
        flat_target = target.repeat_interleave(n)
        grads = torch.empty_like(flat_points)
        ibs = int(p["internal_batch_size"])
        for s in range(0, rows * n, ibs):
            grads[s : s + ibs] = _grad_of_target(self.forward, flat_points[s : s + ibs], flat_target[s : s + ibs])
        contrib = grads.reshape(rows, n, *x.shape[1:]) * diff
        attr = contrib.mean(dim=1)
        delta = None
        if p["compute_delta"]:
            with torch.no_grad():
                fx = torch.cat([self.forward(c) for c in xs.reshape(rows * n, *x.shape[1:]).split(ibs)])
                fb = torch.cat([self.forward(c) for c in base.reshape(rows * n, *x.shape[1:]).split(ibs)])
            gain = (fx - fb).gather(1, flat_target[:, None])[:, 0].reshape(rows, n).mean(dim=1)
            delta = attr.sum(dim=(1, 2)) - gain
        return attr.detach(), delta

    shared_targets = True

    def attribute_records(self, x, targets, record):
        from ecgray.attribution.fast import target_grads

        p = self.params
        n = int(p["n_samples"])
        R = x.shape[0]
        draws = [self._draws(x[r]) for r in range(R)]
        alphas = torch.stack([d[0] for d in draws])  # (R, n)
        base = torch.stack([d[1] for d in draws])  # (R, n, C, L)
        xs = torch.stack([d[2] for d in draws])
        diff = (xs - base).reshape(R * n, *x.shape[1:])
        points = (base + alphas[:, :, None, None] * (xs - base)).reshape(R * n, *x.shape[1:])
        rec_of = torch.arange(R, device=x.device).repeat_interleave(n)
        total = torch.zeros((R, len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        ibs = int(p["internal_batch_size"])
        for s in range(0, R * n, ibs):
            sl = slice(s, s + ibs)
            for j, g in target_grads(self.forward, points[sl], targets):
                total[:, j].index_add_(0, rec_of[sl], g * diff[sl])
        attr = total / n
        delta = None
        if p["compute_delta"]:
            with torch.no_grad():
                fx = torch.cat([self.forward(c) for c in xs.reshape(R * n, *x.shape[1:]).split(ibs)])
                fb = torch.cat([self.forward(c) for c in base.reshape(R * n, *x.shape[1:]).split(ibs)])
            tt = torch.as_tensor(targets, device=x.device)
            gain = (fx - fb)[:, tt].reshape(R, n, len(targets)).mean(dim=1)
            delta = attr.sum(dim=(2, 3)) - gain
        return attr.detach(), delta


# The LRP methods (``lrp_epsilon``, ``lrp_alpha_beta``) are defined and registered in
# :mod:`ecgray.attribution.lrp`, which the package ``__init__`` imports (without importing zennit).

__all__ = [
    "AttributionMethod",
    "METHODS",
    "register_method",
    "resolve_method",
    "available_methods",
    "IntegratedGradients",
    "Saliency",
    "InputXGradient",
    "DeepLift",
    "GradientShap",
]
