"""ecgray.models without Keras: the port's structure, HDF5 loading of hand-written Keras 2
files, safetensors round trips, the registry and model ids.

Numerical parity with Keras itself is in ``test_keras_parity.py``.
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import ecgray.models as models
from ecgray.errors import ModelError
from ecgray.models import (
    CLASSES, FS, LEADS, N_SAMPLES, ResNet1d, ResNetConfig, available_models, load_keras_hdf5, load_model,
    load_model_file, model_id, register_model, save_model,
)
from ecgray.models import registry
from ecgray.models.ribeiro2020 import same_padding
from tests.conftest import small_model  # the one seeded small ResNet (tiny_model fixture: conftest)


# --------------------------------------------------------------------------- a Keras 2.2 file without Keras
_PREFIX = {"Conv1D": "conv1d", "BatchNormalization": "batch_normalization", "Activation": "activation",
           "Dropout": "dropout", "MaxPooling1D": "max_pooling1d", "Add": "add", "Flatten": "flatten",
           "Dense": "dense"}


def export_keras2(model: ResNet1d, path: Path, *, weights_only: bool = False, dtype=np.float32) -> None:
    """Write ``model`` in the Keras 2.2.4 layout, with the authors' graph and layer creation order."""
    layers: list[dict] = []
    counters: dict[str, int] = {}

    def add(cls, conf, inputs, weights=()):
        p = _PREFIX[cls]
        counters[p] = counters.get(p, 0) + 1
        name = f"{p}_{counters[p]}"
        layers.append({"name": name, "class_name": cls, "config": {"name": name, **conf},
                       "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]],
                       "weights": [(f"{name}/{k}:0", np.asarray(torch.as_tensor(v).detach(), dtype=dtype)) for k, v in weights]})
        return name

    def conv(m, x):
        return add("Conv1D", {"filters": m.out_channels, "kernel_size": [m.kernel_size[0]], "strides": [m.stride[0]],
                              "padding": "same", "use_bias": False, "activation": "linear"},
                   [x], [("kernel", m.weight.detach().numpy().transpose(2, 1, 0))])

    def bn(m, x):
        return add("BatchNormalization", {"axis": -1, "epsilon": 0.001, "center": True, "scale": True}, [x],
                   [("gamma", m.weight), ("beta", m.bias), ("moving_mean", m.running_mean),
                    ("moving_variance", m.running_var)])

    def relu(x):
        return add("Activation", {"activation": "relu"}, [x])

    def drop(x):
        return add("Dropout", {"rate": 0.2}, [x])

    cfg = model.config
    layers.append({"name": "signal", "class_name": "InputLayer", "inbound_nodes": [],
                   "config": {"batch_input_shape": [None, cfg.n_samples, cfg.n_leads], "name": "signal"},
                   "weights": []})
    x = y = relu(bn(model.bn1, conv(model.conv1, "signal")))
    for u in model.units:
        if u.skip_pool is not None:
            y = add("MaxPooling1D", {"pool_size": [u.downsample], "strides": [u.downsample], "padding": "same"}, [y])
        if u.skip_conv is not None:
            y = conv(u.skip_conv, y)
        x = drop(relu(bn(u.bn1, conv(u.conv1, x))))
        x = conv(u.conv2, x)
        x = y = add("Add", {}, [x, y])
        x = drop(relu(bn(u.bn2, x)))
    x = add("Flatten", {}, [x])
    out = add("Dense", {"units": cfg.n_classes, "activation": "sigmoid", "use_bias": True}, [x],
              [("kernel", model.dense.weight.detach().numpy().T), ("bias", model.dense.bias)])
    config = {"class_name": "Model", "config": {
        "name": "model_1", "layers": [{k: v for k, v in l.items() if k != "weights"} for l in layers],
        "input_layers": [["signal", 0, 0]], "output_layers": [[out, 0, 0]]}}
    with h5py.File(path, "w") as f:
        g = f
        if not weights_only:
            f.attrs["keras_version"] = np.bytes_(b"2.2.4")
            f.attrs["backend"] = np.bytes_(b"tensorflow")
            f.attrs["model_config"] = np.bytes_(json.dumps(config).encode())
            g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([l["name"].encode() for l in layers])
        for l in layers:
            lg = g.create_group(l["name"])
            lg.attrs["weight_names"] = np.array([w.encode() for w, _ in l["weights"]], dtype="S")
            for w, v in l["weights"]:
                lg.create_dataset(w, data=v)


def _x(n=2, seed=0, cfg=ResNetConfig()):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cfg.n_leads, cfg.n_samples, generator=g)


def _assert_frozen(model: ResNet1d):
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert isinstance(model.classes, tuple) and len(model.classes) == model.config.n_classes


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k}: max abs diff {(sa[k].float() - sb[k].float()).abs().max()}"


# --------------------------------------------------------------------------- the port
def test_constants_and_published_shapes():
    assert CLASSES == ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST") and len(LEADS) == 12
    assert (N_SAMPLES, FS) == (4096, 400)
    m = ResNet1d()
    assert m.conv1.weight.shape == (64, 12, 16)
    assert [(u.n_in, u.n_out, u.downsample) for u in m.units] == [(64, 128, 4), (128, 196, 4), (196, 256, 4), (256, 320, 4)]
    assert all(u.skip_conv is not None and u.skip_pool is not None for u in m.units)
    assert m.dense.weight.shape == (6, 16 * 320)
    assert all(b.eps == 1e-3 for b in m.modules() if isinstance(b, torch.nn.BatchNorm1d))
    # Keras/TF 'same': even kernels pad more on the right
    assert same_padding(4096, 16, 1) == (7, 8) and same_padding(4096, 16, 4) == (6, 6)


def test_forward_shapes_and_flatten_order(tiny_model):
    x = _x(3, cfg=tiny_model.config)
    logits = tiny_model(x)
    assert logits.shape == (3, 6)
    p = tiny_model.predict_proba(x)
    assert torch.allclose(p, torch.sigmoid(logits)) and not p.requires_grad
    # Keras Flatten is time-major: dense input index = t * C + c
    feats = {}
    h = tiny_model.dense.register_forward_hook(lambda m, i, o: feats.setdefault("in", i[0]))
    with torch.no_grad():
        tiny_model(x)
    h.remove()
    c = tiny_model.config.filters[-1]
    assert feats["in"].shape == (3, tiny_model.config.samples[-1] * c)


# --------------------------------------------------------------------------- Keras 2 HDF5 without Keras
def test_keras2_hdf5_roundtrip_bit_exact(tmp_path, tiny_model):
    path = tmp_path / "model.hdf5"
    export_keras2(tiny_model, path)
    loaded = load_keras_hdf5(path)
    assert loaded.config == tiny_model.config, loaded.config
    assert loaded.keras_info == {"keras_version": "2.2.4", "backend": "tensorflow", "layout": "keras2",
                                 "mapping": "topology"}
    _assert_frozen(loaded)
    x = _x(2, cfg=tiny_model.config)
    d = (loaded(x) - tiny_model(x)).abs().max().item()
    assert d == 0.0, f"max abs diff of logits {d}"
    assert model_id(loaded) == model_id(tiny_model)


def test_keras2_weights_only_and_file_object(tmp_path, tiny_model):
    path = tmp_path / "weights.h5"
    export_keras2(tiny_model, path, weights_only=True, dtype=np.float64)
    with open(path, "rb") as fh:
        loaded = load_keras_hdf5(fh)
    assert loaded.keras_info["mapping"] == "shapes" and loaded.keras_info["layout"] == "keras2-weights"
    assert loaded.config == tiny_model.config
    assert all(p.dtype == torch.float32 for p in loaded.state_dict().values() if p.is_floating_point())
    x = _x(2, cfg=tiny_model.config)
    d = (loaded(x) - tiny_model(x)).abs().max().item()
    assert d < 1e-6, f"max abs diff of logits {d}"


def test_hdf5_errors(tmp_path, tiny_model):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ModelError, match="not a readable HDF5"):
        load_keras_hdf5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ModelError, match="without Keras weights"):
        load_keras_hdf5(tmp_path / "empty.h5")
    with pytest.raises(ModelError, match="not found"):
        load_keras_hdf5(tmp_path / "missing.h5")
    # a different architecture: Input -> Flatten -> Dense
    with h5py.File(tmp_path / "dense.h5", "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": [
            {"name": "in", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 4096, 12]}, "inbound_nodes": []},
            {"name": "fl", "class_name": "Flatten", "config": {}, "inbound_nodes": [[["in", 0, 0, {}]]]},
            {"name": "d", "class_name": "Dense", "config": {"activation": "sigmoid"}, "inbound_nodes": [[["fl", 0, 0, {}]]]}],
            "input_layers": [["in", 0, 0]], "output_layers": [["d", 0, 0]]}})
        f.create_group("model_weights").attrs["layer_names"] = [b"in", b"fl", b"d"]
    with pytest.raises(ModelError, match="expected ReLU, found layer 'in'"):
        load_keras_hdf5(tmp_path / "dense.h5")
    # a layer's weights deleted: the error names it
    export_keras2(tiny_model, tmp_path / "m.hdf5")
    with h5py.File(tmp_path / "m.hdf5", "r+") as f:
        del f["model_weights/conv1d_4"]
    with pytest.raises(ModelError, match="conv1d_4"):
        load_keras_hdf5(tmp_path / "m.hdf5")
    # weights-only with a time axis that is not the published one needs config=
    odd = ResNet1d(ResNetConfig(stem_filters=8, filters=(8, 16), samples=(2048, 512)))
    export_keras2(odd, tmp_path / "odd.h5", weights_only=True)
    with pytest.raises(ModelError, match="pass config="):
        load_keras_hdf5(tmp_path / "odd.h5")
    assert load_keras_hdf5(tmp_path / "odd.h5", config=odd.config).config == odd.config


def test_conv_with_bias_is_refused(tmp_path, tiny_model):
    export_keras2(tiny_model, tmp_path / "m.hdf5")
    with h5py.File(tmp_path / "m.hdf5", "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for l in cfg["config"]["layers"]:
            if l["name"] == "conv1d_1":
                l["config"]["use_bias"] = True
        f.attrs["model_config"] = np.bytes_(json.dumps(cfg).encode())
    with pytest.raises(ModelError, match="conv1d_1.*bias"):
        load_keras_hdf5(tmp_path / "m.hdf5")


# --------------------------------------------------------------------------- safetensors
def test_safetensors_roundtrip_bit_exact(tmp_path):
    model = small_model(seed=1)
    model.classes = ("a", "b", "c", "d", "e", "f")
    with torch.no_grad():
        for b in model.modules():
            if isinstance(b, torch.nn.BatchNorm1d):
                b.num_batches_tracked.fill_(7)
    path = save_model(model, tmp_path / "m.safetensors", metadata={"trained_on": "synthetic"})
    loaded = load_model_file(path)
    _assert_same_weights(model, loaded)
    _assert_frozen(loaded)
    assert loaded.config == ResNetConfig.scaled(0.25, classes=("a", "b", "c", "d", "e", "f"))
    assert loaded.classes == ("a", "b", "c", "d", "e", "f")
    assert loaded.metadata == {"trained_on": "synthetic"}
    x = _x(2, cfg=model.config)
    d = (loaded(x) - model(x)).abs().max().item()
    assert d == 0.0, f"max abs diff of logits {d}"
    assert model_id(loaded) == model_id(model)


def test_save_model_validation(tmp_path, tiny_model):
    with pytest.raises(ModelError, match="safetensors"):
        save_model(tiny_model, tmp_path / "m.pt")
    with pytest.raises(ModelError, match="reserved"):
        save_model(tiny_model, tmp_path / "m.safetensors", metadata={"config": "x"})
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelError, match="without ecgray metadata"):
        load_model_file(tmp_path / "foreign.safetensors")


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt", ".bin"])
def test_pickle_formats_refused_without_loading(tmp_path, suffix):
    marker = tmp_path / "executed"
    boom = _Boom()
    boom.marker = str(marker)
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps(boom))
    with pytest.raises(ModelError, match="pickle"):
        load_model_file(path)
    with pytest.raises(ModelError, match="pickle"):
        load_model(str(path))
    assert not marker.exists()


def test_other_suffixes_refused(tmp_path):
    for name in ["m.onnx", "m.keras", "m"]:
        (tmp_path / name).write_bytes(b"\0")
        with pytest.raises(ModelError, match="refusing"):
            load_model_file(tmp_path / name)


# --------------------------------------------------------------------------- registry
def test_available_models():
    names = available_models()
    assert {"ribeiro2020", "demo"} <= set(names)
    assert all(isinstance(v, str) and v for v in names.values())


def test_ribeiro2020_needs_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("ECGRAY_RIBEIRO_WEIGHTS", raising=False)
    with pytest.raises(ModelError, match="(?i)zenodo") as exc:
        load_model("ribeiro2020")
    assert "ECGRAY_RIBEIRO_WEIGHTS" in str(exc.value) and "model.hdf5" in str(exc.value)
    with pytest.raises(ModelError, match="not found"):
        load_model("ribeiro2020", weights=tmp_path / "nope.hdf5")
    monkeypatch.setenv("ECGRAY_RIBEIRO_WEIGHTS", str(tmp_path / "nope.hdf5"))
    with pytest.raises(ModelError, match="ECGRAY_RIBEIRO_WEIGHTS"):
        load_model("ribeiro2020")


def test_ribeiro2020_published_file(tmp_path, monkeypatch):
    published = small_model(seed=2, width=1.0)
    export_keras2(published, tmp_path / "model.hdf5")
    m = load_model("ribeiro2020", weights=tmp_path / "model.hdf5")
    _assert_frozen(m)
    assert m.config == ResNetConfig() and m.classes == CLASSES
    monkeypatch.setenv("ECGRAY_RIBEIRO_WEIGHTS", str(tmp_path / "model.hdf5"))
    assert model_id(load_model("ribeiro2020")) == model_id(published) == model_id(m)


def test_ribeiro2020_rejects_other_widths(tmp_path, tiny_model):
    export_keras2(tiny_model, tmp_path / "small.hdf5")
    with pytest.raises(ModelError, match="not the published"):
        load_model("ribeiro2020", weights=tmp_path / "small.hdf5")


def test_demo(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setattr(registry, "DEMO_WEIGHTS", tmp_path / "weights" / "demo.safetensors")
    with pytest.raises(ModelError, match="ecgray train-demo"):
        load_model("demo")
    save_model(tiny_model, tmp_path / "weights" / "demo.safetensors")
    m = load_model("demo")
    _assert_frozen(m)
    assert model_id(m) == model_id(tiny_model)
    assert registry.DEMO_WEIGHTS.name == "demo.safetensors"


def test_load_by_path_and_unknown_names(tmp_path, tiny_model):
    p = save_model(tiny_model, tmp_path / "m.safetensors")
    m = load_model(str(p), device="cpu")
    _assert_frozen(m)
    assert m.source == str(p)
    with pytest.raises(ModelError, match="weights= is only for named models"):
        load_model(str(p), weights=str(p))
    with pytest.raises(ModelError, match="unknown model 'nope'.*demo"):
        load_model("nope")
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "absent.safetensors"))


def test_register_model(monkeypatch, tiny_model):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    seen = []

    def loader(weights):
        seen.append(weights)
        m = ResNet1d(tiny_model.config)
        m.load_state_dict(tiny_model.state_dict())
        return m.train()  # load_model must still return it frozen

    register_model("mine", loader, "a test model")
    assert available_models()["mine"] == "a test model"
    m = load_model("mine", weights="w")
    assert seen == ["w"]
    _assert_frozen(m)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mine", loader, "again")
    with pytest.raises(ValueError, match="invalid model name"):
        register_model("x.safetensors", loader, "bad")
    register_model("bad", lambda w: torch.nn.Linear(1, 1), "returns something else")
    with pytest.raises(ModelError, match="not ResNet1d"):
        load_model("bad")


# --------------------------------------------------------------------------- ids, exports, imports
def test_model_id(tiny_model):
    a = model_id(tiny_model)
    assert len(a) == 12 and int(a, 16) >= 0
    assert model_id(tiny_model) == a
    other = small_model(seed=0)
    assert model_id(other) == a
    with torch.no_grad():
        other.units[0].bn1.num_batches_tracked.fill_(3)
    assert model_id(other) == a, "num_batches_tracked must not change the id"
    with torch.no_grad():
        other.dense.bias[0] += 1e-6
    assert model_id(other) != a


def test_exports():
    for name in ["ResNet1d", "ResNetConfig", "CLASSES", "LEADS", "N_SAMPLES", "FS", "load_model",
                 "available_models", "register_model", "load_keras_hdf5", "save_model", "load_model_file", "model_id"]:
        assert hasattr(models, name), name


def test_library_does_not_import_keras_or_tensorflow(tmp_path, tiny_model):
    export_keras2(tiny_model, tmp_path / "m.hdf5")
    code = ("import sys; import ecgray.models as m; m.load_model(sys.argv[1]); "
            "bad = [k for k in ('keras', 'tensorflow', 'tf_keras') if k in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.hdf5")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
