"""The measures of ``ecgray evaluate`` against independent references: SciPy's Spearman, hand-made
top-k sets, explicit block loops, a linear model whose deletion curves are known in closed form, and the
cascading randomisation's bookkeeping on the Ribeiro ResNet."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from ecgray.evaluate.core import EvaluateConfig, evaluate_batch, record_targets
from ecgray.evaluate.faithfulness import DEFAULT_FRACTIONS, auc, faithfulness, order_seed
from ecgray.evaluate.perturb import block_samples, block_scores, cell_mask, replace
from ecgray.evaluate.randomisation import cascade, cascade_layers, reinitialise
from ecgray.evaluate.sample import stratified_sample, strata
from ecgray.evaluate.similarity import similarity, spearman, topk_overlap
from ecgray.models.spec import ModelSpec

SPEC = ModelSpec(fs=100.0, n_samples=200, leads=("I", "II", "V1"), classes=("A", "B", "C"))


class LinearECG(nn.Module):
    """``logit_c = sum(W_c * x) + b_c``: integrated gradients from a zero baseline is exactly ``W_t * x``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(3, 3, 200, generator=g))
        self.b = nn.Parameter(torch.tensor([0.5, -0.25, 0.0]))
        self.spec = SPEC
        self.classes = SPEC.classes

    def forward(self, x):
        return torch.einsum("nls,cls->nc", x, self.w) + self.b


def _x(n=1, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 200)).astype(np.float32)


# ------------------------------------------------------------------------------------------ similarity
def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 50)).astype(float)  # many ties
    b = a + rng.standard_normal((3, 50))
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    s = similarity(a - 2, b)
    assert s["spearman_abs"] == pytest.approx(spearmanr(np.abs(a - 2).ravel(), np.abs(b).ravel()).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(10), np.arange(10.0)))  # a constant map has no ranks: NaN, never 0


def test_topk_overlap_by_hand():
    a = np.array([9.0, -8, 7, 0, 0, 0, 0, 0, 0, 0.1])  # top 3 of |a|: cells 0, 1, 2
    b = np.array([0.0, 8, -7, 9, 0, 0, 0, 0, 0, 0])    # top 3 of |b|: cells 3, 1, 2
    assert topk_overlap(a, b, frac=0.3) == pytest.approx(2 / 3)
    assert topk_overlap(a, a, frac=0.3) == 1.0


# ------------------------------------------------------------------------------------------- perturb
def test_blocks_against_a_loop():
    rng = np.random.default_rng(0)
    rel = rng.standard_normal((3, 203))  # 203 samples: the last block of each lead is shorter
    block = block_samples(40, 100)  # 4 samples
    assert block == 4
    s = block_scores(rel, block)
    assert s.shape == (3, 51)
    for lead in range(3):
        for k in range(51):
            assert s[lead, k] == pytest.approx(rel[lead, 4 * k:4 * k + 4].sum(), abs=1e-12)
    m = cell_mask([0, 51 + 50], (3, 203), block)  # lead 0 block 0; lead 1 last (short) block
    assert m.sum() == 4 + 3 and m[0, :4].all() and m[1, 200:].all()


def test_replacements():
    t = np.arange(100, dtype=np.float32)
    x = np.stack([2 * t + 1, np.sin(t / 5), np.zeros(100)]).astype(np.float32)
    gone = np.zeros_like(x, dtype=bool)
    gone[:, 10:30] = True
    gone[0, 90:] = True  # an edge: the nearest kept sample
    z = replace(x, gone, "zero")
    assert (z[gone] == 0).all() and (z[~gone] == x[~gone]).all()
    lin = replace(x, gone, "linear")
    assert np.allclose(lin[0, 10:30], x[0, 10:30]) and np.allclose(lin[0, 90:], x[0, 89])  # a line is kept exactly
    assert np.allclose(lin[1, 10:30], np.interp(np.arange(10, 30), [9, 30], [x[1, 9], x[1, 30]]), atol=1e-6)
    rng = np.random.default_rng(0)
    big = np.zeros((1, 20000), bool)
    big[0, 1000:19000] = True
    sig = np.random.default_rng(1).standard_normal((1, 20000)).astype(np.float32) * 3
    road = replace(sig, big, "noisy_linear", rng=rng, noise=0.1) - replace(sig, big, "linear")
    assert road[0, 1000:19000].std() == pytest.approx(0.1 * sig[0, ~big[0]].std(), rel=0.05)
    with pytest.raises(ValueError, match="replacement must be"):
        replace(x, gone, "mean")


# -------------------------------------------------------------------------------------- faithfulness
def test_deletion_curves_of_a_linear_model_in_closed_form():
    """For f = W.x + b, IG (zero baseline) R = W_t * x, and removing a set S with zeros gives
    f(x) - sum_S R exactly: the MoRF curve is the logit minus the cumulative sorted block sums, and the
    faithfulness correlation is 1."""
    model = LinearECG().eval()
    x = _x()[0]
    t = 1
    rel = (model.w[t].detach().numpy() * x).astype(np.float64)
    block = block_samples(40, SPEC.fs)
    f = faithfulness(model, x, rel, t, block=block, rng=order_seed(0, "r"), replacement="zero")
    z0 = float(model(torch.from_numpy(x[None]))[0, t].detach())
    scores = np.sort(block_scores(rel, block).ravel())[::-1]
    nb = scores.size
    expect = [z0 - scores[:int(round(fr * nb))].sum() for fr in DEFAULT_FRACTIONS]
    np.testing.assert_allclose(f.logits["morf"], expect, rtol=1e-4, atol=1e-3)
    expect_lerf = [z0 - scores[::-1][:int(round(fr * nb))].sum() for fr in DEFAULT_FRACTIONS]
    np.testing.assert_allclose(f.logits["lerf"], expect_lerf, rtol=1e-4, atol=1e-3)
    assert f.correlation == pytest.approx(1.0, abs=1e-5)
    # MoRF removes the largest sums first: never above random, and LeRF never below
    assert (f.logits["morf"] <= f.logits["random"] + 1e-3).all() and (f.logits["lerf"] >= f.logits["random"] - 1e-3).all()
    assert f.auc("random") - f.auc("morf") > 0
    assert auc([0, 0.5, 1], [2, 1, 0]) == pytest.approx(1.0)
    # the same seed gives the same random order and subsets; another record key, another order
    g = faithfulness(model, x, rel, t, block=block, rng=order_seed(0, "r"), replacement="zero")
    np.testing.assert_array_equal(f.logits["random"], g.logits["random"])
    h = faithfulness(model, x, rel, t, block=block, rng=order_seed(0, "other"), replacement="zero")
    assert not np.allclose(f.logits["random"], h.logits["random"])


def test_anti_faithful_map_is_caught():
    """A map with the sign flipped orders blocks backwards: MoRF then raises the logit above random."""
    model = LinearECG().eval()
    x = _x()[0]
    rel = -(model.w[0].detach().numpy() * x)
    f = faithfulness(model, x, rel, 0, block=4, rng=order_seed(0, "r"))
    assert f.auc("random") - f.auc("morf") < 0 and f.correlation == pytest.approx(-1.0, abs=1e-5)


# ------------------------------------------------------------------------------------- randomisation
def test_cascade_layers_and_cumulative_reinitialisation():
    from tests.conftest import small_model

    net = small_model(0, width=0.125).eval()  # BatchNorm statistics away from their defaults
    layers = cascade_layers(net)
    assert layers == ["dense", "units.3", "units.2", "units.1", "units.0", "bn1", "conv1"]
    orig = copy.deepcopy(net.state_dict())
    seen = []
    for step, layer, m in cascade(net, seed=3):
        sd = m.state_dict()
        changed = {k.split(".")[0] if not k.startswith("units") else ".".join(k.split(".")[:2])
                   for k in sd if sd[k].dtype.is_floating_point and not torch.equal(sd[k], orig[k])}
        seen.append((step, layer, changed))
        assert changed == set(layers[:step + 1]), (step, changed)
    assert [s[1] for s in seen] == layers
    assert all(torch.equal(net.state_dict()[k], v) for k, v in orig.items())  # the model itself is untouched
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    reinitialise(a.units[1], 7)
    reinitialise(b.units[1], 7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # seeded


def test_cascade_layers_look_inside_a_wrapper():
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.Conv1d(4, 2, 3))

    assert cascade_layers(Wrap()) == ["net.2", "net.0"]


# ---------------------------------------------------------------------------------------- evaluate_batch
def test_evaluate_batch_tables_on_the_linear_model():
    model = LinearECG().eval()
    x = _x(2)
    rows = [{"record_key": f"k{i}", "record_id": "same name", "window": 0, "prob_A": 0.9, "prob_B": 0.7 if i else 0.1,
             "prob_C": 0.2, "label_A": None, "label_B": None, "label_C": True} for i in range(2)]
    cfg = EvaluateConfig(methods=("ig", "saliency"), params={"integrated_gradients": {"n_steps": 8}},
                         n_subsets=8)
    tabs = evaluate_batch(model, x, rows, cfg, evaluation_id="e")
    f = tabs["faithfulness"].to_pylist()
    # targets: predicted (A; B for record 1) or labelled (C)
    assert record_targets(rows[0], SPEC.classes, "predicted") == ("A", "C")
    assert {(r["record_key"], r["method"], r["target"]) for r in f} == {
        (k, m, t) for m in ("integrated_gradients", "saliency") for k, ts in (("k0", "AC"), ("k1", "ABC")) for t in ts}
    assert tabs["deletion"].num_rows == len(f) * 3 * len(DEFAULT_FRACTIONS)
    ig = [r for r in f if r["method"] == "integrated_gradients"]
    assert all(r["faithfulness_correlation"] == pytest.approx(1.0, abs=1e-4) for r in ig)  # IG is exact on a line
    assert all(r["label"] is (True if r["target"] == "C" else None) for r in f)
    # random logit: the other class's map, compared as the similarity module does
    rl = [r for r in tabs["randomisation"].to_pylist() if r["test"] == "random_logit"
          and r["method"] == "integrated_gradients" and r["record_key"] == "k0" and r["target"] == "A"][0]
    o = SPEC.classes.index(rl["other_target"])
    assert rl["other_target"] != "A"
    xa = x[0].astype(np.float64)
    w = model.w.detach().numpy()
    assert rl["spearman_signed"] == pytest.approx(spearman(w[0] * xa, w[o] * xa), abs=1e-3)
    # agreement: one row per record x target x method pair, with the pair's similarity
    ag = tabs["agreement"].to_pylist()
    assert len(ag) == 5 and {(r["a"], r["b"]) for r in ag} == {("integrated_gradients", "saliency")}
    # MPRT: the linear model is one unit (its parameters are its own): one step, the whole model at random
    casc = [r for r in tabs["randomisation"].to_pylist() if r["test"] == "cascading"]
    assert len(casc) == len(f) and {r["layer"] for r in casc} == {"(whole model)"} and {r["step"] for r in casc} == {0}
    with pytest.raises(ValueError, match="unknown test"):
        EvaluateConfig(tests=("faithfulness", "vibes"))


# ------------------------------------------------------------------------------------------------ sample
def test_stratified_sample():
    rows = []
    for i in range(40):
        c = ["A", "B", "C", None][i % 4]
        rows.append({"record_key": f"r{i}", "window": 0, "label_normal": c is None,
                     **{f"label_{k}": (k == c) for k in "ABC"}, **{f"prob_{k}": 0.0 for k in "ABC"}})
    rows.append({"record_key": "u", "window": 0, "label_normal": None, "label_A": None, "label_B": None,
                 "label_C": None, "prob_A": 0.8, "prob_B": 0.1, "prob_C": 0.6})
    assert strata(rows[-1], "ABC") == ["A", "C"]
    s = stratified_sample(rows, "ABC", 3, seed=1)
    counts = {c: sum(c in strata(r, "ABC") for r in s) for c in ("A", "B", "C", "normal")}
    assert counts["B"] == 3 and counts["normal"] == 3 and 3 <= counts["A"] <= 4  # "u" may join A and C
    assert s == sorted(s, key=rows.index)  # table order
    assert stratified_sample(rows[::-1], "ABC", 3, seed=1) == sorted(s, key=rows[::-1].index)  # order-free
    bigger = stratified_sample(rows, "ABC", 5, seed=1)
    assert {r["record_key"] for r in s} <= {r["record_key"] for r in bigger}  # growing N only adds
    assert stratified_sample(rows, "ABC", 3, seed=2) != s
    assert stratified_sample(rows, "ABC", None) == rows


def test_wave_segments_follow_the_synthetic_truth():
    """``segments="waves"``: the samples of each planted P / QRS / T (interior beats) mostly fall in a segment of
    that wave (measured 0.78-1.0 per wave and class), every segment lies in one lead, and ids are dense."""
    from ecgray.evaluate.perturb import segment_mask, wave_labels
    from ecgray.synth import simulate

    for kind in ("normal", "1dAVb", "LBBB", "AF"):
        sig, truth = simulate(kind, fs=400, seed=3, duration=10.24)
        labels, names = wave_labels(sig.T, 400)
        assert labels.shape == (12, 4096) and len(names) == labels.max() + 1
        per_lead = (labels.max() + 1) // 12
        assert (labels // per_lead == np.arange(12)[:, None]).all()  # a segment never crosses leads
        ids = labels[1]
        for f in ("P", "QRS", "T"):
            spans = [t for t in truth if t["feature"] == f and t["lead"] == "all" and 400 < t["start"] < 3600]
            if kind == "AF" and f == "P":
                assert not spans and "P" not in names
                continue
            inside = [names[i] == f for t in spans for i in ids[t["start"]:t["stop"]]]
            assert np.mean(inside) >= 0.75, (kind, f, np.mean(inside))
        m = segment_mask([0, per_lead + 1], labels)
        assert m.sum() == (labels == 0).sum() + (labels == per_lead + 1).sum()


def test_wave_segment_deletion_of_a_linear_model():
    """The closed form of the linear model holds for any segmentation: MoRF over wave segments removes the
    largest segment sums first."""
    from ecgray.evaluate.perturb import segment_scores, wave_labels
    from ecgray.synth import simulate

    sig, _ = simulate("normal", fs=100, seed=1, duration=2.0)
    x = sig.T[:3].astype(np.float32)  # I, II, III at 100 Hz x 200 samples: the linear model's input
    got = wave_labels(x, 100)
    assert got is not None
    labels, _ = got
    model = LinearECG().eval()
    rel = model.w[2].detach().numpy().astype(np.float64) * x
    f = faithfulness(model, x, rel, 2, labels=labels, rng=order_seed(0, "r"))
    z0 = float(model(torch.from_numpy(x[None]))[0, 2].detach())
    sc = np.sort(segment_scores(rel, labels))[::-1]
    expect = [z0 - sc[:int(round(fr * sc.size))].sum() for fr in DEFAULT_FRACTIONS]
    np.testing.assert_allclose(f.logits["morf"], expect, rtol=1e-4, atol=1e-3)
    assert f.n_segments == sc.size


def test_verdict_rules():
    import polars as pl

    from ecgray.evaluate.summary import verdicts

    f = pl.DataFrame({"method": ["a", "b", "c", "d"], "target": ["X"] * 4, "replacement": ["zero"] * 4,
                      "segments": ["blocks"] * 4, "n": [10, 10, 10, 2], "random_minus_morf": [2.0, -1.0, 0.5, 3.0],
                      "ci_low": [1.0, -2.0, -0.5, 2.0], "ci_high": [3.0, -0.1, 1.5, 4.0],
                      "frac_morf_faster": [1.0, 0.0, 0.6, 1.0], "lerf_minus_morf": [1.0] * 4,
                      "faithfulness_correlation": [0.5] * 4})
    r = pl.DataFrame({"method": ["a", "a", "b", "c", "d"], "target": ["X"] * 5,
                      "test": ["cascading", "random_logit", "cascading", "cascading", "cascading"],
                      "step": [6, 0, 6, 6, 6], "spearman_abs": [0.1, 0.2, 0.5, 0.1, 0.1],
                      "spearman_signed": [0.05, 0.2, 0.0, 0.1, 0.1]})
    v = {row["method"]: row for row in verdicts({"evaluation_faithfulness": f,
                                                  "evaluation_randomisation": r}).iter_rows(named=True)}
    assert (v["a"]["faithful"], v["a"]["randomisation"], v["a"]["class_sensitive"], v["a"]["trust"]) == \
        ("yes", "passes", "passes", "yes")
    assert (v["b"]["faithful"], v["b"]["randomisation"], v["b"]["trust"]) == ("no", "sign only", "no")
    assert (v["c"]["faithful"], v["c"]["trust"]) == ("undecided", "partly")
    assert (v["d"]["faithful"], v["d"]["trust"]) == ("too few records", "too few records")
    assert v["a"]["verdict"].startswith("a × X: trust yes — random − MoRF deletion area +2.00 logit [+1.00, +3.00]")
