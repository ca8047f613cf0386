"""Randomisation sanity checks: cascading model-parameter randomisation (MPRT) and the random-logit test.

MPRT (Adebayo et al., NeurIPS 2018; Quantus ``ModelParameterRandomisation``): the model's units are
re-initialised one at a time *from the output down*, cumulatively (:func:`cascade_layers`: the
top-level modules that hold parameters, a ``ModuleList``/``Sequential`` split into its members -- for
the Ribeiro ResNet: ``dense``, ``units.3`` ... ``units.0``, ``bn1``, ``conv1``). After each step the
map of the same record and target is recomputed and compared with the original map
(:mod:`ecgray.evaluate.similarity`). A map that still looks like the original once the weights are
random does not explain what the model learned. Re-initialisation calls each module's own
``reset_parameters()`` (PyTorch's default initialisation; BatchNorm's running statistics reset too)
under a seeded generator, so a step is reproducible.

Random logit (Sixt et al., ICML 2020; Quantus ``RandomLogit``): the map for the target vs the map for
another class drawn at random (seeded per record and target): a map that does not change with the
class explains the input, not the decision.
"""
from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator

import torch
from torch import nn


WHOLE_MODEL = "(whole model)"


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def cascade_layers(model: nn.Module) -> list[str]:
    """Dotted names of the units MPRT randomises, output first (see the module docstring); ``[""]`` (the
    whole model, one step) for a model whose parameters are all its own."""
    def units(mod: nn.Module, prefix: str) -> list[str]:
        kids = [(n, c) for n, c in mod.named_children() if _has_params(c)]
        own = next(mod.parameters(recurse=False), None) is not None
        if len(kids) == 1 and not own and not isinstance(kids[0][1], (nn.ModuleList, nn.Sequential)):
            return units(kids[0][1], f"{prefix}{kids[0][0]}.")  # a wrapper: look inside
        out = []
        for n, c in kids:
            if isinstance(c, (nn.ModuleList, nn.Sequential)):
                out += [f"{prefix}{n}.{n2}" for n2, c2 in c.named_children() if _has_params(c2)]
            else:
                out.append(f"{prefix}{n}")
        return out

    names = units(model, "")
    if not names and _has_params(model):
        return [""]  # parameters but no sub-modules holding them: the model is one unit
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    return names[::-1]


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of ``module`` in place (``reset_parameters`` where a submodule has one,
    else a normal draw with the parameter's own SD), from a generator seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        done = set()
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
                done.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in done:
                    sd = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                    p.normal_(0.0, sd or 0.02)


def cascade(model: nn.Module, seed: int = 0) -> Iterator[tuple[int, str, nn.Module]]:
    """``(step, layer, model)`` with units ``0..step`` of :func:`cascade_layers` re-initialised (cumulative,
    one deep copy of ``model`` changed in place; do not keep a yielded model past the next step)."""
    layers = cascade_layers(model)
    m = copy.deepcopy(model)
    for step, name in enumerate(layers):
        reinitialise(m.get_submodule(name), zlib.crc32(f"{seed}\0{name}".encode()))
        yield step, name or WHOLE_MODEL, m
