"""DeepLift (rescale rule), run by Captum on a copy of the model whose max-pools it can see."""
from __future__ import annotations

import copy
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
from ecgray.models.ribeiro2020 import SameMaxPool1d, same_padding


def _deeplift_maxpool_forward(self, x):
    """SameMaxPool1d.forward for DeepLift: pad (finite), then a hookable ``nn.MaxPool1d`` on a private copy."""
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
    model = copy.deepcopy(forward)
    for mod in model.modules():
        if isinstance(mod, SameMaxPool1d):
            mod._ecgray_pool = nn.MaxPool1d(mod.pool, mod.pool)
            mod.forward = _deeplift_maxpool_forward.__get__(mod)
    return model


@register_method
class DeepLift(AttributionMethod):
    r"""Captum ``DeepLift``, rescale rule, ``multiply_by_inputs=True``
    (Shrikumar et al. 2017, https://arxiv.org/abs/1704.02685).

    With ``dx = x - b`` and, for every non-linear unit ``y = s(z)``, the
    *multiplier* ``m = (s(z) - s(z_b)) / (z - z_b)`` in place of ``s'(z)``
    (``s'(z)`` where ``|z - z_b| < eps``; max-pools: Captum's max-pool rule),
    the multipliers ``m_i`` of the inputs follow by the chain rule, and::

        R_i = (x_i - b_i) * m_i,        sum_i R_i = f(x) - f(b)  (summation-to-delta)

    The reported delta is ``sum(R) - (f(x) - f(b))`` per row (float rounding).

    Runs on a deep copy of the model in which the Keras-style max-pools of the
    skip path are exposed as ``nn.MaxPool1d`` modules (see
    :func:`_deeplift_canonical`). Every ReLU of ``ResNet1d`` is a separate
    module used once (the stem ``relu`` included), as DeepLift requires.
    Rows path only (Captum's hooks are per forward).

    Args:
        forward: the (eval-mode, frozen) model, returning ``(N, C)``.
        params: the parameters below as a mapping, instead of keywords (the registry's way).
        seed: unused (deterministic method).
        baselines: as for integrated gradients (``None`` = zeros, a scalar,
            ``(leads, L)``, ``(N, leads, L)``, or a name: ``"zero"``, ``"blur:<ms>"``,
            ``"noise:<sd>"``). Formerly ``baseline`` (deprecated alias, accepted for one release).
        eps: the ``|z - z_b|`` below which the gradient replaces the multiplier (Captum's 1e-10).
    """

    name = "deeplift"
    aliases = ("deep_lift",)
    deprecated_params = {"baseline": "baselines"}
    default_batch_size = 32
    has_delta = True

    def __init__(
        self,
        forward: nn.Module,
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        baselines: BaselineLike = None,
        eps: float = 1e-10,
    ) -> None:
        super().__init__(forward, params, seed=seed, baselines=baselines, eps=eps)
        self.model = _deeplift_canonical(forward)

    @classmethod
    def check_params(cls, params):
        p = dict(params)
        _check_baseline_param(p["baselines"])
        return p

    def provenance(self):
        out = super().provenance()
        if self.params["baselines"] is None:
            out["baselines"] = "zeros"
        return out

    def attribute_rows(self, x, target, record):
        from captum.attr import DeepLift as _DeepLift  # lazy: importing ecgray never loads Captum

        base = _row_baseline(self.params["baselines"], x, record)
        with _Quiet():
            attr, delta = _DeepLift(self.model, multiply_by_inputs=True, eps=float(self.params["eps"])).attribute(
                x.detach().requires_grad_(True), baselines=base, target=target, return_convergence_delta=True
            )
        return attr.detach(), delta.detach()

    def close(self):
        self.model = None


__all__ = ["DeepLift"]
