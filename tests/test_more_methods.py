"""Occlusion, SmoothGrad, GuidedBackprop, Grad-CAM and Guided Grad-CAM against independent references.

References: Captum's own classes (Occlusion, GuidedBackprop, LayerGradCam, GuidedGradCam) where the
semantics match, explicit NumPy / PyTorch loops elsewhere (occlusion windows with overlap and a tail,
guided backward in matrix form, Grad-CAM via a hand-placed hook, SmoothGrad on explicitly drawn copies).
Models: the reduced ResNet1d of the attribution tests (``model`` fixture, 12 x 1024) and an 8-lead
softmax TinyNet with a ModelSpec (500 Hz, 200 samples).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ecgray.attribution import attribute, resolve_method
from ecgray.attribution.gradient_shap import _record_seed
from ecgray.models.spec import ModelSpec
from tests.conftest import ecg_batch

NEW = ("occlusion", "smoothgrad", "guided_backprop", "grad_cam", "guided_grad_cam", "kernel_shap")
#: small but non-trivial parameters per method, for the reduced ResNet (48 occluded copies per record)
FAST = {"occlusion": {"window_ms": 640.0}, "smoothgrad": {"n_samples": 2},
        "kernel_shap": {"window_ms": 640.0, "n_samples": 64}}


def close(a, b, rtol=1e-5):
    """Equal to ``rtol`` relative to the largest magnitude."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-12))


class TinyNet(nn.Module):
    def __init__(self, n_leads=8, n_classes=3):
        super().__init__()
        self.conv = nn.Conv1d(n_leads, 6, 9, padding=4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(6, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


EIGHT = ModelSpec(fs=500, n_samples=200, leads=("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"),
                  classes=("NORM", "AF", "other"), activation="softmax")


@pytest.fixture(scope="module")
def tiny8():
    torch.manual_seed(0)
    m = TinyNet().eval()
    m.spec = EIGHT
    return m


@pytest.fixture(scope="module")
def x8():
    return ecg_batch(2, length=200, seed=3)[:, :8].copy()


@pytest.fixture(scope="module")
def x():
    return ecg_batch(2)


def fwd(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32))


# --------------------------------------------------------------------------- registry, config, common contract


def test_registered_names():
    for alias, name in [("occlusion", "occlusion"), ("SmoothGrad", "smoothgrad"), ("noise_tunnel", "smoothgrad"),
                        ("GuidedBackprop", "guided_backprop"), ("gbp", "guided_backprop"),
                        ("GradCAM", "grad_cam"), ("grad-cam", "grad_cam"), ("GuidedGradCam", "guided_grad_cam"),
                        ("KernelShap", "kernel_shap")]:
        assert resolve_method(alias).name == name
    assert resolve_method("smoothgrad").stochastic and not resolve_method("occlusion").stochastic
    with pytest.raises(ValueError, match="not a gradient method"):
        attribute(TinyNet(12, 6), np.zeros((1, 12, 32)), method="smoothgrad", base="occlusion")


def test_run_config_accepts_the_new_names():
    """The pipeline validates method names with resolve_method (most of this test is importing ecgray.pipeline)."""
    from ecgray.pipeline.config import RunConfig

    cfg = RunConfig(model="demo", methods=("occlusion", "gbp", "GradCAM", "noise_tunnel", "guided_grad_cam", "kshap"))
    assert cfg.methods == ("occlusion", "guided_backprop", "grad_cam", "smoothgrad", "guided_grad_cam", "kernel_shap")


@pytest.mark.parametrize("method", NEW)
@pytest.mark.parametrize("output", ["logit", "probability"])
def test_contract_resnet_rows_equal_shared(model, x, method, output):
    """Shape (N, T, leads, L), logits/probabilities = the model's, effective params; rows path == shared path."""
    kw = FAST.get(method, {})
    a = attribute(model, x, targets=["AF", "1dAVb", "ST"], method=method, output=output, **kw)
    b = attribute(model, x, targets=["AF", "1dAVb", "ST"], method=method, output=output, multi_target="rows",
                  batch_size=4, **kw)
    assert a.relevance.shape == (2, 3, 12, 1024) and a.targets == ("AF", "1dAVb", "ST")
    assert a.params["multi_target"] == "shared" and b.params["multi_target"] == "rows"
    logits = fwd(model, x).numpy()
    close(a.logits, logits, 1e-5)
    close(a.probabilities, 1 / (1 + np.exp(-logits)), 1e-5)
    close(a.relevance, b.relevance, 1e-5)
    assert np.abs(a.relevance).max() > 0
    cls = resolve_method(method)
    assert set(cls.defaults) <= set(a.params) and a.params["output"] == output
    for k, v in kw.items():
        assert a.params[k] == v


@pytest.mark.parametrize("method", NEW)
def test_contract_spec_model_8lead_softmax(tiny8, x8, method):
    kw = {"occlusion": {"window_ms": 20.0}, "smoothgrad": {"n_samples": 4},
          "kernel_shap": {"window_ms": 100.0, "n_samples": 64}}.get(method, {})
    a = attribute(tiny8, x8, targets=[0, 2], method=method, output="probability", **kw)
    b = attribute(tiny8, x8, targets=[0, 2], method=method, output="probability", multi_target="rows", **kw)
    assert a.relevance.shape == (2, 2, 8, 200)
    logits = fwd(tiny8, x8)
    close(a.probabilities, torch.softmax(logits, -1).numpy(), 1e-5)
    close(a.relevance, b.relevance, 1e-5)
    assert np.abs(a.relevance).max() > 0
    if method == "occlusion":
        assert a.params["fs"] == 500.0 and a.params["window_samples"] == 10


# --------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize("per_lead", [True, False])
def test_occlusion_equals_captum(model, x, per_lead):
    """Overlapping windows that end at the last sample (640 ms = 256 samples at 400 Hz, stride 320 ms = 128,
    7 windows, each sample in 1-2): Captum's Occlusion (average over covering windows), to 1e-5."""
    from captum.attr import Occlusion as CaptumOcclusion

    x = x[:1]
    res = attribute(model, x, targets=[1, 4], method="occlusion", window_ms=640.0, stride_ms=320.0,
                    per_lead=per_lead, fill=0.25)
    shape, stride = ((1, 256), (1, 128)) if per_lead else ((12, 256), (12, 128))
    occ = CaptumOcclusion(model)
    for j, t in enumerate([1, 4]):
        ref = occ.attribute(torch.as_tensor(x), sliding_window_shapes=shape, strides=stride, baselines=0.25,
                            target=t, perturbations_per_eval=64)
        close(res.relevance[:, j], ref.numpy(), 1e-5)


def test_occlusion_overlap_tail_normalized_explicit_loop(tiny8, x8):
    """Overlapping windows (20 ms = 10 samples, stride 14 ms = 7) with a tail window (start 190), fill, normalize:
    an explicit per-window loop in float64."""
    targets = [0, 1, 2]
    res = attribute(tiny8, x8, targets=targets, method="occlusion", output="probability", window_ms=20.0,
                    stride_ms=14.0, fill=-0.3, normalize_window=True)
    assert res.params["window_samples"] == 10 and res.params["stride_samples"] == 7
    net64 = TinyNet().double().eval()
    net64.load_state_dict(tiny8.state_dict())
    starts = list(range(0, 191, 7))
    assert starts[-1] == 189
    starts.append(190)  # the tail [190, 200)
    x64 = torch.as_tensor(x8, dtype=torch.float64)
    for n in range(x8.shape[0]):
        with torch.no_grad():
            f0 = torch.softmax(net64(x64[n:n + 1]), -1)[0]
            total = np.zeros((3, 8, 200))
            count = np.zeros((8, 200))
            for lead in range(8):
                for s in starts:
                    xo = x64[n:n + 1].clone()
                    xo[0, lead, s:s + 10] = -0.3
                    d = (f0 - torch.softmax(net64(xo), -1)[0]).numpy() / 10.0
                    total[:, lead, s:s + 10] += d[:, None]
                    count[lead, s:s + 10] += 1
        close(res.relevance[n], total / count, 1e-4)


# --------------------------------------------------------------------------- smoothgrad


def _noisy(xr: np.ndarray, seed: int, n: int, stdevs: float, absolute: bool = False) -> torch.Tensor:
    """The documented draws: N(0,1) float32 from a Generator seeded by blake2b(seed, record), times sigma."""
    xt = torch.as_tensor(xr, dtype=torch.float32)
    gen = torch.Generator().manual_seed(_record_seed(seed, xt))
    z = torch.randn((n, *xt.shape), generator=gen, dtype=torch.float32)
    sigma = stdevs if absolute else stdevs * float(np.std(xr.astype(np.float64), ddof=1))
    return xt[None] + sigma * z


def test_smoothgrad_is_mean_of_saliency_on_noisy_copies(model, x):
    res = attribute(model, x, targets=[0, 3], method="smoothgrad", n_samples=4, stdevs=0.2, seed=7)
    for n in range(2):
        copies = _noisy(x[n], 7, 4, 0.2)
        ref = attribute(model, copies, targets=[0, 3], method="saliency").relevance.mean(axis=0)
        close(res.relevance[n], ref, 1e-5)
    assert res.params["base"] == "saliency" and res.params["base_params"] == {"abs": True}
    other = attribute(model, x, targets=[0, 3], method="smoothgrad", n_samples=4, stdevs=0.2, seed=8)
    assert np.abs(other.relevance - res.relevance).max() > 1e-3 * np.abs(res.relevance).max()


def test_smoothgrad_sq_vargrad_ixg_absolute_and_chunking(tiny8, x8):
    copies = [_noisy(x8[n], 0, 5, 0.05, absolute=True) for n in range(2)]
    per = [attribute(tiny8, c, targets=[0, 1, 2], method="ixg").relevance.astype(np.float64) for c in copies]
    for nt, reduce in [("smoothgrad", lambda a: a.mean(0)), ("smoothgrad_sq", lambda a: (a**2).mean(0)),
                       ("vargrad", lambda a: (a**2).mean(0) - a.mean(0) ** 2)]:
        res = attribute(tiny8, x8, method="smoothgrad", base="ixg", n_samples=5, stdevs=0.05, absolute=True,
                        nt_type=nt)
        for n in range(2):
            close(res.relevance[n], reduce(per[n]), 1e-5)
    # chunking / position / target list do not change a record's draws
    a = attribute(tiny8, x8, targets=[0, 2], method="smoothgrad", n_samples=5)
    b = attribute(tiny8, x8[::-1].copy(), targets=[2, 0], method="smoothgrad", n_samples=5, batch_size=1,
                  internal_batch_size=3)
    close(a.relevance, b.relevance[::-1][:, ::-1], 1e-5)


def test_smoothgrad_around_ig_with_per_record_baselines(tiny8, x8):
    """A base with parameters and per-record baselines (N, leads, L): each copy keeps its record's baseline."""
    base = np.stack([np.full((8, 200), 0.1, np.float32), np.full((8, 200), -0.2, np.float32)])
    bp = {"n_steps": 8, "baselines": base}
    res = attribute(tiny8, x8, targets=[1], method="smoothgrad", base="ig", base_params=bp, n_samples=3)
    for n in range(2):
        c = _noisy(x8[n], 0, 3, 0.1).numpy()
        ref = attribute(tiny8, c, targets=[1], method="ig", n_steps=8, baselines=np.repeat(base[n:n + 1], 3, 0))
        close(res.relevance[n], ref.relevance.mean(0), 1e-5)
    assert res.params["base_params"]["n_steps"] == 8


# --------------------------------------------------------------------------- guided backprop


class MLP(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear -> ReLU (the same module again) -> Linear."""

    def __init__(self, reuse: bool):
        super().__init__()
        torch.manual_seed(1)
        self.l1, self.l2, self.l3 = nn.Linear(12, 10), nn.Linear(10, 10), nn.Linear(10, 4)
        self.r1 = nn.ReLU()
        self.r2 = self.r1 if reuse else nn.ReLU()

    def forward(self, x):
        return self.l3(self.r2(self.l2(self.r1(self.l1(x.flatten(1))))))


@pytest.mark.parametrize("reuse", [False, True])
def test_guided_backprop_matrix_form(reuse):
    """The guided backward written out: g <- W^T (relu(g) * [z > 0]) at each ReLU, in float64."""
    net = MLP(reuse).eval()
    xs = np.random.default_rng(0).normal(size=(3, 2, 6)).astype(np.float32)
    res = attribute(net, xs, targets=[0, 1, 2, 3], method="guided_backprop")
    rows = attribute(net, xs, targets=[0, 1, 2, 3], method="guided_backprop", multi_target="rows")
    W = [m.weight.detach().double().numpy() for m in (net.l1, net.l2, net.l3)]
    b = [m.bias.detach().double().numpy() for m in (net.l1, net.l2, net.l3)]
    for n in range(3):
        v = xs[n].reshape(-1).astype(np.float64)
        z1 = W[0] @ v + b[0]
        z2 = W[1] @ np.maximum(z1, 0) + b[1]
        for t in range(4):
            g = W[2][t]
            g = W[1].T @ (np.maximum(g, 0) * (z2 > 0))
            g = W[0].T @ (np.maximum(g, 0) * (z1 > 0))
            close(res.relevance[n, t], g.reshape(2, 6), 1e-5)
            if not reuse:  # Captum (the rows path) on a module used once per forward
                close(rows.relevance[n, t], g.reshape(2, 6), 1e-5)
    # and it differs from the plain gradient (the rule is active)
    plain = attribute(net, xs, targets=[0, 1, 2, 3], method="saliency", abs=False)
    assert np.abs(plain.relevance - res.relevance).max() > 1e-3


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_guided_backprop_resnet_equals_captum_and_relus_are_modules(model, x):
    from captum.attr import GuidedBackprop as CaptumGBP

    calls: dict[str, int] = {}
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * len(model.units)
    handles = [m.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in relus]
    try:
        fwd(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    assert calls == {n: 1 for n, _ in relus}  # each ReLU module runs once per forward
    res = attribute(model, x, targets=[2, 5], method="gbp")
    gbp = CaptumGBP(model)
    for j, t in enumerate([2, 5]):
        ref = gbp.attribute(torch.as_tensor(x).requires_grad_(True), target=t).detach().numpy()
        close(res.relevance[:, j], ref, 1e-5)


def test_guided_backprop_refuses_functional_relu():
    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.relu(x.flatten(1)))

    with pytest.raises(ValueError, match="no nn.ReLU"):
        attribute(F(), np.ones((1, 2, 4)), method="guided_backprop")

    class G(F):  # has an nn.ReLU module but calls the functional one
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

    for multi_target in ("auto", "rows"):
        with pytest.raises(ValueError, match="never called"):
            attribute(G(), np.ones((1, 2, 4)), method="guided_backprop", multi_target=multi_target)


# --------------------------------------------------------------------------- grad-cam


def _upsample_linear(cam: np.ndarray, length: int) -> np.ndarray:
    """F.interpolate(mode='linear', align_corners=False) by hand: source x = (i + 0.5) L'/L - 0.5, clamped."""
    lp = cam.shape[-1]
    src = np.clip((np.arange(length) + 0.5) * lp / length - 0.5, 0, lp - 1)
    return np.stack([np.interp(src, np.arange(lp), c) for c in cam])


def _hook_cam(model, x, layer: nn.Module, target: int, relu: bool) -> np.ndarray:
    store = {}

    def hook(_m, _i, out):
        a = out[0] if isinstance(out, tuple) else out
        a.retain_grad()
        store["a"] = a

    h = layer.register_forward_hook(hook)
    try:
        xt = torch.as_tensor(x).requires_grad_(True)
        model(xt)[:, target].sum().backward()
    finally:
        h.remove()
    a, g = store["a"].detach().double().numpy(), store["a"].grad.double().numpy()
    cam = (g.mean(axis=2, keepdims=True) * a).sum(axis=1)
    return np.maximum(cam, 0) if relu else cam


@pytest.mark.parametrize("layer,relu", [("auto", True), ("units.2", False)])
def test_grad_cam_hook_reference(model, x, layer, relu):
    res = attribute(model, x, targets=[0, 1, 3], method="grad_cam", layer=layer, relu=relu)
    name = "units.3" if layer == "auto" else layer
    assert res.params["layer_resolved"] == name
    for j, t in enumerate([0, 1, 3]):
        cam = _hook_cam(model, x, model.get_submodule(name), t, relu)
        ref = _upsample_linear(cam, 1024)
        for lead in range(12):  # the same map on every lead
            close(res.relevance[:, j, lead], ref, 1e-5)
    if not relu:
        assert res.relevance.min() < 0


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_grad_cam_and_guided_grad_cam_equal_captum(tiny8, x8):
    """TinyNet: auto picks the ReLU (the pool's output has length 1); Captum LayerGradCam + interpolate, and
    Captum GuidedGradCam, with linear interpolation."""
    from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

    res = attribute(tiny8, x8, targets=[0, 1, 2], method="grad_cam")
    assert res.params["layer_resolved"] == "relu"
    ggc = attribute(tiny8, x8, targets=[0, 1, 2], method="guided_grad_cam", output="probability")
    xt = torch.as_tensor(x8)
    prob = nn.Sequential(tiny8, nn.Softmax(dim=-1)).eval()
    for t in range(3):
        cam = LayerGradCam(tiny8, tiny8.relu).attribute(xt, target=t, relu_attributions=True)
        ref = LayerAttribution.interpolate(cam, (200,), interpolate_mode="linear").expand(-1, 8, -1)
        close(res.relevance[:, t], ref.detach().numpy(), 1e-5)
        ref = GuidedGradCam(prob, tiny8.relu).attribute(xt.clone().requires_grad_(True), target=t,
                                                        interpolate_mode="linear")
        close(ggc.relevance[:, t], ref.detach().numpy(), 1e-5)


def test_guided_grad_cam_is_gbp_times_cam(model, x):
    targets = ["RBBB", "AF"]
    ggc = attribute(model, x, targets=targets, method="guided_grad_cam", layer="units.3.relu2")
    cam = attribute(model, x, targets=targets, method="grad_cam", layer="units.3.relu2")
    gbp = attribute(model, x, targets=targets, method="guided_backprop")
    close(ggc.relevance, cam.relevance * gbp.relevance, 1e-5)
    with pytest.raises(ValueError, match="not a submodule"):
        attribute(model, x, targets=targets, method="grad_cam", layer="units.9")


# --------------------------------------------------------------------------- kernel shap


def _brute_shapley(net, xr: np.ndarray, ids: np.ndarray, m: int, base: float, output: str) -> np.ndarray:
    """Exact Shapley values of the segment game by enumerating all 2^m coalitions (float64): (C, m)."""
    from itertools import product

    x64 = torch.as_tensor(xr, dtype=torch.float64)
    v = {}
    with torch.no_grad():
        for z in product((0, 1), repeat=m):
            keep = torch.as_tensor(np.asarray(z, bool)[ids])
            out = net(torch.where(keep, x64, torch.tensor(base, dtype=torch.float64))[None])[0]
            v[z] = (torch.softmax(out, -1) if output == "probability" else out).numpy()
    phi = np.zeros((len(v[(0,) * m]), m))
    for i in range(m):
        for z in v:
            if z[i]:
                continue
            k = sum(z)
            zi = z[:i] + (1,) + z[i + 1:]
            phi[:, i] += math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) * (v[zi] - v[z])
    return phi


def test_kernel_shap_exact_enumeration_is_shapley(tiny8, x8):
    """8 segments (one per lead, 400 ms >= the 200-sample record): 254 coalitions <= n_samples, so the
    constrained kernel regression gives the exact Shapley values of the segment game."""
    res = attribute(tiny8, x8, targets=[0, 1, 2], method="kernel_shap", output="probability", window_ms=400.0,
                    n_samples=300, baselines=0.1)
    assert res.params["exact"] is True and res.params["n_features"] == 8
    net64 = TinyNet().double().eval()
    net64.load_state_dict(tiny8.state_dict())
    ids = np.repeat(np.arange(8)[:, None], 200, axis=1)
    for n in range(2):
        phi = _brute_shapley(net64, x8[n], ids, 8, 0.1, "probability")  # (3, 8)
        close(res.relevance[n], phi[:, ids], 1e-4)


def test_kernel_shap_sampled_recovers_linear_model(x):
    """A linear model is additive: any full-rank sample of coalitions gives phi_j = sum_{i in j} a_i (x_i - b).
    48 segments (12 leads x 4 windows of 256 samples), 120 sampled coalitions."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12 * 1024, 3)).eval()
    lin.spec = ModelSpec(fs=400, n_samples=1024, leads=EIGHT.leads[:2] + ("III", "aVR", "aVL", "aVF") + EIGHT.leads[2:],
                         classes=("a", "b", "c"))
    res = attribute(lin, x, method="kernel_shap", window_ms=640.0, n_samples=120, baselines=-0.05, seed=3)
    rows = attribute(lin, x, method="kernel_shap", window_ms=640.0, n_samples=120, baselines=-0.05, seed=3,
                     multi_target="rows")
    assert res.params["exact"] is False and res.params["n_features"] == 48
    a = lin[1].weight.detach().double().numpy().reshape(3, 12, 1024)
    for n in range(2):
        contrib = a * (x[n].astype(np.float64) + 0.05)[None]  # (3, 12, 1024)
        seg = contrib.reshape(3, 12, 4, 256).sum(-1)  # (3, 12, 4)
        close(res.relevance[n], np.repeat(seg, 256, axis=-1), 1e-4)
    close(rows.relevance, res.relevance, 1e-5)


def test_kernel_shap_sampled_efficiency_and_seed(model, x):
    """Sampled mode on the ResNet: sum of segment values = f(x) - f(b) exactly (the constraint); the seed
    matters, the chunking and position do not."""
    kw = dict(window_ms=640.0, n_samples=40, baselines=0.0)
    res = attribute(model, x, targets=[0, 4], method="kernel_shap", seed=1, **kw)
    fx = fwd(model, x).numpy()[:, [0, 4]]
    fb = fwd(model, np.zeros_like(x[:1])).numpy()[:, [0, 4]]
    phi_sum = res.relevance[:, :, :, ::256].sum(axis=(2, 3))  # one sample per segment
    close(phi_sum, fx - fb, 1e-4)
    again = attribute(model, x[::-1].copy(), targets=[4, 0], method="kernel_shap", seed=1, batch_size=1, **kw)
    close(again.relevance[::-1][:, ::-1], res.relevance, 1e-5)
    other = attribute(model, x, targets=[0, 4], method="kernel_shap", seed=2, **kw)
    assert np.abs(other.relevance - res.relevance).max() > 1e-3 * np.abs(res.relevance).max()
