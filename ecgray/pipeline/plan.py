"""The plan of a run: records into shards, and what ``--resume`` keeps, reruns and adds.

:func:`plan_shards` cuts the catalog into consecutive shards of ``shard_size`` records in
(record_id, record_key) order; :func:`plan_resume` matches a previous plan (``_manifest.json``) and its
commit markers against the input as it is now (see :func:`ecgray.pipeline.run.run`).
"""
from __future__ import annotations

import os

from ecgray.io import is_s3
from ecgray.store import PipelineError, record_fingerprint, shard_hash, shard_name


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/")
    if not is_s3(root):
        root = os.path.abspath(root)
    return uri[len(root):].lstrip("/") if uri.startswith(root) else uri


#: the catalog fields a shard's items carry to the workers
ITEM_FIELDS = ("record_id", "record_key", "uri", "error", "error_type")


def _order(r: dict) -> tuple:
    return (r["record_id"], r["record_key"])


def _shard_spec(name: str, items: list[dict], input_root: str) -> dict:
    h = shard_hash((r["record_id"], _relative(r["uri"], input_root)) for r in items)
    return {"shard": name, "record_hash": h, "items": items}


def plan_shards(cat, input_root: str, shard_size: int, *, start: int = 0) -> list[dict]:
    """Consecutive chunks of ``shard_size`` records in (record_id, record_key) order, numbered from ``start``,
    with their hash. ``cat``: the catalog table or a list of its rows (dicts)."""
    rows = cat.select(list(ITEM_FIELDS)).to_pylist() if hasattr(cat, "select") else cat
    rows = sorted(({c: r.get(c) for c in ITEM_FIELDS} for r in rows), key=_order)
    return [_shard_spec(shard_name(start + k), rows[i:i + shard_size], input_root)
            for k, i in enumerate(range(0, len(rows), shard_size))]


def plan_entry(shard: dict, fingerprints: dict, run_id: str) -> dict:
    """A shard's entry in the manifest's plan: its records (keys, in shard order) and their fingerprints."""
    keys = [r["record_key"] for r in shard["items"]]
    return {"record_hash": shard["record_hash"], "records": keys, "fingerprints": [fingerprints[k] for k in keys],
            "run_id": run_id}


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _legacy_plan(root: str, rows: list[dict], input_root: str, shard_size: int, old: dict,
                 commits: dict) -> dict:
    """The plan of an output written before manifests recorded it: its shards were consecutive chunks of the
    catalog in (record_id, uri) or (record_id, record_key) order, so the committed ones must still be."""
    n_old = int(old.get("n_shards") or 0)
    bad: list[str] = []
    for order in (lambda r: (r["record_id"], r["uri"]), _order):
        ordered = sorted(rows, key=order)
        chunks = [_shard_spec(shard_name(k), [{c: r.get(c) for c in ITEM_FIELDS} for r in ordered[i:i + shard_size]],
                              input_root) for k, i in enumerate(range(0, len(ordered), shard_size))]
        bad = sorted(k for k, m in commits.items()
                     if int(k) >= len(chunks) or chunks[int(k)]["record_hash"] != m.get("record_hash"))
        if not bad:
            return {c["shard"]: {"record_hash": c["record_hash"], "records": [r["record_key"] for r in c["items"]],
                                 "fingerprints": [], "run_id": old.get("run_id")}
                    for k, c in enumerate(chunks) if k < n_old or c["shard"] in commits}
    raise PipelineError(f"cannot resume into {root}: the input changed since the previous run (shards "
                        f"{_few(bad)} hold other records now), and this output was written by an older ecgray that "
                        "did not record which records each shard holds, so records cannot be added to it; "
                        "use --overwrite to start again")


def plan_resume(root: str, rows: list[dict], input_root: str, shard_size: int, old: dict, commits: dict,
                 run_id: str) -> tuple[list[dict], dict, dict]:
    """Continue the plan of ``old`` (the previous manifest) on the catalog ``rows`` now.

    Committed shards are kept untouched; their records must still be in the input, unchanged
    (:func:`~ecgray.store.record_fingerprint`), else :class:`PipelineError`. Unfinished shards of the
    previous plan run again under their number when all their records are still there and in no committed
    shard (a late commit of the run that planned them holds the same records); every other record (added, or
    from an unfinished shard that lost a record) goes into new shards, ``shard_size`` consecutive records in
    (record_id, record_key) order, numbered after every shard planned so far. Returns ``(shards, plan,
    report)``: all shards in shard order (committed ones without ``items``), the manifest's new plan, and what
    the resume did.
    """
    now = {r["record_key"]: r for r in rows}
    prev = old.get("shards")
    legacy = not isinstance(prev, dict)
    if legacy:
        prev = _legacy_plan(root, rows, input_root, shard_size, old, commits)
    done: dict[str, str] = {}
    for k, m in sorted(commits.items()):
        entry = prev.get(k)
        if entry is None or entry.get("record_hash") != m.get("record_hash"):
            raise PipelineError(f"cannot resume into {root}: committed shard {k} (written by run {m.get('run_id')}) "
                                "is not the shard its manifest planned (a run that wrote into this output without "
                                "holding its lock?); use --overwrite to start again")
        for key in entry.get("records") or []:
            if key in done:
                raise PipelineError(f"cannot resume into {root}: record {key} is in two committed shards ({done[key]} "
                                    f"and {k}); use --overwrite to start again")
            done[key] = k
    fps = {key: record_fingerprint(r) for key, r in now.items()}
    removed = sorted(key for key in done if key not in now)
    changed = sorted(key for k in commits for key, fp in zip(prev[k]["records"], prev[k].get("fingerprints") or [])
                     if key in now and fps[key] != fp)
    if removed or changed:
        what = []
        if removed:
            what.append(f"{len(removed)} record(s) of committed shards are gone ({_few(removed)})")
        if changed:
            what.append(f"{len(changed)} record(s) of committed shards changed ({_few(changed)})")
        raise PipelineError(f"cannot resume into {root}: the input changed since the previous run: {'; '.join(what)}. "
                            "--resume adds records but never rewrites committed shards; restore those records or "
                            "use --overwrite to start again")
    planned = set(done)
    rerun = []
    for k in sorted((k for k in prev if k not in commits), key=int):
        keys = prev[k].get("records") or []
        if keys and all(key in now and key not in planned for key in keys):
            spec = _shard_spec(k, [{c: now[key].get(c) for c in ITEM_FIELDS} for key in keys], input_root)
            if spec["record_hash"] == prev[k].get("record_hash"):
                rerun.append(spec)
                planned.update(keys)
    start = max([int(k) + 1 for k in list(prev) + list(commits)] + [int(old.get("next_shard") or 0)])
    new = plan_shards([r for key, r in now.items() if key not in planned], input_root, shard_size, start=start)
    plan = {}
    for k, m in commits.items():
        entry = dict(prev[k])
        if not entry.get("fingerprints"):  # an older output: the records as they are now
            entry["fingerprints"] = [fps[key] for key in entry["records"]]
        entry["run_id"] = entry.get("run_id") or m.get("run_id")
        plan[k] = entry
    for s in rerun + new:
        plan[s["shard"]] = plan_entry(s, fps, run_id)
    committed = [{"shard": k, "record_hash": m.get("record_hash"), "items": None} for k, m in commits.items()]
    shards = sorted(committed + rerun + new, key=lambda s: int(s["shard"]))
    before = {key for e in prev.values() for key in e.get("records") or []}
    n_new = sum(1 for s in new for r in s["items"] if r["record_key"] not in before)
    report = {"committed_shards": len(commits), "committed_records": len(done),
              "unfinished_shards": [s["shard"] for s in rerun], "new_records": n_new,
              "replanned_records": sum(len(s["items"]) for s in new) - n_new,
              "new_shards": [s["shard"] for s in new], "next_shard": start + len(new), "legacy_output": legacy}
    return shards, plan, report
