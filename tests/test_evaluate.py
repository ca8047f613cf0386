"""``ecgray evaluate`` end to end on a local Ray: a pipeline run of synthetic records (a folder name with a
space), its evaluation, a Ray-free recomputation, exactly-once and --resume, refusals, a record changed
after the run (an ``errors`` row, the rest evaluated), the reduce's data-set tables, DuckDB, the report
section and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from ecgray.store import PipelineError

METHODS = ("saliency", "input_x_gradient")


@pytest.fixture(scope="module")
def run_out(ray_local, tmp_path_factory):
    from ecgray.pipeline import run
    from ecgray.synth import make_dataset

    root = tmp_path_factory.mktemp("evaluate")
    inp = root / "synthetic in"
    make_dataset(inp, n=8, seed=3)
    out = root / "out"
    summary = run(str(inp), str(out), model="demo", methods=list(METHODS), shard_size=4, progress=False)
    assert summary.records_ok == 8
    return inp, out


@pytest.fixture(scope="module")
def evaluated(run_out):
    from ecgray.evaluate import evaluate

    inp, out = run_out
    s = evaluate(str(out), sample=1, shard_size=2, n_subsets=8)
    return inp, out, s


def _table(out, name) -> pl.DataFrame:
    from ecgray.evaluate import read_evaluation

    return pl.from_arrow(read_evaluation(str(out), name))


def test_plan_sample_and_rows(evaluated):
    from ecgray.evaluate.core import record_targets
    from ecgray.evaluate.sample import stratified_sample
    from ecgray.store import read_table

    inp, out, s = evaluated
    records = read_table(str(out), "records").to_pylist()
    classes = [c[5:] for c in read_table(str(out), "records").column_names if c.startswith("prob_")]
    chosen = stratified_sample(records, classes, 1, seed=0)
    assert s.n_records == len(chosen) and s.n_shards == math.ceil(len(chosen) / 2) and s.n_written == s.n_shards
    assert s.cost == {"forwards": 3 * 9 + 8, "attributions": 1 + 7 + 1}  # 7 units of the demo ResNet (+1: random logit)
    f = _table(out, "faithfulness")
    want = {(r["record_key"], m, t) for r in chosen for t in record_targets(r, classes, "predicted") for m in METHODS}
    assert set(zip(f["record_key"], f["method"], f["target"])) == want and f.height == len(want)  # exactly once
    d = _table(out, "deletion")
    assert d.height == f.height * 3 * 10
    assert _table(out, "errors").height == 0
    manifest = json.loads((out / "evaluation" / "_manifest.json").read_text())
    assert manifest["config"]["methods"] == list(METHODS) and manifest["sample"] == 1


def test_curves_start_at_the_runs_probability(evaluated):
    """Step 0 of every curve is the record as the run saw it: its probability equals the run's prob_<target>."""
    from ecgray.store import read_table

    _, out, _ = evaluated
    rec = pl.from_arrow(read_table(str(out), "records"))
    d = _table(out, "deletion").filter(pl.col("step") == 0)
    for r in d.iter_rows(named=True):
        p = rec.filter(pl.col("record_key") == r["record_key"])[f"prob_{r['target']}"].item()
        assert r["probability"] == pytest.approx(p, abs=2e-6)
        assert r["logit"] == pytest.approx(math.log(p / (1 - p)), abs=1e-3)


def test_equals_a_ray_free_recomputation(evaluated):
    from ecgray.evaluate import EvaluateConfig, evaluate_batch
    from ecgray.explain import prepare
    from ecgray.models import load_model
    from ecgray.models.spec import RIBEIRO2020
    from ecgray.store import read_table

    _, out, _ = evaluated
    f = _table(out, "faithfulness").sort("record_key", "method", "target")
    keys = set(f["record_key"])
    rows = [r for r in read_table(str(out), "records").to_pylist() if r["record_key"] in keys]
    x = np.stack([prepare(r["uri"], run_id="t", spec=RIBEIRO2020)[0].windows[0].x for r in rows])
    cfg = EvaluateConfig(methods=METHODS, n_subsets=8, tests=("faithfulness",))
    ref = pl.from_arrow(evaluate_batch(load_model("demo"), x, rows, cfg, evaluation_id="x")["faithfulness"])
    ref = ref.sort("record_key", "method", "target")
    for col in ("auc_morf", "auc_lerf", "auc_random", "faithfulness_correlation"):
        np.testing.assert_allclose(f[col].to_numpy(), ref[col].to_numpy(), rtol=1e-4, atol=1e-4)


def test_similarity_rows_are_bounded_and_complete(evaluated):
    _, out, _ = evaluated
    r = _table(out, "randomisation")
    f = _table(out, "faithfulness")
    casc = r.filter(test="cascading")
    assert casc.height == f.height * 7 and r.filter(test="random_logit").height == f.height
    assert casc["layer"].unique().sort().to_list() == sorted(["dense", "units.3", "units.2", "units.1", "units.0",
                                                              "bn1", "conv1"])
    for col in ("spearman_abs", "spearman_signed"):
        v = r[col].drop_nulls().to_numpy()
        assert ((v >= -1 - 1e-9) & (v <= 1 + 1e-9)).all()
    a = _table(out, "agreement")
    assert a.height == f.height // 2 and set(a["a"]) == {"saliency"} and set(a["b"]) == {"input_x_gradient"}


def test_resume_runs_only_the_missing_shard_and_refusals(evaluated):
    from ecgray.evaluate import evaluate

    _, out, s = evaluated
    before = _table(out, "faithfulness").sort("record_key", "method", "target")
    marker = sorted((out / "evaluation" / "_commits").glob("shard=*.json"))[0]
    marker.unlink()
    with pytest.raises(PipelineError, match="already holds an evaluation"):
        evaluate(str(out), sample=1, shard_size=2, n_subsets=8)
    with pytest.raises(PipelineError, match=r"settings changed \(config"):
        evaluate(str(out), sample=1, shard_size=2, n_subsets=8, replacement="linear", resume=True)
    again = evaluate(str(out), sample=1, shard_size=2, n_subsets=8, resume=True)
    assert again.n_written == 1 and again.n_kept == s.n_shards - 1
    after = _table(out, "faithfulness").sort("record_key", "method", "target")
    assert after.drop("evaluation_id").equals(before.drop("evaluation_id"))


def test_reduce_duckdb_and_report(evaluated):
    import duckdb

    from ecgray.reduce import reduce
    from ecgray.report import report

    _, out, _ = evaluated
    reduce(str(out), n_boot=50)
    v = pl.read_parquet(out / "reduced" / "evaluation_verdicts.parquet")
    f = _table(out, "faithfulness")
    assert set(zip(v["method"], v["target"])) == set(zip(f["method"], f["target"]))
    s = pl.read_parquet(out / "reduced" / "evaluation_faithfulness.parquet")
    for r in s.iter_rows(named=True):  # the data-set mean is the mean of the per-record rows
        vals = f.filter(method=r["method"], target=r["target"])["random_minus_morf"]
        assert r["n"] == len(vals) and r["random_minus_morf"] == pytest.approx(vals.mean(), abs=1e-9)
    con = duckdb.connect()
    n = con.execute(f"select count(*) from read_parquet('{out}/evaluation/deletion/*/*.parquet')").fetchone()[0]
    assert n == _table(out, "deletion").height
    with open(report(str(out))) as fh:
        html = fh.read()
    assert "Can these explanations be trusted?" in html and "verdict per method × class" in html
    for name in ("randomisation", "agreement_methods", "deletion_saliency_zero"):
        assert any(p.name.endswith(f"{name}.png") for p in (out / "report").iterdir()), name


def test_a_record_changed_after_the_run_is_an_error_row(evaluated):
    """The .dat of one sampled record is rewritten (signal x 2): its probabilities no longer match the run's,
    so it is an errors row 'stale' naming it; the other records are evaluated."""
    from ecgray.evaluate import evaluate

    inp, out, _ = evaluated
    key = _table(out, "faithfulness")["record_key"].sort()[0]
    dat = inp / f"{key}.dat"
    saved = dat.read_bytes()
    try:
        sig = np.frombuffer(saved, dtype="<i2").copy()
        dat.write_bytes((sig * 2).astype("<i2").tobytes())
        s = evaluate(str(out), sample=1, shard_size=2, n_subsets=8, tests=("faithfulness",), overwrite=True)
    finally:
        dat.write_bytes(saved)
    err = _table(out, "errors")
    assert err.height == 1 and err["error_type"].item() == "stale" and err["record_key"].item() == key
    assert "differ from the run's" in err["message"].item()
    assert s.n_errors == 1 and key not in set(_table(out, "faithfulness")["record_key"])
    assert _table(out, "faithfulness")["record_key"].n_unique() == s.n_records - 1


def test_cli(evaluated, tmp_path):
    from typer.testing import CliRunner

    from ecgray.cli import app

    _, out, _ = evaluated
    res = CliRunner().invoke(app, ["evaluate", str(out), "--sample", "1", "--tests", "faithfulness"])
    assert res.exit_code == 2 and "already holds an evaluation" in res.output
    res = CliRunner().invoke(app, ["evaluate", str(out), "--sample", "1", "--tests", "faithfulness,agreement",
                                   "--methods", "saliency", "--replacement", "noisy_linear", "--segments", "waves",
                                   "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "cost per record x target x method: 59 forwards" in res.output and "trust" in res.output
    f = _table(out, "faithfulness")
    assert set(f["replacement"]) == {"noisy_linear"} and set(f["segments"]) == {"waves"}
    assert f["block_ms"].null_count() == f.height and (f["n_segments"] > 12 * 10).all()  # >= 10 segments per lead
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "no committed pipeline run" in res.output


def test_resume_with_a_bigger_sample_replans_without_duplicates(run_out, tmp_path):
    """--resume after the sample grew: shards planned otherwise are rewritten, none left twice."""
    import shutil as _sh

    from ecgray.evaluate import evaluate

    _, out = run_out
    copy = tmp_path / "copy"
    _sh.copytree(out, copy, ignore=_sh.ignore_patterns("evaluation", "reduced", "report"))
    first = evaluate(str(copy), sample=1, shard_size=2, n_subsets=8, tests=("faithfulness",))
    with pytest.raises(PipelineError, match=r"settings changed \(sample"):
        evaluate(str(copy), sample=2, shard_size=2, n_subsets=8, tests=("faithfulness",), resume=True)
    bigger = evaluate(str(copy), sample=2, shard_size=2, n_subsets=8, tests=("faithfulness",), overwrite=True)
    assert bigger.n_records >= first.n_records
    f = _table(copy, "faithfulness")
    assert f.height == f.select("record_key", "method", "target").unique().height


def test_cli_run_then_evaluate(run_out, tmp_path):
    from typer.testing import CliRunner

    from ecgray.cli import app

    inp, _ = run_out
    out = tmp_path / "run and evaluate"
    res = CliRunner().invoke(app, ["run", "-i", str(inp), "-o", str(out), "--model", "demo", "--method", "saliency",
                                   "--evaluate", "1"])
    assert res.exit_code == 0, res.output
    assert "evaluated" in res.output and "saliency ×" in res.output and '"records_ok": 8' in res.output
    assert (out / "reduced" / "evaluation_verdicts.parquet").exists()
    assert _table(out, "faithfulness").height > 0


def test_check_into_puts_the_ground_truth_table_in_the_report(evaluated):
    from typer.testing import CliRunner

    from ecgray.cli import app
    from ecgray.report import report

    _, out, _ = evaluated
    res = CliRunner().invoke(app, ["check", "-n", "3", "--method", "saliency", "--counterfactual", "AF,LBBB",
                                   "--into", str(out)])
    assert res.exit_code == 0, res.output
    gt = pl.read_parquet(out / "reduced" / "ground_truth.parquet")
    assert set(gt["target"]) == {"AF", "LBBB"} and set(gt["method"]) == {"saliency"}
    assert (gt["feature_frac_drop"] == 1.0).all()  # removing the planted feature drops every logit (demo model)
    with open(report(str(out))) as fh:
        html = fh.read()
    assert "ground truth per method × class" in html and "elsewhere: median drop" in html
