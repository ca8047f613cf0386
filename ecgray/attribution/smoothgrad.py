"""SmoothGrad (noise tunnel): a gradient method averaged over noisy copies of the input."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ecgray.attribution.base import AttributionMethod, register_method, resolve_method
from ecgray.attribution.gradient_shap import _record_seed

#: Captum's ``NoiseTunnel`` ``nt_type`` values
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
#: methods that make no sense under a noise tunnel (perturbation methods, the tunnel itself)
_NOT_BASES = ("smoothgrad", "occlusion", "kernel_shap")


def noise(xrec: torch.Tensor, seed: int, n_samples: int, sigma: float) -> torch.Tensor:
    """The ``n_samples`` noise draws ``(n, leads, L)`` of one record: ``sigma * N(0, 1)`` in float32 from
    a CPU ``torch.Generator`` seeded by :func:`ecgray.attribution.gradient_shap._record_seed` ``(seed,
    record)`` (the run seed and a hash of the record's samples)."""
    gen = torch.Generator(device="cpu").manual_seed(_record_seed(seed, xrec))
    z = torch.randn((n_samples, *xrec.shape), generator=gen, dtype=torch.float32)
    return (sigma * z).to(device=xrec.device, dtype=xrec.dtype)


@register_method
class SmoothGrad(AttributionMethod):
    r"""SmoothGrad (Smilkov et al. 2017, https://arxiv.org/abs/1706.03825), Captum's
    ``NoiseTunnel`` around a registered gradient method ``base`` (Saliency by default)::

        R        = 1/n sum_k  A(x + e_k)                 nt_type="smoothgrad"
        R        = 1/n sum_k  A(x + e_k)^2               nt_type="smoothgrad_sq"
        R        = 1/n sum_k  A(x + e_k)^2 - (1/n sum_k A(x + e_k))^2    nt_type="vargrad"
        e_k ~ N(0, sigma^2),   sigma = stdevs * std(x)   (absolute=False, the default)
                               sigma = stdevs            (absolute=True: input units, mV)

    ``A`` is the base method with ``base_params``; ``std(x)`` is the standard deviation
    of the record over all its leads and samples (the paper scales the noise by the
    input's range; the std is less sensitive to a single spike -- a record of zeros gets
    no noise). ``n`` = ``n_samples``.

    Deterministic at data-set scale like :class:`~ecgray.attribution.gradient_shap.GradientShap`:
    a record's draws come from a private generator seeded by ``seed`` and a hash of the
    record's samples (:func:`noise`), so they do not depend on the chunking, batch, shard,
    position or target list; the global RNG is never touched. A stochastic base
    (``gradient_shap``) gets the same ``seed``; its own draws are keyed by the noisy copy.

    The base runs on the ``n`` noisy copies of each record, ``internal_batch_size``
    copies at a time, through its fast path (all targets per forward) where it has one,
    else its rows path; per-record ``baselines`` arrays ``(N, leads, L)`` in
    ``base_params`` follow each copy's record. Named baselines (``"blur:40"``) are not
    resolved inside the tunnel (pass arrays). No delta.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: the run seed of the noise (with the record's content).
        base: name or alias of a registered method (``"saliency"``, ``"ixg"``, ``"ig"``,
            ``"guided_backprop"``, ...); not occlusion / kernel_shap / smoothgrad.
        base_params: the base method's parameters (``None`` = its defaults).
        n_samples: noisy copies per record (16).
        stdevs: noise std, relative to ``std(x)`` (0.1) or absolute (see ``absolute``).
        absolute: ``stdevs`` in input units instead of relative (False).
        nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"`` (Captum's names).
        internal_batch_size: noisy copies per base call (64).
    """

    name = "smoothgrad"
    aliases = ("noise_tunnel", "noisetunnel", "smooth_grad")
    default_batch_size = 4
    stochastic = True
    shared_targets = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        base: str = "saliency",
        base_params: Mapping[str, Any] | None = None,
        n_samples: int = 16,
        stdevs: float = 0.1,
        absolute: bool = False,
        nt_type: str = "smoothgrad",
        internal_batch_size: int = 64,
    ) -> None:
        super().__init__(
            forward,
            params,
            seed=seed,
            base=base,
            base_params=base_params,
            n_samples=n_samples,
            stdevs=stdevs,
            absolute=absolute,
            nt_type=nt_type,
            internal_batch_size=internal_batch_size,
        )
        base_cls = resolve_method(self.params["base"])
        self.base = base_cls(forward, self.params["base_params"], seed=seed)

    @classmethod
    def check_params(cls, params):
        p = dict(params)
        base_cls = resolve_method(p["base"])
        if base_cls.name in _NOT_BASES:
            raise ValueError(f"smoothgrad: base {base_cls.name!r} is not a gradient method")
        p["base"] = base_cls.name
        bp = dict(p["base_params"] or {})
        if isinstance(bp.get("baselines"), str):
            raise ValueError("smoothgrad: named baselines are not resolved inside the noise tunnel; pass an array")
        p["base_params"] = base_cls.resolve_params(bp)
        if int(p["n_samples"]) < 1:
            raise ValueError("n_samples must be >= 1")
        if float(p["stdevs"]) < 0:
            raise ValueError("stdevs must be >= 0")
        if p["nt_type"] not in NT_TYPES:
            raise ValueError(f"nt_type must be one of {NT_TYPES}")
        if int(p["internal_batch_size"]) < 1:
            raise ValueError("internal_batch_size must be >= 1")
        p["absolute"] = bool(p["absolute"])
        return p

    def provenance(self):
        out = super().provenance()
        out["base_params"] = self.base.provenance()
        out["seed"] = self.seed
        out["rng"] = "torch.Generator per record, seeded by blake2b(seed, record samples)"
        return out

    def sigma(self, xrec: torch.Tensor) -> float:
        s = float(self.params["stdevs"])
        return s if self.params["absolute"] else s * float(xrec.double().std())

    def _copies(self, x: torch.Tensor, record: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy copies ``(R * n, leads, L)`` (record-major) and the caller's record index of each."""
        n = int(self.params["n_samples"])
        xs = torch.cat([x[r][None] + noise(x[r], self.seed, n, self.sigma(x[r])) for r in range(x.shape[0])])
        return xs, record.repeat_interleave(n)

    def _reduce(self, total: torch.Tensor, total_sq: torch.Tensor) -> torch.Tensor:
        n = int(self.params["n_samples"])
        mean, mean_sq = total / n, total_sq / n
        if self.params["nt_type"] == "smoothgrad":
            return mean
        if self.params["nt_type"] == "smoothgrad_sq":
            return mean_sq
        return mean_sq - mean**2

    def attribute_records(self, x, targets, record):
        n = int(self.params["n_samples"])
        xs, rec = self._copies(x, record)
        local = torch.arange(x.shape[0], device=x.device).repeat_interleave(n)
        total = torch.zeros((x.shape[0], len(targets), *x.shape[1:]), dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        ibs = int(self.params["internal_batch_size"])
        for s in range(0, xs.shape[0], ibs):
            sl = slice(s, s + ibs)
            if self.base.shared_targets:
                a, _ = self.base.attribute_records(xs[sl], list(targets), rec[sl])
            else:  # rows path: copies x targets, copy-major
                nc, nt = xs[sl].shape[0], len(targets)
                tgt = torch.as_tensor(targets, dtype=torch.long, device=x.device).repeat(nc)
                a, _ = self.base.attribute_rows(xs[sl].repeat_interleave(nt, dim=0), tgt,
                                                rec[sl].repeat_interleave(nt))
                a = a.reshape(nc, nt, *x.shape[1:])
            a = a.detach().to(torch.float64)
            total.index_add_(0, local[sl], a)
            total_sq.index_add_(0, local[sl], a * a)
        return self._reduce(total, total_sq).to(x.dtype), None

    def attribute_rows(self, x, target, record):
        n = int(self.params["n_samples"])
        xs, rec = self._copies(x, record)
        tgt = target.repeat_interleave(n)
        local = torch.arange(x.shape[0], device=x.device).repeat_interleave(n)
        total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        total_sq = torch.zeros_like(total)
        ibs = int(self.params["internal_batch_size"])
        for s in range(0, xs.shape[0], ibs):
            sl = slice(s, s + ibs)
            a, _ = self.base.attribute_rows(xs[sl], tgt[sl], rec[sl])
            a = a.detach().to(torch.float64)
            total.index_add_(0, local[sl], a)
            total_sq.index_add_(0, local[sl], a * a)
        return self._reduce(total, total_sq).to(x.dtype), None

    def close(self) -> None:
        self.base.close()


__all__ = ["SmoothGrad"]
