"""Smoke test of benchmarks/scale.py on tiny sizes: it runs and writes the JSON fields (no timing asserts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale.py"
CPSC = ROOT / ".." / "shared" / "data" / "cpsc2018-a0001-a0150"


def _run(tmp_path: Path, *args: str) -> None:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path / "res"), "--work",
                          str(tmp_path / "work"), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def _check_reduce(r: dict, n: int) -> None:
    assert r["reduce_s"] > 0 and r["reduce_cpu_s"] >= 0 and r["peak_rss_mb"] > 0
    assert r["s_per_record"] == pytest.approx(r["reduce_s"] / n)
    assert r["rows"]["class_probability_points"] > 0 and r["rows"]["beat_relevance"] > 0


def test_scale_synthetic_tiny(tmp_path):
    _run(tmp_path, "--parts", "synthetic", "--sizes", "32,64", "--repeat", "1", "--templates", "1",
         "--writers", "1")
    res = json.loads((tmp_path / "res" / "scale_reduce.json").read_text())
    assert {"cpu", "cpu_count", "platform", "python"} <= set(res["machine"])
    assert [s["records"] for s in res["sizes"]] == [32, 64]
    for s in res["sizes"]:
        n = s["records"]
        assert s["shards"] == n // 32
        per = s["bytes_per_record"]
        for table in ("records", "relevance_summary", "beats", "beats_relevance", "errors"):
            assert per[table] > 0 and s["bytes_on_disk"][table] == pytest.approx(per[table] * n)
        assert per["beats_plus_beats_relevance"] == pytest.approx(per["beats"] + per["beats_relevance"])
        # 2 methods x 6 targets x 12 leads per record, 12 leads of beats
        assert s["rows_per_shard"]["relevance_summary"] == 32 * 2 * 6 * 12
        assert s["rows_per_shard"]["beats_relevance"] == 32 * 2 * 6 * 12
        assert s["rows_per_shard"]["beats"] == 32 * 12
        _check_reduce(s["reduce"], n)
        # one point per record x method x target: the keys were unique across the output
        assert s["reduce"]["rows"]["class_probability_points"] == n * 2 * 6
    for key in ("ratio_time_per_record_largest_vs_1k", "ratio_cpu_time_per_record_largest_vs_1k",
                "ratio_peak_rss_largest_vs_1k", "ratio_old_vs_new_beats_bytes_per_record"):
        assert res[key] > 0
    assert res["projection_1m"]["reduce_s"]["value"] is not None
    assert set(res["criteria"]) >= {"time_per_record_largest_within_1.3x_of_smallest", "peak_rss_largest_le_2GB",
                                    "largest_reduced_le_10min", "beats_bytes_ge_2x_smaller_than_old_layout"}
    assert all(isinstance(v, bool) for v in res["criteria"].values())


@pytest.mark.slow
def test_scale_real_tiny(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    if not CPSC.is_dir():
        pytest.skip("CPSC records not in ../shared/data")
    _run(tmp_path, "--parts", "real", "--real-sizes", "32,64", "--real-methods", "saliency", "--repeat", "1")
    res = json.loads((tmp_path / "res" / "scale_real_reduce.json").read_text())
    assert "cpu" in res["machine"] and [s["records"] for s in res["sizes"]] == [32, 64]
    for s in res["sizes"]:
        assert s["records_ok"] == s["records"] and s["records_per_s"] > 0
        assert s["peak_rss_mb"]["driver"] > 0 and s["peak_rss_mb"]["worker_max"] > 0
        assert s["bytes_per_record"]["beats_relevance"] > 0
        _check_reduce(s["reduce"], s["records_ok"])
    assert res["ratio_reduce_time_per_record_largest_vs_smallest"] > 0
    assert res["ratio_reduce_peak_rss_largest_vs_smallest"] > 0
