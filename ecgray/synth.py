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

Feature strength and negative controls (``feature_strength`` of :func:`simulate`,
default 1.0 = the design above): 0 removes the class's planted feature, values in
between grade it, and the rest of the record stays identical -- the same random
numbers are drawn in the same order whatever the strength, so a record and its
feature-removed copy (:func:`without_feature`) differ only by the feature:

* ``AF``: the f-wave component is scaled by the strength (0: no f-waves; the
  irregular RR and the absent P waves stay);
* ``LBBB``: the QRS is a blend ``s * LBBB complex + (1 - s) * normal complex``
  (the normal Q/R/S drawn with the same jitter numbers as R1/R2/QS), both at the
  width interpolated from the normal one (the same quantile of 80-100 ms) to the
  LBBB one, T amplitude blended LBBB -> normal and the ST/T timing interpolated
  (0: a normal QRS-T; the P waves and RR stay);
* ``1dAVb``: PR interpolated from the normal one (the same quantile of 130-200 ms)
  to the 1dAVb one (0: only the P waves move);
* ``SB`` / ``ST``: the heart rate interpolated from the normal one (the same
  quantile of 60-100 bpm; ST also its PR and P duration); all beats move;
* ``normal``: no planted feature; the strength has no effect.

Truth rows name what is planted: at strength 0 AF records have no ``f_wave`` rows
(``no_P`` stays) and LBBB records no per-lead rows. :data:`CONTROL_KINDS`
(``AF_ctrl``, ``LBBB_ctrl``, ``1dAVb_ctrl``) are those kinds at strength 0, with an
all-zero target (:func:`target_vector`): negative controls drawn from the same
distribution as the class except for its feature (e.g. AF_ctrl: the same irregular
RR and no P waves, but no f-waves). :func:`training_arrays` / :func:`truth_arrays`
accept them in ``n_per_class``; :func:`graded_arrays` draws a strength per record.

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
CONTROL_KINDS = ("AF_ctrl", "LBBB_ctrl", "1dAVb_ctrl")  # the kind at feature_strength 0, all-zero target
ALL_KINDS = KINDS + CONTROL_KINDS
_NORMAL_HR = (60, 100)  # bpm; SB/ST at feature_strength < 1 move towards it (same quantile)

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
               irregular: bool = False, strength: float = 1.0) -> np.ndarray:
    """RR intervals (s) covering ``span`` seconds.

    ``strength`` < 1 (SB, ST): the rate moves to the same quantile of the normal range; the random
    numbers drawn do not change (the beat-to-beat jitter is repeated cyclically if more beats are needed).
    """
    if irregular:  # sinus rhythm with irregular RR (frequent atrial ectopy): AF-like RR, P waves kept
        kind = "AF"  # the same RR distribution as AF: RR carries no information on AF vs this
    if kind == "AF":
        mean_rr = rng.uniform(0.55, 0.90)
        n = int(span / mean_rr) + 4
        return np.clip(mean_rr * rng.lognormal(-0.05, 0.32, n), 0.36, 1.8)
    hr = {"normal": (60, 100), "1dAVb": (55, 85), "LBBB": (60, 100), "SB": (40, 57), "ST": (105, 140)}[kind]
    u = rng.uniform(*hr)
    rr0 = 60.0 / u
    n = int(span / rr0) + 4  # beats drawn (fixes the random numbers consumed)
    if strength != 1.0 and kind in ("SB", "ST"):
        q = (u - hr[0]) / (hr[1] - hr[0])
        rr0 = 60.0 / ((1.0 - strength) * (_NORMAL_HR[0] + q * (_NORMAL_HR[1] - _NORMAL_HR[0])) + strength * u)
    m = max(n, int(span / rr0) + 4)
    t = np.cumsum(np.full(m, rr0))
    resp = rng.uniform(0.15, 0.35)  # respiratory frequency (Hz)
    rr = rr0 * (1.0 + sinus_arrhythmia * np.sin(2 * np.pi * resp * t + rng.uniform(0, 2 * np.pi)))
    eps = rng.standard_normal(n)
    rr *= 1.0 + 0.01 * (eps if m == n else np.resize(eps, m))
    return rr


def simulate(kind: str, *, fs: float = 400, duration: float = 10.24, seed: int = 0, noise: float = 0.02,
             baseline_wander: float = 0.1, powerline: float = 0.0, amplitude_jitter: float = 0.15,
             sinus_arrhythmia: float | None = None, irregular: bool | None = None,
             f_wave_amplitude: tuple[float, float] = (0.05, 0.15), p_irregular: float = 0.4,
             p_junctional: float = 0.0, junctional: bool | None = None, p_irregular_other: float = 0.0,
             f_wave_support: str = "all", f_wave_taper: float = 0.02, feature_strength: float = 1.0,
             ) -> tuple[np.ndarray, list[dict]]:
    """One synthetic 12-lead ECG of class ``kind`` (see :data:`KINDS`, :data:`CONTROL_KINDS`) and its truth windows.

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
    ``feature_strength`` (0..1, default 1): how much of the class's planted feature the
    record has, everything else identical (module docstring); ``kind="AF_ctrl"`` etc.
    is ``kind="AF", feature_strength=0``.
    """
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {ALL_KINDS}")
    if kind in CONTROL_KINDS:
        if feature_strength != 1.0:
            raise ValueError(f"{kind!r} is a control (feature_strength 0); do not pass feature_strength")
        kind, s_feat = kind[:-len("_ctrl")], 0.0
    else:
        s_feat = float(feature_strength)
    if not 0.0 <= s_feat <= 1.0:
        raise ValueError(f"feature_strength must be in [0, 1], not {feature_strength!r}")
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
        rr = _rr_series(rng, kind, duration + 2.0, sinus_arrhythmia=sinus_arrhythmia, irregular=irregular,
                        strength=s_feat)
        onsets = -rng.uniform(0.3, 1.0) + np.concatenate([[0.0], np.cumsum(rr)])
        onsets = onsets[onsets < duration + 0.5]
        if kind != "AF" and not irregular:
            break
        seen = np.diff(onsets[(onsets >= 0) & (onsets < duration - 0.2)])  # RR visible in the record
        if len(seen) >= 3 and seen.std() / seen.mean() >= 0.18:
            break

    g = 1.0 + amplitude_jitter * rng.standard_normal(12)  # per-lead gain (electrode/body habitus)
    g_rec = np.exp(0.15 * rng.standard_normal())
    mk = lambda base, z: base * g * g_rec * (1.0 + amplitude_jitter * z)  # noqa: E731
    s1 = s_feat == 1.0
    mix = lambda a, b: (1.0 - s_feat) * a + s_feat * b  # noqa: E731  (normal value a -> feature value b)
    z = [rng.standard_normal(12) for _ in range(4)]  # the jitter of the four QRS-T templates
    normal_w = None  # LBBB at strength < 1: the normal Q/R/S drawn with the same jitter, weight 1 - strength
    if kind == "LBBB":
        waves = {"R1": mk(_LBBB_R1, z[0]), "R2": mk(_LBBB_R2, z[1]), "QS": mk(_LBBB_QS, z[2]), "T": mk(_LBBB_T, z[3])}
        qrs_s = rng.uniform(0.13, 0.16)
        if not s1:
            nt = mk(_NORMAL_T, z[3])
            normal_w = {"Q": mk(_NORMAL_Q, z[0]) * (1.0 - s_feat), "R": mk(_NORMAL_R, z[1]) * (1.0 - s_feat),
                        "S": mk(_NORMAL_S, z[2]) * (1.0 - s_feat)}
            waves = {"R1": waves["R1"] * s_feat, "R2": waves["R2"] * s_feat, "QS": waves["QS"] * s_feat,
                     "T": mix(nt, waves["T"])}
            qrs_s = mix(0.08 + (qrs_s - 0.13) * (0.02 / 0.03), qrs_s)
    else:
        waves = {"Q": mk(_NORMAL_Q, z[0]), "R": mk(_NORMAL_R, z[1]), "S": mk(_NORMAL_S, z[2]), "T": mk(_NORMAL_T, z[3])}
        qrs_s = rng.uniform(0.08, 0.10)
    p_amp = mk(_P, rng.standard_normal(12))
    if kind == "1dAVb":
        pr_s = rng.uniform(0.24, 0.32)
        pr_s = pr_s if s1 else mix(0.13 + (pr_s - 0.24) * (0.07 / 0.08), pr_s)
    elif kind == "ST":
        pr_s = rng.uniform(0.12, 0.15)
        pr_s = pr_s if s1 else mix(0.13 + (pr_s - 0.12) * (0.07 / 0.03), pr_s)
    else:
        pr_s = rng.uniform(0.13, 0.20)
    p_dur = 0.10 if kind != "ST" else (0.08 if s1 else mix(0.10, 0.08))
    mean_rr = float(np.mean(rr))
    st_k, tw_k = (0.04, 0.20) if kind == "LBBB" else (0.08, 0.17)
    if kind == "LBBB" and not s1:
        st_k, tw_k = mix(0.08, 0.04), mix(0.17, 0.20)
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
        if kind == "LBBB" and s_feat > 0:
            _add_wave(sig, q, q + S(0.62 * qrs_s), waves["R1"] * bgain)
            _add_wave(sig, q + S(0.38 * qrs_s), qb, waves["R2"] * bgain)
            _add_wave(sig, q + S(0.05 * qrs_s), qb, waves["QS"] * bgain)
        if normal_w is not None:
            _add_wave(sig, q, q + S(0.22 * qrs_s), normal_w["Q"] * bgain)
            _add_wave(sig, q + S(0.12 * qrs_s), q + S(0.68 * qrs_s), normal_w["R"] * bgain)
            _add_wave(sig, q + S(0.55 * qrs_s), qb, normal_w["S"] * bgain)
        elif kind != "LBBB":
            _add_wave(sig, q, q + S(0.22 * qrs_s), waves["Q"] * bgain)
            _add_wave(sig, q + S(0.12 * qrs_s), q + S(0.68 * qrs_s), waves["R"] * bgain)
            _add_wave(sig, q + S(0.55 * qrs_s), qb, waves["S"] * bgain)
        ta, tb = qb + S(st_s), qb + S(st_s) + S(tw_s)
        _add_wave(sig, ta, tb, waves["T"] * bgain)
        if inside(qa, qb):
            truth.append({"feature": "QRS", "lead": "all", "start": qa, "stop": qb})
            if kind == "LBBB" and s_feat > 0:
                truth += [{"feature": "QRS", "lead": ld, "start": qa, "stop": qb} for ld in LBBB_QRS_LEADS]
        if inside(ta, tb):
            truth.append({"feature": "T", "lead": "all", "start": ta, "stop": tb})
            if kind == "LBBB" and s_feat > 0:
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
            if fb > fa and s_feat > 0:
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
        if not s1:
            fw = fw * s_feat
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
    bad = [k for k in n_per_class if k not in ALL_KINDS]
    if bad:
        raise ValueError(f"unknown kinds {bad}; use {ALL_KINDS}")
    return [k for k in ALL_KINDS for _ in range(int(n_per_class.get(k, 0)))]


def _record_seeds(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x5EC6]).integers(0, 2**31 - 1, size=count)


def record_seeds(seed: int, count: int) -> np.ndarray:
    """The per-record seeds :func:`training_arrays` / :func:`truth_arrays` use for records ``0..count-1``."""
    return _record_seeds(seed, count)


def target_vector(kind: str) -> np.ndarray:
    """Multi-hot target in :data:`CLASSES` order (normal and the :data:`CONTROL_KINDS`: all zeros)."""
    y = np.zeros(len(CLASSES), np.float32)
    if kind != "normal" and kind not in CONTROL_KINDS:
        y[CLASSES.index(kind)] = 1.0
    return y


def without_feature(kind: str, *, seed: int = 0, **sim_kw) -> tuple[np.ndarray, list[dict]]:
    """The record ``simulate(kind, seed=seed, **sim_kw)`` without its planted feature (``feature_strength=0``).

    Everything else is identical (same random numbers): for AF the difference is exactly the f-wave
    component; for LBBB it is confined to each beat's QRS onset .. T end; for 1dAVb to the P waves.
    """
    if kind in CONTROL_KINDS or kind == "normal":
        raise ValueError(f"{kind!r} has no planted feature to remove")
    return simulate(kind, seed=seed, **{**sim_kw, "feature_strength": 0.0})


def graded_arrays(kind: str, n: int, *, seed: int, low: float = 0.0, high: float = 1.0, threshold: float = 0.5,
                  fs: float = 400, n_samples: int = 4096, **sim_kw):
    """``n`` records of ``kind`` with ``feature_strength`` drawn uniformly in ``[low, high]`` per record.

    Returns ``(X (n, 12, n_samples) float32, strength (n,), y (n,) float32, truths, seeds)``:
    ``y = strength >= threshold`` is the label the records carry for ``kind`` (so that a model's
    probabilities can be scored; records near the threshold are where misclassifications are
    expected); ``seeds`` the record seeds (``simulate(kind, seed=seeds[i], feature_strength=strength[i])``).
    The strengths come from their own generator (``[seed, 0x57E6]``), the record seeds from
    :func:`record_seeds` (as :func:`truth_arrays`).
    """
    if kind not in KINDS or kind == "normal":
        raise ValueError(f"graded_arrays needs a kind with a feature ({KINDS[1:]}), not {kind!r}")
    seeds = _record_seeds(seed, n)
    strength = np.random.default_rng([seed, 0x57E6]).uniform(low, high, size=n)
    X = np.empty((n, 12, n_samples), np.float32)
    truths = []
    for i in range(n):
        sig, tr = simulate(kind, fs=fs, duration=n_samples / fs, seed=int(seeds[i]),
                           feature_strength=float(strength[i]), **sim_kw)
        X[i] = sig.T
        truths.append(tr)
    return X, strength, (strength >= threshold).astype(np.float32), truths, seeds


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
                  duration: float = 10.0, graded: bool = False, threshold: float = 0.5, **sim_kw):
    """Write WFDB records (``S0001`` ...; SNOMED ``#Dx:``) and ``out_dir/truth.parquet``.

    Returns the truth as a ``pyarrow.Table`` with columns ``record_id, label,
    feature, lead, start, stop, fs, strength`` (samples at the file's ``fs``; ``label`` the kind simulated).
    ``graded=True``: every record of a kind with a feature gets ``feature_strength`` drawn uniformly in
    0..1 (generator ``[seed, 0x57E6]``, as :func:`graded_arrays`) and is labelled (``#Dx``) with its kind
    when the strength is >= ``threshold``, else as normal -- so the model's probabilities span 0..1 and
    some records are misclassified, as in real data; ``strength`` is 1.0 otherwise.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    kinds = _kinds_list(n_per_class)
    seeds = _record_seeds(seed, len(kinds))
    cols: dict[str, list] = {c: [] for c in ("record_id", "label", "feature", "lead", "start", "stop", "fs")}
    if any(k in CONTROL_KINDS for k in kinds):
        raise ValueError("control kinds have no SNOMED code; use training_arrays / truth_arrays")
    cols["strength"] = []
    strengths = (np.random.default_rng([seed, 0x57E6]).uniform(0.0, 1.0, size=len(kinds)) if graded
                 else np.ones(len(kinds)))
    for i, (k, s) in enumerate(zip(kinds, seeds)):
        rid = f"S{i + 1:04d}"
        strength = 1.0 if k == "normal" else float(strengths[i])
        extra = {"feature_strength": strength} if graded and k != "normal" else {}
        sig, truth = simulate(k, fs=fs, duration=duration, seed=int(s), **extra, **sim_kw)
        write_wfdb(out_dir, rid, sig, fs, dx=[SNOMED[k] if strength >= threshold else SNOMED["normal"]])
        for r in truth:
            for c, v in (("record_id", rid), ("label", k), ("feature", r["feature"]), ("lead", r["lead"]),
                         ("start", r["start"]), ("stop", r["stop"]), ("fs", float(fs)), ("strength", strength)):
                cols[c].append(v)
    schema = pa.schema([("record_id", pa.string()), ("label", pa.string()), ("feature", pa.string()),
                        ("lead", pa.string()), ("start", pa.int64()), ("stop", pa.int64()), ("fs", pa.float64()),
                        ("strength", pa.float64())])
    table = pa.table(cols, schema=schema).replace_schema_metadata(
        {"ecgray_synth": json.dumps({"seed": seed, "fs": fs, "duration": duration, "kinds": sorted(set(kinds)),
                                     "graded": bool(graded), "threshold": threshold})})
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
