"""GradientShap (expected gradients) with per-record, content-seeded random draws."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgray.attribution.base import AttributionMethod, BaselineLike, _as_tensor, register_method
from ecgray.attribution.baselines import parse
from ecgray.attribution.fast import target_grads


def _grad_of_target(forward: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d f(x)[row, target[row]] / d x for every row (rows are independent in eval mode)."""
    x = x.detach().requires_grad_(True)
    out = forward(x)
    sel = out.gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(sel, x)
    return g


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
    r"""GradientShap / expected gradients (Lundberg & Lee 2017, https://arxiv.org/abs/1705.07874;
    Erion et al. 2021, https://arxiv.org/abs/1906.10670), computed the way Captum's
    ``GradientShap`` does::

        R_i = E_{b ~ D, a ~ U(0,1)} [ (x~_i - b~_i) * df(b~ + a (x~ - b~)) / dx_i ]
        x~ = x + N(0, stdevs^2),   b~ = b + N(0, baseline_stdev^2)

    estimated with ``n_samples`` draws per record: a baseline ``b`` (uniformly
    from the ``baselines`` distribution ``D``, or zeros), the two Gaussian noises
    and ``a``. Completeness holds in expectation: ``E[sum R] = E[f(x~) - f(b~)]``.

    Not Captum's class itself, for one reason: determinism at data-set scale.
    The draws come from a private ``torch.Generator`` seeded from ``seed`` and a
    hash of the record's samples, so results are identical whatever the
    chunking, batch, Ray shard or target list (Captum draws from the global RNG
    in chunk order); the global RNG is never touched.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: the run seed of the draws (with the record's content).
        n_samples: draws per record (20).
        stdevs: noise std on the input (Captum's SmoothGrad-style ``stdevs``, 0.0).
        baselines: ``None`` (zeros) or an array ``(B, leads, L)``: the baseline
            distribution (a single ``(leads, L)`` array is a one-point distribution).
        baseline_stdev: noise std on the baseline; ``None`` = 0.01 input units
            (~10 uV for mV inputs) with the default zero baseline, 0 with user ``baselines``.
        internal_batch_size: samples per forward/backward (64).
        compute_delta: False; True gives ``sum(R) - mean_s(f(x_s) - f(b_s))``, the
            sampled expected-completeness error, at the price of 2 * n_samples extra forwards.
    """

    name = "gradient_shap"
    aliases = ("gradientshap", "gradshap", "expected_gradients")
    default_batch_size = 8
    has_delta = True
    stochastic = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        n_samples: int = 20,
        stdevs: float = 0.0,
        baselines: BaselineLike = None,
        baseline_stdev: float | None = None,
        internal_batch_size: int = 64,
        compute_delta: bool = False,
    ) -> None:
        super().__init__(
            forward,
            params,
            seed=seed,
            n_samples=n_samples,
            stdevs=stdevs,
            baselines=baselines,
            baseline_stdev=baseline_stdev,
            internal_batch_size=internal_batch_size,
            compute_delta=compute_delta,
        )

    @classmethod
    def check_params(cls, params):
        p = dict(params)  # a new dict: the caller's mapping is not modified
        if int(p["n_samples"]) < 1:
            raise ValueError("n_samples must be >= 1")
        if float(p["stdevs"]) < 0:
            raise ValueError("stdevs must be >= 0")
        if p["baseline_stdev"] is not None and float(p["baseline_stdev"]) < 0:
            raise ValueError("baseline_stdev must be >= 0")
        if isinstance(p["baselines"], str):
            name, _ = parse(p["baselines"])
            if name not in ("zero", "mean", "reference"):
                raise ValueError(f"baseline {p['baselines']!r}: gradient_shap draws from a set of baselines "
                                 "(reference:<file.npy>, mean:<file.npy>, zero, or an array (B, leads, L)); the named "
                                 "baselines blur:<ms> and noise:<sd> are one reference input per record, for "
                                 "integrated_gradients and deeplift")
        elif p["baselines"] is not None:
            b = p["baselines"]
            nd = b.ndim if hasattr(b, "ndim") else np.asarray(b).ndim
            if nd not in (2, 3):
                raise ValueError("baselines must be an array (B, leads, L) (the distribution) or one (leads, L)")
        if p["baseline_stdev"] is None:
            zero = p["baselines"] is None or (isinstance(p["baselines"], str) and parse(p["baselines"])[0] == "zero")
            p["baseline_stdev"] = 0.01 if zero else 0.0
        if int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")
        return p

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


__all__ = ["GradientShap"]
