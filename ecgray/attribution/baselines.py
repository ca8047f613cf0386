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

Each is computed from the records of the call (:func:`named_baselines`), so it works for the shared-target
and the row paths alike; provenance records the name (``params["baselines"] == "blur:40"``).
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy.ndimage import gaussian_filter1d

#: the named baselines and their argument
NAMES = {"zero": None, "blur": "ms", "noise": "sd"}
#: methods whose baseline is one reference input per record (GradientShap draws from a set: pass an array)
PER_RECORD_METHODS = ("integrated_gradients", "deeplift")


def parse(spec: str) -> tuple[str, float | None]:
    """``"blur:40"`` -> ``("blur", 40.0)``; ``"zero"``/``"zeros"`` -> ``("zero", None)``. ValueError naming the
    accepted forms for anything else (or a non-positive argument)."""
    text = str(spec).strip().lower()
    name, _, arg = text.partition(":")
    name = "zero" if name == "zeros" else name
    forms = "zero, blur:<ms>, noise:<sd>"
    if name not in NAMES:
        raise ValueError(f"unknown baseline {spec!r}: use an array, a number or one of {forms}")
    if NAMES[name] is None:
        if arg:
            raise ValueError(f"baseline {spec!r}: 'zero' takes no argument")
        return name, None
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
