"""The console of `ecgray run` / `demo`: progress lines, Ray's own output kept off it, Ctrl-C, the summary."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ecgray.pipeline.progress import Progress, format_duration, format_rate

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[ecgray\] (\d+)/(\d+) shards, (\d+)/(\d+) records, \S+ records/s, "
                  r"(ETA \S+( min \d+ s| s| h \d+ min)?|done in .+), \d+ errors?$")
# what Ray prints on its own for a local run when left alone (see issue 13)
RAY_NOISE = ("Token authentication", "Started a local Ray instance", "is deprecated", "concurrency", "core_worker",
             "constructor arguments", "memory=", "Progress bars disabled", "Execution plan", "execution finished",
             "Starting execution", "issue", "WARNING", " E ")


# --------------------------------------------------------------------------- the progress reporter
def test_format_duration_and_rate():
    assert [format_duration(s) for s in (None, 0, 25.4, 119, 125, 3 * 3600 + 7 * 60)] == \
        ["?", "0 s", "25 s", "119 s", "2 min 05 s", "3 h 07 min"]
    assert [format_rate(r) for r in (0.4234, 3.514, 35.24, 352.4)] == ["0.42", "3.51", "35.2", "352"]


def test_plain_progress_lines_with_fake_clock():
    out = io.StringIO()
    p = Progress(4, 128, interval=10, stream=out, live=False, clock=lambda: 0.0, thread=False)
    p.start(now=100.0)
    p.tick(now=105.0)  # not due yet
    p.update(records=32, errors=1, windows=40, now=108.0)  # not due yet either
    p.tick(now=110.0)
    p.update(records=32, now=115.0)  # 5 s after the last line: nothing
    p.tick(now=120.0)
    p.update(shards=2, records=64, errors=1, now=130.0)
    p.close(now=140.0)
    assert out.getvalue().splitlines() == [
        "[ecgray] explaining 128 records in 4 shards",
        "[ecgray] 1/4 shards, 32/128 records, 3.20 records/s, ETA 30 s, 1 error",
        "[ecgray] 2/4 shards, 64/128 records, 3.20 records/s, ETA 20 s, 1 error",
        "[ecgray] 4/4 shards, 128/128 records, 4.27 records/s, ETA 0 s, 2 errors",
        "[ecgray] 4/4 shards, 128/128 records, 3.20 records/s, done in 40 s, 2 errors",
    ]
    assert p.windows == 40
    assert all(LINE.match(line) for line in out.getvalue().splitlines()[1:])


def test_plain_progress_while_nothing_finishes_is_a_heartbeat():
    """No shard done for a while: one line every 6 intervals, not the same line every interval."""
    out = io.StringIO()
    p = Progress(3, 48, interval=10, stream=out, live=False, clock=lambda: 0.0, thread=False)
    p.start(now=0.0)
    for t in range(10, 130, 10):
        p.tick(now=float(t))
    p.update(records=16, now=131.0)
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["[ecgray] 0/3 shards, 0/48 records, - records/s, ETA ?, 0 errors",
                         "[ecgray] 0/3 shards, 0/48 records, - records/s, ETA ?, 0 errors",
                         "[ecgray] 1/3 shards, 16/48 records, 0.12 records/s, ETA 4 min 22 s, 0 errors"]


def test_progress_closed_after_interrupt_leaves_the_last_word_to_the_caller():
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with Progress(2, 2, interval=10, stream=out, live=False, thread=False):
            raise KeyboardInterrupt
    assert out.getvalue().splitlines() == ["[ecgray] explaining 2 records in 2 shards"]


def test_live_bar_fits_80_columns():
    out = io.StringIO()
    p = Progress(40, 12800, stream=out, live=True, thread=False)
    p.start()
    p.update(records=320, errors=3)
    p.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [seg for line in text.splitlines() for seg in line.split("\r") if seg.strip()]
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert "1/40 shards 320/12800 rec" in lines[-1] and "3 err" in lines[-1]


# --------------------------------------------------------------------------- the plan and its requests
class _FakeDataset:
    def __init__(self, calls):
        self.calls = calls

    def map_batches(self, fn, **kw):
        self.calls.append((getattr(fn, "__name__", str(fn)), kw))
        return self


def test_plan_names_compute_strategies_and_memory_not_concurrency():
    """`concurrency=` is deprecated since Ray 2.51 (one warning per stage): the plan says `compute=`, and each
    CPU task stage requests memory (Ray Data's high-memory detector otherwise advises `memory=` requests)."""
    import ray.data

    from ecgray.explain import ExplainConfig
    from ecgray.pipeline.config import RunConfig
    from ecgray.pipeline.run import _plan

    calls = []
    fake = SimpleNamespace(data=SimpleNamespace(from_items=lambda items, **kw: _FakeDataset(calls),
                                                TaskPoolStrategy=ray.data.TaskPoolStrategy,
                                                ActorPoolStrategy=ray.data.ActorPoolStrategy))
    _plan(fake, [], RunConfig(model="demo"), ExplainConfig(model_name="demo", model_id="demo"), output="o",
          run_id="r", gpu=False, n_actors=1, torch_threads=1, cpu_tasks=3, retry={}, cpu_memory=123 << 20)
    assert [c[0] for c in calls] == ["read_preprocess", "AttributeActor", "beats_and_tables", "write_shard"]
    for name, kw in calls:
        assert "concurrency" not in kw, name
        if name == "AttributeActor":
            assert isinstance(kw["compute"], ray.data.ActorPoolStrategy)
        else:
            assert isinstance(kw["compute"], ray.data.TaskPoolStrategy) and kw["compute"].size == 3
            assert kw["memory"] == 123 << 20


def test_cpu_stage_memory_from_the_shard_and_capped_by_the_node():
    from ecgray.models.spec import RIBEIRO2020
    from ecgray.pipeline.run import CPU_STAGE_BASE_MB, _cpu_stage_memory

    todo = [{"items": [0] * 16}, {"items": [0] * 4}]
    big = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"memory": 64 << 30}}])
    got = _cpu_stage_memory(big, todo, methods=["a", "b"], targets=None, policy="first", spec=RIBEIRO2020)
    assert got == (CPU_STAGE_BASE_MB << 20) + 4 * 16 * 12 * 4096 * 4 * (1 + 2 * 6)
    small = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"memory": 2 << 30}}])
    assert _cpu_stage_memory(small, todo, methods=["a"], targets=["AF"], policy="first", spec=RIBEIRO2020) == (2 << 30) // 4
    assert _cpu_stage_memory(SimpleNamespace(nodes=lambda: []), todo, methods=["a"], targets=None,
                             policy="first", spec=RIBEIRO2020) is None


# --------------------------------------------------------------------------- summary and check tables
def _summary():
    from ecgray.pipeline import RunSummary

    return RunSummary(run_id="abc123", output="/data/some/rather/long/output/folder/for/the/run", records=50,
                      records_ok=48, records_error=2, windows=96, shards=4, shards_written=3, shards_skipped=1,
                      rows={"records": 72, "relevance_summary": 1728, "beats": 864},
                      stage_seconds={"read": 1.3, "attribute": 31.8, "beats": 3.4, "write": 1.5},
                      wall_s=54.1, records_per_s=0.89)


def test_summary_counts_windows_plain_off_a_terminal():
    from rich.console import Console

    from ecgray.pipeline import print_summary

    buf = io.StringIO()
    print_summary(_summary(), Console(file=buf, force_terminal=False, width=80))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "ecgray run abc123"
    assert "records explained / errors: 48 / 2" in lines
    assert "record windows explained: 96" in lines
    assert "shards written / skipped / total: 3 / 1 / 4" in lines
    assert "stage s read/attribute/beats/write: 1.3 / 31.8 / 3.4 / 1.5" in lines
    assert not any(ch in buf.getvalue() for ch in "┌│━")


@pytest.mark.parametrize("width", [80, 200])
def test_summary_table_fits_80_columns_on_a_terminal(width):
    from rich.console import Console

    from ecgray.pipeline import print_summary

    buf = io.StringIO()
    print_summary(_summary(), Console(file=buf, force_terminal=True, width=width, color_system=None))
    lines = buf.getvalue().splitlines()
    assert "│" in buf.getvalue() and max(len(line) for line in lines) <= 80, lines
    assert any("record windows explained" in line and "96" in line for line in lines)


def test_demo_check_table_fits_80_columns_or_is_plain():
    import pyarrow as pa
    from rich.console import Console

    from ecgray.demo import print_check_table

    rows = [{"method": m, "target": t, "region": r, "n_records": 6, "ratio": 12.98, "median_record_ratio": 13.35,
             "net_share_in": -0.10, "frac_cells_in": 0.59, "mean_relevance_in": None, "frac_negative": None}
            for m in ("integrated_gradients", "lrp_alpha_beta") for t, r in (("AF", "f_wave"),
                                                                            ("LBBB", "QRS+T (named leads)"))]
    rows.append({**rows[0], "region": "P (normal records)", "ratio": None, "median_record_ratio": None,
                 "net_share_in": None, "frac_cells_in": None, "mean_relevance_in": -0.00394, "frac_negative": 1.0})
    info = {"seed": 2000, "n_per_class": 6, "AF_correct": 6, "LBBB_correct": 6, "normal_not_AF": 6}
    buf = io.StringIO()
    print_check_table(pa.Table.from_pylist(rows), info, Console(file=buf, force_terminal=True, width=80,
                                                                 color_system=None))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert sum("…" in line for line in lines) == 0, lines  # nothing cut off
    assert any(line.split()[:3] == ["LRP-ab", "LBBB", "QRS+T*"] for line in lines), lines
    buf = io.StringIO()
    print_check_table(pa.Table.from_pylist(rows), info, Console(file=buf, force_terminal=False, width=80))
    plain = buf.getvalue().splitlines()
    assert len(plain) == 1 + len(rows)
    assert plain[2] == ("integrated_gradients LBBB QRS+T (named leads): n=6 ratio_in_out=12.98 "
                        "median_record_ratio=13.35 net_share_in=-0.10 frac_cells_in=0.59")


# --------------------------------------------------------------------------- real runs (subprocess, local Ray)
def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ECGRAY_RAY_CONSOLE")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT), ECGRAY_PROGRESS_INTERVAL="1", **extra)
    return env


def _cmd(inp, out, *extra) -> list[str]:
    return [sys.executable, "-m", "ecgray.cli", "run", "--input", str(inp), "--output", str(out), "--model", "demo",
            "--methods", "saliency", "--targets", "AF", "--shard-size", "2", "--num-actors", "1", *extra]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from ecgray.synth import make_dataset

    d = tmp_path_factory.mktemp("console") / "in"
    make_dataset(d, 8, seed=3)
    return d


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in RAY_NOISE)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_off_a_terminal_prints_progress_lines_and_no_ray_internals(records, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(_cmd(records, out), env=_env(), capture_output=True, text=True, timeout=280, cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-4000:]
    assert "[ecgray] explaining 8 records in 4 shards" in res.stderr
    progress = [m for m in map(LINE.match, res.stderr.splitlines()) if m]
    assert progress and progress[-1].group(0).startswith("[ecgray] 4/4 shards, 8/8 records, ")
    assert "done in" in progress[-1].group(0)
    assert _noise(text) == [], _noise(text)
    # everything on stderr is ecgray's (Ray's own output went to its session logs)
    assert all(line.startswith("[ecgray] ") for line in res.stderr.splitlines() if line.strip()), res.stderr
    assert "record windows explained: 8" in res.stdout and "records explained / errors: 8 / 0" in res.stdout
    assert "summary: {" in res.stdout and "┌" not in res.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigint_says_how_far_it_got_exits_130_and_resume_finishes(records, tmp_path):
    out = tmp_path / "out"
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as log:
        # a session of its own, so the signal goes to the whole group as Ctrl-C in a terminal does
        proc = subprocess.Popen(_cmd(records, out), env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp_path)
        commits = out / "_commits"
        try:
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None:
                if commits.exists() and any(p.name.endswith(".json") for p in commits.iterdir()):
                    break
                time.sleep(0.05)
            assert proc.poll() is None, log_path.read_text()[-3000:]
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    text = log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    n_done = len([p for p in commits.iterdir() if p.name.endswith(".json")])
    assert rc == 130, text[-3000:]
    assert lines[-1] == f"interrupted after {n_done} of 4 shards; rerun with --resume", text[-3000:]
    assert 1 <= n_done <= 4  # a shard may still commit while Ray stops: the message counts it
    assert _noise(text) == [], _noise(text)

    done = subprocess.run(_cmd(records, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=280,
                          cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"shards written / skipped / total: {4 - n_done} / {n_done} / 4" in done.stdout
    assert "records explained / errors: 8 / 0" in done.stdout and "record windows explained: 8" in done.stdout


def test_run_config_is_one_checked_frozen_object():
    """``run``'s options are one frozen RunConfig: aliases resolved, params per method, bad values and unknown
    options refused before anything runs."""
    import dataclasses

    from ecgray.pipeline import RunConfig

    c = RunConfig.from_kwargs(model="demo", methods=["ig", "saliency", "ig"], params={"integrated_gradients": {"n_steps": 4}},
                              targets=["AF"], autocast=True)
    assert c.methods == ("integrated_gradients", "saliency") and c.targets == ("AF",) and c.precision == "bf16"
    assert c.params == {"integrated_gradients": {"n_steps": 4}, "saliency": {}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.shard_size = 3
    assert c.with_(shard_size=3).shard_size == 3 and c.shard_size == 32
    with pytest.raises(TypeError, match=r"unknown run option\(s\) \['shards'\]"):
        RunConfig.from_kwargs(model="demo", shards=3)
    for bad in ({"shard_size": 0}, {"output_kind": "grad"}, {"precision": "fp8"}, {"methods": ["nope"]}):
        with pytest.raises(ValueError):
            RunConfig(model="demo", **bad)
