"""Mapping strategy 2, for weights-only files: by shapes and layer order; and the architecture checks.

Without a ``model_config`` the mapping falls back to **shapes and layer
order**: convolutions with kernel > 1 are chained by their (in, out) channels
(stem, then ``conv1``/``conv2`` of each unit; in this architecture their shapes
are unique; order breaks ties), 1x1 convolutions go to the unit whose (in, out)
they match, BatchNorms are taken in layer order (stem, then ``bn1``, ``bn2`` per
unit; same-size BNs come in that order) and checked against the widths. The
time axis per unit is not stored in weights: the published one (4096 ->
1024/256/64/16) is assumed when the Dense layer fits it, otherwise pass
``config=``.

Architecture checks, one definition for the loader and the registry:
:data:`ARCH_KEYS` (the :class:`ResNetConfig` fields that fix the network; class
names do not), :func:`config_differences`, :func:`check_config` (a file against
``config=``) and :func:`published_differences` / :func:`check_published` (a
config against the published network of Ribeiro et al. 2020, ``ResNetConfig()``).
"""
from __future__ import annotations

import os
from typing import Any

from ecgray.errors import ModelError
from ecgray.models.keras.convert import Spec, bn_arrays, conv_kernel, default_classes
from ecgray.models.keras.layouts import Weights
from ecgray.models.ribeiro2020 import ResNetConfig

__all__ = ["ARCH_KEYS", "check_config", "check_published", "config_differences", "published_differences",
           "spec_from_shapes"]

ARCH_KEYS = ("n_leads", "n_samples", "n_classes", "stem_filters", "filters", "samples", "kernel_size")


# --------------------------------------------------------------------------- architecture checks
def config_differences(expected: ResNetConfig, actual: ResNetConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (expected, actual)}`` for the :data:`ARCH_KEYS` where the two differ."""
    return {k: (getattr(expected, k), getattr(actual, k)) for k in ARCH_KEYS
            if getattr(expected, k) != getattr(actual, k)}


def published_differences(config: ResNetConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (published, config)}`` where ``config`` is not the published Ribeiro et al. 2020 network."""
    return config_differences(ResNetConfig(), config)


def check_published(config: ResNetConfig, source: str | os.PathLike) -> None:
    """Raise :class:`ModelError` unless ``config`` (loaded from ``source``) is the published network."""
    diff = published_differences(config)
    if diff:
        raise ModelError(f"{source} is not the published Ribeiro et al. 2020 network (published, file): {diff}; "
                         "load it by path instead")


def check_config(inferred: ResNetConfig, given: ResNetConfig) -> ResNetConfig:
    """``given`` if the file (``inferred``) has its architecture; its class names are kept."""
    diff = config_differences(given, inferred)
    if diff:
        raise ModelError(f"the file does not match config= (given, in file): {diff}")
    if len(given.classes) != given.n_classes:
        raise ModelError(f"config= names {len(given.classes)} classes for {given.n_classes} outputs")
    return given


# --------------------------------------------------------------------------- mapping by shapes
def spec_from_shapes(weights: list[Weights], config: ResNetConfig | None) -> Spec:
    """Fallback without model_config: match by array shapes and layer order."""
    convs, bns, denses = [], [], []
    for w in weights:
        if not w.arrays:
            continue
        ndims = sorted(a.ndim for a in w.arrays)
        if ndims == [3] or (w.get("kernel") is not None and w.get("kernel").ndim == 3):
            convs.append(w)
        elif ndims == [1, 2]:
            denses.append(w)
        elif all(d == 1 for d in ndims) and 2 <= len(ndims) <= 4 and len({a.shape for a in w.arrays}) == 1:
            bns.append(w)
        else:
            raise ModelError(f"layer {w.name!r}: weights of shapes {[a.shape for a in w.arrays]} fit no layer of this architecture")
    if len(denses) != 1:
        raise ModelError(f"expected one Dense layer (kernel + bias), found {len(denses)}")
    main = [c for c in convs if conv_kernel(c).shape[2] > 1]
    skips = [c for c in convs if conv_kernel(c).shape[2] == 1]
    if not main:
        raise ModelError("no convolution with kernel > 1 in the file")
    ks = {conv_kernel(c).shape[2] for c in main}
    if len(ks) != 1:
        raise ModelError(f"convolutions have different kernel sizes {sorted(ks)}")
    k = ks.pop()

    def io(c):  # (in, out)
        kk = conv_kernel(c)
        return kk.shape[1], kk.shape[0]

    outs = {io(c)[1] for c in main}
    stems = [c for c in main if io(c)[0] not in outs] or main[:1]
    stem = stems[0]
    remaining = [c for c in main if c is not stem]
    chain = []
    width = io(stem)[1]
    while remaining:
        c1 = next((c for c in remaining if io(c)[0] == width), None)
        if c1 is None:
            break
        remaining.remove(c1)
        f = io(c1)[1]
        c2 = next((c for c in remaining if io(c) == (f, f)), None)
        if c2 is None:
            raise ModelError(f"no second convolution ({k}, {f}, {f}) after {c1.name!r}")
        remaining.remove(c2)
        chain.append((c1, c2, f))
        width = f
    if remaining or not chain:
        raise ModelError(f"convolutions {[c.name for c in remaining]} do not chain into residual units")
    stem_f = io(stem)[1]
    filters = [f for *_, f in chain]
    unit_skips = []
    prev = stem_f
    for f in filters:
        if prev != f:
            sc = next((c for c in skips if io(c) == (prev, f)), None)
            if sc is None:
                raise ModelError(f"1x1 skip convolution ({prev} -> {f}) missing from the file")
            skips.remove(sc)
            unit_skips.append(sc)
        else:
            unit_skips.append(None)
        prev = f
    if skips:
        raise ModelError(f"1x1 convolutions {[c.name for c in skips]} fit no residual unit")
    widths = [stem_f] + [f for f in filters for _ in (0, 1)]
    if [b.arrays[0].shape[0] for b in bns] != widths:
        raise ModelError(f"BatchNormalization sizes in layer order are {[b.arrays[0].shape[0] for b in bns]}, "
                         f"expected {widths} (stem, then bn1/bn2 per unit)")
    dense = denses[0]
    dkernel = dense.get("kernel")
    dbias = dense.get("bias")
    if dkernel is None or dbias is None:
        dkernel = next(a for a in dense.arrays if a.ndim == 2)
        dbias = next(a for a in dense.arrays if a.ndim == 1)
    if dkernel.shape[0] % filters[-1]:
        raise ModelError(f"Dense kernel {dkernel.shape} does not fit {filters[-1]} channels")
    t_last = dkernel.shape[0] // filters[-1]
    n_leads = io(stem)[0]
    n_classes = int(dkernel.shape[1])
    inferred = dict(n_leads=n_leads, n_classes=n_classes, stem_filters=stem_f, filters=tuple(filters), kernel_size=k)
    if config is not None:
        diff = {key: (getattr(config, key), v) for key, v in inferred.items() if getattr(config, key) != v}
        if config.samples[-1] != t_last:
            diff["samples[-1]"] = (config.samples[-1], t_last)
        if diff:
            raise ModelError(f"weights do not fit config= (given, in file): {diff}")
        cfg = config
    else:
        published = ResNetConfig()
        if len(filters) != len(published.samples) or t_last != published.samples[-1]:
            raise ModelError("weights-only file (no model_config): the time axis of each residual unit is not "
                             f"stored; {len(filters)} units ending at {t_last} samples do not fit the published "
                             "4096 -> 1024/256/64/16; pass config=ResNetConfig(...)")
        cfg = ResNetConfig(**inferred, classes=default_classes(n_classes))
    spec = Spec(cfg, mapping="shapes")
    spec.tensors["conv1.weight"] = conv_kernel(stem)
    spec.tensors.update(bn_arrays(bns[0], stem_f, "bn1", None))
    for i, ((c1, c2, f), sc) in enumerate(zip(chain, unit_skips)):
        p = f"units.{i}"
        spec.tensors[f"{p}.conv1.weight"] = conv_kernel(c1)
        spec.tensors.update(bn_arrays(bns[1 + 2 * i], f, f"{p}.bn1", None))
        spec.tensors[f"{p}.conv2.weight"] = conv_kernel(c2)
        spec.tensors.update(bn_arrays(bns[2 + 2 * i], f, f"{p}.bn2", None))
        if sc is not None:
            spec.tensors[f"{p}.skip_conv.weight"] = conv_kernel(sc)
    spec.tensors["dense.weight"] = dkernel.T
    spec.tensors["dense.bias"] = dbias
    return spec
