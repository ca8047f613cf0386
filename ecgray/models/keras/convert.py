"""Keras arrays -> the torch names and layouts of :class:`ResNet1d` (used by both mapping strategies).

Conv kernel Keras ``(k, in, out)`` -> torch ``(out, in, k)``; Dense kernel
``(in, out)`` -> torch ``(out, in)`` (the module flattens time-major like
Keras); BN ``gamma/beta/moving_mean/moving_variance`` ->
``weight/bias/running_mean/running_var`` (``center``/``scale`` False:
zeros/ones). Everything is loaded as float32 later, by the loader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ecgray.errors import ModelError
from ecgray.models.keras.layouts import Weights
from ecgray.models.ribeiro2020 import CLASSES, KERAS_BN_EPS, ResNetConfig

__all__ = ["Spec", "bn_arrays", "conv_kernel", "default_classes"]


@dataclass
class Spec:
    """Everything needed to fill a :class:`ResNet1d`: a config and named arrays."""

    config: ResNetConfig
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    mapping: str = "topology"  # or "shapes"


def bn_arrays(w: Weights, n: int, prefix: str, bn_config: dict | None) -> dict[str, np.ndarray]:
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
        w = Weights(w.name, w.arrays, list(roles[len(w.arrays)]))
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


def conv_kernel(w: Weights, shape: tuple[int, int, int] | None = None) -> np.ndarray:
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


def default_classes(n: int) -> tuple[str, ...]:
    return CLASSES if n == len(CLASSES) else tuple(f"class_{i}" for i in range(n))
