"""Input x gradient: the input times the gradient of the target output."""
from __future__ import annotations

import torch

from ecgray.attribution.base import AttributionMethod, _Quiet, register_method
from ecgray.attribution.fast import target_grads


@register_method
class InputXGradient(AttributionMethod):
    r"""Captum ``InputXGradient`` (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713)::

        R_i = x_i * df(x) / dx_i

    (equal to integrated gradients from a zero baseline for a function that is
    linear along the path). No parameters; no delta. Fast path: one forward per
    chunk of records, one backward per target; rows path: Captum's ``InputXGradient``.

    Constructor: ``InputXGradient(forward, params=None, *, seed=0)`` (``params`` must be
    empty, ``seed`` is unused).
    """

    name = "input_x_gradient"
    aliases = ("ixg", "inputxgradient", "gradient_x_input", "gxi")
    defaults = {}

    def attribute_rows(self, x, target, record):
        from captum.attr import InputXGradient as _IxG  # lazy: importing ecgray never loads Captum

        with _Quiet():
            attr = _IxG(self.forward).attribute(x.detach().requires_grad_(True), target=target)
        return attr.detach(), None

    shared_targets = True

    def attribute_records(self, x, targets, record):
        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for j, g in target_grads(self.forward, x, targets):
            rel[:, j] = x * g
        return rel, None


__all__ = ["InputXGradient"]
