"""``ecgray demo``: the whole product on data it makes itself.

1. write a seeded synthetic data set with planted, labelled features (WFDB at 500 Hz, SNOMED codes,
   ``truth.parquet``; :mod:`ecgray.synth`);
2. explain it with the Ray pipeline in local mode and the packaged demo model (sharded Parquet;
   :mod:`ecgray.pipeline`);
3. reduce the relevance to the class, lead and beat tables (:mod:`ecgray.reduce`);
4. draw the HTML report (:mod:`ecgray.report`);
5. optionally run the ground-truth check (:mod:`ecgray.check`).
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
             check: bool = True, log=print) -> DemoResult:
    """Run the demo into ``out_dir`` (``data/``, ``run/``, ``run/reduced``, ``run/report``); overwrites."""
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
    write_dataset(data, {k: n_per_class for k in DEMO_CLASSES}, seed=seed)
    seconds["synth"] = time.perf_counter() - t0
    log(f"wrote {n_per_class * len(DEMO_CLASSES)} synthetic records to {data}")

    t0 = time.perf_counter()
    params = {"integrated_gradients": {"n_steps": n_steps}} if "integrated_gradients" in methods else {}
    summary = run_dataset(str(data), str(run_out), model="demo", methods=methods, targets=None, params=params,
                          shard_size=16, keep_relevance=True, overwrite=run_out.exists(), progress=False)
    seconds["pipeline"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    reduce(str(run_out))
    seconds["reduce"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = report(str(run_out))
    seconds["report"] = time.perf_counter() - t0

    result = DemoResult(data=data, output=run_out, report=str(index), seconds=seconds, summary=summary)
    if check:
        from .check import run_check

        t0 = time.perf_counter()
        result.check = run_check(None, n_per_class=6, methods=methods, n_steps=n_steps)
        seconds["check"] = time.perf_counter() - t0
    return result
