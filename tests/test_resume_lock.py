"""Runs that grow, and the output lock (issue 13, item 4).

* ``--resume`` after records were added (sorting first, in the middle, last, and in a new folder with a
  record id that exists elsewhere) runs exactly the new records in new shards, reruns an unfinished shard
  under its number, leaves committed shards' files untouched, and ends with tables equal (per record_key)
  to a from-scratch run on the grown input; removed or changed records of committed shards are refused.
* A live run's ``_lock.json`` refuses a second run (naming it); a dead run's lock (pid gone on this machine,
  or a heartbeat older than its ttl) is taken over; the lock goes at the end, also on errors and
  KeyboardInterrupt.
* Provenance: markers and rows name the run that wrote their shard, the manifest the latest run (+ ``runs``).
* The same on S3 (moto): growth, a live lock, a stale lock.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.corpus import bad_missing_signal, edit_header, write_ecg
from tests.s3util import moto_and_local_ray

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
KW = dict(model="demo", methods=["saliency"], targets=["AF"], shard_size=3, beats=False, progress=False)
KEYS = {"records": ["record_key", "window"],
        "relevance_summary": ["record_key", "window", "method", "target", "lead"],
        "errors": ["record_key"]}
BASE = [("site_a", f"r{i:02d}") for i in range(2, 16, 2)] + [("site_b", "r04")]  # 8 good records
BAD = ("site_a", "r09x")  # a catalog error row (signal file missing): sorts in the middle
ADDED = [("site_a", "r01"), ("site_a", "r05"), ("site_a", "r15"), ("site_c", "r06")]  # first, middle, last, new folder
RUN = importlib.import_module("ecgray.pipeline.run")


def key(site: str, name: str) -> str:
    return f"{site}/{name}"


def write(folder: Path, records, seed0: int = 0) -> None:
    for i, (site, name) in enumerate(records):
        write_ecg(folder / site, name, seed=seed0 + i)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """moto + AWS env for this module, and a local Ray (2 CPUs) whose workers get the same env."""
    with moto_and_local_ray("grow") as client:
        yield {"client": client, "root": tmp_path_factory.mktemp("grow")}


def snapshot(out: Path, shards) -> dict:
    """``{relative path: (bytes, mtime_ns)}`` of the files and markers of ``shards``."""
    snap = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and any(f"shard={s}" in rel for s in shards):
            snap[rel] = (p.read_bytes(), p.stat().st_mtime_ns)
    return snap


def table(out, name: str) -> pa.Table:
    from ecgray.pipeline import read_table

    return read_table(str(out), name)


def assert_same_per_key(a: pa.Table, b: pa.Table, name: str) -> None:
    drop = [c for c in ("run_id",) if c in a.column_names]
    a = a.drop_columns(drop).sort_by([(k, "ascending") for k in KEYS[name]])
    b = b.drop_columns(drop).sort_by([(k, "ascending") for k in KEYS[name]])
    assert a.num_rows == b.num_rows, (name, a.num_rows, b.num_rows)
    assert a.schema.equals(b.schema), name
    for c in a.column_names:
        if pa.types.is_floating(a.schema.field(c).type):
            np.testing.assert_allclose(a.column(c).to_numpy(), b.column(c).to_numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}.{c}")
        else:
            assert a.column(c).equals(b.column(c)), f"{name}.{c}"


def markers(out: Path) -> dict:
    return {p.name[6:-5]: json.loads(p.read_text()) for p in sorted((out / "_commits").glob("shard=*.json"))}


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def grown(env):
    """run-a on 8 good + 1 bad record (shards 0-2); shard 1 'crashes' (marker and files removed); 4 records
    are added; run-b resumes; run-ref runs from scratch on the grown input."""
    from ecgray.pipeline import Store, run

    root = env["root"]
    inp = root / "in"
    write(inp, BASE)
    bad_missing_signal(inp / BAD[0], BAD[1])
    a = run(str(inp), str(root / "out"), run_id="run-a", **KW)
    assert (a.records, a.shards, a.shards_written) == (9, 3, 3)
    first = {s: m["record_hash"] for s, m in markers(root / "out").items()}
    plan_a = manifest(root / "out")["shards"]
    Store(str(root / "out")).remove_shard("00001")  # as if run-a died before committing shard 1
    kept = snapshot(root / "out", ["00000", "00002"])
    time.sleep(0.05)  # a rewrite would show in mtime_ns
    write(inp, ADDED, seed0=100)
    b = run(str(inp), str(root / "out"), run_id="run-b", resume=True, **KW)
    ref = run(str(inp), str(root / "ref"), run_id="run-ref", **KW)
    return {"root": root, "input": inp, "out": root / "out", "ref": root / "ref", "a": a, "b": b, "ref_s": ref,
            "kept": kept, "first": first, "plan_a": plan_a}


def test_grow_then_resume_runs_exactly_the_new_records(grown):
    b, out = grown["b"], grown["out"]
    assert b.resume == {"committed_shards": 2, "committed_records": 6, "unfinished_shards": ["00001"],
                        "new_records": 4, "replanned_records": 0, "new_shards": ["00003", "00004"],
                        "next_shard": 5, "legacy_output": False}
    assert (b.records, b.shards, b.shards_skipped, b.shards_written) == (13, 5, 2, 3)
    assert (b.records_ok, b.records_error) == (12, 1)
    from ecgray.pipeline.summary import summary_rows

    assert ("resume", "2 shards kept (6 records), 1 rerun, 4 new records in 2 new shards") in summary_rows(b)
    plan = manifest(out)["shards"]
    # shard 1 again with the same records; the 4 new ones (first, middle, last, new folder) in new shards
    assert plan["00001"]["records"] == grown["plan_a"]["00001"]["records"]
    new = plan["00003"]["records"] + plan["00004"]["records"]
    assert new == sorted([key(*r) for r in ADDED], key=lambda k: (k.split("/")[1], k))
    assert sorted(k for e in plan.values() for k in e["records"]) == sorted(
        [key(*r) for r in BASE + ADDED] + [key(*BAD)])
    # committed shards' files and markers untouched (bytes and mtime)
    assert snapshot(out, ["00000", "00002"]) == grown["kept"]
    assert {s: m["record_hash"] for s, m in markers(out).items() if s in ("00000", "00002")} == {
        s: h for s, h in grown["first"].items() if s in ("00000", "00002")}
    assert sorted(markers(out)) == [f"{k:05d}" for k in range(5)]
    assert not (out / "_tmp").exists() and not (out / "_lock.json").exists()


def test_grown_tables_equal_a_run_from_scratch(grown):
    out, ref = grown["out"], grown["ref"]
    for name in KEYS:
        assert_same_per_key(table(out, name), table(ref, name), name)
    recs = table(out, "records")
    assert sorted(recs.column("record_key").to_pylist()) == sorted(key(*r) for r in BASE + ADDED)
    assert table(out, "errors").column("record_key").to_pylist() == [key(*BAD)]
    assert grown["ref_s"].shards == 5 and grown["ref_s"].resume == {}


def test_provenance_names_the_writing_run(grown):
    out = grown["out"]
    by_shard = {s: m["run_id"] for s, m in markers(out).items()}
    assert by_shard == {"00000": "run-a", "00001": "run-b", "00002": "run-a", "00003": "run-b", "00004": "run-b"}
    for s, rid in by_shard.items():
        for name in ("records", "relevance_summary", "errors"):
            f = out / name / f"shard={s}" / "part-0.parquet"
            got = set(pq.read_table(f, columns=["run_id"]).column("run_id").to_pylist())
            assert got <= {rid}, (s, name, got)
    m = manifest(out)
    assert m["run_id"] == "run-b" and [r["run_id"] for r in m["runs"]] == ["run-a", "run-b"]
    assert m["runs"][0]["mode"] == "new" and m["runs"][1]["mode"] == "resume"
    assert m["runs"][1]["shards_run"] == ["00001", "00003", "00004"] and m["runs"][1]["new_records"] == 4
    assert {s: e["run_id"] for s, e in m["shards"].items()} == by_shard  # planned by the run that wrote them
    assert (m["n_records"], m["n_shards"], m["next_shard"]) == (13, 5, 5)


def test_resume_of_a_finished_grown_run_does_nothing(grown, tmp_path):
    from ecgray.pipeline import run

    out = tmp_path / "out"
    shutil.copytree(grown["out"], out)
    s = run(str(grown["input"]), str(out), run_id="run-c", resume=True, **KW)
    assert (s.shards_skipped, s.shards_written, s.records_ok, s.records_error) == (5, 0, 12, 1)
    assert s.resume["new_records"] == 0 and s.resume["new_shards"] == []
    assert [r["run_id"] for r in manifest(out)["runs"]] == ["run-a", "run-b", "run-c"]


def test_removed_or_changed_records_are_refused(grown, tmp_path):
    from ecgray.pipeline import PipelineError, run

    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(grown["input"], inp)  # another path: keys and fingerprints are relative, so this resumes
    shutil.copytree(grown["out"], out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    for ext in ("hea", "dat"):
        os.remove(inp / "site_a" / f"r04.{ext}")
        os.remove(inp / "site_a" / f"r10.{ext}")
    with pytest.raises(PipelineError, match=r"input changed.*2 record\(s\) of committed shards are gone "
                                            r"\(site_a/r04, site_a/r10\).*--overwrite"):
        run(str(inp), str(out), resume=True, **KW)
    shutil.rmtree(inp)
    shutil.copytree(grown["input"], inp)
    edit_header(inp / "site_a" / "r08", lambda lines: [lines[0].replace(" 500 ", " 250 ")] + lines[1:])  # fs
    with pytest.raises(PipelineError, match=r"1 record\(s\) of committed shards changed \(site_a/r08\)"):
        run(str(inp), str(out), resume=True, **KW)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing written, lock gone
    assert manifest(out)["run_id"] == "run-b"


def test_outputs_without_a_plan_resume_or_refuse_clearly(grown, tmp_path):
    """Outputs of older versions (no plan in the manifest): resumable while their committed shards are still
    the consecutive chunks of the catalog; else refused, naming the reason."""
    from ecgray.pipeline import PipelineError, run

    def strip(out: Path) -> None:
        m = manifest(out)
        for k in ("shards", "next_shard", "runs"):
            m.pop(k)
        (out / "_manifest.json").write_text(json.dumps(m))

    old = tmp_path / "old"
    shutil.copytree(grown["ref"], old)  # a from-scratch run: consecutive chunks
    strip(old)
    s = run(str(grown["input"]), str(old), run_id="run-new", resume=True, **KW)
    assert (s.shards_skipped, s.shards_written) == (5, 0) and s.resume["legacy_output"] is True
    m = manifest(old)
    assert [r["run_id"] for r in m["runs"]] == ["run-ref", "run-new"]
    assert all(len(e["fingerprints"]) == len(e["records"]) for e in m["shards"].values())
    grown_old = tmp_path / "grown_old"
    shutil.copytree(grown["out"], grown_old)  # new records in new shards: not chunks of the catalog any more
    strip(grown_old)
    with pytest.raises(PipelineError, match="input changed.*older ecgray.*--overwrite"):
        run(str(grown["input"]), str(grown_old), resume=True, **KW)


# --------------------------------------------------------------------------- the lock
HOLDER = """
import sys, time
from ecgray.pipeline.lock import acquire_lock
lock = acquire_lock(sys.argv[1], sys.argv[2])
print("locked", flush=True)
time.sleep(300)
"""


def test_live_lock_refuses_then_dead_holder_is_taken_over(grown, tmp_path, caplog):
    from ecgray.pipeline import PipelineError, run

    out = tmp_path / "out"
    shutil.copytree(grown["out"], out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "other-run"], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        lock = json.loads((out / "_lock.json").read_text())
        assert (lock["run_id"], lock["pid"]) == ("other-run", proc.pid)
        for resume in (True, False):  # --resume, and a plain run: both refused, naming the holder
            with pytest.raises(PipelineError, match=rf"in use by run other-run \(host .*, pid {proc.pid}, "
                                                    r"started .*, last heartbeat \d+ s ago\)"):
                run(str(grown["input"]), str(out), run_id="second", resume=resume, **KW)
        assert json.loads((out / "_lock.json").read_text())["run_id"] == "other-run"  # not touched
        assert manifest(out)["run_id"] == "run-b"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # the holder died (SIGKILL: no release): its lock is taken over at once on this machine
    assert json.loads((out / "_lock.json").read_text())["run_id"] == "other-run"
    with caplog.at_level(logging.WARNING, logger="ecgray.pipeline"):
        s = run(str(grown["input"]), str(out), run_id="third", resume=True, **KW)
    assert s.shards_skipped == 5
    assert any("took over the stale lock of run other-run" in r.getMessage() and "not running" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert manifest(out)["runs"][-1]["took_over_lock_of"] == "other-run"
    assert not (out / "_lock.json").exists()


def fake_lock(path: Path, **over) -> None:
    info = {"run_id": "ghost", "token": "t", "host": "elsewhere", "machine": "0000", "pid": 4242,
            "started": "2020-01-01T00:00:00Z", "heartbeat_unix": time.time(), "ttl_s": 120.0}
    info.update(over)
    path.write_text(json.dumps(info))


def test_lock_of_another_machine_is_stale_only_by_heartbeat(tmp_path):
    from ecgray.pipeline import PipelineError
    from ecgray.pipeline.lock import OutputLock
    from ecgray.store import Store

    out = tmp_path / "out"
    out.mkdir()
    store = Store(str(out))
    fake_lock(out / "_lock.json")  # fresh heartbeat; pid 4242 means nothing here (another machine)
    with pytest.raises(PipelineError, match=r"in use by run ghost \(host elsewhere, pid 4242"):
        OutputLock(store, "mine").acquire()
    fake_lock(out / "_lock.json", heartbeat_unix=time.time() - 1000)
    lock = OutputLock(store, "mine").acquire()
    try:
        assert lock.took_over["run_id"] == "ghost"
        assert json.loads((out / "_lock.json").read_text())["run_id"] == "mine"
        assert sorted(os.listdir(out)) == ["_lock.json"]  # no temporary or renamed-away files left
    finally:
        lock.release()
    assert os.listdir(out) == []
    # garbage in the lock: live while young (a lock being written), stale when older than the ttl
    (out / "_lock.json").write_text("{not json")
    with pytest.raises(PipelineError, match="unreadable"):
        OutputLock(store, "mine").acquire()
    old = time.time() - 1000
    os.utime(out / "_lock.json", (old, old))
    OutputLock(store, "mine").acquire().release()
    assert os.listdir(out) == []


def test_heartbeat_refreshes_and_a_lost_lock_is_not_removed(tmp_path, caplog):
    from ecgray.pipeline.lock import OutputLock
    from ecgray.store import Store

    out = tmp_path / "out"
    store = Store(str(out))
    lock = OutputLock(store, "hb", ttl_s=10, heartbeat_s=0.05).acquire()
    try:
        t0 = json.loads((out / "_lock.json").read_text())["heartbeat_unix"]
        deadline = time.time() + 10
        while json.loads((out / "_lock.json").read_text())["heartbeat_unix"] == t0 and time.time() < deadline:
            time.sleep(0.02)
        assert json.loads((out / "_lock.json").read_text())["heartbeat_unix"] > t0
    finally:
        lock.release()
    assert not (out / "_lock.json").exists()
    lock = OutputLock(store, "hb", heartbeat_s=3600).acquire()  # heartbeats by hand below
    try:
        assert lock.refresh() is True
        fake = tmp_path / "fake.json"
        fake_lock(fake, run_id="usurper")  # another run decided this one was stale
        os.replace(fake, out / "_lock.json")
        with caplog.at_level(logging.ERROR, logger="ecgray.pipeline"):
            assert lock.refresh() is False
        assert lock.lost["run_id"] == "usurper"
        assert any("lost the lock" in r.getMessage() for r in caplog.records)
    finally:
        lock.release()
    assert json.loads((out / "_lock.json").read_text())["run_id"] == "usurper"  # not this run's to remove


def test_lock_released_on_refusal_error_and_keyboard_interrupt(grown, tmp_path, monkeypatch):
    from ecgray.pipeline import PipelineError, run

    out = tmp_path / "out"
    shutil.copytree(grown["out"], out)
    with pytest.raises(PipelineError, match="settings changed"):
        run(str(grown["input"]), str(out), resume=True, **{**KW, "targets": ["LBBB"]})
    assert not (out / "_lock.json").exists()

    def interrupted(*a, **k):
        assert json.loads((tmp_path / "fresh" / "_lock.json").read_text())["run_id"] == "ctrl-c"
        raise KeyboardInterrupt

    monkeypatch.setattr(RUN, "_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(str(grown["input"]), str(tmp_path / "fresh"), run_id="ctrl-c", **KW)
    assert not (tmp_path / "fresh" / "_lock.json").exists()
    assert manifest(tmp_path / "fresh")["run_id"] == "ctrl-c"  # planned, nothing committed: --resume continues


# --------------------------------------------------------------------------- S3
def s3_keys(client, prefix: str) -> list[str]:
    return sorted(o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="grow", Prefix=prefix)
                  for o in page.get("Contents", []))


def upload(client, folder: Path, records, prefix: str = "in") -> None:
    for site, name in records:
        for ext in ("hea", "dat"):
            client.put_object(Bucket="grow", Key=f"{prefix}/{site}/{name}.{ext}",
                              Body=(folder / site / f"{name}.{ext}").read_bytes())


def test_s3_grow_and_lock(env, grown):
    from ecgray.pipeline import PipelineError, Store, read_table, run
    from ecgray.pipeline.lock import OutputLock

    client, src = env["client"], grown["input"]
    first = BASE[:4]  # r02 r04 r06 r08 of site_a: shards 0 (3), 1 (1)
    upload(client, src, first)
    out = "s3://grow/out"
    a = run("s3://grow/in", out, run_id="s3-a", **KW)
    assert (a.records, a.shards_written) == (4, 2)
    etags = {k: client.head_object(Bucket="grow", Key=k)["ETag"] for k in s3_keys(client, "out/")}
    upload(client, src, [("site_a", "r05"), ("site_a", "r01")])  # middle and first
    # a live lock on S3 refuses; the holder's release lets the resume in
    holder = OutputLock(Store(out), "s3-holder").acquire()
    try:
        assert "out/_lock.json" in s3_keys(client, "out/")
        with pytest.raises(PipelineError, match=r"in use by run s3-holder"):
            run("s3://grow/in", out, run_id="s3-b", resume=True, **KW)
    finally:
        holder.release()
    assert "out/_lock.json" not in s3_keys(client, "out/")
    # a stale lock (old heartbeat, another machine) is taken over
    stale = {"run_id": "s3-ghost", "token": "t", "host": "elsewhere", "machine": "0000", "pid": 1,
             "started": "2020-01-01T00:00:00Z", "heartbeat_unix": time.time() - 1000, "ttl_s": 120.0}
    client.put_object(Bucket="grow", Key="out/_lock.json", Body=json.dumps(stale).encode())
    b = run("s3://grow/in", out, run_id="s3-b", resume=True, **KW)
    assert b.resume["new_records"] == 2 and b.resume["new_shards"] == ["00002"]
    assert (b.shards_skipped, b.shards_written, b.records_ok) == (2, 1, 6)
    keys = s3_keys(client, "out/")
    assert "out/_lock.json" not in keys and not [k for k in keys if k.startswith("out/_tmp/")]
    for k, e in etags.items():  # committed objects untouched
        if "shard=" in k:
            assert client.head_object(Bucket="grow", Key=k)["ETag"] == e, k
    commits = Store(out).commits()
    assert {s: m["run_id"] for s, m in commits.items()} == {"00000": "s3-a", "00001": "s3-a", "00002": "s3-b"}
    m = json.loads(client.get_object(Bucket="grow", Key="out/_manifest.json")["Body"].read())
    assert m["run_id"] == "s3-b" and m["runs"][-1]["took_over_lock_of"] == "s3-ghost"
    recs = read_table(out, "records")
    assert sorted(recs.column("record_key").to_pylist()) == sorted(key(*r) for r in first + [("site_a", "r05"),
                                                                                              ("site_a", "r01")])
    new = recs.filter(pc.equal(recs["run_id"], "s3-b")).column("record_key").to_pylist()
    assert sorted(new) == ["site_a/r01", "site_a/r05"]
