"""The pipeline end to end on S3 (moto): 150 CPSC records in, sharded committed tables out."""
from __future__ import annotations

import os
import time

import pytest

from tests.conftest import small_model
from tests.s3util import moto_and_local_ray, upload_dir

ray = pytest.importorskip("ray")

N = 150


@pytest.fixture(scope="module")
def s3_ray(cpsc_dir):
    """moto server + AWS env for this module, and a local Ray whose workers get the same env."""
    with moto_and_local_ray("bucket") as client:
        names = [f"A{i:04d}.{e}" for i in range(1, N + 1) for e in ("hea", "mat")]
        upload_dir(client, "bucket", "cpsc", cpsc_dir, names)
        yield client


@pytest.mark.slow
def test_s3_end_to_end_150_records(s3_ray, tmp_path):
    from ecgray.models import save_model
    from ecgray.pipeline import Store, read_table, run

    model = str(save_model(small_model(), tmp_path / "tiny.safetensors"))
    t0 = time.perf_counter()
    s = run("s3://bucket/cpsc/", "s3://bucket/out/", model=model, methods=["saliency"], targets=None,
            shard_size=32, progress=False)
    wall = time.perf_counter() - t0
    assert (s.records, s.records_ok, s.records_error) == (N, N, 0)
    assert (s.shards, s.shards_written, s.shards_skipped) == (5, 5, 0)
    recs = read_table("s3://bucket/out/", "records")
    summ = read_table("s3://bucket/out/", "relevance_summary")
    errs = read_table("s3://bucket/out/", "errors")
    assert recs.num_rows == N and len(set(recs.column("record_key").to_pylist())) == N
    assert summ.num_rows == N * 6 * 1 * 12
    assert summ.group_by(["record_key", "window", "method", "target", "lead"]).aggregate([]).num_rows == summ.num_rows
    assert errs.num_rows == 0
    if (s.rows.get("beats") or 0) > 0:
        assert read_table("s3://bucket/out/", "beats").num_rows == N * 12
        assert read_table("s3://bucket/out/", "beats_relevance").num_rows == N * 6 * 12
    # layout on S3: markers, hive folders, no staging left
    keys = [o["Key"] for page in s3_ray.get_paginator("list_objects_v2").paginate(Bucket="bucket", Prefix="out/")
            for o in page.get("Contents", [])]
    assert sorted(k for k in keys if k.startswith("out/_commits/")) == [f"out/_commits/shard={k:05d}.json"
                                                                        for k in range(5)]
    assert not [k for k in keys if k.startswith("out/_tmp/")]
    assert "out/relevance_summary/shard=00004/part-0.parquet" in keys
    assert len(Store("s3://bucket/out/").commits()) == 5
    print(f"S3 150 records: {wall:.1f} s, {s.records_per_s:.2f} records/s, stages {s.stage_seconds}")
    # a second run into the same prefix is refused; --resume skips everything
    s2 = run("s3://bucket/cpsc/", "s3://bucket/out/", model=model, methods=["saliency"], shard_size=32,
             resume=True, progress=False)
    assert (s2.shards_skipped, s2.shards_written, s2.records_ok) == (5, 0, N)
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")
