"""The command line, driven as a user would (typer's CliRunner, real files)."""
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from ecgray.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_model):
    from ecgray.models import save_model

    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(tiny_model, path)
    return path


def test_catalog_cpsc(cpsc_dir, tmp_path):
    out = tmp_path / "cat.parquet"
    res = runner.invoke(app, ["catalog", str(cpsc_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "150 records" in res.output
    df = pl.read_parquet(out)
    assert df.height == 150
    assert df["label_AF"].sum() == 24 and df["label_LBBB"].sum() == 8 and df["label_RBBB"].sum() == 32


def test_explain_writes_parquet(cpsc_dir, code15_dir, tiny_weights, tmp_path):
    out = tmp_path / "rel.parquet"
    res = runner.invoke(app, ["explain", str(cpsc_dir / "A0001"), str(code15_dir / "pacient_2.hdf5"), str(tmp_path / "missing"),
                              "--model", str(tiny_weights), "--method", "saliency", "-t", "AF,LBBB", "-o", str(out)])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert df.height == 2 * 2 * 12
    assert df["relevance"].list.len().unique().to_list() == [4096]
    err = pl.read_parquet(tmp_path / "rel.errors.parquet")
    assert err["record_id"].to_list() == ["missing"]
    assert "skipped missing" in res.output
    recs = pl.read_parquet(tmp_path / "rel.records.parquet")
    assert recs.height == 2


def test_explain_multi_exam_hdf5_like_catalog(code15_dir, tiny_weights, tmp_path):
    """``explain file.hdf5`` (no ``#row``) explains every exam, as ``catalog`` and ``run`` list them."""
    import h5py

    from ecgray.io import catalog

    x = h5py.File(code15_dir / "pacient_2.hdf5", "r")["tracings"][()].reshape(-1, 4096, 12)
    multi = tmp_path / "three exams.hdf5"  # a name with a space
    with h5py.File(multi, "w") as f:
        f.create_dataset("tracings", data=np.concatenate([x, x * 0.5, x * 2.0]))
        f.create_dataset("exam_id", data=np.array([11, 12, 13]))
    out = tmp_path / "multi.parquet"
    res = runner.invoke(app, ["explain", str(multi), "--model", str(tiny_weights), "--method", "saliency",
                              "-t", "AF", "--summary-only", "-o", str(out)])
    assert res.exit_code == 0, res.output
    recs = pl.read_parquet(tmp_path / "multi.records.parquet")
    assert sorted(recs["record_id"].to_list()) == ["11", "12", "13"]
    assert sorted(recs["uri"].to_list()) == sorted(catalog(str(multi)).column("uri").to_pylist())
    assert not (tmp_path / "multi.errors.parquet").exists()


def test_catalog_names_skipped_files(tmp_path, cpsc_dir):
    import shutil

    for ext in (".hea", ".mat"):
        shutil.copy(cpsc_dir / f"A0001{ext}", tmp_path / f"A0001{ext}")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "notes.txt").write_text("x")
    res = runner.invoke(app, ["catalog", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 records" in res.output
    assert "skipped 2 file(s): 1 hidden, 1 not records: .DS_Store, notes.txt" in " ".join(res.output.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no/such/model.safetensors"], "no/such/model.safetensors"),
        (["--model", "weights.pkl"], "pkl"),
        (["--method", "nonsense"], "unknown method 'nonsense'"),
        (["-t", "XYZ"], "unknown target 'XYZ'"),
    ],
)
def test_explain_bad_arguments_give_one_line_errors(cpsc_dir, tiny_weights, args, message):
    base = ["explain", str(cpsc_dir / "A0001"), "--model", str(tiny_weights)]
    res = runner.invoke(app, base + args)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_report_accepts_method_aliases(monkeypatch):
    import ecgray.report as rep

    seen = {}
    monkeypatch.setattr(rep, "report", lambda output, **kw: seen.update(kw) or "x/index.html")
    res = runner.invoke(app, ["report", "some/out", "--method", "ig,lrp"])
    assert res.exit_code == 0, res.output
    assert seen["methods"] == ["integrated_gradients", "lrp_epsilon"]


def test_run_hands_object_store_size_to_ray_init(monkeypatch, cpsc_dir, tmp_path):
    """`ecgray run --object-store-mb N` starts Ray through ray_init_if_needed with that size (default None:
    ecgray's 256 MB for a local instance); the run itself is stubbed out here."""
    import importlib

    import ecgray.pipeline as pipeline
    from ecgray.pipeline import PipelineError

    run_mod = importlib.import_module("ecgray.pipeline.run")  # the module (ecgray.pipeline.run is the function)

    seen = []
    monkeypatch.setattr(run_mod, "ray_init_if_needed", lambda **kw: seen.append(kw))

    def fake_run(*a, **kw):
        raise PipelineError("stubbed")

    monkeypatch.setattr(pipeline, "run", fake_run)
    for extra, want in (([], None), (["--object-store-mb", "300"], 300)):
        r = runner.invoke(app, ["run", "-i", str(cpsc_dir), "-o", str(tmp_path / "o"), *extra])
        assert r.exit_code != 0 and "stubbed" in r.output
        assert seen[-1] == {"object_store_mb": want}
