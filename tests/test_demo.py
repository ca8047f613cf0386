"""`ecgray demo` end to end (synthetic data -> Ray pipeline -> reduce -> report), small."""
import base64
import io
import re

import numpy as np
import polars as pl
import pytest


@pytest.mark.slow
def test_demo_end_to_end(ray_local, tmp_path):
    from matplotlib.image import imread

    from ecgray.demo import DEMO_CLASSES, run_demo
    from ecgray.pipeline import read_table

    n = 2
    res = run_demo(tmp_path / "demo", n_per_class=n, methods=("integrated_gradients", "lrp_epsilon"), n_steps=8,
                   check=False, log=lambda m: None)
    n_rec = n * len(DEMO_CLASSES)
    assert res.summary.records == n_rec and res.summary.records_ok == n_rec

    recs = pl.from_arrow(read_table(str(res.output), "records"))
    assert recs.height == n_rec
    # graded features: a record is labelled with its class when the planted feature's strength is >= 0.5
    truth = pl.read_parquet(res.data / "truth.parquet").group_by("record_id").agg(pl.col("label").first(),
                                                                                 pl.col("strength").first())
    recs = recs.join(truth, on="record_id")
    for cls in ("AF", "LBBB"):
        planted = recs.filter(pl.col("label") == cls)
        assert planted.height == n
        assert (planted.filter(pl.col(f"label_{cls}"))["strength"] >= 0.5).all()
        assert (planted.filter(~pl.col(f"label_{cls}"))["strength"] < 0.5).all()
        # the model's probability rises with the feature's strength (full-strength training data)
        full = planted.filter(pl.col("strength") >= 0.8)
        assert (full[f"prob_{cls}"] > 0.5).all(), full
        assert (recs.filter(pl.col("label") == "normal")[f"prob_{cls}"] < 0.5).all()
    assert (res.output / "reduced" / "evaluation_verdicts.parquet").exists()
    summ = read_table(str(res.output), "relevance_summary")
    assert summ.num_rows == n_rec * 2 * 6 * 12

    reduced = {p.stem: pl.read_parquet(p) for p in (res.output / "reduced").glob("*.parquet")}
    assert {"class_probability", "lead_relevance", "beat_relevance", "wave_relevance"} <= set(reduced)
    lead = reduced["lead_relevance"]
    assert lead.filter(pl.col("target") == "AF")["group"].unique().sort().to_list() == ["normal", "other", "positive"]

    html = (res.output / "report" / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 4
    for b64 in images[:4]:
        img = imread(io.BytesIO(base64.b64decode(b64)), format="png")
        non_white = (img[..., :3] < 0.95).any(-1).mean()
        assert img.shape[0] > 200 and non_white > 0.03
    assert np.isfinite(res.seconds["pipeline"])


@pytest.mark.slow
def test_reduce_and_report_on_real_cpsc(ray_local, cpsc_dir, tmp_path):
    """Real data flows through: 150 CPSC records, demo model, pipeline -> reduce -> report."""
    from ecgray.pipeline import run
    from ecgray.reduce import reduce
    from ecgray.report import report

    out = str(tmp_path / "cpsc")
    s = run(str(cpsc_dir), out, model="demo", methods=("saliency",), targets=["AF", "LBBB"], shard_size=50,
            progress=False)
    assert (s.records, s.records_ok, s.records_error) == (150, 150, 0)
    tables = reduce(out, n_boot=200)
    pts = tables["class_probability_points"]
    groups = dict(pts.filter(pl.col("target") == "AF").group_by("group").len().iter_rows())
    assert groups == {"positive": 24, "normal": 20, "other": 106}  # CPSC labels: AF 20 + AF,RBBB 4; Normal 20
    groups = dict(pts.filter(pl.col("target") == "LBBB").group_by("group").len().iter_rows())
    assert groups == {"positive": 8, "normal": 20, "other": 122}
    lead = tables["lead_relevance"]
    assert lead.group_by("target", "group").len()["len"].unique().to_list() == [12]
    assert (lead.group_by("target", "group").agg(pl.col("share_abs").sum())["share_abs"] - 1).abs().max() < 1e-6
    html = open(report(out)).read()
    assert html.count("data:image/png;base64,") >= 4
