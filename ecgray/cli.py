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
        console.print("labels: " + ", ".join(f"{k} {v}" for k, v in counts.row(0, named=True).items()))
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
    model: str = typer.Option("demo", "--model", "-m", help="Model name (see `ecgray models`) or a .hdf5/.h5/.safetensors file."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file for a named model (e.g. the official model.hdf5 for ribeiro2020)."),
    method: List[str] = typer.Option(["integrated_gradients"], "--method", help="Attribution method(s); repeat or comma-separate. See `ecgray methods`."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target class(es) (AF, LBBB, ...) or 'all' (default)."),
    output_kind: str = typer.Option("logit", "--output-kind", help="Attribute the pre-sigmoid 'logit' or the 'probability'."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Method parameter KEY=VALUE, e.g. -p n_steps=16."),
    labels: Optional[str] = typer.Option(None, "--labels", help="REFERENCE.csv (CPSC) or ptbxl_database.csv."),
    policy: str = typer.Option("first", "--window", help="Records longer than 4096 samples at 400 Hz: first, centre or windows."),
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
        from .models import load_model, model_id

        net = load_model(model, weights=weights)
    except ModelError as exc:
        fail(str(exc))
    methods = _resolve_methods(method)
    targets = _parse_targets(target)
    for t in targets or []:
        if t not in net.classes:
            fail(f"unknown target {t!r}; the model's classes are {', '.join(net.classes)}")
    if output_kind not in ("logit", "probability"):
        fail("--output-kind must be 'logit' or 'probability'")
    uris = _expand(records)
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
    _print_probabilities(recs, targets or list(net.classes))
    console.print(f"{recs.num_rows} windows of {len(set(recs.column('record_id').to_pylist()))} records explained "
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
            if k not in resolve_method(name).defaults:
                fail(f"--param {key}: {name} takes {', '.join(sorted(resolve_method(name).defaults)) or 'no parameters'}")
            routed[name][k] = value
            continue
        takers = [m for m in methods if key in resolve_method(m).defaults]
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


def _expand(items: list[str]) -> list[str]:
    """Folders and s3 prefixes -> the URIs of the records they hold (via the catalog)."""
    from .io import catalog as build_catalog

    uris: list[str] = []
    for item in items:
        p = Path(item)
        if item.endswith("/") or (not item.startswith("s3://") and p.is_dir()):
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


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
