"""The Ray Data pipeline on local disk: exact row counts, exactly-once, readers, parity with explain(), resume."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import small_model

ray = pytest.importorskip("ray")

N_GOOD = 20
TARGETS = ["AF", "LBBB"]
KEYS = {
    "records": ["record_key", "window"],
    "relevance_summary": ["record_key", "window", "method", "target", "lead"],
    "beats": ["record_key", "window", "lead"],
    "beats_relevance": ["record_key", "window", "method", "target", "lead"],
    "errors": ["record_key"],
}


def beats_available() -> bool:
    return (Path(__file__).resolve().parents[1] / "ecgray" / "beats.py").exists()


def make_input(folder: Path, cpsc_dir: Path, n: int, bad: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        for ext in ("hea", "mat"):
            shutil.copy(cpsc_dir / f"A{i:04d}.{ext}", folder / f"A{i:04d}.{ext}")
    if bad:  # a header whose signal file is missing: a catalog error (stage read)
        text = (cpsc_dir / "A0001.hea").read_text().replace("A0001", "A0005x")
        (folder / "A0005x.hea").write_text(text)
    return folder


def model_file(folder: Path) -> str:
    from ecgray.models import save_model

    return str(save_model(small_model(), folder / "tiny.safetensors"))


def sorted_table(tbl: pa.Table, name: str) -> pa.Table:
    tbl = tbl.drop_columns([c for c in ("run_id",) if c in tbl.column_names])
    return tbl.sort_by([(k, "ascending") for k in KEYS[name]])


def assert_tables_close(a: pa.Table, b: pa.Table, name: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Equal keys and non-float columns; float columns to ``rtol``/``atol`` (CPU backward is not bitwise
    deterministic across processes)."""
    a, b = sorted_table(a, name), sorted_table(b, name)
    assert a.schema.equals(b.schema), name
    assert a.num_rows == b.num_rows, (name, a.num_rows, b.num_rows)
    for c in a.column_names:
        t = a.schema.field(c).type
        if pa.types.is_floating(t):
            np.testing.assert_allclose(a.column(c).to_numpy(), b.column(c).to_numpy(), rtol=rtol, atol=atol,
                                       err_msg=f"{name}.{c}")
        elif pa.types.is_list(t) and pa.types.is_floating(t.value_type):  # float16 beat lists: compare values
            assert a.column(c).is_null().equals(b.column(c).is_null()), f"{name}.{c} nulls"
            va, vb = (_list_values(x, c) for x in (a, b))
            assert va.shape == vb.shape, f"{name}.{c} lengths"
            tol = 2.0 ** -10 if t.value_type == pa.float16() else rtol
            np.testing.assert_allclose(va, vb, rtol=tol, atol=atol + tol * np.abs(va).max(initial=0), err_msg=f"{name}.{c}")
        elif c != "relevance_scale":  # compared through the values it scales
            assert a.column(c).equals(b.column(c)), f"{name}.{c}"


def _list_values(tbl: pa.Table, col: str) -> np.ndarray:
    """Flat float64 values of a list column (times ``relevance_scale`` when the table has one)."""
    import pyarrow.compute as pc

    lst = tbl.column(col).combine_chunks()
    vals = np.asarray(pc.list_flatten(lst).to_numpy(zero_copy_only=False), np.float64)
    if col == "relevance" and "relevance_scale" in tbl.column_names:
        lens = pc.list_value_length(lst).fill_null(0).to_numpy()
        vals = vals * np.repeat(tbl.column("relevance_scale").fill_null(1.0).to_numpy(), lens)
    return vals


def assert_no_duplicates(tbl: pa.Table, keys: list[str]) -> None:
    n = tbl.group_by(keys).aggregate([]).num_rows
    assert n == tbl.num_rows, f"{tbl.num_rows - n} duplicate keys on {keys}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cpsc_dir):
    root = tmp_path_factory.mktemp("pipe")
    inp = make_input(root / "in", cpsc_dir, N_GOOD)
    return {"root": root, "input": inp, "model": model_file(root)}


@pytest.fixture(scope="module")
def first_run(ray_local, setup):
    from ecgray.pipeline import run

    out = setup["root"] / "out"
    summary = run(str(setup["input"]), str(out), model=setup["model"], methods=["saliency"], targets=TARGETS,
                  shard_size=8, progress=False)
    return out, summary


def test_row_counts_exactly_once(first_run):
    from ecgray.pipeline import read_table

    out, s = first_run
    assert s.records == N_GOOD + 1 and s.records_ok == N_GOOD and s.records_error == 1
    assert s.shards == 3 and s.shards_written == 3 and s.shards_skipped == 0
    recs, summ, errs = (read_table(out, n) for n in ("records", "relevance_summary", "errors"))
    assert recs.num_rows == N_GOOD  # policy "first": one window per record
    assert summ.num_rows == N_GOOD * len(TARGETS) * 1 * 12
    assert errs.num_rows == 1 and errs.column("record_id").to_pylist() == ["A0005x"]
    assert errs.column("stage").to_pylist() == ["read"]
    for name, tbl in (("records", recs), ("relevance_summary", summ), ("errors", errs)):
        assert_no_duplicates(tbl, KEYS[name])
    ids = set(recs.column("record_id").to_pylist()) | set(errs.column("record_id").to_pylist())
    expected = {f"A{i:04d}" for i in range(1, N_GOOD + 1)} | {"A0005x"}
    assert ids == expected
    assert not set(recs.column("record_id").to_pylist()) & set(errs.column("record_id").to_pylist())
    assert set(summ.column("target").to_pylist()) == set(TARGETS)
    # layout: hive shards, commit markers, no staging left
    assert sorted(p.name for p in (out / "_commits").iterdir()) == [f"shard={k:05d}.json" for k in range(3)]
    assert not (out / "_tmp").exists()
    assert sorted(p.name for p in (out / "relevance_summary").iterdir()) == [f"shard={k:05d}" for k in range(3)]


def test_beats_table(first_run):
    if not beats_available():
        pytest.skip("ecgray.beats not there yet")
    from ecgray.pipeline import read_table

    out, s = first_run
    beats, brel = read_table(out, "beats"), read_table(out, "beats_relevance")
    assert beats.num_rows == N_GOOD * 12  # the average beat once per record window x lead
    assert brel.num_rows == N_GOOD * 1 * len(TARGETS) * 12  # its relevance per window x method x target x lead
    assert s.rows["beats"] == beats.num_rows
    assert_no_duplicates(beats, KEYS["beats"])
    assert_no_duplicates(brel, KEYS["beats_relevance"])
    assert set(pc.unique(beats.column("quality")).to_pylist()) <= {"ok", "fallback_lead", "few_beats", "no_beats"}
    one = beats.filter(pc.and_(pc.equal(beats["record_id"], "A0001"), pc.equal(beats["lead"], "DII"))).to_pylist()
    assert len(one) == 1 and len(one[0]["signal"]) == 320
    assert one[0]["offset_start_ms"] == -300 and one[0]["offset_step_ms"] == 2.5
    rel = brel.filter(pc.and_(pc.equal(brel["record_id"], "A0001"), pc.equal(brel["lead"], "DII"))).to_pylist()
    assert len(rel) == len(TARGETS) and all(len(r["relevance"]) == 320 for r in rel)
    # stored scaled to [-1, 1] with a power-of-two scale (schemas.tables.BEAT_PRECISION)
    for r in rel:
        v = np.asarray(r["relevance"], np.float64)
        assert np.abs(v).max() <= 1 and np.abs(v).max() > 0.5 and np.log2(r["relevance_scale"]).is_integer()


def test_polars_and_duckdb_read_output(first_run):
    import duckdb
    import polars as pl

    out, _ = first_run
    n = duckdb.sql(f"select count(*) from read_parquet('{out}/relevance_summary/**/*.parquet', "
                   "hive_partitioning=true)").fetchall()[0][0]
    assert n == N_GOOD * len(TARGETS) * 12
    df = pl.scan_parquet(f"{out}/records/**/*.parquet", hive_partitioning=True).collect()
    assert df.height == N_GOOD and "prob_AF" in df.columns and df["record_id"].n_unique() == N_GOOD
    errs = pl.scan_parquet(f"{out}/errors/**/*.parquet", hive_partitioning=True).collect()
    assert errs.height == 1
    if beats_available():
        # the README's long forms of the average beat: one row per offset (Polars explode, DuckDB unnest)
        rel = pl.scan_parquet(f"{out}/beats_relevance/**/*.parquet", hive_partitioning=True)
        sig = pl.scan_parquet(f"{out}/beats/**/*.parquet", hive_partitioning=True)
        long = (rel.join(sig, on=["record_key", "window", "lead"])
                .with_columns(pl.int_ranges(0, pl.col("relevance").list.len()).alias("i"))
                .explode("relevance", "signal", "i")
                .with_columns((pl.col("offset_start_ms") + pl.col("i") * pl.col("offset_step_ms")).alias("offset_ms"),
                              (pl.col("relevance").cast(pl.Float32) * pl.col("relevance_scale")).alias("relevance"))
                .group_by("target", "lead", "offset_ms").agg(pl.col("relevance").mean())
                .sort("target", "lead", "offset_ms").collect())
        assert long.height == len(TARGETS) * 12 * 320
        dd = pl.from_arrow(duckdb.sql(f"""
            SELECT target, lead, offset_start_ms + (i - 1) * offset_step_ms AS offset_ms,
                   avg(CAST(r AS FLOAT) * relevance_scale) AS relevance
            FROM (SELECT b.target, b.lead, s.offset_start_ms, s.offset_step_ms, b.relevance_scale,
                         unnest(b.relevance) AS r, generate_subscripts(b.relevance, 1) AS i
                  FROM read_parquet('{out}/beats_relevance/**/*.parquet', hive_partitioning=true) AS b
                  JOIN read_parquet('{out}/beats/**/*.parquet', hive_partitioning=true) AS s
                  USING (record_key, "window", lead))
            GROUP BY ALL ORDER BY ALL""").arrow()).sort("target", "lead", "offset_ms")
        assert dd.height == long.height
        np.testing.assert_allclose(dd["offset_ms"].to_numpy(), long["offset_ms"].to_numpy())
        np.testing.assert_allclose(dd["relevance"].to_numpy(), long["relevance"].to_numpy(), rtol=1e-5, atol=1e-9)


def test_values_equal_ray_free_explain(first_run, setup):
    from ecgray.explain import ExplainConfig, explain
    from ecgray.io import catalog
    from ecgray.models import load_model, model_id
    from ecgray.pipeline import read_table

    out, _ = first_run
    net = load_model(setup["model"])
    cfg = ExplainConfig(model_name=setup["model"], model_id=model_id(net), methods=("saliency",), targets=TARGETS,
                        keep_relevance=False, batch_size=8)
    cat = catalog(str(setup["input"])).to_pylist()
    ok = [r for r in cat if r["error"] is None]
    ref = explain(net, [r["uri"] for r in ok], cfg, record_keys=[r["record_key"] for r in ok])
    for name, cols in (("records", [f"prob_{c}" for c in ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")]),
                       ("relevance_summary", ["probability", "sum", "abs_sum", "mean", "mean_pos", "mean_neg"])):
        got, exp = sorted_table(read_table(out, name), name), sorted_table(ref[name], name)
        assert got.num_rows == exp.num_rows
        for k in KEYS[name]:
            assert got.column(k).equals(exp.column(k)), (name, k)
        for c in cols:
            np.testing.assert_allclose(got.column(c).to_numpy(), exp.column(c).to_numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}.{c}")
    # non-numeric columns identical too
    got, exp = sorted_table(read_table(out, "records"), "records"), sorted_table(ref["records"], "records")
    for c in ("uri", "dataset", "window_offset", "flags", "label_AF", "raw_codes", "model_id"):
        assert got.column(c).equals(exp.column(c)), c


def test_resume_recomputes_only_missing_shard(first_run, setup, tmp_path):
    from ecgray.pipeline import Store, read_table, run

    out, _ = first_run
    crashed = tmp_path / "out"
    shutil.copytree(out, crashed)
    store = Store(str(crashed))
    store.remove_shard("00001")  # as if the run died before shard 1 was committed
    (crashed / "records" / "shard=00001").mkdir(parents=True)  # half-written leftovers must not count
    (crashed / "records" / "shard=00001" / "part-0.parquet").write_bytes(b"garbage")
    assert read_table(crashed, "records").num_rows == N_GOOD - 8
    s = run(str(setup["input"]), str(crashed), model=setup["model"], methods=["saliency"], targets=TARGETS,
            shard_size=8, resume=True, progress=False)
    assert (s.shards_skipped, s.shards_written) == (2, 1)
    assert s.records_ok == N_GOOD and s.records_error == 1
    for name in ("records", "relevance_summary", "errors") + (("beats", "beats_relevance") if beats_available() else ()):
        assert_tables_close(read_table(out, name), read_table(crashed, name), name)
    # resuming a finished run does nothing
    s2 = run(str(setup["input"]), str(crashed), model=setup["model"], methods=["saliency"], targets=TARGETS,
             shard_size=8, resume=True, progress=False)
    assert (s2.shards_skipped, s2.shards_written) == (3, 0)


def test_refuses_non_empty_output_and_changed_input(first_run, setup, tmp_path):
    from ecgray.pipeline import PipelineError, run

    out, _ = first_run
    kw = dict(model=setup["model"], methods=["saliency"], targets=TARGETS, shard_size=8, progress=False)
    with pytest.raises(PipelineError, match="not empty.*--resume.*--overwrite"):
        run(str(setup["input"]), str(out), **kw)
    changed = tmp_path / "in"
    shutil.copytree(setup["input"], changed)
    for ext in ("hea", "mat"):
        os.remove(changed / f"A0002.{ext}")
    target = tmp_path / "out"
    shutil.copytree(out, target)
    with pytest.raises(PipelineError, match="input changed"):
        run(str(changed), str(target), resume=True, **kw)
    with pytest.raises(PipelineError, match="settings changed"):
        run(str(setup["input"]), str(target), resume=True, **{**kw, "targets": ["AF"]})
    # the arithmetic is a setting too; outputs written before it was recorded count as float32
    with pytest.raises(PipelineError, match="settings changed.*precision: was 'fp32', now 'bf16'"):
        run(str(setup["input"]), str(target), resume=True, precision="bf16", **kw)
    manifest = json.loads((target / "_manifest.json").read_text())
    assert manifest["precision"] == "fp32"
    del manifest["precision"]
    (target / "_manifest.json").write_text(json.dumps(manifest))
    s = run(str(setup["input"]), str(target), resume=True, **kw)
    assert (s.shards_skipped, s.shards_written) == (3, 0)
    with pytest.raises(ValueError, match="precision must be one of"):
        run(str(setup["input"]), str(tmp_path / "p"), precision="fp16", **kw)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PipelineError, match="not ecgray pipeline output"):
        run(str(setup["input"]), str(tmp_path / "mine"), overwrite=True, **kw)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_overwrite_replaces_output(first_run, setup, tmp_path):
    from ecgray.pipeline import read_table, run

    out, _ = first_run
    target = tmp_path / "out"
    shutil.copytree(out, target)
    small = make_input(tmp_path / "small", Path(setup["input"]), 3, bad=False)
    s = run(str(small), str(target), model=setup["model"], methods=["saliency"], targets=TARGETS, shard_size=8,
            overwrite=True, keep_relevance=True, progress=False)
    assert s.shards == 1 and s.records_ok == 3
    assert read_table(target, "records").num_rows == 3
    rel = read_table(target, "relevance")  # --keep-relevance: full per-sample relevance, plain list column
    assert rel.num_rows == 3 * len(TARGETS) * 12
    assert set(pc.list_value_length(rel.column("relevance")).to_pylist()) == {4096}
    summ = read_table(target, "relevance_summary")
    got = np.array([np.sum(v, dtype=np.float64) for v in rel.column("relevance").to_pylist()])
    np.testing.assert_allclose(got, summ.column("sum").to_numpy(), rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (target / "relevance_summary").iterdir()) == ["shard=00000"]


def test_cli_run_refuses_and_resumes(first_run, setup):
    """`ecgray run` in-process (Ray already up): refusal message, then --resume skipping every shard."""
    from typer.testing import CliRunner

    from ecgray.cli import app

    out, _ = first_run
    args = ["run", "--input", str(setup["input"]), "--output", str(out), "--model", setup["model"],
            "--methods", "saliency", "--targets", "AF,LBBB", "--shard-size", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert "not empty" in res.output and "--resume" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert '"shards_skipped": 3' in res.output and '"records_ok": 20' in res.output
    res = CliRunner().invoke(app, args + ["--targets", "XX", "--resume"])
    assert res.exit_code == 2 and "unknown target" in res.output


def test_beats_layout_with_stand_in(cpsc_dir):
    """The beats layout (``beats``: window x lead, ``beats_relevance``: window x method x target x lead, lists over
    the offsets), valid region, dtypes and the stored precision, with a stand-in for ecgray.beats.average_beats."""
    from types import SimpleNamespace

    from ecgray.attribution import attribute
    from ecgray.explain import ExplainConfig, prepare
    from ecgray.pipeline import stages
    from ecgray.tables import beats_tables

    net = small_model()
    calls = []

    def fake_average_beats(x, relevance, fs=400, *, lead="DII", leads=None, window_ms=(-300, 500), valid=None):
        calls.append((x.shape, relevance.shape, fs, lead, window_ms, valid))
        k = 320
        offs = ((-120 + np.arange(k)) * 2.5).astype(np.float32)
        ramp = np.linspace(-1, 1, k, dtype=np.float32)
        return SimpleNamespace(offsets_ms=offs, signal=np.tile(np.arange(12, dtype=np.float32)[:, None], (1, k)),
                               relevance=relevance[..., :1] * ramp, n_beats=7, lead_used=lead, quality="ok",
                               heart_rate_bpm=70.0)

    recs, wins, xs = [], [], []
    for rid in ("A0001", "A0002"):  # 7500 and longer samples at 500 Hz: cropped, not padded
        prep, err = prepare(str(cpsc_dir / rid), run_id="r", record_key=f"site/{rid}")
        assert err is None
        meta = stages._record_meta(prep.record)
        for w in prep.windows:
            recs.append(meta)
            wins.append(SimpleNamespace(record_key=meta.record_key, record_id=w.record_id, window=w.window,
                                        offset=w.offset, n_resampled=stages._n_resampled(meta.n_samples, meta.fs, 400)))
            xs.append(w.x)
    x = np.stack(xs)
    attrs = {m: attribute(net, x, targets=["AF", "LBBB"], method=m) for m in ("saliency", "input_x_gradient")}
    cfg = ExplainConfig(model_name="tiny", model_id="abc", methods=tuple(attrs), targets=["AF", "LBBB"])
    out = beats_tables("r", cfg, {"recs": recs, "wins": wins, "x": x, "attrs": attrs}, fake_average_beats)
    beats, brel = out["beats"], out["beats_relevance"]
    assert beats.num_rows == 2 * 12 and brel.num_rows == 2 * 2 * 2 * 12
    assert [c[1] for c in calls] == [(2, 2, 12, 4096)] * 2
    assert calls[0][3:5] == ("DII", (-300, 500)) and calls[0][5] == (0, 4096)
    b = beats.slice(12 + 1, 1).to_pylist()[0]  # window 1, lead DII
    assert (b["record_key"], b["record_id"], b["lead"]) == ("site/A0002", "A0002", "DII")
    assert b["signal"] == [1.0] * 320 and b["n_beats"] == 7 and b["quality"] == "ok"
    assert (b["offset_start_ms"], b["offset_step_ms"]) == (-300.0, 2.5)
    assert beats.schema.field("signal").type == pa.list_(pa.float16())
    row = brel.slice(2 * 2 * 12 * 0 + 2 * 12 * 1 + 12 * 0 + 1, 1).to_pylist()[0]  # window 0, method 1, target 0, DII
    assert (row["record_key"], row["method"], row["target"], row["lead"]) == ("site/A0001", "input_x_gradient", "AF", "DII")
    exact = attrs["input_x_gradient"].relevance[0, 0, 1, 0] * np.linspace(-1, 1, 320, dtype=np.float32)
    got = np.asarray(row["relevance"], np.float64) * row["relevance_scale"]
    # float16 after a power-of-two row scale: relative error <= 2**-11 (>= 2**-14 of the row max), tiny below
    amax = np.abs(exact).max()
    assert amax <= row["relevance_scale"] < 2 * amax
    assert np.all(np.abs(got - exact) <= np.maximum(2.0 ** -11 * np.abs(exact), 2.0 ** -25 * row["relevance_scale"]))
    # a padded window: valid = the unpadded part
    w = SimpleNamespace(record_key="P", record_id="P", window=0, offset=-596, n_resampled=2904)
    calls.clear()
    beats_tables("r", cfg, {"recs": recs[:1], "wins": [w], "x": x[:1],
                                    "attrs": {m: a for m, a in attrs.items()}}, fake_average_beats)
    assert calls[0][5] == (596, 3500)


def test_record_meta_has_no_signal_and_same_records_row(cpsc_dir):
    """Issue 15: the record metadata sent between stages carries ``n_samples``, not a fake zero-stride signal,
    and ``records_table`` gives the same row for it as for the Record itself."""
    from ecgray.explain import ExplainConfig, prepare, records_table
    from ecgray.pipeline import codec, stages

    prep, err = prepare(str(cpsc_dir / "A0001"), run_id="r", record_key="site/A0001")
    assert err is None
    meta = stages._record_meta(prep.record)
    assert not hasattr(meta, "signal") and meta.n_samples == prep.record.signal.shape[0] == 7500
    meta = codec.loads(codec.dumps(meta))  # as the next stage sees it
    cfg = ExplainConfig(model_name="demo", model_id="demo@0")
    probs = np.full((1, 6), 0.5, np.float32)
    w = prep.windows[0]
    got = records_table("r", cfg, [(meta, w)], probs).to_pylist()[0]
    want = records_table("r", cfg, [(prep.record, w)], probs).to_pylist()[0]
    assert got == want and got["n_samples_in"] == 7500


def test_no_beats_is_only_asked_for():
    """Issue 15: ecgray.beats always imports, so the summary says beats are off only for beats=False."""
    from ecgray.pipeline.summary import RunSummary, summary_rows

    assert ("beats", "not computed (beats=False)") in summary_rows(RunSummary("r", "out", beats=False))
    assert not [r for r in summary_rows(RunSummary("r", "out")) if r[0] == "beats"]
