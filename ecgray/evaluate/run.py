"""The ``ecgray evaluate OUTPUT`` driver: Ray tasks over shards of a run's records, exactly-once.

Layout under ``<output>/evaluation/`` (the commit protocol of :class:`ecgray.store.Store`)::

    _manifest.json                     the settings (EvaluateConfig, sample, the run's model) and the plan
    _commits/shard=<k>.json            one marker per finished shard, written last
    <table>/shard=<k>/part-0.parquet   deletion, faithfulness, randomisation, agreement, errors

Each task re-reads its records from the run's input (the ``uri`` of the run's ``records`` rows),
preprocesses them as the run did (its model spec and window policy), recomputes the maps with the
run's methods and parameters, and checks that the model's probabilities equal the run's
(:data:`PROB_TOLERANCE`): a record whose file or model changed since the run becomes an ``errors`` row
(``stale``), never a silently different number. Models are loaded once per worker process and
reused by its later tasks. ``resume=True`` keeps the shards already committed (same settings, same
records) and runs the rest; changed settings are refused, naming them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ecgray.evaluate.core import EvaluateConfig, cost_per_target, evaluate_batch, record_targets
from ecgray.evaluate.randomisation import cascade_layers
from ecgray.evaluate.sample import stratified_sample
from ecgray.schemas.evaluation import EVALUATION_TABLE_NAMES
from ecgray.schemas.tables import empty, from_rows
from ecgray.store import PipelineError, Store, evaluation_root, output_spec, read_table, shard_name

log = logging.getLogger("ecgray.evaluate")

#: largest |probability - the run's probability| accepted for a re-read record
PROB_TOLERANCE = 1e-3
#: what must match for ``--resume`` (not the run id: a resumed run that added records keeps the evaluation of
#: the old ones valid -- each is checked against the run's probabilities again when re-evaluated)
SETTING_KEYS = ("config", "sample", "model", "weights", "model_spec")


@dataclass
class EvaluateSummary:
    evaluation_id: str
    n_records: int
    n_shards: int
    n_written: int
    n_kept: int
    n_errors: int
    seconds: float
    cost: dict[str, int] = field(default_factory=dict)
    root: str = ""


_MODELS: dict[tuple, Any] = {}


def _model(ref: str, weights: str | None, device: str):
    """A model per worker process (loaded once, reused by later tasks of that process)."""
    from ecgray.models import load_model

    key = (ref, weights, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(ref, weights=weights, device=device)
    return _MODELS[key]


def evaluate_shard(task: dict) -> dict:
    """One shard: read, check, evaluate, commit. ``task``: see :func:`evaluate` (plain data)."""
    import torch

    from ecgray.explain import error_row, prepare
    from ecgray.models.spec import ModelSpec

    if task.get("torch_threads"):
        torch.set_num_threads(int(task["torch_threads"]))
    device = "cuda" if task.get("gpu") and torch.cuda.is_available() else "cpu"
    cfg = EvaluateConfig(**{**task["config"], "fractions": tuple(task["config"]["fractions"])})
    spec = ModelSpec.from_dict(task["model_spec"])
    model = _model(task["model"], task["weights"], device)
    extra = {ref: _model(ref, None, device) for ref in cfg.models}
    eid = task["evaluation_id"]
    xs, rows, errors = [], [], []
    for row in task["rows"]:
        prep, err = prepare(row["uri"], run_id=eid, policy=task["policy"], record_key=row["record_key"], spec=spec)
        if err is not None:
            errors.append({**err, "stage": "evaluate:" + err["stage"]})
            continue
        win = [w for w in prep.windows if int(w.window) == int(row["window"])]
        if not win:
            errors.append({"run_id": eid, "record_key": row["record_key"], "record_id": row["record_id"],
                           "uri": row["uri"], "stage": "evaluate", "error_type": "stale",
                           "message": f"window {row['window']} of {row['record_id']!r} no longer exists"})
            continue
        xs.append(win[0].x)
        rows.append(row)
    tables: dict[str, Any] = {}
    if rows:
        x = np.stack(xs).astype(np.float32)
        from ecgray.evaluate.faithfulness import forward_logits, probabilities

        probs = probabilities(forward_logits(model, x), spec.activation or "sigmoid")
        ok = []
        for i, row in enumerate(rows):
            was = np.array([row.get(f"prob_{c}") for c in spec.classes], dtype=np.float64)
            diff = float(np.nanmax(np.abs(probs[i] - was)))
            if not diff <= PROB_TOLERANCE:
                errors.append({"run_id": eid, "record_key": row["record_key"], "record_id": row["record_id"],
                               "uri": row["uri"], "stage": "evaluate", "error_type": "stale",
                               "message": f"{row['record_id']!r}: the model's probabilities differ from the run's by "
                                          f"{diff:.3g} (> {PROB_TOLERANCE}): the record or the model changed since "
                                          "the run; rerun the pipeline"})
            else:
                ok.append(i)
        if ok:
            try:
                tables = evaluate_batch(model, x[ok], [rows[i] for i in ok], cfg, evaluation_id=eid,
                                        extra_models=extra, model_name=task["model"])
            except Exception as exc:  # noqa: BLE001 - one failing record must not take the shard down
                tables = {}
                for i in ok:
                    try:
                        part = evaluate_batch(model, x[i:i + 1], [rows[i]], cfg, evaluation_id=eid,
                                              extra_models=extra, model_name=task["model"])
                    except Exception as exc1:  # noqa: BLE001
                        errors.append(error_row(eid, rows[i]["record_id"], rows[i]["uri"], exc1, "evaluate",
                                                rows[i]["record_key"]))
                        continue
                    for k, v in part.items():
                        tables.setdefault(k, []).append(v)
                import pyarrow as pa

                tables = {k: pa.concat_tables(v) for k, v in tables.items()}
                log.warning("evaluation of shard %s failed as a batch (%s); evaluated record by record",
                            task["shard"], exc)
    for name in EVALUATION_TABLE_NAMES:
        if name not in tables and name != "errors":
            tables[name] = empty(name)
    tables["errors"] = from_rows("errors", errors)
    store = Store(task["root"])
    store.write_shard(task["shard"], tables, run_id=eid, record_hash=task["record_hash"])
    return {"shard": task["shard"], "records": len(task["rows"]), "errors": len(errors)}


def _record_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['record_key']}\t{r['window']}\n".encode())
    return h.hexdigest()[:16]


def _defaults(cfg: EvaluateConfig | None, manifest: dict, options: dict) -> EvaluateConfig:
    """The evaluation's config: the run's methods and parameters unless given."""
    if cfg is None:
        options = dict(options)
        methods = options.pop("methods", None) or manifest.get("methods") or ("saliency",)
        from ecgray.attribution import resolve_method

        names = [resolve_method(m).name for m in methods]
        params = {m: dict((manifest.get("params") or {}).get(m, {})) for m in names}
        params.update({resolve_method(m).name: dict(v) for m, v in (options.pop("params", None) or {}).items()})
        options.setdefault("output_kind", manifest.get("output_kind", "logit"))
        cfg = EvaluateConfig(methods=tuple(names), params=params, **options)
    return cfg


def evaluate(output: str, config: EvaluateConfig | None = None, *, sample: int | None = None, resume: bool = False,
             overwrite: bool = False, shard_size: int = 4, use_gpu: bool | None = None,
             torch_threads: int | None = None, evaluation_id: str | None = None, console=None,
             start_ray=None, **options) -> EvaluateSummary:
    """Evaluate the maps of the run in ``output`` (see the module docstring); returns a summary.

    ``config`` or its fields as keywords (``methods=``, ``params=``, ``targets=``, ``tests=``,
    ``replacement=``, ``block_ms=``, ``fractions=``, ``n_subsets=``, ``seed=``, ``models=``); methods and
    parameters default to the run's. ``sample``: at most N windows per class
    (:func:`ecgray.evaluate.sample.stratified_sample`). Raises :class:`~ecgray.store.PipelineError`
    when refused (not a run, an existing evaluation without ``resume``/``overwrite``, changed settings).
    ``start_ray``: called (no arguments) once the plan is checked and work remains, to start Ray the
    caller's way (the CLI's quiet session); default :func:`ecgray.pipeline.run.ray_init_if_needed`.
    """
    from ecgray.explain import new_run_id
    from ecgray.models import load_model
    from ecgray.pipeline.run import ray_init_if_needed

    t0 = time.perf_counter()
    store = Store(output)
    manifest = store.manifest()
    if manifest is None or not store.commits():
        raise PipelineError(f"{output} holds no committed pipeline run to evaluate (run `ecgray run` first)")
    if config is not None and options:
        config = replace(config, **options)
    cfg = _defaults(config, manifest, options)
    spec = output_spec(output)
    eid = evaluation_id or new_run_id()
    records = read_table(output, "records").to_pylist()
    chosen = stratified_sample(records, spec.classes, sample, seed=cfg.seed)
    size = max(1, int(shard_size))
    shards = {shard_name(i // size): chosen[i:i + size] for i in range(0, len(chosen), size)}
    settings = {"config": json.loads(json.dumps(cfg.to_dict())), "sample": sample,
                "source_run_id": manifest.get("run_id"), "model": manifest["model"],
                "weights": manifest.get("weights"), "model_spec": spec.to_dict()}
    eroot = evaluation_root(output)
    estore = Store(eroot)
    old = estore.manifest()
    plan = {k: {"record_hash": _record_hash(v), "records": [[r["record_key"], r["window"]] for r in v]}
            for k, v in shards.items()}
    kept: set[str] = set()
    if old is not None or estore.entries():
        if overwrite:
            for e in estore.entries():
                estore.rm(estore.p(e))
        elif not resume:
            raise PipelineError(f"{eroot} already holds an evaluation; pass resume=True (--resume) to finish it or "
                                "overwrite=True (--overwrite) to replace it")
        else:
            was = {k: (old or {}).get(k) for k in SETTING_KEYS}
            diff = [k for k in SETTING_KEYS if was[k] != settings[k]]
            if diff:
                detail = "; ".join(f"{k}: was {was[k]!r}, now {settings[k]!r}" for k in diff)
                raise PipelineError(f"cannot resume the evaluation in {eroot}: its settings changed ({detail}); "
                                    "use --overwrite to start again")
            commits = estore.commits()
            kept = {k for k, m in commits.items() if k in plan and m.get("record_hash") == plan[k]["record_hash"]}
            for k in set(commits) - kept:  # planned otherwise now (the sample grew): rewritten or gone
                estore.rm(estore.commit_file(k))
                for name in EVALUATION_TABLE_NAMES:
                    estore.rm(estore.p(name, f"shard={k}"))
    estore.write_manifest({**settings, "evaluation_id": eid, "shards": plan, "n_shards": len(plan),
                           "n_records": len(chosen)})
    estore.rm(estore.p("_tmp"))
    net = load_model(manifest["model"], weights=manifest.get("weights"))
    n_layers = len(cascade_layers(net))
    cost = cost_per_target(cfg, n_layers)
    n_targets = sum(len(record_targets(r, spec.classes, cfg.targets)) for r in chosen)
    del net
    say = console.print if console is not None else log.info
    say(f"evaluate: {len(chosen)} record window(s) of {len(records)} in {len(shards)} shard(s) "
        f"({len(kept)} already committed); {n_targets} record x target pair(s) x {len(cfg.methods)} method(s); "
        f"cost per record x target x method: {cost['forwards']} forwards + {cost['attributions']} attribution call(s)")
    todo = [k for k in shards if k not in kept]
    done = []
    if todo:
        if start_ray is not None:
            start_ray()
        ray = ray_init_if_needed()
        n_gpu = int(ray.cluster_resources().get("GPU", 0))
        gpu = bool(n_gpu) if use_gpu is None else bool(use_gpu)
        remote = ray.remote(evaluate_shard).options(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=3)
        base = {"root": eroot, "evaluation_id": eid, "config": settings["config"], "model": manifest["model"],
                "weights": manifest.get("weights"), "model_spec": spec.to_dict(),
                "policy": manifest.get("policy", "first"), "gpu": gpu, "torch_threads": torch_threads or 1}
        refs = [remote.remote({**base, "shard": k, "rows": shards[k], "record_hash": plan[k]["record_hash"]})
                for k in todo]
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            res = ray.get(ready[0])
            done.append(res)
            say(f"evaluate: shard {res['shard']} committed ({res['records']} record(s), {res['errors']} error(s)); "
                f"{len(done)}/{len(todo)}")
    estore.rm(estore.p("_tmp"))
    n_err = sum(r["errors"] for r in done)
    return EvaluateSummary(evaluation_id=eid, n_records=len(chosen), n_shards=len(shards), n_written=len(done),
                           n_kept=len(kept), n_errors=n_err, seconds=time.perf_counter() - t0, cost=cost, root=eroot)


def read_evaluation(output: str, name: str):
    """Table ``name`` of the evaluation in ``output`` (committed shards only; empty when none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecgray.schemas.tables import schema

    store = Store(evaluation_root(output))
    parts = []
    for _, marker in sorted(store.commits().items()):
        rel = marker.get("files", {}).get(name)
        if rel is None:
            continue
        with store.fs.open(posixpath.join(store.path, rel), "rb") as f:
            parts.append(pq.read_table(f))
    return pa.concat_tables(parts).cast(schema(name)) if parts else empty(name)
