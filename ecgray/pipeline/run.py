"""``ecgray.pipeline.run``: explain a whole data set with Ray Data, shard by shard."""
from __future__ import annotations

import logging
import os
import re
import warnings
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

from ecgray.io import catalog, is_s3

from . import stages
from .store import KNOWN_ENTRIES, PipelineError, Store, shard_hash, shard_name

log = logging.getLogger("ecgray.pipeline")

# A run id names a staging folder (<output>/_tmp/<run_id>): a plain name, never a path.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Fields of the manifest that must match for --resume to continue a previous run.
RESUME_KEYS = ("model", "model_id", "methods", "targets", "output_kind", "params", "shard_size", "policy",
               "keep_relevance", "beats", "schema_version", "precision")
#: manifest values of outputs written before a key existed
RESUME_DEFAULTS = {"precision": "fp32"}


@dataclass
class RunSummary:
    run_id: str
    output: str
    records: int = 0  # records in the input (catalog rows)
    records_ok: int = 0  # records explained (in `records`), this run + skipped shards
    records_error: int = 0  # records in `errors` only
    windows: int = 0  # windows written by this run
    shards: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    rows: dict = field(default_factory=dict)  # rows written by this run per table
    stage_seconds: dict = field(default_factory=dict)  # sum over shards written by this run
    wall_s: float = 0.0
    records_per_s: float = 0.0  # records of the shards written by this run / wall time
    beats: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def print_summary(s: RunSummary, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"ecgray run {s.run_id}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", justify="right")
    t.add_row("output", s.output)
    t.add_row("records (input)", str(s.records))
    t.add_row("records ok / errors", f"{s.records_ok} / {s.records_error}")
    t.add_row("shards written / skipped / total", f"{s.shards_written} / {s.shards_skipped} / {s.shards}")
    for k, v in s.rows.items():
        t.add_row(f"rows {k}", str(v))
    for k, v in s.stage_seconds.items():
        t.add_row(f"stage {k} (s, summed over shards)", f"{v:.1f}")
    t.add_row("wall time (s)", f"{s.wall_s:.1f}")
    t.add_row("records/s", f"{s.records_per_s:.2f}")
    if not s.beats:
        t.add_row("beats", "not computed (ecgray.beats unavailable)")
    console.print(t)


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/")
    if not is_s3(root):
        root = os.path.abspath(root)
    return uri[len(root):].lstrip("/") if uri.startswith(root) else uri


def plan_shards(cat, input_root: str, shard_size: int) -> list[dict]:
    """Consecutive chunks of ``shard_size`` catalog rows in record_id order, with their hash."""
    rows = sorted(cat.select(["record_id", "uri", "error", "error_type"]).to_pylist(),
                  key=lambda r: (r["record_id"], r["uri"]))
    shards = []
    for k, start in enumerate(range(0, len(rows), shard_size)):
        items = rows[start:start + shard_size]
        h = shard_hash((r["record_id"], _relative(r["uri"], input_root)) for r in items)
        shards.append({"shard": shard_name(k), "record_hash": h, "items": items})
    return shards


LOCAL_OBJECT_STORE_MB = 256


def ray_init_if_needed(*, object_store_mb: int | None = None, **local_kwargs):
    """Start Ray unless it runs: ``RAY_ADDRESS`` if set, else a local instance; returns the ``ray`` module.

    A local instance gets no dashboard and a bounded object store of ``object_store_mb``
    (default :data:`LOCAL_OBJECT_STORE_MB`) instead of Ray's 30 % of the machine's memory: the
    pipeline streams shards of a few MB (38 MB per method with ``keep_relevance`` at 32 records x 6
    targets), and a worker's RSS counts every store page it has touched, so with a large store it grows
    with the data set. Peak RSS from 150 to 1,500 records, medians of 3 runs
    (``benchmarks/pipeline_memory.py``): largest worker 1.15x, all processes 1.20x with 256 MB; 1.24x
    and 1.24x with a 7,000 MB store (about Ray's default here); median throughput 41 vs 43 records/s.
    Objects that do not fit are spilled to disk by Ray.
    ``local_kwargs`` (e.g. ``num_cpus``) go to ``ray.init`` for a local instance only; a cluster
    (``RAY_ADDRESS``) keeps its own settings.
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or "local"
        if address == "local":
            mb = LOCAL_OBJECT_STORE_MB if object_store_mb is None else int(object_store_mb)
            ray.init(address=address, include_dashboard=False, object_store_memory=mb << 20, **local_kwargs)
        else:
            ray.init(address=address)
    return ray


def _check_output(store: Store, shards: list[dict], manifest: dict, *, resume: bool, overwrite: bool) -> dict:
    """Refuse or prepare the output; returns the commits to keep (resume)."""
    entries = store.entries()
    if overwrite and entries:
        unknown = [e for e in entries if e not in KNOWN_ENTRIES]
        if unknown:
            raise PipelineError(f"refusing to overwrite {store.root}: it holds files that are not ecgray pipeline "
                                f"output ({', '.join(unknown[:5])}); choose another output or remove them")
        for e in entries:
            store.rm(store.p(e))
        return {}
    if not entries:
        return {}
    if not resume:
        raise PipelineError(f"output {store.root} is not empty; pass --resume to continue the previous run there "
                            "or --overwrite to replace it")
    old = store.manifest()
    if old is None:
        raise PipelineError(f"cannot resume into {store.root}: it has no {'_manifest.json'} (not an ecgray "
                            "pipeline output); use --overwrite or another output")
    was = {k: old.get(k, RESUME_DEFAULTS.get(k)) for k in RESUME_KEYS}
    diff = [k for k in RESUME_KEYS if was[k] != manifest.get(k)]
    if diff:
        detail = "; ".join(f"{k}: was {was[k]!r}, now {manifest.get(k)!r}" for k in diff)
        raise PipelineError(f"cannot resume into {store.root}: the run's settings changed ({detail}); "
                            "use --overwrite to start again")
    commits = store.commits()
    by_id = {s["shard"]: s for s in shards}
    changed = [k for k, m in commits.items() if k not in by_id or by_id[k]["record_hash"] != m.get("record_hash")]
    if changed:
        raise PipelineError(f"cannot resume into {store.root}: the input changed since the previous run "
                            f"(shards {', '.join(sorted(changed)[:5])} hold other records now); "
                            "use --overwrite to start again")
    return commits


def run(input: str, output: str, *, model: str, weights: str | None = None, methods: Sequence[str] = ("saliency",),
        targets: Sequence[str] | None = None, output_kind: str = "logit", params: dict | None = None,
        shard_size: int = 32, policy: str = "first", labels_csv: str | None = None, keep_relevance: bool = False,
        resume: bool = False, overwrite: bool = False, num_attr_actors: int | None = None,
        use_gpu: bool | None = None, precision: str = "fp32", autocast: bool | None = None, batch_size: int = 8,
        run_id: str | None = None,
        beats: bool = True, progress: bool | None = None, faults: dict | None = None,
        verbose: bool = False, torch_threads: int | None = None) -> RunSummary:
    """Explain every record under ``input`` and write the tables under ``output``.

    ``methods`` are canonical names or aliases; ``params`` is per method
    (``{"integrated_gradients": {"n_steps": 16}}``). See the package docstring
    for the layout, resume and retry guarantees. Raises :class:`PipelineError`
    when the run is refused. ``torch_threads``: intra-op threads of each CPU
    attribution actor (default: half the node's cores over the actors; give
    all cores for heavy methods such as IG, whose CPU stages are idle most of
    the time). Starts Ray (``RAY_ADDRESS`` or a local instance)
    if it is not running.
    """
    from ecgray.attribution import resolve_method
    from ecgray.explain import new_run_id
    from ecgray.models import load_model, model_id
    from schemas.tables import SCHEMA_VERSION

    t_start = time.perf_counter()
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if output_kind not in ("logit", "probability"):
        raise ValueError("output_kind must be 'logit' or 'probability'")
    from ecgray.attribution.core import PRECISIONS

    if autocast:  # the older spelling of precision="bf16"
        precision = "bf16"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    run_id = run_id or new_run_id()
    if not RUN_ID.fullmatch(str(run_id)):
        raise PipelineError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit (it names a folder under the output)")
    methods = [resolve_method(m).name for m in methods]
    params = {m: dict((params or {}).get(m, {})) for m in methods}
    net = load_model(model, weights=weights)  # validates the model and targets on the driver
    mid = model_id(net)
    classes = tuple(net.classes)
    del net
    targets = list(targets) if targets else None
    for t in targets or []:
        if t not in classes:
            raise PipelineError(f"unknown target {t!r}; the model's classes are {', '.join(classes)}")
    with_beats = bool(beats) and stages._load_beats() is not None
    if beats and not with_beats:
        log.warning("ecgray.beats is not available: the beats table will be empty")

    cat = catalog(input, labels_csv=labels_csv)
    shards = plan_shards(cat, input, shard_size)
    manifest = {
        "input": str(input), "model": str(model), "weights": None if weights is None else str(weights),
        "model_id": mid, "methods": methods, "targets": targets, "output_kind": output_kind, "params": params,
        "shard_size": shard_size, "policy": policy, "keep_relevance": bool(keep_relevance), "beats": with_beats,
        "schema_version": SCHEMA_VERSION, "precision": precision, "n_records": cat.num_rows, "n_shards": len(shards), "run_id": run_id,
    }
    store = Store(output)
    commits = _check_output(store, shards, manifest, resume=resume, overwrite=overwrite)
    store.write_manifest(manifest)
    todo = [s for s in shards if s["shard"] not in commits]
    summary = RunSummary(run_id=run_id, output=str(output), records=cat.num_rows, shards=len(shards),
                         shards_skipped=len(shards) - len(todo), beats=with_beats)
    for m in commits.values():
        summary.records_ok += int(m.get("records_ok", 0))
        summary.records_error += int(m.get("records_error", 0))
    del cat

    results = []
    if todo:
        results = _execute(todo, input_labels=labels_csv, output=output, run_id=run_id, model=model, weights=weights,
                           methods=methods, targets=targets, output_kind=output_kind, params=params, policy=policy,
                           keep_relevance=keep_relevance, num_attr_actors=num_attr_actors, use_gpu=use_gpu,
                           precision=precision, batch_size=batch_size, model_id=mid, with_beats=with_beats,
                           progress=progress, faults=faults, torch_threads=torch_threads)
    done = set(commits) | {r["shard"] for r in results}
    missing = [s["shard"] for s in shards if s["shard"] not in done]
    if missing:  # cannot happen unless Ray dropped rows; never report success then
        raise PipelineError(f"shards {', '.join(missing[:5])} were not written; rerun with --resume")
    store.clean(keep_shards=sorted(done))

    stage_keys = ("read", "attribute", "beats", "write")
    summary.stage_seconds = {k: 0.0 for k in stage_keys}
    summary.rows = {"records": 0, "relevance_summary": 0, "beats": 0}
    processed = 0
    for r in results:
        summary.shards_written += 1
        summary.records_ok += r["records_ok"]
        summary.records_error += r["errors"]
        processed += r["records_ok"] + r["errors"]
        summary.windows += r["windows"]
        summary.rows["records"] += r["windows"]
        summary.rows["relevance_summary"] += r["rows_relevance_summary"]
        summary.rows["beats"] += r["rows_beats"]
        for k in stage_keys:
            summary.stage_seconds[k] += r[f"t_{k}"]
    summary.wall_s = time.perf_counter() - t_start
    summary.records_per_s = processed / summary.wall_s if summary.wall_s > 0 else 0.0
    return summary


def _execute(todo: list[dict], *, input_labels, output, run_id, model, weights, methods, targets, output_kind, params,
             policy, keep_relevance, num_attr_actors, use_gpu, precision, batch_size, model_id, with_beats, progress,
             faults, torch_threads=None) -> list[dict]:
    from ecgray.explain import ExplainConfig

    ray = ray_init_if_needed()
    import ray.data

    res = ray.cluster_resources()
    n_cpu = float(res.get("CPU", 1.0))
    n_gpu = int(res.get("GPU", 0))
    gpu = bool(n_gpu) if use_gpu is None else bool(use_gpu)
    n_actors = int(num_attr_actors or max(n_gpu, 1))
    if precision != "fp32" and not gpu:
        log.warning("precision=%s applies to GPU attribution only: this run attributes on CPU, in float32", precision)
    if gpu and not n_gpu:
        # Scale-from-zero clusters (cluster.yaml): the pending num_gpus=1 actors are what makes the
        # autoscaler start GPU workers, so wait for them instead of refusing.
        log.warning("use_gpu=True but the cluster has no GPU yet: %d attribution actor(s) will wait for the "
                    "autoscaler to add GPU nodes", n_actors)
    n_actors = max(1, min(n_actors, len(todo)))
    # On CPU the actors share the cores with the read/beats/write tasks (up to n_cpu // 2 of each): give torch
    # half the cores. More intra-op threads than free cores makes OpenMP threads wait for each other: on 2
    # busy cores, saliency with 2 torch threads took 346 ms/window, with 1 thread 12.5 ms.
    if gpu:
        torch_threads = None
    elif not torch_threads:
        torch_threads = max(1, int(n_cpu // 2 // n_actors))
    cfg = ExplainConfig(model_name=str(model), model_id=model_id, methods=tuple(methods), targets=targets,
                        output=output_kind, params=params, keep_relevance=bool(keep_relevance), batch_size=batch_size)
    items = [{"shard": s["shard"], "payload": _spec_bytes(s, run_id)} for s in todo]

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.actor_task_retry_on_errors, ctx.enable_progress_bars)
    ctx.actor_task_retry_on_errors = True  # an exception escaping a shard is retried (max_task_retries)
    if progress is not None:
        ctx.enable_progress_bars = bool(progress)
    retry = {"max_retries": 3, "retry_exceptions": True}
    # CPU stages are cheap next to attribution (~20 ms/record to read, a few ms to build and write tables):
    # a few concurrent tasks keep the actors fed without spawning (and importing into) many workers.
    cpu_tasks = max(1, int(n_cpu // 2))
    try:
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing max_retries/retry_exceptions/max_restarts/max_task_retries as
            # **ray_remote_args (removal announced for 2.64) but offers no named parameter for them yet.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = _plan(ray, items, input_labels=input_labels, output=output, run_id=run_id, model=model,
                       weights=weights, methods=methods, targets=targets, output_kind=output_kind, params=params,
                       policy=policy, batch_size=batch_size, precision=precision, faults=faults, cfg=cfg,
                       with_beats=with_beats, gpu=gpu, n_actors=n_actors, torch_threads=torch_threads,
                       cpu_tasks=cpu_tasks, retry=retry)
        results = []
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            results.extend(batch.to_pylist())
    finally:
        ctx.actor_task_retry_on_errors, ctx.enable_progress_bars = saved
    return results


def _plan(ray, items, *, input_labels, output, run_id, model, weights, methods, targets, output_kind, params, policy,
          batch_size, precision, faults, cfg, with_beats, gpu, n_actors, torch_threads, cpu_tasks, retry):
    """The Ray Data plan: one row per shard through read -> attribute -> beats/tables -> write."""
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(stages.read_preprocess, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                        concurrency=cpu_tasks,
                        fn_kwargs={"run_id": run_id, "labels_csv": input_labels, "policy": policy,
                                   "faults": faults}, **retry)
    ds = ds.map_batches(
        stages.AttributeActor, batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if gpu else 0, num_cpus=1 if gpu else 0.5,
        max_restarts=3, max_task_retries=3,
        fn_constructor_kwargs={"model": str(model), "weights": weights, "methods": list(methods),
                               "targets": targets, "output": output_kind, "params": params,
                               "batch_size": batch_size, "use_gpu": gpu, "precision": precision,
                               "torch_threads": torch_threads, "faults": faults})
    ds = ds.map_batches(stages.beats_and_tables, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                        concurrency=cpu_tasks,
                        fn_kwargs={"run_id": run_id, "cfg": cfg, "with_beats": with_beats, "faults": faults},
                        **retry)
    ds = ds.map_batches(stages.write_shard, batch_size=1, batch_format="pyarrow", num_cpus=0.1,
                        concurrency=cpu_tasks,
                        fn_kwargs={"output": str(output), "run_id": run_id, "faults": faults}, **retry)
    return ds


def _spec_bytes(shard: dict, run_id: str) -> bytes:
    from . import codec

    return codec.dumps({"shard": shard["shard"], "record_hash": shard["record_hash"], "run_id": run_id,
                        "items": shard["items"]})
