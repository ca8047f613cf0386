"""S3 (moto server on 127.0.0.1): catalog and reads equal the local ones."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgray.errors import ReadError
from ecgray.io import catalog, fs_path, open_fs, pyarrow_fs, read_record
from tests.s3util import moto_server, s3_bucket_with, s3_env  # noqa: F401  (fixtures)

CPSC_IDS = [f"A{i:04d}" for i in (1, 2, 3, 4, 5, 8, 13, 21, 34, 55)]
CODE_IDS = ["pacient_1", "pacient_2", "pacient_3"]


@pytest.fixture
def mirrored(cpsc_dir, code15_dir, tmp_path, s3_bucket_with):
    """The same small data set locally (tmp_path/data) and on S3 (s3://bucket/data)."""
    files = {}
    for rid in CPSC_IDS:
        for ext in (".hea", ".mat"):
            files[f"data/cpsc/{rid}{ext}"] = cpsc_dir / f"{rid}{ext}"
    files["data/cpsc/REFERENCE.csv"] = cpsc_dir / "REFERENCE.csv"
    for rid in CODE_IDS:
        files[f"data/code15/{rid}.hdf5"] = code15_dir / f"{rid}.hdf5"
    for key, src in files.items():
        dst = tmp_path / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    root = s3_bucket_with(files)
    return tmp_path / "data", f"{root}/data", s3_bucket_with


def test_endpoint_is_local(s3_env):
    assert s3_env.startswith("http://127.0.0.1:")
    fs, path = open_fs("s3://some-bucket/x")
    assert path == "some-bucket/x"
    assert fs.client_kwargs["endpoint_url"] == s3_env


def test_catalog_and_reads_equal_local(mirrored):
    local, remote, _ = mirrored
    ref_csv_local, ref_csv_s3 = str(local / "cpsc" / "REFERENCE.csv"), f"{remote}/cpsc/REFERENCE.csv"
    t_local = catalog(str(local), labels_csv=ref_csv_local)
    t_s3 = catalog(remote, labels_csv=ref_csv_s3)
    assert t_s3.num_rows == len(CPSC_IDS) + len(CODE_IDS)
    assert t_s3.column("record_id").to_pylist() == sorted(CPSC_IDS + CODE_IDS)
    assert t_s3.drop_columns(["uri"]).equals(t_local.drop_columns(["uri"]))
    assert t_s3.column("error").null_count == t_s3.num_rows
    assert all(u.startswith(remote + "/") for u in t_s3.column("uri").to_pylist())
    for u_local, u_s3 in zip(t_local.column("uri").to_pylist(), t_s3.column("uri").to_pylist()):
        a = read_record(u_local, labels_csv=ref_csv_local)
        b = read_record(u_s3, labels_csv=ref_csv_s3)
        assert a.record_id == b.record_id and a.format == b.format and a.dataset == b.dataset
        assert np.array_equal(a.signal, b.signal) and a.signal.dtype == b.signal.dtype
        assert a.fs == b.fs and a.leads == b.leads and a.labels == b.labels and a.meta == b.meta
        assert b.uri == u_s3
    # header labels (no CSV) agree too
    assert catalog(remote).drop_columns(["uri"]).equals(catalog(str(local)).drop_columns(["uri"]))
    # non-recursive listing of the top prefix finds nothing but does not fail
    assert catalog(remote, recursive=False).num_rows == 0
    # a single record by URI
    assert catalog(f"{remote}/cpsc/A0003").column("record_id").to_pylist() == ["A0003"]


def test_s3_errors_and_fresh_listings(mirrored, cpsc_dir):
    local, remote, make = mirrored
    bucket = remote.split("/")[2]
    client = make.client
    # uncached listings: a new record shows up at once
    assert catalog(f"{remote}/cpsc").num_rows == len(CPSC_IDS)
    hea = (cpsc_dir / "A0100.hea").read_bytes()
    mat = (cpsc_dir / "A0100.mat").read_bytes()
    client.put_object(Bucket=bucket, Key="data/cpsc/A0100.hea", Body=hea)           # no .mat yet
    client.put_object(Bucket=bucket, Key="data/cpsc/A0101.hea", Body=(cpsc_dir / "A0101.hea").read_bytes())
    client.put_object(Bucket=bucket, Key="data/cpsc/A0101.mat", Body=(cpsc_dir / "A0101.mat").read_bytes()[:-10])
    client.put_object(Bucket=bucket, Key="data/cpsc/A0102.hea", Body=b"\x00garbage")
    rows = {r["record_id"]: r for r in catalog(f"{remote}/cpsc").to_pylist()}
    assert len(rows) == len(CPSC_IDS) + 3
    assert rows["A0100"]["error_type"] == "missing_signal_file"
    assert rows["A0101"]["error_type"] == "truncated"
    assert rows["A0102"]["error_type"] == "bad_header"
    for rid, et in (("A0100", "missing_signal_file"), ("A0101", "truncated"), ("A0102", "bad_header"),
                    ("A0999", "missing_header")):
        with pytest.raises(ReadError) as e:
            read_record(f"{remote}/cpsc/{rid}")
        assert e.value.error_type == et and rid in str(e.value)
    client.put_object(Bucket=bucket, Key="data/cpsc/A0100.mat", Body=mat)
    rec = read_record(f"{remote}/cpsc/A0100.hea")
    assert np.array_equal(rec.signal, read_record(str(cpsc_dir / "A0100")).signal)


def test_s3_multi_exam_hdf5(s3_bucket_with, tmp_path):
    p = tmp_path / "exams.hdf5"
    x = np.random.default_rng(0).normal(size=(4, 4096, 12))
    with h5py.File(p, "w") as f:
        f.create_dataset("tracings", data=x)
        f.create_dataset("exam_id", data=np.array([7, 8, 9, 10]))
    root = s3_bucket_with({"h5/exams.hdf5": p})
    tbl = catalog(f"{root}/h5")
    assert tbl.column("record_id").to_pylist() == ["10", "7", "8", "9"]        # sorted as strings
    rec = read_record(f"{root}/h5/exams.hdf5#2")
    assert rec.record_id == "9" and np.array_equal(rec.signal, read_record(f"{p}#2").signal)


def test_pyarrow_fs_roundtrip(s3_bucket_with):
    root = s3_bucket_with({})
    uri = f"{root}/out/table.parquet"
    fs = pyarrow_fs(uri)
    assert type(fs).__name__ == "S3FileSystem"
    tbl = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    pq.write_table(tbl, fs_path(uri), filesystem=fs)
    assert pq.read_table(fs_path(uri), filesystem=fs).equals(tbl)
    s3, path = open_fs(uri)
    with s3.open(path, "rb") as f:
        assert pq.read_table(f).equals(tbl)
    assert type(pyarrow_fs("/tmp/x")).__name__ == "LocalFileSystem"
