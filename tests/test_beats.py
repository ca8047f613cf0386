"""Tests of ecgray.beats: R-peak detection and beat averaging.

Simulated ECGs use ``nk.ecg_simulate(method="ecgsyn")`` (0.1 s per 10 s
record). Seeds are fixed and chosen with care: in neurokit2 0.2.13 the
ecgsyn RR generator loops forever for some (duration, heart rate, seed)
combinations (e.g. 10.24 s, 75 bpm, random_state=0), so every simulation
runs under an alarm that turns a hang into a failure. ``method="multileads"``
is not used as a reference: its "lead II" has R amplitude 0.2 against P 2
and T 3 (its gamma matrix), i.e. no dominant R wave, and it costs 15x more.
A 12-lead record is built from one ecgsyn lead with per-lead gains (aVR
negative) plus a little independent noise, so that all leads share R timing.
"""
from __future__ import annotations

import contextlib
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ecgray.beats import (WINDOW_MS, BeatAverage, average_beats, detect_rpeaks, lead_quality, rr_plausible,
                          template_correlation)
from ecgray.models.ribeiro2020 import FS, LEADS, N_SAMPLES

nk = pytest.importorskip("neurokit2")
from scipy.signal import find_peaks  # noqa: E402

GAINS = np.array([0.6, 1.0, 0.4, -0.8, 0.3, 0.7, -0.5, 0.3, 0.8, 1.2, 1.1, 0.9])
DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "cpsc2018-a0001-a0150"


@contextlib.contextmanager
def _alarm(seconds: int):
    """Fail instead of hanging (neurokit2 ecgsyn can loop forever for some seeds)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(*_):
        raise TimeoutError(f"nk.ecg_simulate did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_CACHE: dict = {}


def simulate(hr: float, duration: float = N_SAMPLES / FS, seed: int = 1) -> np.ndarray:
    key = (hr, duration, seed)
    if key not in _CACHE:
        with _alarm(30), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = nk.ecg_simulate(duration=duration, sampling_rate=FS, heart_rate=hr, method="ecgsyn",
                                random_state=seed)
        _CACHE[key] = np.asarray(s, dtype=np.float64)
    return _CACHE[key].copy()


def twelve_lead(s: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 0.01, (12, s.shape[0]))
    return (GAINS[:, None] * s[None, :] + noise).astype(np.float32)


def reference_average(x, relevance, peaks, valid, fs=FS, window_ms=WINDOW_MS):
    """Plain loop reference: np.mean over explicitly sliced windows."""
    w0, w1 = int(round(window_ms[0] * fs / 1000)), int(round(window_ms[1] * fs / 1000))
    start, stop = valid
    sig_beats, rel_beats, used = [], [], []
    for p in peaks:
        if p + w0 >= start and p + w1 <= stop:
            sig_beats.append(np.asarray(x, np.float64)[:, p + w0:p + w1])
            rel_beats.append(np.asarray(relevance, np.float64)[..., p + w0:p + w1])
            used.append(p)
    return np.mean(sig_beats, axis=0), np.mean(rel_beats, axis=0), np.array(used)


# --------------------------------------------------------------------------- detect_rpeaks
@pytest.mark.parametrize("hr", [50, 75, 120])
def test_detect_rpeaks_simulated_count_rr_and_positions(hr):
    s = simulate(hr)
    peaks = detect_rpeaks(s, FS)
    assert peaks.dtype == np.int64 and np.all(np.diff(peaks) > 0)
    expected = N_SAMPLES / FS * hr / 60  # 8.53, 12.8, 20.48
    assert abs(len(peaks) - expected) <= 1
    rr = np.diff(peaks) / FS
    np.testing.assert_allclose(rr, 60 / hr, rtol=0.05)
    # independent reference: local maxima of the clean simulated lead
    ref, _ = find_peaks(s, distance=int(0.6 * 60 / hr * FS), height=0.5 * s.max())
    assert abs(len(ref) - len(peaks)) <= 1
    tol = int(round(0.010 * FS))  # 10 ms = 4 samples
    d = np.abs(peaks[:, None] - ref[None, :]).min(axis=1)
    assert np.all(d <= tol), d
    assert template_correlation(s, peaks, FS) > 0.95


@pytest.mark.parametrize("method", ["pantompkins1985", "hamilton2002", "elgendi2010"])
def test_detect_rpeaks_method_passthrough(method):
    s = simulate(75)
    peaks = detect_rpeaks(s, FS, method=method)
    assert abs(len(peaks) - 12.8) <= 1.5
    assert np.median(np.diff(peaks)) / FS == pytest.approx(0.8, rel=0.05)


def test_detect_rpeaks_equals_neurokit_ecg_peaks():
    s = simulate(75)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = nk.ecg_peaks(nk.ecg_clean(s, sampling_rate=FS), sampling_rate=FS)
    np.testing.assert_array_equal(detect_rpeaks(s, FS), np.asarray(info["ECG_R_Peaks"]))


def test_detect_rpeaks_valid_region_in_full_frame():
    s = simulate(75)
    full = detect_rpeaks(s, FS)
    part = detect_rpeaks(s, FS, valid=(1000, 3500))
    assert part.min() >= 1000 and part.max() < 3500
    inner = full[(full >= 1100) & (full < 3400)]
    assert set(inner) <= set(part)


@pytest.mark.parametrize("bad", [np.zeros(4096), np.full(4096, np.nan), np.ones(100), np.zeros((2, 4096)),
                                 np.r_[np.zeros(2000), np.inf, np.zeros(2095)]])
def test_detect_rpeaks_bad_signals_empty_and_silent(bad):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = detect_rpeaks(bad, FS)
    assert p.dtype == np.int64 and p.shape == (0,)
    assert rec == []


def test_detect_rpeaks_unknown_method_empty():
    assert detect_rpeaks(simulate(75), FS, method="no-such-method").shape == (0,)


def test_detect_rpeaks_contract_not_neurokits():
    """Issue 15: one int64 index array (not nk.ecg_peaks's (DataFrame, info) tuple), under its own name."""
    import ecgray.beats as beats

    p = detect_rpeaks(list(simulate(75)), FS, valid=(-50, 10 ** 6))  # array-like input; valid clipped
    assert type(p) is np.ndarray and p.ndim == 1 and p.dtype == np.int64
    assert np.array_equal(p, detect_rpeaks(simulate(75), FS))
    assert "detect_rpeaks" in beats.__all__ and not hasattr(beats, "ecg_peaks")


# ----------------------------------------------------------------------- average_beats
def test_average_beats_matches_loop_reference():
    x = twelve_lead(simulate(75))
    rel = np.random.default_rng(3).normal(size=(2, 3, 12, N_SAMPLES)).astype(np.float32)
    valid = (150, 4000)
    avg = average_beats(x, rel, FS, valid=valid)
    assert isinstance(avg, BeatAverage)
    assert avg.quality == "ok" and avg.lead_used == "DII"
    detected = detect_rpeaks(x[1], FS, valid=valid)
    sig_ref, rel_ref, used = reference_average(x, rel, detected, valid)
    np.testing.assert_array_equal(avg.peaks, used)
    assert avg.n_beats == len(used) >= 10
    assert avg.signal.dtype == np.float32 and avg.signal.shape == (12, 320)
    assert avg.relevance.dtype == np.float32 and avg.relevance.shape == (2, 3, 12, 320)
    np.testing.assert_allclose(avg.signal, sig_ref, atol=1e-6)
    np.testing.assert_allclose(avg.relevance, rel_ref, atol=1e-6)
    # R-peak of the mean DII beat at offset 0 (peak aligned), amplitude preserved
    assert abs(avg.offsets_ms[np.argmax(avg.signal[1])]) <= 5.0
    assert avg.heart_rate_bpm == pytest.approx(75, rel=0.05)


def test_average_beats_3d_relevance_and_custom_window():
    x = twelve_lead(simulate(120))
    rel = np.random.default_rng(4).normal(size=(6, 12, N_SAMPLES))
    avg = average_beats(x, rel, FS, window_ms=(-100, 150))
    assert avg.offsets_ms.shape == (100,) and avg.offsets_ms[0] == -100.0
    assert avg.relevance.shape == (6, 12, 100)
    sig_ref, rel_ref, used = reference_average(x, rel, detect_rpeaks(x[1], FS), (0, N_SAMPLES),
                                               window_ms=(-100, 150))
    np.testing.assert_array_equal(avg.peaks, used)
    np.testing.assert_allclose(avg.relevance, rel_ref, atol=1e-6)


def test_valid_excludes_zero_padding():
    s6 = twelve_lead(simulate(75, duration=6.0))  # (12, 2400)
    n = s6.shape[1]
    left = (N_SAMPLES - n) // 2
    x = np.zeros((12, N_SAMPLES), np.float32)
    x[:, left:left + n] = s6
    rel = np.full((2, 12, N_SAMPLES), np.nan, np.float32)  # NaN in the padding ...
    rel[..., left:left + n] = 1.0  # ... so any overlap would show as NaN
    valid = (left, left + n)
    avg = average_beats(x, rel, FS, valid=valid)
    assert avg.quality == "ok"
    assert avg.offsets_ms.shape == (320,) and avg.offsets_ms.dtype == np.float32
    assert avg.offsets_ms[0] == -300.0 and avg.offsets_ms[-1] == 497.5
    np.testing.assert_allclose(np.diff(avg.offsets_ms), 2.5)
    assert np.all(avg.peaks - 120 >= left) and np.all(avg.peaks + 200 <= left + n)
    assert avg.n_beats >= 5  # 7.5 beats in 6 s, minus the edges
    assert np.all(avg.relevance == 1.0)
    assert np.isfinite(avg.signal).all()


def test_fallback_when_dii_flat_or_noise():
    x = twelve_lead(simulate(75))
    rel = np.zeros((1, 12, N_SAMPLES), np.float32)
    for make in ("flat", "noise"):
        y = x.copy()
        y[1] = 0.0 if make == "flat" else np.random.default_rng(5).normal(0, 0.1, N_SAMPLES)
        avg = average_beats(y, rel, FS)
        assert avg.lead_used != "DII" and avg.lead_used in LEADS, make
        assert avg.quality == "fallback_lead", make
        assert avg.n_beats >= 10 and avg.heart_rate_bpm == pytest.approx(75, rel=0.05)
    # kurtosis ranking: the flat lead is last (-inf)
    y[1] = 0.0
    q = lead_quality(y, FS)
    assert np.argmin(q) == 1 and q[1] == -np.inf


def test_requested_lead_and_alias():
    x = twelve_lead(simulate(75))
    rel = np.zeros((12, N_SAMPLES))
    assert average_beats(x, rel, FS, lead="V5").lead_used == "V5"
    assert average_beats(x, rel, FS, lead="II").lead_used == "DII"
    assert average_beats(x, rel, FS, lead="aVR").lead_used == "AVR"  # negative QRS still found
    with pytest.raises(ValueError):
        average_beats(x, rel, FS, lead="MLII")
    with pytest.raises(ValueError):
        average_beats(x, rel[:, :100], FS)


def test_all_zero_gives_no_beats_nan_and_no_warnings():
    x = np.zeros((12, N_SAMPLES), np.float32)
    rel = np.zeros((2, 3, 12, N_SAMPLES), np.float32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        avg = average_beats(x, rel, FS)
    assert rec == []
    assert avg.quality == "no_beats" and avg.n_beats == 0 and avg.peaks.shape == (0,)
    assert avg.signal.shape == (12, 320) and np.isnan(avg.signal).all()
    assert avg.relevance.shape == (2, 3, 12, 320) and np.isnan(avg.relevance).all()
    assert avg.relevance.dtype == np.float32 and np.isnan(avg.heart_rate_bpm)


def test_noise_on_every_lead_gives_no_beats():
    x = np.random.default_rng(6).normal(0, 0.2, (12, N_SAMPLES))
    avg = average_beats(x, np.zeros((3, 12, N_SAMPLES)), FS)
    assert avg.quality == "no_beats" and avg.n_beats == 0 and np.isnan(avg.relevance).all()


def test_few_beats_short_region():
    x = twelve_lead(simulate(75))
    peaks = detect_rpeaks(x[1], FS)
    # region holding the windows of exactly 2 beats
    valid = (int(peaks[3]) - 130, int(peaks[4]) + 210)
    avg = average_beats(x, np.zeros((12, N_SAMPLES)), FS, valid=valid)
    assert avg.quality == "few_beats" and avg.n_beats == 2
    assert np.isfinite(avg.signal).all()


def test_rr_plausible():
    assert rr_plausible(np.arange(5) * 320, FS)
    assert not rr_plausible(np.arange(2) * 320, FS)  # too few
    assert not rr_plausible(np.arange(5) * 80, FS)  # 300 bpm
    assert not rr_plausible(np.array([0, 300, 2000, 2100, 4000]), FS)  # erratic


# -------------------------------------------------------------------------- real data
@pytest.mark.skipif(not DATA.is_dir(), reason="shared CPSC 2018 data not present")
def test_cpsc_records():
    from ecgray.io import read_record
    from ecgray.preprocess import preprocess

    heads = sorted(DATA.glob("A*.hea"))[:20]
    assert len(heads) == 20
    preps = []
    for h in heads:
        p = preprocess(read_record(str(h.with_suffix(""))))[0]
        n = int(np.ceil(p.n_samples_in * FS / p.fs_in))  # resampled length
        valid = (-p.offset, -p.offset + n) if p.offset < 0 else None
        preps.append((p, valid))
    rel = np.random.default_rng(0).normal(size=(6, 12, N_SAMPLES)).astype(np.float32)
    average_beats(preps[0][0].x, rel, FS)  # warm-up (neurokit2 import)
    t0 = time.perf_counter()
    results = [average_beats(p.x, rel, FS, valid=v) for p, v in preps]
    ms = (time.perf_counter() - t0) / len(results) * 1000
    print(f"\naverage_beats: {ms:.1f} ms per record (12x4096, relevance 6x12x4096); "
          + ", ".join(f"{p.record_id}:{r.quality}/{r.lead_used}/{r.heart_rate_bpm:.0f}"
                      for (p, _), r in zip(preps, results)))
    good = [r for r in results if r.quality in ("ok", "fallback_lead")]
    assert len(good) >= 0.9 * len(results)
    for r in good:
        assert 30 <= r.heart_rate_bpm <= 200
        assert r.n_beats >= 3 and np.isfinite(r.signal).all() and np.isfinite(r.relevance).all()
    assert ms < 500
