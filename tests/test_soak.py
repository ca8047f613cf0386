"""Soak: 5,000 synthetic records (1 % bad) through the local Ray pipeline; exact counts, flat memory.

50 distinct synthetic WFDB records are rendered once; the 4,950 good inputs are headers rewritten under new
names with their ``.dat`` hard-linked to one of the 50; the 50 bad ones (10 each of five kinds: truncated,
missing signal file, garbled header, 1 s long, NaN samples) are spread over the whole run. A sampler thread
records every 0.5 s the memory of the driver and of every Ray worker process (RSS and USS: USS leaves out
the object store's shared pages) and how many records are committed. Memory is flat when the peak over the
last 1,000 records is within 1.3x of the peak over the first 1,000 (start-up, before the first commit, is in
neither: the driver then holds the catalog and loads the model once to check it).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.corpus import SOAK_BAD, write_ecg

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

N = int(os.environ.get("ECGRAY_SOAK_N", "5000"))
N_BAD = N // 100
N_TEMPLATES = 50
SHARD = 32
TARGETS = ["AF", "LBBB"]
KINDS = ("normal", "AF", "LBBB", "1dAVb", "SB", "ST")
BOUND = 1.3


def make_soak_input(folder: Path) -> dict[str, tuple[str, str]]:
    """Write the input; returns ``{record id: (stage, error_type)}`` of the bad records."""
    tmpl = folder.parent / "templates"
    for t in range(N_TEMPLATES):
        write_ecg(tmpl, f"T{t:02d}", kind=KINDS[t % len(KINDS)], seed=1000 + t)
    folder.mkdir()
    bad_kinds = list(SOAK_BAD)
    bad: dict[str, tuple[str, str]] = {}
    step = N // N_BAD
    for k in range(N):
        name = f"S{k:05d}"
        if k % step == step // 2 and len(bad) < N_BAD:
            kind = bad_kinds[len(bad) % len(bad_kinds)]
            writer, stage, etype = SOAK_BAD[kind]
            writer(folder, name, seed=k)
            bad[name] = (stage, etype)
            continue
        t = f"T{k % N_TEMPLATES:02d}"
        text = (tmpl / f"{t}.hea").read_text()
        (folder / f"{name}.hea").write_text(text.replace(f"{t}.dat", f"{name}.dat").replace(f"{t} ", f"{name} ", 1))
        os.link(tmpl / f"{t}.dat", folder / f"{name}.dat")
    return bad


class Sampler(threading.Thread):
    """Memory of the driver (this process) and of its descendant Ray workers, with the committed record count."""

    def __init__(self, commits: Path, period: float = 0.5):
        super().__init__(daemon=True)
        self.commits, self.period = commits, period
        self.me = psutil.Process()
        self.samples: list[dict] = []
        self.stop_event = threading.Event()

    def committed(self) -> int:
        try:
            return len(os.listdir(self.commits)) * SHARD
        except FileNotFoundError:
            return 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                d = self.me.memory_full_info()
                workers = []
                for p in self.me.children(recursive=True):
                    try:
                        cmd = " ".join(p.cmdline())
                        if cmd.startswith("ray::") or "default_worker.py" in cmd:
                            workers.append(p.memory_full_info())
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                mb = 1 << 20
                self.samples.append({
                    "t": time.perf_counter(), "done": self.committed(), "n_workers": len(workers),
                    "driver_rss": d.rss / mb, "driver_uss": d.uss / mb,
                    "worker_max_rss": max((w.rss for w in workers), default=0) / mb,
                    "worker_max_uss": max((w.uss for w in workers), default=0) / mb,
                    "workers_uss": sum(w.uss for w in workers) / mb,
                })
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            self.stop_event.wait(self.period)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


@pytest.mark.slow
def test_soak_5000_records(ray_local, tmp_path):
    from ecgray.pipeline import read_table, run

    t0 = time.perf_counter()
    bad = make_soak_input(tmp_path / "in")
    t_make = time.perf_counter() - t0
    assert len(bad) == N_BAD and len(list((tmp_path / "in").glob("*.hea"))) == N
    out = tmp_path / "out"
    sampler = Sampler(out / "_commits")
    sampler.start()
    t1 = time.perf_counter()
    try:
        # waves="fixed": the soak measures exactly-once and flat memory at scale; delineation (0.33 s per record,
        # ~14 min more here on 2 cores) is measured in tests/test_delineate.py
        s = run(str(tmp_path / "in"), str(out), model="demo", methods=["saliency"], targets=TARGETS,
                shard_size=SHARD, progress=False, waves="fixed")
    finally:
        sampler.stop()
    wall = time.perf_counter() - t1

    # exact counts
    assert (s.records, s.records_ok, s.records_error) == (N, N - N_BAD, N_BAD)
    recs = read_table(str(out), "records", columns=["record_id"]).column("record_id").to_pylist()
    errs = read_table(str(out), "errors").to_pylist()
    assert len(recs) == N - N_BAD and len(set(recs)) == N - N_BAD
    assert sorted(e["record_id"] for e in errs) == sorted(bad)
    assert {e["record_id"]: (e["stage"], e["error_type"]) for e in errs} == bad
    assert set(recs) | set(bad) == {f"S{k:05d}" for k in range(N)} and not set(recs) & set(bad)
    n_summary = read_table(str(out), "relevance_summary", columns=["record_id"]).num_rows
    assert n_summary == (N - N_BAD) * len(TARGETS) * 12
    by_type: dict[str, int] = {}
    for stage, etype in bad.values():
        by_type[etype] = by_type.get(etype, 0) + 1

    # flat memory: peak over the whole run vs peak over the first 1,000 records
    samp = sampler.samples
    early = [x for x in samp if 0 < x["done"] <= N // 5]
    assert len(early) >= 3 and len(samp) > len(early), (len(early), len(samp))
    keys = ("driver_rss", "driver_uss", "worker_max_rss", "worker_max_uss", "workers_uss")
    peak_early = {k: max(x[k] for x in early) for k in keys}
    peak_all = {k: max(x[k] for x in samp) for k in keys}
    last = [x for x in samp if x["done"] >= N - N // 5] or samp[-3:]
    peak_last = {k: max(x[k] for x in last) for k in keys}
    ratio = {k: peak_last[k] / peak_early[k] for k in keys}
    print(f"\nsoak: {N} records ({N - N_BAD} ok, {N_BAD} errors: {by_type}); input written in {t_make:.1f} s; "
          f"pipeline {wall:.1f} s = {N / wall:.1f} records/s; shards {s.shards}; stage seconds "
          + ", ".join(f"{k} {v:.0f}" for k, v in s.stage_seconds.items()))
    print(f"memory MB: peak over the first {N // 5} records / over the last {N // 5} (ratio) / whole run incl. "
          "start-up:")
    for k in keys:
        print(f"  {k:15s} {peak_early[k]:7.0f} / {peak_last[k]:7.0f} ({ratio[k]:.2f}) / {peak_all[k]:7.0f}")
    print(f"  samples {len(samp)}, worker processes {min(x['n_workers'] for x in samp)}-"
          f"{max(x['n_workers'] for x in samp)}")
    for k in ("driver_uss", "worker_max_uss", "driver_rss"):
        assert ratio[k] <= BOUND, (k, peak_early[k], peak_all[k])
