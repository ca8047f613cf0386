"""``ecgray demo``: the whole product on data it makes itself.

1. write a seeded synthetic data set with planted, labelled features of *graded* strength (WFDB at 500 Hz,
   SNOMED codes, ``truth.parquet``; :func:`ecgray.synth.write_dataset` with ``graded=True``: each planted
   feature from absent to full, labelled with its class when the strength is >= 0.5, so probabilities span
   0..1 and some records are misclassified -- finding (a), relevance vs probability, on known truth);
2. explain it with the Ray pipeline in local mode and the packaged demo model (sharded Parquet;
   :mod:`ecgray.pipeline`);
3. evaluate the maps of a few records per class (:mod:`ecgray.evaluate`: deletion curves, randomisation,
   agreement), unless ``evaluate_n=0``;
4. reduce the relevance to the class, lead and beat tables (:mod:`ecgray.reduce`);
5. draw the HTML report (:mod:`ecgray.report`), with its section "Can these explanations be trusted?";
6. optionally run the ground-truth check (:mod:`ecgray.check`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

DEMO_CLASSES = ("normal", "AF", "LBBB", "1dAVb", "SB", "ST")


@dataclass
class DemoResult:
    data: Path
    output: Path
    report: str
    seconds: dict = field(default_factory=dict)
    summary: object = None
    check: object = None


def run_demo(out_dir: str | Path = "ecgray-demo", *, n_per_class: int = 8, seed: int = 0,
             methods: tuple[str, ...] = ("integrated_gradients", "lrp_epsilon"), n_steps: int = 16,
             check: bool = True, log=print, progress: bool | None = None, graded: bool = True,
             evaluate_n: int = 2) -> DemoResult:
    """Run the demo into ``out_dir`` (``data/``, ``run/``, ``run/reduced``, ``run/report``); overwrites.

    ``progress``: the pipeline's progress on stderr (a bar on a terminal, plain lines otherwise; ``False``: none).
    """
    from .pipeline import run as run_dataset
    from .reduce import reduce
    from .report import report
    from .synth import write_dataset

    out = Path(out_dir).resolve()
    data, run_out = out / "data", out / "run"
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if data.exists():
        for p in data.iterdir():
            if p.is_file():
                p.unlink()
    write_dataset(data, {k: n_per_class for k in DEMO_CLASSES}, seed=seed, graded=graded)
    seconds["synth"] = time.perf_counter() - t0
    log(f"wrote {n_per_class * len(DEMO_CLASSES)} synthetic records to {data}")

    t0 = time.perf_counter()
    params = {"integrated_gradients": {"n_steps": n_steps}} if "integrated_gradients" in methods else {}
    if (run_out / "report").is_dir():  # the previous demo's report: not pipeline output, so --overwrite refuses it
        import shutil

        shutil.rmtree(run_out / "report")
    summary = run_dataset(str(data), str(run_out), model="demo", methods=methods, targets=None, params=params,
                          shard_size=16, keep_relevance=True, overwrite=run_out.exists(), progress=progress)
    seconds["pipeline"] = time.perf_counter() - t0

    if evaluate_n:
        from .evaluate import evaluate

        t0 = time.perf_counter()
        ev = evaluate(str(run_out), sample=evaluate_n, overwrite=True, n_subsets=16)
        seconds["evaluate"] = time.perf_counter() - t0
        log(f"evaluated {ev.n_records} record windows (deletion curves, randomisation, agreement)")

    check_result = None
    if check:  # before the report, which shows the ground-truth table
        from .check import run_check
        from .groundtruth import class_report, write_report_table
        from .models import load_model

        t0 = time.perf_counter()
        check_result = run_check(None, n_per_class=6, methods=methods, n_steps=n_steps)
        net = load_model("demo")
        write_report_table([class_report(net, k, 6, methods=methods, n_steps=n_steps) for k in ("AF", "LBBB")],
                           str(run_out))
        seconds["check"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reduce(str(run_out))
    seconds["reduce"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = report(str(run_out))
    seconds["report"] = time.perf_counter() - t0
    return DemoResult(data=data, output=run_out, report=str(index), seconds=seconds, summary=summary,
                      check=check_result)


_SHORT_METHODS = {"integrated_gradients": "IG", "lrp_epsilon": "LRP-eps", "lrp_alpha_beta": "LRP-ab"}


def print_check_table(table, info: dict, console) -> None:
    """The ground-truth check for the demo's console: a rich table of at most 80 columns on a terminal,
    one plain ``key=value`` line per row otherwise (logs, pipes)."""
    from rich import box
    from rich.table import Table

    title = (f"ground-truth check (held-out seed {info['seed']}, {info['n_per_class']} records/class; "
             f"correct: AF {info['AF_correct']}, LBBB {info['LBBB_correct']}, normal {info['normal_not_AF']})")
    f = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
    rows = table.to_pylist()
    if not console.is_terminal:
        console.print(title, highlight=False, soft_wrap=True, markup=False)
        for r in rows:
            vals = [("n", str(r["n_records"])), ("ratio_in_out", f(r["ratio"], ".2f")),
                    ("median_record_ratio", f(r["median_record_ratio"], ".2f")),
                    ("net_share_in", f(r["net_share_in"], ".2f")), ("frac_cells_in", f(r["frac_cells_in"], ".2f")),
                    ("mean_relevance_in", f(r["mean_relevance_in"], ".3g")),
                    ("frac_negative", f(r["frac_negative"], ".2f"))]
            console.print(f"{r['method']} {r['target']} {r['region']}: " + " ".join(f"{k}={v}" for k, v in vals if v),
                          highlight=False, soft_wrap=True, markup=False)
        return
    t = Table(title=(f"ground-truth check (seed {info['seed']}, {info['n_per_class']}/class; correct AF "
                     f"{info['AF_correct']}, LBBB {info['LBBB_correct']}, normal {info['normal_not_AF']})"),
              box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False,
              caption="ratio: relevance density in/out of the region; * in the named leads")
    for c, j in (("method", "left"), ("target", "left"), ("region", "left"), ("n", "right"), ("ratio", "right"),
                 ("rec.\nratio", "right"), ("share\nin", "right"), ("cells\nin", "right"), ("R in", "right"),
                 ("<0", "right")):
        t.add_column(c, justify=j, no_wrap=c in ("method", "region"))  # about 75 columns wide
    for r in rows:
        region = r["region"].replace(" (named leads)", "*").replace(" (normal records)", " (normals)")
        t.add_row(_SHORT_METHODS.get(r["method"], r["method"]), r["target"], region, str(r["n_records"]),
                  f(r["ratio"], ".2f"), f(r["median_record_ratio"], ".2f"), f(r["net_share_in"], ".2f"),
                  f(r["frac_cells_in"], ".2f"), f(r["mean_relevance_in"], ".2g"), f(r["frac_negative"], ".2f"))
    console.print(t)
