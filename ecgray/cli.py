"""The ``ecgray`` command line (typer)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Explain a 12-lead ECG classifier at data-set scale.")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (no traceback)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _interrupted(session, output: str | None, hint: str = "rerun with --resume") -> None:
    """After Ctrl-C: stop Ray (``session``: :class:`ecgray.pipeline.session.RaySession`), print how far the run
    got as the last line, exit 130."""
    message = session.interrupted(output, hint)
    sys.stdout.flush()
    err_console.print(message, highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(130)


def _parse_targets(target: List[str] | None) -> list[str] | None:
    if not target:
        return None
    names = [t.strip() for item in target for t in item.split(",") if t.strip()]
    return None if any(t.lower() == "all" for t in names) else names


def _parse_params(param: List[str] | None) -> dict:
    """``--param n_steps=16 --param internal_batch_size=32`` -> typed dict (numbers, bools, strings)."""
    out: dict = {}
    for item in param or []:
        if "=" not in item:
            fail(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


@app.command()
def catalog(
    path: str = typer.Argument(..., help="Folder or s3:// prefix holding WFDB records and/or CODE-15 HDF5 files."),
    labels: Optional[str] = typer.Option(None, "--labels", help="REFERENCE.csv (CPSC) or ptbxl_database.csv."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the catalog as Parquet."),
) -> None:
    """List the records under PATH (headers only, no signals)."""
    from .io import catalog as build_catalog
    from .io.catalog import skipped_files

    t0 = time.perf_counter()
    try:
        tbl = build_catalog(path, labels_csv=labels)
    except FileNotFoundError as exc:
        fail(f"{path}: not found ({exc})")
    except Exception as exc:  # noqa: BLE001
        fail(f"{path}: {type(exc).__name__}: {exc}")
    dt = time.perf_counter() - t0
    import polars as pl

    df = pl.from_arrow(tbl)
    n_bad = df.filter(pl.col("error").is_not_null()).height if "error" in df.columns else 0
    console.print(f"{path}: {df.height} records ({n_bad} unreadable), catalogued in {dt:.2f} s", highlight=False, soft_wrap=True)
    summary = Table()
    summary.add_column("format")
    summary.add_column("fs (Hz)")
    summary.add_column("records", justify="right")
    summary.add_column("median length (s)", justify="right")
    ok = df.filter(pl.col("error").is_null()) if "error" in df.columns else df
    if ok.height:
        grouped = ok.group_by("format", "fs").agg(pl.len().alias("n"), (pl.col("n_samples") / pl.col("fs")).median().alias("len"))
        for row in grouped.sort("format", "fs").iter_rows(named=True):
            summary.add_row(str(row["format"]), f"{row['fs']:g}", str(row["n"]), f"{row['len']:.1f}")
    console.print(summary)
    label_cols = [c for c in df.columns if c.startswith("label_") and c != "label_scheme"]
    if ok.height and label_cols:
        counts = ok.select([pl.col(c).cast(pl.Int64).sum().alias(c[6:]) for c in label_cols])
        n_unlabelled = ok.filter(pl.col("label_normal").is_null()).height if "label_normal" in ok.columns else 0
        console.print("labels: " + ", ".join(f"{k} {v}" for k, v in counts.row(0, named=True).items())
                      + (f"; unlabelled {n_unlabelled}" if n_unlabelled else ""), highlight=False)
    _print_skipped(skipped_files(tbl))
    if n_bad:
        for row in df.filter(pl.col("error").is_not_null()).head(20).iter_rows(named=True):
            err_console.print(f"[yellow]unreadable:[/] {row['error']}", highlight=False, soft_wrap=True)
    if out:
        import pyarrow.parquet as pq

        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl, out)
        console.print(f"wrote {out}")


@app.command()
def explain(
    records: List[str] = typer.Argument(..., help="Record paths or URIs (WFDB without extension, .hea, or .hdf5[#row]); a folder means all of its records."),
    model: str = typer.Option("demo", "--model", "-m", help="Model name (see `ecgray models`; also `ecgray.models` entry points), package.module:factory, or a .hdf5/.h5/.safetensors file."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file for a named model (e.g. the official model.hdf5 for ribeiro2020)."),
    method: List[str] = typer.Option(["integrated_gradients"], "--method", help="Attribution method(s); repeat or comma-separate. See `ecgray methods`."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target class(es) (AF, LBBB, ...) or 'all' (default)."),
    output_kind: str = typer.Option("logit", "--output-kind", help="Attribute the pre-sigmoid 'logit' or the 'probability'."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Method parameter KEY=VALUE, e.g. -p n_steps=16."),
    labels: Optional[str] = typer.Option(None, "--labels", help="REFERENCE.csv (CPSC) or ptbxl_database.csv."),
    policy: str = typer.Option("first", "--window", help="Records longer than the model's window (4096 samples at 400 Hz for Ribeiro et al. 2020): first, centre or windows."),
    stride: Optional[float] = typer.Option(None, "--stride", help="Window stride in seconds for --window windows."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per attribution call."),
    out: Path = typer.Option(Path("relevance.parquet"), "--out", "-o", help="Parquet file for the per-sample relevance table."),
    summary_only: bool = typer.Option(False, "--summary-only", help="Write the per-lead relevance_summary table instead of the full relevance."),
) -> None:
    """Probabilities and per-sample relevance for RECORDS, in this process (no Ray)."""
    import pyarrow.parquet as pq

    from .errors import ModelError
    from .explain import ExplainConfig, explain as run_explain, new_run_id

    try:
        from .explain import require_table_layout
        from .models import load_model, model_id

        net = load_model(model, weights=weights)
        classes = require_table_layout(net).classes
    except ModelError as exc:
        fail(str(exc))
    methods = _resolve_methods(method)
    targets = _parse_targets(target)
    for t in targets or []:
        if t not in classes:
            fail(f"unknown target {t!r}; the model's classes are {', '.join(classes)}")
    if output_kind not in ("logit", "probability"):
        fail("--output-kind must be 'logit' or 'probability'")
    uris = list(dict.fromkeys(_expand(records)))  # a record named twice is explained once
    if not uris:
        fail("no records found in " + " ".join(records))
    cfg = ExplainConfig(model_name=model, model_id=model_id(net), methods=methods, targets=targets, output=output_kind,
                        params=_method_params(methods, _parse_params(param)), keep_relevance=not summary_only,
                        batch_size=batch_size)
    run_id = new_run_id()
    t0 = time.perf_counter()
    tables = run_explain(net, uris, cfg, run_id=run_id, labels_csv=labels, policy=policy, stride_s=stride)
    dt = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    main = tables["relevance_summary" if summary_only else "relevance"]
    pq.write_table(main, out, compression="zstd")
    errors = tables["errors"]
    for row in errors.to_pylist():
        err_console.print(f"[yellow]skipped[/] {row['record_id']} ({row['stage']}, {row['error_type']}): {row['message']}",
                          highlight=False, soft_wrap=True)
    if errors.num_rows:
        err_path = out.with_name(out.stem + ".errors.parquet")
        pq.write_table(errors, err_path)
    recs = tables["records"]
    _print_probabilities(recs, targets or list(classes))
    console.print(f"{recs.num_rows} windows of {len(set(recs.column('record_key').to_pylist()))} records explained "
                  f"({', '.join(methods)}; {errors.num_rows} skipped) in {dt:.1f} s -> {out}")
    pq.write_table(recs, out.with_name(out.stem + ".records.parquet"))
    if recs.num_rows == 0:
        raise typer.Exit(1)


def _resolve_methods(items: list[str]) -> list[str]:
    """Method names or aliases (``ig``, ``lrp``, comma-separated) -> canonical names, in order, once each."""
    from .attribution import available_methods, resolve_method

    out: list[str] = []
    for m in (m.strip() for item in items for m in item.split(",")):
        if not m:
            continue
        try:
            name = resolve_method(m).name
        except ValueError:
            fail(f"unknown method {m!r}; choose from {', '.join(available_methods())}")
        if name not in out:
            out.append(name)
    return out


def _method_params(methods: list[str], params: dict) -> dict[str, dict]:
    """Route ``KEY=VALUE`` to every method that takes KEY, ``METHOD.KEY=VALUE`` to one method."""
    from .attribution import resolve_method

    routed: dict[str, dict] = {m: {} for m in methods}
    for key, value in params.items():
        if "." in key:
            m, k = key.split(".", 1)
            try:
                name = resolve_method(m).name
            except ValueError:
                fail(f"--param {key}: unknown method {m!r}")
            if name not in routed:
                fail(f"--param {key}: method {name} is not among --method {','.join(methods)}")
            if not resolve_method(name).accepts(k):
                fail(f"--param {key}: {name} takes {', '.join(sorted(resolve_method(name).defaults)) or 'no parameters'}")
            routed[name][k] = value
            continue
        takers = [m for m in methods if resolve_method(m).accepts(key)]
        if not takers:
            fail(f"--param {key}: none of {', '.join(methods)} takes it")
        for m in takers:
            routed[m][key] = value
    return routed


def _print_probabilities(recs, classes) -> None:
    t = Table(title="model probabilities")
    t.add_column("record")
    t.add_column("window", justify="right")
    for c in classes:
        t.add_column(c, justify="right")
    for row in recs.to_pylist()[:30]:
        t.add_row(row["record_id"], str(row["window"]), *[
            (f"[bold]{row[f'prob_{c}']:.3f}[/]" if row.get(f"label_{c}") else f"{row[f'prob_{c}']:.3f}") for c in classes])
    console.print(t)
    if recs.num_rows > 30:
        console.print(f"... {recs.num_rows - 30} more rows; bold = labelled positive")


def _print_skipped(skipped: list[dict], limit: int = 10) -> None:
    """One line naming the files the catalog skipped (hidden, not records), at most ``limit`` names."""
    if not skipped:
        return
    hidden = [x["path"] for x in skipped if x["reason"] == "hidden"]
    other = [x["path"] for x in skipped if x["reason"] != "hidden"]
    names = (hidden + other)[:limit]
    more = len(skipped) - len(names)
    console.print(f"skipped {len(skipped)} file(s): {len(hidden)} hidden, {len(other)} not records: "
                  + ", ".join(names) + (f", ... {more} more (ecgray catalog -o FILE lists them all in its "
                                        "metadata)" if more else ""), highlight=False, soft_wrap=True)


def _expand(items: list[str]) -> list[str]:
    """Folders, s3 prefixes and multi-exam HDF5 files named without ``#row`` -> the URIs of the records
    they hold (via the catalog, as ``ecgray catalog`` and ``ecgray run`` list them)."""
    from .io import catalog as build_catalog
    from .io.read import is_hdf5

    uris: list[str] = []
    for item in items:
        p = Path(item)
        whole_hdf5 = is_hdf5(item) and "#" not in item
        if item.endswith("/") or whole_hdf5 or (not item.startswith("s3://") and p.is_dir()):
            try:
                uris.extend(build_catalog(item).column("uri").to_pylist())
            except Exception as exc:  # noqa: BLE001
                fail(f"{item}: {exc}")
        else:
            uris.append(item)
    return uris


@app.command()
def models() -> None:
    """List the models ecgray knows."""
    from .models import available_models

    for name, desc in available_models().items():
        console.print(f"[bold]{name}[/]: {desc}", highlight=False)


@app.command()
def methods() -> None:
    """List the attribution methods."""
    from .attribution import available_methods, resolve_method

    for name, aliases in available_methods(aliases=True).items():
        cls = resolve_method(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        params = ", ".join(f"{k}={v!r}" for k, v in cls.defaults.items() if not hasattr(v, "shape"))
        alias = f" (alias {', '.join(aliases)})" if aliases else ""
        console.print(f"[bold]{name}[/]{alias}: {doc}\n    parameters: {params or 'none'}", highlight=False)


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Folder for the WFDB records."),
    n: int = typer.Option(6, "-n", help="Number of records."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write seeded synthetic 12-lead ECGs (WFDB, SNOMED labels) to OUT_DIR."""
    from .synth import make_dataset

    paths = make_dataset(out_dir, n, seed=seed)
    console.print(f"wrote {len(paths)} records to {out_dir}")


@app.command("run")
def run_pipeline(
    input: str = typer.Option(..., "--input", "-i", help="Folder or s3:// prefix with the records (WFDB and/or CODE-15 HDF5)."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder or s3:// prefix (sharded Parquet tables + commit markers)."),
    model: str = typer.Option("demo", "--model", "-m", help="Model name (see `ecgray models`; also `ecgray.models` entry points), package.module:factory, or a .hdf5/.h5/.safetensors file."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file (or seed for 'random') of a named model."),
    method: List[str] = typer.Option(["saliency"], "--methods", "--method", help="Attribution method(s), comma-separated or repeated."),
    target: Optional[List[str]] = typer.Option(None, "--targets", "--target", "-t", help="Target classes (AF,LBBB) or 'all' (default)."),
    output_kind: str = typer.Option("logit", "--output-kind", help="Attribute the 'logit' or the 'probability'."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Method parameter KEY=VALUE (or METHOD.KEY=VALUE)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="REFERENCE.csv (CPSC) or ptbxl_database.csv."),
    policy: str = typer.Option("first", "--window", help="Records longer than the model's window (4096 samples at 400 Hz for Ribeiro et al. 2020): first, centre or windows."),
    shard_size: int = typer.Option(32, "--shard-size", help="Records per shard (the unit of work, write and resume)."),
    resume: bool = typer.Option(False, "--resume", help="Skip shards already committed in OUTPUT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete a previous output in OUTPUT first."),
    keep_relevance: bool = typer.Option(False, "--keep-relevance", help="Also write the full per-sample relevance table."),
    waves: str = typer.Option("delineated", "--waves", help="Place P, QRS and T per record ('delineated', ~0.33 s per record) or use the fixed windows ('fixed', faster)."),
    num_actors: Optional[int] = typer.Option(None, "--num-actors", help="Attribution actors (default: one per GPU, else 1)."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="Attribute on GPUs (default: if the cluster has any)."),
    precision: str = typer.Option("fp32", "--precision", help="GPU arithmetic of attribution: fp32 (true float32, default), tf32 or bf16 (faster, less exact; see the README). CPU: always fp32."),
    autocast: bool = typer.Option(False, "--autocast", help="Same as --precision bf16."),
    batch_size: int = typer.Option(8, "--batch-size", help="Records per attribution call (rows on the rows path)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id stored in every row (default: random)."),
    torch_threads: Optional[int] = typer.Option(None, "--torch-threads", help="Torch threads per CPU attribution actor (default: half the cores / actors; all cores suit IG)."),
    object_store_mb: Optional[int] = typer.Option(None, "--object-store-mb", help="Object store of a local Ray instance in MB (default 256; ignored with RAY_ADDRESS)."),
    evaluate_n: Optional[int] = typer.Option(None, "--evaluate", help="Then evaluate the maps of N record windows per class (`ecgray evaluate OUTPUT --sample N`, defaults; replaces an earlier evaluation)."),
) -> None:
    """Explain every record under --input with Ray Data; sharded, resumable Parquet tables under --output.

    Connects to RAY_ADDRESS if set, else starts a local Ray instance (no dashboard, 256 MB object store).
    """
    import json

    from .errors import ModelError

    methods = _resolve_methods(method)
    targets = _parse_targets(target)
    params = _method_params(methods, _parse_params(param))
    if output_kind not in ("logit", "probability"):
        fail("--output-kind must be 'logit' or 'probability'")
    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    from .pipeline import PipelineError, print_summary, run as run_dataset

    from .pipeline.session import RaySession  # Ray and torch load only for the commands that run the pipeline

    ray_session = RaySession()
    try:
        ray_session.start(object_store_mb=object_store_mb)
        summary = run_dataset(input, output, model=model, weights=weights, methods=methods, targets=targets,
                              output_kind=output_kind, params=params, shard_size=shard_size, policy=policy,
                              labels_csv=labels, keep_relevance=keep_relevance, waves=waves, resume=resume, overwrite=overwrite,
                              num_attr_actors=num_actors, use_gpu=gpu, precision=precision, autocast=autocast,
                              batch_size=batch_size,
                              run_id=run_id, torch_threads=torch_threads)
        evaluated = None
        if evaluate_n is not None and summary.records_ok:
            from .evaluate import evaluate
            from .evaluate.summary import write_summary

            print_summary(summary, console)
            evaluated = evaluate(output, sample=evaluate_n, overwrite=True, use_gpu=gpu, console=console)
            evaluated = (evaluated, write_summary(output))
    except KeyboardInterrupt:
        _interrupted(ray_session, output)
    except (PipelineError, ModelError, FileNotFoundError, ValueError) as exc:
        ray_session.stop()
        fail(str(exc))
    except BaseException:
        ray_session.stop()
        raise
    ray_session.stop()
    if evaluated is None:
        print_summary(summary, console)
    else:
        from .cli_trust import print_evaluation

        print_evaluation(*evaluated)
    console.print("summary: " + json.dumps(summary.to_dict(), default=str), highlight=False, soft_wrap=True)
    if summary.records and summary.records_ok == 0:
        raise typer.Exit(1)


@app.command("train-demo")
def train_demo_cmd(
    seed: int = typer.Option(0, "--seed", help="Seed of the training data, initialisation and batch order."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Weights file (default: the packaged demo.safetensors; demo.json is written beside it)."),
    n_per_class: Optional[int] = typer.Option(None, "--n-per-class", help="Training records per class (default: TrainConfig's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: TrainConfig's)."),
    width: Optional[float] = typer.Option(None, "--width", help="Filter width multiplier (default: TrainConfig's)."),
) -> None:
    """Train the demo model (narrow Ribeiro ResNet) on synthetic ECGs; write weights + demo.json provenance."""
    import dataclasses

    from .train import TrainConfig, train_demo

    cfg = TrainConfig(seed=seed)
    changes = {k: v for k, v in (("n_per_class", n_per_class), ("epochs", epochs), ("width", width)) if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    cmd = "ecgray train-demo --seed {}".format(seed) + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in changes.items()) + (f" --out {out}" if out else "")
    info = train_demo(seed, out=out, cfg=cfg, command=cmd, log=lambda m: console.print(m, highlight=False))
    ho = info["held_out"]
    t = Table(title=f"held-out (seed {info['held_out_seed']}, n={ho['n']}): exact-match accuracy {ho['overall_accuracy']:.3f}")
    for c in ("class", "n pos", "accuracy", "AUC", "F1"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for c, m in ho["per_class"].items():
        t.add_row(c, str(m["n_pos"]), f"{m['accuracy']:.3f}", "" if m["auc"] is None else f"{m['auc']:.3f}",
                  "" if m["f1"] is None else f"{m['f1']:.3f}")
    console.print(t)
    console.print(f"model {info['model_id']} trained in {info['train_wall_s']:.0f} s -> "
                  f"{out or 'ecgray/models/weights/demo.safetensors'} (+ .json)")


@app.command("reduce")
def reduce_cmd(
    output: str = typer.Argument(..., help="Pipeline output folder or s3:// prefix (committed shards are read)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold for predicted / TP, FP, FN, TN."),
    n_bins: int = typer.Option(10, "--bins", help="Equal probability bins on [0, 1]."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the class_probability CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    dest: Optional[str] = typer.Option(None, "--dest", help="Where to write the tables (default OUTPUT/reduced)."),
    use_ray: bool = typer.Option(False, "--ray", help="Read the shards in Ray tasks (RAY_ADDRESS or a local Ray); "
                                 "the driver only merges small partials."),
    shards_per_task: int = typer.Option(16, "--shards-per-task", help="Shards per Ray task with --ray."),
) -> None:
    """Reduce a pipeline output to per-class, per-lead and per-beat tables (OUTPUT/reduced/*.parquet).

    Streams shard by shard: memory does not grow with the number of records."""
    import polars as pl

    from .reduce import reduce as run_reduce

    t0 = time.perf_counter()
    try:
        tables = run_reduce(output, threshold=threshold, n_bins=n_bins, n_boot=n_boot, seed=seed, dest=dest,
                            use_ray=use_ray, shards_per_task=shards_per_task, stream_points=True)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    height = lambda v: v.select(pl.len()).collect().item() if isinstance(v, pl.LazyFrame) else v.height  # noqa: E731
    sizes = ", ".join(f"{k} {height(v)}" for k, v in tables.items())
    console.print(f"reduced {output} in {time.perf_counter() - t0:.1f} s: {sizes} rows", highlight=False, soft_wrap=True)


@app.command("report")
def report_cmd(
    output: str = typer.Argument(..., help="Pipeline output folder or s3:// prefix."),
    dest: Optional[str] = typer.Option(None, "--dest", help="Report folder (default OUTPUT/report)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold (used when reducing)."),
    rerun_reduce: bool = typer.Option(False, "--reduce", help="Recompute OUTPUT/reduced even if it exists."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Only these methods (repeat or comma-separate)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Only these classes (repeat or comma-separate)."),
) -> None:
    """Self-contained HTML report (OUTPUT/report/index.html + PNGs) of a pipeline output."""
    from .report import report as run_report

    methods = _resolve_methods(method) if method else None
    t0 = time.perf_counter()
    try:
        path = run_report(output, dest=dest, threshold=threshold, rerun_reduce=rerun_reduce, methods=methods,
                          targets=_parse_targets(target))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", highlight=False, soft_wrap=True)


@app.command("bench")
def bench_cmd(
    quick: bool = typer.Option(False, "--quick", help="A small run for CI (1 record, IG-8, 2 pipeline records)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N)."),
    model: str = typer.Option("random", "--model", "-m", help="Model (default: the published architecture, seeded random weights)."),
    records: Optional[int] = typer.Option(None, "--records", help="Records per phase (default 4 on CPU, 64 on CUDA, 1 quick)."),
    n_steps: Optional[str] = typer.Option(None, "--n-steps", help="IG step counts, comma-separated (default 16,50; quick 8)."),
    e2e_records: Optional[int] = typer.Option(None, "--e2e-records", help="Records of the end-to-end pipeline phase (0 = skip)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON result (default benchmarks/results/bench_<device>[_quick].json when that folder exists here, else ./bench_...json); rewritten after every phase."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of CODE-15 HDF5 exams for the inputs (default $ECGRAY_DATA or ../shared/data, code15-test80/; synthetic ECGs if absent)."),
    compile_model: bool = typer.Option(False, "--compile", help="Also time torch.compile of the model (CUDA only)."),
) -> None:
    """Attribution and pipeline speed as ratios to the naive Captum loop, measured side by side; JSON + table."""
    from .bench import default_output, print_table, run_bench, save

    steps = tuple(int(v) for v in n_steps.split(",")) if n_steps else None
    name = f"bench_{device.split(':')[0]}{'_quick' if quick else ''}.json"
    path = out or default_output(name)
    try:
        res = run_bench(device=device, quick=quick, model=model, records=records, n_steps=steps,
                        e2e_records=e2e_records, data=data, compile_model=compile_model, checkpoint=path)
    except RuntimeError as exc:
        fail(str(exc))
    print_table(res, console)
    path = save(res, path)
    console.print(f"wrote {path}")


@app.command("demo")
def demo_cmd(
    out_dir: Path = typer.Argument(Path("ecgray-demo"), help="Folder for the synthetic data, the tables and the report."),
    n_per_class: int = typer.Option(8, "-n", "--n-per-class", help="Synthetic records per class (normal, AF, LBBB, 1dAVb, SB, ST)."),
    method: List[str] = typer.Option(["integrated_gradients,lrp_epsilon"], "--method", help="Attribution method(s)."),
    n_steps: int = typer.Option(16, "--n-steps", help="Integrated-gradients steps."),
    check: bool = typer.Option(True, "--check/--no-check", help="Also run the ground-truth check."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data set."),
    evaluate_n: int = typer.Option(2, "--evaluate", help="Record windows per class for `ecgray evaluate` (0: skip)."),
) -> None:
    """Synthetic ECGs (graded features) -> Ray pipeline (demo model) -> evaluation -> reduced tables -> HTML report,
    all in OUT_DIR."""
    from .demo import print_check_table, run_demo
    from .pipeline import print_summary

    t0 = time.perf_counter()
    methods = tuple(_resolve_methods(method))
    from .pipeline.session import RaySession  # Ray and torch load only for the commands that run the pipeline

    ray_session = RaySession()
    try:
        ray_session.start()
        res = run_demo(out_dir, n_per_class=n_per_class, seed=seed, methods=methods, n_steps=n_steps, check=check,
                       evaluate_n=evaluate_n, log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except KeyboardInterrupt:
        _interrupted(ray_session, str(Path(out_dir).resolve() / "run"), hint="rerun `ecgray demo` to start again")
    except BaseException:
        ray_session.stop()
        raise
    ray_session.stop()
    print_summary(res.summary, console)
    if res.check is not None:
        print_check_table(*res.check, console)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s ({steps})", highlight=False, soft_wrap=True)
    console.print(f"tables: {res.output}", highlight=False, soft_wrap=True)
    console.print(f"report: {res.report}", highlight=False, soft_wrap=True)


from . import cli_trust as _cli_trust  # noqa: E402,F401  (registers `ecgray check` and `ecgray evaluate`)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
