"""`ecgray bench --quick`: runs in CI, prints its table, writes JSON with side-by-side ratios.

The speed figures themselves are not asserted (2-core CI machines vary); what is asserted is that
every phase ran against its baseline on the same inputs and that the fast path equals the naive
Captum loop to 1e-4 relative.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", COLUMNS="160")
    proc = subprocess.run([sys.executable, "-m", "ecgray.cli", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    assert "IG-8 all targets (fast path)" in proc.stdout and "end to end" in proc.stdout
    res = json.loads(out.read_text())
    assert res["quick"] and res["records"] == 1 and len(res["targets"]) == 6
    m = res["machine"]
    assert {"cpu", "cpu_count", "torch", "ray", "captum", "torch_threads", "device"} <= set(m)
    ig = res["phases"]["ig_8"]
    assert ig["max_rel_diff"] < 1e-4 and ig["max_rel_diff_rows_path"] < 1e-4
    for k in ("naive", "ecgray", "ecgray_rows"):
        assert ig[k]["seconds"] > 0 and ig[k]["peak_rss_mib"] > 100
    eq = ig["equal_error"]["rtol_x1"]
    assert eq["rows_within_rtol"] > 0.5 and sum(eq["steps_histogram"].values()) == 6
    assert res["phases"]["saliency"]["max_rel_diff"] < 1e-4
    assert res["phases"]["lrp_epsilon"]["max_rel_diff"] < 1e-3
    e2e = res["phases"]["end_to_end"]
    assert e2e["records_ok"] == 2 and e2e["records_error"] == 0 and e2e["pipeline_s"] > 0
    assert 0.5 < res["forward_gflop"] / 3.65 < 1.5  # the published network: ~3.65 GFLOP per ECG
    assert all(r["ecgray_s"] > 0 for r in res["rows"])


def test_committed_results_name_their_machine_and_agree():
    """The full runs' JSON under benchmarks/results/: machine named; fast path == naive loop to 1e-4
    in float32 (CPU and the H200 run with TF32 off); the precision phases report their error."""
    res_dir = ROOT / "benchmarks" / "results"
    cpu = json.loads((res_dir / "bench_cpu.json").read_text())
    gpu = json.loads((res_dir / "bench_cuda.json").read_text())
    assert cpu["machine"]["cpu"] and cpu["machine"]["torch_threads"] >= 1 and not cpu["quick"]
    assert "H200" in gpu["machine"]["gpu"] or "H100" in gpu["machine"]["gpu"]
    for res in (cpu, gpu):
        for n in (16, 50):
            ph = res["phases"][f"ig_{n}"]
            assert ph["max_rel_diff"] < 1e-4, (res["machine"]["device"], n, ph["max_rel_diff"])
            assert ph["naive"]["seconds"] > ph["ecgray"]["seconds"]  # the fast path is faster, on both
    prec = gpu["phases"]["precision"]
    assert prec["fp32_eager"]["median_rel_l2_vs_fp32"] < 1e-6
    assert prec["tf32_eager"]["median_rel_l2_vs_fp32"] > 1e-4  # why fp32 is the default
    assert prec["bf16_compiled"]["seconds"] < prec["fp32_eager"]["seconds"]


def test_committed_memory_results_are_flat():
    """benchmarks/results/pipeline_memory.json (ecgray's local Ray settings): peak RSS from 150 to 1,500
    records, recomputed here as the ratio of the medians of the runs, is <= 1.2 for the driver, the
    largest worker and all processes together; the run with a 7,000 MB store is kept for comparison."""
    import numpy as np

    from ecgray.pipeline.run import LOCAL_OBJECT_STORE_MB

    res_dir = ROOT / "benchmarks" / "results"
    res = json.loads((res_dir / "pipeline_memory.json").read_text())
    assert res["object_store_mb"] == LOCAL_OBJECT_STORE_MB and res["repeat"] >= 3
    sizes = sorted({r["records"] for r in res["runs"]})
    assert sizes == [150, 1500]
    assert all(r["records_ok"] == r["records"] for r in res["runs"])
    med = {n: {k: np.median([r["peak_rss_mb"][k] for r in res["runs"] if r["records"] == n])
               for k in ("driver", "worker_max", "total")} for n in sizes}
    for k in ("driver", "worker_max", "total"):
        ratio = med[1500][k] / med[150][k]
        assert abs(ratio - res["rss_ratio"][k]) < 1e-9
        assert ratio <= 1.2, (k, ratio)
    big = json.loads((res_dir / "pipeline_memory_store7000.json").read_text())
    assert big["object_store_mb"] == 7000 and big["rss_ratio"]["worker_max"] > res["rss_ratio"]["worker_max"]


def test_paths_of_an_installed_package(tmp_path, monkeypatch):
    """Installed from a wheel (no source checkout): results go to the working directory, never into the
    package, and the data come from $ECGRAY_DATA or ../shared/data next to the working directory."""
    from ecgray import bench

    monkeypatch.setattr(bench, "CHECKOUT", None)
    monkeypatch.delenv(bench.DATA_ENV, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert bench.default_output("b.json") == work / "b.json"
    (work / "benchmarks" / "results").mkdir(parents=True)
    assert bench.default_output("b.json") == work / "benchmarks" / "results" / "b.json"
    assert bench.data_root() == tmp_path / "shared" / "data"
    monkeypatch.setenv(bench.DATA_ENV, str(tmp_path / "elsewhere"))
    assert bench.data_root() == tmp_path / "elsewhere"
