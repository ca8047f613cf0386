"""Named baselines for the path methods (integrated gradients, DeepLift): the reference input ``b`` they
explain ``f(x) - f(b)`` against.

``baselines=`` takes an array or a scalar (see :data:`ecgray.attribution.base.BaselineLike`), or one of
these names (:func:`parse`), on the CLI as ``--param baselines=blur:40``:

* ``zero`` -- all zeros (the default);
* ``blur:<ms>`` -- a Gaussian-blurred copy of each record, ``sigma = ms`` milliseconds at the model's
  sampling rate (``spec.fs``), along time, per lead, edges extended (``scipy.ndimage.gaussian_filter1d``,
  ``mode="nearest"``): it keeps the baseline wander and the slow waves of the record and removes what is
  sharper than the kernel (QRS complexes at ``blur:40`` and above);
* ``noise:<sd>`` -- Gaussian noise of ``sd`` in the input's units (mV), drawn with
  ``default_rng([seed, crc32(record bytes)])`` (``seed`` of :func:`~ecgray.attribution.attribute`): a record
  gets the same baseline in any batch or shard, and another one for another seed.

* ``mean:<file.npy>`` -- one array for every record: the mean over axis 0 of a ``(K, leads, L)`` array
  (e.g. records of the data set, :func:`reference_set`), or a ``(leads, L)`` array as it is;
* ``reference:<file.npy>`` (GradientShap only) -- expected gradients (Erion et al. 2021) over a reference set:
  the baselines are drawn from the ``K`` records of a ``(K, leads, L)`` array. For GradientShap ``mean``
  is the one-record set of that mean and ``zero`` the default.

Each is computed from the records of the call (:func:`named_baselines`) or read from the file
(:func:`baseline_set`), so it works for the shared-target and the row paths alike; provenance records the
name (``params["baselines"] == "blur:40"``), and with it the run's manifest: ``--resume`` refuses a
change of the name (not of the file's content under the same name).
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy.ndimage import gaussian_filter1d

#: the named baselines and their argument
NAMES = {"zero": None, "blur": "ms", "noise": "sd", "mean": "file", "reference": "file"}
FORMS = "zero, blur:<ms>, noise:<sd>, mean:<file.npy>, reference:<file.npy>"
#: methods whose baseline is one reference input per record (GradientShap draws from a set: pass an array)
PER_RECORD_METHODS = ("integrated_gradients", "deeplift")
#: methods that draw their baselines from a set (``reference:``, ``mean:``, ``zero``)
SET_METHODS = ("gradient_shap",)


def parse(spec: str) -> tuple[str, float | str | None]:
    """``"blur:40"`` -> ``("blur", 40.0)``; ``"zero"``/``"zeros"`` -> ``("zero", None)``; ``"mean:ref.npy"`` ->
    ``("mean", "ref.npy")``. ValueError naming the accepted forms for anything else (or a non-positive
    argument)."""
    text = str(spec).strip()
    name, _, arg = text.partition(":")
    name = name.lower()
    name = "zero" if name == "zeros" else name
    if name not in NAMES:
        raise ValueError(f"unknown baseline {spec!r}: use an array, a number or one of {FORMS}")
    if NAMES[name] is None:
        if arg:
            raise ValueError(f"baseline {spec!r}: 'zero' takes no argument")
        return name, None
    if NAMES[name] == "file":
        if not arg:
            raise ValueError(f"baseline {spec!r}: {name} needs a .npy file ({name}:<file.npy>)")
        return name, arg
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"baseline {spec!r}: {name} needs a number of {NAMES[name]} ({name}:<{NAMES[name]}>)") \
            from None
    if not (value > 0 and np.isfinite(value)):
        raise ValueError(f"baseline {spec!r}: {NAMES[name]} must be a positive number")
    return name, value


def named_baselines(spec: str, x: np.ndarray, *, fs: float | None, seed: int = 0) -> np.ndarray | float:
    """The baseline ``spec`` names for the records ``x (N, leads, L)``: ``0.0`` for ``zero``, else a float32
    array of ``x``'s shape (one baseline per record)."""
    name, value = parse(spec)
    if name == "zero":
        return 0.0
    x = np.asarray(x, np.float32)
    if name == "reference":
        raise ValueError(f"baseline {spec!r}: a reference set is drawn from by gradient_shap (expected gradients); "
                         "integrated_gradients and deeplift take one baseline per record (mean:<file.npy>, ...)")
    if name == "mean":
        return np.ascontiguousarray(np.broadcast_to(_mean(spec, value, x.shape[1:]), x.shape))
    if name == "blur":
        if not fs:
            raise ValueError(f"baseline {spec!r} needs the model's sampling rate (its spec's fs)")
        return gaussian_filter1d(x.astype(np.float64), sigma=value * float(fs) / 1000.0, axis=-1,
                                 mode="nearest").astype(np.float32)
    out = np.empty_like(x)
    for i, rec in enumerate(x):
        rng = np.random.default_rng([int(seed), zlib.crc32(np.ascontiguousarray(rec).tobytes())])
        out[i] = rng.normal(0.0, value, rec.shape)
    return out


def _load(spec: str, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 ``(K, leads, L)`` array of ``path`` (a ``(leads, L)`` one becomes ``K = 1``), checked."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"baseline {spec!r}: cannot read {path!r} as a .npy array ({exc})") from None
    a = np.asarray(a, np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or tuple(a.shape[1:]) != tuple(shape) or a.shape[0] == 0:
        raise ValueError(f"baseline {spec!r}: {path!r} holds an array of shape {a.shape}; the model's input is "
                         f"{tuple(shape)} per record, so it must be (K, {shape[0]}, {shape[1]}) or {tuple(shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"baseline {spec!r}: {path!r} contains NaN or inf")
    return a


def _mean(spec: str, path: str, shape: tuple[int, ...]) -> np.ndarray:
    return _load(spec, path, shape).astype(np.float64).mean(axis=0).astype(np.float32)


def baseline_set(spec: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The baselines a set method (GradientShap) draws from for a named ``spec``: ``None`` (zeros) for
    ``zero``, the ``(K, leads, L)`` records of ``reference:<file>``, the ``(1, leads, L)`` mean of
    ``mean:<file>``; ValueError for the per-record names (``blur``, ``noise``)."""
    name, value = parse(spec)
    if name == "zero":
        return None
    if name == "reference":
        return _load(spec, value, shape)
    if name == "mean":
        return _mean(spec, value, shape)[None]
    raise ValueError(f"baseline {spec!r}: gradient_shap draws from a set of baselines (reference:<file.npy>, "
                     f"mean:<file.npy>, zero, or an array (B, leads, L)); {name} is one reference input per record, "
                     "for integrated_gradients and deeplift")


def reference_set(x: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` records of ``x (N, leads, L)`` drawn without replacement (seeded), as float32: a reference set to
    save with ``np.save`` for ``reference:<file.npy>`` / ``mean:<file.npy>``."""
    x = np.asarray(x, np.float32)
    if not 1 <= int(n) <= len(x):
        raise ValueError(f"n must be between 1 and the {len(x)} records given, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=int(n), replace=False))
    return x[idx]
