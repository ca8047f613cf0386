"""ecgray.report on the synthetic pipeline output of tests.test_reduce: a self-contained page whose images decode."""
from __future__ import annotations

import base64
import io
import re
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecgray.report import report
from tests.test_reduce import make_output

IMG = re.compile(r'<figure id="[^"]*"><img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" '
                 r'data-file="([^"]+)"><figcaption>(.*?)</figcaption></figure>', re.S)


def _non_white_fraction(png: bytes) -> float:
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return float((a.min(axis=-1) < 235).mean())


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_out")
    truth = make_output(root, relevance=True)
    index = report(str(root), dpi=80)
    return root, truth, Path(index)


def test_report_page_and_images(full):
    root, truth, index = full
    assert index == root / "report" / "index.html"
    text = index.read_text("utf-8")
    figs = IMG.findall(text)
    # 2 methods: relevance-vs-probability x2, lead bars x2, average beats x (2 methods x 2 classes), examples x2,
    # and the unlabelled AF beats x2 (R029's AF label is unknown and it is predicted AF: a mixed data set)
    names = [f for _, f, _ in figs]
    assert len(figs) == 12, names
    assert sum("probability" in n for n in names) == 2 and sum("leads" in n for n in names) == 2
    assert sum("beats" in n for n in names) == 6 and sum("example" in n for n in names) == 2
    assert sorted(n[7:] for n in names if "beats_unlabelled" in n) == [
        "beats_unlabelled_integrated_gradients_AF.png", "beats_unlabelled_saliency_AF.png"]
    assert "No beats of unlabelled records" not in text  # every LBBB label is known: no unlabelled LBBB group
    assert text.count("<img") == 12 and text.count("<figcaption>") == 12
    for b64, fname, caption in figs:
        png = base64.b64decode(b64, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png == (root / "report" / fname).read_bytes()  # embedded == written file
        assert len(png) > 10_000, fname
        w, h = Image.open(io.BytesIO(png)).size
        assert w >= 800 and h >= 400, (fname, w, h)
        assert _non_white_fraction(png) > 0.03, fname
        assert "Read off:" in caption and len(re.sub("<[^>]+>", "", caption)) > 200
    # the example heat-maps are mostly colour (relevance everywhere), the beats are mostly coloured curves
    ex = [base64.b64decode(b) for b, f, _ in figs if "example" in f]
    assert all(_non_white_fraction(p) > 0.4 for p in ex)
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(?!data:|#)', text)


def test_report_summary_numbers(full):
    root, truth, index = full
    text = index.read_text("utf-8")
    assert "<td>committed shards</td><td class=\"num\">3</td>" in text
    assert "<td>uncommitted shards (ignored)</td><td class=\"num\">00003</td>" in text
    assert "<td>records ok (explained)</td><td class=\"num\">30</td>" in text
    assert "<td>record windows</td><td class=\"num\">31</td>" in text
    for et, n in truth.n_errors.items():
        assert f"<td>read</td><td>{et}</td><td class=\"num\">{n}</td>" in text
    assert "bogus" not in text  # the uncommitted shard's error rows are not read
    # per-class table: positives for AF (R000/0, R000/1, R004, ..., R028 except unknown R029) = 9
    assert re.search(r"<td>integrated_gradients</td><td>AF</td><td class=\"num\">9</td>", text)
    assert "No per-sample" not in text


def test_report_without_relevance_table_via_cli(tmp_path):
    from typer.testing import CliRunner

    from ecgray.cli import app

    make_output(tmp_path, relevance=False)
    runner = CliRunner()
    r = runner.invoke(app, ["reduce", str(tmp_path), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "reduced" / "lead_relevance.parquet").exists()
    r = runner.invoke(app, ["report", str(tmp_path), "--method", "saliency", "--target", "AF"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "report" / "index.html").read_text("utf-8")
    assert "No per-sample <code>relevance</code> table" in text
    figs = IMG.findall(text)
    assert [f for _, f, _ in figs] == ["fig_01_probability_saliency.png", "fig_02_leads_saliency.png",
                                       "fig_03_beats_saliency_AF.png", "fig_04_beats_unlabelled_saliency_AF.png"]
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [f for _, f, _ in figs]
    r = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no committed" in r.output


# CI (.ci/run) installs chromium and sets ECGRAY_REQUIRE_CHROMIUM=1: there the test runs or fails, never skips
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists() and not os.environ.get("ECGRAY_REQUIRE_CHROMIUM"),
                    reason="no /usr/bin/chromium")
def test_report_renders_in_chromium(full, tmp_path):
    root, _, index = full
    shot = tmp_path / "shot.png"
    subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,2000", index.as_uri()], check=True, timeout=60, capture_output=True)
    assert _non_white_fraction(shot.read_bytes()) > 0.05

