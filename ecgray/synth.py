"""Synthetic 12-lead ECGs with planted, labelled features and their exact sample windows.

Deterministic for a given ``seed``.

Design
------
NeuroKit2's ``ecg_simulate`` gives realistic beats but no control over where
(or whether) each wave is, nor over lead-specific morphology (QS in V1,
notched R in V5...). Ground truth needs exact windows, so the beats here come
from a **parametric beat model**: every wave (P, Q, R, S, T, the two humps of
a notched LBBB R ...) is a raised-cosine (Hann) bump with *compact support*
placed at known sample indices, with a lead-specific signed amplitude. A wave
is exactly zero outside its window, so the truth windows are exact (in
samples at the signal's ``fs``; no resampling is involved: records are
rendered at the requested ``fs``).

Per beat, times relative to the QRS onset ``q`` (seconds)::

    P    [q - PR, q - PR + 0.10)          PR 120-200 ms (1dAVb: 240-320 ms)
    QRS  [q, q + d)                       d 80-100 ms (LBBB: 130-160 ms)
    T    [q + d + st, q + d + st + tw)    st, tw scale with sqrt(RR)

Classes (``KINDS``): ``normal`` (sinus 60-100 bpm; optionally a marked sinus
arrhythmia, and in 40 % of records an irregular RR drawn like AF's but *with*
P waves -- frequent atrial ectopy -- so that an irregular RR alone does not
mean AF and a classifier has to look at atrial activity), ``AF`` (no P waves;
RR drawn independently, lognormal, CV of the RR intervals seen in the record
>= 0.18 enforced by redrawing; f-waves 4-9 Hz, 0.05-0.15 mV, strongest in
V1, DII, DIII, AVF), ``LBBB`` (QRS 130-160 ms, broad notched R in DI, AVL, V5, V6, QS
in V1-V2, discordant T), ``1dAVb`` (PR 240-320 ms), ``SB`` (40-57 bpm),
``ST`` (105-140 bpm). RBBB is not simulated.

Truth rows (``simulate``'s second return value): dicts
``{feature, lead, start, stop}`` with ``stop`` exclusive, in samples at fs:

* ``P`` / ``QRS`` / ``T``, lead ``"all"``: every wave fully inside the record;
* LBBB only, in addition: ``QRS`` and ``T`` rows per characteristic lead
  (:data:`LBBB_QRS_LEADS`, :data:`LBBB_T_LEADS`), where the morphology is
  planted;
* AF only: ``f_wave`` (lead ``"all"``): the TQ segments (end of a T wave to
  the next QRS onset), where the fibrillatory baseline is seen; ``no_P``
  (lead ``"all"``): ``[q - 200 ms, q - 40 ms)`` before each QRS onset (clipped
  to the TQ segment) -- where a P wave with PR 120-200 ms would have been.

Noise (options of :func:`simulate`): white Gaussian noise ``noise`` (mV SD),
baseline wander ``baseline_wander`` (mV; two sinusoids 0.05-0.5 Hz),
``powerline`` (mV, 50 Hz), ``amplitude_jitter`` (relative SD of a per-record
x per-lead x per-wave gain, plus a 5 % beat-to-beat gain). They are plain
numpy (seeded, fast enough to render thousands of records for training);
``nk.signal_distort`` is not used because it is ~100x slower per lead.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecgray.leads import STANDARD_LEADS
from ecgray.models.ribeiro2020 import CLASSES

SNOMED = {"normal": "426783006", "SB": "426177001", "ST": "427084000", "AF": "164889003",
          "LBBB": "164909002", "1dAVb": "270492004", "RBBB": "59118001"}
LEAD_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
MODEL_LEADS = STANDARD_LEADS  # the model input order (Ribeiro et al. 2020)
KINDS = ("normal", "AF", "LBBB", "1dAVb", "SB", "ST")
LBBB_QRS_LEADS = ("DI", "AVL", "V1", "V2", "V5", "V6")
LBBB_T_LEADS = ("DI", "AVL", "V1", "V5", "V6")
TRUTH_FEATURES = ("P", "QRS", "T", "f_wave", "no_P")

_L = {name: i for i, name in enumerate(MODEL_LEADS)}


def _amp(**kw) -> np.ndarray:
    a = np.zeros(12)
    for k, v in kw.items():
        a[_L[k]] = v
    return a


# Signed amplitudes (mV) per lead; order DI DII DIII AVR AVL AVF V1..V6.
_P = np.array([0.10, 0.16, 0.07, -0.12, 0.03, 0.11, 0.08, 0.09, 0.09, 0.08, 0.08, 0.07])
_NORMAL_Q = np.array([-0.06, -0.06, -0.04, 0.0, -0.04, -0.05, 0.0, 0.0, 0.0, -0.05, -0.10, -0.10])
_NORMAL_R = np.array([0.80, 1.10, 0.40, -0.90, 0.35, 0.75, 0.20, 0.40, 0.70, 1.20, 1.30, 1.00])
_NORMAL_S = np.array([-0.10, -0.15, -0.10, 0.10, -0.10, -0.10, -0.90, -1.20, -0.70, -0.40, -0.20, -0.10])
_NORMAL_T = np.array([0.25, 0.35, 0.10, -0.25, 0.12, 0.22, 0.10, 0.30, 0.40, 0.40, 0.35, 0.30])
# LBBB: broad notched R (two humps) in DI, AVL, V5, V6; QS in V1-V2 (V3: tiny r + deep S); discordant T.
_LBBB_R1 = _amp(DI=0.70, DII=0.45, DIII=-0.15, AVR=-0.55, AVL=0.55, AVF=0.15, V3=0.10, V4=0.35, V5=0.80, V6=0.75)
_LBBB_R2 = _amp(DI=0.85, DII=0.55, DIII=-0.25, AVR=-0.65, AVL=0.70, AVF=0.15, V4=0.30, V5=1.00, V6=0.90)
_LBBB_QS = _amp(V1=-1.30, V2=-1.70, V3=-1.30, V4=-0.60)
_LBBB_T = _amp(DI=-0.30, DII=-0.15, DIII=0.10, AVR=0.25, AVL=-0.28, AVF=-0.05,
               V1=0.35, V2=0.45, V3=0.35, V4=0.10, V5=-0.35, V6=-0.30)
_F_WAVE = np.array([0.35, 0.75, 0.85, -0.55, 0.25, 0.80, 1.00, 0.60, 0.40, 0.30, 0.25, 0.25])


def _bump(n: int) -> np.ndarray:
    """Raised cosine on ``n`` samples, zero outside ``[0, n)``, peak 1."""
    k = np.arange(n) + 0.5
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * k / n))


def _add_wave(sig: np.ndarray, start: int, stop: int, amps: np.ndarray) -> None:
    """Add a bump with support ``[start, stop)`` and per-lead ``amps`` (clipped to the record)."""
    n = sig.shape[0]
    if stop <= start or stop <= 0 or start >= n:
        return
    w = _bump(stop - start)
    a, b = max(start, 0), min(stop, n)
    sig[a:b] += w[a - start:b - start, None] * amps[None, :]


def _rr_series(rng: np.random.Generator, kind: str, span: float, *, sinus_arrhythmia: float,
               irregular: bool = False) -> np.ndarray:
    """RR intervals (s) covering ``span`` seconds."""
    if irregular:  # sinus rhythm with irregular RR (frequent atrial ectopy): AF-like RR, P waves kept
        kind = "AF"  # the same RR distribution as AF: RR carries no information on AF vs this
    if kind == "AF":
        mean_rr = rng.uniform(0.55, 0.90)
        n = int(span / mean_rr) + 4
        return np.clip(mean_rr * rng.lognormal(-0.05, 0.32, n), 0.36, 1.8)
    hr = {"normal": (60, 100), "1dAVb": (55, 85), "LBBB": (60, 100), "SB": (40, 57), "ST": (105, 140)}[kind]
    rr0 = 60.0 / rng.uniform(*hr)
    n = int(span / rr0) + 4
    t = np.cumsum(np.full(n, rr0))
    resp = rng.uniform(0.15, 0.35)  # respiratory frequency (Hz)
    rr = rr0 * (1.0 + sinus_arrhythmia * np.sin(2 * np.pi * resp * t + rng.uniform(0, 2 * np.pi)))
    rr *= 1.0 + 0.01 * rng.standard_normal(n)
    return rr


def simulate(kind: str, *, fs: float = 400, duration: float = 10.24, seed: int = 0, noise: float = 0.02,
             baseline_wander: float = 0.1, powerline: float = 0.0, amplitude_jitter: float = 0.15,
             sinus_arrhythmia: float | None = None, irregular: bool | None = None,
             f_wave_amplitude: tuple[float, float] = (0.05, 0.15), p_irregular: float = 0.4,
             p_junctional: float = 0.0, junctional: bool | None = None, p_irregular_other: float = 0.0,
             f_wave_support: str = "all", f_wave_taper: float = 0.02,
             ) -> tuple[np.ndarray, list[dict]]:
    """One synthetic 12-lead ECG of class ``kind`` (see :data:`KINDS`) and its truth windows.

    Returns ``(sig, truth)``: ``sig`` float32 ``(round(duration*fs), 12)`` in mV,
    leads in model order (:data:`MODEL_LEADS`); ``truth`` a list of
    ``{"feature", "lead", "start", "stop"}`` dicts (samples at ``fs``, stop
    exclusive; see the module docstring). ``sinus_arrhythmia`` (relative RR
    modulation depth, sinus kinds only): ``None`` draws it (0.02-0.06 in 70 %
    of records, a marked 0.12-0.25 in 30 %). ``irregular``: RR
    drawn from exactly the AF distribution (CV >= 0.18) but with a P wave before every
    QRS (sinus rhythm with frequent atrial ectopy), so that an irregular RR
    alone is not evidence of AF and the model has to look at atrial activity;
    ``None`` draws it: for ``normal`` with probability ``p_irregular`` (0.4), for
    ``LBBB`` and ``1dAVb`` with probability ``p_irregular_other`` (default 0: never).
    ``junctional`` (``normal`` only): a regular rhythm with no P waves and no
    f-waves (accelerated junctional rhythm; none of the six classes, so an all-zero
    target): absent P waves alone are then not evidence of AF; ``None`` draws it
    with probability ``p_junctional`` (default 0) among the regular normals.
    ``f_wave_support`` (AF): ``"all"`` (default) adds the fibrillatory waves to the
    whole record, as in real AF, where they continue under QRS-T; ``"tq"`` only
    inside the ``f_wave`` truth windows (TQ segments), with raised-cosine edges of
    ``f_wave_taper`` seconds, so that the planted feature has exact support like
    every other wave. The defaults reproduce the demo model's training data; the
    other designs are compared in ``benchmarks/af_designs.py``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    rng = np.random.default_rng(seed)
    n = int(round(duration * fs))
    sig = np.zeros((n, 12))
    truth: list[dict] = []
    if sinus_arrhythmia is None:
        sinus_arrhythmia = rng.uniform(0.12, 0.25) if rng.random() < 0.3 else rng.uniform(0.02, 0.06)
    if irregular and kind not in ("normal", "LBBB", "1dAVb"):
        raise ValueError(f"irregular=True is only for kinds normal, LBBB and 1dAVb, not {kind!r}")
    if junctional and kind != "normal":
        raise ValueError(f"junctional=True is only for kind 'normal', not {kind!r}")
    if f_wave_support not in ("all", "tq"):
        raise ValueError(f"f_wave_support must be 'all' or 'tq', not {f_wave_support!r}")
    if kind == "normal" and irregular is None and junctional:
        irregular = False
    elif kind == "normal" and irregular is None:
        u = rng.random()
        irregular = u < p_irregular
        if junctional is None:
            junctional = not irregular and u < p_irregular + p_junctional
    elif irregular is None and kind in ("LBBB", "1dAVb") and p_irregular_other > 0:
        irregular = rng.random() < p_irregular_other
    irregular, junctional = bool(irregular), bool(junctional)
    if irregular and junctional:
        raise ValueError("irregular and junctional are exclusive")
    for _ in range(100):  # AF (and irregular sinus): redraw until the RR seen in the record has CV >= 0.18
        rr = _rr_series(rng, kind, duration + 2.0, sinus_arrhythmia=sinus_arrhythmia, irregular=irregular)
        onsets = -rng.uniform(0.3, 1.0) + np.concatenate([[0.0], np.cumsum(rr)])
        onsets = onsets[onsets < duration + 0.5]
        if kind != "AF" and not irregular:
            break
        seen = np.diff(onsets[(onsets >= 0) & (onsets < duration - 0.2)])  # RR visible in the record
        if len(seen) >= 3 and seen.std() / seen.mean() >= 0.18:
            break

    g = 1.0 + amplitude_jitter * rng.standard_normal(12)  # per-lead gain (electrode/body habitus)
    g_rec = np.exp(0.15 * rng.standard_normal())
    jit = lambda base: base * g * g_rec * (1.0 + amplitude_jitter * rng.standard_normal(12))  # noqa: E731
    if kind == "LBBB":
        waves = {"R1": jit(_LBBB_R1), "R2": jit(_LBBB_R2), "QS": jit(_LBBB_QS), "T": jit(_LBBB_T)}
        qrs_s = rng.uniform(0.13, 0.16)
    else:
        waves = {"Q": jit(_NORMAL_Q), "R": jit(_NORMAL_R), "S": jit(_NORMAL_S), "T": jit(_NORMAL_T)}
        qrs_s = rng.uniform(0.08, 0.10)
    p_amp = jit(_P)
    pr_s = rng.uniform(0.24, 0.32) if kind == "1dAVb" else (rng.uniform(0.12, 0.15) if kind == "ST"
                                                            else rng.uniform(0.13, 0.20))
    p_dur = 0.10 if kind != "ST" else 0.08
    mean_rr = float(np.mean(rr))
    st_k, tw_k = (0.04, 0.20) if kind == "LBBB" else (0.08, 0.17)
    rr_t = 0.65 if (kind == "AF" or irregular) else mean_rr  # T does not follow an irregular RR
    st_s, tw_s = st_k * np.sqrt(rr_t), tw_k * np.sqrt(rr_t)

    S = lambda t: int(round(t * fs))  # noqa: E731
    q_len = S(qrs_s)

    def inside(a, b):
        return a >= 0 and b <= n

    prev_t_end = None
    tq_gate = np.zeros(n)  # AF, f_wave_support="tq": 1 inside the TQ segments, raised-cosine edges
    for q_t in onsets:
        q = S(q_t)
        bgain = 1.0 + 0.05 * rng.standard_normal()
        qa, qb = q, q + q_len
        if kind == "LBBB":
            _add_wave(sig, q, q + S(0.62 * qrs_s), waves["R1"] * bgain)
            _add_wave(sig, q + S(0.38 * qrs_s), qb, waves["R2"] * bgain)
            _add_wave(sig, q + S(0.05 * qrs_s), qb, waves["QS"] * bgain)
        else:
            _add_wave(sig, q, q + S(0.22 * qrs_s), waves["Q"] * bgain)
            _add_wave(sig, q + S(0.12 * qrs_s), q + S(0.68 * qrs_s), waves["R"] * bgain)
            _add_wave(sig, q + S(0.55 * qrs_s), qb, waves["S"] * bgain)
        ta, tb = qb + S(st_s), qb + S(st_s) + S(tw_s)
        _add_wave(sig, ta, tb, waves["T"] * bgain)
        if inside(qa, qb):
            truth.append({"feature": "QRS", "lead": "all", "start": qa, "stop": qb})
            if kind == "LBBB":
                truth += [{"feature": "QRS", "lead": ld, "start": qa, "stop": qb} for ld in LBBB_QRS_LEADS]
        if inside(ta, tb):
            truth.append({"feature": "T", "lead": "all", "start": ta, "stop": tb})
            if kind == "LBBB":
                truth += [{"feature": "T", "lead": ld, "start": ta, "stop": tb} for ld in LBBB_T_LEADS]
        if kind != "AF" and not junctional:
            pa = q - S(pr_s)
            pb = pa + S(p_dur)
            _add_wave(sig, pa, pb, p_amp * bgain)
            if inside(pa, pb):
                truth.append({"feature": "P", "lead": "all", "start": pa, "stop": pb})
        elif kind == "AF" and prev_t_end is not None:
            seg = q - prev_t_end  # the whole TQ segment, tapered at its ends, then clipped to the record
            if seg > 0 and q > 0 and prev_t_end < n:
                k = min(S(f_wave_taper), seg // 2)
                g = np.ones(seg)
                if k > 0:
                    ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(k) + 0.5) / k))
                    g[:k], g[seg - k:] = ramp, ramp[::-1]
                ga, gb = max(prev_t_end, 0), min(q, n)
                tq_gate[ga:gb] = g[ga - prev_t_end:gb - prev_t_end]
            fa, fb = max(prev_t_end, 0), min(q, n)
            if fb > fa:
                truth.append({"feature": "f_wave", "lead": "all", "start": fa, "stop": fb})
            na, nb = max(q - S(0.20), prev_t_end, 0), min(q - S(0.04), n)
            if nb > na:
                truth.append({"feature": "no_P", "lead": "all", "start": na, "stop": nb})
        prev_t_end = tb

    t = np.arange(n) / fs
    if kind == "AF":
        # fibrillatory waves: 4-9 Hz carrier with slow frequency and amplitude modulation
        f0 = rng.uniform(5.0, 8.0)
        fm = f0 + 1.0 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(np.clip(fm, 4.0, 9.0)) / fs + rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(*f_wave_amplitude) * (1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t))
        fw = amp * (np.sin(phase) + 0.3 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi)))
        if f_wave_support == "tq":
            fw = fw * tq_gate
        lead_w = _F_WAVE * (1.0 + 0.15 * rng.standard_normal(12))
        sig += fw[:, None] * lead_w[None, :]
    if baseline_wander:
        for _ in range(2):
            f = rng.uniform(0.05, 0.5)
            sig += (baseline_wander * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))[:, None]
                    * rng.uniform(0.5, 1.0, 12)[None, :])
    if powerline:
        sig += powerline * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi))[:, None] * rng.uniform(0.5, 1, 12)
    if noise:
        sig += noise * rng.standard_normal(sig.shape)
    truth.sort(key=lambda r: (r["start"], r["feature"], r["lead"]))
    return sig.astype(np.float32), truth


def _kinds_list(n_per_class: dict | int) -> list[str]:
    if isinstance(n_per_class, int):
        n_per_class = {k: n_per_class for k in KINDS}
    bad = [k for k in n_per_class if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kinds {bad}; use {KINDS}")
    return [k for k in KINDS for _ in range(int(n_per_class.get(k, 0)))]


def _record_seeds(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x5EC6]).integers(0, 2**31 - 1, size=count)


def target_vector(kind: str) -> np.ndarray:
    """Multi-hot target in :data:`CLASSES` order (normal: all zeros)."""
    y = np.zeros(len(CLASSES), np.float32)
    if kind != "normal":
        y[CLASSES.index(kind)] = 1.0
    return y


def training_arrays(n_per_class: dict | int, *, seed: int, fs: float = 400, n_samples: int = 4096,
                    **sim_kw) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """In-memory training set: ``X (N, 12, n_samples)`` float32, ``Y (N, 6)`` float32, ``kinds``.

    Records are class-blocked (all normal, then AF, ...) in :data:`KINDS` order;
    shuffle yourself. Record ``i`` uses ``simulate(kinds[i], seed=record_seed_i)``
    with seeds derived from ``seed``.
    """
    kinds = _kinds_list(n_per_class)
    seeds = _record_seeds(seed, len(kinds))
    X = np.empty((len(kinds), 12, n_samples), np.float32)
    for i, (k, s) in enumerate(zip(kinds, seeds)):
        sig, _ = simulate(k, fs=fs, duration=n_samples / fs, seed=int(s), **sim_kw)
        X[i] = sig.T
    Y = np.stack([target_vector(k) for k in kinds]) if kinds else np.zeros((0, 6), np.float32)
    return X, Y, kinds


def truth_arrays(n_per_class: dict | int, *, seed: int, fs: float = 400, n_samples: int = 4096,
                 **sim_kw) -> tuple[np.ndarray, list[str], list[list[dict]]]:
    """Like :func:`training_arrays` but returns ``(X, kinds, truths)`` with the truth rows per record."""
    kinds = _kinds_list(n_per_class)
    seeds = _record_seeds(seed, len(kinds))
    X = np.empty((len(kinds), 12, n_samples), np.float32)
    truths = []
    for i, (k, s) in enumerate(zip(kinds, seeds)):
        sig, tr = simulate(k, fs=fs, duration=n_samples / fs, seed=int(s), **sim_kw)
        X[i] = sig.T
        truths.append(tr)
    return X, kinds, truths


# --------------------------------------------------------------------------- WFDB
def write_wfdb(out_dir: str | Path, record_name: str, signal: np.ndarray, fs: float, *, dx: list[str],
               leads: list[str] = LEAD_NAMES) -> Path:
    """Write a 16-bit WFDB record (``.hea`` + ``.dat``, 1000 adu/mV) with ``#Dx:`` codes."""
    import wfdb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(record_name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal.astype(np.float64),
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                comments=[f"Dx: {','.join(dx)}"], write_dir=str(out_dir))
    return out_dir / record_name


def write_dataset(out_dir: str | Path, n_per_class: dict | int, *, seed: int = 0, fs: float = 500,
                  duration: float = 10.0, **sim_kw):
    """Write WFDB records (``S0001`` ...; SNOMED ``#Dx:``) and ``out_dir/truth.parquet``.

    Returns the truth as a ``pyarrow.Table`` with columns ``record_id, label,
    feature, lead, start, stop, fs`` (samples at the file's ``fs``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    kinds = _kinds_list(n_per_class)
    seeds = _record_seeds(seed, len(kinds))
    cols: dict[str, list] = {c: [] for c in ("record_id", "label", "feature", "lead", "start", "stop", "fs")}
    for i, (k, s) in enumerate(zip(kinds, seeds)):
        rid = f"S{i + 1:04d}"
        sig, truth = simulate(k, fs=fs, duration=duration, seed=int(s), **sim_kw)
        write_wfdb(out_dir, rid, sig, fs, dx=[SNOMED[k]])
        for r in truth:
            for c, v in (("record_id", rid), ("label", k), ("feature", r["feature"]), ("lead", r["lead"]),
                         ("start", r["start"]), ("stop", r["stop"]), ("fs", float(fs))):
                cols[c].append(v)
    schema = pa.schema([("record_id", pa.string()), ("label", pa.string()), ("feature", pa.string()),
                        ("lead", pa.string()), ("start", pa.int64()), ("stop", pa.int64()), ("fs", pa.float64())])
    table = pa.table(cols, schema=schema).replace_schema_metadata(
        {"ecgray_synth": json.dumps({"seed": seed, "fs": fs, "duration": duration, "kinds": sorted(set(kinds))})})
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / "truth.parquet")
    return table


def make_dataset(out_dir: str | Path, n: int = 6, *, seed: int = 0, fs: int = 500, duration: float = 10.0) -> list[Path]:
    """Write ``n`` records cycling through :data:`KINDS` (with ``truth.parquet``); returns the record paths."""
    counts = {k: 0 for k in KINDS}
    for i in range(n):
        counts[KINDS[i % len(KINDS)]] += 1
    write_dataset(out_dir, counts, seed=seed, fs=fs, duration=duration)
    return [Path(out_dir) / f"S{i + 1:04d}" for i in range(n)]
