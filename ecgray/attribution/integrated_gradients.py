"""Integrated gradients: Captum's quadrature rules, a shared-target fast path, adaptive steps."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ecgray.attribution.base import (
    AttributionMethod,
    BaselineLike,
    _check_baseline_param,
    _Quiet,
    _row_baseline,
    register_method,
)
from ecgray.attribution.fast import points_per_chunk, target_grads

#: values of ``integration_method``: Captum's ``method`` values, and ``"trapezoid"`` (fast path only)
INTEGRATION_METHODS = (
    "gausslegendre",
    "riemann_right",
    "riemann_left",
    "riemann_middle",
    "riemann_trapezoid",
    "trapezoid",
)


@register_method
class IntegratedGradients(AttributionMethod):
    r"""Integrated gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365).

    For an input ``x``, a baseline ``b`` and the target output ``f``::

        R_i = (x_i - b_i) * integral_0^1  df(b + a (x - b)) / dx_i  da
            ~ (x_i - b_i) * sum_k w_k df(b + a_k (x - b)) / dx_i

    with the points ``a_k`` and weights ``w_k`` of the quadrature rule
    ``integration_method`` on ``n_steps`` points (Captum's
    ``IntegratedGradients`` with ``multiply_by_inputs=True``). Completeness:
    ``sum_i R_i = f(x) - f(b)`` for the exact integral; the reported delta is the
    quadrature's error, ``delta = sum(R) - (f(x) - f(b))`` per row (Captum's
    convergence delta).

    Fast path (default): the interpolated points of a chunk of records go
    through the network once, and each target gets one backward (see
    :mod:`ecgray.attribution.fast`) -- the same points, weights and sums as
    Captum's ``IntegratedGradients`` (equal to it to float rounding, tested).
    The rows path (``multi_target="rows"``) calls Captum itself per (record,
    target) row.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: unused (deterministic method).
        baselines: ``None`` = zeros, a scalar, a ``(leads, L)`` array shared by all
            records, ``(N, leads, L)`` per record, or a name resolved per record by
            :func:`~ecgray.attribution.attribute` (``"zero"``, ``"blur:<ms>"``, ``"noise:<sd>"``;
            :mod:`ecgray.attribution.baselines`). Formerly ``baseline``
            (deprecated alias, accepted for one release).
        n_steps: quadrature points (50).
        integration_method: Captum's ``method`` (``"gausslegendre"``,
            ``"riemann_trapezoid"``, ...), named so because :func:`attribute` has a
            ``method`` argument; or ``"trapezoid"``: the composite trapezoid rule on
            ``n_steps`` equally spaced points -- weights summing to 1, unlike Captum's
            ``riemann_trapezoid``, whose sum to ``(n-1)/n`` -- fast path only.
        internal_batch_size: the most interpolated inputs in one forward/backward;
            ``None`` = as many as fit :func:`ecgray.attribution.fast.memory_budget`.
        rtol, atol: ``rtol=None``: exactly ``n_steps``; else *adaptive steps*: each
            record starts at ``min_steps`` and doubles, up to ``n_steps``, until every
            target's completeness error ``|delta| <= rtol * |f(x) - f(b)| + atol``; the
            steps used per (record, target) are in ``Attribution.steps``. With
            ``"trapezoid"`` the adaptive levels are nested -- ``min_steps + 1`` points,
            then ``2 min_steps + 1``, ... (each grid holds the previous one) -- so each
            level evaluates only its new midpoints and a row's cost is its final point
            count, not the sum of the ladder.
        min_steps: the first level of adaptive steps (8).
    """

    name = "integrated_gradients"
    aliases = ("ig", "integratedgradients")
    deprecated_params = {"baseline": "baselines"}
    default_batch_size = 16
    has_delta = True
    shared_targets = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        baselines: BaselineLike = None,
        n_steps: int = 50,
        integration_method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        rtol: float | None = None,
        atol: float = 0.0,
        min_steps: int = 8,
    ) -> None:
        super().__init__(
            forward,
            params,
            seed=seed,
            baselines=baselines,
            n_steps=n_steps,
            integration_method=integration_method,
            internal_batch_size=internal_batch_size,
            rtol=rtol,
            atol=atol,
            min_steps=min_steps,
        )
        self._chunk: int | None = None
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def check_params(cls, params):
        p = dict(params)
        if int(p["n_steps"]) < 1:
            raise ValueError("n_steps must be >= 1")
        if p["internal_batch_size"] is not None and int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")
        if p["integration_method"] not in INTEGRATION_METHODS:
            raise ValueError(f"integration_method must be one of {INTEGRATION_METHODS}")
        if p["integration_method"] == "trapezoid" and int(p["n_steps"]) < 2:
            raise ValueError("integration_method 'trapezoid' needs n_steps >= 2")
        if p["rtol"] is not None and float(p["rtol"]) < 0:
            raise ValueError("rtol must be >= 0")
        if float(p["atol"]) < 0:
            raise ValueError("atol must be >= 0")
        if int(p["min_steps"]) < 1:
            raise ValueError("min_steps must be >= 1")
        _check_baseline_param(p["baselines"])
        return p

    def provenance(self):
        out = super().provenance()
        if self.params["baselines"] is None:
            out["baselines"] = "zeros"
        if self.params["internal_batch_size"] is None and self._chunk is not None:
            out["internal_batch_size"] = f"auto ({self._chunk})"
        return out

    def max_rows(self, batch_size):
        ibs = self.params["internal_batch_size"]
        return max(1, min(batch_size, int(ibs))) if ibs is not None else batch_size

    def _points_chunk(self, x):
        if self._chunk is None:
            ibs = self.params["internal_batch_size"]
            if ibs is not None:
                self._chunk = int(ibs)
            else:
                self._chunk = points_per_chunk(self.forward, x.shape[1:], x.device, x.dtype)
        return self._chunk

    # -- rows path: Captum ------------------------------------------------------
    def attribute_rows(self, x, target, record):
        from captum.attr import IntegratedGradients as _IG  # lazy: importing ecgray never loads Captum

        p = self.params
        if p["rtol"] is not None:
            raise ValueError("adaptive steps (rtol) need the shared-target path (multi_target='auto')")
        if p["integration_method"] == "trapezoid":
            raise ValueError("integration_method 'trapezoid' needs the shared-target path (multi_target='auto')")
        base = _row_baseline(p["baselines"], x, record)
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
        from captum.attr._utils.approximation_methods import approximation_parameters  # lazy (Captum)

        step_sizes, alphas = approximation_parameters(self.params["integration_method"])
        return list(alphas(n_steps)), list(step_sizes(n_steps))

    def _path_grads(self, x, base, targets, alphas, weights):
        """Sum_k w_k grad f_t(b + a_k (x - b)) for every record and target: ``(R, T, leads, L)``."""
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

    def _levels(self) -> tuple[list[int], bool]:
        """The step counts to try, in order, and whether they are nested trapezoid grids."""
        p = self.params
        n_max = int(p["n_steps"])
        nested = p["rtol"] is not None and p["integration_method"] == "trapezoid"
        if p["rtol"] is None:
            return [n_max], nested
        if nested:  # 1 + m 2^j points: every grid holds the previous one
            levels, n = [], max(2, min(int(p["min_steps"]) + 1, n_max))
            while n <= n_max:
                levels.append(n)
                n = 2 * n - 1
            if levels[-1] != n_max:
                levels.append(n_max)  # the cap itself, evaluated afresh (not nested)
            return levels, nested
        levels, n = [], min(int(p["min_steps"]), n_max)
        while n < n_max:
            levels.append(n)
            n *= 2
        levels.append(n_max)
        return levels, nested

    def attribute_records(self, x, targets, record):
        p = self.params
        base = _row_baseline(p["baselines"], x, record)
        with torch.no_grad():
            tt = torch.as_tensor(targets, device=x.device)
            gain = (self.forward(x) - self.forward(base))[:, tt]  # (R, T)
        levels, nested = self._levels()
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


__all__ = ["IntegratedGradients", "INTEGRATION_METHODS"]
