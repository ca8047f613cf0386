"""ecgray.synth: determinism, planted features measurable from the signal, truth windows, WFDB round trip."""
from __future__ import annotations

import numpy as np
import pytest

from ecgray.synth import KINDS, MODEL_LEADS, simulate, training_arrays, write_dataset

FS = 400
CLEAN = {"noise": 0.0, "baseline_wander": 0.0}


def _rr(truth, fs=FS):
    onsets = np.array(sorted(r["start"] for r in truth if r["feature"] == "QRS" and r["lead"] == "all"))
    return np.diff(onsets) / fs


def _qrs_widths_ms(sig: np.ndarray, truth, fs=FS, frac=0.1) -> np.ndarray:
    """QRS width measured from the signal: spatial velocity (sum over leads of |d/dt| of the 12.5 ms
    moving-average signal) above ``frac`` of its peak, contiguous run around each beat's velocity peak
    (the truth is only used to say roughly, +-100 ms, where a beat is)."""
    k = np.ones(5) / 5
    sig = np.apply_along_axis(lambda c: np.convolve(c, k, mode="same"), 0, sig)
    v = np.abs(np.diff(sig, axis=0)).sum(1)
    v = np.convolve(v, np.ones(3) / 3, mode="same")
    thr = frac * np.percentile(v, 99.5)
    widths = []
    for r in truth:
        if r["feature"] != "QRS" or r["lead"] != "all":
            continue
        a, b = max(r["start"] - 40, 1), min(r["stop"] + 40, len(v) - 1)  # search +-100 ms around it
        pk = a + int(np.argmax(v[a:b]))
        lo = pk
        while lo > 0 and v[lo - 1] > thr:
            lo -= 1
        hi = pk
        while hi < len(v) - 1 and v[hi + 1] > thr:
            hi += 1
        widths.append((hi - lo + 1) * 1000 / fs)
    return np.array(widths)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_shapes(kind):
    a, ta = simulate(kind, seed=7)
    b, tb = simulate(kind, seed=7)
    c, _ = simulate(kind, seed=8)
    assert a.shape == (4096, 12) and a.dtype == np.float32
    assert np.array_equal(a, b) and ta == tb
    assert not np.array_equal(a, c)
    # truth windows lie inside the record and name known leads/features
    for r in ta:
        assert 0 <= r["start"] < r["stop"] <= a.shape[0]
        assert r["lead"] == "all" or r["lead"] in MODEL_LEADS
        assert r["feature"] in ("P", "QRS", "T", "f_wave", "no_P")


def test_training_arrays_deterministic():
    X1, Y1, k1 = training_arrays({"AF": 2, "normal": 2, "LBBB": 1}, seed=3)
    X2, Y2, k2 = training_arrays({"AF": 2, "normal": 2, "LBBB": 1}, seed=3)
    assert X1.shape == (5, 12, 4096) and Y1.shape == (5, 6)
    assert np.array_equal(X1, X2) and np.array_equal(Y1, Y2) and k1 == k2
    assert k1 == ["normal", "normal", "AF", "AF", "LBBB"]
    assert Y1[0].sum() == 0 and Y1[2, 4] == 1 and Y1[4, 2] == 1  # CLASSES order: 1dAVb RBBB LBBB SB AF ST


def test_af_rr_irregular_and_no_p_waves():
    for seed in range(8):
        sig, truth = simulate("AF", seed=seed)
        rr = _rr(truth)
        assert rr.std() / rr.mean() >= 0.15
        assert not any(r["feature"] == "P" for r in truth)
        assert sum(r["feature"] == "no_P" for r in truth) >= 5
        # without f-waves and noise, the no_P windows are exactly flat: nothing was planted there
        clean, truth_c = simulate("AF", seed=seed, f_wave_amplitude=(0.0, 0.0), **CLEAN)
        for r in truth_c:
            if r["feature"] in ("no_P", "f_wave"):
                assert np.abs(clean[r["start"]:r["stop"]]).max() < 1e-9
    for seed in range(8):
        _, truth = simulate("normal", seed=seed, sinus_arrhythmia=0.03, irregular=False)
        rr = _rr(truth)
        assert rr.std() / rr.mean() < 0.1
        # irregular sinus rhythm (atrial ectopy), labelled normal: irregular RR but a P wave before every QRS
        _, truth = simulate("normal", seed=seed, irregular=True)
        q = [r["start"] for r in truth if r["feature"] == "QRS" and r["lead"] == "all"]
        p = [r["start"] for r in truth if r["feature"] == "P"]
        assert all(any(0 < qq - pp <= 0.2 * FS + 1 for pp in p) for qq in q if qq > 0.2 * FS)


def _window_template_energy(kind, feature, seed, lead="DII"):
    """Energy of the beat-averaged signal in ``feature`` windows (P waves are phase-locked to the QRS;
    f-waves are not and average out). Windows are aligned on their end (= near the QRS onset)."""
    sig, truth = simulate(kind, seed=seed, baseline_wander=0.0)
    x = sig[:, MODEL_LEADS.index(lead)]
    segs = [x[r["stop"] - 24:r["stop"]] for r in truth if r["feature"] == feature and r["stop"] - r["start"] >= 24]
    return float(np.mean(np.mean(segs, axis=0) ** 2)), len(segs)


def test_p_wave_energy_normal_vs_af():
    for seed in range(6):
        e_af, n_af = _window_template_energy("AF", "no_P", seed)
        e_n, n_n = _window_template_energy("normal", "P", seed)
        assert n_af >= 5 and n_n >= 5
        assert e_n > 5 * e_af, (seed, e_n, e_af)
        assert e_n > (0.05 ** 2) / 2  # a P wave of >= ~0.05 mV (mean square of the template)


def test_f_waves_present_in_af_baseline():
    from scipy.signal import welch

    sig, truth = simulate("AF", seed=1, **CLEAN)
    v1 = sig[:, MODEL_LEADS.index("V1")]
    seg = np.concatenate([v1[r["start"]:r["stop"]] for r in truth if r["feature"] == "f_wave"])
    f, p = welch(seg - seg.mean(), fs=FS, nperseg=128)
    assert 4 <= f[np.argmax(p)] <= 9
    assert 0.03 < seg.std() < 0.3


def test_lbbb_wide_qrs_measured_from_signal():
    for seed in range(5):
        s_l, t_l = simulate("LBBB", seed=seed, noise=0.01, baseline_wander=0.0)
        s_n, t_n = simulate("normal", seed=seed, noise=0.01, baseline_wander=0.0)
        w_l, w_n = np.median(_qrs_widths_ms(s_l, t_l)), np.median(_qrs_widths_ms(s_n, t_n))
        assert w_l >= 120, (seed, w_l)
        assert w_n < 110, (seed, w_n)
        # morphology: QS (negative) in V1, positive broad R in V5; discordant T in V5
        v1, v5 = s_l[:, MODEL_LEADS.index("V1")], s_l[:, MODEL_LEADS.index("V5")]
        q = next(r for r in t_l if r["feature"] == "QRS" and r["lead"] == "all")
        t = next(r for r in t_l if r["feature"] == "T" and r["lead"] == "all")
        assert v1[q["start"]:q["stop"]].min() < -0.5 and v1[q["start"]:q["stop"]].max() < 0.2
        assert v5[q["start"]:q["stop"]].max() > 0.4
        assert v5[t["start"]:t["stop"]].mean() < 0


def test_neurokit_finds_the_beats():
    """Realism: NeuroKit2's R-peak detector finds the planted beats in lead II and the rate is right."""
    import neurokit2 as nk

    for kind, lo, hi in (("normal", 55, 105), ("SB", 35, 60), ("ST", 100, 145)):
        sig, truth = simulate(kind, seed=2)
        _, info = nk.ecg_peaks(sig[:, 1], sampling_rate=FS)
        n_true = sum(r["feature"] == "QRS" and r["lead"] == "all" for r in truth)
        assert abs(len(info["ECG_R_Peaks"]) - n_true) <= 1
        hr = 60 / np.median(np.diff(info["ECG_R_Peaks"]) / FS)
        assert lo <= hr <= hi, (kind, hr)


def test_first_degree_av_block_pr():
    for kind, lo, hi in (("1dAVb", 0.24, 0.32), ("normal", 0.12, 0.20)):
        _, truth = simulate(kind, seed=4)
        p = [r["start"] for r in truth if r["feature"] == "P"]
        q = [r["start"] for r in truth if r["feature"] == "QRS" and r["lead"] == "all"]
        prs = [min(qq - pp for qq in q if qq > pp) / FS for pp in p if any(qq > pp for qq in q)]
        assert all(lo - 0.003 <= pr <= hi + 0.003 for pr in prs), prs


def test_write_dataset_round_trip(tmp_path):
    import pyarrow.parquet as pq

    from ecgray.io import read_record
    from ecgray.preprocess import preprocess

    tbl = write_dataset(tmp_path, {"normal": 1, "AF": 1, "LBBB": 1}, seed=5, fs=500, duration=10.0)
    assert pq.read_table(tmp_path / "truth.parquet").equals(tbl)
    assert set(tbl.column_names) == {"record_id", "label", "feature", "lead", "start", "stop", "fs", "strength"}
    assert set(tbl.column("strength").to_pylist()) == {1.0}
    labels = dict(zip(tbl.column("record_id").to_pylist(), tbl.column("label").to_pylist()))
    assert sorted(set(labels.values())) == ["AF", "LBBB", "normal"]
    for rid, lab in labels.items():
        rec = read_record(str(tmp_path / rid))
        assert rec.fs == 500 and rec.signal.shape == (5000, 12)
        if lab == "normal":
            assert rec.labels.normal and not any(rec.labels.classes.values())
        else:
            assert rec.labels.classes[lab] and not rec.labels.normal
            assert rec.labels.positives() == (lab,)
        # truth at the file's fs, inside the record; the signal matches simulate() to 16-bit precision
        rows = [r for r in tbl.to_pylist() if r["record_id"] == rid]
        assert all(0 <= r["start"] < r["stop"] <= 5000 and r["fs"] == 500 for r in rows)
        assert preprocess(rec)[0].x.shape == (12, 4096)


def test_default_design_unchanged_by_the_options():
    """The design options draw nothing when left at their defaults: the demo model's data stay the same."""
    for kind in KINDS:
        for seed in range(3):
            a, ta = simulate(kind, seed=seed)
            b, tb = simulate(kind, seed=seed, p_irregular=0.4, p_junctional=0.0, p_irregular_other=0.0,
                             f_wave_support="all")
            assert np.array_equal(a, b) and ta == tb


def test_junctional_normals_have_no_atrial_activity_and_regular_rr():
    for seed in range(6):
        sig, truth = simulate("normal", seed=seed, junctional=True, sinus_arrhythmia=0.03, **CLEAN)
        assert not any(r["feature"] in ("P", "f_wave", "no_P") for r in truth)
        rr = _rr(truth)
        assert rr.std() / rr.mean() < 0.1
        # nothing between the end of a T wave and the next QRS onset: no P, no f-waves
        t_end = sorted(r["stop"] for r in truth if r["feature"] == "T")
        q_on = sorted(r["start"] for r in truth if r["feature"] == "QRS" and r["lead"] == "all")
        gaps = [(te, min(q for q in q_on if q >= te)) for te in t_end if any(q >= te for q in q_on)]
        assert gaps and all(np.abs(sig[a:b]).max() < 1e-9 for a, b in gaps)
    drawn = [simulate("normal", seed=s, p_junctional=0.3, baseline_wander=0.0)[1] for s in range(200)]
    share = np.mean([not any(r["feature"] == "P" for r in t) for t in drawn])
    assert 0.2 < share < 0.4  # 30 % of all normals (taken from the regular ones)
    with pytest.raises(ValueError, match="junctional"):
        simulate("AF", junctional=True)


def test_irregular_rr_in_other_sinus_kinds():
    cvs = []
    for seed in range(40):
        _, truth = simulate("LBBB", seed=seed, p_irregular_other=0.5)
        rr = _rr(truth)
        cvs.append(rr.std() / rr.mean())
        q = [r["start"] for r in truth if r["feature"] == "QRS" and r["lead"] == "all"]
        p = [r["start"] for r in truth if r["feature"] == "P"]
        assert all(any(0 < qq - pp <= 0.2 * FS + 1 for pp in p) for qq in q if qq > 0.2 * FS)  # P waves kept
    share = np.mean(np.array(cvs) >= 0.18)
    assert 0.3 < share < 0.7
    # an irregular LBBB keeps its own morphology: the same wide QRS and the LBBB ST-T timing
    sig, truth = simulate("LBBB", seed=3, irregular=True, **CLEAN)
    assert np.median(_qrs_widths_ms(sig, truth)) >= 120
    q_end = {r["stop"] for r in truth if r["feature"] == "QRS" and r["lead"] == "all"}
    st = [min(r["start"] - e for e in q_end if e <= r["start"]) for r in truth
          if r["feature"] == "T" and r["lead"] == "all" and any(e <= r["start"] for e in q_end)]
    assert np.median(st) / FS < 0.05  # LBBB: T starts ~0.04 * sqrt(0.65) s after the QRS (sinus: 0.08 * ...)
    with pytest.raises(ValueError, match="irregular"):
        simulate("SB", irregular=True)


def test_f_waves_only_in_tq_windows():
    for seed in range(4):
        tq, truth = simulate("AF", seed=seed, f_wave_support="tq", **CLEAN)
        none, truth0 = simulate("AF", seed=seed, f_wave_amplitude=(0.0, 0.0), **CLEAN)
        full, _ = simulate("AF", seed=seed, **CLEAN)
        assert truth == truth0
        m = np.zeros(len(tq), bool)
        for r in truth:
            if r["feature"] == "f_wave":
                m[r["start"]:r["stop"]] = True
        assert np.abs(tq - none)[~m].max() < 1e-6           # exactly nothing planted outside the windows
        assert np.abs(tq - none)[m].max() > 0.05             # f-waves inside
        assert np.abs(full - none)[~m].max() > 0.05          # the default puts them everywhere
        pad = np.zeros(20, bool)                             # away from the 20 ms tapers (8 samples)
        inner = m & np.concatenate([pad, m[:-20]]) & np.concatenate([m[20:], pad])
        assert np.abs(tq - full)[inner].max() < 1e-6
    with pytest.raises(ValueError, match="f_wave_support"):
        simulate("AF", f_wave_support="qrs")


def test_write_dataset_graded_labels_follow_the_strength(tmp_path):
    """``graded=True``: a record is labelled (#Dx) with its class when its feature strength is >= 0.5, else normal."""
    from ecgray.io import read_record

    tbl = write_dataset(tmp_path, {"normal": 1, "AF": 3, "LBBB": 3}, seed=0, fs=500, duration=10.0, graded=True)
    per = {r: (l, s) for r, l, s in zip(*(tbl.column(c).to_pylist() for c in ("record_id", "label", "strength")))}
    assert {s for l, s in per.values() if l == "normal"} == {1.0}
    assert any(s < 0.5 for l, s in per.values()) and any(0.5 <= s < 1 for l, s in per.values())
    for rid, (kind, strength) in per.items():
        rec = read_record(str(tmp_path / rid))
        if kind == "normal" or strength < 0.5:
            assert rec.labels.normal and not any(rec.labels.classes.values()), (rid, kind, strength)
        else:
            assert rec.labels.positives() == (kind,)
