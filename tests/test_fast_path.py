"""The multi-target fast path (ecgray.attribution.fast) against the rows path and Captum itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecgray.attribution import attribute
from ecgray.attribution.fast import activation_bytes, points_per_chunk
from tests.conftest import ATTR_N_SAMPLES as N_SAMPLES, ecg_batch

TARGETS = ["AF", 0, "SB", "LBBB"]
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")


@pytest.fixture(scope="module")
def x():
    return ecg_batch(3)


def rel_max(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


SHARED = [
    ("ig", dict(n_steps=12, internal_batch_size=7)),
    ("saliency", {}),
    ("saliency", dict(abs=False)),
    ("ixg", {}),
    ("gradient_shap", dict(n_samples=5, internal_batch_size=4, compute_delta=True)),
    ("lrp_epsilon", {}),
    ("lrp_alpha_beta", {}),
]


@pytest.mark.parametrize("method,params", SHARED)
def test_shared_equals_rows(model, x, method, params):
    """One forward + one backward per target == one forward/backward per (record, target) row.

    oneDNN off: batch-invariant kernels, so only summation order differs."""
    with torch.backends.mkldnn.flags(enabled=False):
        fast = attribute(model, x, targets=TARGETS, method=method, batch_size=2, **params)
        rows = attribute(model, x, targets=TARGETS, method=method, batch_size=5, multi_target="rows", **params)
    assert fast.params["multi_target"] == "shared" and rows.params["multi_target"] == "rows"
    assert rel_max(fast.relevance, rows.relevance) < 1e-5
    if rows.delta is not None:
        scale = max(1.0, float(np.abs(rows.logits).max()))
        np.testing.assert_allclose(fast.delta, rows.delta, rtol=0, atol=1e-5 * scale)


def test_ig_equals_naive_captum_loop(model, x):
    """The baseline users write: Captum IG per record and target, default settings, n_steps=50."""
    from captum.attr import IntegratedGradients

    res = attribute(model, x[:2], targets=["AF", "RBBB"], method="ig", n_steps=50)
    for i in range(2):
        for j, t in enumerate([4, 1]):
            xi = torch.as_tensor(x[i : i + 1])
            ref, d = IntegratedGradients(model).attribute(xi, target=t, n_steps=50, return_convergence_delta=True)
            assert rel_max(res.relevance[i, j], ref[0].detach().numpy()) < 1e-4
            assert abs(float(res.delta[i, j]) - float(d[0])) < 1e-4 * max(1.0, abs(float(res.logits[i, t])))


def test_memory_budget_cuts_points_not_results(model, x, monkeypatch):
    per_point = activation_bytes(model, (12, N_SAMPLES), "cpu", torch.float32)
    # the reduced model keeps tens of kB of outputs per sample (12 x 1024 input = 48 kB)
    assert 12 * N_SAMPLES * 4 < per_point < 100 * 12 * N_SAMPLES * 4
    monkeypatch.setenv("ECGRAY_ATTR_MEMORY_MB", str(3 * 2 * per_point / 2**20))
    assert points_per_chunk(model, (12, N_SAMPLES), "cpu", torch.float32) == 3
    with torch.backends.mkldnn.flags(enabled=False):
        small = attribute(model, x[:2], targets=["AF", "SB"], method="ig", n_steps=10)
        monkeypatch.delenv("ECGRAY_ATTR_MEMORY_MB")
        big = attribute(model, x[:2], targets=["AF", "SB"], method="ig", n_steps=10)
    assert small.params["internal_batch_size"] == "auto (3)"
    assert int(big.params["internal_batch_size"][6:-1]) > 20
    assert rel_max(small.relevance, big.relevance) < 1e-5


def test_adaptive_steps_meet_tolerance(model, x):
    rtol = 0.02
    res = attribute(model, x, targets=TARGETS, method="ig", n_steps=64, rtol=rtol, atol=1e-4)
    full = attribute(model, x, targets=TARGETS, method="ig", n_steps=64)
    gain = full.relevance.sum(axis=(2, 3)) - full.delta  # f(x) - f(0)
    assert res.steps.shape == (3, len(TARGETS)) and set(np.unique(res.steps)) <= {8, 16, 32, 64}
    ok = np.abs(res.delta) <= rtol * np.abs(gain) + 1e-4 + 1e-6
    assert np.all(ok | (res.steps == 64)), (res.delta, gain, res.steps)
    assert (res.steps < 64).any()  # some rows stop early, or the feature does nothing
    # rows that stopped early: their relevance is IG at that step count
    i, j = np.argwhere(res.steps == res.steps.min())[0]
    one = attribute(model, x[i : i + 1], targets=[TARGETS[j]], method="ig", n_steps=int(res.steps[i, j]))
    assert rel_max(res.relevance[i, j], one.relevance[0, 0]) < 1e-5
    assert full.steps.tolist() == [[64] * len(TARGETS)] * 3


def test_switch_validation(model, x):
    with pytest.raises(ValueError, match="no shared-target path"):
        attribute(model, x[:1], targets=["AF"], method="deeplift", multi_target="shared")
    with pytest.raises(ValueError, match="multi_target must be"):
        attribute(model, x[:1], targets=["AF"], method="ig", multi_target="fast")
    with pytest.raises(ValueError, match="adaptive steps"):
        attribute(model, x[:1], targets=["AF"], method="ig", rtol=0.1, multi_target="rows")


def test_precision_switch(model, x):
    res = attribute(model, x[:1], targets=["AF"], method="saliency")
    assert res.params["precision"] == "fp32"
    for bad in ("bf16", "tf32"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            attribute(model, x[:1], targets=["AF"], method="saliency", precision=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        attribute(model, x[:1], targets=["AF"], method="saliency", precision="fp16")
    assert [p.requires_grad for p in model.parameters()] == [True] * len(list(model.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_precision_on_cuda(model, x):
    """True float32 on CUDA matches the CPU; TF32 / bf16 differ; the global flags are restored."""
    cpu = attribute(model, x, targets=TARGETS, method="ig", n_steps=8)
    net = model.to("cuda")
    try:
        before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        fp32 = attribute(net, x, targets=TARGETS, method="ig", n_steps=8)
        assert rel_max(fp32.relevance, cpu.relevance) < 1e-4
        for prec in ("tf32", "bf16"):
            low = attribute(net, x, targets=TARGETS, method="ig", n_steps=8, precision=prec)
            assert low.params["precision"] == prec and np.isfinite(low.relevance).all()
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    finally:
        model.to("cpu")


def _routed_view_cls():
    from ecgray.models.ribeiro2020 import ResNet2dView, SameMaxPool1d, same_padding

    def padded(m, y):
        left, right = same_padding(y.shape[-1], m.pool, m.pool)
        return F.pad(y, (left, right), value=float("-inf"))

    class RoutedView(ResNet2dView):
        """ResNet2dView with the 1-D model's routing substituted: each skip max-pool window takes the
        element the 1-D model's pool takes at the same input, each ReLU passes where the 1-D model's
        does. Records every place where the view's own choice differs, with the 1-D model's gap there
        (pool: max - value of the view's pick; ReLU: |input|): a tie to float rounding if small."""

        def __init__(self, net):
            super().__init__(net)
            self.flips: list[tuple[str, float, float]] = []  # (kind, gap, scale of that tensor)

        def forward(self, x):
            self._ref = {}
            mods = [m for m in self.net.modules() if isinstance(m, (SameMaxPool1d, nn.ReLU))]
            hooks = [m.register_forward_hook(self._grab) for m in mods]
            try:
                with torch.no_grad():
                    self.net(x.detach())
            finally:
                for h in hooks:
                    h.remove()
            return super().forward(x)

        def _grab(self, m, inp, _out):
            y = inp[0]
            if isinstance(m, nn.ReLU):
                self._ref[m] = y
            else:
                self._ref[m] = (padded(m, y), F.max_pool1d(padded(m, y), m.pool, m.pool, return_indices=True)[1])

        def _pool(self, m, x):
            ref, idx = self._ref[m]
            xp = padded(m, x.squeeze(2).contiguous())
            own = F.max_pool1d(xp.detach(), m.pool, m.pool, return_indices=True)[1]
            for i in torch.nonzero(own != idx):
                w = ref[tuple(i[:-1])]
                gap = float(w[idx[tuple(i)]] - w[own[tuple(i)]])
                self.flips.append(("pool", gap, float(ref[ref.isfinite()].abs().max())))
            return xp.gather(-1, idx).unsqueeze(2).contiguous(memory_format=torch.channels_last)

        def _relu(self, m, x):
            ref = self._ref[m].unsqueeze(2)
            keep = ref > 0
            for v in ref[(x.detach() > 0) != keep]:
                self.flips.append(("relu", abs(float(v)), float(ref.abs().max())))
            return x * keep

    return RoutedView


def _check_view(model, x, **kw):
    """The view against the 1-D model, same chunks: logits to float rounding; relevance to float
    rounding with the 1-D model's routing substituted; every place the view routes differently a tie
    to float rounding; the view itself to float rounding where it routed no differently.
    Returns (relevance difference of the view itself, the routing differences)."""
    from ecgray.models.ribeiro2020 import ResNet2dView

    view = ResNet2dView(model).eval()
    xt = torch.as_tensor(x)
    with torch.no_grad():
        ref = model.eval()(xt)
        assert torch.allclose(view(xt), ref, atol=1e-5 * float(ref.abs().max()))
    a = attribute(model, x, targets=TARGETS, **kw)
    routed = _routed_view_cls()(model).eval()
    r = attribute(routed, x, targets=TARGETS, **kw)
    assert r.targets == a.targets
    assert rel_max(r.relevance, a.relevance) < 1e-5
    assert all(gap <= 1e-5 * max(scale, 1.0) for _, gap, scale in routed.flips), routed.flips
    b = attribute(view, x, targets=TARGETS, **kw)
    assert b.targets == a.targets
    diff = rel_max(b.relevance, a.relevance)
    if not routed.flips:
        assert diff < 1e-5
    return diff, routed.flips


def test_channels_last_view_equals_model(model, x):
    """ResNet2dView (2-D channels-last convolutions, measured by `ecgray bench` as a layout option)
    computes the same network: logits equal to float rounding; IG relevance equal to float rounding
    *given the 1-D model's routing* (max-pool picks, ReLU signs); wherever the view routes
    differently it is a tie to float rounding. Issue 13: plain IG-8 of the view moved by up to
    9.5e-3 of the map's maximum (10 of 20 CODE-15 record triples over 1e-4), each time through one
    to three max-pool near-ties near the zero baseline, where activations are almost constant."""
    _check_view(model, x, method="ig", n_steps=8, internal_batch_size=12)


def test_channels_last_view_ties(model):
    """Exact and near ties: zero-padded stretches, a flat line, spikes on zeros (piecewise-constant
    activations, whole pooling windows tied), gradients and IG from the zero baseline."""
    rng = np.random.default_rng(3)
    x = np.zeros((3, 12, N_SAMPLES), np.float32)
    x[0, :, 300:700] = rng.normal(0, 0.3, (12, 400))  # zero-padded record
    x[1] = 0.25  # flat line
    x[2, :, ::64] = 1.0  # spikes on zeros
    _check_view(model, x, method="saliency", abs=False)
    _check_view(model, x, method="ig", n_steps=8, internal_batch_size=12)


def test_channels_last_view_pool_breaks_ties_like_model(model):
    """The view's skip pool on a channels-last tensor with exact ties routes the gradient to the
    same element as the 1-D module."""
    from ecgray.models.ribeiro2020 import ResNet2dView

    unit = next(u for u in model.units if u.skip_pool is not None)
    y = torch.zeros(2, 5, 64)
    y[0, 1, 8:24] = 0.5
    y[1, 2, ::3] = 1.0
    y[1, 3] = torch.arange(64.0) % 2
    a = y.clone().requires_grad_()
    b = y.clone().unsqueeze(2).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 5, 64 // unit.skip_pool.pool, generator=torch.Generator().manual_seed(0))
    (unit.skip_pool(a) * g).sum().backward()
    (ResNet2dView._pool(unit.skip_pool, b).squeeze(2) * g).sum().backward()
    assert torch.equal(a.grad, b.grad.squeeze(2))


def test_nested_trapezoid_adaptive_steps(model, x):
    """integration_method='trapezoid' + rtol: levels 9, 17, 33, 65 points, each grid holding the previous
    one; a row's result equals plain trapezoid IG at its final point count, and each record costs only
    its final point count (new midpoints per level), counted by a forward hook."""
    seen = []
    h = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]) if a[0].requires_grad else None)
    try:
        res = attribute(model, x, targets=TARGETS, method="ig", integration_method="trapezoid", n_steps=65,
                        rtol=0.01)
    finally:
        h.remove()
    assert set(np.unique(res.steps)) <= {9, 17, 33, 65} and len(np.unique(res.steps)) > 1
    assert sum(seen) == int(res.steps.max(axis=1).sum())  # nested: no point evaluated twice
    for i in range(x.shape[0]):
        for j in range(len(TARGETS)):
            one = attribute(model, x[i : i + 1], targets=[TARGETS[j]], method="ig", integration_method="trapezoid",
                            n_steps=int(res.steps[i, j]))
            assert rel_max(res.relevance[i, j], one.relevance[0, 0]) < 1e-5
            assert abs(res.delta[i, j] - one.delta[0, 0]) <= 1e-5  # float32 sums over 49k samples
    with torch.no_grad():
        f0 = model(torch.zeros_like(torch.as_tensor(x))).numpy()
    idx = [list(model.classes).index(t) for t in res.targets]
    g = res.logits[:, idx] - f0[:, idx]  # f(x) - f(baseline) per row
    done = res.steps < 65
    assert (np.abs(res.delta)[done] <= 0.01 * np.abs(g)[done] * (1 + 1e-4) + 1e-7).all()


def test_trapezoid_weights_sum_to_one(model, x):
    """The composite trapezoid rule integrates a constant exactly (Captum's riemann_trapezoid weights sum to
    (n-1)/n); with n points IG relevance of a linear map is exact."""
    from ecgray.attribution import IntegratedGradients

    ig = IntegratedGradients(model, IntegratedGradients.resolve_params({"integration_method": "trapezoid", "n_steps": 5}))
    alphas, weights = ig._rule(5)
    assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0] and abs(sum(weights) - 1.0) < 1e-12
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12 * N_SAMPLES, 2))
    lin.classes = ("a", "b")
    r = attribute(lin, x, targets=["a", "b"], method="ig", integration_method="trapezoid", n_steps=3)
    assert np.abs(r.delta).max() < 1e-4
    with pytest.raises(ValueError, match="needs the shared-target path"):
        attribute(model, x[:1], targets=["AF"], method="ig", integration_method="trapezoid", multi_target="rows")
