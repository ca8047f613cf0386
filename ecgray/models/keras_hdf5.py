"""Load Keras HDF5 weights of the Ribeiro et al. 2020 network into :class:`ResNet1d`.

Only :mod:`h5py` is used: neither TensorFlow nor Keras is imported, and nothing
in the file is ever executed (``model_config`` is parsed as JSON data).

Supported files
---------------
* **Keras 2.x full model** (``model.save("model.hdf5")``; the official
  ``model.hdf5`` of Ribeiro et al. 2020, Keras 2.2.4/TensorFlow, as well as
  ``tf.keras`` 2.x files): root attributes ``keras_version``, ``backend``,
  ``model_config`` (JSON, ``inbound_nodes`` as ``[[["conv1d_1", 0, 0, {}]]]``)
  and a group ``model_weights`` (attribute ``layer_names``; per layer
  ``model_weights/<layer>/`` with attribute ``weight_names`` such as
  ``b"conv1d_1/kernel:0"`` and the datasets at those relative paths).
* **Keras 3 legacy ``.h5``** (``model.save("m.h5")`` in Keras 3): the same
  layout, but ``model_config`` uses the Keras 3 format (``inbound_nodes`` are
  ``{"args": [...], "kwargs": {...}}`` holding ``__keras_tensor__`` entries with a
  ``keras_history``) and weight names have no ``:0`` suffix
  (``conv1d/kernel``). An empty ``top_level_model_weights`` group is ignored.
* **Weights-only files** without ``model_config``: Keras 2 ``save_weights``
  (the root *is* the weights group: ``layer_names`` at the root) and Keras 3
  ``save_weights("m.weights.h5")`` (``layers/<key>/vars/<i>``, where ``<key>``
  is ``<class>_<n>`` numbered in ``model.layers`` order and the ``vars`` group
  has the true layer name in attribute ``name``; no weight names at all).

Mapping
-------
With a ``model_config`` the weights are mapped **by topology, not by layer
names**: the graph is rebuilt from ``inbound_nodes`` and walked back from the
output: Dense <- Flatten <- ReLU <- BN (``bn2``) <- Add; at each Add the input
that comes from a Conv1D fed by ReLU <- BN <- Conv1D is the main path
(``conv2``, ``bn1``, ``conv1``); the other input is the skip path
(``MaxPooling1D`` and/or a 1x1 ``Conv1D``, or the identity) whose source must be
the previous Add (or the stem's ReLU for the first unit); the chain ends at
ReLU <- BN <- Conv1D <- Input (the stem). Dropout (and other layers that are the
identity at inference) is skipped. ``ZeroPadding1D`` + ``padding='valid'`` is
accepted where it equals Keras ``'same'`` padding. The :class:`ResNetConfig`
(leads, samples, stem width, filters, time axis per unit, kernel size,
classes) is derived from the file, so widths other than the published ones load.

Without a ``model_config`` (weights-only files) the mapping falls back to
**shapes and layer order**: convolutions with kernel > 1 are chained by their
(in, out) channels (stem, then ``conv1``/``conv2`` of each unit; in this
architecture their shapes are unique; order breaks ties), 1x1 convolutions go to
the unit whose (in, out) they match, BatchNorms are taken in layer order (stem,
then ``bn1``, ``bn2`` per unit; same-size BNs come in that order) and checked
against the widths. The time axis per unit is not stored in weights: the
published one (4096 -> 1024/256/64/16) is assumed when the Dense layer fits it,
otherwise pass ``config=``.

Conversions: conv kernel Keras ``(k, in, out)`` -> torch ``(out, in, k)``; Dense
kernel ``(in, out)`` -> torch ``(out, in)`` (the module flattens time-major like
Keras); BN ``gamma/beta/moving_mean/moving_variance`` ->
``weight/bias/running_mean/running_var`` (``center``/``scale`` False: zeros/ones).
Everything is loaded as float32; the model is returned in eval mode.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import torch

from ecgray.errors import ModelError
from ecgray.models.ribeiro2020 import CLASSES, KERAS_BN_EPS, ResNet1d, ResNetConfig, same_padding

__all__ = ["load_keras_hdf5", "read_keras_hdf5"]

# Layers that are the identity at inference time.
_PASSTHROUGH = {
    "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "ActivityRegularization",
}
_ROLES = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


# --------------------------------------------------------------------------- small helpers
def _text(value: Any) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _text_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [_text(v) for v in np.atleast_1d(np.asarray(value, dtype=object)).tolist()]


def _attr_list(obj, name: str) -> list[str]:
    """A list attribute, also when Keras split it into ``name0``, ``name1`` ... (> 64 KiB)."""
    if name in obj.attrs:
        return _text_list(obj.attrs[name])
    out: list[str] = []
    i = 0
    while f"{name}{i}" in obj.attrs:
        out += _text_list(obj.attrs[f"{name}{i}"])
        i += 1
    return out


def _has_attr_list(obj, name: str) -> bool:
    return name in obj.attrs or f"{name}0" in obj.attrs


def _role(weight_name: str) -> str | None:
    base = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return base if base in _ROLES else None


def _as_int(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ModelError(f"expected a 1-D size, got {value!r}")
        value = value[0]
    return int(value)


@dataclass
class _Layer:
    name: str
    cls: str
    config: dict
    inputs: list[str]


@dataclass
class _Weights:
    """The weights of one Keras layer: arrays in stored order, roles where known."""

    name: str
    arrays: list[np.ndarray]
    roles: list[str | None]

    def get(self, role: str) -> np.ndarray | None:
        for r, a in zip(self.roles, self.arrays):
            if r == role:
                return a
        return None


@dataclass
class _Spec:
    """Everything needed to fill a :class:`ResNet1d`: a config and named arrays."""

    config: ResNetConfig
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    mapping: str = "topology"  # or "shapes"


# --------------------------------------------------------------------------- reading HDF5
def _open(path_or_fileobj: str | os.PathLike | BinaryIO):
    import h5py

    try:
        if isinstance(path_or_fileobj, (str, os.PathLike)):
            return h5py.File(os.fspath(path_or_fileobj), "r")
        return h5py.File(path_or_fileobj, "r")
    except FileNotFoundError as exc:
        raise ModelError(f"model file not found: {path_or_fileobj}") from exc
    except OSError as exc:
        raise ModelError(f"{path_or_fileobj}: not a readable HDF5 file ({exc})") from exc


def _read_layer_group(g, name: str) -> _Weights:
    """Weights of one layer in the Keras 2 / Keras 3-legacy layout."""
    wnames = _attr_list(g, "weight_names")
    arrays, roles = [], []
    for wn in wnames:
        obj = g.get(wn)
        if obj is None:  # weight names that do not match the stored path: look by basename
            base = wn.rsplit("/", 1)[-1]
            hits: list = []
            g.visititems(lambda n, o: hits.append(o) if n.rsplit("/", 1)[-1] == base and hasattr(o, "shape") else None)
            if len(hits) != 1:
                raise ModelError(f"layer {name!r}: weight {wn!r} listed in weight_names is not in the file")
            obj = hits[0]
        arrays.append(np.asarray(obj[()]))
        roles.append(_role(wn))
    return _Weights(name, arrays, roles)


def _weights_from_layer_names(g) -> list[_Weights]:
    return [_read_layer_group(g[n], n) if n in g else _Weights(n, [], []) for n in _attr_list(g, "layer_names")]


def _natural_key(key: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    assert m is not None
    return m.group(1), int(m.group(2) or 0)


def _weights_from_keras3(g) -> list[_Weights]:
    """Keras 3 ``.weights.h5``: ``layers/<key>/vars/<i>`` (no weight names)."""
    out = []
    for key in sorted(g["layers"].keys(), key=_natural_key):
        lg = g["layers"][key]
        vars_ = lg.get("vars")
        if vars_ is None or len(vars_) == 0:
            if any(k != "vars" for k in lg.keys()):
                raise ModelError(f"layers/{key}: nested layers are not part of this architecture")
            continue
        name = _text(vars_.attrs.get("name", key))
        arrays = [np.asarray(vars_[str(i)][()]) for i in range(len(vars_))]
        out.append(_Weights(name, arrays, [None] * len(arrays)))
    return out


# --------------------------------------------------------------------------- model_config graph
def _history_refs(obj: Any) -> list[str]:
    """Layer names of all ``keras_history`` entries in a Keras 3 node (recursive)."""
    refs: list[str] = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            refs.append(str(obj["config"]["keras_history"][0]))
        else:
            for v in obj.values():
                refs += _history_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            refs += _history_refs(v)
    return refs


def _parse_inbound(layer: dict) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ModelError(f"layer {layer.get('name')!r} is called more than once (shared layers are not part of this architecture)")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return _history_refs(node.get("args", [])) + _history_refs(node.get("kwargs", {}))
    # Keras 2 / tf.keras: [[name, node_index, tensor_index, kwargs], ...]
    refs = []
    for entry in node:
        if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
            refs.append(entry[0])
        else:
            refs += _history_refs(entry)
    return refs


def _parse_graph(model_config: dict) -> tuple[dict[str, _Layer], list[str]]:
    cls = model_config.get("class_name")
    cfg = model_config.get("config")
    if cls == "Sequential" or not isinstance(cfg, dict) or "layers" not in cfg:
        raise ModelError(f"model_config is a {cls!r} model, not the functional residual network of Ribeiro et al. 2020")
    layers: dict[str, _Layer] = {}
    for entry in cfg["layers"]:
        name = entry.get("name") or entry.get("config", {}).get("name")
        lcls = entry["class_name"]
        if lcls in {"Model", "Functional", "Sequential"}:
            raise ModelError(f"layer {name!r} is a nested {lcls}; nested models are not supported")
        layers[name] = _Layer(name, lcls, entry.get("config", {}), _parse_inbound(entry))
    for layer in layers.values():
        for src in layer.inputs:
            if src not in layers:
                raise ModelError(f"layer {layer.name!r} takes its input from {src!r}, which is not in model_config")
    outputs = [o[0] if isinstance(o, list) else o for o in cfg.get("output_layers", [])]
    # Keras 3 may store a single output as ["dense", 0, 0].
    if outputs and isinstance(cfg["output_layers"][0], str):
        outputs = [cfg["output_layers"][0]]
    return layers, outputs


class _Walker:
    """Walks the Keras graph back from the output and checks every step."""

    def __init__(self, layers: dict[str, _Layer], outputs: list[str]):
        self.layers = layers
        self.outputs = outputs

    # -- primitives
    def _single_input(self, layer: _Layer) -> _Layer:
        if len(layer.inputs) != 1:
            raise ModelError(f"layer {layer.name!r} ({layer.cls}) has {len(layer.inputs)} inputs, expected 1")
        return self.layers[layer.inputs[0]]

    def _is_identity(self, layer: _Layer) -> bool:
        if layer.cls in _PASSTHROUGH:
            return True
        return layer.cls == "Activation" and layer.config.get("activation") in ("linear", None)

    def back(self, layer: _Layer) -> _Layer:
        """The first non-identity layer at or before ``layer``."""
        while self._is_identity(layer):
            layer = self._single_input(layer)
        return layer

    def src(self, layer: _Layer) -> _Layer:
        """The non-identity layer that feeds ``layer``."""
        return self.back(self._single_input(layer))

    @staticmethod
    def is_relu(layer: _Layer) -> bool:
        if layer.cls == "ReLU":
            c = layer.config
            return not c.get("max_value") and not c.get("negative_slope") and not c.get("threshold")
        return layer.cls == "Activation" and layer.config.get("activation") == "relu"

    def expect(self, layer: _Layer, what: str, ok: bool, where: str) -> _Layer:
        if not ok:
            raise ModelError(f"{where}: expected {what}, found layer {layer.name!r} ({layer.cls})")
        return layer

    def conv_input(self, conv: _Layer) -> tuple[_Layer | None, _Layer]:
        """``(ZeroPadding1D or None, source)`` of a Conv1D."""
        s = self.src(conv)
        if s.cls == "ZeroPadding1D":
            return s, self.src(s)
        return None, s

    # -- the walk
    def walk(self) -> dict:
        out = [self.layers[o] for o in self.outputs] if self.outputs else [
            l for l in self.layers.values() if not any(l.name in m.inputs for m in self.layers.values())
        ]
        if len(out) != 1:
            raise ModelError(f"expected one output layer, found {[l.name for l in out]}")
        last = self.back(out[0])
        if last.cls == "Activation" and last.config.get("activation") == "sigmoid":
            last = self.src(last)
        dense = self.expect(last, "a Dense output layer", last.cls == "Dense", "output")
        act = dense.config.get("activation", "linear")
        if act not in ("sigmoid", "linear", None):
            raise ModelError(f"output layer {dense.name!r} has activation {act!r}; expected sigmoid (or linear)")
        flat = self.src(dense)
        self.expect(flat, "Flatten before the Dense layer", flat.cls == "Flatten", f"layer {dense.name!r}")
        x = self.src(flat)
        units = []
        while True:
            self.expect(x, "ReLU", self.is_relu(x), "residual chain (walking back from Flatten)")
            bn = self.src(x)
            self.expect(bn, "BatchNormalization", bn.cls == "BatchNormalization", f"ReLU {x.name!r}")
            before = self.src(bn)
            if before.cls == "Add":
                unit = self._unit(before, bn)
                units.append(unit)
                x = unit["x_src"]
                continue
            stem_bn = bn
            stem_conv = self.expect(before, "Conv1D (stem) or Add", before.cls == "Conv1D",
                                    f"BatchNormalization {bn.name!r}")
            break
        stem_pad, inp = self.conv_input(stem_conv)
        self.expect(inp, "the Input layer", inp.cls == "InputLayer", f"stem Conv1D {stem_conv.name!r}")
        if not units:
            raise ModelError("no residual unit (Add -> BatchNormalization -> ReLU) before the output")
        units.reverse()
        # Chain checks: the skip input of unit i is the output of Add i-1 (stem ReLU for unit 0).
        prev_y = x
        for i, u in enumerate(units):
            if u["y_src"].name != prev_y.name:
                raise ModelError(
                    f"residual unit {i + 1} (Add {u['add'].name!r}): skip path starts at {u['y_src'].name!r}, "
                    f"expected {prev_y.name!r}"
                )
            prev_y = u["add"]
        extra_adds = {l.name for l in self.layers.values() if l.cls == "Add"} - {u["add"].name for u in units}
        if extra_adds:
            raise ModelError(f"Add layers outside the residual chain: {sorted(extra_adds)}")
        return {"input": inp, "stem_conv": stem_conv, "stem_pad": stem_pad, "stem_bn": stem_bn,
                "units": units, "dense": dense}

    def _unit(self, add: _Layer, bn2: _Layer) -> dict:
        if len(add.inputs) != 2:
            raise ModelError(f"Add {add.name!r} has {len(add.inputs)} inputs, expected 2")
        branches = [self.back(self.layers[n]) for n in add.inputs]
        why = {b.name: self._main_path_problem(b) for b in branches}
        mains = [b for b in branches if why[b.name] is None]
        if len(mains) == 2:  # e.g. a 1x1 skip conv on the stem ReLU: conv2 is the one with kernel/stride > 1
            mains = [b for b in mains if _as_int(b.config.get("kernel_size", 1)) > 1
                     or _as_int(b.config.get("strides", 1)) > 1]
        if len(mains) != 1:
            found = "; ".join(f"{n!r}: {w or 'fits'}" for n, w in why.items())
            raise ModelError(
                f"Add {add.name!r}: expected exactly one input on the main path "
                f"(Conv1D <- ReLU <- BatchNormalization <- Conv1D) and one skip path; {found}"
            )
        conv2 = mains[0]
        skip = branches[1] if branches[0] is conv2 else branches[0]
        pad2, relu1 = self.conv_input(conv2)
        bn1 = self.src(relu1)
        conv1 = self.src(bn1)
        pad1, x_src = self.conv_input(conv1)
        where = f"residual unit of Add {add.name!r}"
        self.expect(conv1, "Conv1D (first conv)", conv1.cls == "Conv1D", where)
        self.expect(x_src, "ReLU feeding the first conv", self.is_relu(x_src), where)
        skip_conv = skip_pool = skip_pad = None
        y = skip
        if y.cls == "Conv1D":
            skip_conv = y
            skip_pad, y = self.conv_input(y)
        if y.cls == "MaxPooling1D":
            skip_pool = y
            y = self.src(y)
        if y.cls not in ("Add",) and not self.is_relu(y):
            raise ModelError(f"{where}: skip path ends at {y.name!r} ({y.cls}); expected the previous Add or the stem ReLU")
        return {"add": add, "bn2": bn2, "conv2": conv2, "pad2": pad2, "bn1": bn1, "conv1": conv1, "pad1": pad1,
                "skip_conv": skip_conv, "skip_pad": skip_pad, "skip_pool": skip_pool, "x_src": x_src, "y_src": y}

    def _main_path_problem(self, layer: _Layer) -> str | None:
        """``None`` if ``layer`` is a Conv1D fed by ReLU <- BatchNormalization <- Conv1D, else what is wrong."""
        if layer.cls != "Conv1D":
            return f"is a {layer.cls}, not a Conv1D"
        try:
            _, relu = self.conv_input(layer)
            if not self.is_relu(relu):
                return f"Conv1D fed by {relu.name!r} ({relu.cls}), not a ReLU"
            bn = self.src(relu)
            if bn.cls != "BatchNormalization":
                return f"Conv1D <- ReLU {relu.name!r} fed by {bn.name!r} ({bn.cls}), not a BatchNormalization"
            conv = self.src(bn)
            if conv.cls != "Conv1D":
                return f"Conv1D <- ReLU <- BatchNormalization {bn.name!r} fed by {conv.name!r} ({conv.cls}), not a Conv1D"
        except ModelError as exc:
            return str(exc)
        return None


# --------------------------------------------------------------------------- assembling
def _conv_params(layer: _Layer) -> tuple[int, int, int]:
    """(filters, kernel, stride) of a Conv1D config, after checking the rest."""
    c = layer.config
    if c.get("data_format", "channels_last") != "channels_last":
        raise ModelError(f"Conv1D {layer.name!r}: data_format {c.get('data_format')!r} is not supported")
    if _as_int(c.get("dilation_rate", 1)) != 1 or int(c.get("groups", 1)) != 1:
        raise ModelError(f"Conv1D {layer.name!r}: dilated or grouped convolutions are not part of this architecture")
    if c.get("activation", "linear") not in ("linear", None):
        raise ModelError(f"Conv1D {layer.name!r}: activation {c.get('activation')!r}; expected linear")
    if c.get("use_bias", False):
        raise ModelError(f"Conv1D {layer.name!r} has a bias; the convolutions of this architecture have none")
    return int(c["filters"]), _as_int(c["kernel_size"]), _as_int(c.get("strides", 1))


def _check_padding(conv: _Layer, pad: _Layer | None, n: int | None, k: int, s: int) -> None:
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


def _bn_arrays(w: _Weights, n: int, prefix: str, bn_config: dict | None) -> dict[str, np.ndarray]:
    if bn_config is not None:
        axis = bn_config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 2):
            raise ModelError(f"BatchNormalization {w.name!r}: axis {axis!r}; expected the channel axis (-1)")
        eps = float(bn_config.get("epsilon", KERAS_BN_EPS))
        if not math.isclose(eps, KERAS_BN_EPS, rel_tol=1e-6):
            raise ModelError(f"BatchNormalization {w.name!r}: epsilon {eps}; this architecture uses {KERAS_BN_EPS}")
    if all(r is None for r in w.roles):
        roles = {4: ["gamma", "beta", "moving_mean", "moving_variance"], 2: ["moving_mean", "moving_variance"]}
        if bn_config is not None:
            roles[len(w.arrays)] = ((["gamma"] if bn_config.get("scale", True) else [])
                                    + (["beta"] if bn_config.get("center", True) else [])
                                    + ["moving_mean", "moving_variance"])
        if len(w.arrays) not in roles or len(roles[len(w.arrays)]) != len(w.arrays):
            raise ModelError(f"BatchNormalization {w.name!r}: {len(w.arrays)} unnamed weights; cannot tell "
                             "gamma/beta apart (pass a file with model_config)")
        w = _Weights(w.name, w.arrays, list(roles[len(w.arrays)]))
    mean, var = w.get("moving_mean"), w.get("moving_variance")
    if mean is None or var is None:
        raise ModelError(f"BatchNormalization {w.name!r}: moving_mean/moving_variance missing from the file")
    gamma, beta = w.get("gamma"), w.get("beta")
    out = {
        "weight": np.ones(n, np.float32) if gamma is None else gamma,
        "bias": np.zeros(n, np.float32) if beta is None else beta,
        "running_mean": mean,
        "running_var": var,
    }
    for k, v in out.items():
        if v.shape != (n,):
            raise ModelError(f"BatchNormalization {w.name!r}: {k} has shape {v.shape}, expected ({n},)")
    return {f"{prefix}.{k}": v for k, v in out.items()}


def _conv_kernel(w: _Weights, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    kernel = w.get("kernel")
    if kernel is None:
        kernels = [a for a in w.arrays if a.ndim == 3]
        if len(kernels) != 1:
            raise ModelError(f"Conv1D {w.name!r}: kernel missing from the file")
        kernel = kernels[0]
    if len(w.arrays) != 1:
        raise ModelError(f"Conv1D {w.name!r}: has {len(w.arrays)} weights (a bias?); expected a kernel only")
    if shape is not None and tuple(kernel.shape) != tuple(shape):
        raise ModelError(f"Conv1D {w.name!r}: kernel shape {tuple(kernel.shape)}, expected {tuple(shape)} (k, in, out)")
    return np.transpose(kernel, (2, 1, 0))


def _weights_lookup(weights: list[_Weights], names_needed: list[str]) -> dict[str, _Weights]:
    by_name = {w.name: w for w in weights}
    missing = [n for n in names_needed if n not in by_name or not by_name[n].arrays]
    if missing:
        raise ModelError(f"weights missing from the file for layer(s) {missing}")
    return by_name


def _default_classes(n: int) -> tuple[str, ...]:
    return CLASSES if n == len(CLASSES) else tuple(f"class_{i}" for i in range(n))


def _spec_from_graph(layers: dict[str, _Layer], outputs: list[str], weights: list[_Weights]) -> _Spec:
    g = _Walker(layers, outputs).walk()
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
            pool, pstride = _as_int(pc.get("pool_size", 2)), _as_int(pc.get("strides") or pc.get("pool_size", 2))
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
        filters=tuple(filters), samples=tuple(samples), kernel_size=k, classes=_default_classes(int(dkernel.shape[1])),
    )
    spec = _Spec(cfg, mapping="topology")
    spec.tensors["conv1.weight"] = _conv_kernel(wmap[g["stem_conv"].name], (k, n_leads, stem_f))
    spec.tensors.update(_bn_arrays(wmap[g["stem_bn"].name], stem_f, "bn1", g["stem_bn"].config))
    prev = stem_f
    for i, (u, f) in enumerate(zip(units, filters)):
        p = f"units.{i}"
        spec.tensors[f"{p}.conv1.weight"] = _conv_kernel(wmap[u["conv1"].name], (k, prev, f))
        spec.tensors.update(_bn_arrays(wmap[u["bn1"].name], f, f"{p}.bn1", u["bn1"].config))
        spec.tensors[f"{p}.conv2.weight"] = _conv_kernel(wmap[u["conv2"].name], (k, f, f))
        spec.tensors.update(_bn_arrays(wmap[u["bn2"].name], f, f"{p}.bn2", u["bn2"].config))
        if u["skip_conv"] is not None:
            spec.tensors[f"{p}.skip_conv.weight"] = _conv_kernel(wmap[u["skip_conv"].name], (1, prev, f))
        prev = f
    spec.tensors["dense.weight"] = dkernel.T
    if dbias is None:
        raise ModelError(f"Dense {g['dense'].name!r}: bias missing from the file")
    spec.tensors["dense.bias"] = dbias
    unused = [w.name for w in weights if w.arrays and w.name not in set(needed)]
    if unused:
        raise ModelError(f"layers with weights that are not part of the residual network: {unused}")
    return spec


def _spec_from_shapes(weights: list[_Weights], config: ResNetConfig | None) -> _Spec:
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
    main = [c for c in convs if _conv_kernel(c).shape[2] > 1]
    skips = [c for c in convs if _conv_kernel(c).shape[2] == 1]
    if not main:
        raise ModelError("no convolution with kernel > 1 in the file")
    ks = {_conv_kernel(c).shape[2] for c in main}
    if len(ks) != 1:
        raise ModelError(f"convolutions have different kernel sizes {sorted(ks)}")
    k = ks.pop()

    def io(c):  # (in, out)
        kk = _conv_kernel(c)
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
        default = ResNetConfig()
        if len(filters) != len(default.samples) or t_last != default.samples[-1]:
            raise ModelError("weights-only file (no model_config): the time axis of each residual unit is not "
                             f"stored; {len(filters)} units ending at {t_last} samples do not fit the published "
                             "4096 -> 1024/256/64/16; pass config=ResNetConfig(...)")
        cfg = ResNetConfig(**inferred, classes=_default_classes(n_classes))
    spec = _Spec(cfg, mapping="shapes")
    spec.tensors["conv1.weight"] = _conv_kernel(stem)
    spec.tensors.update(_bn_arrays(bns[0], stem_f, "bn1", None))
    for i, ((c1, c2, f), sc) in enumerate(zip(chain, unit_skips)):
        p = f"units.{i}"
        spec.tensors[f"{p}.conv1.weight"] = _conv_kernel(c1)
        spec.tensors.update(_bn_arrays(bns[1 + 2 * i], f, f"{p}.bn1", None))
        spec.tensors[f"{p}.conv2.weight"] = _conv_kernel(c2)
        spec.tensors.update(_bn_arrays(bns[2 + 2 * i], f, f"{p}.bn2", None))
        if sc is not None:
            spec.tensors[f"{p}.skip_conv.weight"] = _conv_kernel(sc)
    spec.tensors["dense.weight"] = dkernel.T
    spec.tensors["dense.bias"] = dbias
    return spec


def _check_config(inferred: ResNetConfig, given: ResNetConfig) -> ResNetConfig:
    keys = ("n_leads", "n_samples", "n_classes", "stem_filters", "filters", "samples", "kernel_size")
    diff = {k: (getattr(given, k), getattr(inferred, k)) for k in keys if getattr(given, k) != getattr(inferred, k)}
    if diff:
        raise ModelError(f"the file does not match config= (given, in file): {diff}")
    if len(given.classes) != given.n_classes:
        raise ModelError(f"config= names {len(given.classes)} classes for {given.n_classes} outputs")
    return given


def read_keras_hdf5(path_or_fileobj, *, config: ResNetConfig | None = None) -> tuple[ResNetConfig, dict[str, np.ndarray], dict]:
    """Parse a Keras HDF5 file: ``(config, torch-named float32 arrays, info)``.

    ``info`` has ``keras_version``, ``backend``, ``layout`` (``keras2``,
    ``keras3-legacy-h5``, ``keras2-weights``, ``keras3-weights``) and ``mapping``
    (``topology`` or ``shapes``).
    """
    import h5py

    with _open(path_or_fileobj) as f:
        info: dict[str, Any] = {
            "keras_version": _text(f.attrs.get("keras_version", "")) or None,
            "backend": _text(f.attrs.get("backend", "")) or None,
        }
        model_config = None
        if "model_config" in f.attrs:
            try:
                model_config = json.loads(_text(f.attrs["model_config"]))
            except ValueError as exc:
                raise ModelError(f"{path_or_fileobj}: model_config is not valid JSON ({exc})") from exc
        if "model_weights" in f and _has_attr_list(f["model_weights"], "layer_names"):
            g = f["model_weights"]
            weights = _weights_from_layer_names(g)
            info["keras_version"] = info["keras_version"] or _text(g.attrs.get("keras_version", "")) or None
            info["layout"] = "keras3-legacy-h5" if str(info["keras_version"] or "").startswith("3") else "keras2"
        elif _has_attr_list(f, "layer_names"):
            weights = _weights_from_layer_names(f)
            info["layout"] = "keras2-weights"
        elif isinstance(f.get("layers"), h5py.Group):
            weights = _weights_from_keras3(f)
            info["layout"] = "keras3-weights"
        else:
            raise ModelError(f"{path_or_fileobj}: HDF5 file without Keras weights "
                             "(no 'model_weights' group, no 'layer_names' attribute, no 'layers' group)")
    if model_config is not None:
        layers, outputs = _parse_graph(model_config)
        spec = _spec_from_graph(layers, outputs, weights)
        if config is not None:
            spec.config = _check_config(spec.config, config)
    else:
        spec = _spec_from_shapes(weights, config)
    info["mapping"] = spec.mapping
    return spec.config, spec.tensors, info


def load_keras_hdf5(path_or_fileobj, *, config: ResNetConfig | None = None) -> ResNet1d:
    """Load Keras 2/3 HDF5 weights (full model or weights only) into a :class:`ResNet1d`.

    ``config`` is optional: the architecture is derived from the file; when given
    it is checked against the file (a mismatch is a :class:`ModelError`) and its
    class names are used; for weights-only files with a non-published time axis
    it is required. Returns a float32 model in eval mode with frozen parameters.
    See the module docstring for the layouts and the mapping rules.
    """
    cfg, tensors, info = read_keras_hdf5(path_or_fileobj, config=config)
    try:
        model = ResNet1d(cfg)
    except ValueError as exc:
        raise ModelError(f"derived config {cfg} is not valid: {exc}") from exc
    state = model.state_dict()
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - expected)
    if missing or extra:  # pragma: no cover - guarded by the walkers above
        raise ModelError(f"weights do not fill the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for k, arr in tensors.items():
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            if t.shape != state[k].shape:
                raise ModelError(f"{k}: shape {tuple(t.shape)} in file, {tuple(state[k].shape)} in model")
            state[k].copy_(t)
    model.float().eval()
    model.requires_grad_(False)
    model.source = str(path_or_fileobj) if isinstance(path_or_fileobj, (str, os.PathLike)) else "<file object>"
    model.keras_info = info
    return model

