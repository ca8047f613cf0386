"""Faults: a killed attribution actor, stages raising on first try, a partly written shard, a killed driver.

Every faulty run must end with tables equal to an uninterrupted run (no row lost or duplicated).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_pipeline import KEYS, assert_no_duplicates, assert_tables_close, beats_available, make_input, model_file

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
N = 12
SHARD = 3  # 4 shards
TARGETS = ["AF", "LBBB"]
TABLES = ("records", "relevance_summary", "errors") + (("beats",) if beats_available() else ())


@pytest.fixture(scope="module")
def base(ray_local, tmp_path_factory, cpsc_dir):
    from ecgray.pipeline import run

    root = tmp_path_factory.mktemp("faults")
    inp = make_input(root / "in", cpsc_dir, N, bad=False)
    model = model_file(root)
    kw = dict(model=model, methods=["saliency"], targets=TARGETS, shard_size=SHARD, progress=False)
    s = run(str(inp), str(root / "ref"), **kw)
    assert s.records_ok == N
    return {"root": root, "input": inp, "ref": root / "ref", "kw": kw}


def assert_same_as_reference(out: Path, ref: Path) -> None:
    from ecgray.pipeline import read_table

    for name in TABLES:
        got = read_table(out, name)
        assert_no_duplicates(got, KEYS[name])
        assert_tables_close(read_table(ref, name), got, name)
    assert sorted(p.name for p in (out / "_commits").iterdir()) == [f"shard={k:05d}.json" for k in range(N // SHARD)]
    assert not (out / "_tmp").exists()


def test_killed_actor_and_failing_stages_are_retried(base, tmp_path):
    """Attribution actor os._exit(1)s on shard 1; read raises on shard 0, beats on shard 2, and shard 3
    fails after its files were moved into place but before its commit: all retried, equal tables."""
    from ecgray.pipeline import run

    marks = tmp_path / "marks"
    marks.mkdir()
    faults = [
        {"stage": "attribute", "mode": "exit", "shards": ["00001"], "marker_dir": str(marks)},
        {"stage": "read", "mode": "raise", "shards": ["00000"], "marker_dir": str(marks)},
        {"stage": "beats", "mode": "raise", "shards": ["00002"], "marker_dir": str(marks)},
        {"stage": "commit", "mode": "raise", "shards": ["00003"], "marker_dir": str(marks)},
    ]
    out = tmp_path / "out"
    s = run(str(base["input"]), str(out), faults=faults, **base["kw"])
    assert sorted(p.name for p in marks.iterdir()) == ["attribute-00001", "beats-00002", "commit-00003", "read-00000"]
    assert (s.shards_written, s.records_ok, s.records_error) == (4, N, 0)
    assert_same_as_reference(out, base["ref"])


def test_killed_driver_then_resume(base, tmp_path):
    """SIGKILL the `ecgray run` driver after its first commit; `--resume` finishes with equal tables."""
    out = tmp_path / "out"
    gcs = ray.get_runtime_context().gcs_address  # the driver joins this test's Ray instance (no second cluster)
    env = {**os.environ, "RAY_ADDRESS": gcs, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ecgray.cli", "run", "--input", str(base["input"]), "--output", str(out),
           "--model", base["kw"]["model"], "--methods", "saliency", "--targets", ",".join(TARGETS),
           "--shard-size", str(SHARD)]
    log = open(tmp_path / "driver.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    commits = out / "_commits"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if commits.exists() and any(commits.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    n_at_kill = len(list(commits.iterdir()))
    assert 1 <= n_at_kill < N // SHARD, n_at_kill
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "summary:" in done.stdout
    import json

    summary = json.loads(done.stdout.split("summary: ", 1)[1].splitlines()[0])
    assert summary["shards_skipped"] >= n_at_kill
    assert summary["shards_skipped"] + summary["shards_written"] == N // SHARD
    assert summary["records_ok"] == N
    assert_same_as_reference(out, base["ref"])
