"""Reading the weights of each Keras layer out of an HDF5 file, in the four layouts that are supported.

Only :mod:`h5py` is used: neither TensorFlow nor Keras is imported, and nothing
in the file is ever executed (``model_config`` is parsed as JSON data).

Layouts (``info["layout"]``)
----------------------------
* ``keras2`` -- **Keras 2.x full model** (``model.save("model.hdf5")``; the official
  ``model.hdf5`` of Ribeiro et al. 2020, Keras 2.2.4/TensorFlow, as well as
  ``tf.keras`` 2.x files): root attributes ``keras_version``, ``backend``,
  ``model_config`` (JSON, ``inbound_nodes`` as ``[[["conv1d_1", 0, 0, {}]]]``)
  and a group ``model_weights`` (attribute ``layer_names``; per layer
  ``model_weights/<layer>/`` with attribute ``weight_names`` such as
  ``b"conv1d_1/kernel:0"`` and the datasets at those relative paths).
* ``keras3-legacy-h5`` -- **Keras 3 legacy ``.h5``** (``model.save("m.h5")`` in Keras 3): the same
  layout, but ``model_config`` uses the Keras 3 format (``inbound_nodes`` are
  ``{"args": [...], "kwargs": {...}}`` holding ``__keras_tensor__`` entries with a
  ``keras_history``) and weight names have no ``:0`` suffix
  (``conv1d/kernel``). An empty ``top_level_model_weights`` group is ignored.
* **Weights-only files** without ``model_config``: ``keras2-weights`` -- Keras 2 ``save_weights``
  (the root *is* the weights group: ``layer_names`` at the root) -- and ``keras3-weights`` -- Keras 3
  ``save_weights("m.weights.h5")`` (``layers/<key>/vars/<i>``, where ``<key>``
  is ``<class>_<n>`` numbered in ``model.layers`` order and the ``vars`` group
  has the true layer name in attribute ``name``; no weight names at all).

:func:`read_file` returns a :class:`KerasFile`: one :class:`Weights` per layer
(arrays in stored order, with their roles where the file names them), the
parsed ``model_config`` (``None`` for weights-only files) and ``info``
(``keras_version``, ``backend``, ``layout``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

import h5py
import numpy as np

from ecgray.errors import ModelError

__all__ = ["LAYOUTS", "KerasFile", "Weights", "read_file"]

LAYOUTS = ("keras2", "keras3-legacy-h5", "keras2-weights", "keras3-weights")
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


@dataclass
class Weights:
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
class KerasFile:
    """What :func:`read_file` found in one HDF5 file."""

    weights: list[Weights]
    model_config: dict | None  # None: a weights-only file
    info: dict[str, Any]  # keras_version, backend, layout


# --------------------------------------------------------------------------- the layouts
def _open(path_or_fileobj: str | os.PathLike | BinaryIO):
    try:
        if isinstance(path_or_fileobj, (str, os.PathLike)):
            return h5py.File(os.fspath(path_or_fileobj), "r")
        return h5py.File(path_or_fileobj, "r")
    except FileNotFoundError as exc:
        raise ModelError(f"model file not found: {path_or_fileobj}") from exc
    except OSError as exc:
        raise ModelError(f"{path_or_fileobj}: not a readable HDF5 file ({exc})") from exc


def _read_layer_group(g, name: str) -> Weights:
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
    return Weights(name, arrays, roles)


def _weights_from_layer_names(g) -> list[Weights]:
    return [_read_layer_group(g[n], n) if n in g else Weights(n, [], []) for n in _attr_list(g, "layer_names")]


def _natural_key(key: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    assert m is not None
    return m.group(1), int(m.group(2) or 0)


def _weights_from_keras3(g) -> list[Weights]:
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
        out.append(Weights(name, arrays, [None] * len(arrays)))
    return out


def read_file(path_or_fileobj: str | os.PathLike | BinaryIO) -> KerasFile:
    """Open the file, tell its layout (:data:`LAYOUTS`) and read every layer's weights."""
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
    return KerasFile(weights, model_config, info)
