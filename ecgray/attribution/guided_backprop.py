"""Guided backpropagation: gradients through ReLUs that pass only positive signals both ways."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ecgray.attribution.base import AttributionMethod, _Quiet, register_method
from ecgray.attribution.fast import target_grads


class _GuidedReLUFunction(torch.autograd.Function):
    """``relu(x)`` forward; backward ``relu(grad_out) * [x > 0]`` (the guided rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * (x > 0).to(grad_out.dtype)


def _guided_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    # replaces the module's output by the same values, computed by the guided function (one node per call,
    # so a ReLU module used several times in one forward gets the guided rule at every use)
    return _GuidedReLUFunction.apply(inputs[0])


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Inside: every ``nn.ReLU`` module of ``model`` backpropagates with the guided rule; yields how
    many ReLU modules were hooked. Hooks are removed on exit (also on error). ``F.relu`` calls
    (functional ReLUs) are not modules and keep their plain gradient."""
    handles = [m.register_forward_hook(_guided_hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def _check_relus(model: nn.Module) -> None:
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.ReLU modules: guided backpropagation overrides the "
                         "gradient of nn.ReLU modules only (a functional F.relu is not seen), so it would be the "
                         "plain gradient here")


def _check_relus_run(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse a model whose nn.ReLU modules exist but are not called (it applies ``F.relu`` instead, as
    :class:`~ecgray.models.ribeiro2020.ResNet2dView` does): one probe forward of ``x[:1]``."""
    calls = 0

    def count(_m, _i, _o):
        nonlocal calls
        calls += 1

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise ValueError(f"the nn.ReLU modules of {type(model).__name__} are never called in its forward (does it "
                         "use F.relu?): guided backpropagation would be the plain gradient")


@register_method
class GuidedBackprop(AttributionMethod):
    r"""Guided backpropagation (Springenberg et al. 2015, https://arxiv.org/abs/1412.6806),
    as Captum's ``GuidedBackprop``: the gradient of the target output with respect to the
    input, except that at every ReLU ``a = max(0, z)`` the backward pass becomes::

        dR/dz = relu(dR/da) * [z > 0]

    (only positive gradients, and only where the forward input was positive). ``R`` has
    the shape of the input; no completeness property, no delta.

    Only ``nn.ReLU`` *modules* are modified (as in Captum): a model calling ``F.relu``
    would silently get plain gradients there, so a model without any ``nn.ReLU`` module
    is refused, and so is one whose ``nn.ReLU`` modules are never called (checked with one
    probe forward). The Ribeiro ``ResNet1d`` uses one ``nn.ReLU`` module per activation
    (stem ``relu``; ``relu1``, ``relu2`` in each unit), each called once per forward;
    a module called several times gets the rule at each call (the rule is attached per
    call, by a forward hook that reroutes the output through a guided autograd function).

    Fast path: one forward per chunk of records with the guided ReLUs, one backward per
    target. Rows path: Captum's ``GuidedBackprop``. The hooks exist only while a chunk is
    computed.

    Constructor: ``GuidedBackprop(forward, params=None, *, seed=0)`` (no parameters,
    ``seed`` unused).
    """

    name = "guided_backprop"
    aliases = ("guidedbackprop", "guided_backpropagation", "gbp")
    defaults = {}
    shared_targets = True

    def __init__(self, forward: nn.Module, params: Mapping[str, Any] | None = None, *, seed: int = 0) -> None:
        super().__init__(forward, params, seed=seed)
        _check_relus(forward)
        self._probed = False

    def _probe(self, x: torch.Tensor) -> None:
        if not self._probed:
            _check_relus_run(self.forward, x)
            self._probed = True

    def attribute_rows(self, x, target, record):
        from captum.attr import GuidedBackprop as _GBP  # lazy: importing ecgray never loads Captum

        self._probe(x)
        with _Quiet():
            warnings.filterwarnings("ignore", message=r".*Setting backward hooks on ReLU.*")
            attr = _GBP(self.forward).attribute(x.detach().requires_grad_(True), target=target)
        return attr.detach(), None

    def attribute_records(self, x, targets, record):
        self._probe(x)
        rel = torch.empty((x.shape[0], len(targets), *x.shape[1:]), dtype=x.dtype, device=x.device)
        with guided_relus(self.forward):
            for j, g in target_grads(self.forward, x, targets):
                rel[:, j] = g
        return rel, None


__all__ = ["GuidedBackprop", "guided_relus"]
