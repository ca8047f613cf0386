"""Ground truth beyond density ratios: feature strength / counterfactual records, negative controls, the
localisation metrics (RMA, RRA, AUC-PR, signed share) on hand-made maps, and the counterfactual test on the
demo model. Figures of the full benchmark: benchmarks/results/groundtruth.json (benchmarks/groundtruth.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ecgray import groundtruth as gt
from ecgray.synth import (CONTROL_KINDS, KINDS, LBBB_QRS_LEADS, LBBB_T_LEADS, MODEL_LEADS, graded_arrays,
                          simulate, target_vector, training_arrays, truth_arrays, without_feature)

FS = 400
CLEAN = {"noise": 0.0, "baseline_wander": 0.0}

# simulate(kind, seed=3) lead DII at samples 256, 768, ... and sum |sig|, computed with ecgray.synth as it was
# before feature_strength existed (the demo model's training design): the option must not move a thing.
REFERENCE = {
    "normal": ([0.038346, -0.012064, 0.091299, -0.083716, 0.124423, -0.06327, 0.013294, -0.062356], 4147.162),
    "AF": ([0.097921, -0.144384, 0.001023, 0.013372, 0.158122, -0.013464, 0.270671, 0.127011], 5601.839),
    "LBBB": ([0.358122, 0.034508, 0.65621, -0.054071, 0.042343, 0.235718, 0.013398, 0.392958], 7415.541),
    "1dAVb": ([0.090187, -0.097447, 0.019067, 0.10505, 0.044774, 0.017155, -0.094408, 0.184424], 4932.975),
    "SB": ([0.119746, 0.508779, 0.008455, 0.049296, -0.065574, 0.015204, 0.055578, -0.012636], 4763.572),
    "ST": ([0.018049, 0.491778, 0.09927, 0.235601, 0.034975, 0.221894, 0.000666, -0.128631], 6725.433),
}


def _rows(truth, feature, lead="all"):
    return [(r["start"], r["stop"]) for r in truth if r["feature"] == feature and r["lead"] == lead]


# --------------------------------------------------------------------------- synth: strength 1 = today
@pytest.mark.parametrize("kind", KINDS)
def test_strength_one_is_todays_design(kind):
    sig, truth = simulate(kind, seed=3)
    assert np.allclose(sig[256::512, 1], REFERENCE[kind][0], atol=2e-6)
    assert abs(float(np.abs(sig).sum()) - REFERENCE[kind][1]) < 0.01
    for seed in range(3):
        for kw in ({}, {"f_wave_support": "tq"}, {"p_irregular_other": 0.5}, {"fs": 500, "duration": 10.0}):
            a, ta = simulate(kind, seed=seed, **kw)
            b, tb = simulate(kind, seed=seed, feature_strength=1.0, **kw)
            assert np.array_equal(a, b) and ta == tb


def test_strength_validated():
    with pytest.raises(ValueError, match="feature_strength"):
        simulate("AF", feature_strength=1.5)
    with pytest.raises(ValueError, match="control"):
        simulate("AF_ctrl", feature_strength=0.5)
    with pytest.raises(ValueError, match="no planted feature"):
        without_feature("normal")
    with pytest.raises(ValueError, match="SNOMED"):
        from ecgray.synth import write_dataset

        write_dataset("/nonexistent", {"AF_ctrl": 1})


# --------------------------------------------------------------------------- synth: only the feature changes
@pytest.mark.parametrize("support", ["all", "tq"])
def test_af_removed_copy_differs_by_the_f_wave_component_only(support):
    for seed in range(3):
        a, ta = simulate("AF", seed=seed, f_wave_support=support)
        h, th = simulate("AF", seed=seed, f_wave_support=support, feature_strength=0.5)
        b, tb = without_feature("AF", seed=seed, f_wave_support=support)
        assert _rows(ta, "QRS") == _rows(tb, "QRS") and _rows(ta, "no_P") == _rows(tb, "no_P")
        assert _rows(tb, "f_wave") == [] and _rows(th, "f_wave") == _rows(ta, "f_wave")
        d, dh = a.astype(np.float64) - b, h.astype(np.float64) - b
        # the f-wave component fw(t) * lead_weight: rank one over leads, linear in the strength,
        # 4-9 Hz, ~0.05-0.15 mV; the noise, baseline wander and beats are the same numbers
        sv = np.linalg.svd(d, compute_uv=False)
        assert sv[1] < 1e-5 * sv[0]
        assert np.abs(d - 2 * dh).max() < 1e-5
        f = np.fft.rfftfreq(len(d), 1 / FS)
        assert 4 <= f[np.argmax(np.abs(np.fft.rfft(d[:, MODEL_LEADS.index("V1")])))] <= 9
        assert 0.015 < d[:, MODEL_LEADS.index("V1")].std() < 0.3
        if support == "tq":  # exact support: nothing changes outside the f_wave windows
            m = np.zeros(len(a), bool)
            for s, e in _rows(ta, "f_wave"):
                m[s:e] = True
            assert np.abs(d[~m]).max() == 0 and np.abs(d[m]).max() > 0.02


def test_lbbb_removed_copy_differs_in_qrs_t_only():
    for seed in range(4):
        a, ta = simulate("LBBB", seed=seed)
        b, tb = without_feature("LBBB", seed=seed)
        qa, qb = _rows(ta, "QRS"), _rows(tb, "QRS")
        assert [s for s, _ in qa] == [s for s, _ in qb]  # same beats
        assert all(0.13 * FS - 1 <= e - s <= 0.16 * FS + 1 for s, e in qa)
        assert all(0.08 * FS - 1 <= e - s <= 0.10 * FS + 1 for s, e in qb)  # the normal width
        assert _rows(ta, "P") == _rows(tb, "P")
        assert not any(r["lead"] != "all" for r in tb)  # no LBBB morphology rows
        assert any(r["lead"] != "all" for r in ta)
        # nothing changes outside each beat's QRS onset .. T end (either rendering), inside the span of
        # complete beats (beats cut by the record's edges have no truth rows)
        ts = _rows(ta, "T") + _rows(tb, "T")
        m = np.zeros(len(a), bool)
        for s, _ in qa:
            m[s:max((e for t0, e in ts if s < t0 < s + 0.25 * FS), default=len(a))] = True
        lo, hi = qa[0][0], max(e for _, e in ts)
        d = np.abs(a - b).max(1)
        assert d[lo:hi][~m[lo:hi]].max() == 0 and d[m].max() > 0.5


def test_1davb_removed_copy_moves_only_the_p_waves():
    for seed in range(4):
        a, ta = simulate("1dAVb", seed=seed)
        b, tb = without_feature("1dAVb", seed=seed)
        q = [s for s, _ in _rows(ta, "QRS")]
        assert q == [s for s, _ in _rows(tb, "QRS")]
        m = np.zeros(len(a), bool)
        for s, e in _rows(ta, "P") + _rows(tb, "P"):
            m[s:e] = True
        d = np.abs(a - b).max(1)
        lo, hi = q[0], _rows(ta, "QRS")[-1][1]  # P waves cut by the record's edge have no truth rows
        assert d[lo:hi][~m[lo:hi]].max() == 0 and d[m].max() > 0.05
        pr = lambda tr: [min(qq - p for qq in q if qq > p) / FS for p, _ in _rows(tr, "P")  # noqa: E731
                         if any(qq > p for qq in q)]
        assert all(0.24 - 0.003 <= x <= 0.32 + 0.003 for x in pr(ta))
        assert all(0.13 - 0.003 <= x <= 0.20 + 0.003 for x in pr(tb))


def test_sb_st_strength_moves_the_rate():
    for kind, (lo, hi) in (("SB", (40, 57)), ("ST", (105, 140))):
        for seed in range(3):
            hr = [60 / np.median(np.diff([s for s, _ in _rows(simulate(kind, seed=seed, feature_strength=f)[1],
                                                                   "QRS")]) / FS) for f in (1.0, 0.0)]
            assert lo - 3 <= hr[0] <= hi + 3 and 57 <= hr[1] <= 103, (kind, seed, hr)


# --------------------------------------------------------------------------- controls
def test_controls_are_the_class_without_its_feature():
    for ck in CONTROL_KINDS:
        base = ck[:-5]
        assert target_vector(ck).sum() == 0
        for seed in range(3):
            c, tc = simulate(ck, seed=seed)
            w, tw = without_feature(base, seed=seed)
            assert np.array_equal(c, w) and tc == tw
    X, Y, kinds = training_arrays({"normal": 1, "AF": 1, "AF_ctrl": 2, "LBBB_ctrl": 1}, seed=4)
    assert kinds == ["normal", "AF", "AF_ctrl", "AF_ctrl", "LBBB_ctrl"]
    assert Y[1].sum() == 1 and Y[[0, 2, 3, 4]].sum() == 0
    Xt, kt, tt = truth_arrays({"AF_ctrl": 2, "1dAVb_ctrl": 1}, seed=4)
    assert kt == ["AF_ctrl", "AF_ctrl", "1dAVb_ctrl"] and not any(r["feature"] == "f_wave" for r in tt[0])
    # AF_ctrl, clean: the same irregular RR as AF and nothing between T end and the next QRS (no P, no f)
    for seed in range(3):
        c, tc = simulate("AF_ctrl", seed=seed, **CLEAN)
        _, ta = simulate("AF", seed=seed, **CLEAN)
        assert _rows(tc, "QRS") == _rows(ta, "QRS")
        m = gt.feature_mask("AF_ctrl", tc, len(c))
        assert m.any() and np.abs(c.T[m]).max() < 1e-9
        assert not any(r["feature"] == "P" for r in tc)


def test_graded_arrays():
    X, s, y, truths, seeds = graded_arrays("LBBB", 10, seed=5)
    X2, s2, *_ = graded_arrays("LBBB", 10, seed=5)
    assert np.array_equal(X, X2) and np.array_equal(s, s2)
    assert X.shape == (10, 12, 4096) and ((0 <= s) & (s <= 1)).all() and np.array_equal(y, s >= 0.5)
    width = [np.mean([e - b for b, e in _rows(t, "QRS")]) for t in truths]
    assert np.corrcoef(width, s)[0, 1] > 0.7
    sig, _ = simulate("LBBB", seed=int(seeds[2]), feature_strength=float(s[2]))
    assert np.array_equal(sig.T, X[2])
    with pytest.raises(ValueError):
        graded_arrays("normal", 2, seed=0)


# --------------------------------------------------------------------------- metrics on hand-made maps
def test_feature_masks():
    sig, tr = simulate("LBBB", seed=1)
    m = gt.feature_mask("LBBB", tr, len(sig))
    named = np.zeros_like(m)
    for r in tr:
        if r["lead"] != "all":
            named[MODEL_LEADS.index(r["lead"]), r["start"]:r["stop"]] = True
    assert np.array_equal(m, named)
    assert m[[MODEL_LEADS.index(ld) for ld in set(MODEL_LEADS) - set(LBBB_QRS_LEADS) - set(LBBB_T_LEADS)]].sum() == 0
    _, ta = simulate("AF", seed=1)
    _, tc = simulate("AF_ctrl", seed=1)
    ma, mc = gt.feature_mask("AF", ta, 4096), gt.feature_mask("AF_ctrl", tc, 4096)
    assert not (mc & ~ma).any() and mc.sum() >= 0.8 * ma.sum()  # edge segments left out


def test_metrics_hand_examples():
    M = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    inside = np.array([[2.0, 1.0, 0, 0], [0, 0, 0, 0]])
    assert gt.rma(inside, M) == 1.0 and gt.rra(inside, M) == 1.0 and gt.signed_share(inside, M) == 1.0
    R = np.array([[3.0, -1.0, 1.0, 0.0], [2.0, -4.0, 0.0, 0.0]])
    assert gt.rma(R, M) == pytest.approx(3 / 6)               # positive mass 3 in, 6 total
    assert gt.signed_share(R, M) == pytest.approx(2 / 1)      # sum in 2, sum all 1
    assert gt.rra(R, M) == pytest.approx(1 / 2)               # top-2: 3 (in), 2 (out)
    assert gt.density_ratio(R, M) == pytest.approx((3 / 2) / (3 / 6))
    assert gt.auc_pr(R, M) == pytest.approx(gt.average_precision([3, 1, 1, 0, 2, 4, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]))
    assert gt.auc_pr(R, M, score="positive") == pytest.approx(gt.average_precision([3, 0, 1, 0, 2, 0, 0, 0],
                                                                                   [1, 1, 0, 0, 0, 0, 0, 0]))
    assert np.isnan(gt.rma(-inside, M)) and np.isnan(gt.rra(R, np.zeros_like(M)))
    loc = gt.localisation(np.stack([inside, R]), [M, M])
    assert loc["n_records"] == 2 and loc["rma"] == pytest.approx(0.75) and loc["rra"] == pytest.approx(0.75)
    assert loc["signed_share"] == pytest.approx((3 + 2) / (3 + 1)) and loc["frac_cells_in"] == 0.25


def test_average_precision_hand_examples():
    # scikit-learn's average_precision_score docstring example: 0.83
    assert gt.average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # ties form one threshold: at 1 -> P 1/2, R 1/2; at 0 -> P 2/3, R 1: 0.5 * 0.5 + 0.5 * 2/3
    assert gt.average_precision([1, 1, 0], [1, 0, 1]) == pytest.approx(0.25 + 1 / 3)
    assert gt.average_precision([3, 2, 1], [1, 1, 0]) == 1.0
    assert gt.average_precision([3, 2, 1], [0, 0, 1]) == pytest.approx(1 / 3)
    assert np.isnan(gt.average_precision([1, 2], [0, 0]))


def test_random_removal_has_the_energy_and_stays_outside():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 800)).astype(np.float32)
    d = np.zeros((12, 800))
    d[:, 100:200] = 0.3
    ex = gt.excluded_samples(np.zeros((12, 800), bool), d)
    assert ex[100:200].all() and ex.sum() == 100
    xn = gt.random_removal(x, d, ex, np.random.default_rng(1), mode="noise")
    diff = x.astype(np.float64) - xn
    assert np.abs(diff[:, ex]).max() == 0
    assert np.sum(diff ** 2) == pytest.approx(np.sum(d ** 2), rel=1e-4)
    xz = gt.random_removal(x, d, ex, np.random.default_rng(1), mode="zero")
    z = (xz != x).any(0)
    assert not z[ex].any() and (xz[:, z] == 0).all()
    removed = np.sum(x.astype(np.float64)[:, z] ** 2)
    assert np.sum(d ** 2) <= removed <= np.sum(d ** 2) + np.max([np.sum(x[:, s:s + 20] ** 2.0)
                                                                 for s in range(0, 780, 20)])
    # the feature everywhere (AF, f_wave_support="all"): only the mask is excluded
    m = np.zeros((12, 800), bool)
    m[:, :50] = True
    assert gt.excluded_samples(m, np.ones((12, 800))).sum() == 50


# --------------------------------------------------------------------------- counterfactual test, demo model
@pytest.fixture(scope="module")
def demo():
    from ecgray.models.registry import DEMO_WEIGHTS

    if not DEMO_WEIGHTS.is_file():
        pytest.skip("demo weights not built (ecgray train-demo --seed 0)")
    from ecgray.models import load_model

    return load_model("demo")


@pytest.mark.parametrize("kind", ["AF", "LBBB"])
def test_counterfactual_demo_model(demo, kind):
    """Removing the planted feature (everything else identical) must lower the class's logit for the
    correctly classified records; removing as much signal elsewhere must do far less. (What else the
    demo model does -- e.g. the noise control lowers its LBBB logit by ~4 -- is reported in
    benchmarks/results/groundtruth.json, not asserted.)"""
    X, Xc, tr, _, _ = gt.counterfactual_arrays(kind, 6, seed=gt.GT_SEED)
    j = list(demo.classes).index(kind)
    ok = gt._logits(demo, X, j) >= 0
    assert ok.sum() >= 5
    masks = [gt.feature_mask(kind, tr[i], X.shape[-1]) for i in np.flatnonzero(ok)]
    res = gt.counterfactual_test(demo, X[ok], Xc[ok], masks, kind, seed=0)
    assert res["feature"]["frac_drop_positive"] >= 0.95
    assert res["feature"]["median_drop"] > 0
    for mode in ("noise", "zero"):
        r = res[f"random_{mode}"]
        assert abs(r["median_drop"]) < 0.5 * res["feature"]["median_drop"], (mode, r, res["feature"])
        assert r["frac_below_0.5"] <= res["feature"]["frac_below_0.5"]


def test_benchmark_results_file():
    import json
    from pathlib import Path

    p = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "groundtruth.json"
    res = json.loads(p.read_text())
    neg = res["negative_control_model"]
    assert neg["held_out_accuracy_AF_decision"] >= 0.99
    assert set(neg["AF"]["methods"]) == set(gt.METHODS)
    for k in ("AF", "LBBB"):
        cf = res["demo_model"][k]["counterfactual"]
        assert cf["feature"]["frac_drop_positive"] >= 0.95
        for mode in ("noise", "zero"):
            assert abs(cf[f"random_{mode}"]["median_drop"]) < 0.5 * cf["feature"]["median_drop"]


def test_class_and_graded_reports_run(demo):
    rep = gt.class_report(demo, "LBBB", 3, methods=("saliency",))
    assert rep["n_correct"] == 3 and set(rep["methods"]) == {"saliency"}
    loc = rep["methods"]["saliency"]
    assert loc["n_records"] == 3 and 0 <= loc["rma"] <= 1 and 0 <= loc["rra"] <= 1 and 0 < loc["auc_pr"] <= 1
    g = gt.graded_report(demo, "AF", 6, methods=("saliency",))
    assert g["tp"] + g["fp"] + g["fn"] + g["tn"] == 6
    assert set(g["methods"]["saliency"]) >= {"spearman_in_strength", "spearman_in_p", "mean_in_fp", "mean_in_fn"}


def test_cli_check_prints_the_counterfactual_and_localisation_tables():
    from typer.testing import CliRunner

    from ecgray.cli import app

    res = CliRunner().invoke(app, ["check", "-n", "2", "--method", "saliency", "--counterfactual", "AF"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "counterfactual test" in res.output and "localisation in the planted windows" in res.output
    assert "│ AF " in res.output and "RMA" in res.output
    res = CliRunner().invoke(app, ["check", "-n", "2", "--method", "saliency", "--counterfactual", "RBBBX"])
    assert res.exit_code == 2 and "not among the model's classes" in res.output
