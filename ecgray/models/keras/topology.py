"""Mapping strategy 1, for files with a ``model_config``: by topology, not by layer names.

:func:`ecgray.models.keras.graph.walk` finds the layers by role; here each
layer's config is checked (no bias, no dilation or groups, ``channels_last``,
pool size = stride, BN axis and epsilon) and ``ZeroPadding1D`` +
``padding='valid'`` is accepted where it equals Keras ``'same'`` padding. The
:class:`ResNetConfig` (leads, samples, stem width, filters, time axis per
unit, kernel size, classes) is derived from the file, so widths other than the
published ones load. Layers with weights outside the network are refused.
"""
from __future__ import annotations

from ecgray.errors import ModelError
from ecgray.models.keras.convert import Spec, bn_arrays, conv_kernel, default_classes
from ecgray.models.keras.graph import Layer, as_int, walk
from ecgray.models.keras.layouts import Weights
from ecgray.models.ribeiro2020 import ResNetConfig, same_padding

__all__ = ["spec_from_graph"]


def _conv_params(layer: Layer) -> tuple[int, int, int]:
    """(filters, kernel, stride) of a Conv1D config, after checking the rest."""
    c = layer.config
    if c.get("data_format", "channels_last") != "channels_last":
        raise ModelError(f"Conv1D {layer.name!r}: data_format {c.get('data_format')!r} is not supported")
    if as_int(c.get("dilation_rate", 1)) != 1 or int(c.get("groups", 1)) != 1:
        raise ModelError(f"Conv1D {layer.name!r}: dilated or grouped convolutions are not part of this architecture")
    if c.get("activation", "linear") not in ("linear", None):
        raise ModelError(f"Conv1D {layer.name!r}: activation {c.get('activation')!r}; expected linear")
    if c.get("use_bias", False):
        raise ModelError(f"Conv1D {layer.name!r} has a bias; the convolutions of this architecture have none")
    return int(c["filters"]), as_int(c["kernel_size"]), as_int(c.get("strides", 1))


def _check_padding(conv: Layer, pad: Layer | None, n: int | None, k: int, s: int) -> None:
    padding = conv.config.get("padding", "valid")
    if padding == "same" and pad is None:
        return
    if padding == "valid":
        if pad is None and k == 1 and s == 1:
            return
        if pad is not None and n is not None:
            p = pad.config.get("padding", 1)
            lr = (int(p), int(p)) if isinstance(p, (int, float)) else tuple(int(v) for v in p)
            if lr == same_padding(n, k, s):
                return
            raise ModelError(f"Conv1D {conv.name!r}: ZeroPadding1D {pad.name!r} pads {lr}, "
                             f"Keras 'same' would pad {same_padding(n, k, s)}")
    raise ModelError(f"Conv1D {conv.name!r}: padding {padding!r}"
                     f"{' after ZeroPadding1D' if pad else ''} is not Keras 'same' padding")


def _weights_lookup(weights: list[Weights], names_needed: list[str]) -> dict[str, Weights]:
    by_name = {w.name: w for w in weights}
    missing = [n for n in names_needed if n not in by_name or not by_name[n].arrays]
    if missing:
        raise ModelError(f"weights missing from the file for layer(s) {missing}")
    return by_name


def spec_from_graph(model_config: dict, weights: list[Weights]) -> Spec:
    """Map the layers found by :func:`walk` onto :class:`ResNet1d` and derive its :class:`ResNetConfig`."""
    g = walk(model_config)
    units = g["units"]
    needed = [g["stem_conv"].name, g["stem_bn"].name, g["dense"].name]
    for u in units:
        needed += [u["conv1"].name, u["bn1"].name, u["conv2"].name, u["bn2"].name]
        needed += [u["skip_conv"].name] if u["skip_conv"] else []
    wmap = _weights_lookup(weights, needed)

    inp = g["input"].config
    shape = inp.get("batch_shape") or inp.get("batch_input_shape") or inp.get("shape")
    n_samples_in = n_leads_in = None
    if shape:
        dims = list(shape)[-2:]
        n_samples_in, n_leads_in = (None if d is None else int(d) for d in dims)

    stem_f, k, s = _conv_params(g["stem_conv"])
    if s != 1:
        raise ModelError(f"stem Conv1D {g['stem_conv'].name!r}: stride {s}, expected 1")
    filters, strides = [], []
    prev = stem_f
    for i, u in enumerate(units):
        where = f"residual unit {i + 1} (Add {u['add'].name!r})"
        f1, k1, s1 = _conv_params(u["conv1"])
        f2, k2, s2 = _conv_params(u["conv2"])
        if s1 != 1 or f1 != f2 or k1 != k or k2 != k:
            raise ModelError(f"{where}: convs {u['conv1'].name!r}/{u['conv2'].name!r} have (filters, kernel, stride) "
                             f"{(f1, k1, s1)}/{(f2, k2, s2)}; expected ({f2}, {k}, 1)/({f2}, {k}, d)")
        if u["skip_conv"] is None and prev != f2:
            raise ModelError(f"{where}: the skip path lacks the 1x1 Conv1D needed for the width change {prev} -> {f2}")
        if u["skip_conv"] is not None and prev == f2:
            raise ModelError(f"{where}: the skip path has a 1x1 Conv1D {u['skip_conv'].name!r} although the width "
                             f"stays {f2}; this architecture has none there")
        if u["skip_conv"] is not None:
            fs, ks, ss = _conv_params(u["skip_conv"])
            if (fs, ks, ss) != (f2, 1, 1):
                raise ModelError(f"{where}: skip Conv1D {u['skip_conv'].name!r} is {(fs, ks, ss)}, expected ({f2}, 1, 1)")
        if (u["skip_pool"] is not None) != (s2 > 1):
            raise ModelError(f"{where}: the second Conv1D {u['conv2'].name!r} has stride {s2} but the skip path "
                             f"{'has' if u['skip_pool'] is not None else 'lacks'} a MaxPooling1D")
        if u["skip_pool"] is not None:
            pc = u["skip_pool"].config
            pool, pstride = as_int(pc.get("pool_size", 2)), as_int(pc.get("strides") or pc.get("pool_size", 2))
            if pool != s2 or pstride != s2:
                raise ModelError(f"{where}: MaxPooling1D {u['skip_pool'].name!r} has pool {pool}/stride {pstride}, "
                                 f"expected {s2}/{s2}")
        filters.append(f2)
        strides.append(s2)
        prev = f2

    dense_w = wmap[g["dense"].name]
    dkernel, dbias = dense_w.get("kernel"), dense_w.get("bias")
    if dkernel is None:
        arrays2 = [a for a in dense_w.arrays if a.ndim == 2]
        dkernel = arrays2[0] if len(arrays2) == 1 else None
    if dkernel is None or dkernel.ndim != 2:
        raise ModelError(f"Dense {g['dense'].name!r}: kernel missing from the file")
    if dkernel.shape[0] % filters[-1]:
        raise ModelError(f"Dense {g['dense'].name!r}: {dkernel.shape[0]} inputs is not a multiple of {filters[-1]} channels")
    t = dkernel.shape[0] // filters[-1]
    samples = [t]
    for d in reversed(strides[1:]):
        samples.insert(0, samples[0] * d)
    n_samples = samples[0] * strides[0]
    if n_samples_in is not None and n_samples_in != n_samples:
        raise ModelError(f"input has {n_samples_in} samples but the Dense layer implies {n_samples}")
    n_leads = n_leads_in
    stem_kernel = wmap[g["stem_conv"].name].get("kernel")
    if stem_kernel is None:
        stem_kernel = wmap[g["stem_conv"].name].arrays[0]
    if n_leads is None:
        n_leads = int(stem_kernel.shape[1])
    # Padding checks need the time axis at each conv.
    _check_padding(g["stem_conv"], g["stem_pad"], n_samples, k, 1)
    t_in = n_samples
    for u, d, t_out in zip(units, strides, samples):
        _check_padding(u["conv1"], u["pad1"], t_in, k, 1)
        _check_padding(u["conv2"], u["pad2"], t_in, k, d)
        if u["skip_conv"] is not None:
            _check_padding(u["skip_conv"], u["skip_pad"], t_out, 1, 1)
        if u["skip_pool"] is not None and u["skip_pool"].config.get("padding", "valid") != "same" and t_in % d:
            raise ModelError(f"MaxPooling1D {u['skip_pool'].name!r}: 'valid' padding with {t_in} samples differs from 'same'")
        if t_in % d:
            raise ModelError(f"residual unit with stride {d}: {t_in} samples is not a multiple of it")
        t_in = t_out

    cfg = ResNetConfig(
        n_leads=n_leads, n_samples=n_samples, n_classes=int(dkernel.shape[1]), stem_filters=stem_f,
        filters=tuple(filters), samples=tuple(samples), kernel_size=k, classes=default_classes(int(dkernel.shape[1])),
    )
    spec = Spec(cfg, mapping="topology")
    spec.tensors["conv1.weight"] = conv_kernel(wmap[g["stem_conv"].name], (k, n_leads, stem_f))
    spec.tensors.update(bn_arrays(wmap[g["stem_bn"].name], stem_f, "bn1", g["stem_bn"].config))
    prev = stem_f
    for i, (u, f) in enumerate(zip(units, filters)):
        p = f"units.{i}"
        spec.tensors[f"{p}.conv1.weight"] = conv_kernel(wmap[u["conv1"].name], (k, prev, f))
        spec.tensors.update(bn_arrays(wmap[u["bn1"].name], f, f"{p}.bn1", u["bn1"].config))
        spec.tensors[f"{p}.conv2.weight"] = conv_kernel(wmap[u["conv2"].name], (k, f, f))
        spec.tensors.update(bn_arrays(wmap[u["bn2"].name], f, f"{p}.bn2", u["bn2"].config))
        if u["skip_conv"] is not None:
            spec.tensors[f"{p}.skip_conv.weight"] = conv_kernel(wmap[u["skip_conv"].name], (1, prev, f))
        prev = f
    spec.tensors["dense.weight"] = dkernel.T
    if dbias is None:
        raise ModelError(f"Dense {g['dense'].name!r}: bias missing from the file")
    spec.tensors["dense.bias"] = dbias
    unused = [w.name for w in weights if w.arrays and w.name not in set(needed)]
    if unused:
        raise ModelError(f"layers with weights that are not part of the residual network: {unused}")
    return spec
