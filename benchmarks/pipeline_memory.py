"""Peak memory of the Ray pipeline for N vs 10 N records (streaming, not collecting).

    python benchmarks/pipeline_memory.py [--n 150] [--factor 10] [--repeat 3] [--object-store-mb MB]

Copies of the CPSC records in ../shared/data (headers rewritten under new names, signal files
hard-linked) make the larger input. Each size runs in its own process with local Ray (2 CPUs);
a sampler thread records every 0.25 s the RSS of the driver and of every Ray worker process
(the driver's descendants), and per process kind. Each size runs ``--repeat`` times (3) and the
ratio compares the medians. Ray starts through ``ecgray.pipeline.run.ray_init_if_needed``, i.e. with
ecgray's bounded local object store (``--object-store-mb`` to change it). Writes
benchmarks/results/pipeline_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / ".." / "shared" / "data" / "cpsc2018-a0001-a0150"


def make_input(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in SRC.glob("*.hea"))
    for k in range(n):
        old = names[k % len(names)]
        new = old if k < len(names) else f"R{k // len(names):03d}{old}"
        (folder / f"{new}.hea").write_text((SRC / f"{old}.hea").read_text().replace(old, new))
        dst = folder / f"{new}.mat"
        if not dst.exists():
            os.link((SRC / f"{old}.mat").resolve(), dst)
    return folder


def child(n: int, model: str, method: str, work: Path, object_store_mb: int | None) -> dict:
    import psutil
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    inp = make_input(work / f"in{n}", n)
    me = psutil.Process()
    # RSS counts object-store (shared memory) pages a process has touched; USS counts only the process's
    # own memory, so growth in USS is what a leak or a collecting stage would show.
    peak = {"driver": 0, "worker_max": 0, "total": 0, "driver_uss": 0, "worker_max_uss": 0, "total_uss": 0}
    by_proc: dict[str, int] = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                kids = me.children(recursive=True)
                info = {k.pid: k.memory_full_info() for k in kids}
                workers = [k.pid for k in kids if "ray::" in " ".join(k.cmdline()[:1]) or "default_worker" in " ".join(k.cmdline())]
                d = me.memory_full_info()
                for k in kids:  # per process kind (raylet, gcs_server, ray::IDLE, ray::MapWorker(...), ...)
                    name = k.cmdline()[0].split("/")[-1].split(" ")[0][:40] if k.cmdline() else k.name()
                    by_proc[name] = max(by_proc.get(name, 0), info[k.pid].rss)
                for key, attr in (("", "rss"), ("_uss", "uss")):
                    dv = getattr(d, attr)
                    peak["driver" + key] = max(peak["driver" + key], dv)
                    peak["worker_max" + key] = max(peak["worker_max" + key], max((getattr(info[p], attr) for p in workers), default=0))
                    peak["total" + key] = max(peak["total" + key], dv + sum(getattr(v, attr) for v in info.values()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            stop.wait(0.25)

    from ecgray.pipeline import run
    from ecgray.pipeline.run import ray_init_if_needed

    os.environ.pop("RAY_ADDRESS", None)
    ray_init_if_needed(object_store_mb=object_store_mb, num_cpus=2, log_to_driver=False)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    s = run(str(inp), str(work / f"out{n}"), model=model, methods=(method,), targets=["AF"], shard_size=32,
            overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    ray.shutdown()
    mb = 1 << 20
    return {"records": n, "records_ok": s.records_ok, "wall_s": wall, "records_per_s": s.records_per_s,
            "stage_seconds": s.stage_seconds, "peak_rss_mb": {k: v / mb for k, v in peak.items()},
            "peak_rss_mb_by_process": {k: round(v / mb, 1) for k, v in sorted(by_proc.items())}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--method", default="saliency")
    ap.add_argument("--object-store-mb", type=int, default=None,
                    help="local Ray object store (default: ecgray's, LOCAL_OBJECT_STORE_MB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each size (the ratio compares medians)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_memory.json"))
    a = ap.parse_args()
    if a.child is not None:
        print("RESULT " + json.dumps(child(a.child, a.model, a.method, Path(a.work), a.object_store_mb)))
        return
    from ecgray.pipeline.run import LOCAL_OBJECT_STORE_MB

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for rep in range(a.repeat):
            for n in (a.n, a.n * a.factor):
                cmd = [sys.executable, __file__, "--child", str(n), "--work", work, "--model", a.model,
                       "--method", a.method]
                if a.object_store_mb is not None:
                    cmd += ["--object-store-mb", str(a.object_store_mb)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    sys.exit(f"child for {n} records failed:\n{out.stderr[-3000:]}")
                rows.append({"repeat": rep, **json.loads(line[-1][7:])})
                r = rows[-1]
                m = r["peak_rss_mb"]
                print(f"{n:6d} records: {r['records_per_s']:.1f} rec/s; peak RSS / USS (MB): driver {m['driver']:.0f} / "
                      f"{m['driver_uss']:.0f}, largest worker {m['worker_max']:.0f} / {m['worker_max_uss']:.0f}, "
                      f"all processes {m['total']:.0f} / {m['total_uss']:.0f}", flush=True)
    # medians over the repeats: the short run's peak of "all processes" depends on how many worker
    # processes Ray has started by the time it ends (3.2-3.8 GB at 150 records in single runs)
    med = {n: {k: float(np.median([r["peak_rss_mb"][k] for r in rows if r["records"] == n]))
               for k in rows[0]["peak_rss_mb"]} for n in (a.n, a.n * a.factor)}
    ratio = {k: med[a.n * a.factor][k] / med[a.n][k] for k in med[a.n]}
    print(f"peak memory ratio ({a.factor}x records, medians of {a.repeat}): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    osm = LOCAL_OBJECT_STORE_MB if a.object_store_mb is None else a.object_store_mb
    Path(a.out).write_text(json.dumps({"model": a.model, "method": a.method, "object_store_mb": osm,
                                       "repeat": a.repeat, "runs": rows, "median_peak_mb": {str(k): v for k, v in med.items()},
                                       "rss_ratio": ratio, "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
                                      indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
