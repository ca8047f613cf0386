"""Kernel SHAP over lead x time-window segments (superpixels), all targets from the same forwards."""
from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from typing import Any

import torch
from torch import nn

from ecgray.attribution.base import AttributionMethod, register_method
from ecgray.attribution.gradient_shap import _record_seed
from ecgray.attribution.occlusion import model_fs

#: at most this many features for exact enumeration of all coalitions (2^M - 2 of them)
_MAX_EXACT_FEATURES = 20


def segment_ids(leads: int, length: int, window: int, per_lead: bool) -> tuple[torch.Tensor, int]:
    """Feature id ``(leads, L)`` of every input sample, and the number of features ``M``: consecutive
    windows of ``window`` samples (the last one shorter if ``window`` does not divide ``L``), per lead
    (``M = leads * n_windows``, lead-major) or across all leads (``M = n_windows``)."""
    win = torch.arange(length) // window
    n_win = int(win[-1]) + 1
    if per_lead:
        return torch.arange(leads)[:, None] * n_win + win[None], leads * n_win
    return win[None].expand(leads, length).clone(), n_win


def shapley_kernel_weight(m: int, k: int) -> float:
    """Lundberg & Lee's Shapley kernel ``(M - 1) / (C(M, k) k (M - k))`` of a coalition of ``k`` of ``m`` features."""
    return (m - 1) / (math.comb(m, k) * k * (m - k))


@register_method
class KernelShap(AttributionMethod):
    r"""Kernel SHAP (Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874) over *segments*:
    the features are lead x time-window superpixels (``per_lead=True``; all leads x window
    otherwise) of ``window_ms`` (consecutive, the last one shorter if needed), as Captum's
    ``KernelShap`` with a ``feature_mask``. A coalition ``z`` in ``{0,1}^M`` keeps the
    segments with ``z_j = 1`` and sets the others to ``baselines`` (a constant)::

        phi = argmin sum_z pi(z) (f(h(z)) - f(b) - z . phi)^2   s.t.  sum_j phi_j = f(x) - f(b)
        pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))                 (the Shapley kernel)
        R_{lead,i} = phi_{segment of (lead, i)}                      (each sample gets its segment's value)

    The efficiency constraint is exact (eliminated, as in the ``shap`` package), so
    ``sum_j phi_j = f(x) - f(b)``; note ``sum(R)`` over samples counts each ``phi_j`` once
    per sample of its segment. When ``n_samples >= 2^M - 2`` (and ``M <= 20``), every
    coalition is evaluated with its kernel weight and ``phi`` are the exact Shapley values
    of the segment game. Otherwise ``n_samples`` coalitions are drawn as Captum does --
    a size ``k`` with probability proportional to ``(M - 1) / (k (M - k))``, then ``k``
    segments uniformly, each with weight 1 -- in antithetic pairs (``z`` and ``1 - z``).
    The draws come from a private generator seeded by ``seed`` and a hash of the record
    (as :class:`~ecgray.attribution.gradient_shap.GradientShap`), so results do not
    depend on chunking or target list. The weighted least squares is solved in float64.

    All targets come from the same forwards (fast path); the rows path evaluates the same
    coalitions once per record of a chunk. No delta.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: the run seed of the coalition draws (with the record's content).
        window_ms: segment length in ms (1,000 ms = 400 samples at 400 Hz: 11 windows x 12
            leads = 132 segments for the published 4,096-sample input).
        per_lead: one segment per lead x window (True) or per window across leads.
        baselines: the value removed segments get (0.0, input units).
        n_samples: coalitions evaluated per record (256; exact enumeration when enough).
        internal_batch_size: perturbed copies per forward (64).
    """

    name = "kernel_shap"
    aliases = ("kernelshap", "kshap")
    default_batch_size = 8
    stochastic = True
    shared_targets = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        window_ms: float = 1000.0,
        per_lead: bool = True,
        baselines: float = 0.0,
        n_samples: int = 256,
        internal_batch_size: int = 64,
    ) -> None:
        super().__init__(
            forward,
            params,
            seed=seed,
            window_ms=window_ms,
            per_lead=per_lead,
            baselines=baselines,
            n_samples=n_samples,
            internal_batch_size=internal_batch_size,
        )
        self.fs = model_fs(forward)
        self.window = max(1, int(round(float(self.params["window_ms"]) * self.fs / 1000.0)))
        self.exact: bool | None = None
        self.n_features: int | None = None

    @classmethod
    def check_params(cls, params):
        p = dict(params)
        if not float(p["window_ms"]) > 0:
            raise ValueError("window_ms must be > 0")
        if not isinstance(p["baselines"], (int, float)) or isinstance(p["baselines"], bool):
            raise ValueError("kernel_shap: baselines must be a number (the value of removed segments)")
        p["baselines"] = float(p["baselines"])
        if int(p["n_samples"]) < 2:
            raise ValueError("n_samples must be >= 2")
        if int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")
        p["per_lead"] = bool(p["per_lead"])
        return p

    def provenance(self):
        out = super().provenance()
        out.update(fs=self.fs, window_samples=self.window, n_features=self.n_features, exact=self.exact,
                   seed=self.seed, rng="torch.Generator per record, seeded by blake2b(seed, record samples)")
        return out

    def coalitions(self, m: int, xrec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coalitions ``(S, m)`` (bool, neither empty nor full) and their weights ``(S,)`` float64."""
        n = int(self.params["n_samples"])
        if m <= _MAX_EXACT_FEATURES and n >= 2**m - 2:
            self.exact = True
            zs, ws = [], []
            for k in range(1, m):
                w = shapley_kernel_weight(m, k)
                for idx in combinations(range(m), k):
                    z = torch.zeros(m, dtype=torch.bool)
                    z[list(idx)] = True
                    zs.append(z)
                    ws.append(w)
            return torch.stack(zs), torch.tensor(ws, dtype=torch.float64)
        self.exact = False
        gen = torch.Generator(device="cpu").manual_seed(_record_seed(self.seed, xrec))
        ks = torch.arange(1, m, dtype=torch.float64)
        size_p = (m - 1) / (ks * (m - ks))
        half = (n + 1) // 2
        sizes = torch.multinomial(size_p / size_p.sum(), half, replacement=True, generator=gen) + 1
        order = torch.rand((half, m), generator=gen).argsort(dim=1)
        z = order < sizes[:, None]  # k random segments on
        z = torch.cat([z, ~z])[:n]
        return z, torch.ones(z.shape[0], dtype=torch.float64)

    def shap(self, xrec: torch.Tensor, targets: list[int]) -> torch.Tensor:
        """Relevance ``(T, leads, L)`` of one record ``(leads, L)``."""
        leads, length = xrec.shape
        ids, m = segment_ids(leads, length, min(self.window, length), bool(self.params["per_lead"]))
        ids = ids.to(xrec.device)
        self.n_features = m
        tt = torch.as_tensor(targets, dtype=torch.long, device=xrec.device)
        base = torch.tensor(self.params["baselines"], dtype=xrec.dtype, device=xrec.device)
        with torch.no_grad():
            fx = self.forward(xrec[None])[0, tt].double()
            fb = self.forward(torch.full_like(xrec, float(base))[None])[0, tt].double()
        delta = fx - fb  # (T,)
        if m == 1:
            phi = delta[None]
        else:
            z, w = self.coalitions(m, xrec)
            ibs = int(self.params["internal_batch_size"])
            ys = []
            with torch.no_grad():
                for s in range(0, z.shape[0], ibs):
                    keep = z[s:s + ibs].to(xrec.device)[:, ids]  # (b, leads, L)
                    ys.append(self.forward(torch.where(keep, xrec[None], base))[:, tt].double())
            y = torch.cat(ys)  # (S, T)
            zf = z.to(device=xrec.device, dtype=torch.float64)
            w = w.to(xrec.device)
            # eliminate phi_M = delta - sum_{j<M} phi_j
            yp = y - fb[None] - zf[:, -1:] * delta[None]
            a = zf[:, :-1] - zf[:, -1:]
            sw = w.sqrt()[:, None]
            # on the CPU: CUDA's lstsq has only the "gels" driver (full rank); gelsd copes with rank deficiency
            sol = torch.linalg.lstsq((a * sw).cpu(), (yp * sw).cpu(), driver="gelsd").solution.to(xrec.device)
            phi = torch.cat([sol, (delta - sol.sum(dim=0))[None]])  # (M, T)
        return phi.T[:, ids].to(xrec.dtype)  # (T, leads, L)

    def attribute_records(self, x, targets, record):
        return torch.stack([self.shap(x[r], list(targets)) for r in range(x.shape[0])]), None

    def attribute_rows(self, x, target, record):
        rel = torch.empty_like(x)
        for rec in torch.unique(record).tolist():
            rows = (record == rec).nonzero()[:, 0]
            rel[rows.to(rel.device)] = self.shap(x[int(rows[0])], target[rows.to(target.device)].tolist())
        return rel, None


__all__ = ["KernelShap"]
