"""Saliency: the gradient of the target output with respect to the input."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ecgray.attribution.base import AttributionMethod, _Quiet, register_method
from ecgray.attribution.fast import target_grads


@register_method
class Saliency(AttributionMethod):
    r"""Captum ``Saliency`` (Simonyan et al. 2013, https://arxiv.org/abs/1312.6034)::

        R_i = |df(x) / dx_i|      (abs=True, the default)
        R_i =  df(x) / dx_i       (abs=False)

    No completeness property, so no delta. Fast path: one forward per chunk of
    records, one backward per target; rows path: Captum's ``Saliency``.

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: unused (deterministic method).
        abs: return the absolute value of the gradient (True, Captum's default).
    """

    name = "saliency"
    aliases = ()

    def __init__(
        self, forward: nn.Module, params: Mapping[str, Any] | None = None, *, seed: int = 0, abs: bool = True
    ) -> None:
        super().__init__(forward, params, seed=seed, abs=abs)

    def attribute_rows(self, x, target, record):
        from captum.attr import Saliency as _Saliency  # lazy: importing ecgray never loads Captum

        with _Quiet():
            attr = _Saliency(self.forward).attribute(
                x.detach().requires_grad_(True), target=target, abs=bool(self.params["abs"])
            )
        return attr.detach(), None

    shared_targets = True

    def attribute_records(self, x, targets, record):
        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for j, g in target_grads(self.forward, x, targets):
            rel[:, j] = g.abs() if self.params["abs"] else g
        return rel, None


__all__ = ["Saliency"]
