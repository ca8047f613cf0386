"""The Ray-free core path on real records: numbers checked against independent recomputation."""
import numpy as np
import polars as pl
import pytest
import torch

from ecgray.explain import ExplainConfig, explain
from ecgray.leads import STANDARD_LEADS as LEADS
from ecgray.schemas.tables import schema


@pytest.fixture(scope="module")
def uris(cpsc_dir, code15_dir):
    return [str(cpsc_dir / "A0001"), str(cpsc_dir / "A0003"), str(cpsc_dir / "A0010"), str(code15_dir / "pacient_1.hdf5")]


def test_explain_tables_match_independent_computation(tiny_model, uris, tmp_path):
    from ecgray.io import read_record
    from ecgray.preprocess import preprocess

    cfg = ExplainConfig(model_name="tiny", model_id="t0", methods=["saliency", "input_x_gradient"],
                        targets=["AF", "LBBB"], batch_size=3)
    bad = str(tmp_path / "NOPE")
    out = explain(tiny_model, uris + [bad], cfg, run_id="run1")

    # every input accounted for exactly once
    rec = pl.from_arrow(out["records"])
    err = pl.from_arrow(out["errors"])
    assert rec.height == len(uris) and err.height == 1
    assert err["record_id"].to_list() == ["NOPE"] and err["stage"][0] == "read"
    assert set(rec["record_id"]) == {"A0001", "A0003", "A0010", "pacient_1"}

    # shapes: records x methods x targets x leads
    summ = pl.from_arrow(out["relevance_summary"])
    full = pl.from_arrow(out["relevance"])
    assert summ.height == full.height == len(uris) * 2 * 2 * 12
    assert summ.select("record_id", "method", "target", "lead").is_duplicated().sum() == 0
    assert out["relevance"].schema.equals(schema("relevance"), check_metadata=False)

    # probabilities equal a direct forward of the same preprocessed input
    x = np.stack([preprocess(read_record(u))[0].x for u in uris])
    with torch.no_grad():
        p = torch.sigmoid(tiny_model(torch.from_numpy(x))).numpy()
    got = rec.sort("record_id")
    order = np.argsort([read_record(u).record_id for u in uris])
    np.testing.assert_allclose(got["prob_AF"].to_numpy(), p[order, 4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["prob_LBBB"].to_numpy(), p[order, 2], rtol=1e-5, atol=1e-6)

    # input x gradient, recomputed with autograd, equals the relevance column; summary stats equal numpy
    xi = torch.from_numpy(x[:1]).requires_grad_(True)
    (g,) = torch.autograd.grad(tiny_model(xi)[0, 4], xi)
    ref = (xi * g).detach().numpy()[0]  # (12, 4096)
    rid = read_record(uris[0]).record_id
    rows = full.filter((pl.col("record_id") == rid) & (pl.col("method") == "input_x_gradient") & (pl.col("target") == "AF"))
    assert rows["lead"].to_list() == list(LEADS)
    r = np.stack(rows["relevance"].to_list())
    np.testing.assert_allclose(r, ref, rtol=1e-4, atol=1e-7)
    s = summ.filter((pl.col("record_id") == rid) & (pl.col("method") == "input_x_gradient") & (pl.col("target") == "AF"))
    np.testing.assert_allclose(s["sum"].to_numpy(), ref.sum(1), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(s["abs_sum"].to_numpy(), np.abs(ref).sum(1), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(s["mean_pos"].to_numpy(), np.clip(ref, 0, None).mean(1), rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(s["mean_neg"].to_numpy(), np.clip(ref, None, 0).mean(1), rtol=1e-3, atol=1e-8)
    assert (s["probability"].to_numpy() == got.filter(pl.col("record_id") == rid)["prob_AF"][0]).all()


def test_ig_delta_lands_in_tables(tiny_model, uris):
    cfg = ExplainConfig(model_name="tiny", model_id="t0", methods=["integrated_gradients"], targets=["AF"],
                        params={"integrated_gradients": {"n_steps": 8}}, keep_relevance=False)
    out = explain(tiny_model, uris[:2], cfg, run_id="r")
    summ = pl.from_arrow(out["relevance_summary"])
    assert "relevance" not in out
    assert summ.height == 2 * 12
    # completeness: sum of relevance over leads + delta == f(x) - f(0)  (delta = sum - (f(x) - f(0)))
    x0 = torch.zeros(1, 12, 4096)
    with torch.no_grad():
        f0 = tiny_model(x0)[0, 4].item()
    per_rec = summ.group_by("record_id").agg(pl.col("sum").sum(), pl.col("delta").first(), pl.col("probability").first())
    for row in per_rec.iter_rows(named=True):
        fx = np.log(row["probability"] / (1 - row["probability"]))
        assert abs(row["sum"] - row["delta"] - (fx - f0)) < 1e-3 * max(1.0, abs(fx - f0))


def test_long_record_windows_map_back(tiny_model, cpsc_dir):
    from ecgray.io import read_record

    rec = read_record(str(cpsc_dir / "A0005"))
    cfg = ExplainConfig(model_name="tiny", model_id="t0", methods=["saliency"], targets=["AF"], keep_relevance=False)
    out = explain(tiny_model, [str(cpsc_dir / "A0005")], cfg, run_id="r", policy="windows")
    recs = pl.from_arrow(out["records"])
    n400 = int(round(rec.signal.shape[0] * 400 / rec.fs))
    assert recs.height == max(1, -(-n400 // 4096)) or recs.height >= n400 // 4096
    assert recs["window"].to_list() == list(range(recs.height))
    assert recs["window_offset"][0] == 0 and (recs["window_offset"].diff().drop_nulls() > 0).all()
