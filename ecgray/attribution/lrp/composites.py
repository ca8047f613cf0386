"""Zennit composites for :class:`~ecgray.models.ribeiro2020.ResNet1d`, declared as layer maps.

As in ``zennit.composites`` (``EpsilonPlus``, ``EpsilonAlpha2Beta1``): each composite is a
``layer_map``, a list of ``(module types, rule)`` matched in order. Two places depend on the
instance rather than the type, and are named (a ``name_map``, matched first, so each
composite is a Zennit ``NameLayerMapComposite``):

* the first layer (the stem conv of a :class:`ResNet1d`, else the first conv/dense layer)
  gets ``first_rule``;
* the BNs that :class:`~ecgray.attribution.lrp.canonizers.ResNet1dMergeBatchNorm` folds into
  their conv (exact identities afterwards) get ``Pass``; every other BN -- each unit's
  ``bn2``, after the residual sum -- gets epsilon as an affine layer.

The rules and the reasons are in :mod:`ecgray.attribution.lrp`. Both composites take the
method's parameters (checked and completed by the method class, the one place for the
defaults) and the canonizers (default :func:`~ecgray.attribution.lrp.canonizers.resnet1d_canonizers`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ecgray.attribution.lrp import LRPAlphaBeta, LRPEpsilon
from ecgray.attribution.lrp.canonizers import bn_merge_pairs, resnet1d_canonizers
from ecgray.models.ribeiro2020 import ResNet1d

from zennit.composites import NameLayerMapComposite  # noqa: E402  (zennit imported by .canonizers)
from zennit.core import Stabilizer  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import AlphaBeta, Epsilon, Flat, Norm, Pass, WSquare, ZBox  # noqa: E402
from zennit.types import Activation, BatchNorm, Convolution  # noqa: E402

__all__ = ["ResNet1dAlphaBeta", "ResNet1dComposite", "ResNet1dEpsilon", "first_layer", "layer_map_base"]


def first_layer(model: nn.Module) -> nn.Module | None:
    """The stem conv of the (first) :class:`ResNet1d` in ``model``, else its first conv / dense layer."""
    for mod in model.modules():
        if isinstance(mod, ResNet1d):
            return mod.conv1
    return next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)


def _box(v):
    if isinstance(v, torch.Tensor):
        return v.detach().float()
    t = torch.as_tensor(v, dtype=torch.float32)
    if t.ndim == 1:  # one bound per lead -> (1, leads, 1), broadcast by zennit over batch and time
        t = t[None, :, None]
    return t


def layer_map_base(stabilizer: float) -> list:
    """The layer-map entries both composites share (cf. ``zennit.composites.layer_map_base``)."""
    return [
        (Activation, Pass()),  # ReLU, the probability sigmoid
        (Sum, Norm(stabilizer=stabilizer)),  # the residual sums (canonizers.ResidualSum)
        (BatchNorm, Epsilon(epsilon=stabilizer)),  # after the residual sum; the folded BNs are named: Pass
    ]


def _stabilizers(p: dict) -> tuple[Stabilizer, float]:
    """``(epsilon, stabilizer)``: the (possibly RMS-scaled) epsilon of the epsilon rule, and the stabiliser."""
    return Stabilizer(epsilon=float(p["epsilon"]), norm_scale=p["epsilon_scale"] == "rms"), float(p["stabilizer"])


def first_layer_rule(p: dict, conv_rule, eps: Stabilizer, stab: float):
    """The rule of ``first_rule`` (``"same"``: the composite's conv rule)."""
    if p["first_rule"] == "epsilon":
        return Epsilon(epsilon=eps)
    if p["first_rule"] == "flat":
        return Flat(stabilizer=stab)
    if p["first_rule"] == "wsquare":
        return WSquare(stabilizer=stab)
    if p["first_rule"] == "zbox":
        return ZBox(low=_box(p["zbox_low"]), high=_box(p["zbox_high"]), stabilizer=stab)
    return conv_rule


class ResNet1dComposite(NameLayerMapComposite):
    """``layer_map`` (by type), with the first layer and the folded BNs of ``model`` named first."""

    def __init__(self, model: nn.Module, layer_map: list, first_rule, canonizers=None):
        names = {id(m): n for n, m in model.named_modules()}
        first = first_layer(model)
        name_map = [
            ((names[id(first)],) if first is not None else (), first_rule),
            (tuple(names[id(bn)] for _, bn in bn_merge_pairs(model)), Pass()),  # folded: exact identities
        ]
        super().__init__(
            name_map=name_map,
            layer_map=layer_map,
            canonizers=resnet1d_canonizers() if canonizers is None else canonizers,
        )


class ResNet1dEpsilon(ResNet1dComposite):
    """``lrp_epsilon``: epsilon on every conv and the dense layer; first layer ``first_rule`` (default epsilon).

    ``params``: those of :class:`~ecgray.attribution.lrp.LRPEpsilon` (its defaults fill the rest).
    """

    def __init__(self, model: nn.Module, canonizers=None, **params: Any):
        p = LRPEpsilon.resolve_params(params)
        eps, stab = _stabilizers(p)
        conv = Epsilon(epsilon=eps)
        layer_map = layer_map_base(stab) + [
            (Convolution, conv),
            (torch.nn.Linear, Epsilon(epsilon=eps)),
        ]
        super().__init__(model, layer_map, first_layer_rule(p, conv, eps, stab), canonizers)


class ResNet1dAlphaBeta(ResNet1dComposite):
    """``lrp_alpha_beta``: alpha-beta on every conv (the stem too: ``first_rule="same"``), epsilon on the dense layer.

    ``params``: those of :class:`~ecgray.attribution.lrp.LRPAlphaBeta` (its defaults fill the rest).
    """

    def __init__(self, model: nn.Module, canonizers=None, **params: Any):
        p = LRPAlphaBeta.resolve_params(params)
        eps, stab = _stabilizers(p)
        conv = AlphaBeta(alpha=float(p["alpha"]), beta=float(p["beta"]), stabilizer=stab)
        layer_map = layer_map_base(stab) + [
            (Convolution, conv),
            (torch.nn.Linear, Epsilon(epsilon=eps)),
        ]
        super().__init__(model, layer_map, first_layer_rule(p, conv, eps, stab), canonizers)
