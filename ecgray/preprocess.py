"""Turn a :class:`~ecgray.io.Record` into model inputs: ``(leads, n_samples)`` float32 at ``fs``, as the
model's :class:`~ecgray.models.spec.ModelSpec` says (Ribeiro et al. 2020, the default: ``(12, 4096)`` at
400 Hz; the numbers below are that spec's).

Steps and policies (in this order):

1. **Leads** (:func:`reorder_leads`): names are matched case-insensitively,
   ignoring a ``Lead`` prefix and spaces: ``I``/``DI``/``D1`` -> DI,
   ``II``/``DII``/``D2`` -> DII, ``III``/``DIII``/``D3`` -> DIII, ``aVR``/``AVR``
   -> AVR, ``aVL`` -> AVL, ``aVF`` -> AVF, ``V1``..``V6``. Anything else (e.g.
   ``MLII``, which is not a standard lead II) is unknown. Two leads that
   map to the same model lead -> :class:`LeadError` ``duplicate_leads``; a
   model lead not present -> ``missing_leads``; unknown leads in addition to
   the 12 are dropped and flagged ``extra_leads_dropped`` -- whatever their units
   (a RESP channel in ``NU``, blood pressure in ``mmHg``). A *needed* lead the reader
   could not give in mV (:attr:`ecgray.io.Record.bad_channels`) -> ``bad_units`` /
   ``bad_gain`` naming the lead (:func:`check_channels`). The reader's flags
   (``multi_frequency``) come first in the window's flags.
2. **Quality checks** on the 12 leads of the record as read (before
   resampling), :class:`SignalError` with error_type:
   ``bad_fs`` (fs not finite or <= 0), ``too_short`` (fewer than
   :data:`MIN_SECONDS` = 2 s, i.e. fewer than 800 samples after resampling
   to 400 Hz), ``nan_or_inf`` (any non-finite sample), ``flat_signal`` (every
   lead has peak-to-peak < :data:`FLAT_MV` = 0.01 mV; a single flat lead is
   kept and flagged ``flat_lead:<model lead name>``), ``saturated_signal``
   (every lead is flat or saturated; a saturated lead -- one that sits at its
   own maximum or minimum value, other than 0, for at least
   :data:`SATURATION_RUN_S` = 0.1 s in a row, i.e. clipped at the ADC rails or
   off-scale -- is kept and flagged ``saturated_lead:<model lead name>``),
   ``implausible_amplitude`` (more than :data:`MAX_OUTLIER_FRACTION` = 1 % of
   the samples of the leads that are not saturated have ``|x| >``
   :data:`MAX_ABS_MV` = 20 mV: usually wrong units).
3. **Resampling** (:func:`resample`) to 400 Hz with
   :func:`scipy.signal.resample_poly` (float64 inside, default Kaiser
   window) with ``up/down = Fraction(400 / fs).limit_denominator(1000)``
   (500 Hz: 4/5; 1000 Hz: 2/5; 257 Hz: 400/257). Flag ``resampled``.
4. **Length** (:func:`fit_length`) to 4,096 samples:

   * shorter: zero padding centred, ``left = (4096 - n) // 2``; ``offset =
     -left``; flag ``padded``;
   * longer, policy ``"first"`` (default): the first 4,096 samples
     (offset 0); ``"centre"`` (or ``"center"``): start ``(n - 4096) // 2``;
     flag ``cropped``;
   * longer, policy ``"windows"``: windows starting at 0, stride,
     2 x stride, ... (``stride_s`` seconds, default 4,096 samples) while
     they fit; if the last one does not reach the end of the record, one
     more window *ending at the end* is added (it overlaps the previous
     one). ``max_windows`` keeps the first k (flag ``windows_capped`` when
     it drops some). Flag ``windowed``.

   ``offset`` is the sample index, in the resampled signal, of the window
   start: ``x[:, k] == resampled[offset + k]`` for every k inside the record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
from scipy.signal import resample_poly

from ecgray.errors import LeadError, SignalError
from ecgray.leads import canonical_lead
from ecgray.models.ribeiro2020 import FS, LEADS, N_SAMPLES
from ecgray.models.spec import RIBEIRO2020

POLICIES = ("first", "centre", "center", "windows")
MIN_SECONDS = 2.0
FLAT_MV = 0.01
MAX_ABS_MV = 20.0
MAX_OUTLIER_FRACTION = 0.01
SATURATION_RUN_S = 0.1

@dataclass
class Prepared:
    """One model input window of one record.

    ``x`` is float32 ``spec.input_shape`` (``(12, 4096)`` for Ribeiro et al.), channels first, in model lead
    order; ``offset`` is the start of the window in the signal resampled to ``spec.fs``
    (negative: ``-left_pad`` zero samples were added on the left).
    """

    record_id: str
    window: int
    offset: int
    x: np.ndarray
    fs_in: float
    n_samples_in: int
    flags: tuple[str, ...] = ()


def reorder_leads(signal: np.ndarray, leads: Sequence[str], *, record_id: str | None = None,
                  model_leads: Sequence[str] = LEADS) -> tuple[np.ndarray, tuple[str, ...]]:
    """Return ``(signal[:, model order], flags)``; ``signal`` is ``(n_samples, n_leads)``; ``model_leads``
    the model's leads in input order (:attr:`ecgray.models.spec.ModelSpec.leads`; default the 12 of
    Ribeiro et al.), matched by :func:`ecgray.leads.canonical_lead`.

    Raises :class:`LeadError` ``missing_leads`` / ``duplicate_leads``.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.shape[1] != len(leads):
        raise LeadError(record_id, f"signal shape {signal.shape} does not match {len(leads)} lead names",
                        error_type="lead_mismatch")
    canon = [canonical_lead(n) for n in leads]
    seen: dict[str, list[str]] = {}
    for name, c in zip(leads, canon):
        if c is not None:
            seen.setdefault(c, []).append(str(name))
    dups = {c: names for c, names in seen.items() if len(names) > 1}
    if dups:
        raise LeadError(record_id, "duplicate leads: " + "; ".join(f"{c} <- {n}" for c, n in dups.items()),
                        error_type="duplicate_leads")
    wanted = [canonical_lead(m) or str(m) for m in model_leads]
    missing = [m for m, w in zip(model_leads, wanted) if w not in seen]
    if missing:
        unknown = [str(n) for n, c in zip(leads, canon) if c is None]
        msg = f"missing leads {list(missing)}" + (f" (unknown leads {unknown})" if unknown else "")
        raise LeadError(record_id, msg, error_type="missing_leads")
    order = lead_order(leads, model_leads)
    flags = ("extra_leads_dropped",) if len(leads) > len(order) else ()
    return signal[:, order], flags


def lead_order(leads: Sequence[str], model_leads: Sequence[str] = LEADS) -> list[int]:
    """Indices of the model's leads among ``leads`` (after :func:`reorder_leads` accepted them)."""
    canon = [canonical_lead(n) for n in leads]
    return [canon.index(canonical_lead(m) or str(m)) for m in model_leads]


def check_channels(rec, model_leads: Sequence[str] = LEADS) -> None:
    """Raise the reader's error for a channel the model needs that is not usable in mV
    (:attr:`ecgray.io.Record.bad_channels`: ``bad_units``, ``bad_gain``), naming the lead; a bad
    channel the model does not need is dropped with the other extra channels."""
    bad = getattr(rec, "bad_channels", None) or {}
    if not bad:
        return
    hits = [(i, bad[i]) for i in lead_order(rec.leads, model_leads) if i in bad]
    if hits:
        kind = hits[0][1][0]
        reasons = [r for _, (k, r) in hits if k == kind]
        more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        what = "a lead the model needs is" if len(reasons) == 1 else f"{len(reasons)} leads the model needs are"
        raise LeadError(rec.record_id, f"{what} not usable in mV: {'; '.join(reasons[:3])}{more}", error_type=kind)


def resample_factors(fs_in: float, fs_out: float = FS) -> tuple[int, int]:
    """``(up, down)`` for :func:`resample_poly`: ``Fraction(fs_out / fs_in).limit_denominator(1000)``."""
    frac = Fraction(fs_out / fs_in).limit_denominator(1000)
    return frac.numerator, frac.denominator


def resample(signal: np.ndarray, fs_in: float, fs_out: float = FS) -> np.ndarray:
    """Resample ``(n_samples, n_leads)`` along time to ``fs_out``; float32 out (float64 inside).

    Returns the input (as float32) when the rates already match.
    """
    up, down = resample_factors(fs_in, fs_out)
    if up == down:
        return np.asarray(signal, dtype=np.float32)
    y = resample_poly(np.asarray(signal, dtype=np.float64), up, down, axis=0)
    return y.astype(np.float32)


def fit_length(signal: np.ndarray, n: int = N_SAMPLES, *, policy: str = "first", stride: int | None = None,
               max_windows: int | None = None) -> tuple[list[tuple[int, np.ndarray]], tuple[str, ...]]:
    """Cut/pad ``(n_samples, n_leads)`` to windows of ``n`` samples.

    Returns ``([(offset, window), ...], flags)``; see the module docstring for
    the policies. ``stride`` is in samples (default ``n``).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    length = signal.shape[0]
    if length == n:
        return [(0, signal)], ()
    if length < n:
        left = (n - length) // 2
        out = np.zeros((n,) + signal.shape[1:], dtype=signal.dtype)
        out[left:left + length] = signal
        return [(-left, out)], ("padded",)
    if policy == "first":
        return [(0, signal[:n])], ("cropped",)
    if policy in ("centre", "center"):
        start = (length - n) // 2
        return [(start, signal[start:start + n])], ("cropped",)
    stride = n if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1 sample, got {stride}")
    starts = list(range(0, length - n + 1, stride))
    if starts[-1] + n < length:
        starts.append(length - n)
    flags: tuple[str, ...] = ("windowed",)
    if max_windows is not None and len(starts) > max_windows:
        starts = starts[:max_windows]
        flags += ("windows_capped",)
    return [(s, signal[s:s + n]) for s in starts], flags


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    if not mask.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max())


def saturated_leads(signal: np.ndarray, fs: float) -> np.ndarray:
    """One bool per lead: the lead stays at its own maximum or minimum value (other than 0) for at
    least :data:`SATURATION_RUN_S` seconds in a row -- clipped at the rails of the ADC, or off-scale.

    A real ECG reaches its extremes at the tips of waves, never on a plateau; an exact 0 plateau is
    zero padding (CODE-15) or a flat lead, not saturation.
    """
    run = max(2, math.ceil(SATURATION_RUN_S * float(fs)))
    out = np.zeros(signal.shape[1], dtype=bool)
    if signal.shape[0] < run:
        return out
    for j in range(signal.shape[1]):
        x = signal[:, j]
        for v in (x.max(), x.min()):
            if v != 0 and _longest_run(x == v) >= run:
                out[j] = True
                break
    return out


def check_signal(signal: np.ndarray, fs: float, *, record_id: str | None = None,
                 leads: Sequence[str] = LEADS) -> tuple[str, ...]:
    """Quality checks on ``(n_samples, leads)`` in mV (``too_short``: under MIN_SECONDS at any rate); raise
    :class:`SignalError`, return flags."""
    if fs is None or not math.isfinite(float(fs)) or float(fs) <= 0:
        raise SignalError(record_id, f"bad sampling frequency {fs!r}", error_type="bad_fs")
    up, down = resample_factors(float(fs))
    n_out = math.ceil(signal.shape[0] * up / down)
    if n_out < MIN_SECONDS * FS:
        raise SignalError(record_id, f"too short: {signal.shape[0]} samples at {fs} Hz "
                                     f"({signal.shape[0] / float(fs):.2f} s < {MIN_SECONDS} s)", error_type="too_short")
    finite = np.isfinite(signal)
    if not finite.all():
        bad = [leads[i] for i in np.flatnonzero(~finite.all(axis=0))]
        raise SignalError(record_id, f"{int((~finite).sum())} NaN/inf samples in leads {bad}", error_type="nan_or_inf")
    ptp = np.ptp(signal, axis=0)
    flat = ptp < FLAT_MV
    if flat.all():
        raise SignalError(record_id, f"flat signal: all leads have peak-to-peak < {FLAT_MV} mV", error_type="flat_signal")
    sat = saturated_leads(signal, fs) & ~flat
    if (flat | sat).all():
        names = [leads[i] for i in np.flatnonzero(sat)]
        raise SignalError(record_id, f"no usable lead: leads {names} are saturated (stuck at their extreme value "
                                     f"for >= {SATURATION_RUN_S} s: clipped at the ADC rails) and the others flat",
                          error_type="saturated_signal")
    flags = tuple(f"flat_lead:{leads[i]}" for i in np.flatnonzero(flat))
    flags += tuple(f"saturated_lead:{leads[i]}" for i in np.flatnonzero(sat))
    frac = float(np.mean(np.abs(signal[:, ~sat]) > MAX_ABS_MV))
    if frac > MAX_OUTLIER_FRACTION:
        raise SignalError(record_id, f"implausible amplitude: {frac:.1%} of samples beyond +-{MAX_ABS_MV} mV "
                                     "(wrong units?)", error_type="implausible_amplitude")
    return flags


def preprocess(rec, *, policy: str = "first", stride_s: float | None = None,
               max_windows: int | None = None, spec=None) -> list[Prepared]:
    """Model input windows of one record (see the module docstring for every policy).

    ``spec`` (:class:`ecgray.models.spec.ModelSpec`, default the Ribeiro et al. 2020 network's) gives the
    model's leads and their order, sampling rate, window length and input units/normalisation: the
    windows are ``(len(spec.leads), spec.n_samples)`` at ``spec.fs``.

    Raises :class:`LeadError` / :class:`SignalError` (stage ``preprocess``).
    """
    spec = spec or RIBEIRO2020
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if stride_s is not None and not stride_s > 0:
        raise ValueError(f"stride_s must be > 0, got {stride_s!r}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows!r}")
    rid = rec.record_id
    signal, flags = reorder_leads(rec.signal, rec.leads, record_id=rid, model_leads=spec.leads)
    check_channels(rec, spec.leads)
    flags = tuple(getattr(rec, "flags", ()) or ()) + flags
    flags += check_signal(signal, rec.fs, record_id=rid, leads=spec.leads)
    up, down = resample_factors(float(rec.fs), spec.fs)
    if up != down:
        flags += ("resampled",)
    y = resample(signal, float(rec.fs), spec.fs)
    stride = None if stride_s is None else max(1, int(round(stride_s * spec.fs)))
    windows, fit_flags = fit_length(y, spec.n_samples, policy=policy, stride=stride, max_windows=max_windows)
    flags += fit_flags
    return [
        Prepared(record_id=rid, window=i, offset=int(off),
                 x=np.ascontiguousarray(spec.to_input(w).T, dtype=np.float32),
                 fs_in=float(rec.fs), n_samples_in=int(rec.signal.shape[0]), flags=flags)
        for i, (off, w) in enumerate(windows)
    ]
