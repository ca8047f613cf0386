"""ecgray.reduce on a synthetic pipeline output: every reduced number against a plain NumPy re-computation."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgray import reduce as R
from ecgray.leads import STANDARD_LEADS as LEADS
from ecgray.models.ribeiro2020 import CLASSES
from ecgray.schemas.tables import SCHEMA_VERSION, conform, schema
from tests.s3util import moto_server, s3_bucket_with, s3_env  # noqa: F401  (fixtures)

METHODS = ("integrated_gradients", "saliency")
TARGETS = ("AF", "LBBB")
OFFSETS = np.arange(-300.0, 500.0 + 1e-9, 2.5).astype(np.float32)  # 321 offsets, 2.5 ms at 400 Hz
PROV = {"run_id": "run0", "model": "demo", "model_id": "demo@0"}


def sd1(x: np.ndarray) -> np.ndarray:
    """Sample sd over axis 0 (ddof=1); NaN (the tables' null) for fewer than 2 rows."""
    return x.std(0, ddof=1) if len(x) > 1 else np.full(x.shape[1:], np.nan)


def _table(name: str, cols: dict, n: int) -> pa.Table:
    full = {k: pa.array([v] * n) for k, v in PROV.items()}
    full.update(cols)
    if name == "errors":
        full.pop("model"), full.pop("model_id")
    sch = schema(name)
    for f in sch:  # nullable columns the fixture does not care about
        if f.name not in full:
            full[f.name] = pa.nulls(n, f.type)
    return conform(pa.table(full), name)


def _write_shard(root: Path, shard: str, tables: dict[str, pa.Table], commit: bool) -> None:
    files = {}
    for name, tbl in tables.items():
        path = root / name / f"shard={shard}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl, path)
        files[name] = f"{name}/shard={shard}/part-0.parquet"
    if commit:
        (root / "_commits").mkdir(exist_ok=True)
        marker = {"shard": shard, "run_id": "run0", "files": files, "rows": {k: t.num_rows for k, t in tables.items()},
                  "schema_version": SCHEMA_VERSION}
        (root / "_commits" / f"shard={shard}.json").write_text(json.dumps(marker))


def make_output(root: Path, *, seed: int = 0, relevance: bool = True, n_records: int = 30) -> SimpleNamespace:
    """Write a pipeline output under ``root``: 3 committed shards (n_records records + a 2nd window of
    R000), 2 methods x 2 targets x 12 leads, beats, errors, optional full relevance, and one uncommitted
    shard with absurd values. Returns the committed data as dense arrays (the truth)."""
    rng = np.random.default_rng(seed)
    keys = [(f"R{i:03d}", 0) for i in range(n_records)] + [("R000", 1)]
    K, M, T, L, O = len(keys), len(METHODS), len(TARGETS), len(LEADS), len(OFFSETS)
    idx = np.array([int(r[1:]) for r, _ in keys])
    labels = {c: np.zeros(K, bool) for c in CLASSES}
    labels["AF"] = idx % 4 == 0
    labels["LBBB"] = idx % 5 == 1
    labels["SB"] = idx % 7 == 3
    normal = ~(labels["AF"] | labels["LBBB"] | labels["SB"]) & (idx % 3 != 2)
    label_known = {c: np.ones(K, bool) for c in CLASSES}
    label_known["AF"][idx == n_records - 1] = False  # R029: AF label unknown -> an unlabelled group, outcome null
    prob = np.clip(rng.uniform(0, 0.7, (K, len(CLASSES))), 0, 1)
    for j, c in enumerate(CLASSES):
        prob[labels[c], j] += 0.3
    prob[3, CLASSES.index("AF")] = 1.0  # last bin is closed
    prob[5, CLASSES.index("LBBB")] = 0.5  # exactly at the threshold -> predicted
    prob = prob.astype(np.float32)

    # relevance_summary: lead means depend on the lead and the label (so ranks and groups differ)
    lab_t = np.stack([labels[t] for t in TARGETS], 1)  # (K, T)
    mu = (np.arange(L) - 5.5)[None, None, None, :] * 0.2 + 1.5 * lab_t[:, None, :, None]
    s_sum = (mu + rng.normal(0, 1, (K, M, T, L))).astype(np.float32)
    s_abs = (np.abs(s_sum) + rng.uniform(0, 1, (K, M, T, L))).astype(np.float32)
    s_abs[7, 1, 0, :] = 0.0  # a record x method x target with zero total |relevance| -> share skipped
    s_prob = np.stack([prob[:, CLASSES.index(t)] for t in TARGETS], 1)  # (K, T)

    # beats: a bump at the R-peak; relevance + in QRS and - in T for positives, noise elsewhere
    shape = np.exp(-(OFFSETS / 20.0) ** 2) - 0.2 * np.exp(-((OFFSETS - 250) / 60.0) ** 2)
    b_sig = (shape[None, None, :] * (1 + 0.1 * np.arange(L))[None, :, None] + rng.normal(0, 0.05, (K, L, O))).astype(np.float32)
    qrs = (OFFSETS >= -50) & (OFFSETS <= 60)
    tw = (OFFSETS >= 120) & (OFFSETS <= 400)
    b_rel = rng.normal(0, 0.02, (K, M, T, L, O))
    b_rel += (0.5 * lab_t[:, None, :, None, None]) * qrs - (0.3 * lab_t[:, None, :, None, None]) * tw
    b_rel = b_rel.astype(np.float32)
    # stored precision (schemas.tables.BEAT_PRECISION): signal float16; relevance / power-of-two row scale, float16
    b_sig = b_sig.astype(np.float16).astype(np.float32)
    b_scale = np.exp2(np.ceil(np.log2(np.abs(b_rel).max(-1, keepdims=True)))).astype(np.float32)
    b_rel_q = (b_rel / b_scale).astype(np.float16)
    assert (np.abs(b_rel_q.astype(np.float64) * b_scale - b_rel) <= np.maximum(2.0 ** -11 * np.abs(b_rel),
                                                                              2.0 ** -25 * b_scale)).all()
    b_rel = (b_rel_q.astype(np.float64) * b_scale).astype(np.float32)
    beats_ok = np.ones(K, bool)
    beats_ok[11] = False  # no beats found: null signal/relevance, n_beats 0

    def shard_tables(sel: np.ndarray, *, bogus: bool = False) -> dict[str, pa.Table]:
        ks = [keys[i] if not bogus else (f"X{i:03d}", 0) for i in sel]
        n = len(sel)
        rec = {"record_key": pa.array([f"data/{k[0]}" for k in ks]), "record_id": pa.array([k[0] for k in ks]), "window": pa.array([k[1] for k in ks], pa.int32()),
               "uri": pa.array([f"data/{k[0]}" for k in ks]), "window_offset": pa.array(np.zeros(n, np.int64)),
               "label_normal": pa.array(normal[sel] if not bogus else np.zeros(n, bool))}
        for j, c in enumerate(CLASSES):
            rec[f"label_{c}"] = pa.array([bool(v) if kn else None for v, kn in zip(labels[c][sel], label_known[c][sel])],
                                         pa.bool_())
            rec[f"prob_{c}"] = pa.array(prob[sel, j])
        tables = {"records": _table("records", rec, n)}
        # relevance_summary: (rec, method, target, lead)
        rr, mm, tt, ll = [a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(M), np.arange(T), np.arange(L), indexing="ij")]
        gi = sel[rr]
        ssum = s_sum[gi, mm, tt, ll] * (1000 if bogus else 1)
        summ = {"record_key": pa.array([f"data/{ks[r][0]}" for r in rr]), "record_id": pa.array([ks[r][0] for r in rr]), "window": pa.array([ks[r][1] for r in rr], pa.int32()),
                "method": pa.array(np.array(METHODS)[mm]), "target": pa.array(np.array(TARGETS)[tt]),
                "output": pa.array(["logit"] * len(rr)), "lead": pa.array(np.array(LEADS)[ll]),
                "probability": pa.array(s_prob[gi, tt]), "mean": pa.array(ssum / 4096), "mean_pos": pa.array(np.maximum(ssum, 0) / 4096),
                "mean_neg": pa.array(np.minimum(ssum, 0) / 4096), "sum": pa.array(ssum), "abs_sum": pa.array(s_abs[gi, mm, tt, ll]),
                "delta": pa.array(np.zeros(len(rr), np.float32))}
        tables["relevance_summary"] = _table("relevance_summary", summ, len(rr))
        # beats: (rec, lead) -> the average beat; beats_relevance: (rec, method, target, lead) -> its relevance
        def lists(v, ok_rows, dtype):
            flat = pa.array(np.ascontiguousarray(v, dtype).reshape(-1))
            offs = pa.array(np.arange(0, v.shape[0] * v.shape[1] + 1, v.shape[1], dtype=np.int32))
            return pa.ListArray.from_arrays(offs, flat, mask=pa.array(~ok_rows))

        rr, ll = [a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(L), indexing="ij")]
        gi = sel[rr]
        ok = beats_ok[gi]
        tables["beats"] = _table("beats", {
            "record_key": pa.array([f"data/{ks[r][0]}" for r in rr]), "record_id": pa.array([ks[r][0] for r in rr]),
            "window": pa.array([ks[r][1] for r in rr], pa.int32()), "lead": pa.array(np.array(LEADS)[ll]),
            "offset_start_ms": pa.array(np.full(len(rr), OFFSETS[0], np.float32)),
            "offset_step_ms": pa.array(np.full(len(rr), 2.5, np.float32)),
            "signal": lists(b_sig[gi, ll], ok, np.float16),
            "n_beats": pa.array(np.where(ok, 9, 0).astype(np.int32)),
            "quality": pa.array(np.where(ok, "ok", "no_beats"))}, len(rr))
        rr, mm, tt, ll = [a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(M), np.arange(T), np.arange(L),
                                                             indexing="ij")]
        gi = sel[rr]
        ok = beats_ok[gi]
        tables["beats_relevance"] = _table("beats_relevance", {
            "record_key": pa.array([f"data/{ks[r][0]}" for r in rr]), "record_id": pa.array([ks[r][0] for r in rr]),
            "window": pa.array([ks[r][1] for r in rr], pa.int32()),
            "method": pa.array(np.array(METHODS)[mm]), "target": pa.array(np.array(TARGETS)[tt]),
            "output": pa.array(["logit"] * len(rr)), "lead": pa.array(np.array(LEADS)[ll]),
            "relevance": lists(b_rel_q[gi, mm, tt, ll], ok, np.float16),
            "relevance_scale": pa.array(b_scale[gi, mm, tt, ll, 0] * (1000 if bogus else 1))}, len(rr))
        errs = [(f"E{sel[0]:03d}_{i}", "bogus" if bogus else et)
                for i, et in enumerate(["bad_header", "too_short"][: 1 + (sel[0] // 10) % 2])]
        tables["errors"] = _table("errors", {"record_key": pa.array([f"data/{e[0]}" for e in errs]),
                                             "record_id": pa.array([e[0] for e in errs]), "uri": pa.array(["x"] * len(errs)),
                                             "stage": pa.array(["read"] * len(errs)), "error_type": pa.array([e[1] for e in errs]),
                                             "message": pa.array(["synthetic"] * len(errs))}, len(errs))
        if relevance:
            rr, mm, tt, ll = [a.reshape(-1) for a in np.meshgrid(np.arange(n), np.arange(M), np.arange(T), np.arange(L), indexing="ij")]
            t_axis = np.arange(4096) / 400.0
            base = np.sin(2 * np.pi * 1.2 * t_axis)[None, :] * (1 + ll[:, None] % 3)
            vals = (base * (1 + tt[:, None]) + rng.normal(0, 0.3, (len(rr), 4096))).astype(np.float32)
            lst = pa.ListArray.from_arrays(pa.array(np.arange(0, len(rr) * 4096 + 1, 4096, dtype=np.int32)), pa.array(vals.reshape(-1)))
            tables["relevance"] = _table("relevance", {
                "record_key": pa.array([f"data/{ks[r][0]}" for r in rr]), "record_id": pa.array([ks[r][0] for r in rr]), "window": pa.array([ks[r][1] for r in rr], pa.int32()),
                "method": pa.array(np.array(METHODS)[mm]), "target": pa.array(np.array(TARGETS)[tt]),
                "output": pa.array(["logit"] * len(rr)), "lead": pa.array(np.array(LEADS)[ll]),
                "window_offset": pa.array(np.zeros(len(rr), np.int64)), "probability": pa.array(s_prob[sel[rr], tt]),
                "delta": pa.array(np.zeros(len(rr), np.float32)), "relevance": lst}, len(rr))
        return tables

    order = np.arange(K)
    shards = [np.r_[order[:10], K - 1], order[10:20], order[20:K - 1]]  # R000/1 lives with R000..R009
    for s, sel in enumerate(shards):
        _write_shard(root, f"{s:05d}", shard_tables(sel), commit=True)
    _write_shard(root, "00003", shard_tables(np.arange(5), bogus=True), commit=False)  # crashed shard: no marker
    lab_t_known = np.stack([label_known[t] for t in TARGETS], 1)
    group = np.where(lab_t & lab_t_known, "positive", np.where(normal[:, None], "normal", "other"))  # (K, T)
    group = np.where(lab_t_known, group, np.where(s_prob >= 0.5, "unlabelled_predicted_positive",
                                                  "unlabelled_predicted_negative"))
    return SimpleNamespace(keys=keys, labels=labels, lab_t=lab_t, lab_known=lab_t_known, normal=normal, prob=prob,
                           s_sum=s_sum, s_abs=s_abs, s_prob=s_prob, b_sig=b_sig, b_rel=b_rel, beats_ok=beats_ok,
                           group=group, n_errors={"bad_header": 3, "too_short": 1})


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_out")
    truth = make_output(root, relevance=False)
    tables = R.reduce(str(root), threshold=0.5, n_bins=10, n_boot=1000, seed=0)
    return SimpleNamespace(root=root, truth=truth, tables=tables)


def assert_frames_close(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Equal up to float summation order (Polars' parallel aggregations differ in the last ulp between runs)."""
    assert a.schema == b.schema and a.height == b.height
    assert a.select(pl.exclude(pl.Float64)).equals(b.select(pl.exclude(pl.Float64)))
    for c in a.select(pl.col(pl.Float64)).columns:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-12, atol=1e-12, err_msg=c)


def test_only_committed_shards_and_files_written(out):
    assert len(R.committed_files(str(out.root), "records")) == 3
    assert not any("shard=00003" in f for f in R.committed_files(str(out.root), "beats"))
    pts = out.tables["class_probability_points"]
    assert pts.height == len(out.truth.keys) * len(METHODS) * len(TARGETS) == 124
    assert not pts["record_id"].str.starts_with("X").any()
    assert pts.select(pl.col("relevance_sum").abs().max()).item() < 100  # bogus shard (x1000) never read
    for name in R.REDUCED_TABLES:
        on_disk = pl.read_parquet(out.root / "reduced" / f"{name}.parquet")
        assert on_disk.equals(out.tables[name]), name
    assert R.read_reduced(str(out.root))["lead_relevance"].equals(out.tables["lead_relevance"])


def test_points_relevance_probability_and_outcomes(out):
    tr, pts = out.truth, out.tables["class_probability_points"]
    for mi, m in enumerate(METHODS):
        for ti, t in enumerate(TARGETS):
            d = pts.filter(method=m, target=t)
            got = {(r, w): row for r, w, *row in d.select("record_id", "window", "relevance_sum", "probability", "group",
                                                         "predicted", "outcome").iter_rows()}
            for k, key in enumerate(tr.keys):
                rel, p, g, pred, outc = got[key]
                assert rel == pytest.approx(tr.s_sum[k, mi, ti].astype(np.float64).sum(), rel=1e-6)
                assert p == pytest.approx(float(tr.s_prob[k, ti]))
                assert g == tr.group[k, ti]
                assert pred == (tr.s_prob[k, ti] >= 0.5)
                if not tr.lab_known[k, ti]:
                    assert outc is None
                else:
                    lab = tr.lab_t[k, ti]
                    assert outc == {(True, True): "TP", (True, False): "FP", (False, True): "FN", (False, False): "TN"}[(bool(pred), bool(lab))]
    assert set(pts["outcome"].drop_nulls()) == {"TP", "FP", "FN", "TN"}
    assert pts.filter(target="AF", record_id="R029")["outcome"].null_count() == 2
    assert pts.filter(target="LBBB", record_id="R005")["predicted"].all()  # p == threshold


def test_class_probability_bins_means_and_bootstrap(out):
    tr, cp = out.truth, out.tables["class_probability"]
    n_rows = 0
    for mi, m in enumerate(METHODS):
        for ti, t in enumerate(TARGETS):
            rel = tr.s_sum[:, mi, ti].astype(np.float64).sum(-1)
            p = tr.s_prob[:, ti].astype(np.float64)
            b = np.minimum(np.floor(p * 10), 9).astype(int)
            for g in R.GROUPS:
                for k in range(10):
                    sel = (tr.group[:, ti] == g) & (b == k)
                    row = cp.filter(method=m, target=t, group=g, bin=k)
                    if not sel.any():
                        assert row.height == 0
                        continue
                    n_rows += 1
                    r = row.row(0, named=True)
                    assert r["n"] == sel.sum()
                    assert r["bin_low"] == pytest.approx(k / 10) and r["bin_high"] == pytest.approx((k + 1) / 10)
                    assert r["mean_relevance_sum"] == pytest.approx(rel[sel].mean(), rel=1e-9, abs=1e-9)
                    assert r["mean_probability"] == pytest.approx(p[sel].mean())
                    assert r["ci_low"] <= r["mean_relevance_sum"] + 1e-12 <= r["ci_high"] + 2e-12
                    if sel.sum() >= 5:  # bootstrap width ~ normal-approx width
                        sd = rel[sel].std(ddof=1) / np.sqrt(sel.sum())
                        assert 0.5 * 2 * 1.96 * sd < r["ci_high"] - r["ci_low"] < 1.5 * 2 * 1.96 * sd
                    if sel.sum() == 1:
                        assert r["ci_low"] == r["ci_high"] == pytest.approx(rel[sel][0])
    assert cp.height == n_rows
    assert cp["n"].sum() == len(tr.keys) * 4
    assert cp.filter(target="AF", bin=9)["n"].sum() >= 1  # p == 1.0 lands in the last bin


def test_bootstrap_is_seeded():
    v = np.random.default_rng(3).normal(size=40)
    a = R.bootstrap_ci(v, n_boot=500, rng=np.random.default_rng(R.row_seed(0, "m", "AF", "positive", 3)))
    b = R.bootstrap_ci(v, n_boot=500, rng=np.random.default_rng(R.row_seed(0, "m", "AF", "positive", 3)))
    c = R.bootstrap_ci(v, n_boot=500, rng=np.random.default_rng(R.row_seed(1, "m", "AF", "positive", 3)))
    assert a == b and a != c and a[0] < v.mean() < a[1]
    # chunked draws (small chunk) give the same resamples as one block
    big = np.random.default_rng(5).normal(size=9000)
    r1 = R.bootstrap_ci(big, n_boot=1000, rng=7)
    assert r1[0] < big.mean() < r1[1] and abs((r1[1] - r1[0]) - 2 * 1.96 * big.std() / np.sqrt(big.size)) < 0.01


def test_class_probability_deterministic(out):
    again = R.reduce(str(out.root), n_boot=1000, seed=0, write=False)["class_probability"]
    other = R.reduce(str(out.root), n_boot=1000, seed=1, write=False)["class_probability"]
    assert again.equals(out.tables["class_probability"])
    multi = out.tables["class_probability"].filter(pl.col("n") >= 3)
    assert not other.filter(pl.col("n") >= 3)["ci_low"].equals(multi["ci_low"])
    assert other["mean_relevance_sum"].equals(out.tables["class_probability"]["mean_relevance_sum"])


def test_lead_relevance_means_share_rank(out):
    tr, lr = out.truth, out.tables["lead_relevance"]
    n_groups = sum(len(set(tr.group[:, ti])) for ti in range(len(TARGETS)))  # AF: R029's unlabelled group too
    assert n_groups == 7 and lr.height == len(METHODS) * n_groups * len(LEADS)
    for mi, m in enumerate(METHODS):
        for ti, t in enumerate(TARGETS):
            tot = tr.s_abs[:, mi, ti].astype(np.float64).sum(-1)
            for g in R.GROUPS:
                sel = tr.group[:, ti] == g
                if not sel.any():
                    assert lr.filter(method=m, target=t, group=g).height == 0
                    continue
                x = tr.s_sum[sel, mi, ti].astype(np.float64)  # (n, 12)
                mean = x.mean(0)
                sd = sd1(x)  # null for n < 2 (R029 alone in its unlabelled group)
                ok = sel & (tot > 0)
                share = (tr.s_abs[ok, mi, ti].astype(np.float64) / tot[ok, None]).mean(0)
                rank = np.empty(12, int)
                rank[np.argsort(-mean)] = np.arange(1, 13)
                d = lr.filter(method=m, target=t, group=g)
                assert d["lead"].to_list() == list(LEADS)
                np.testing.assert_allclose(d["mean_relevance"].to_numpy(), mean, rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(d["sd_relevance"].to_numpy(), sd, rtol=1e-9)
                np.testing.assert_allclose(d["ci_low"].to_numpy(), mean - 1.959963984540054 * sd / np.sqrt(sel.sum()), rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(d["ci_high"].to_numpy(), mean + 1.959963984540054 * sd / np.sqrt(sel.sum()), rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(d["share_abs"].to_numpy(), share, rtol=1e-9)
                assert (d["n"].to_numpy() == sel.sum()).all()
                assert d["rank"].to_list() == rank.tolist()
    # shares of a group sum to 1 over the leads
    s = lr.group_by("method", "target", "group").agg(pl.col("share_abs").sum())
    np.testing.assert_allclose(s["share_abs"].to_numpy(), 1.0, rtol=1e-9)


def test_beat_and_wave_relevance(out):
    tr, br, wr = out.truth, out.tables["beat_relevance"], out.tables["wave_relevance"]
    n_groups = sum(len(set(tr.group[tr.beats_ok, ti])) for ti in range(len(TARGETS)))
    assert br.height == len(METHODS) * n_groups * len(LEADS) * len(OFFSETS)
    for mi, m in enumerate(METHODS):
        for ti, t in enumerate(TARGETS):
            for g in R.GROUPS:
                sel = (tr.group[:, ti] == g) & tr.beats_ok
                if not sel.any():
                    assert br.filter(method=m, target=t, group=g).height == 0
                    continue
                sig = tr.b_sig[sel].astype(np.float64)  # (n, 12, O)
                rel = tr.b_rel[sel, mi, ti].astype(np.float64)  # (n, 12, O)
                d = br.filter(method=m, target=t, group=g)
                assert (d["n"].to_numpy() == sel.sum()).all()
                np.testing.assert_allclose(d["mean_signal"].to_numpy(), sig.mean(0).reshape(-1), rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(d["mean_relevance"].to_numpy(), rel.mean(0).reshape(-1), rtol=1e-9, atol=1e-12)
                half = 1.959963984540054 * sd1(rel).reshape(-1) / np.sqrt(sel.sum())
                np.testing.assert_allclose(d["ci_high"].to_numpy() - d["mean_relevance"].to_numpy(), half, rtol=1e-6, atol=1e-12)
                assert d["offset_ms"].to_numpy()[:len(OFFSETS)].tolist() == OFFSETS.tolist()
                w = wr.filter(method=m, target=t, group=g)
                assert w["wave"].to_list() == ["P", "QRS", "T"] * 12
                for wi, (wave, (a, b)) in enumerate({"P": (-250, -100), "QRS": (-50, 60), "T": (120, 400)}.items()):
                    win = (OFFSETS >= a) & (OFFSETS <= b)
                    per_rec = rel[:, :, win].mean(-1)  # (n, 12)
                    mean, se = per_rec.mean(0), sd1(per_rec) / np.sqrt(sel.sum())
                    sign = np.where(mean - 1.959963984540054 * se > 0, "+", np.where(mean + 1.959963984540054 * se < 0, "-", "0"))
                    ww = w.filter(wave=wave)
                    np.testing.assert_allclose(ww["mean_relevance"].to_numpy(), mean, rtol=1e-9, atol=1e-12)
                    assert ww["sign"].to_list() == sign.tolist()
                    assert (ww["start_ms"] == a).all() and (ww["end_ms"] == b).all()
    # the planted effect: positives + in QRS and - in T, in every lead
    pos = wr.filter(group="positive")
    assert set(pos.filter(wave="QRS")["sign"]) == {"+"} and set(pos.filter(wave="T")["sign"]) == {"-"}


def test_duckdb_equals_polars(out):
    duckdb = pytest.importorskip("duckdb")
    sql = R.duckdb_lead_relevance_sql(str(out.root))
    assert "shard=00003" not in sql
    dd = pl.from_arrow(duckdb.sql(sql).arrow()).sort("method", "target", "group", "lead")
    pp = out.tables["lead_relevance"].sort("method", "target", "group", "lead")
    assert dd.height == pp.height == 168  # 2 methods x (AF: 4 groups, LBBB: 3) x 12 leads
    assert dd.select("method", "target", "group", "lead").equals(pp.select("method", "target", "group", "lead"))
    for c in ("mean_relevance", "sd_relevance", "ci_low", "ci_high", "share_abs"):
        np.testing.assert_allclose(dd[c].to_numpy(), pp[c].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=c)
    assert dd["n"].cast(pl.Int64).to_list() == pp["n"].to_list()
    assert dd["rank"].cast(pl.Int32).to_list() == pp["rank"].to_list()


def test_no_committed_output_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no committed"):
        R.reduce(str(tmp_path))


def test_reduce_on_s3_matches_local(out, s3_bucket_with):
    files = {str(p.relative_to(out.root)): p for p in out.root.rglob("*")
             if p.is_file() and not str(p.relative_to(out.root)).startswith("reduced")}
    root = s3_bucket_with({f"run/{k}": v for k, v in files.items()})
    uri = root + "/run"
    assert len(R.committed_files(uri, "beats")) == 3
    got = R.reduce(uri, n_boot=1000, seed=0)
    for name in R.REDUCED_TABLES:
        assert_frames_close(got[name], out.tables[name])
    back = R.read_reduced(uri)
    assert back is not None and back["wave_relevance"].equals(got["wave_relevance"])
    # ecgray reduce's streamed points on S3: written while reading, moved into place
    streamed = R.reduce(uri, n_boot=1000, seed=0, stream_points=True)
    keys = ["method", "target", "record_id", "record_key", "window"]
    assert streamed["class_probability_points"].collect().sort(keys).equals(
        out.tables["class_probability_points"].sort(keys))
    assert R.read_reduced(uri)["class_probability_points"].height == out.tables["class_probability_points"].height
    # the report writes to S3 too (reusing the reduced tables; no relevance table here)
    from ecgray.io import open_fs
    from ecgray.report import report
    from tests.test_report import IMG

    index = report(uri, methods=["saliency"], targets=["LBBB"], dpi=60)
    assert index == uri + "/report/index.html"
    fs, path = open_fs(uri)
    text = fs.cat(path + "/report/index.html").decode()
    figs = IMG.findall(text)
    assert len(figs) == 3 and "No per-sample" in text
    for b64, fname, _ in figs:
        assert fs.cat(f"{path}/report/{fname}") == base64.b64decode(b64)


def test_old_schema_refused(tmp_path):
    root = tmp_path / "old"
    make_output(root, relevance=False)
    marker = root / "_commits" / "shard=00001.json"
    m = json.loads(marker.read_text())
    m["schema_version"] = 2
    marker.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"shard 00001 was written with output schema version 2.*--overwrite"):
        R.reduce(str(root), write=False)


def test_schema_3_output_is_read_as_it_is(tmp_path):
    """An output of schema 3 (before the classes followed the model; the Ribeiro classes, no model_spec in the
    manifest) reduces to the same tables as the same output marked schema 4."""
    new, old = tmp_path / "v4", tmp_path / "v3"
    make_output(new, relevance=False)
    make_output(old, relevance=False)
    for marker in (old / "_commits").glob("*.json"):
        m = json.loads(marker.read_text())
        m["schema_version"] = 3
        marker.write_text(json.dumps(m))
    a, b = R.reduce(str(new), write=False), R.reduce(str(old), write=False)
    for name in R.REDUCED_TABLES:
        assert a[name].equals(b[name]), name
    assert a["lead_relevance"].height > 0


def test_record_in_two_shards_refused(tmp_path):
    """A record whose rows sit in two committed shards would be counted twice: refused, never summed."""
    root = tmp_path / "dup"
    make_output(root, relevance=False)
    for name in ("records", "relevance_summary", "beats", "beats_relevance", "errors"):
        src = root / name / "shard=00000" / "part-0.parquet"
        dst = root / name / "shard=00009" / "part-0.parquet"
        dst.parent.mkdir(parents=True)
        dst.write_bytes(src.read_bytes())
    m = json.loads((root / "_commits" / "shard=00000.json").read_text())
    m["files"] = {k: v.replace("shard=00000", "shard=00009") for k, v in m["files"].items()}
    (root / "_commits" / "shard=00009.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="more than one committed shard"):
        R.reduce(str(root), write=False)
    with pytest.raises(ValueError, match="more than one committed shard"):
        R.reduce(str(root), stream_points=True)
    assert not list((root / "reduced").glob("*"))  # the streamed points file was discarded, nothing else written


def test_reduce_on_ray_equals_local(out, ray_local):
    """The partials computed in Ray tasks (2 shards per task) merge to the same tables."""
    got = R.reduce(str(out.root), n_boot=1000, seed=0, write=False, use_ray=True, shards_per_task=2)
    for name in R.REDUCED_TABLES:
        assert_frames_close(got[name], out.tables[name])


def test_merge_moments_equals_one_pass():
    """Chan's pairwise merge of (n, mean, m2) over uneven chunks equals the moments of all the values."""
    rng = np.random.default_rng(4)
    x = rng.normal(1e3, 1.0, 1000)  # a large mean over a small spread: where sum-of-squares formulas lose digits
    cuts = np.sort(rng.choice(np.arange(1, 1000), 20, replace=False))
    parts = [c for c in np.split(x, cuts) if c.size]
    df = pl.DataFrame({"k": ["a"] * len(parts), "n": [c.size for c in parts], "mean": [c.mean() for c in parts],
                       "m2": [((c - c.mean()) ** 2).sum() for c in parts]})
    m = R.merge_moments(df, ["k"]).row(0, named=True)
    assert m["n"] == 1000
    assert m["mean"] == pytest.approx(x.mean(), rel=1e-14)
    assert m["m2"] / 999 == pytest.approx(x.var(ddof=1), rel=1e-10)


def test_streamed_points_equal_in_memory(out, tmp_path):
    """stream_points=True (ecgray reduce): the points table written shard by shard holds the same rows, and
    every other table is the same."""
    dest = tmp_path / "red"
    got = R.reduce(str(out.root), n_boot=1000, seed=0, dest=str(dest), stream_points=True)
    assert isinstance(got["class_probability_points"], pl.LazyFrame)
    pts = pl.read_parquet(dest / "class_probability_points.parquet")
    keys = ["method", "target", "record_id", "record_key", "window"]
    assert pts.sort(keys).equals(out.tables["class_probability_points"].sort(keys))
    assert got["class_probability_points"].collect().equals(pts)
    for name in R.REDUCED_TABLES:
        if name != "class_probability_points":
            assert_frames_close(got[name], out.tables[name])
            assert pl.read_parquet(dest / f"{name}.parquet").equals(got[name])
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.parquet" for n in R.REDUCED_TABLES)
