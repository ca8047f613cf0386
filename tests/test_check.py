"""Ground-truth check of attributions against the planted synthetic features (demo model, small held-out set).

Criteria of the brief: relevance density ratio inside/outside >= 2 for LBBB (QRS + T in the characteristic
leads) and AF (f-wave / TQ segments) with IG and with LRP, and negative mean AF relevance over the P waves
of normal records.

Figures when written (demo weights model_id in demo.json; 6 records/class, seed 2000, IG n_steps=16):
LBBB ratio IG 7.1, lrp_epsilon 3.5, lrp_alpha_beta 7.7 -- pass. Normal P waves: mean AF relevance
IG -3.9e-3 (6/6 records negative), lrp_epsilon -1.2e-3 (5/6), lrp_alpha_beta -4.7e-5 (5/6) -- pass.
AF f_wave density ratio IG 0.86, lrp_epsilon 0.70, lrp_alpha_beta 0.60 -- FAILS the >= 2 criterion
(xfail below). The TQ segments cover ~58 % of the record and carry small amplitudes; input-scaled
relevance (IG with a zero baseline, LRP) is denser on the QRS (ratio ~1.8-2.7: the model also uses the
irregular QRS timing), and the net (signed) AF relevance in the TQ segments is about proportional to their
extent (n=20, IG n_steps=32: net share 0.62 for 0.58 of the samples; lrp_epsilon 0.58), i.e. spread over
the baseline rather than concentrated in it. Saliency (|gradient|, no input scaling) is denser there (1.5).
test_af_net_relevance_in_f_wave_segments checks only that weaker statement. Other data designs do not
reach 2 either (benchmarks/results/af_designs.json: 18 designs, 29 trainings on an H200; f-wave ratio
IG at most 1.79, LRP-eps at most 1.37); test_af_designs_script runs that search on a tiny configuration.
"""
from __future__ import annotations

import pytest

from ecgray.models.registry import DEMO_WEIGHTS

METHODS = ("integrated_gradients", "lrp_epsilon", "lrp_alpha_beta")


@pytest.fixture(scope="module")
def result():
    if not DEMO_WEIGHTS.is_file():
        pytest.skip("demo weights not built (ecgray train-demo --seed 0)")
    from ecgray.check import run_check
    from ecgray.models import load_model

    tbl, info = run_check(load_model("demo"), n_per_class=6, n_steps=16, methods=METHODS)
    rows = {(r["method"], r["target"], r["region"]): r for r in tbl.to_pylist()}
    return rows, info


def test_selection(result):
    rows, info = result
    assert info["AF_correct"] >= 5 and info["LBBB_correct"] >= 5 and info["normal_not_AF"] >= 5
    assert all(r["n_records"] >= 5 for r in rows.values())


@pytest.mark.parametrize("method", METHODS)
def test_lbbb_relevance_in_qrs_t(result, method):
    rows, _ = result
    assert rows[(method, "LBBB", "QRS+T (named leads)")]["ratio"] >= 2
    assert rows[(method, "LBBB", "QRS (named leads)")]["ratio"] >= 2


@pytest.mark.parametrize("method", METHODS)
def test_normal_p_waves_speak_against_af(result, method):
    rows, _ = result
    r = rows[(method, "AF", "P (normal records)")]
    assert r["mean_relevance_in"] < 0
    assert r["frac_negative"] >= 0.5


@pytest.mark.parametrize("method", ["integrated_gradients", "lrp_epsilon"])
def test_af_net_relevance_in_f_wave_segments(result, method):
    """The net (signed) AF relevance in the TQ segments is at least about proportional to their extent
    (it is not concentrated there: see the module docstring)."""
    rows, _ = result
    r = rows[(method, "AF", "f_wave")]
    assert r["net_share_in"] >= 0.9 * r["frac_cells_in"]
    assert rows[(method, "AF", "QRS")]["net_share_in"] < r["net_share_in"]


# Retired (issue 16): "positive density in the f-wave windows >= 2x for every method". The ground truth does
# not guarantee it: a negative-control model whose only evidence is the f-waves (removing them flips 100 % of
# its AF decisions) still has IG / LRP-eps density ratios below 1 there (benchmarks/results/groundtruth.json).
# What the ground truth guarantees -- the counterfactual drop -- is asserted in tests/test_groundtruth.py.


def test_af_designs_script(tmp_path, monkeypatch):
    """benchmarks/af_designs.py (the data-design search) runs end to end on a tiny configuration, and the
    committed results hold every design it names with the check's rows."""
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    import af_designs

    class Tiny(af_designs.TrainConfig):
        def counts(self):
            return {k: 4 for k in self.kinds}

    monkeypatch.setattr(af_designs, "TrainConfig", lambda **kw: Tiny(**{**kw, "epochs": 1}))
    check = af_designs.check_rows
    monkeypatch.setattr(af_designs, "check_rows", lambda m, **kw: check(m, **{**kw, "n_per_class": 2}))
    out = tmp_path / "af.json"
    monkeypatch.setattr(sys, "argv", ["af_designs.py", "tq_junc30", "--out", str(out)])
    af_designs.main()
    run = json.loads(out.read_text())["runs"]["tq_junc30/0"]
    assert run["design"] == af_designs.DESIGNS["tq_junc30"]
    assert {r["method"] for r in run["rows"]} == set(af_designs.METHODS)

    res = json.loads((root / "benchmarks" / "results" / "af_designs.json").read_text())
    assert res["machine"].startswith("NVIDIA")
    assert {k.split("/")[0] for k in res["runs"]} == set(af_designs.DESIGNS)
    ratios = {m: [r["ratio"] for v in res["runs"].values() for r in v["rows"]
                  if r["method"] == m and r["region"] == "f_wave"] for m in af_designs.METHODS}
    assert len(ratios["integrated_gradients"]) == 29
    assert max(ratios["integrated_gradients"]) < 2 and max(ratios["lrp_epsilon"]) < 2  # what the docstring says
