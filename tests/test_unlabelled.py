"""Unlabelled data sets (MIMIC-IV-ECG style: headers without ``#Dx``, no labels CSV) through run, reduce, report.

Labels are null (not False); reduce puts every record window x target into exactly one of the groups
``unlabelled_predicted_positive`` / ``unlabelled_predicted_negative`` (split at the threshold by
``records.prob_<target>``); the report draws (a) (b) (c) for them. Every reduced number is checked against a
recomputation from the raw shards with NumPy/Polars (no helper of ecgray.reduce).
"""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

ray = pytest.importorskip("ray")

TARGETS = ["AF", "LBBB"]
UPP, UPN = "unlabelled_predicted_positive", "unlabelled_predicted_negative"
KINDS = ["normal"] * 8 + ["AF"] * 6 + ["LBBB"] * 6  # 20 records
SNOMED = {"normal": "426783006", "AF": "164889003", "LBBB": "164909002"}
IMG = re.compile(r'<figure id="[^"]*"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" '
                 r'data-file="([^"]+)"><figcaption>(.*?)</figcaption></figure>', re.S)


def write_record(folder: Path, name: str, kind: str, *, fs: int, seed: int, dx: str | None = None,
                 comments: list[str] | None = None) -> None:
    """A 10 s synthetic record (WFDB, 16 bit); a ``Dx:`` comment only when ``dx`` is given."""
    import wfdb

    from ecgray.synth import LEAD_NAMES, simulate

    sig, _ = simulate(kind, fs=fs, duration=10.0, seed=seed)
    com = list(comments or []) + ([f"Dx: {dx}"] if dx else [])
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(LEAD_NAMES), p_signal=sig.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, comments=com, write_dir=str(folder))


def write_unlabelled(folder: Path, kinds=KINDS, *, prefix: str = "p", seed: int = 0) -> list[str]:
    """MIMIC-IV-ECG style: no ``#Dx``; half the headers have no comment at all, half only age/sex; half at
    500 Hz, half at 400 Hz."""
    names = []
    for i, kind in enumerate(kinds):
        name = f"{prefix}{i:04d}"
        write_record(folder, name, kind, fs=500 if i % 2 == 0 else 400, seed=seed + 101 * i,
                     comments=["Age: 63", "Sex: F"] if i % 4 < 2 else None)
        names.append(name)
    return names


def shard_files(out: Path, table: str) -> list[str]:
    """The committed files of ``table``, from the commit markers (read here, not with ecgray.reduce)."""
    files = []
    for marker in sorted((out / "_commits").glob("shard=*.json")):
        rel = json.loads(marker.read_text())["files"].get(table)
        if rel:
            files.append(str(out / rel))
    return files


def raw(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(shard_files(out, table), hive_partitioning=False)


def expected_groups(records: pl.DataFrame, threshold: float = 0.5) -> pl.DataFrame:
    """(record_key, window, target) -> group, recomputed: labelled as positive/normal/other, unlabelled by prob."""
    rows = []
    for r in records.iter_rows(named=True):
        for t in TARGETS:
            lab = r[f"label_{t}"]
            if lab is None:
                g = UPP if r[f"prob_{t}"] >= threshold else UPN
            else:
                g = "positive" if lab else "normal" if r["label_normal"] else "other"
            rows.append((r["record_key"], r["window"], t, g, float(r[f"prob_{t}"])))
    return pl.DataFrame(rows, schema={"record_key": pl.String, "window": pl.Int32, "target": pl.String,
                                      "group": pl.String, "prob": pl.Float64}, orient="row")


def _non_white_fraction(png: bytes) -> float:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return float((a.min(axis=-1) < 235).mean())


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """Two pipeline outputs (demo model, saliency, AF + LBBB): 20 unlabelled records, and a mixed set of
    6 labelled (SNOMED #Dx) + 6 unlabelled records; both reduced and reported."""
    from ecgray.pipeline import run
    from ecgray.reduce import reduce
    from ecgray.report import report

    root = tmp_path_factory.mktemp("unlabelled")
    unl_in = root / "mimic"
    write_unlabelled(unl_in)
    mixed_in = root / "mixed"
    write_unlabelled(mixed_in, ["normal", "normal", "AF", "AF", "LBBB", "LBBB"], prefix="u", seed=7)
    lab_kinds = ["normal", "normal", "AF", "AF", "LBBB", "LBBB"]
    for i, kind in enumerate(lab_kinds):
        write_record(mixed_in, f"L{i:04d}", kind, fs=500, seed=900 + i, dx=SNOMED[kind])
    out = {}
    for name, inp in (("unlabelled", unl_in), ("mixed", mixed_in)):
        o = root / f"out_{name}"
        s = run(str(inp), str(o), model="demo", methods=["saliency"], targets=TARGETS, shard_size=8, progress=False)
        tables = reduce(str(o), n_boot=200)
        index = report(str(o), dpi=60)
        out[name] = SimpleNamespace(input=inp, out=o, summary=s, tables=tables, index=Path(index))
    out["lab_kinds"] = {f"L{i:04d}": k for i, k in enumerate(lab_kinds)}
    return out


# ----------------------------------------------------------------------------------- records and catalog
def test_records_and_catalog_labels_null(runs):
    from ecgray.io.catalog import catalog

    r = runs["unlabelled"]
    assert (r.summary.records, r.summary.records_ok, r.summary.records_error) == (20, 20, 0)
    rec = raw(r.out, "records")
    assert rec.height == 20 and rec["record_key"].n_unique() == 20
    assert sorted(rec["fs_in"].unique().to_list()) == [400.0, 500.0]
    for c in [f"label_{c}" for c in ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")] + ["label_normal"]:
        assert rec[c].null_count() == 20, c  # unknown, not False
    assert set(rec["label_scheme"]) == {"none"} and all(len(x) == 0 for x in rec["raw_codes"].to_list())
    cat = pl.from_arrow(catalog(str(r.input)))
    assert cat.height == 20 and cat["error"].null_count() == 20
    assert cat["label_AF"].null_count() == 20 and cat["label_normal"].null_count() == 20
    assert set(cat["label_scheme"]) == {"none"}
    # the labelled half of the mixed set keeps its bools
    m = raw(runs["mixed"].out, "records")
    lab = m.filter(pl.col("record_id").str.starts_with("L"))
    assert lab.height == 6 and lab["label_AF"].null_count() == 0 and lab["label_normal"].null_count() == 0
    assert lab["label_AF"].sum() == 2 and lab["label_normal"].sum() == 2 and set(lab["label_scheme"]) == {"snomed"}
    assert m.filter(pl.col("record_id").str.starts_with("u"))["label_AF"].null_count() == 6


def test_records_table_null_labels_without_ray():
    """records_table itself: scheme "none" -> null labels; a labelled record with no positive keeps False."""
    from ecgray.explain import ExplainConfig, records_table
    from ecgray.io.labels import Labels, from_dx

    def rec(key, labels):
        return SimpleNamespace(record_key=key, record_id=key, uri=key, dataset=None, format="wfdb", fs=500.0,
                               n_samples=5000, labels=labels)

    w = SimpleNamespace(window=0, offset=0, flags=())
    cfg = ExplainConfig(model_name="demo", model_id="demo@0")
    tbl = records_table("r", cfg, [(rec("a", Labels.none()), w), (rec("b", from_dx("426783006")), w),
                                   (rec("c", from_dx("713426002")), w)], np.full((3, 6), 0.5, np.float32))
    rows = {r["record_key"]: r for r in tbl.to_pylist()}
    assert rows["a"]["label_AF"] is None and rows["a"]["label_normal"] is None and rows["a"]["label_scheme"] == "none"
    assert rows["b"]["label_AF"] is False and rows["b"]["label_normal"] is True
    assert rows["c"]["label_AF"] is False and rows["c"]["label_normal"] is False  # coded, unmapped: labelled


# ----------------------------------------------------------------------------------------------- reduce
def test_every_record_target_in_one_unlabelled_group(runs):
    r = runs["unlabelled"]
    rec = raw(r.out, "records")
    exp = expected_groups(rec)
    pts = r.tables["class_probability_points"]
    assert set(pts["group"]) <= {UPP, UPN}
    assert pts.height == 20 * len(TARGETS)  # one method
    # exactly one row per (record window, target): no record counted twice, none dropped
    assert pts.group_by("record_key", "window", "target").len()["len"].to_list() == [1] * 40
    j = pts.join(exp, on=["record_key", "window", "target"], how="full", coalesce=True, suffix="_exp")
    assert j.height == 40 and j["group"].null_count() == 0 and j["group_exp"].null_count() == 0
    assert (j["group"] == j["group_exp"]).all()
    # the split is at the threshold, on the records' probability
    assert ((j["prob"] >= 0.5) == (j["group"] == UPP)).all()
    assert pts["outcome"].null_count() == 40 and pts["label"].null_count() == 40
    # the demo model predicts its own synthetic classes: both groups are populated for both targets
    counts = dict(((t, g), n) for t, g, n in pts.group_by("target", "group").len().iter_rows())
    for t in TARGETS:
        assert counts.get((t, UPP), 0) >= 3 and counts.get((t, UPN), 0) >= 3, counts
        assert counts[(t, UPP)] + counts[(t, UPN)] == 20
    # class_probability bins: n over the two groups add up to the records, per target
    cp = r.tables["class_probability"]
    assert set(cp["group"]) <= {UPP, UPN}
    got = dict(((t, g), n) for t, g, n in cp.group_by("target", "group").agg(pl.col("n").sum()).iter_rows())
    assert got == counts
    # bins of predicted positive lie at or above the threshold, predicted negative below
    assert (cp.filter(group=UPP)["bin_high"] > 0.5).all() and (cp.filter(group=UPN)["bin_low"] < 0.5).all()


def test_threshold_moves_the_split(runs):
    from ecgray.reduce import reduce

    r = runs["unlabelled"]
    exp = expected_groups(raw(r.out, "records"), threshold=0.3)
    pts = reduce(str(r.out), threshold=0.3, n_boot=50, write=False)["class_probability_points"]
    j = pts.join(exp, on=["record_key", "window", "target"], how="inner", suffix="_exp")
    assert j.height == 40 and (j["group"] == j["group_exp"]).all()


def _lead_truth(out: Path, groups: pl.DataFrame) -> dict:
    """(method, target, group, lead) -> (n, mean, sd) of relevance_summary.sum, in NumPy."""
    summ = raw(out, "relevance_summary").join(groups, on=["record_key", "window", "target"], how="left")
    assert summ["group"].null_count() == 0
    truth = {}
    for key, part in summ.group_by("method", "target", "group", "lead"):
        x = part["sum"].cast(pl.Float64).to_numpy()
        truth[key] = (x.size, x.mean(), x.std(ddof=1) if x.size > 1 else np.nan)
    return truth


def test_lead_relevance_of_unlabelled_groups(runs):
    r = runs["unlabelled"]
    truth = _lead_truth(r.out, expected_groups(raw(r.out, "records")))
    lr = r.tables["lead_relevance"]
    assert set(lr["group"]) == {UPP, UPN}
    assert lr.height == len(truth) == len(TARGETS) * 2 * 12
    for row in lr.iter_rows(named=True):
        n, mean, sd = truth[(row["method"], row["target"], row["group"], row["lead"])]
        assert row["n"] == n
        assert row["mean_relevance"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert row["sd_relevance"] == pytest.approx(sd, rel=1e-9, abs=1e-12)
    # the shares of each group sum to 1 over the leads
    s = lr.group_by("method", "target", "group").agg(pl.col("share_abs").sum())
    np.testing.assert_allclose(s["share_abs"].to_numpy(), 1.0, rtol=1e-9)


def test_beat_relevance_has_both_groups(runs):
    r = runs["unlabelled"]
    groups = expected_groups(raw(r.out, "records"))
    beats = raw(r.out, "beats").filter(pl.col("signal").is_not_null() & (pl.col("n_beats") > 0))
    brel = raw(r.out, "beats_relevance").filter(pl.col("relevance").is_not_null())
    j = (brel.join(beats.select("record_key", "window", "lead", "offset_start_ms", "offset_step_ms"),
                   on=["record_key", "window", "lead"], how="inner")
         .join(groups, on=["record_key", "window", "target"], how="inner"))
    br = r.tables["beat_relevance"]
    assert set(br["group"]) <= {UPP, UPN}
    for t in TARGETS:
        jt = j.filter(target=t)
        for g in (UPP, UPN):
            jg = jt.filter(group=g)
            assert jg.height, (t, g)  # both groups have beats
            d = br.filter(target=t, group=g)
            assert d.height
            for lead in ("DII", "V1"):
                jl = jg.filter(lead=lead)
                rel = np.stack([np.asarray(v, np.float64) * s for v, s in
                                zip(jl["relevance"].to_list(), jl["relevance_scale"].to_list())])
                off = (np.float64(jl["offset_start_ms"][0]) + np.float64(jl["offset_step_ms"][0])
                       * np.arange(rel.shape[1])).astype(np.float32)
                ok = np.isfinite(rel)
                dl = d.filter(lead=lead).sort("offset_ms")
                assert dl["offset_ms"].to_numpy().tolist() == off.tolist()
                np.testing.assert_array_equal(dl["n"].to_numpy(), ok.sum(0))
                want = np.where(ok, rel, 0).sum(0) / ok.sum(0)
                np.testing.assert_allclose(dl["mean_relevance"].to_numpy(), want, rtol=1e-9, atol=1e-12)
    wr = r.tables["wave_relevance"]
    assert {UPP, UPN} == set(wr.filter(target="AF")["group"])


def test_mixed_set_groups(runs):
    r = runs["mixed"]
    rec = raw(r.out, "records")
    pts = r.tables["class_probability_points"]
    assert pts.height == 12 * len(TARGETS)
    kinds = runs["lab_kinds"]
    for row in pts.iter_rows(named=True):
        rid, t = row["record_id"], row["target"]
        p = rec.filter(record_key=row["record_key"], window=row["window"])[f"prob_{t}"].item()
        if rid.startswith("L"):  # labelled: by the #Dx we wrote
            k = kinds[rid]
            want = "positive" if k == t else "normal" if k == "normal" else "other"
            assert row["label"] is (k == t) and row["outcome"] is not None
        else:
            want = UPP if p >= 0.5 else UPN
            assert row["label"] is None and row["outcome"] is None
        assert row["group"] == want, (rid, t, row["group"], want)
    exp = expected_groups(rec)
    truth = _lead_truth(r.out, exp)
    lr = r.tables["lead_relevance"]
    assert lr.height == len(truth)
    for row in lr.iter_rows(named=True):
        n, mean, _ = truth[(row["method"], row["target"], row["group"], row["lead"])]
        assert row["n"] == n and row["mean_relevance"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert {"positive", "normal", "other"} <= set(lr["group"]) and ({UPP, UPN} & set(lr["group"]))


@pytest.mark.parametrize("which", ["unlabelled", "mixed"])
def test_duckdb_equals_polars_on_unlabelled(runs, which):
    duckdb = pytest.importorskip("duckdb")
    from ecgray.reduce import duckdb_lead_relevance_sql, reduce

    r = runs[which]
    for thr in (0.5, 0.3):
        pp = (r.tables["lead_relevance"] if thr == 0.5 else
              reduce(str(r.out), threshold=thr, n_boot=20, write=False)["lead_relevance"])
        pp = pp.sort("method", "target", "group", "lead")
        dd = pl.from_arrow(duckdb.sql(duckdb_lead_relevance_sql(str(r.out), threshold=thr)).arrow())
        dd = dd.sort("method", "target", "group", "lead")
        assert dd.height == pp.height > 0
        assert dd.select("method", "target", "group", "lead").equals(pp.select("method", "target", "group", "lead"))
        for c in ("mean_relevance", "sd_relevance", "ci_low", "ci_high", "share_abs"):
            np.testing.assert_allclose(dd[c].to_numpy(), pp[c].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=c)
        assert dd["n"].cast(pl.Int64).to_list() == pp["n"].to_list()
        assert dd["rank"].cast(pl.Int32).to_list() == pp["rank"].to_list()


# ----------------------------------------------------------------------------------------------- report
def _figures(index: Path):
    text = index.read_text("utf-8")
    figs = IMG.findall(text)
    for b64, fname, caption in figs:
        png = base64.b64decode(b64, validate=True)
        assert png == (index.parent / fname).read_bytes(), fname  # embedded == written file
        assert len(png) > 10_000 and _non_white_fraction(png) > 0.03, fname
    return text, figs


def test_report_unlabelled(runs):
    r = runs["unlabelled"]
    assert r.index.exists()
    text, figs = _figures(r.index)
    names = [f for _, f, _ in figs]
    pts = r.tables["class_probability_points"]
    with_beats = {t for t in TARGETS if r.tables["beat_relevance"].filter(target=t, group=UPP).height}
    assert with_beats == set(TARGETS)
    assert names == ["fig_01_probability_saliency.png", "fig_02_leads_saliency.png",
                     "fig_03_beats_unlabelled_saliency_LBBB.png", "fig_04_beats_unlabelled_saliency_AF.png"]
    assert sorted(p.name for p in r.index.parent.glob("*.png")) == names
    cap = {f: c for _, f, c in figs}
    assert "unlabelled, predicted the class" in cap["fig_01_probability_saliency.png"]
    assert "unlabelled, not predicted" in cap["fig_01_probability_saliency.png"]
    assert "label unknown" in cap["fig_01_probability_saliency.png"]
    assert "unlabelled records the model predicts the class" in cap["fig_02_leads_saliency.png"]
    assert "labelled with that class" not in cap["fig_02_leads_saliency.png"]  # nothing labelled is drawn
    beats_cap = cap["fig_04_beats_unlabelled_saliency_AF.png"]
    assert "unlabelled records predicted AF" in beats_cap and "unlabelled records not predicted AF" in beats_cap
    assert "normal records" not in beats_cap
    # no note claims something about labelled records; the summary names the groups with their counts
    assert "No beats of records labelled" not in text
    assert "unlabelled_predicted_positive" in text and "unlabelled_predicted_negative" in text
    n_pos = pts.filter(target="AF", group=UPP).height
    assert re.search(rf"<td>saliency</td><td>AF</td><td class=\"num\">0</td><td class=\"num\">0</td>"
                     rf"<td class=\"num\">0</td><td class=\"num\">{n_pos}</td><td class=\"num\">{20 - n_pos}</td>", text)
    assert "unlabelled records predicted the class" in text  # top-leads table of the predicted positives


def test_report_mixed_draws_both(runs):
    r = runs["mixed"]
    text, figs = _figures(r.index)
    names = [f for _, f, _ in figs]
    br = r.tables["beat_relevance"]
    for t in TARGETS:
        lab = f"beats_saliency_{t}.png"
        unl = f"beats_unlabelled_saliency_{t}.png"
        assert any(n.endswith(lab) for n in names) == bool(br.filter(target=t, group="positive").height)
        has_upp = bool(br.filter(target=t, group=UPP).height)
        assert any(n.endswith(unl) for n in names) == has_upp
        if not has_upp:
            assert f"No beats of unlabelled records predicted {t}" in text
    lead_cap = next(c for _, f, c in figs if "leads" in f)
    assert "labelled with that class (blue)" in lead_cap and "purple" in lead_cap
    assert "labelled records)" in text and "unlabelled records predicted the class" in text


def test_label_scheme_none_is_unlabelled_even_when_stored_false():
    """Outputs written before labels became null stored False for records without labels: the reducer
    keys on ``label_scheme == "none"``, so they are grouped as unlabelled, never as ``other``."""
    from ecgray.reduce import record_groups

    recs = pl.DataFrame({"record_key": ["a", "b", "c"], "window": [0, 0, 0], "label_AF": [False, False, True],
                         "label_normal": [False, False, False], "label_scheme": ["none", "none", "snomed"],
                         "prob_AF": [0.9, 0.1, 0.2]})
    g = record_groups(recs, ["AF"]).sort("record_key")
    assert g["group"].to_list() == ["unlabelled_predicted_positive", "unlabelled_predicted_negative", "positive"]
    assert g["label"].to_list() == [None, None, True]
