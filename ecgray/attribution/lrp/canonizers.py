"""Zennit canonizers for :class:`~ecgray.models.ribeiro2020.ResNet1d` (see :mod:`ecgray.attribution.lrp`).

Module-level classes in Zennit's style (``zennit.canonizers``, ``zennit.torchvision``);
importing this module imports Zennit (through :func:`~ecgray.attribution._zennit.import_zennit`,
which copes with a broken torchvision), so :mod:`ecgray.attribution.lrp` imports it lazily.

* :class:`ResNet1dMergeBatchNorm` folds each BN that directly follows a conv
  (:func:`bn_merge_pairs`) into that conv, leaving the BN an exact identity;
* :class:`ResidualSumCanonizer` swaps each unit's
  :class:`~ecgray.models.ribeiro2020.ResidualAdd` for a :class:`ResidualSum`,
  whose ``zennit.layer.Sum`` child the composites give the ``Norm`` rule;
* :class:`ResNet1dCanonizer` is both, as one ``CompositeCanonizer`` (like
  ``zennit.torchvision.ResNetCanonizer``); :func:`resnet1d_canonizers` the same as a list.
"""
from __future__ import annotations

import torch
from torch import nn

from ecgray.attribution._zennit import import_zennit
from ecgray.models.ribeiro2020 import ResidualAdd, ResidualUnit, ResNet1d

import_zennit()

from zennit.canonizers import Canonizer, CompositeCanonizer, MergeBatchNorm  # noqa: E402
from zennit.layer import Sum  # noqa: E402

__all__ = [
    "ResNet1dCanonizer",
    "ResNet1dMergeBatchNorm",
    "ResidualSum",
    "ResidualSumCanonizer",
    "bn_merge_pairs",
    "resnet1d_canonizers",
]


def bn_merge_pairs(root: nn.Module) -> list[tuple[nn.Module, nn.BatchNorm1d]]:
    """``(conv, bn)`` pairs where the BN directly normalises that conv's output.

    Found by structure, not module order: the stem of every :class:`ResNet1d`
    and the first conv of every :class:`ResidualUnit`. ``bn2`` of a unit
    normalises a sum and is *not* listed.
    """
    return [(mod.conv1, mod.bn1) for mod in root.modules() if isinstance(mod, (ResNet1d, ResidualUnit))]


class ResNet1dMergeBatchNorm(MergeBatchNorm):
    """Fold each BN of :func:`bn_merge_pairs` into its conv; the BN becomes an exact identity.

    Zennit's merge leaves ``running_var = 1``, i.e. a factor ``1/sqrt(1 + eps)``
    (0.05 % per BN with Keras' eps = 1e-3); here ``running_var = 1 - eps``.
    """

    def apply(self, root_module):
        instances = []
        for conv, bn in bn_merge_pairs(root_module):
            instance = self.copy()
            instance.register((conv,), bn)
            instances.append(instance)
        return instances

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        MergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)


class ResidualSum(nn.Module):
    """``x + skip`` as ``zennit.layer.Sum`` over the two stacked operands (the module LRP sees).

    The ``Norm`` rule on :attr:`sum` splits the relevance of the sum between the
    branches in proportion to their contributions.
    """

    def __init__(self):
        super().__init__()
        self.sum = Sum(dim=-1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.sum(torch.stack([x, skip], dim=-1))


class ResidualSumCanonizer(Canonizer):
    """Swap every :class:`~ecgray.models.ribeiro2020.ResidualAdd` child for a :class:`ResidualSum`.

    One instance per swapped module (as Zennit's canonizers register one instance
    per module); :meth:`remove` puts the original module back.
    """

    def __init__(self):
        super().__init__()
        self.parent = self.name = self.original = None

    def apply(self, root_module):
        found = [
            (parent, name, child)
            for parent in root_module.modules()
            for name, child in parent.named_children()
            if isinstance(child, ResidualAdd)
        ]
        instances = []
        for parent, name, child in found:
            instance = self.copy()
            instance.register(parent, name, child)
            instances.append(instance)
        return instances

    def register(self, parent, name, original):
        """Replace ``parent.<name>`` (``original``) by a fresh :class:`ResidualSum`."""
        self.parent, self.name, self.original = parent, name, original
        setattr(parent, name, ResidualSum())

    def remove(self):
        """Put the original module back."""
        setattr(self.parent, self.name, self.original)

    def copy(self):
        return self.__class__()


class ResNet1dCanonizer(CompositeCanonizer):
    """Everything :class:`ResNet1d` needs for LRP: BN folding and the residual ``Sum`` modules."""

    def __init__(self):
        super().__init__((ResNet1dMergeBatchNorm(), ResidualSumCanonizer()))


def resnet1d_canonizers() -> list:
    """Fresh canonizers for :class:`ResNet1d`: ``[ResNet1dMergeBatchNorm(), ResidualSumCanonizer()]``.

    Usable with any Zennit composite: ``EpsilonPlus(canonizers=resnet1d_canonizers())``.
    """
    return [ResNet1dMergeBatchNorm(), ResidualSumCanonizer()]
