"""``ecgray.pipeline.run``: explain a whole data set with Ray Data, shard by shard."""
from __future__ import annotations

import contextvars
import functools
import logging
import os
import re
import warnings
import time

from ecgray.explain import new_run_id, require_table_layout
from ecgray.io import catalog
from ecgray.io.catalog import skipped_files
from ecgray.models import load_model, model_id
from ecgray.models.spec import ModelSpec
from ecgray.store import KNOWN_ENTRIES, LOCK, PipelineError, Store, record_fingerprint
from ecgray.schemas.tables import SCHEMA_VERSION

from . import stages
from .config import RunConfig
from .lock import OutputLock
from .plan import plan_entry, plan_resume, plan_shards
from .summary import RunSummary

log = logging.getLogger("ecgray.pipeline")

# A run id names a staging folder (<output>/_tmp/<run_id>): a plain name, never a path.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Fields of the manifest that must match for --resume to continue a previous run.
RESUME_KEYS = ("model", "model_id", "model_spec", "methods", "targets", "output_kind", "params", "shard_size",
               "policy", "keep_relevance", "beats", "schema_version", "precision", "waves")
#: manifest values of outputs written before a key existed
RESUME_DEFAULTS = {"precision": "fp32", "waves": "delineated"}



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


def _check_output(store: Store, manifest: dict, *, resume: bool, overwrite: bool) -> tuple[dict | None, dict]:
    """Refuse or prepare the output (which this run has locked); returns ``(previous manifest, commits)`` to
    continue (resume), ``(None, {})`` for a fresh plan."""
    entries = [e for e in store.entries() if not e.startswith(LOCK)]  # this run's lock (and its temporary files)
    if overwrite and entries:
        unknown = [e for e in entries if e not in KNOWN_ENTRIES]
        if unknown:
            raise PipelineError(f"refusing to overwrite {store.root}: it holds files that are not ecgray pipeline "
                                f"output ({', '.join(unknown[:5])}); choose another output or remove them")
        for e in entries:
            store.rm(store.p(e))
        return None, {}
    if not entries:
        return None, {}
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
    return old, store.commits()


_RUN_LOCKS: contextvars.ContextVar[list | None] = contextvars.ContextVar("ecgray_run_locks", default=None)


def _releases_locks(fn):
    """Release the output locks that ``fn`` holds (:func:`_hold`) when it returns or raises (KeyboardInterrupt
    included)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        held: list = []
        token = _RUN_LOCKS.set(held)
        try:
            return fn(*args, **kwargs)
        finally:
            _RUN_LOCKS.reset(token)
            for lock in reversed(held):
                lock.release()
    return wrapper


def _hold(lock: OutputLock) -> OutputLock:
    held = _RUN_LOCKS.get()
    if held is None:  # not under @_releases_locks: nobody would release it
        lock.release()
        raise RuntimeError("_hold() outside a function decorated with @_releases_locks")
    held.append(lock)
    return lock


@_releases_locks
def run(input: str, output: str, config: RunConfig | None = None, *, resume: bool = False, overwrite: bool = False,
        run_id: str | None = None, progress: bool | None = None, verbose: bool = False, faults: dict | None = None,
        **options) -> RunSummary:
    """Explain every record under ``input`` and write the tables under ``output``.

    What to compute and how: a :class:`~ecgray.pipeline.config.RunConfig` (``config``), or its fields
    as keywords (``model=``, ``weights=``, ``methods=``, ``targets=``, ``output_kind=``, ``params=``,
    ``shard_size=``, ``policy=``, ``labels_csv=``, ``keep_relevance=``, ``beats=``, ``waves=``, ``precision=``,
    ``batch_size=``, ``num_attr_actors=``, ``use_gpu=``, ``torch_threads=``). ``faults``: a test hook
    (:func:`ecgray.pipeline.stages.maybe_fail`), never set in production.

    ``methods`` are canonical names or aliases; ``params`` is per method
    (``{"integrated_gradients": {"n_steps": 16}}``). See the package docstring
    for the layout, resume and retry guarantees. Raises :class:`PipelineError`
    when the run is refused. ``torch_threads``: intra-op threads of each CPU
    attribution actor (default: half the node's cores over the actors; give
    all cores for heavy methods such as IG, whose CPU stages are idle most of
    the time). Starts Ray (``RAY_ADDRESS`` or a local instance)
    if it is not running.

    The run holds ``<output>/_lock.json`` from the check of the output to its end: a second run into an
    output that a live run holds is refused (naming it); a dead run's lock is taken over
    (:class:`~ecgray.pipeline.lock.OutputLock`). ``resume=True`` into an input that grew runs exactly the
    records that no committed shard holds (added ones, wherever they sort, in new shards numbered after
    the last; unfinished shards again under their number) and leaves committed shards untouched; it is
    refused when a record of a committed shard was removed or changed (its catalog description:
    :func:`~ecgray.store.record_fingerprint`). What the resume did is ``summary.resume``
    (``committed_shards``, ``new_records``, ``new_shards``, ... ; ``{}`` for a new plan). Rows and
    commit markers name the run that wrote their shard; the manifest names the latest run and lists
    all in ``runs``.
    """
    t_start = time.perf_counter()
    if config is None:
        config = RunConfig.from_kwargs(**options)
    elif options:
        config = config.with_(**options)
    cfg = config
    run_id = run_id or new_run_id()
    if not RUN_ID.fullmatch(str(run_id)):
        raise PipelineError(f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit (it names a folder under the output)")
    net = load_model(cfg.model, weights=cfg.weights)  # validates the model and targets on the driver
    spec = require_table_layout(net)
    mid = model_id(net)
    classes = spec.classes
    del net
    for t in cfg.targets or []:
        if t not in classes:
            raise PipelineError(f"unknown target {t!r}; the model's classes are {', '.join(classes)}")

    cat = catalog(input, labels_csv=cfg.labels_csv)
    rows = cat.to_pylist()
    skipped = skipped_files(cat)
    if skipped:
        log.info("catalog: skipped %d file(s) that are hidden or not records (listed in _manifest.json): %s%s",
                 len(skipped), ", ".join(x["path"] for x in skipped[:10]), ", ..." if len(skipped) > 10 else "")
    manifest = {
        "input": str(input), "model": str(cfg.model), "weights": None if cfg.weights is None else str(cfg.weights),
        "model_id": mid, "model_spec": spec.to_dict(), "methods": list(cfg.methods),
        "targets": list(cfg.targets) if cfg.targets else None, "output_kind": cfg.output_kind, "params": cfg.params,
        "shard_size": cfg.shard_size, "policy": cfg.policy, "keep_relevance": cfg.keep_relevance, "beats": cfg.beats,
        "waves": cfg.waves,
        "schema_version": SCHEMA_VERSION, "precision": cfg.precision, "n_records": cat.num_rows, "run_id": run_id,
        "skipped": skipped,
    }
    store = Store(output)
    lock = _hold(OutputLock(store, run_id).acquire())  # refuses while a live run holds the output
    old, commits = _check_output(store, manifest, resume=resume, overwrite=overwrite)
    if old is None:
        shards = plan_shards(rows, input, cfg.shard_size)
        fps = {r["record_key"]: record_fingerprint(r) for r in rows}
        plan = {s["shard"]: plan_entry(s, fps, run_id) for s in shards}
        report, next_shard = {}, len(shards)
    else:
        shards, plan, report = plan_resume(store.root, rows, input, cfg.shard_size, old, commits, run_id)
        next_shard = report["next_shard"]
    todo = [s for s in shards if s["shard"] not in commits]
    runs = list(old.get("runs") or [{"run_id": old.get("run_id")}]) if old else []
    runs.append({"run_id": run_id, "mode": "resume" if old else ("overwrite" if overwrite else "new"),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lock.started)),
                 "host": lock.info()["host"], "pid": os.getpid(), "n_records": cat.num_rows,
                 "shards_kept": len(commits), "shards_run": [s["shard"] for s in todo],
                 **({"new_records": report["new_records"]} if old else {}),
                 **({"took_over_lock_of": lock.took_over.get("run_id")} if lock.took_over else {})})
    manifest.update(n_shards=len(shards), next_shard=next_shard, shards=plan, runs=runs)
    store.write_manifest(manifest)  # before any shard runs: every commit marker finds its plan entry
    if old is not None:
        log.info("resume: %d committed shards kept (%d records), %d unfinished shards rerun, %d new records in %d "
                 "new shards%s", report["committed_shards"], report["committed_records"],
                 len(report["unfinished_shards"]), report["new_records"], len(report["new_shards"]),
                 f" ({report['new_shards'][0]}..{report['new_shards'][-1]})" if report["new_shards"] else "")
    summary = RunSummary(run_id=run_id, output=str(output), records=cat.num_rows, shards=len(shards),
                         shards_skipped=len(shards) - len(todo), beats=cfg.beats)
    summary.resume = report  # {} for a new plan; see plan_resume
    summary.skipped = skipped
    for m in commits.values():
        summary.records_ok += int(m.get("records_ok", 0))
        summary.records_error += int(m.get("records_error", 0))
    del cat, rows

    results = []
    if todo:
        results = _execute(todo, cfg, output=output, run_id=run_id, model_id=mid, spec=spec, progress=progress,
                           faults=faults)
    done = set(commits) | {r["shard"] for r in results}
    missing = [s["shard"] for s in shards if s["shard"] not in done]
    if missing:  # cannot happen unless Ray dropped rows; never report success then
        raise PipelineError(f"shards {', '.join(missing[:5])} were not written; rerun with --resume")
    store.clean(keep_shards=sorted(done))

    stage_keys = ("read", "attribute", "beats", "write")
    summary.stage_seconds = {k: 0.0 for k in stage_keys}
    summary.rows = {"records": 0, "relevance_summary": 0, "beats": 0}
    processed = 0
    for m in commits.values():  # skipped shards: their windows from the commit marker's row counts
        summary.windows += int((m.get("rows") or {}).get("records", 0))
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


def explain_config(cfg: RunConfig, *, model_id: str, spec: ModelSpec):
    """The :class:`~ecgray.explain.ExplainConfig` the table stages of a run use (what every row records)."""
    from ecgray.explain import ExplainConfig

    return ExplainConfig(model_name=str(cfg.model), model_id=model_id, methods=cfg.methods,
                         targets=list(cfg.targets) if cfg.targets else None, output=cfg.output_kind,
                         params=cfg.params, keep_relevance=cfg.keep_relevance, batch_size=cfg.batch_size, spec=spec,
                         waves=cfg.waves)


def _execute(todo: list[dict], cfg: RunConfig, *, output: str, run_id: str, model_id: str, spec: ModelSpec,
             progress: bool | None, faults: dict | None) -> list[dict]:
    """Run the plan over the shards ``todo``; returns one result row per written shard."""
    ray = ray_init_if_needed()
    import ray.data

    res = ray.cluster_resources()
    n_cpu = float(res.get("CPU", 1.0))
    n_gpu = int(res.get("GPU", 0))
    gpu = bool(n_gpu) if cfg.use_gpu is None else bool(cfg.use_gpu)
    n_actors = int(cfg.num_attr_actors or max(n_gpu, 1))
    if cfg.precision != "fp32" and not gpu:
        log.warning("precision=%s applies to GPU attribution only: this run attributes on CPU, in float32",
                    cfg.precision)
    if gpu and not n_gpu:
        # Scale-from-zero clusters (cluster.yaml): the pending num_gpus=1 actors are what makes the
        # autoscaler start GPU workers, so wait for them instead of refusing.
        log.warning("use_gpu=True but the cluster has no GPU yet: %d attribution actor(s) will wait for the "
                    "autoscaler to add GPU nodes", n_actors)
    n_actors = max(1, min(n_actors, len(todo)))
    # On CPU the actors share the cores with the read/beats/write tasks (up to n_cpu // 2 of each): give torch
    # half the cores. More intra-op threads than free cores makes OpenMP threads wait for each other: on 2
    # busy cores, saliency with 2 torch threads took 346 ms/window, with 1 thread 12.5 ms.
    torch_threads = None if gpu else (cfg.torch_threads or max(1, int(n_cpu // 2 // n_actors)))
    explain_cfg = explain_config(cfg, model_id=model_id, spec=spec)
    items = [{"shard": s["shard"], "payload": _spec_bytes(s, run_id)} for s in todo]

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.actor_task_retry_on_errors, ctx.enable_progress_bars)
    # An exception escaping a shard is retried inside the actor (stages.APP_RETRIES, bounded); Ray retries only
    # system failures (a dead actor or node) -- without bound, as Ray Data's own default, see _plan.
    ctx.actor_task_retry_on_errors = False
    # ecgray reports progress itself (shards, records, rate, ETA, errors; see .progress): Ray Data's bars
    # (or, off a terminal, its multi-line progress log) are off, and so is its one-time notice saying so.
    ctx.enable_progress_bars = False
    try:
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
    except ImportError:  # pragma: no cover - other Ray versions
        pass
    retry = {"max_retries": 3, "retry_exceptions": True}
    # CPU stages are cheap next to attribution (~20 ms/record to read, a few ms to build and write tables):
    # a few concurrent tasks keep the actors fed without spawning (and importing into) many workers.
    cpu_tasks = max(1, int(n_cpu // 2))
    cpu_memory = _cpu_stage_memory(ray, todo, methods=cfg.methods, targets=cfg.targets, policy=cfg.policy, spec=spec)
    n_records = {s["shard"]: len(s["items"]) for s in todo}
    reporter = None
    if progress is not False:
        from .progress import Progress

        reporter = Progress(len(todo), sum(n_records.values()))
    results = []
    try:
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing max_retries/retry_exceptions/max_restarts/max_task_retries as
            # **ray_remote_args (removal announced for 2.64) but offers no named parameter for them yet.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = _plan(ray, items, cfg, explain_cfg, output=output, run_id=run_id, gpu=gpu, n_actors=n_actors,
                       torch_threads=torch_threads, cpu_tasks=cpu_tasks, retry=retry, cpu_memory=cpu_memory,
                       faults=faults)
        if reporter is not None:
            reporter.start()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            results.extend(rows)
            if reporter is not None:
                for r in rows:
                    reporter.update(records=n_records.get(r["shard"], r["records_ok"] + r["errors"]),
                                    errors=r["errors"], windows=r["windows"])
    except BaseException:
        if reporter is not None:
            reporter.close(interrupted=True)  # the caller says what happened (error, or "interrupted after ...")
        raise
    else:
        if reporter is not None:
            reporter.close()
    finally:
        ctx.actor_task_retry_on_errors, ctx.enable_progress_bars = saved
    return results


#: Measured peak USS of a Ray task worker running the CPU stages (one worker runs read, beats and write in
#: turn): 280-480 MiB per stage, up to 710 MiB for a worker that ran all three (demo: 16-record shards, IG
#: + LRP, 6 targets, keep_relevance; Ray Data's ``max_uss_bytes`` per operator). Ray Data's high-memory
#: detector warns when a stage uses more than it requests, and when the request is under 1.25x the peak
#: (888 MiB here): so each task requests this plus four copies of its shard's arrays (signal + relevance).
CPU_STAGE_BASE_MB = 900
def _cpu_stage_memory(ray, todo: list[dict], *, methods, targets, policy, spec) -> int | None:
    """Logical memory (bytes) each read/beats/write task requests; never more than a quarter of a node's.
    A window's relevance is (targets x leads x samples) float32 per method, for the model's ``spec``."""
    n = max((len(s["items"]) for s in todo), default=1) * (3 if policy == "windows" else 1)
    per_window = spec.n_leads * spec.n_samples * 4 * (1 + len(methods) * len(targets or spec.classes))
    want = (CPU_STAGE_BASE_MB << 20) + 4 * n * per_window
    try:
        node_mem = max(float(nd.get("Resources", {}).get("memory", 0)) for nd in ray.nodes() if nd.get("Alive"))
    except Exception:  # noqa: BLE001 - no node information (or no alive node): no request, Ray's default
        return None
    if node_mem <= 0:
        return None
    return int(min(want, node_mem // 4))


def _plan(ray, items, cfg: RunConfig, explain_cfg, *, output: str, run_id: str, gpu: bool, n_actors: int,
          torch_threads: int | None, cpu_tasks: int, retry: dict, cpu_memory: int | None = None,
          faults: dict | None = None):
    """The Ray Data plan: one row per shard through read -> attribute -> beats/tables -> write.

    The task stages run at most ``cpu_tasks`` at a time (``TaskPoolStrategy``; ``concurrency=`` is
    deprecated since Ray 2.51) and request ``cpu_memory`` bytes each.
    """
    tasks = ray.data.TaskPoolStrategy(size=cpu_tasks)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(stages.read_preprocess, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                        compute=tasks, memory=cpu_memory,
                        fn_kwargs={"run_id": run_id, "labels_csv": cfg.labels_csv, "policy": cfg.policy,
                                   "faults": faults, "spec": explain_cfg.spec}, **retry)
    ds = ds.map_batches(
        stages.AttributeActor, batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if gpu else 0, num_cpus=1 if gpu else 0.5,
        # max_task_retries=-1: a shard in flight on an actor whose node is lost is retried until the restarted
        # actor takes it. A finite count is spent on "actor unavailable" attempts against the dead node before the
        # GCS has declared it dead (ray-project/ray#25457): with 3, losing the actor's node failed the run
        # (tests/test_cluster_nodes.py). Application errors are not retried by Ray (actor_task_retry_on_errors
        # False); the actor retries them itself, bounded. max_restarts bounds the restarts.
        max_restarts=3, max_task_retries=-1,
        fn_constructor_kwargs={"model": str(cfg.model), "weights": cfg.weights, "methods": list(cfg.methods),
                               "targets": list(cfg.targets) if cfg.targets else None, "output": cfg.output_kind,
                               "params": cfg.params, "batch_size": cfg.batch_size, "use_gpu": gpu,
                               "precision": cfg.precision, "torch_threads": torch_threads, "faults": faults})
    ds = ds.map_batches(stages.beats_and_tables, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                        compute=tasks, memory=cpu_memory,
                        fn_kwargs={"run_id": run_id, "cfg": explain_cfg, "with_beats": cfg.beats, "faults": faults},
                        **retry)
    ds = ds.map_batches(stages.write_shard, batch_size=1, batch_format="pyarrow", num_cpus=0.1,
                        compute=tasks, memory=cpu_memory,
                        fn_kwargs={"output": str(output), "run_id": run_id, "faults": faults}, **retry)
    return ds


def _spec_bytes(shard: dict, run_id: str) -> bytes:
    from . import codec

    return codec.dumps({"shard": shard["shard"], "record_hash": shard["record_hash"], "run_id": run_id,
                        "items": shard["items"]})
