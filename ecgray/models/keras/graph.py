"""The ``model_config`` graph: parse the layers and their inputs, walk it back from the output.

The graph is rebuilt from ``inbound_nodes`` (Keras 2: ``[[name, node, tensor,
kwargs], ...]``; Keras 3: ``{"args": [...], "kwargs": {...}}`` with
``__keras_tensor__`` entries) and walked back from the output: Dense <- Flatten
<- ReLU <- BN (``bn2``) <- Add; at each Add the input that comes from a Conv1D
fed by ReLU <- BN <- Conv1D is the main path (``conv2``, ``bn1``, ``conv1``);
the other input is the skip path (``MaxPooling1D`` and/or a 1x1 ``Conv1D``, or
the identity) whose source must be the previous Add (or the stem's ReLU for the
first unit); the chain ends at ReLU <- BN <- Conv1D <- Input (the stem).
Dropout (and other layers that are the identity at inference) is skipped;
``ZeroPadding1D`` in front of a Conv1D is kept as its ``pad*`` entry.

:func:`walk` gives the layers by role only; their configs and weights are
checked and mapped onto :class:`ResNet1d` in :mod:`ecgray.models.keras.topology`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecgray.errors import ModelError

__all__ = ["Layer", "as_int", "walk"]

# Layers that are the identity at inference time.
_PASSTHROUGH = {
    "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "ActivityRegularization",
}


def as_int(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ModelError(f"expected a 1-D size, got {value!r}")
        value = value[0]
    return int(value)


@dataclass
class Layer:
    name: str
    cls: str
    config: dict
    inputs: list[str]


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


def _parse_graph(model_config: dict) -> tuple[dict[str, Layer], list[str]]:
    cls = model_config.get("class_name")
    cfg = model_config.get("config")
    if cls == "Sequential" or not isinstance(cfg, dict) or "layers" not in cfg:
        raise ModelError(f"model_config is a {cls!r} model, not the functional residual network of Ribeiro et al. 2020")
    layers: dict[str, Layer] = {}
    for entry in cfg["layers"]:
        name = entry.get("name") or entry.get("config", {}).get("name")
        lcls = entry["class_name"]
        if lcls in {"Model", "Functional", "Sequential"}:
            raise ModelError(f"layer {name!r} is a nested {lcls}; nested models are not supported")
        layers[name] = Layer(name, lcls, entry.get("config", {}), _parse_inbound(entry))
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

    def __init__(self, layers: dict[str, Layer], outputs: list[str]):
        self.layers = layers
        self.outputs = outputs

    # -- primitives
    def _single_input(self, layer: Layer) -> Layer:
        if len(layer.inputs) != 1:
            raise ModelError(f"layer {layer.name!r} ({layer.cls}) has {len(layer.inputs)} inputs, expected 1")
        return self.layers[layer.inputs[0]]

    def _is_identity(self, layer: Layer) -> bool:
        if layer.cls in _PASSTHROUGH:
            return True
        return layer.cls == "Activation" and layer.config.get("activation") in ("linear", None)

    def back(self, layer: Layer) -> Layer:
        """The first non-identity layer at or before ``layer``."""
        while self._is_identity(layer):
            layer = self._single_input(layer)
        return layer

    def src(self, layer: Layer) -> Layer:
        """The non-identity layer that feeds ``layer``."""
        return self.back(self._single_input(layer))

    @staticmethod
    def is_relu(layer: Layer) -> bool:
        if layer.cls == "ReLU":
            c = layer.config
            return not c.get("max_value") and not c.get("negative_slope") and not c.get("threshold")
        return layer.cls == "Activation" and layer.config.get("activation") == "relu"

    def expect(self, layer: Layer, what: str, ok: bool, where: str) -> Layer:
        if not ok:
            raise ModelError(f"{where}: expected {what}, found layer {layer.name!r} ({layer.cls})")
        return layer

    def conv_input(self, conv: Layer) -> tuple[Layer | None, Layer]:
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

    def _unit(self, add: Layer, bn2: Layer) -> dict:
        if len(add.inputs) != 2:
            raise ModelError(f"Add {add.name!r} has {len(add.inputs)} inputs, expected 2")
        branches = [self.back(self.layers[n]) for n in add.inputs]
        why = {b.name: self._main_path_problem(b) for b in branches}
        mains = [b for b in branches if why[b.name] is None]
        if len(mains) == 2:  # e.g. a 1x1 skip conv on the stem ReLU: conv2 is the one with kernel/stride > 1
            mains = [b for b in mains if as_int(b.config.get("kernel_size", 1)) > 1
                     or as_int(b.config.get("strides", 1)) > 1]
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

    def _main_path_problem(self, layer: Layer) -> str | None:
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


def walk(model_config: dict) -> dict[str, Any]:
    """The residual network in ``model_config``, by role.

    ``{"input", "stem_conv", "stem_pad", "stem_bn", "units", "dense"}``: :class:`Layer`
    objects (``stem_pad`` may be ``None``); ``units`` in forward order, each a dict
    ``add, bn2, conv2, pad2, bn1, conv1, pad1, skip_conv, skip_pad, skip_pool, x_src, y_src``.
    Raises :class:`ModelError` where the graph is not this architecture.
    """
    layers, outputs = _parse_graph(model_config)
    return _Walker(layers, outputs).walk()
