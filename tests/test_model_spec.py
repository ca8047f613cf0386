"""ModelSpec and bring-your-own models: ``package.module:factory``, ``ecgray.models`` entry points,
safetensors weights, the errors that say what is wrong, preprocessing driven by the spec, and a model of
the published I/O but another architecture through ``explain``, the CLI and a Ray run."""
from __future__ import annotations

import importlib
import os
import sys
import textwrap

import numpy as np
import polars as pl
import pytest
import torch

from ecgray.errors import ModelError
from ecgray.io import Record
from ecgray.models import load_model
from ecgray.models.spec import RIBEIRO2020, ModelSpec, check_model, spec_of

MODULE = "ecgray_byo_testnet"
SOURCE = textwrap.dedent('''
    """A user's own ECG model, outside ecgray (written by tests/test_model_spec.py)."""
    import torch
    from torch import nn

    from ecgray.models.spec import RIBEIRO2020, ModelSpec


    class TinyNet(nn.Module):
        def __init__(self, n_leads=12, n_classes=6):
            super().__init__()
            self.conv = nn.Conv1d(n_leads, 8, 9, padding=4)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool1d(1)
            self.fc = nn.Linear(8, n_classes)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


    def build():
        torch.manual_seed(0)
        m = TinyNet()
        m.spec = RIBEIRO2020
        return m


    def build_pair():
        torch.manual_seed(0)
        return TinyNet(), RIBEIRO2020.to_dict()


    def build_nospec():
        return TinyNet()


    def build_wrong_classes():
        m = TinyNet(n_classes=5)
        m.spec = RIBEIRO2020
        return m


    def build_raises():
        raise RuntimeError("no GPU found")


    EIGHT = ModelSpec(fs=500, n_samples=5000, leads=("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"),
                      classes=("NORM", "AF", "other"), activation="softmax")


    def build_8lead():
        m = TinyNet(8, 3)
        m.spec = EIGHT
        return m


    def build_clash():  # a class whose column label_normal is taken by the records table
        m = TinyNet(8, 3)
        m.spec = ModelSpec(**{**EIGHT.to_dict(), "classes": ["Normal", "AF", "other"]})
        return m
''')


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    """The user's module on sys.path, plus a distribution that registers it as the entry point ``tinynet``."""
    root = tmp_path_factory.mktemp("byo")
    (root / f"{MODULE}.py").write_text(SOURCE)
    dist = root / "ecgray_byo_testnet-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ecgray-byo-testnet\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ecgray.models]\ntinynet = {MODULE}:build\n"
                                           f"brokennet = {MODULE}:no_such_factory\n")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(MODULE, None)


def test_spec_validation_names_what_is_wrong():
    with pytest.raises(ModelError, match=r"missing spec field\(s\) \['n_samples', 'classes'\]"):
        ModelSpec.from_dict({"fs": 500, "leads": ["I"]})
    with pytest.raises(ModelError, match=r"unknown spec field\(s\) \['sampling_rate'\]"):
        ModelSpec.from_dict({**RIBEIRO2020.to_dict(), "sampling_rate": 400})
    with pytest.raises(ModelError) as e:
        ModelSpec(fs=0, n_samples=10, leads=["I", "DI", "ch1"], classes=["a", "a"], activation="relu")
    msg = str(e.value)
    for part in ("fs must be a positive", "unknown lead names ['ch1']", "a lead appears twice",
                 "classes must be distinct", "activation must be one of"):
        assert part in msg, (part, msg)
    assert ModelSpec.from_dict(RIBEIRO2020.to_dict()) == RIBEIRO2020  # round trip


def test_probabilities_follow_the_activation():
    z = torch.tensor([[2.0, -1.0, 0.5]])
    soft = ModelSpec(fs=500, n_samples=10, leads=["I"], classes=["a", "b", "c"], activation="softmax")
    sig = ModelSpec(fs=500, n_samples=10, leads=["I"], classes=["a", "b", "c"])
    e = np.exp(z.numpy()[0])
    assert np.allclose(soft.probabilities(z).numpy()[0], e / e.sum())
    assert np.allclose(sig.probabilities(z).numpy()[0], 1 / (1 + np.exp(-z.numpy()[0])))


def test_builtin_models_carry_the_ribeiro_spec():
    m = load_model("demo")
    assert m.spec == RIBEIRO2020 and spec_of(m) == RIBEIRO2020 and m.classes == RIBEIRO2020.classes


def test_module_factory_and_weights(byo, tmp_path):
    from safetensors.torch import save_file

    m = load_model(f"{MODULE}:build")
    assert m.spec == RIBEIRO2020 and m.source == f"{MODULE}:build" and not m.training
    assert all(not p.requires_grad for p in m.parameters())
    pair = load_model(f"{MODULE}:build_pair")  # (module, spec-as-dict) works too
    assert pair.spec == RIBEIRO2020
    # weights: a safetensors file loaded strictly; the result computes with them
    other = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    w = tmp_path / "mine.safetensors"
    save_file(other, str(w))
    m2 = load_model(f"{MODULE}:build", weights=w)
    assert all(torch.equal(m2.state_dict()[k], v) for k, v in other.items())
    save_file({k: v for k, v in other.items() if k != "fc.bias"}, str(tmp_path / "short.safetensors"))
    with pytest.raises(ModelError, match=r"does not fit .* missing tensors \['fc.bias'\]"):
        load_model(f"{MODULE}:build", weights=tmp_path / "short.safetensors")
    save_file({**other, "fc.bias": torch.zeros(7)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ModelError, match=r"does not fit .*fc.bias"):
        load_model(f"{MODULE}:build", weights=tmp_path / "shape.safetensors")
    (tmp_path / "w.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match=r"must be a \.safetensors file"):
        load_model(f"{MODULE}:build", weights=tmp_path / "w.pt")


@pytest.mark.parametrize("ref, message", [
    (f"{MODULE}:build_nospec", "without a spec: set module.spec"),
    (f"{MODULE}:build_wrong_classes", r"shape mismatch between spec and model output: the spec names 6 classes"),
    (f"{MODULE}:build_raises", "model factory .*build_raises raised RuntimeError: no GPU found"),
    (f"{MODULE}:nothing_here", f"module '{MODULE}' has no attribute 'nothing_here'"),
    ("no_such_package_xyz.models:build", "cannot import module 'no_such_package_xyz.models'"),
    ("brokennet", r"entry point 'brokennet' \(.*:no_such_factory\) cannot be loaded"),
    ("nonexistent_model_name", r"unknown model 'nonexistent_model_name': use one of .*tinynet"),
])
def test_errors_say_what_is_wrong(byo, ref, message):
    with pytest.raises(ModelError, match=message):
        load_model(ref)


def test_entry_point(byo):
    from ecgray.models import available_models

    assert "tinynet" in available_models() and f"{MODULE}:build" in available_models()["tinynet"]
    m = load_model("tinynet")
    ref = load_model(f"{MODULE}:build")
    x = torch.randn(2, 12, 4096)
    assert m.spec == RIBEIRO2020 and torch.equal(m(x), ref(x))


def test_check_model_refuses_wrong_input():
    spec = ModelSpec(fs=400, n_samples=4096, leads=RIBEIRO2020.leads[:8], classes=RIBEIRO2020.classes)
    with pytest.raises(ModelError, match="does not accept its spec's input"):
        check_model(load_model("demo"), spec)


def _record(leads, fs, n, seed=0):
    rng = np.random.default_rng(seed)
    sig = np.cumsum(rng.standard_normal((n, len(leads))) * 0.02, axis=0).astype(np.float32)
    return Record(record_id="r", uri="r", format="wfdb", signal=sig, fs=float(fs), leads=tuple(leads))


def test_preprocess_follows_the_spec(byo):
    """An 8-lead 500 Hz x 5,000 model: a record without III/aVR/aVL/aVF is processed for it, its leads
    taken by name in the spec's order, not resampled (already 500 Hz), not padded (5,000 samples)."""
    from ecgray.preprocess import preprocess

    spec = importlib.import_module(MODULE).EIGHT
    rec = _record(["V6", "V5", "V4", "V3", "V2", "V1", "II", "I"], 500, 5000)  # 8 leads, reversed
    (w,) = preprocess(rec, spec=spec)
    assert w.x.shape == (8, 5000) and w.flags == ()
    assert np.array_equal(w.x, rec.signal[:, ::-1].T)
    # the same record for the 12-lead network: refused, naming the limb leads it lacks
    with pytest.raises(Exception) as e:
        preprocess(rec)
    assert e.value.error_type == "missing_leads" and "'DIII', 'AVR', 'AVL', 'AVF'" in str(e.value)
    # a 12-lead record for the 8-lead model: the 4 others dropped, flagged
    rec12 = _record(list(RIBEIRO2020.leads), 250, 2500, seed=1)
    (w12,) = preprocess(rec12, spec=spec)
    assert w12.x.shape == (8, 5000) and "extra_leads_dropped" in w12.flags and "resampled" in w12.flags
    # units and normalisation of the spec: uV input, per-lead z-score
    uv = ModelSpec(**{**spec.to_dict(), "units": "uV", "normalisation": "zscore"})
    (wz,) = preprocess(rec, spec=uv)
    x = rec.signal[:, ::-1].astype(np.float64) * 1000
    assert np.allclose(wz.x, ((x - x.mean(0)) / x.std(0)).T, atol=1e-5)


def test_explain_refuses_what_the_tables_cannot_hold(byo, cpsc_dir):
    """Any geometry, leads and classes fit the tables; a class whose ``label_<class>`` column would collide
    (ignoring case, as DuckDB does) with ``label_normal`` is refused, naming the class."""
    from ecgray.explain import ExplainConfig, explain

    m = load_model(f"{MODULE}:build_clash")
    cfg = ExplainConfig(model_name="x", model_id="x", methods=["saliency"])
    with pytest.raises(ModelError) as e:
        explain(m, [str(cpsc_dir / "A0001")], cfg)
    assert "class 'Normal': its column label_Normal collides with 'label_normal'" in str(e.value)


def test_own_architecture_through_explain_and_cli(byo, cpsc_dir, tmp_path):
    """A user's network with the published I/O: explained like the ResNet; saliency equals autograd."""
    from typer.testing import CliRunner

    from ecgray.cli import app
    from ecgray.explain import ExplainConfig, explain, prepare

    m = load_model(f"{MODULE}:build")
    cfg = ExplainConfig(model_name=f"{MODULE}:build", model_id="t", methods=["saliency"], targets=["AF"])
    t = explain(m, [str(cpsc_dir / "A0001")], cfg)
    prep, _ = prepare(str(cpsc_dir / "A0001"), run_id="r")
    x = torch.tensor(prep.windows[0].x[None], requires_grad=True)
    with torch.enable_grad():
        m(x)[0, RIBEIRO2020.classes.index("AF")].backward()
    want = x.grad.abs().numpy()[0]  # saliency = |d logit / d x|
    df = pl.from_arrow(t["relevance"]).sort("lead")
    leads = list(RIBEIRO2020.leads)
    got = np.stack([np.asarray(df.filter(pl.col("lead") == ld)["relevance"][0]) for ld in leads])
    assert np.allclose(got, want, rtol=1e-5, atol=1e-8)
    p = torch.sigmoid(m(torch.tensor(prep.windows[0].x[None])))[0].numpy()
    assert np.isclose(t["records"].column("prob_AF")[0].as_py(), p[4], rtol=1e-6)
    res = CliRunner().invoke(app, ["explain", str(cpsc_dir / "A0001"), "--model", f"{MODULE}:build",
                                   "--method", "saliency", "-t", "AF", "--summary-only", "-o", str(tmp_path / "s.parquet")])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "s.parquet").height == 12
    res = CliRunner().invoke(app, ["explain", str(cpsc_dir / "A0001"), "--model", f"{MODULE}:build_8lead",
                                   "--method", "saliency", "--summary-only", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 0, res.output
    s8 = pl.read_parquet(tmp_path / "x.parquet")  # 8 leads x 3 classes, canonical lead names
    assert s8.height == 24 and s8["lead"].unique(maintain_order=True).to_list() == \
        ["DI", "DII", "V1", "V2", "V3", "V4", "V5", "V6"] and set(s8["target"]) == {"NORM", "AF", "other"}
    r8 = pl.read_parquet(tmp_path / "x.records.parquet")  # A0001 is labelled RBBB: NORM False, AF False, other null
    assert [c for c in r8.columns if c.startswith(("prob_", "label_"))] == \
        ["label_normal", "label_scheme", "label_NORM", "label_AF", "label_other", "prob_NORM", "prob_AF", "prob_other"]
    assert r8.row(0, named=True)["label_NORM"] is False and r8.row(0, named=True)["label_other"] is None
    assert r8.select(pl.sum_horizontal("prob_NORM", "prob_AF", "prob_other")).item() == pytest.approx(1, abs=1e-6)
    res = CliRunner().invoke(app, ["explain", str(cpsc_dir / "A0001"), "--model", f"{MODULE}:build_clash",
                                   "--method", "saliency", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0 and "collides with 'label_normal'" in res.output


def test_entry_point_model_through_a_ray_run(byo, cpsc_dir, tmp_path):
    """``ecgray run --model tinynet`` (the entry point) in local Ray: workers find the plugin too."""
    ray = pytest.importorskip("ray")
    from ecgray.pipeline import read_table, run

    env = {"PYTHONPATH": os.pathsep.join([str(byo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        inp = tmp_path / "in"
        inp.mkdir()
        for r in ("A0001", "A0002", "A0003"):
            for ext in (".hea", ".mat"):
                (inp / f"{r}{ext}").write_bytes((cpsc_dir / f"{r}{ext}").read_bytes())
        s = run(str(inp), str(tmp_path / "out"), model="tinynet", methods=["saliency"], targets=["AF"],
                shard_size=2, progress=False)
        assert (s.records_ok, s.records_error) == (3, 0)
        recs = read_table(str(tmp_path / "out"), "records")
        assert recs.num_rows == 3 and set(recs.column("model").to_pylist()) == {"tinynet"}
    finally:
        ray.shutdown()


def test_attribute_uses_the_spec_activation(byo):
    """A softmax model: probabilities are its softmax, and output="probability" attributes the softmax."""
    from ecgray.attribution import attribute

    m = load_model(f"{MODULE}:build_8lead")
    x = torch.randn(2, 8, 5000).numpy()
    res = attribute(m, x, targets=["AF"], method="saliency")
    z = m(torch.tensor(x))
    assert np.allclose(res.probabilities, torch.softmax(z, dim=-1).numpy(), atol=1e-6)
    assert np.allclose(res.probabilities.sum(axis=1), 1.0, atol=1e-6)
    res_p = attribute(m, x, targets=["AF"], method="saliency", output="probability")
    xt = torch.tensor(x[:1], requires_grad=True)
    with torch.enable_grad():
        torch.softmax(m(xt), dim=-1)[0, 1].backward()
    assert np.allclose(res_p.relevance[0, 0], xt.grad.abs().numpy()[0], rtol=1e-5, atol=1e-9)
