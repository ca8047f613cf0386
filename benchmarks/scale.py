"""Scale of the outputs and of ``ecgray reduce``: synthetic outputs of 1k-50k records, real pipeline runs.

    python benchmarks/scale.py [--parts synthetic,pipeline,real] [--sizes 1000,10000,50000]
                               [--pipeline-sizes 1000,10000] [--real-sizes 128,1024] [--repeat 3]
                               [--out-dir benchmarks/results] [--work DIR]

Not a timed test: it writes JSON under ``benchmarks/results/`` with the machine (``ecgray.bench.machine``).

* ``synthetic`` (``scale_reduce.json``): schema-valid pipeline outputs (SCHEMA_VERSION 3) with the pipeline's
  cardinalities, 2 methods (saliency, integrated_gradients) x 6 targets x 12 leads, at each of ``--sizes``
  records, one window per record. A few distinct 32-record shard templates are built with the pipeline's own
  row builders (``ecgray.tables.records_table`` / ``per_lead_tables`` on random full relevance (N, 6, 12, 4096)
  and ``ecgray.tables.beats_tables`` -- float16 lists, power-of-two ``row_scale`` -- on smooth
  synthetic average beats, ~2 % windows without beats); every shard cycles the templates with its own unique
  ``record_key`` / ``record_id`` / ``uri`` and is written with ``Store.write_shard`` (Parquet zstd + commit
  marker, exactly as the pipeline). ``ecgray.reduce.reduce(output, write=True, stream_points=True)`` (what ``ecgray reduce`` runs) then runs in a
  separate process per size (``--repeat`` times for sizes <= ``--repeat-max``, else once); its time is the
  ``reduce()`` call, its peak RSS the process's ``VmHWM`` (kernel high-water mark; also the baseline after the
  imports). Bytes on disk per table per record are summed over the shard files. The output of each size is
  deleted before the next one is written.
* ``pipeline`` (``scale_pipeline.json``): the real Ray pipeline (``ecgray.pipeline.run``, local Ray, 2 CPUs,
  demo model, saliency, all 6 targets, beats on, shard 32) on ``--pipeline-sizes`` records made from the 150
  CPSC records in ../shared/data (headers renamed, signals hard-linked: ``pipeline_memory.make_input``);
  records/s and peak RSS / USS of the driver and Ray workers sampled every 0.25 s as
  ``benchmarks/pipeline_memory.py`` does; then the same reduce measurement on each output.
* ``real`` (``scale_real_reduce.json``): the same with saliency + lrp_epsilon at ``--real-sizes`` records:
  reduce time per record and peak RSS, and the bytes per record of every table (``beats`` + ``beats_relevance``
  against the old layout's ~245 KB/record for 2 methods x 6 targets).

Ratios (``ratio_*``) compare the largest size with the smallest (the medians over repeats), ``criteria`` holds
the issue's must-show checks as booleans, ``projection_1m`` a linear fit ``t = a + b N`` (and the same for RSS)
evaluated at 1,000,000 records.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

MB = 1 << 20
SHARD = 32
OLD_BEATS_BYTES_PER_RECORD = 245_000  # old beats layout, 2 methods x 6 targets, 150 CPSC records (issue 13)
SYN_METHODS = ("saliency", "integrated_gradients")
K_BEAT = 320  # -300..500 ms at 2.5 ms
BOUND = 1.3


# ------------------------------------------------------------------------------------------ helpers
def _vm_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _median(xs):
    return float(np.median(xs)) if xs else None


def _dir_bytes(output: Path) -> dict[str, int]:
    """Bytes of each table's shard files (``reduced/`` and markers excluded; markers reported apart)."""
    out: dict[str, int] = {}
    for d in sorted(output.iterdir()):
        if not d.is_dir() or d.name in ("reduced", "_tmp"):
            continue
        name = "commit_markers" if d.name == "_commits" else d.name
        out[name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return out


def _per_record(sizes: dict[str, int], n: int) -> dict[str, float]:
    per = {k: v / n for k, v in sizes.items()}
    per["beats_plus_beats_relevance"] = per.get("beats", 0.0) + per.get("beats_relevance", 0.0)
    per["total"] = sum(v for k, v in sizes.items()) / n
    return per


def _child(args: list[str], tries: int = 1) -> dict:
    """Run this script as a child (``--reduce-child`` / ``--pipeline-child``); its RESULT line.
    ``tries`` > 1 retries a failed child (local Ray can time out starting on a loaded machine)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")}
    for attempt in range(1, tries + 1):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not out.returncode and line:
            res = json.loads(line[-1][7:])
            res["process_wall_s"] = time.perf_counter() - t0
            res["attempt"] = attempt
            return res
        msg = f"child {' '.join(args)} failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        if attempt == tries:
            sys.exit(msg)
        print(msg[-600:] + "\n  retrying", flush=True)
    raise AssertionError("unreachable")


def _fit(xs, ys, at: float) -> dict:
    if len(xs) < 2:
        return {"intercept": None, "slope": None, "at": at, "value": None}
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return {"intercept": float(a), "slope": float(b), "at": at, "value": float(a + b * at)}


def _partial(a, name: str, machine: dict, sizes: list) -> None:
    """The sizes measured so far (overwritten by the complete result at the end of the part)."""
    path = Path(a.out_dir) / f"{name}{a.suffix}.json"
    path.write_text(json.dumps({"partial": True, "machine": machine, "sizes": sizes}, indent=1))


# ------------------------------------------------------------------------------------ reduce child
def reduce_child(output: str) -> dict:
    """In its own process: ``reduce(output, write=True, stream_points=True)`` as ``ecgray reduce`` runs it; time and
    peak RSS (VmHWM)."""
    import resource

    t_imp = time.perf_counter()
    import polars as pl  # imports before the baseline (ecgray.io imports torch: seconds)
    import pyarrow  # noqa: F401

    import ecgray.io.fs  # noqa: F401
    import ecgray.store  # noqa: F401
    from ecgray.reduce import reduce

    t_imp = time.perf_counter() - t_imp
    base = _vm_kb("VmRSS")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    frames = reduce(output, write=True, stream_points=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"reduce_s": dt, "reduce_cpu_s": cpu, "import_s": t_imp, "peak_rss_mb": _vm_kb("VmHWM") / 1024,
            "rss_after_imports_mb": base / 1024, "load_avg": [round(v, 2) for v in os.getloadavg()],
            "rows": {k: int(v.select(pl.len()).collect().item() if isinstance(v, pl.LazyFrame) else v.height)
                     for k, v in frames.items()}}


def measure_reduce(output: Path, n_records: int, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        runs.append(_child(["--reduce-child", str(output)]))
        r = runs[-1]
        print(f"    reduce {n_records:7d} records: {r['reduce_s']:.2f} s ({r['reduce_cpu_s']:.2f} CPU s), peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, load {r['load_avg'][0]}", flush=True)
    med_s = _median([r["reduce_s"] for r in runs])
    med_cpu = _median([r["reduce_cpu_s"] for r in runs])
    return {"repeat": repeat, "runs": runs, "reduce_s": med_s, "s_per_record": med_s / n_records,
            "reduce_cpu_s": med_cpu, "cpu_s_per_record": med_cpu / n_records,
            "peak_rss_mb": _median([r["peak_rss_mb"] for r in runs]),
            "rss_after_imports_mb": _median([r["rss_after_imports_mb"] for r in runs]),
            "rows": runs[-1]["rows"]}


# ------------------------------------------------------------------------------- synthetic outputs
def _gauss(t, mu, sd):
    return np.exp(-0.5 * ((t - mu) / sd) ** 2)


def build_template(t: int, n: int = SHARD, methods=SYN_METHODS, seed: int = 0) -> dict:
    """One shard's tables (``records``, ``relevance_summary``, ``beats``, ``beats_relevance``, ``errors``)
    built with the pipeline's row builders; record keys ``tmpl<t>/r<i>`` (replaced per shard)."""
    from ecgray.explain import ExplainConfig
    from ecgray.tables import beats_tables, per_lead_tables, records_table
    from ecgray.models.ribeiro2020 import CLASSES
    from ecgray.schemas.tables import conform, from_rows

    import pyarrow as pa

    rng = np.random.default_rng([seed, t])
    targets = tuple(CLASSES)
    T, M, L = len(targets), len(methods), 4096
    cfg = ExplainConfig(model_name="demo", model_id="demo-synthetic", methods=methods, targets=targets,
                        keep_relevance=False)
    prev = np.array([0.04, 0.08, 0.03, 0.05, 0.12, 0.03])
    recs, wins = [], []
    for i in range(n):
        key, rid = f"tmpl{t}/r{i:03d}", f"r{i:03d}"
        cls = {c: bool(rng.random() < p) for c, p in zip(CLASSES, prev)}
        n_in = int(rng.choice([5000, 7500, 10000, 15000, 30000]))
        labels = SimpleNamespace(normal=not any(cls.values()) and rng.random() < 0.7,
                                 raw=tuple(str(x) for x in rng.integers(1, 10, size=rng.integers(1, 3))),
                                 scheme="cpsc2018", classes=cls)
        recs.append(SimpleNamespace(record_key=key, record_id=rid, uri=f"/data/{key}.hea", dataset="synthetic",
                                    format="wfdb", fs=500.0, n_samples=n_in, labels=labels))
        wins.append(SimpleNamespace(record_key=key, record_id=rid, window=0, offset=0, fs_in=500.0,
                                    n_samples_in=n_in, flags=("resampled",), n_resampled=n_in * 4 // 5))
    logits = rng.normal(-2.0, 2.0, size=(n, len(CLASSES)))
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    attrs = {}
    for m_i, m in enumerate(methods):
        lead_scale = rng.lognormal(-6, 1, size=(n, T, 12, 1)).astype(np.float32)
        rel = (rng.standard_normal((n, T, 12, L), dtype=np.float32) * lead_scale)
        delta = None if m == "saliency" else rng.normal(0, 1e-3, size=(n, T)).astype(np.float32)
        attrs[m] = SimpleNamespace(relevance=rel, probabilities=probs, logits=logits.astype(np.float32),
                                   targets=targets, method=m, params={}, delta=delta)
    items = list(zip(recs, wins))
    tables = {"records": records_table("synthetic-run", cfg, items, probs)}
    summ = [per_lead_tables("synthetic-run", cfg, items, attrs[m], m, CLASSES)["relevance_summary"] for m in methods]
    tables["relevance_summary"] = pa.concat_tables(summ)
    offs = np.arange(-300.0, 500.0, 2.5)

    def fake_average_beats(x, relevance, fs, lead, leads, window_ms, valid):  # noqa: ARG001 - same call as average_beats
        ok = rng.random() > 0.02
        amp = rng.normal(1.0, 0.4, size=(12, 1))
        sig = (0.12 * _gauss(offs, -180, 25) + amp * (_gauss(offs, 0, 12) - 0.3 * _gauss(offs, 25, 10))
               + 0.3 * rng.normal(1, 0.3, size=(12, 1)) * _gauss(offs, 250, 50) + rng.normal(0, 0.05, size=(12, 1))
               + rng.normal(0, 0.01, size=(12, K_BEAT)))
        a = rng.lognormal(-6, 1, size=(M, T, 12, 1))
        shape = (rng.normal(0, 1, size=(M, T, 12, 1)) * _gauss(offs, 0, 15)
                 + rng.normal(0, 0.5, size=(M, T, 12, 1)) * _gauss(offs, -180, 30)
                 + rng.normal(0, 0.5, size=(M, T, 12, 1)) * _gauss(offs, 250, 60))
        rel = a * (shape + 0.2 * rng.standard_normal((M, T, 12, K_BEAT)))
        nb = int(rng.integers(4, 25)) if ok else 0
        return SimpleNamespace(relevance=rel.astype(np.float32), signal=sig.astype(np.float32), n_beats=nb,
                               offsets_ms=offs, quality="ok" if ok else "no_beats", lead_used="DII",
                               heart_rate_bpm=float(rng.normal(75, 15)) if ok else float("nan"))

    p = {"attrs": attrs, "recs": recs, "wins": wins, "x": np.zeros((n, 1), np.float32)}
    tables.update(beats_tables("synthetic-run", cfg, p, fake_average_beats))
    tables["errors"] = from_rows("errors", [])
    return {name: conform(tbl, name) for name, tbl in tables.items()}


def _template_index(tables: dict) -> dict:
    """Per table: the template record index of every row (to substitute keys per shard)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = tables["records"].column("record_key")
    out = {}
    for name, tbl in tables.items():
        if tbl.num_rows:
            out[name] = pc.index_in(tbl.column("record_key"), value_set=pa.array(keys.to_pylist())).to_numpy()
    return out


def _shard_tables(tmpl: dict, idx: dict, s: int) -> tuple[dict, list[tuple[str, str]]]:
    import pyarrow as pa

    n = tmpl["records"].num_rows
    ids = [f"S{s:06d}_{i:02d}" for i in range(n)]
    keys = pa.array([f"site{s % 8}/{r}" for r in ids], pa.string())
    rids = pa.array(ids, pa.string())
    out = {}
    for name, tbl in tmpl.items():
        if name in idx:
            ix = pa.array(idx[name])
            tbl = tbl.set_column(tbl.schema.get_field_index("record_key"), "record_key", keys.take(ix))
            tbl = tbl.set_column(tbl.schema.get_field_index("record_id"), "record_id", rids.take(ix))
            if name == "records":
                uris = pa.array([f"/data/{k}.hea" for k in keys.to_pylist()], pa.string())
                tbl = tbl.set_column(tbl.schema.get_field_index("uri"), "uri", uris)
        out[name] = tbl
    return out, [(r, f"site{s % 8}/{r}.hea") for r in ids]


def _write_shards(output: str, n_shards: int, n_templates: int, seed: int, part: int, n_parts: int) -> dict:
    """Write shards ``part, part + n_parts, ...`` (one writer process; templates are deterministic)."""
    from ecgray.store import Store, shard_hash, shard_name

    t0 = time.perf_counter()
    templates = [build_template(t, seed=seed) for t in range(n_templates)]
    idx = [_template_index(t) for t in templates]
    t_build = time.perf_counter() - t0
    store = Store(output)
    for s in range(part, n_shards, n_parts):
        tables, pairs = _shard_tables(templates[s % n_templates], idx[s % n_templates], s)
        store.write_shard(shard_name(s), tables, run_id="synthetic-run", record_hash=shard_hash(pairs),
                          extra={"records_ok": SHARD, "records_error": 0})
    return {"template_build_s": t_build, "rows_per_shard": {k: v.num_rows for k, v in templates[0].items()}}


def write_synthetic(output: Path, n_records: int, n_templates: int, seed: int = 0, writers: int = 1) -> dict:
    """Write ``n_records`` (rounded up to a multiple of 32) as committed shards under ``output``."""
    from ecgray.store import Store

    n_shards = -(-n_records // SHARD)
    writers = max(1, min(writers, n_shards))
    t1 = time.perf_counter()
    if writers == 1:
        res = [_write_shards(str(output), n_shards, n_templates, seed, 0, 1)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(writers, mp_context=mp.get_context("spawn")) as ex:
            res = list(ex.map(_write_shards, *zip(*[(str(output), n_shards, n_templates, seed, w, writers)
                                                    for w in range(writers)])))
    Store(str(output)).clean()
    return {"records": n_shards * SHARD, "shards": n_shards, "writers": writers,
            "template_build_s": res[0]["template_build_s"], "write_s": time.perf_counter() - t1,
            "rows_per_shard": res[0]["rows_per_shard"]}


def part_synthetic(a, work: Path, machine: dict) -> dict:
    sizes = []
    for n in a.sizes:
        out = work / f"syn{n}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"synthetic {n} records: writing", flush=True)
        w = write_synthetic(out, n, a.templates, seed=a.seed, writers=a.writers)
        nrec = w["records"]
        disk = _dir_bytes(out)
        print(f"  wrote {w['shards']} shards in {w['write_s']:.1f} s, {sum(disk.values()) / MB:.0f} MB "
              f"({sum(v for k, v in disk.items()) / nrec / 1e3:.1f} KB/record)", flush=True)
        red = measure_reduce(out, nrec, a.repeat if nrec <= a.repeat_max else 1)
        sizes.append({"records": nrec, **w, "bytes_on_disk": disk, "bytes_per_record": _per_record(disk, nrec),
                      "reduce": red})
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
        _partial(a, "scale_reduce", machine, sizes)
    small, large = sizes[0], sizes[-1]
    beats_new = _median([s["bytes_per_record"]["beats_plus_beats_relevance"] for s in sizes])
    ratios = {
        "ratio_time_per_record_largest_vs_1k": large["reduce"]["s_per_record"] / small["reduce"]["s_per_record"],
        "ratio_cpu_time_per_record_largest_vs_1k": large["reduce"]["cpu_s_per_record"] / small["reduce"]["cpu_s_per_record"],
        "ratio_peak_rss_largest_vs_1k": large["reduce"]["peak_rss_mb"] / small["reduce"]["peak_rss_mb"],
        "ratio_peak_rss_above_baseline_largest_vs_1k":
            (large["reduce"]["peak_rss_mb"] - large["reduce"]["rss_after_imports_mb"])
            / max(1e-9, small["reduce"]["peak_rss_mb"] - small["reduce"]["rss_after_imports_mb"]),
        "ratio_old_vs_new_beats_bytes_per_record": OLD_BEATS_BYTES_PER_RECORD / beats_new,
    }
    xs = [s["records"] for s in sizes]
    proj = {"records": 1_000_000,
            "reduce_s": _fit(xs, [s["reduce"]["reduce_s"] for s in sizes], 1e6),
            "reduce_cpu_s": _fit(xs, [s["reduce"]["reduce_cpu_s"] for s in sizes], 1e6),
            "peak_rss_mb": _fit(xs, [s["reduce"]["peak_rss_mb"] for s in sizes], 1e6),
            "disk_gb": large["bytes_per_record"]["total"] * 1e6 / 1e9}
    criteria = {
        "time_per_record_largest_within_1.3x_of_smallest": ratios["ratio_time_per_record_largest_vs_1k"] <= BOUND,
        "peak_rss_largest_within_1.3x_of_smallest": ratios["ratio_peak_rss_largest_vs_1k"] <= BOUND,
        "peak_rss_largest_le_2GB": large["reduce"]["peak_rss_mb"] <= 2048,
        "largest_ge_50k_records": large["records"] >= 50_000,
        "largest_reduced_le_10min": large["reduce"]["reduce_s"] <= 600,
        "beats_bytes_ge_2x_smaller_than_old_layout": ratios["ratio_old_vs_new_beats_bytes_per_record"] >= 2,
    }
    return {"benchmark": "scale_reduce (synthetic outputs)", "machine": machine,
            "config": {"sizes_requested": a.sizes, "shard_size": SHARD, "templates": a.templates, "seed": a.seed,
                       "methods": list(SYN_METHODS), "targets": 6, "leads": 12, "beat_samples": K_BEAT,
                       "repeat": a.repeat, "repeat_max_records": a.repeat_max, "reduce": "reduce(output, write=True, stream_points=True)",
                       "peak_rss": "VmHWM of the reduce process", "old_beats_bytes_per_record": OLD_BEATS_BYTES_PER_RECORD},
            "sizes": sizes, **ratios, "projection_1m": proj, "criteria": criteria,
            "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]}


# ------------------------------------------------------------------------------------ real pipeline
class Sampler(threading.Thread):
    """Peak RSS / USS of the driver and of its Ray worker processes (as benchmarks/pipeline_memory.py)."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.period = psutil, period
        self.me = psutil.Process()
        self.peak = {k: 0 for k in ("driver", "worker_max", "total", "driver_uss", "worker_max_uss", "total_uss")}
        self.n_workers_max = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        ps = self.psutil
        while not self.stop_event.is_set():
            try:
                d = self.me.memory_full_info()
                info, workers = {}, []
                for k in self.me.children(recursive=True):
                    try:
                        info[k.pid] = k.memory_full_info()
                        cmd = " ".join(k.cmdline())
                        if cmd.startswith("ray::") or "default_worker" in cmd:
                            workers.append(k.pid)
                    except (ps.NoSuchProcess, ps.AccessDenied):
                        continue
                self.n_workers_max = max(self.n_workers_max, len(workers))
                for key, attr in (("", "rss"), ("_uss", "uss")):
                    dv = getattr(d, attr)
                    self.peak["driver" + key] = max(self.peak["driver" + key], dv)
                    self.peak["worker_max" + key] = max(self.peak["worker_max" + key],
                                                        max((getattr(info[p], attr) for p in workers), default=0))
                    self.peak["total" + key] = max(self.peak["total" + key],
                                                   dv + sum(getattr(v, attr) for v in info.values()))
            except (ps.NoSuchProcess, ps.AccessDenied):
                pass
            self.stop_event.wait(self.period)

    def stop(self) -> dict:
        self.stop_event.set()
        self.join()
        return {k: v / MB for k, v in self.peak.items()}


def pipeline_child(n: int, methods: list[str], work: Path, output: Path) -> dict:
    import ray

    from pipeline_memory import make_input

    from ecgray.pipeline import run
    from ecgray.pipeline.run import ray_init_if_needed

    inp = make_input(work / f"in{n}", n)
    os.environ.pop("RAY_ADDRESS", None)
    ray_init_if_needed(num_cpus=2, log_to_driver=False)
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    try:
        s = run(str(inp), str(output), model="demo", methods=tuple(methods), targets=None, shard_size=SHARD,
                overwrite=True, progress=False, beats=True)
    finally:
        peak = sampler.stop()
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"records": n, "records_ok": s.records_ok, "records_error": s.records_error, "wall_s": wall,
            "records_per_s": s.records_per_s, "stage_seconds": s.stage_seconds, "rows": s.rows,
            "peak_rss_mb": peak, "ray_workers_max": sampler.n_workers_max}


def _real_part(a, work: Path, machine: dict, sizes: list[int], methods: list[str], name: str,
               pipeline_repeat: int) -> dict:
    rows = []
    for n in sizes:
        out = work / f"{name}{n}"
        runs = []
        for rep in range(pipeline_repeat if n <= a.repeat_max_pipeline else 1):
            print(f"{name}: pipeline {n} records ({'+'.join(methods)}, all targets), run {rep + 1}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            runs.append(_child(["--pipeline-child", str(n), "--methods", ",".join(methods), "--work", str(work),
                                "--output", str(out)], tries=3))
            r = runs[-1]
            m = r["peak_rss_mb"]
            print(f"  {r['records_per_s']:.1f} records/s ({r['wall_s']:.0f} s); peak RSS/USS MB: driver "
                  f"{m['driver']:.0f}/{m['driver_uss']:.0f}, largest worker {m['worker_max']:.0f}/"
                  f"{m['worker_max_uss']:.0f}, all {m['total']:.0f}/{m['total_uss']:.0f}", flush=True)
        disk = _dir_bytes(out)
        nrec = runs[-1]["records_ok"]
        red = measure_reduce(out, nrec, a.repeat)
        peak = {k: _median([r["peak_rss_mb"][k] for r in runs]) for k in runs[0]["peak_rss_mb"]}
        rows.append({"records": n, "records_ok": nrec, "pipeline_runs": runs,
                     "records_per_s": _median([r["records_per_s"] for r in runs]), "peak_rss_mb": peak,
                     "bytes_on_disk": disk, "bytes_per_record": _per_record(disk, nrec), "reduce": red})
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
        _partial(a, f"scale_{name}" if name != "real" else "scale_real_reduce", machine, rows)
    small, large = rows[0], rows[-1]
    ratios = {
        "ratio_reduce_time_per_record_largest_vs_smallest": large["reduce"]["s_per_record"] / small["reduce"]["s_per_record"],
        "ratio_reduce_cpu_time_per_record_largest_vs_smallest":
            large["reduce"]["cpu_s_per_record"] / small["reduce"]["cpu_s_per_record"],
        "ratio_reduce_peak_rss_largest_vs_smallest": large["reduce"]["peak_rss_mb"] / small["reduce"]["peak_rss_mb"],
        "ratio_records_per_s_largest_vs_smallest": large["records_per_s"] / small["records_per_s"],
        "ratio_pipeline_peak_rss_largest_vs_smallest": {k: large["peak_rss_mb"][k] / small["peak_rss_mb"][k]
                                                        for k in small["peak_rss_mb"]},
        "ratio_old_vs_new_beats_bytes_per_record":
            OLD_BEATS_BYTES_PER_RECORD * (len(methods) / 2) / large["bytes_per_record"]["beats_plus_beats_relevance"],
    }
    criteria = {
        "reduce_time_per_record_within_1.3x": ratios["ratio_reduce_time_per_record_largest_vs_smallest"] <= BOUND,
        "reduce_peak_rss_within_1.3x": ratios["ratio_reduce_peak_rss_largest_vs_smallest"] <= BOUND,
    }
    if len(methods) == 2:
        criteria["beats_bytes_ge_2x_smaller_than_old_layout"] = ratios["ratio_old_vs_new_beats_bytes_per_record"] >= 2
    return {"benchmark": f"scale_{name} (real pipeline outputs)", "machine": machine,
            "config": {"sizes": sizes, "model": "demo", "methods": methods, "targets": "all (6)", "beats": True,
                       "shard_size": SHARD, "ray": "local, num_cpus=2, ecgray's bounded object store",
                       "input": "CPSC 2018 a0001-a0150 in ../shared/data, renamed copies (hard links)",
                       "pipeline_repeat": pipeline_repeat, "reduce_repeat": a.repeat,
                       "old_beats_bytes_per_record_2_methods": OLD_BEATS_BYTES_PER_RECORD,
                       "note_old_vs_new": "old layout scaled by methods/2 when the run has another number of methods"},
            "sizes": rows, **ratios, "criteria": criteria, "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]}


# ------------------------------------------------------------------------------------------ main
def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="synthetic,pipeline,real")
    ap.add_argument("--sizes", type=_ints, default=[1000, 10000, 50000], help="synthetic output sizes (records)")
    ap.add_argument("--pipeline-sizes", type=_ints, default=[1000, 10000])
    ap.add_argument("--pipeline-methods", default="saliency")
    ap.add_argument("--real-sizes", type=_ints, default=[128, 1024])
    ap.add_argument("--real-methods", default="saliency,lrp_epsilon")
    ap.add_argument("--repeat", type=int, default=3, help="reduce runs per size (median)")
    ap.add_argument("--repeat-max", type=int, default=10_000, help="synthetic sizes above this reduce once")
    ap.add_argument("--pipeline-repeat", type=int, default=1)
    ap.add_argument("--repeat-max-pipeline", type=int, default=1024, help="pipeline sizes above this run once")
    ap.add_argument("--templates", type=int, default=4)
    ap.add_argument("--writers", type=int, default=3, help="processes writing the synthetic shards")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--suffix", default="", help="appended to the JSON names (scale_reduce<suffix>.json)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--reduce-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pipeline-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--methods", default="saliency", help=argparse.SUPPRESS)
    ap.add_argument("--output", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.reduce_child:
        print("RESULT " + json.dumps(reduce_child(a.reduce_child)), flush=True)
        return
    if a.pipeline_child is not None:
        print("RESULT " + json.dumps(pipeline_child(a.pipeline_child, a.methods.split(","), Path(a.work),
                                                    Path(a.output))), flush=True)
        return
    from ecgray.bench import machine as machine_info

    machine = machine_info("cpu")
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    tmp = None
    if a.work:
        work = Path(a.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="ecgray-scale-")
        work = Path(tmp)
    written = []
    try:
        jobs = {"synthetic": ("scale_reduce", lambda: part_synthetic(a, work, machine)),
                "pipeline": ("scale_pipeline", lambda: _real_part(a, work, machine, a.pipeline_sizes,
                                                                  a.pipeline_methods.split(","), "pipeline",
                                                                  a.pipeline_repeat)),
                "real": ("scale_real_reduce", lambda: _real_part(a, work, machine, a.real_sizes,
                                                                 a.real_methods.split(","), "real",
                                                                 a.pipeline_repeat))}
        for p in parts:
            name, fn = jobs[p]
            t0 = time.perf_counter()
            res = fn()
            res["part_wall_s"] = time.perf_counter() - t0
            path = out_dir / f"{name}{a.suffix}.json"
            path.write_text(json.dumps(res, indent=1))
            written.append(str(path))
            print(f"wrote {path}: " + json.dumps({k: v for k, v in res.items() if k.startswith(("ratio", "criteria"))}),
                  flush=True)
    finally:
        if tmp and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("done: " + ", ".join(written))


if __name__ == "__main__":
    main()
