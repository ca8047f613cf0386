"""Read a Keras HDF5 file into torch-named arrays and load them into a :class:`ResNet1d`."""
from __future__ import annotations

import os

import numpy as np
import torch

from ecgray.errors import ModelError
from ecgray.models.keras.layouts import read_file
from ecgray.models.keras.shapes import check_config, spec_from_shapes
from ecgray.models.keras.topology import spec_from_graph
from ecgray.models.ribeiro2020 import ResNet1d, ResNetConfig

__all__ = ["load_keras_hdf5", "read_keras_hdf5"]


def read_keras_hdf5(path_or_fileobj, *, config: ResNetConfig | None = None) -> tuple[ResNetConfig, dict[str, np.ndarray], dict]:
    """Parse a Keras HDF5 file: ``(config, torch-named float32 arrays, info)``.

    ``info`` has ``keras_version``, ``backend``, ``layout`` (``keras2``,
    ``keras3-legacy-h5``, ``keras2-weights``, ``keras3-weights``) and ``mapping``
    (``topology`` or ``shapes``).
    """
    keras_file = read_file(path_or_fileobj)
    if keras_file.model_config is not None:
        spec = spec_from_graph(keras_file.model_config, keras_file.weights)
        if config is not None:
            spec.config = check_config(spec.config, config)
    else:
        spec = spec_from_shapes(keras_file.weights, config)
    info = dict(keras_file.info, mapping=spec.mapping)
    return spec.config, spec.tensors, info


def load_keras_hdf5(path_or_fileobj, *, config: ResNetConfig | None = None) -> ResNet1d:
    """Load Keras 2/3 HDF5 weights (full model or weights only) into a :class:`ResNet1d`.

    ``config`` is optional: the architecture is derived from the file; when given
    it is checked against the file (a mismatch is a :class:`ModelError`) and its
    class names are used; for weights-only files with a non-published time axis
    it is required. Returns a float32 model in eval mode with frozen parameters.
    See :mod:`ecgray.models.keras` for the layouts and the mapping rules.
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
