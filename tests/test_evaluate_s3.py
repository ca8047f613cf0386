"""``ecgray evaluate`` on S3 (moto): a run on S3, its evaluation under s3://.../evaluation/, the data-set
tables in s3://.../reduced/, equal to the same evaluation of the same run done locally."""
from __future__ import annotations

import polars as pl
import pytest

from tests.s3util import moto_and_local_ray, upload_dir

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def s3_ray(tmp_path_factory):
    from ecgray.synth import make_dataset

    data = tmp_path_factory.mktemp("s3eval") / "data"
    make_dataset(data, n=4, seed=5)
    with moto_and_local_ray("evalbucket") as client:
        upload_dir(client, "evalbucket", "in", data, sorted(p.name for p in data.iterdir()))
        yield client, data


def test_evaluate_on_s3_equals_local(s3_ray, tmp_path):
    from ecgray.evaluate import evaluate, read_evaluation
    from ecgray.evaluate.summary import write_summary
    from ecgray.pipeline import run

    client, data = s3_ray
    kw = dict(model="demo", methods=["saliency"], shard_size=2, progress=False)
    run("s3://evalbucket/in/", "s3://evalbucket/out/", **kw)
    run(str(data), str(tmp_path / "out"), **kw)
    ev = dict(sample=1, shard_size=2, n_subsets=8, tests=("faithfulness", "agreement"))
    s3 = evaluate("s3://evalbucket/out/", **ev)
    local = evaluate(str(tmp_path / "out"), **ev)
    assert s3.n_records == local.n_records > 0 and s3.n_errors == 0
    cols = ["record_key", "method", "target", "auc_morf", "auc_random", "faithfulness_correlation"]
    a = pl.from_arrow(read_evaluation("s3://evalbucket/out/", "faithfulness")).select(cols).sort(cols[:3])
    b = pl.from_arrow(read_evaluation(str(tmp_path / "out"), "faithfulness")).select(cols).sort(cols[:3])
    assert a.equals(b)
    tables = write_summary("s3://evalbucket/out/")
    assert tables["evaluation_verdicts"].height == b.select("method", "target").unique().height
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="evalbucket", Prefix="out/")["Contents"]]
    assert "out/reduced/evaluation_verdicts.parquet" in keys
    assert any(k.startswith("out/evaluation/_commits/shard=") for k in keys)
    assert not [k for k in keys if k.startswith("out/evaluation/_tmp/")]
