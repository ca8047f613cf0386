"""R-peak detection and beat-averaged (R-peak aligned) signal and relevance.

Plain NumPy / NeuroKit2 functions, no Ray. ``method=`` switches follow NeuroKit2.

:func:`detect_rpeaks`
    R-peak sample indices of one lead, as one sorted int64 array (not
    NeuroKit2's ``nk.ecg_peaks`` contract: see its docstring): ``nk.ecg_clean``
    then the detector of ``nk.ecg_findpeaks`` (``method`` passes through:
    ``"neurokit"``, ``"pantompkins1985"``, ``"hamilton2002"``, ``"elgendi2010"``, ...).
    ``nk.ecg_peaks(..., correct_artifacts=False)`` is ``nk.ecg_findpeaks``
    plus building a pandas DataFrame that we never use (~18 ms of its
    ~22 ms per 4,096-sample lead), so :func:`nk.ecg_findpeaks` is called
    directly: same peaks, ~5x faster. Cleaning uses the method of the same name
    when ``nk.ecg_clean`` has one (as ``nk.ecg_process`` does), the
    ``"neurokit"`` cleaning otherwise, and no cleaning for the detectors
    that ``nk.ecg_clean`` itself passes through raw (christov, ssf, zong,
    kalidas). ``valid=(start, stop)`` restricts detection to
    ``signal[start:stop]`` (e.g. to leave out the zero padding of
    :func:`ecgray.preprocess.fit_length`, whose edges would otherwise ring
    in the filters); indices are returned in the full signal's frame.
    Never raises on bad signals and never lets a warning out: flat,
    non-finite, too short (< 1 s) or failing input gives an empty int64 array.

:func:`average_beats`
    Mean beat of ``x`` (12, L) and of ``relevance`` (..., 12, L), returned
    as a :class:`BeatAverage`. Policy:

    * **Lead.** R-peaks are detected on ``lead`` (default DII). Its
      detection is *plausible* when (a) it has at least 3 peaks, (b) every
      RR interval is within 0.24-3.0 s (instantaneous heart rate 20-250
      bpm), (c) the RR coefficient of variation is <= 0.5 (atrial
      fibrillation is typically 0.1-0.35, so real irregular rhythms pass;
      missed or doubled detections do not) and (d) the template correlation
      is >= 0.66 (the acceptance threshold of Orphanidou et al. 2015, IEEE
      JBHI 19:832): the mean leave-one-out correlation of the +-100 ms QRS
      windows (0.5-40 Hz) with the mean of the other windows. (d) is needed
      because detectors happily return regular "peaks" on pure noise: on
      Gaussian noise leads whose detection passes (a)-(c), 17/86 reach 0.5
      and 2/86 reach 0.66; lead DII of the 150 CPSC records A0001-A0150:
      median > 0.95, minimum ~0.69. If not plausible, the other leads are
      tried in decreasing order of a signal quality score and the first
      plausible one is used (``lead_used``, quality ``"fallback_lead"``). If
      no lead is plausible, the requested lead is kept when it passes a loose
      test ((b) and (d) with >= 2 peaks: e.g. a short record with only 2
      beats), else the best ranked lead passing it; else there are no beats
      (``"no_beats"``; white noise on every lead gives this 36 times out of 40
      seeds, "few_beats" or "fallback_lead" otherwise).
    * **Quality score** for the ranking: kurtosis (Pearson, not excess) of the
      lead band-passed 0.5-40 Hz (2nd order Butterworth, zero phase) over
      the valid region: the kSQI of Li, Mark & Clifford (2008, Physiol. Meas.
      29:15), ECG ~> 5, Gaussian noise ~3, sinusoidal interference ~1.5, flat
      lead -> -inf. It needs no R-peaks, so all 12 leads cost one vectorised
      filter (~5 ms per record) whereas ``nk.ecg_quality(method=
      "averageQRS")`` needs a detection per lead and costs ~80 ms per lead.
      It is computed only when the requested lead fails.
    * **Beats** are the windows ``[peak + w0, peak + w1)`` with
      ``w0 = round(window_ms[0] * fs / 1000)``, ``w1 = round(window_ms[1] *
      fs / 1000)`` samples (default -300..+500 ms: 320 samples at 400 Hz,
      ``offsets_ms = -300.0, -297.5, ...``). Only windows lying entirely
      inside ``valid`` (default the whole signal) are averaged; ``peaks`` holds
      the R-peaks of those beats.
    * **Quality flag**, first that applies: ``"no_beats"`` (no beat: signal
      and relevance are NaN arrays of the right shape, ``n_beats = 0``; the
      record is kept with the flag, not dropped), ``"few_beats"`` (fewer than
      ``min_beats`` beats, still averaged), ``"fallback_lead"`` (a lead other
      than the requested one was used), ``"ok"``.
    * **Vectorised**: the index matrix ``(n_beats, K)`` is built once and the
      signal and the relevance are gathered with fancy indexing on the last
      axis, then averaged over beats (float64 accumulation, float32 output).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ecgray.leads import STANDARD_LEADS, canonical_lead
from ecgray.models.ribeiro2020 import FS

__all__ = ["WINDOW_MS", "BeatAverage", "detect_rpeaks", "average_beats", "lead_quality", "rr_plausible",
           "template_correlation", "detection_plausible"]

WINDOW_MS: tuple[float, float] = (-300.0, 500.0)
HR_RANGE_BPM: tuple[float, float] = (20.0, 250.0)
MAX_RR_CV = 0.5
MIN_PLAUSIBLE_PEAKS = 3
QUALITY_BAND_HZ: tuple[float, float] = (0.5, 40.0)
TEMPLATE_HALF_MS = 100.0
MIN_TEMPLATE_CORR = 0.66

# ecg_clean methods (canonical names) for detectors that have a matching cleaning
_CLEAN_FOR = {
    **dict.fromkeys(["nk", "nk2", "neurokit", "neurokit2"], "neurokit"),
    **dict.fromkeys(["biosppy", "gamboa2008", "gamboa"], "biosppy"),
    **dict.fromkeys(["pantompkins", "pantompkins1985"], "pantompkins1985"),
    **dict.fromkeys(["hamilton", "hamilton2002"], "hamilton2002"),
    **dict.fromkeys(["elgendi", "elgendi2010"], "elgendi2010"),
    **dict.fromkeys(["engzee", "engzee2012", "engzeemod", "engzeemod2012"], "engzeemod2012"),
    **dict.fromkeys(["vg", "vgraph", "fastnvg", "emrich", "emrich2023", "koka2022", "koka"], "vg"),
    # detectors that nk.ecg_clean passes through uncleaned
    **dict.fromkeys(["christov", "christov2004", "ssf", "slopesumfunction", "zong", "zong2003", "wqrs",
                     "kalidas2017", "swt", "kalidas", "kalidastamil", "kalidastamil2017"], None),
}


@dataclass
class BeatAverage:
    """Beat-averaged signal and relevance (see the module docstring).

    ``offsets_ms`` float32 (K,) time of each window sample relative to the
    R-peak; ``signal`` float32 (12, K); ``relevance`` float32 (..., 12, K)
    with the leading dims of the input relevance; ``n_beats`` beats
    averaged; ``peaks`` int64 (n_beats,) their R-peaks (sample indices in
    ``x``); ``lead_used`` the lead the peaks were detected on; ``quality``
    ``"ok"`` / ``"fallback_lead"`` / ``"few_beats"`` / ``"no_beats"``;
    ``fs`` the sampling rate; ``heart_rate_bpm`` 60 / median RR of all
    peaks detected in the valid region (NaN with fewer than 2).
    """

    offsets_ms: np.ndarray
    signal: np.ndarray
    relevance: np.ndarray
    n_beats: int
    peaks: np.ndarray
    lead_used: str
    quality: str
    fs: float = float(FS)
    heart_rate_bpm: float = float("nan")


def _valid_range(valid: tuple[int, int] | None, n: int) -> tuple[int, int]:
    if valid is None:
        return 0, n
    start, stop = int(valid[0]), int(valid[1])
    start, stop = max(0, start), min(n, stop)
    return start, max(start, stop)


def detect_rpeaks(signal_1d: np.ndarray, fs: float = FS, *, method: str = "neurokit",
                  valid: tuple[int, int] | None = None) -> np.ndarray:
    """R-peak sample indices of one lead.

    Contract:

    * ``signal_1d``: one lead, 1-D array-like of ``n`` samples (any real dtype; read as float64), in mV
      (the flat-signal test below is absolute). Anything not 1-D gives an empty result.
    * ``fs``: its sampling rate in Hz (default 400, the model's rate); must be finite and > 0.
    * ``method``: a detector name of ``nk.ecg_findpeaks`` (case-insensitive; default ``"neurokit"``). The
      signal is first cleaned with ``nk.ecg_clean`` using the same-named cleaning when NeuroKit2 has one,
      ``"neurokit"`` cleaning otherwise, and none for the detectors ``nk.ecg_clean`` passes through raw.
      An unknown name gives an empty result (it does not raise).
    * ``valid=(start, stop)``: detect only in ``signal_1d[start:stop]`` (clipped to the signal; ``None``:
      all of it).
    * Returns a 1-D **int64 numpy array** of peak positions, sorted, unique, each in ``[start, stop)``, in
      the frame of the full ``signal_1d`` (not of the valid slice). Empty (shape ``(0,)``) when the
      region is shorter than 1 s (``fs`` samples), flat (peak-to-peak <= 1e-6), not finite, or the
      detector fails. Never raises, never emits warnings.

    Differs from ``neurokit2.ecg_peaks(signal, sampling_rate, method)``, which returns a tuple
    ``(signals, info)``: a pandas DataFrame with a 0/1 ``ECG_R_Peaks`` column of length ``n`` and a dict
    whose ``info["ECG_R_Peaks"]`` holds the indices (plus ``sampling_rate`` and, with
    ``correct_artifacts=True``, corrected peaks), detects on its input as given (no cleaning) and can
    raise or warn on bad input. Here: cleaning included, only the indices, no DataFrame, no artifact
    correction, the ``valid`` window, and an empty array instead of an exception. On the same signal,
    ``detect_rpeaks(s, fs)`` equals ``nk.ecg_peaks(nk.ecg_clean(s, sampling_rate=fs),
    sampling_rate=fs)[1]["ECG_R_Peaks"]``.
    """
    empty = np.zeros(0, dtype=np.int64)
    try:
        s = np.asarray(signal_1d, dtype=np.float64)
        fs = float(fs)
        if s.ndim != 1 or not np.isfinite(fs) or fs <= 0:
            return empty
        start, stop = _valid_range(valid, s.shape[0])
        seg = s[start:stop]
        if seg.shape[0] < fs or not np.all(np.isfinite(seg)) or np.ptp(seg) <= 1e-6:
            return empty
        m = str(method).lower()
        clean_method = _CLEAN_FOR.get(m, "neurokit")
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            import neurokit2 as nk

            clean = seg if clean_method is None else nk.ecg_clean(seg, sampling_rate=fs, method=clean_method)
            info = nk.ecg_findpeaks(np.asarray(clean, dtype=np.float64), sampling_rate=fs, method=m)
        p = np.asarray(info.get("ECG_R_Peaks", []), dtype=np.float64).ravel()
        p = p[np.isfinite(p)].astype(np.int64)
        p = np.unique(p[(p >= 0) & (p < seg.shape[0])])
        return p + start
    except Exception:  # noqa: BLE001 - any detector failure means "no peaks"
        return empty


def rr_plausible(peaks: np.ndarray, fs: float = FS, *, min_peaks: int = MIN_PLAUSIBLE_PEAKS,
                 hr_range: tuple[float, float] = HR_RANGE_BPM, max_cv: float | None = MAX_RR_CV) -> bool:
    """True when ``peaks`` has >= ``min_peaks`` peaks, every RR interval gives
    a heart rate inside ``hr_range`` (bpm) and the RR coefficient of
    variation is <= ``max_cv`` (None: not tested)."""
    peaks = np.asarray(peaks)
    if peaks.shape[0] < max(min_peaks, 0):
        return False
    if peaks.shape[0] < 2:
        return True
    rr = np.diff(peaks) / float(fs)
    lo, hi = 60.0 / hr_range[1], 60.0 / hr_range[0]
    if np.any(rr < lo) or np.any(rr > hi):
        return False
    if max_cv is not None and rr.shape[0] >= 2 and np.std(rr) / np.mean(rr) > max_cv:
        return False
    return True


def _bandpass(x: np.ndarray, fs: float) -> np.ndarray:
    """0.5-40 Hz (capped at 0.45 fs) 2nd order Butterworth, zero phase, on the last axis."""
    from scipy import signal as sps

    hi = min(QUALITY_BAND_HZ[1], 0.45 * fs)
    sos = sps.butter(2, [QUALITY_BAND_HZ[0], hi], btype="band", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x, axis=-1)


def lead_quality(x: np.ndarray, fs: float = FS, *, valid: tuple[int, int] | None = None) -> np.ndarray:
    """Kurtosis SQI per lead (C,) of ``x`` (C, L) over ``valid``: Pearson
    kurtosis of the 0.5-40 Hz band-passed lead; -inf for flat, non-finite or
    too short leads. Higher is better."""
    x = np.asarray(x, dtype=np.float64)
    start, stop = _valid_range(valid, x.shape[-1])
    seg = x[..., start:stop]
    out = np.full(x.shape[0], -np.inf)
    if seg.shape[-1] < 64:
        return out
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ok = np.all(np.isfinite(seg), axis=-1) & (np.ptp(seg, axis=-1) > 1e-6)
        if ok.any():
            try:
                y = _bandpass(seg[ok], fs)
                y = y - y.mean(axis=-1, keepdims=True)
                m2 = np.mean(y ** 2, axis=-1)
                k = np.mean(y ** 4, axis=-1) / m2 ** 2
                out[ok] = np.where(np.isfinite(k) & (m2 > 0), k, -np.inf)
            except Exception:  # noqa: BLE001
                pass
    return out


def template_correlation(signal_1d: np.ndarray, peaks: np.ndarray, fs: float = FS, *,
                         valid: tuple[int, int] | None = None, half_width_ms: float = TEMPLATE_HALF_MS) -> float:
    """Mean leave-one-out correlation of the QRS windows (peak +- ``half_width_ms``,
    0.5-40 Hz band-passed, only those inside ``valid``) with the mean of the
    other windows (template-matching SQI, Orphanidou et al. 2015, IEEE JBHI
    19:832). NaN with fewer than 2 windows; noise gives ~0, real QRS > 0.8."""
    s = np.asarray(signal_1d, dtype=np.float64)
    start, stop = _valid_range(valid, s.shape[0])
    h = max(1, int(round(half_width_ms * fs / 1000.0)))
    peaks = np.asarray(peaks, dtype=np.int64)
    peaks = peaks[(peaks - h >= start) & (peaks + h < stop)]
    if peaks.shape[0] < 2 or stop - start < 64:
        return float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            y = _bandpass(s[start:stop], fs)
        except Exception:  # noqa: BLE001
            return float("nan")
        w = y[(peaks - start)[:, None] + np.arange(-h, h + 1)[None, :]]  # (n, 2h+1)
        loo = (w.sum(axis=0, keepdims=True) - w) / (w.shape[0] - 1)
        wc = w - w.mean(axis=1, keepdims=True)
        tc = loo - loo.mean(axis=1, keepdims=True)
        r = (wc * tc).sum(axis=1) / np.sqrt((wc ** 2).sum(axis=1) * (tc ** 2).sum(axis=1))
        r = np.where(np.isfinite(r), r, 0.0)
    return float(np.mean(r))


def detection_plausible(signal_1d: np.ndarray, peaks: np.ndarray, fs: float = FS, *,
                        valid: tuple[int, int] | None = None) -> bool:
    """:func:`rr_plausible` and :func:`template_correlation` >= :data:`MIN_TEMPLATE_CORR`."""
    if not rr_plausible(peaks, fs):
        return False
    return template_correlation(signal_1d, peaks, fs, valid=valid) >= MIN_TEMPLATE_CORR


def _loosely_plausible(signal_1d: np.ndarray, peaks: np.ndarray, fs: float, valid: tuple[int, int]) -> bool:
    """At least 2 peaks, RR range test and template correlation >= the threshold."""
    if not rr_plausible(peaks, fs, min_peaks=2, max_cv=None):
        return False
    return template_correlation(signal_1d, peaks, fs, valid=valid) >= MIN_TEMPLATE_CORR


def _lead_names(leads, n_leads: int) -> tuple[str, ...]:
    """Canonical names of the rows of ``x``: ``leads`` (any spelling), default the 12 standard leads."""
    names = tuple(canonical_lead(x) or str(x) for x in (leads if leads is not None else STANDARD_LEADS[:n_leads]))
    if len(names) != n_leads:
        raise ValueError(f"{len(names)} lead names {list(names)} for x with {n_leads} leads")
    return names


def _lead_index(lead: str | int, names: tuple[str, ...]) -> int:
    if isinstance(lead, (int, np.integer)):
        if not 0 <= int(lead) < len(names):
            raise ValueError(f"lead index {lead} out of range for {len(names)} leads")
        return int(lead)
    name = canonical_lead(lead) or str(lead).upper()
    if name not in names:
        raise ValueError(f"unknown lead {lead!r}; expected one of {list(names)}")
    return names.index(name)


def _heart_rate(peaks: np.ndarray, fs: float) -> float:
    if peaks.shape[0] < 2:
        return float("nan")
    return float(60.0 * fs / np.median(np.diff(peaks)))


def average_beats(x: np.ndarray, relevance: np.ndarray, fs: float = FS, *, lead: str = "DII",
                  leads=None, window_ms: tuple[float, float] = WINDOW_MS, valid: tuple[int, int] | None = None,
                  method: str = "neurokit", min_beats: int = 3) -> BeatAverage:
    """R-peak aligned mean beat of ``x`` (leads, L) and ``relevance`` (..., leads, L).

    ``leads``: the names of ``x``'s rows (a model's ``spec.leads``; default the 12 standard leads in
    the order of :data:`ecgray.leads.STANDARD_LEADS`); ``lead`` the one to detect R-peaks on first.

    See the module docstring for the lead fallback, beat selection and
    quality policies. Raises ``ValueError`` only for inconsistent arguments
    (shapes, window, lead name); bad signals give ``quality="no_beats"``.
    """
    x = np.asarray(x)
    relevance = np.asarray(relevance)
    if x.ndim != 2:
        raise ValueError(f"x must be (leads, samples), got shape {x.shape}")
    if relevance.ndim < 2 or relevance.shape[-2:] != x.shape:
        raise ValueError(f"relevance shape {relevance.shape} must end with x's shape {x.shape}")
    fs = float(fs)
    w0 = int(round(window_ms[0] * fs / 1000.0))
    w1 = int(round(window_ms[1] * fs / 1000.0))
    if w1 <= w0:
        raise ValueError(f"empty beat window {window_ms} ms at {fs} Hz")
    n_leads, n = x.shape
    names = _lead_names(leads, n_leads)
    req = _lead_index(lead, names)
    start, stop = _valid_range(valid, n)
    vr = (start, stop)

    # --- R-peaks, with fallback by signal quality --------------------------------
    detected: dict[int, np.ndarray] = {req: detect_rpeaks(x[req], fs, method=method, valid=vr)}
    used = req
    if not detection_plausible(x[req], detected[req], fs, valid=vr):
        order = [int(i) for i in np.argsort(-lead_quality(x, fs, valid=vr), kind="stable") if i != req]
        chosen = None
        for i in order:
            detected[i] = detect_rpeaks(x[i], fs, method=method, valid=vr)
            if detection_plausible(x[i], detected[i], fs, valid=vr):
                chosen = i
                break
        if chosen is None:  # nothing plausible: least bad (any count, no CV test)
            cands = [req] + order
            chosen = next((i for i in cands if _loosely_plausible(x[i], detected[i], fs, vr)), None)
        if chosen is None:  # no usable detection anywhere: no beats
            detected[req] = np.zeros(0, dtype=np.int64)
            chosen = req
        used = chosen
    peaks_all = detected[used]

    # --- beats that fit inside valid, gathered at once ----------------------------
    keep = (peaks_all + w0 >= start) & (peaks_all + w1 <= stop)
    peaks = peaks_all[keep].astype(np.int64)
    k = w1 - w0
    offsets_ms = ((w0 + np.arange(k)) * (1000.0 / fs)).astype(np.float32)
    n_beats = int(peaks.shape[0])
    if n_beats:
        idx = peaks[:, None] + np.arange(w0, w1)[None, :]  # (n_beats, K)
        sig = x[:, idx].mean(axis=-2, dtype=np.float64).astype(np.float32)  # (12, K)
        rel = relevance[..., idx].mean(axis=-2, dtype=np.float64).astype(np.float32)  # (..., 12, K)
    else:
        sig = np.full((n_leads, k), np.nan, dtype=np.float32)
        rel = np.full(relevance.shape[:-1] + (k,), np.nan, dtype=np.float32)

    if n_beats == 0:
        quality = "no_beats"
    elif n_beats < min_beats:
        quality = "few_beats"
    elif used != req:
        quality = "fallback_lead"
    else:
        quality = "ok"
    return BeatAverage(offsets_ms=offsets_ms, signal=sig, relevance=rel, n_beats=n_beats, peaks=peaks,
                       lead_used=names[used], quality=quality, fs=fs,
                       heart_rate_bpm=_heart_rate(peaks_all, fs))
