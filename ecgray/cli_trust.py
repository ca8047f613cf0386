"""The commands that ask whether explanations can be trusted: ``ecgray check`` (synthetic ground truth) and
``ecgray evaluate OUTPUT`` (a run's maps), registered on :data:`ecgray.cli.app`; imports stay lazy so that
``ecgray --help`` starts without torch or Ray."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli import _interrupted, _method_params, _parse_params, _parse_targets, _resolve_methods, app, console, fail


@app.command("check")
def check_cmd(
    model: str = typer.Option("demo", "--model", "-m", help="Model name or weights file."),
    n: int = typer.Option(20, "-n", "--n-per-class", help="Held-out synthetic records per class (normal, AF, LBBB)."),
    seed: int = typer.Option(2000, "--seed", help="Seed of the held-out synthetic set (training used 0 and 1000)."),
    method: List[str] = typer.Option(["integrated_gradients", "lrp_epsilon", "lrp_alpha_beta", "saliency"], "--method",
                                     help="Attribution method(s); repeat or comma-separate."),
    n_steps: int = typer.Option(32, "--n-steps", help="Integrated-gradients steps."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result table as Parquet."),
    kinds: str = typer.Option("AF,LBBB,1dAVb", "--counterfactual", help="Classes for the counterfactual test and the "
                              "localisation metrics (comma-separated; '' to skip)."),
    into: Optional[str] = typer.Option(None, "--into", help="Also write the counterfactual/localisation table to "
                                       "INTO/reduced/ground_truth.parquet (a run's output: its report then shows it)."),
) -> None:
    """Ground-truth check on held-out synthetic ECGs: relevance inside the planted features vs outside, the
    counterfactual test (remove the feature -> logit drop, vs equal signal elsewhere), RMA, RRA, AUC-PR."""
    from .check import print_check, run_check
    from .errors import ModelError

    try:
        from .models import load_model

        net = load_model(model)
    except ModelError as exc:
        fail(str(exc))
    tbl, info = run_check(net, n_per_class=n, seed=seed, methods=_resolve_methods(method), n_steps=n_steps)
    print_check(tbl, info, console)
    from .groundtruth import class_report, print_reports

    names = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in names if k not in net.classes]
    if bad:
        fail(f"--counterfactual: {', '.join(bad)} not among the model's classes {', '.join(net.classes)}")
    if names:
        reports = [class_report(net, k, n, seed=seed, methods=_resolve_methods(method), n_steps=n_steps)
                   for k in names]
        print_reports(reports, console)
        if into:
            from .groundtruth import write_report_table

            console.print(f"wrote {write_report_table(reports, into)}", highlight=False, soft_wrap=True)
    if out:
        import pyarrow.parquet as pq

        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl, out)
        console.print(f"wrote {out}")




@app.command("evaluate")
def evaluate_cmd(
    output: str = typer.Argument(..., help="Pipeline output folder or s3:// prefix (a finished `ecgray run`)."),
    method: Optional[List[str]] = typer.Option(None, "--methods", "--method", help="Methods to evaluate (default: the run's)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Method parameter KEY=VALUE (or METHOD.KEY=VALUE); default: the run's."),
    target: Optional[List[str]] = typer.Option(None, "--targets", "--target", "-t", help="'predicted' (default: the classes predicted or labelled, else the most probable), 'all', or class names."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Evaluate at most N record windows per class (seeded, class-stratified); default: all."),
    tests: str = typer.Option("faithfulness,randomisation,agreement", "--tests", help="Comma-separated: faithfulness, randomisation, agreement."),
    replacement: str = typer.Option("zero", "--replacement", help="What replaces a removed block: zero, linear, noisy_linear (ROAD)."),
    segments: str = typer.Option("blocks", "--segments", help="What the deletion curves remove, per lead: 'blocks' (fixed, --block-ms) or 'waves' (each beat's P, PR, QRS, ST, T, TQ, delineated)."),
    block_ms: float = typer.Option(40.0, "--block-ms", help="Block length (ms) of the deletion curves; one block = one lead x this span."),
    models: Optional[List[str]] = typer.Option(None, "--models", help="Further models (names or weight files; comma-separated) for the agreement across models, e.g. demo-seed1.safetensors."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample, the random orders and subsets, the randomised weights."),
    shard_size: int = typer.Option(4, "--shard-size", help="Record windows per task (the unit of work, write and resume)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the shards of an earlier evaluation with the same settings; run the rest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier evaluation."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--no-gpu", help="Evaluate on GPUs (default: if the cluster has any)."),
) -> None:
    """Can these maps be trusted? Deletion curves, randomisation checks, agreement (OUTPUT/evaluation/*)."""
    if resume and overwrite:
        fail("--resume and --overwrite exclude each other")
    from .errors import ModelError
    from .evaluate import evaluate, evaluation_root
    from .evaluate.summary import write_summary
    from .pipeline.session import RaySession
    from .store import PipelineError

    options: dict = {"tests": tuple(t.strip() for t in tests.split(",") if t.strip()), "replacement": replacement,
                     "segments": segments, "block_ms": block_ms, "seed": seed,
                     "models": tuple(m.strip() for item in models or [] for m in item.split(",") if m.strip())}
    targets = _parse_targets(target)
    if target and targets is None:
        options["targets"] = "all"
    elif targets:
        options["targets"] = "predicted" if targets == ["predicted"] else tuple(targets)
    if method:
        options["methods"] = tuple(_resolve_methods(method))
        options["params"] = _method_params(list(options["methods"]), _parse_params(param))
    elif param:
        fail("--param needs --methods (without it, the run's methods and parameters are evaluated)")
    session = RaySession()
    try:
        summary = evaluate(output, sample=sample, resume=resume, overwrite=overwrite, shard_size=shard_size,
                           use_gpu=gpu, console=console, start_ray=session.start, **options)
        tables = write_summary(output)
    except KeyboardInterrupt:
        _interrupted(session, evaluation_root(output), "rerun with --resume to keep the committed shards")
    except (PipelineError, ModelError, FileNotFoundError, ValueError, TypeError) as exc:
        session.stop()
        fail(str(exc))
    except BaseException:
        session.stop()
        raise
    session.stop()
    print_evaluation(summary, tables)


def print_evaluation(summary, tables) -> None:
    """The evaluation's last lines: what was written, then one verdict per method x class."""
    console.print(f"evaluated {summary.n_records} record window(s) in {summary.seconds:.1f} s "
                  f"({summary.n_written} shard(s) written, {summary.n_kept} kept, {summary.n_errors} error row(s)) "
                  f"-> {summary.root}", highlight=False, soft_wrap=True)
    for line in tables["evaluation_verdicts"]["verdict"]:
        console.print(line, highlight=False, soft_wrap=True)
