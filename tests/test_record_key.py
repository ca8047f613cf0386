"""One record identity: records that share a name in different folders stay apart in every table and in
the reduce, locally and on S3 (``record_key`` = the path relative to the input root)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import small_model
from tests.s3util import moto_and_local_ray

ray = pytest.importorskip("ray")

TARGETS = ["AF", "LBBB"]
TABLES = ("records", "relevance_summary", "beats", "beats_relevance")


def colliding_input(folder: Path, cpsc_dir: Path) -> Path:
    """site_a/A0001 (CPSC A0001), site_b/A0001 (CPSC A0002 renamed: other signal, same name), A0003 at the top."""
    for site, src in (("site_a", "A0001"), ("site_b", "A0002")):
        d = folder / site
        d.mkdir(parents=True)
        (d / "A0001.hea").write_text((cpsc_dir / f"{src}.hea").read_text().replace(src, "A0001"))
        shutil.copy(cpsc_dir / f"{src}.mat", d / "A0001.mat")
    for ext in ("hea", "mat"):
        shutil.copy(cpsc_dir / f"A0003.{ext}", folder / f"A0003.{ext}")
    return folder


def test_record_key_of_uris(tmp_path):
    from ecgray.io.catalog import record_key

    root = str(tmp_path)
    assert record_key(f"{root}/site_a/X", root) == "site_a/X"
    assert record_key(f"{root}/site_a/X", root + "/") == "site_a/X"
    assert record_key(f"{root}/exams.hdf5#12", root) == "exams.hdf5#12"
    assert record_key(f"{root}/exams.hdf5#12", f"{root}/exams.hdf5") == "exams.hdf5#12"  # the input is the file
    assert record_key(f"{root}/A0001", f"{root}/A0001.hea") == "A0001"  # the input is one WFDB record
    assert record_key("s3://b/in/site_b/X", "s3://b/in/") == "site_b/X"
    assert record_key("s3://b/other/X", "s3://b/in") == "s3://b/other/X"  # outside the root: the full URI


def test_catalog_keys_are_unique(tmp_path, cpsc_dir):
    from ecgray.io import catalog

    cat = catalog(str(colliding_input(tmp_path / "in", cpsc_dir))).to_pylist()
    assert [r["record_id"] for r in cat] == ["A0001", "A0001", "A0003"]
    assert sorted(r["record_key"] for r in cat) == ["A0003", "site_a/A0001", "site_b/A0001"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, cpsc_dir):
    """Input folder (also uploaded to moto S3), a small model, and a local Ray whose workers see the S3 env."""
    root = tmp_path_factory.mktemp("collide")
    inp = colliding_input(root / "in", cpsc_dir)
    from ecgray.models import save_model

    model = str(save_model(small_model(), root / "tiny.safetensors"))
    with moto_and_local_ray("collide") as client:  # its own bucket: moto keeps state across servers of a process
        for p in inp.rglob("*"):  # keep the folders: site_a/A0001 and site_b/A0001 are two records
            if p.is_file():
                client.put_object(Bucket="collide", Key=f"in/{p.relative_to(inp)}", Body=p.read_bytes())
        yield {"root": root, "input": inp, "model": model}


def reference(env) -> dict[str, dict]:
    """Each record explained on its own (no Ray): probabilities and per-lead sums by record key."""
    from ecgray.explain import ExplainConfig, explain
    from ecgray.models import load_model, model_id

    net = load_model(env["model"])
    cfg = ExplainConfig(model_name=env["model"], model_id=model_id(net), methods=("saliency",), targets=TARGETS,
                        keep_relevance=False)
    out = {}
    for key in ("site_a/A0001", "site_b/A0001", "A0003"):
        t = explain(net, [str(env["input"] / key)], cfg, record_keys=[key])
        summ = t["relevance_summary"].to_pylist()
        out[key] = {"prob": t["records"].to_pylist()[0],
                    "sum": {(r["target"], r["lead"]): r["sum"] for r in summ},
                    "probability": {r["target"]: r["probability"] for r in summ}}
    return out


def check_output(out: str, ref: dict) -> None:
    from ecgray.pipeline import read_table
    from ecgray.reduce import reduce

    recs = read_table(out, "records").to_pylist()
    assert sorted((r["record_key"], r["record_id"]) for r in recs) == [
        ("A0003", "A0003"), ("site_a/A0001", "A0001"), ("site_b/A0001", "A0001")]
    by_key = {r["record_key"]: r for r in recs}
    pa_, pb = by_key["site_a/A0001"], by_key["site_b/A0001"]
    assert pa_["prob_AF"] != pb["prob_AF"]  # different signals -> different outputs
    for key, r in by_key.items():
        for c in ("AF", "LBBB", "SB"):
            assert r[f"prob_{c}"] == pytest.approx(ref[key]["prob"][f"prob_{c}"], rel=1e-4, abs=1e-6)
    summ = read_table(out, "relevance_summary").to_pylist()
    assert len(summ) == 3 * len(TARGETS) * 12
    for r in summ:
        assert r["sum"] == pytest.approx(ref[r["record_key"]]["sum"][(r["target"], r["lead"])], rel=1e-4, abs=1e-6)
    for name in ("beats", "beats_relevance"):
        keys = read_table(out, name, columns=["record_key"]).column("record_key").to_pylist()
        assert sorted(set(keys)) == ["A0003", "site_a/A0001", "site_b/A0001"]
        assert keys.count("site_a/A0001") == keys.count("site_b/A0001") == len(keys) // 3
    # reduce: one point per record window and target with the record's own probability and relevance
    pts = reduce(out, n_boot=50, write=False)["class_probability_points"]
    assert pts.height == 3 * len(TARGETS)
    for row in pts.iter_rows(named=True):
        ref_k = ref[row["record_key"]]
        want = sum(ref_k["sum"][(row["target"], lead)] for lead in {l for _, l in ref_k["sum"]})
        assert row["relevance_sum"] == pytest.approx(want, rel=1e-4, abs=1e-5)
        assert row["probability"] == pytest.approx(ref_k["probability"][row["target"]], rel=1e-4, abs=1e-6)
    lead = reduce(out, n_boot=50, write=False)["lead_relevance"]
    assert lead["n"].sum() == 3 * len(TARGETS) * 12  # three records counted, none merged


@pytest.mark.slow
def test_colliding_names_local(env):
    from ecgray.pipeline import run

    out = str(env["root"] / "out")
    s = run(str(env["input"]), out, model=env["model"], methods=["saliency"], targets=TARGETS, shard_size=2,
            progress=False)
    assert (s.records, s.records_ok, s.records_error) == (3, 3, 0)
    check_output(out, reference(env))


@pytest.mark.slow
def test_colliding_names_s3(env):
    from ecgray.pipeline import run

    s = run("s3://collide/in/", "s3://collide/out/", model=env["model"], methods=["saliency"], targets=TARGETS,
            shard_size=2, progress=False)
    assert (s.records, s.records_ok, s.records_error) == (3, 3, 0)
    check_output("s3://collide/out/", reference(env))
