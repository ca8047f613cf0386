"""Save and load :class:`ResNet1d` weights as safetensors; dispatch by file type.

A ``.safetensors`` file written by :func:`save_model` holds the state dict
(float32 tensors, BN ``num_batches_tracked`` included) and, in its string
metadata, ``ecgray_format`` (``"ResNet1d/1"``), ``config`` (the
:class:`ResNetConfig` as JSON) and ``classes`` (JSON list), plus whatever the
caller passes in ``metadata``.

Loading never runs code from the file: only HDF5 (read with h5py, see
:mod:`ecgray.models.keras`) and safetensors (a JSON header + raw tensor
bytes) are accepted. Pickle-based formats (``.pt``, ``.pth``, ``.pkl``,
``.ckpt``, ``.bin``, ``.joblib``) are refused, as are zipped Keras 3 ``.keras``
archives.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ecgray.errors import ModelError
from ecgray.models.keras import load_keras_hdf5
from ecgray.models.ribeiro2020 import ResNet1d, ResNetConfig
from ecgray.models.spec import spec_of

__all__ = ["save_model", "load_model_file", "load_safetensors", "model_id", "finalize_model", "FORMAT"]

FORMAT = "ResNet1d/1"
HDF5_SUFFIXES = (".hdf5", ".h5")
SAFETENSORS_SUFFIXES = (".safetensors",)
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")
_RESERVED = ("ecgray_format", "config", "classes")


def save_model(model: ResNet1d, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights, config and class names to ``path`` (``.safetensors``).

    ``metadata``: extra string key/values (e.g. ``{"trained_on": "..."}``); the
    keys ``ecgray_format``, ``config`` and ``classes`` are reserved.
    Returns the path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: save_model writes safetensors; use a .safetensors file name")
    config = getattr(model, "config", None)
    if not isinstance(config, ResNetConfig):
        raise ModelError("save_model expects an ecgray ResNet1d (with a ResNetConfig in .config)")
    extra = dict(metadata or {})
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ModelError(f"metadata keys {clash} are reserved")
    bad = [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ModelError(f"metadata must map str to str; bad keys {bad}")
    classes = list(getattr(model, "classes", config.classes))
    meta = {
        **extra,
        "ecgray_format": FORMAT,
        "config": json.dumps({**config.to_dict(), "classes": classes}, sort_keys=True),
        "classes": json.dumps(classes),
    }
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        tensors[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_safetensors(path: str | os.PathLike) -> ResNet1d:
    """Load a file written by :func:`save_model` (eval mode, frozen, float32)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("ecgray_format") != FORMAT or "config" not in meta:
        raise ModelError(f"{path}: safetensors file without ecgray metadata (ecgray_format={meta.get('ecgray_format')!r}); "
                         "write it with ecgray.models.save_model")
    try:
        cfg_dict = json.loads(meta["config"])
        if "classes" in meta:
            cfg_dict["classes"] = json.loads(meta["classes"])
        config = ResNetConfig.from_dict(cfg_dict)
        model = ResNet1d(config)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: invalid config in metadata ({exc})") from exc
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    extra = sorted(set(tensors) - set(state))
    if missing or extra:
        raise ModelError(f"{path}: tensors do not fit the config: missing {missing}, unexpected {extra}")
    for k, t in tensors.items():
        if t.shape != state[k].shape:
            raise ModelError(f"{path}: {k} has shape {tuple(t.shape)}, config expects {tuple(state[k].shape)}")
    model.load_state_dict(tensors, strict=True)
    model.source = str(path)
    model.metadata = {k: v for k, v in meta.items() if k not in _RESERVED}
    return finalize_model(model)


def load_model_file(path: str | os.PathLike) -> ResNet1d:
    """Load ``.hdf5``/``.h5`` (Keras, via h5py) or ``.safetensors`` (ecgray) weights.

    Any other file type is refused with a :class:`ModelError`: pickle-based
    checkpoints (``.pt``, ``.pkl``, ...) can execute arbitrary code when loaded.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return finalize_model(load_keras_hdf5(path))
    if suffix in SAFETENSORS_SUFFIXES:
        return load_safetensors(path)
    if suffix in _PICKLE_SUFFIXES:
        why = ("it is a pickle-based format, and unpickling can execute arbitrary code from the file. "
               "Convert it once in a trusted environment: build the ecgray ResNet1d, load the state dict, "
               "and write it with ecgray.models.save_model(model, 'model.safetensors')")
    elif suffix == ".keras":
        why = ("Keras 3 .keras archives are not read; save the model as HDF5 instead "
               "(model.save('model.h5') or model.save_weights('model.weights.h5'))")
    else:
        why = "only .hdf5/.h5 (Keras HDF5, read with h5py) and .safetensors are accepted, since neither can run code"
    raise ModelError(f"{path}: refusing to load a {suffix or 'suffix-less'} file: {why}")


def finalize_model(model: torch.nn.Module, device: str | torch.device = "cpu") -> torch.nn.Module:
    """float32, eval mode, ``requires_grad_(False)``, on ``device``, with ``.spec`` and ``.classes``."""
    model = model.to(device=torch.device(device), dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    model.spec = spec_of(model)  # a ResNet1d without one: Ribeiro geometry, its own classes
    if not getattr(model, "classes", None):
        model.classes = tuple(model.spec.classes)
    if tuple(model.classes) != tuple(model.spec.classes):
        raise ModelError(f"model classes {list(model.classes)} differ from its spec's {list(model.spec.classes)}")
    return model


def model_id(model: torch.nn.Module) -> str:
    """Short, stable id of the weights: first 12 hex digits of a SHA-256.

    Hashes, in sorted key order, each floating-point tensor's name, shape and
    float32 little-endian bytes (BN ``num_batches_tracked`` counters are left
    out: they do not change outputs). Independent of device and of how the
    weights were loaded (Keras HDF5 and its safetensors copy give the same id).
    """
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k.endswith("num_batches_tracked") or not v.is_floating_point():
            continue
        a = np.ascontiguousarray(v.detach().to("cpu", torch.float32).numpy(), dtype="<f4")
        h.update(k.encode())
        h.update(json.dumps(list(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]
