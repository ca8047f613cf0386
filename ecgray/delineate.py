"""P, QRS and T on/offsets of a record's beats, in ms relative to the R-peak (plain NumPy / NeuroKit2, no Ray).

:func:`delineate` takes a record ``x`` (leads, L), the R-peaks of the beats that were averaged
(:attr:`ecgray.beats.BeatAverage.peaks`) and returns a :class:`WaveBounds`: per wave ``P``, ``QRS``, ``T``
the bounds ``(on_ms, off_ms)`` relative to the R-peak and how they were found (``method``). The reduce
(:mod:`ecgray.reduce`) averages the beat relevance of a wave over these bounds instead of the fixed
windows :data:`FIXED_WAVES`, which stay as the (flagged) fallback.

Policy (every number below was measured on :func:`ecgray.synth.simulate` records, 5 seeds x 6 classes,
against the truth windows; ``tests/test_delineate.py`` asserts the tolerances and its docstring holds the
error table):

* **P and T: per beat, then median.** They are delineated on every averaged beat of the full record (not
  on the -300..+500 ms average beat: a first-degree AV block puts the P onset at -280..-360 ms, outside
  that window), per lead, on the ``nk.ecg_clean`` ("neurokit") cleaned lead; a lead's bound is the median
  over its beats (when at least half the beats have it), the record's bound the median over the leads.
  Medians make one bad beat or one flat lead harmless. The QRS is delineated on the beat average of the
  same cleaned leads (below).
* **P: ``nk.ecg_delineate(method="prominence")``** (Emrich et al. 2024). Its P on/offsets are within
  ~10 ms of the truth in every class (``"dwt"``: off by 90-200 ms in 2/5 sinus-bradycardia and 3/5
  1dAVb records: its P search window is tied to the RR). A lead counts only when its P is *consistent*:
  >= :data:`P_CONSISTENT_SHARE` of the beats have their P onset within +-:data:`P_CONSISTENT_MS` of the
  lead's median. With fewer than :data:`MIN_P_LEADS` (3; models with fewer than 6 leads: half of them,
  at least 1) consistent leads the P wave is ``"absent"``
  (atrial fibrillation: the "P" found in the f-waves moves from beat to beat; 0-1 consistent leads in
  every AF record measured, 11-12 in every sinus record). Only beats whose preceding RR is >= 0.9 x the
  median RR are judged (the delineator looks for a beat's P in the half RR before it, which cuts the P
  after a short RR).
* **QRS: spatial velocity of the average beat** (the classic vectorcardiographic onset/offset):
  ``sqrt(sum over leads of (d/dt of the 0.5-40 Hz beat-averaged lead)**2)``, smoothed over 10 ms; onset
  and offset where it falls below :data:`QRS_THRESHOLD` (10 %) of its peak, searching out from the peak.
  Within 10 ms in every class, LBBB included. NeuroKit2's own QRS bounds are not used: ``"dwt"`` puts the
  onset 15-90 ms too early in narrow QRS and 15-50 ms too late in LBBB; ``"prominence"`` bases the R
  onset inside +-50 ms of the R-peak, 50-100 ms too late in LBBB (a width of ~70 ms for a 140 ms QRS).
* **T: ``nk.ecg_delineate(method="dwt")``** (Martinez et al. 2004 wavelet delineator, NeuroKit2's
  default), on the :data:`T_LEADS` (5) leads with the largest beat-averaged amplitude after the QRS.
  T onset ~10-20 ms late, offset ~10 ms early (the synthetic waves start and end at zero amplitude,
  where any threshold is late), also for LBBB's discordant T; ``"prominence"`` misses the T by 60-170 ms
  in LBBB and sinus tachycardia.
* **Checks and fallback.** A delineated wave must be plausible: P within -500..0 ms and ending before
  the QRS onset, QRS 40-250 ms wide around the R-peak, T starting at/after the QRS offset and ending
  before +700 ms (and before the next R-peak). Otherwise, or when the delineator fails (no beats, no
  NeuroKit2 result, an exception), the wave is ``"fixed"``: its bounds are :data:`FIXED_WAVES`.
  ``"absent"`` (P only) also uses the fixed P window for the bounds (where a P wave would be).

Method names (:attr:`WaveBounds.method`, the ``beats`` table's ``wave_<w>_method`` columns):
:data:`P_METHOD` ``"neurokit2-prominence"``, :data:`QRS_METHOD` ``"spatial-velocity"``, :data:`T_METHOD`
``"neurokit2-dwt"``, ``"fixed"`` (fallback), ``"absent"`` (no P wave).

Cost: ~0.4 s per 10 s 12-lead record at 400 Hz on one idle core (0.7-1.3 s on 2 busy shared cores). To get
there NeuroKit2's delineator functions are called directly (``_prominence_ecg_delineator``, and for the T
only the wavelet steps of ``_dwt_ecg_delineator``, skipping its pandas-heavy Q/S search and the per-sample
DataFrame of ``nk.ecg_delineate``): same results (``tests/test_delineate.py`` compares them), with the
public ``nk.ecg_delineate`` as the fallback should another NeuroKit2 version lack them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FIXED_WAVES", "WAVE_NAMES", "P_METHOD", "QRS_METHOD", "T_METHOD", "FIXED", "ABSENT", "DELINEATED",
           "WaveBounds", "delineate", "fixed_bounds", "columns_of"]

#: the fixed windows (ms relative to the R-peak, both ends included): the fallback, and the bounds of outputs
#: written before delineation (schema <= 4)
FIXED_WAVES: dict[str, tuple[float, float]] = {"P": (-250.0, -100.0), "QRS": (-50.0, 60.0), "T": (120.0, 400.0)}
WAVE_NAMES = tuple(FIXED_WAVES)
P_METHOD = "neurokit2-prominence"
QRS_METHOD = "spatial-velocity"
T_METHOD = "neurokit2-dwt"
FIXED = "fixed"
ABSENT = "absent"
#: method names that mean "delineated" (the reduce counts these as delineated, anything else as fixed)
DELINEATED = (P_METHOD, QRS_METHOD, T_METHOD)

P_CONSISTENT_MS = 20.0
P_CONSISTENT_SHARE = 0.6
MIN_P_LEADS = 3
QRS_THRESHOLD = 0.10
QRS_SEARCH_MS = 200.0
MIN_BEAT_SHARE = 0.5
T_LEADS = 5


@dataclass
class WaveBounds:
    """Per wave (``"P"``, ``"QRS"``, ``"T"``): ``bounds[w] = (on_ms, off_ms)`` relative to the R-peak (the
    fixed window when not delineated) and ``method[w]`` (see the module docstring)."""

    bounds: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(FIXED_WAVES))
    method: dict[str, str] = field(default_factory=lambda: dict.fromkeys(WAVE_NAMES, FIXED))

    def delineated(self, wave: str) -> bool:
        return self.method.get(wave) in DELINEATED


def fixed_bounds() -> WaveBounds:
    """Every wave at its fixed window, flagged ``"fixed"``."""
    return WaveBounds()


def columns_of(wb: WaveBounds | None) -> dict[str, object]:
    """The ``beats`` table's wave columns of one record: ``wave_<w>_on_ms`` / ``wave_<w>_off_ms`` (float; None
    unless delineated) and ``wave_<w>_method`` for ``w`` in p, qrs, t."""
    wb = wb or fixed_bounds()
    out: dict[str, object] = {}
    for w in WAVE_NAMES:
        k = w.lower()
        ok = wb.delineated(w)
        out[f"wave_{k}_on_ms"] = float(wb.bounds[w][0]) if ok else None
        out[f"wave_{k}_off_ms"] = float(wb.bounds[w][1]) if ok else None
        out[f"wave_{k}_method"] = wb.method[w]
    return out


def _dwt_t(clean: np.ndarray, peaks: np.ndarray, fs: float) -> dict:
    """T on/offsets of NeuroKit2's dwt delineator (``nk.ecg_delineate(method="dwt")``) without its P, Q, S and
    QRS-bound searches and without the per-sample DataFrame: the same calls, in the same order, as
    ``neurokit2.ecg.ecg_delineate._dwt_ecg_delineator`` (0.2.13) makes for the T wave, ~4x faster
    (``tests/test_delineate.py`` checks that both agree)."""
    from neurokit2 import signal_resample
    from neurokit2.ecg import ecg_delineate as m

    fa = 2000
    ecg = signal_resample(clean, sampling_rate=fs, desired_sampling_rate=fa)
    dwtmatr = m._dwt_compute_multiscales(ecg, 9)
    r = m._dwt_resample_points(peaks, fs, fa)
    tpeaks, _ = m._dwt_delineate_tp_peaks(ecg, r, dwtmatr, sampling_rate=fa)
    on, off = m._dwt_delineate_tp_onsets_offsets(tpeaks, r, dwtmatr, sampling_rate=fa, onset_weight=0.6,
                                                 duration_onset=0.6)
    return {"ECG_T_Onsets": m._dwt_resample_points(on, fa, desired_sampling_rate=fs),
            "ECG_T_Offsets": m._dwt_resample_points(off, fa, desired_sampling_rate=fs)}


def _nk_waves(clean: np.ndarray, peaks: np.ndarray, fs: float, method: str) -> dict:
    """NeuroKit2's per-beat waves, aligned with ``peaks`` (lists of sample indices or NaN): its delineator
    functions directly (``"prominence"``; ``"dwt"``: T only, :func:`_dwt_t`), else the public
    ``nk.ecg_delineate`` (which drops values <= 0, so its lists may not align: then they are not used)."""
    try:
        if method == "dwt":
            return _dwt_t(clean, peaks, fs)
        from neurokit2.ecg import ecg_delineate as m

        return m._prominence_ecg_delineator(clean, rpeaks=peaks, sampling_rate=fs)
    except Exception:  # noqa: BLE001 - another NeuroKit2 version: the public function
        import neurokit2 as nk

        return nk.ecg_delineate(clean, rpeaks=peaks, sampling_rate=fs, method=method)[1]


def _per_beat(clean: np.ndarray, peaks: np.ndarray, fs: float, method: str, keys: tuple[str, str]) -> np.ndarray:
    """(2, n_beats) ms relative to each R-peak of ``keys`` from NeuroKit2's ``method`` delineator on one cleaned
    lead (NaN where not found or outside the signal; all NaN when the delineator fails)."""
    out = np.full((2, peaks.shape[0]), np.nan)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            info = _nk_waves(clean, peaks, fs, method)
        for j, key in enumerate(keys):
            v = np.asarray(info.get(key, []), dtype=np.float64).ravel()
            if v.shape[0] == peaks.shape[0]:
                v = np.where((v > 0) & (v < clean.shape[-1]), v, np.nan)
                out[j] = (v - peaks) * (1000.0 / fs)
    except Exception:  # noqa: BLE001 - a delineator failure is a missing wave
        pass
    return out


def _lead_median(d: np.ndarray) -> np.ndarray:
    """(2,) median over beats of (2, n) when at least half the beats have both bounds, else NaN."""
    ok = np.isfinite(d).all(axis=0)
    if ok.sum() < max(1, MIN_BEAT_SHARE * d.shape[1]):
        return np.full(2, np.nan)
    return np.median(d[:, ok], axis=1)


def _min_p_leads(n_leads: int) -> int:
    """Consistent leads needed for a P wave: :data:`MIN_P_LEADS`, fewer for models with fewer than 6 leads."""
    return min(MIN_P_LEADS, max(1, n_leads // 2))


def _p_bounds(per_lead: list[np.ndarray], peaks: np.ndarray) -> tuple[np.ndarray, int]:
    """P (on, off) from the consistent leads, and how many leads were consistent. Only beats whose preceding
    RR is >= 0.9 x the median are used: NeuroKit2's prominence delineator searches a beat's P wave in the
    half RR before it, which cuts the P of a beat that follows a short RR (ectopy, irregular rhythm)."""
    rr_prev = np.diff(np.r_[-peaks[0], peaks])  # the first beat: twice its distance to the start, as NeuroKit2
    long = rr_prev >= 0.9 * np.median(rr_prev)
    meds = []
    for d in per_lead:
        d = d[:, long]
        m = _lead_median(d)
        if not np.isfinite(m).all():
            continue
        on = d[0]
        share = np.mean(np.isfinite(on) & (np.abs(on - m[0]) <= P_CONSISTENT_MS))
        if share >= P_CONSISTENT_SHARE:
            meds.append(m)
    if len(meds) < _min_p_leads(len(per_lead)):
        return np.full(2, np.nan), len(meds)
    return np.median(np.stack(meds), axis=0), len(meds)


def _qrs_bounds(clean: np.ndarray, peaks: np.ndarray, fs: float) -> np.ndarray:
    """QRS (on, off) ms from the spatial velocity of the beat-averaged, 0.5-40 Hz band-passed leads."""
    from scipy import signal as sps

    h = int(round((QRS_SEARCH_MS + 60.0) * fs / 1000.0))
    n = clean.shape[-1]
    p = peaks[(peaks - h >= 0) & (peaks + h < n)]
    if p.shape[0] == 0:
        return np.full(2, np.nan)
    hi = min(40.0, 0.45 * fs)
    sos = sps.butter(2, [0.5, hi], btype="band", fs=fs, output="sos")
    y = sps.sosfiltfilt(sos, clean, axis=-1)
    avg = y[:, p[:, None] + np.arange(-h, h + 1)[None, :]].mean(axis=1)  # (leads, 2h+1), R at index h
    vel = np.sqrt((np.gradient(avg, axis=-1) ** 2).sum(axis=0))
    k = max(1, int(round(0.010 * fs)))
    vel = np.convolve(vel, np.ones(k) / k, mode="same")
    s = int(round(QRS_SEARCH_MS * fs / 1000.0))
    lo, up = h - s, h + s
    a, b = h - int(round(0.12 * fs)), h + int(round(0.06 * fs))
    top = a + int(np.argmax(vel[a:b + 1]))
    thr = QRS_THRESHOLD * vel[top]
    if not np.isfinite(thr) or thr <= 0:
        return np.full(2, np.nan)
    below_l = np.flatnonzero(vel[lo:top] < thr)
    below_r = np.flatnonzero(vel[top:up + 1] < thr)
    if below_l.size == 0 or below_r.size == 0:
        return np.full(2, np.nan)
    on = lo + below_l[-1] + 1  # first sample at/above the threshold
    off = top + below_r[0] - 1  # last sample at/above it
    return (np.array([on, off], dtype=np.float64) - h) * (1000.0 / fs)


def delineate(x: np.ndarray, peaks: np.ndarray, fs: float = 400.0, *,
              valid: tuple[int, int] | None = None) -> WaveBounds:
    """P, QRS and T bounds (ms relative to the R-peak) of the beats at ``peaks`` of ``x`` (leads, L).

    ``peaks``: R-peak sample indices in ``x`` (those of the averaged beats,
    :attr:`ecgray.beats.BeatAverage.peaks`); ``valid=(start, stop)``: the part of ``x`` to read (e.g. without
    zero padding). Never raises on bad signals: any failure gives the fixed windows, flagged ``"fixed"``
    (see the module docstring for the methods and checks).
    """
    out = fixed_bounds()
    try:
        x = np.asarray(x, dtype=np.float64)
        peaks = np.asarray(peaks, dtype=np.int64).ravel()
        fs = float(fs)
        if x.ndim != 2 or peaks.shape[0] == 0 or not np.isfinite(fs) or fs <= 0:
            return out
        start, stop = (0, x.shape[1]) if valid is None else (max(0, int(valid[0])), min(x.shape[1], int(valid[1])))
        seg = x[:, start:stop]
        pk = peaks - start
        pk = pk[(pk >= 0) & (pk < seg.shape[1])]
        if pk.shape[0] == 0 or seg.shape[1] < fs:
            return out
        good = np.all(np.isfinite(seg), axis=1) & (np.ptp(seg, axis=1) > 1e-6)
        if not good.any():
            return out
        import neurokit2 as nk

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            clean = np.stack([np.asarray(nk.ecg_clean(seg[i], sampling_rate=fs), np.float64)
                              for i in np.flatnonzero(good)])
        # QRS first: the other waves are checked against it
        qrs = _qrs_bounds(clean, pk, fs)
        if np.isfinite(qrs).all() and qrs[0] < 0 < qrs[1] and 40.0 <= qrs[1] - qrs[0] <= 250.0:
            out.bounds["QRS"], out.method["QRS"] = (float(qrs[0]), float(qrs[1])), QRS_METHOD
        q_on, q_off = out.bounds["QRS"]
        p_leads = [_per_beat(c, pk, fs, "prominence", ("ECG_P_Onsets", "ECG_P_Offsets")) for c in clean]
        pb, n_cons = _p_bounds(p_leads, pk)
        if np.isfinite(pb).all():
            if -500.0 <= pb[0] < pb[1] <= min(q_on, 0.0):
                out.bounds["P"], out.method["P"] = (float(pb[0]), float(pb[1])), P_METHOD
        elif n_cons < _min_p_leads(clean.shape[0]):
            out.method["P"] = ABSENT
        # T: the T_LEADS leads of largest average-beat amplitude after the QRS (dwt costs ~50 ms per lead of
        # 10 s: all 12 leads would take ~0.6-1 s per record)
        ct, pt = clean, pk
        h0, h1 = int(round(q_off * fs / 1000.0)), int(round(450.0 * fs / 1000.0))
        inside = pt[(pt + h0 >= 0) & (pt + h1 < ct.shape[1])]
        if inside.shape[0]:
            amp = np.ptp(ct[:, inside[:, None] + np.arange(h0, h1)[None, :]].mean(axis=1), axis=1)
            order = np.argsort(-amp, kind="stable")[:T_LEADS]
        else:
            order = np.arange(min(T_LEADS, ct.shape[0]))
        t_meds = [_lead_median(_per_beat(ct[i], pt, fs, "dwt", ("ECG_T_Onsets", "ECG_T_Offsets"))) for i in order]
        t_meds = [m for m in t_meds if np.isfinite(m).all()]
        if t_meds:
            tb = np.median(np.stack(t_meds), axis=0)
            rr = np.diff(pk) * (1000.0 / fs)
            t_max = min(700.0, float(np.median(rr)) if rr.size else 700.0)
            t_on = max(float(tb[0]), q_off)
            if t_on < tb[1] <= t_max:
                out.bounds["T"], out.method["T"] = (t_on, float(tb[1])), T_METHOD
    except Exception:  # noqa: BLE001 - delineation is best effort: fixed windows, flagged
        return fixed_bounds()
    return out
