"""LRP (Zennit) for ResNet1d: the torchvision shim, canonizers, rules, conservation.

Figures seen when this was written (reduced model: width 0.25, L = 1024, float32):

* canonized forward vs original: 5e-7 of max |logit| (zennit's own
  ``NamedMergeBatchNorm`` on the same pairs: 9e-4, its ``1/sqrt(1+eps)``
  factor; ``SequentialMergeBatchNorm``: 1.2e-3 -- the same factor; it folded
  ``bn2`` too (0.28) before the residual addition became a module);
* LRP-epsilon(1e-9) vs Gradient x Input with random BN statistics: 1e-6 of max |R|;
* conservation, bias-free network: LRP-epsilon |delta|/|logit| <= 7e-5;
  LRP-alpha-beta at full width (L = 256) <= 1.3e-5;
* conservation, random BN statistics (real / synthetic ECGs): |delta|/|logit|
  median 0.27 / 0.34 (epsilon), 0.08 / 0.09 (alpha-beta); |delta| / the
  record's max |logit| <= 0.47 (epsilon), 0.18 (alpha-beta) -- relevance
  absorbed by BN shifts / dense bias;
* without the residual ``Sum`` canonizer (plain ``+``): sum(R)/logit from
  -219 to +18 on the bias-free network.
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from torch import nn

from ecgray.attribution import attribute
from ecgray.attribution import lrp
from ecgray.attribution._zennit import import_zennit, torchvision_is_stubbed
from ecgray.models.ribeiro2020 import ResidualAdd
from tests.conftest import ATTR_N_SAMPLES, ecg_batch, make_model

N_SAMPLES = ATTR_N_SAMPLES


@pytest.fixture(scope="module")
def bias_free():
    return make_model(bias_free=True)


@pytest.fixture(scope="module")
def x():
    return ecg_batch(3)


def logits(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


# ---------------------------------------------------------------------------
# the zennit import shim


def test_import_zennit():
    zennit = import_zennit()
    assert hasattr(zennit, "composites") and hasattr(zennit.layer, "Sum")
    assert import_zennit() is zennit
    tv = sys.modules.get("torchvision")
    # the stub never stays behind in sys.modules (default keep_stub=False)
    assert not getattr(tv, "__ecgray_stub__", False)
    if torchvision_is_stubbed():
        # zennit's torchvision canonizers point at the inert placeholders
        assert zennit.torchvision.ResNetBottleneck.__ecgray_stub__ is True
        assert issubclass(zennit.torchvision.ResNetBasicBlock, nn.Module)
        assert not any(isinstance(m, zennit.torchvision.ResNetBasicBlock) for m in make_model().modules())


# ---------------------------------------------------------------------------
# canonizers


def test_canonized_forward_equals_original(model, x):
    zennit = import_zennit()
    from ecgray.attribution.lrp.canonizers import ResidualSum
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.core import Composite

    xt = torch.as_tensor(x)
    ref = logits(model, x)
    scale = np.abs(ref).max()
    m = copy.deepcopy(model)
    adds = [u.add for u in m.units]
    with torch.no_grad(), Composite(canonizers=lrp.resnet1d_canonizers()).context(m):
        # the model's own add modules are swapped for zennit Sum-based ones
        assert all(isinstance(u.add, ResidualSum) and isinstance(u.add.sum, zennit.layer.Sum) for u in m.units)
        assert m.conv1.bias is not None and m.units[0].conv1.bias is not None  # BN folded in
        assert m.units[0].conv2.bias is None  # bn2 (after the sum) is not
        out = m(xt).numpy()
    assert np.abs(out - ref).max() <= 1e-5 * scale
    # everything reverted on exit: the original add modules are back
    assert all(u.add is a for u, a in zip(m.units, adds)) and m.conv1.bias is None
    for (k, v), (k2, v2) in zip(m.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # zennit's order-based merge: with the add module registered between conv2 and bn2 it no
    # longer folds bn2 (it did when the sum was a '+': 0.28 of max |logit|); its 1/sqrt(1+eps) remains
    m2 = copy.deepcopy(model)
    with torch.no_grad(), Composite(canonizers=[SequentialMergeBatchNorm()]).context(m2):
        assert m2.units[0].conv2.bias is None
        stock = m2(xt).numpy()
    assert 1e-4 * scale < np.abs(stock - ref).max() < 1e-2 * scale


def test_residual_add_is_parameter_free(model):
    """The residual addition is a module of the model, with no state: weights files are unaffected."""
    assert all(isinstance(u.add, ResidualAdd) for u in model.units)
    assert not any(".add." in k or k.endswith(".add") for k in model.state_dict())
    assert not list(model.units[0].add.parameters()) and not list(model.units[0].add.buffers())


def test_lrp0_equals_input_x_gradient(model, x):
    """On a ReLU network, LRP-0 with these rules (incl. epsilon on bn2, Norm at the sums) is Gradient x Input."""
    res = attribute(model, x[:2], targets=["AF", "RBBB"], method="lrp_epsilon", epsilon=1e-9, stabilizer=1e-12)
    xt = torch.as_tensor(x[:2]).clone().requires_grad_(True)
    ref = []
    for t in (4, 1):
        (g,) = torch.autograd.grad(model(xt)[:, t].sum(), xt)
        ref.append((xt * g).detach().numpy())
    ref = np.stack(ref, axis=1)
    assert np.abs(res.relevance - ref).max() <= 1e-4 * np.abs(ref).max()
    # the default epsilon (1e-6) stays close to it
    default = attribute(model, x[:2], targets=["AF", "RBBB"], method="lrp")
    assert np.abs(default.relevance - ref).max() <= 2e-2 * np.abs(ref).max()


# ---------------------------------------------------------------------------
# conservation


def test_conservation_bias_free(bias_free, x):
    res = attribute(bias_free, x, method="lrp_epsilon")
    # delta = sum(R) - logit (up to float32 summation over 12k values of both signs)
    np.testing.assert_allclose(
        res.delta, res.relevance.sum(axis=(2, 3)) - res.logits, atol=1e-5 * np.abs(res.relevance).sum(axis=(2, 3)).max()
    )
    rel = np.abs(res.delta) / np.abs(res.logits)
    assert rel.max() <= 1e-3, rel.max()
    prob = attribute(bias_free, x[:1], method="lrp_epsilon", output="probability")
    np.testing.assert_allclose(prob.relevance.sum(axis=(2, 3)), prob.probabilities, rtol=1e-3)
    assert prob.params["output"] == "probability"


def test_conservation_alpha_beta_full_width():
    """alpha-beta is exact where neurons have positive and negative contributions: full width, L = 256."""
    m = make_model(width=1.0, bias_free=True, n_samples=256, samples=(64, 16, 4, 1))
    res = attribute(m, ecg_batch(2, length=256), method="lrp_alpha_beta")
    assert (np.abs(res.delta) / np.abs(res.logits)).max() <= 1e-3


def test_residual_sum_canonizer_is_needed(bias_free, x, monkeypatch):
    """Without the Sum canonizer the plain '+' copies the relevance to both branches: no conservation."""
    good = attribute(bias_free, x[:1], targets=["AF", "SB"], method="lrp_epsilon")
    assert (np.abs(good.delta) / np.abs(good.logits[:, [4, 3]])).max() <= 1e-3
    only_merge = lrp.resnet1d_canonizers
    monkeypatch.setattr(lrp, "resnet1d_canonizers", lambda: only_merge()[:1])
    bad = attribute(bias_free, x[:1], targets=["AF", "SB"], method="lrp_epsilon")
    assert (np.abs(bad.delta) / np.abs(bad.logits[:, [4, 3]])).max() > 1.0


def test_conservation_random_bn_reported(model, x):
    """With BN shifts and a dense bias, relevance is absorbed; the delta reports exactly how much."""
    for method in ("lrp_epsilon", "lrp_alpha_beta"):
        res = attribute(model, x, method=method)
        assert np.isfinite(res.relevance).all()
        np.testing.assert_allclose(
            res.delta, res.relevance.sum(axis=(2, 3)) - res.logits, atol=1e-5 * np.abs(res.relevance).sum(axis=(2, 3)).max()
        )
        rel = np.abs(res.delta) / np.abs(res.logits)
        rel_rec = np.abs(res.delta) / np.abs(res.logits).max(axis=1, keepdims=True)
        print(f"{method}: |delta|/|logit| median {np.median(rel):.3f}; / record max |logit|: max {rel_rec.max():.3f}")
        # regression guards (seen: median 0.27-0.34 / 0.08-0.09; max 0.47 / 0.18)
        assert np.median(rel) < 0.75
        assert rel_rec.max() < 1.0


# ---------------------------------------------------------------------------
# rules and parameters


def test_first_rules(model, x):
    flat = attribute(model, x[:1], targets=["AF"], method="lrp_epsilon", first_rule="flat")
    r = flat.relevance[0, 0]
    # Flat ignores the input: every stem filter spans all 12 leads -> identical leads (why it is not the default)
    np.testing.assert_allclose(r, np.broadcast_to(r[:1], r.shape), rtol=1e-5, atol=1e-7)
    box = attribute(model, x[:1], targets=["AF"], method="lrp_epsilon", first_rule="zbox", zbox_low=-5.0, zbox_high=5.0)
    assert np.isfinite(box.relevance).all() and box.params["first_rule"] == "zbox"
    per_lead = attribute(
        model, x[:1], targets=["AF"], method="lrp", first_rule="zbox", zbox_low=np.full(12, -5.0), zbox_high=np.full(12, 5.0)
    )
    np.testing.assert_allclose(per_lead.relevance, box.relevance, rtol=1e-6, atol=1e-9)
    assert per_lead.params["zbox_low"] == [-5.0] * 12
    ab = attribute(model, x[:1], targets=["AF"], method="lrp_alpha_beta")
    assert ab.params["first_rule"] == "same" and ab.params["alpha"] == 2.0 and ab.params["beta"] == 1.0
    with pytest.raises(ValueError, match="zbox_low"):
        attribute(model, x[:1], method="lrp", first_rule="zbox")
    with pytest.raises(ValueError, match="alpha - beta"):
        attribute(model, x[:1], method="lrp_alpha_beta", alpha=1.5)
    with pytest.raises(ValueError, match="first_rule"):
        attribute(model, x[:1], method="lrp", first_rule="gamma")


def test_lrp_deterministic_and_model_untouched(model, x):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = attribute(model, x[:2], targets=["AF", "LBBB"], method="lrp_alpha_beta")
    b = attribute(model, x[:2], targets=["AF", "LBBB"], method="lrp_alpha_beta")
    np.testing.assert_array_equal(a.relevance, b.relevance)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.conv1.bias is None and all(type(u.add) is ResidualAdd for u in model.units)
    assert all(p.requires_grad for p in model.parameters())  # a fresh model's flags, restored
    assert a.params["residual_rule"] == "zennit.layer.Sum + Norm" and a.params["conv_rule"] == "alpha_beta"


def test_canonizers_work_with_stock_zennit_composites(model, x):
    """``resnet1d_canonizers()`` is reusable with Zennit's own composites and attributors."""
    import_zennit()
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1

    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    composite = EpsilonAlpha2Beta1(canonizers=lrp.resnet1d_canonizers())
    xt = torch.as_tensor(x[:1])
    with Gradient(model=m, composite=composite) as attributor:
        out, rel = attributor(xt, torch.eye(6)[[4]])
    assert rel.shape == xt.shape and torch.isfinite(rel).all()
    assert all(type(u.add) is ResidualAdd for u in m.units)


# ---------------------------------------------------------------------------
# the rules in matrix form (as Zennit's own tests check its rules)


def _eps_stab(z, eps):
    """Zennit's stabiliser: z + eps * sign(z), with sign(0) = +1."""
    return z + eps * ((z == 0).to(z.dtype) + z.sign())


def test_epsilon_rule_matrix_form():
    """ecgray's epsilon composite on a tiny Conv1d -> ReLU -> Linear net equals the epsilon rule
    written out with each layer as a matrix: R_in = a * W^T (R_out / stab(W a + b))."""
    import_zennit()
    from ecgray.attribution.lrp.composites import ResNet1dEpsilon

    torch.manual_seed(0)
    conv, lin = nn.Conv1d(2, 3, 3, padding=1), nn.Linear(3 * 5, 4)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin).double().eval()
    a0 = torch.randn(2, 2, 5, dtype=torch.float64)
    eps, target = 0.1, 2

    # conv as a matrix (15 x 10) and bias vector, from its action on the unit basis
    with torch.no_grad():
        basis = torch.eye(10, dtype=torch.float64).reshape(10, 2, 5)
        w_conv = (conv(basis) - conv.bias[None, :, None]).reshape(10, 15).T
        b_conv = conv.bias[:, None].expand(3, 5).reshape(15)
    want = []
    for a in a0.reshape(2, 10):
        z1 = w_conv @ a + b_conv
        a1 = z1.clamp(min=0)
        z2 = lin.weight @ a1 + lin.bias
        r2 = torch.zeros(4, dtype=torch.float64)
        r2[target] = z2[target]
        r1 = a1 * (lin.weight.T @ (r2 / _eps_stab(z2, eps)))  # dense layer
        r0 = a * (w_conv.T @ (r1 / _eps_stab(z1, eps)))  # conv (the first layer: first_rule="epsilon")
        want.append(r0.reshape(2, 5))
    want = torch.stack(want)

    x = a0.clone().requires_grad_(True)
    with ResNet1dEpsilon(net, epsilon=eps).context(net) as m:
        out = m(x)
        grad = torch.zeros_like(out)
        grad[:, target] = out[:, target].detach()
        (got,) = torch.autograd.grad(out, x, grad_outputs=grad)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
