"""Parity of ecgray's PyTorch port + HDF5 loader with the authors' network run in Keras 3.

The reference is the authors' Keras model (``tests/keras_reference.py``), run by
Keras 3.15 on its torch backend, with seeded random weights and non-trivial
BatchNorm statistics, on real CODE-15 exams. It is saved by Keras 3
(``model.save("*.h5")``, ``model.save_weights("*.weights.h5")``) and written by
hand in the Keras 2.2.4 layout of the official ``model.hdf5`` (layers renamed,
``layer_names`` and ``model_config`` shuffled), then loaded with ecgray (h5py
only) and compared.
"""
from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - keras imported earlier with another backend
    pytest.skip("keras was imported with another backend", allow_module_level=True)

try:  # tests/ is a package in this repo; fall back to rootdir-relative import otherwise
    from tests import keras_reference as kr  # noqa: E402
except ImportError:  # pragma: no cover
    import keras_reference as kr  # noqa: E402

from ecgray.errors import ModelError  # noqa: E402
from ecgray.models import ResNetConfig, load_keras_hdf5, load_model, model_id, save_model  # noqa: E402
from ecgray.models.ribeiro2020 import SameConv1d, same_padding  # noqa: E402

DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "code15-test80"
N_EXAMS = 8
PROB_TOL = 1e-5
LOGIT_TOL = 5e-5


@pytest.fixture(scope="module")
def ecgs() -> np.ndarray:
    """(8, 4096, 12) float32: pacient_1 ... pacient_8 of the CODE-15 test exams."""
    files = [DATA / f"pacient_{i}.hdf5" for i in range(1, N_EXAMS + 1)]
    if not all(f.is_file() for f in files):
        pytest.skip(f"CODE-15 exams not found under {DATA}")
    x = np.concatenate([h5py.File(f, "r")["tracings"][()] for f in files]).astype(np.float32)
    assert x.shape == (N_EXAMS, 4096, 12)
    return x


def _rename(name: str, i: int) -> str:
    # Arbitrary names with no hint of the layer type; keeps the input's name.
    return name if name == "signal" else f"zz{(i * 37) % 101:03d}"


def _case(tmp_path_factory, ecgs, tag: str, *, seed: int, **arch) -> dict:
    model = kr.build_keras_model(**arch)
    kr.randomize(model, seed=seed, dense_scale=0.2)
    probs = kr.predict(model, ecgs)
    logits = kr.predict(kr.logits_model(model), ecgs)
    d = tmp_path_factory.mktemp(tag)
    files = {
        "keras3-h5": d / "model.h5",
        "keras3-weights": d / "model.weights.h5",
        "keras2-renamed-shuffled": d / "model_k2.hdf5",
        "keras2-nested-names": d / "model_k2_nested.hdf5",
        "keras2-weights": d / "weights_k2.h5",
    }
    model.save(files["keras3-h5"])
    model.save_weights(files["keras3-weights"])
    kr.write_keras2_hdf5(model, files["keras2-renamed-shuffled"], rename=_rename, shuffle_seed=seed)
    kr.write_keras2_hdf5(model, files["keras2-nested-names"], nested_weight_names=True)
    kr.write_keras2_hdf5(model, files["keras2-weights"], weights_only=True)
    return {"model": model, "probs": probs, "logits": logits, "files": files, "arch": arch}


@pytest.fixture(scope="module")
def full(tmp_path_factory, ecgs):
    return _case(tmp_path_factory, ecgs, "full", seed=2020)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, ecgs):
    cfg = ResNetConfig.scaled(0.25)
    return _case(tmp_path_factory, ecgs, "reduced", seed=7, stem_filters=cfg.stem_filters, filters=cfg.filters)


def _ecgray_outputs(model, ecgs) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(ecgs).transpose(1, 2)  # (N, 12, 4096)
    with torch.no_grad():
        logits = model(x)
    return logits.numpy(), model.predict_proba(x).numpy()


def _assert_parity(model, case, ecgs, label):
    logits, probs = _ecgray_outputs(model, ecgs)
    dp = float(np.abs(probs - case["probs"]).max())
    dl = float(np.abs(logits - case["logits"]).max())
    spread = float(case["logits"].std())
    print(f"{label}: max|dprob|={dp:.3g} max|dlogit|={dl:.3g} (logit std {spread:.2f})")
    assert 0.05 < case["probs"].mean() < 0.95 and 0.1 < spread < 10, f"reference outputs degenerate (logit std {spread})"
    assert dp <= PROB_TOL, f"{label}: max abs diff of probabilities {dp:.3g} > {PROB_TOL}"
    assert dl <= LOGIT_TOL, f"{label}: max abs diff of logits {dl:.3g} > {LOGIT_TOL}"
    return dp, dl


# --------------------------------------------------------------------------- 'same' padding semantics
def test_keras_torch_backend_pads_like_tensorflow():
    """Keras 3 (torch backend) 'same' with an even kernel pads more on the right, like TF."""
    rng = np.random.default_rng(0)
    for n, k, s in [(64, 16, 1), (4096, 16, 4), (1001, 16, 4), (50, 9, 2)]:
        x = rng.normal(size=(1, n, 3)).astype(np.float32)
        inp = keras.Input((n, 3))
        conv = keras.layers.Conv1D(2, k, strides=s, padding="same", use_bias=False)
        out = kr.predict(keras.Model(inp, conv(inp)), x)
        w = torch.from_numpy(conv.get_weights()[0]).permute(2, 1, 0)
        left, right = same_padding(n, k, s)
        assert left == (max((math.ceil(n / s) - 1) * s + k - n, 0)) // 2
        ref = F.conv1d(F.pad(torch.from_numpy(x).transpose(1, 2), (left, right)), w, stride=s)
        d_tf = float(np.abs(out - ref.transpose(1, 2).numpy()).max())
        assert d_tf < 1e-5, f"n={n} k={k} s={s}: Keras-torch differs from TF padding ({left},{right}) by {d_tf}"
        ours = SameConv1d(3, 2, k, stride=s, bias=False)
        ours.weight.data = w.clone()
        with torch.no_grad():
            d_ours = float(np.abs(out - ours(torch.from_numpy(x).transpose(1, 2)).transpose(1, 2).numpy()).max())
        assert d_ours < 1e-5, f"n={n} k={k} s={s}: SameConv1d differs from Keras by {d_ours}"
    assert same_padding(4096, 16, 1) == (7, 8)


# --------------------------------------------------------------------------- full-size network
@pytest.mark.parametrize("layout", ["keras3-h5", "keras3-weights", "keras2-renamed-shuffled",
                                    "keras2-nested-names", "keras2-weights"])
def test_full_size_parity(full, ecgs, layout):
    model = load_keras_hdf5(full["files"][layout])
    assert model.config == ResNetConfig(), model.config
    _assert_parity(model, full, ecgs, f"full/{layout}")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    expected_mapping = "shapes" if layout.endswith("weights") else "topology"
    assert model.keras_info["mapping"] == expected_mapping


def test_keras2_file_really_renamed_and_shuffled(full):
    with h5py.File(full["files"]["keras2-renamed-shuffled"], "r") as f:
        names = [n.decode() for n in f["model_weights"].attrs["layer_names"]]
        assert f.attrs["keras_version"] == b"2.2.4" and f.attrs["backend"] == b"tensorflow"
    assert not any(n.startswith(("conv1d", "batch_norm", "dense")) for n in names)
    assert names[0] != "signal", "layer_names not shuffled"


def test_registry_ribeiro2020_and_safetensors_roundtrip(full, ecgs, tmp_path, monkeypatch):
    path = full["files"]["keras2-renamed-shuffled"]
    m1 = load_model("ribeiro2020", weights=str(path))
    monkeypatch.setenv("ECGRAY_RIBEIRO_WEIGHTS", str(path))
    m2 = load_model("ribeiro2020")
    assert model_id(m1) == model_id(m2) == model_id(load_keras_hdf5(full["files"]["keras3-h5"]))
    st = save_model(m1, tmp_path / "ribeiro.safetensors", metadata={"source": "parity test"})
    m3 = load_model(str(st))
    assert model_id(m3) == model_id(m1)
    l1, _ = _ecgray_outputs(m1, ecgs[:2])
    l3, _ = _ecgray_outputs(m3, ecgs[:2])
    assert np.array_equal(l1, l3), f"safetensors round trip changed logits by {np.abs(l1 - l3).max()}"


# --------------------------------------------------------------------------- reduced width
@pytest.mark.parametrize("layout", ["keras3-h5", "keras3-weights", "keras2-renamed-shuffled", "keras2-weights"])
def test_reduced_width_parity_and_config_inference(reduced, ecgs, layout):
    model = load_keras_hdf5(reduced["files"][layout])
    expected = ResNetConfig.scaled(0.25)
    assert model.config == expected, f"inferred {model.config}, expected {expected}"
    assert model.config.filters == (32, 49, 64, 80) and model.config.stem_filters == 16
    _assert_parity(model, reduced, ecgs, f"reduced/{layout}")


def test_reduced_is_not_ribeiro2020(reduced):
    with pytest.raises(ModelError, match="not the published"):
        load_model("ribeiro2020", weights=str(reduced["files"]["keras3-h5"]))


def test_config_argument_is_checked(reduced):
    with pytest.raises(ModelError, match="stem_filters"):
        load_keras_hdf5(reduced["files"]["keras3-h5"], config=ResNetConfig())
    custom = ResNetConfig.scaled(0.25, classes=("a", "b", "c", "d", "e", "f"))
    model = load_keras_hdf5(reduced["files"]["keras2-weights"], config=custom)
    assert model.classes == ("a", "b", "c", "d", "e", "f")


# --------------------------------------------------------------------------- other topologies
def test_odd_kernel_identity_skip_three_units(tmp_path, ecgs):
    """3 units, kernel 9, unit 1 with identity skip (no pool, no 1x1 conv), unit 3 pool only."""
    arch = dict(stem_filters=8, filters=(8, 16, 16), samples=(4096, 1024, 256), kernel_size=9)
    model = kr.build_keras_model(**arch)
    kr.randomize(model, seed=3, dense_scale=1.0)
    case = {"probs": kr.predict(model, ecgs), "logits": kr.predict(kr.logits_model(model), ecgs)}
    model.save(tmp_path / "odd.h5")
    kr.write_keras2_hdf5(model, tmp_path / "odd_k2.hdf5", rename=_rename, shuffle_seed=5)
    model.save_weights(tmp_path / "odd.weights.h5")
    expected = ResNetConfig(stem_filters=8, filters=(8, 16, 16), samples=(4096, 1024, 256), kernel_size=9)
    for name in ["odd.h5", "odd_k2.hdf5"]:
        m = load_keras_hdf5(tmp_path / name)
        assert m.config == expected, m.config
        assert m.units[0].skip_pool is None and m.units[0].skip_conv is None
        assert m.units[2].skip_pool is not None and m.units[2].skip_conv is None
        _assert_parity(m, case, ecgs, f"odd/{name}")
    with pytest.raises(ModelError, match="pass config="):
        load_keras_hdf5(tmp_path / "odd.weights.h5")
    _assert_parity(load_keras_hdf5(tmp_path / "odd.weights.h5", config=expected), case, ecgs, "odd/weights+config")


def test_explicit_zero_padding_layers(tmp_path, ecgs):
    """ZeroPadding1D((l, r)) + Conv1D(padding='valid') equal to 'same' is understood by the graph walker."""
    arch = dict(stem_filters=8, filters=(16, 24, 32, 40), explicit_padding=True)
    model = kr.build_keras_model(**arch)
    assert sum(type(l).__name__ == "ZeroPadding1D" for l in model.layers) == 9
    kr.randomize(model, seed=5, dense_scale=0.1)
    case = {"probs": kr.predict(model, ecgs), "logits": kr.predict(kr.logits_model(model), ecgs)}
    model.save(tmp_path / "zp.h5")
    kr.write_keras2_hdf5(model, tmp_path / "zp_k2.hdf5", rename=_rename, shuffle_seed=9)
    for name in ["zp.h5", "zp_k2.hdf5"]:
        m = load_keras_hdf5(tmp_path / name)
        assert m.config == ResNetConfig(stem_filters=8, filters=(16, 24, 32, 40)), m.config
        _assert_parity(m, case, ecgs, f"zero-padding/{name}")
    # padding that is not Keras 'same' is refused
    import json

    with h5py.File(tmp_path / "zp_k2.hdf5", "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        zp = next(l for l in cfg["config"]["layers"] if l["class_name"] == "ZeroPadding1D")
        zp["config"]["padding"] = [8, 7]
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ModelError, match="ZeroPadding1D .* pads \\(8, 7\\)"):
        load_keras_hdf5(tmp_path / "zp_k2.hdf5")


def test_postactivation_bn_without_gamma_beta(tmp_path, ecgs):
    """BatchNormalization(center=False, scale=False) (the authors' postactivation_bn BNs) -> ones/zeros."""
    sig = keras.Input((4096, 12), name="signal")
    x = keras.layers.Conv1D(8, 16, padding="same", use_bias=False)(sig)
    x = keras.layers.BatchNormalization(center=False, scale=False)(x)
    x = keras.layers.Activation("relu")(x)
    x, _ = kr.ResidualUnit(1024, 16)([x, x])
    out = keras.layers.Dense(6, activation="sigmoid")(keras.layers.Flatten()(x))
    model = keras.Model(sig, out)
    kr.randomize(model, seed=11, dense_scale=0.2)
    case = {"probs": kr.predict(model, ecgs), "logits": kr.predict(kr.logits_model(model), ecgs)}
    model.save(tmp_path / "nobeta.h5")
    m = load_keras_hdf5(tmp_path / "nobeta.h5")
    assert torch.equal(m.bn1.weight, torch.ones(8)) and torch.equal(m.bn1.bias, torch.zeros(8))
    _assert_parity(m, case, ecgs, "center/scale False")


# --------------------------------------------------------------------------- errors
def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_missing_layer_weights_named(full, tmp_path):
    path = _copy(full["files"]["keras2-renamed-shuffled"], tmp_path / "broken.hdf5")
    with h5py.File(path, "r+") as f:
        import json

        cfg = json.loads(f.attrs["model_config"])
        bn = next(l["name"] for l in cfg["config"]["layers"] if l["class_name"] == "BatchNormalization")
        del f["model_weights"][bn]
    with pytest.raises(ModelError, match=bn):
        load_keras_hdf5(path)


def test_missing_layer_in_topology_named(reduced, tmp_path):
    """A residual unit without its first BatchNormalization is not this architecture."""
    import json

    path = _copy(reduced["files"]["keras3-h5"], tmp_path / "nobn.h5")
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        layers = cfg["config"]["layers"]
        # the Activation fed by the first BN inside unit 1: rewire it to the BN's input
        bns = [l for l in layers if l["class_name"] == "BatchNormalization"]
        bn = bns[1]
        for l in layers:
            s = json.dumps(l["inbound_nodes"])
            if f'"{bn["name"]}"' in s:
                l["inbound_nodes"] = bn["inbound_nodes"]
        layers.remove(bn)
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ModelError, match="BatchNormalization"):
        load_keras_hdf5(path)
