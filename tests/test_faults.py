"""Faults: a killed attribution actor, killed CPU workers, stages raising on first try (chosen and seeded-random
shards), a partly written shard, a killed driver.

Every faulty run must end with tables equal to an uninterrupted run (no row lost or duplicated), and every
input record exactly once across ``records`` and ``errors``.
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
TABLES = ("records", "relevance_summary", "errors") + (("beats", "beats_relevance") if beats_available() else ())


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


def assert_same_as_reference(out: Path, ref: Path, n_shards: int = N // SHARD) -> None:
    from ecgray.pipeline import read_table

    for name in TABLES:
        got = read_table(out, name)
        assert_no_duplicates(got, KEYS[name])
        assert_tables_close(read_table(ref, name), got, name)
    assert sorted(p.name for p in (out / "_commits").iterdir()) == [f"shard={k:05d}.json" for k in range(n_shards)]
    assert not (out / "_tmp").exists()


def assert_accounted(out: Path, ok_ids: set[str], bad_ids: set[str] = frozenset()) -> None:
    """Every input record exactly once: good ones once in records (policy first), bad ones once in errors."""
    from ecgray.pipeline import read_table

    recs = read_table(out, "records").column("record_id").to_pylist()
    errs = read_table(out, "errors").column("record_id").to_pylist()
    assert sorted(recs) == sorted(ok_ids), set(recs) ^ set(ok_ids)
    assert sorted(errs) == sorted(bad_ids), set(errs) ^ set(bad_ids)


GOOD_IDS = {f"A{i:04d}" for i in range(1, N + 1)}


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
    assert_accounted(out, GOOD_IDS)


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
    assert_accounted(out, GOOD_IDS)


# --------------------------------------------------------------------------- with bad records in the input
BAD = {"B_trunc": "truncated", "B_nan": "nan_or_inf", "B_short": "too_short"}
N_BAD_SHARDS = -(-(N + len(BAD)) // SHARD)  # 5


@pytest.fixture(scope="module")
def base_bad(base, tmp_path_factory):
    """The fault input plus three bad records (read and preprocess errors), and its uninterrupted reference."""
    import shutil

    from ecgray.pipeline import run
    from tests.corpus import bad_nan, bad_short, bad_truncated_dat

    root = tmp_path_factory.mktemp("faults_bad")
    inp = root / "in"
    shutil.copytree(base["input"], inp)
    bad_truncated_dat(inp, "B_trunc")
    bad_nan(inp, "B_nan")
    bad_short(inp, "B_short")
    s = run(str(inp), str(root / "ref"), **base["kw"])
    assert (s.records_ok, s.records_error, s.shards) == (N, len(BAD), N_BAD_SHARDS)
    assert_accounted(root / "ref", GOOD_IDS, set(BAD))
    return {"input": inp, "ref": root / "ref", "kw": base["kw"]}


def test_killed_cpu_workers_are_retried(base_bad, tmp_path):
    """os._exit(1) kills the worker process of a read task (shard 0), a beats task (shard 2) and a write task
    (shard 4) on their first try; Ray restarts the tasks in new workers and the tables equal the reference."""
    from ecgray.pipeline import read_table, run

    marks = tmp_path / "marks"
    marks.mkdir()
    faults = [{"stage": st, "mode": "exit", "shards": [sh], "marker_dir": str(marks)}
              for st, sh in (("read", "00000"), ("beats", "00002"), ("write", "00004"))]
    out = tmp_path / "out"
    s = run(str(base_bad["input"]), str(out), faults=faults, **base_bad["kw"])
    killed = sorted(p.name for p in marks.iterdir())
    assert killed == ["beats-00002", "read-00000", "write-00004"]
    pids = {p.name: int(p.read_text()) for p in marks.iterdir()}
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()  # three distinct worker processes
    assert (s.shards_written, s.records_ok, s.records_error) == (N_BAD_SHARDS, N, len(BAD))
    assert_same_as_reference(out, base_bad["ref"], N_BAD_SHARDS)
    assert_accounted(out, GOOD_IDS, set(BAD))
    errs = {r["record_id"]: r["error_type"] for r in read_table(out, "errors").to_pylist()}
    assert errs == BAD
    print(f"\nkilled workers: {killed}; records {N} + errors {len(BAD)} = {N + len(BAD)} inputs, each once")


def test_random_stage_failures_seeded(base_bad, tmp_path):
    """Each stage raises on its first try for a seeded random subset of shards (about half of them); every
    failure is retried, and the tables equal the uninterrupted run."""
    import numpy as np

    from ecgray.pipeline import run

    rng = np.random.default_rng(20261125)
    shards = [f"{k:05d}" for k in range(N_BAD_SHARDS)]
    marks = tmp_path / "marks"
    marks.mkdir()
    faults, expected = [], set()
    for stage in ("read", "attribute", "beats", "write", "commit"):
        chosen = [sh for sh in shards if rng.random() < 0.5]
        faults.append({"stage": stage, "mode": "raise", "shards": chosen, "marker_dir": str(marks)})
        expected |= {f"{stage}-{sh}" for sh in chosen}
    assert len(expected) >= 8  # with this seed: a real mix over all stages
    out = tmp_path / "out"
    s = run(str(base_bad["input"]), str(out), faults=faults, **base_bad["kw"])
    assert {p.name for p in marks.iterdir()} == expected  # every chosen fault fired exactly on its first try
    assert (s.shards_written, s.records_ok, s.records_error) == (N_BAD_SHARDS, N, len(BAD))
    assert_same_as_reference(out, base_bad["ref"], N_BAD_SHARDS)
    assert_accounted(out, GOOD_IDS, set(BAD))
    print(f"\nseeded faults ({len(expected)}): {sorted(expected)}")
