"""ecgray.attribution: Captum methods, batching, state handling, determinism.

Reduced model (width 0.25, 1024 samples) with seeded He init and hand-set,
non-trivial BN statistics; ECG inputs are real CODE-15 exams (centre 1024
samples) when ``../shared/data/code15-test80`` exists, otherwise sums of
sinusoids + noise.

Figures seen when this was written (reduced model, real or synthetic input,
IG n_steps=50, Gauss-Legendre): |delta| / |f(x) - f(0)| median 1-2 %, and
|delta| <= 3.2 % of the record's largest |f(x) - f(0)|; DeepLift |delta| ~ 1e-6.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ecgray.attribution import METHODS, Attribution, attribute, available_methods, resolve_method
from ecgray.models.ribeiro2020 import ResidualAdd
from tests.conftest import ATTR_N_SAMPLES, ecg_batch, make_model

N_SAMPLES = ATTR_N_SAMPLES


def close(a, b, rtol=1e-5):
    """Equal to ``rtol`` relative to the largest magnitude (elementwise rtol is meaningless near 0)."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-12))


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def x():
    return ecg_batch(3)


def forward(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


# ---------------------------------------------------------------------------


def test_registry_and_aliases():
    names = available_methods()
    assert set(names) == {
        "integrated_gradients",
        "saliency",
        "input_x_gradient",
        "deeplift",
        "gradient_shap",
        "lrp_epsilon",
        "lrp_alpha_beta",
        "occlusion",
        "smoothgrad",
        "guided_backprop",
        "grad_cam",
        "guided_grad_cam",
        "kernel_shap",
    }
    assert set(METHODS) == set(names)
    for alias, name in [
        ("ig", "integrated_gradients"),
        ("IntegratedGradients", "integrated_gradients"),
        ("integrated-gradients", "integrated_gradients"),
        ("IXG", "input_x_gradient"),
        ("InputXGradient", "input_x_gradient"),
        ("DeepLift", "deeplift"),
        ("GradientShap", "gradient_shap"),
        ("lrp", "lrp_epsilon"),
        ("LRP_Alpha_Beta", "lrp_alpha_beta"),
    ]:
        assert resolve_method(alias).name == name
    with pytest.raises(ValueError, match="unknown attribution method"):
        resolve_method("no_such_method")


def test_input_validation(model, x):
    with pytest.raises(TypeError, match="unexpected parameter"):
        attribute(model, x[:1], method="saliency", n_steps=3)
    with pytest.raises(ValueError, match="unknown target"):
        attribute(model, x[:1], targets=["VT"], method="saliency")
    with pytest.raises(ValueError, match="duplicate"):
        attribute(model, x[:1], targets=["AF", 4], method="saliency")
    with pytest.raises(ValueError, match="out of range"):
        attribute(model, x[:1], targets=[6], method="saliency")
    with pytest.raises(ValueError, match=r"\(N, leads, samples\)"):
        attribute(model, x[0], method="saliency")
    bad = x[:1].copy()
    bad[0, 3, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        attribute(model, bad, method="saliency")
    with pytest.raises(ValueError, match="output"):
        attribute(model, x[:1], method="saliency", output="softmax")
    with pytest.raises(ValueError, match="n_steps"):
        attribute(model, x[:1], method="ig", n_steps=0)


def test_result_fields(model, x):
    res = attribute(model, x[:2], targets=["AF", 0], method="ixg")
    assert isinstance(res, Attribution)
    assert res.relevance.shape == (2, 2, 12, N_SAMPLES) and res.relevance.dtype == np.float32
    assert res.targets == ("AF", "1dAVb")
    assert res.method == "input_x_gradient"
    assert res.delta is None
    f = forward(model, x[:2])
    close(res.logits, f)
    close(res.probabilities, 1 / (1 + np.exp(-f)))
    assert res.logits.dtype == res.probabilities.dtype == np.float32
    assert res.params["output"] == "logit" and res.params["batch_size"] == 32
    np.testing.assert_array_equal(res.for_target("AF"), res.relevance[:, 0])
    assert res.target_index("1dAVb") == 1
    with pytest.raises(ValueError, match=r"target 'RBBB' was not attributed"):
        res.target_index("RBBB")
    with pytest.raises(TypeError):
        res.target_index(0)  # a position would clash with attribute(targets=[0]) (the model's class 0)
    all_t = attribute(model, x[:1], method="saliency")
    assert all_t.targets == model.classes and all_t.relevance.shape[1] == 6


def test_ig_completeness(model, x):
    """sum(R) - (f(x) - f(0)) is the reported delta, and it is small (n_steps=50)."""
    res = attribute(model, x[:2], method="ig", n_steps=50)
    gain = forward(model, x[:2]) - forward(model, np.zeros_like(x[:2]))
    err = res.relevance.sum(axis=(2, 3)) - gain
    # the reported delta *is* the completeness error (float32 sums over 12k samples)
    np.testing.assert_allclose(err, res.delta, atol=1e-4 * np.abs(gain).max())
    # and it is small: per record <= 5 % of the largest |f(x) - f(0)|, median <= 5 % per target
    rel_record = np.abs(res.delta) / np.abs(gain).max(axis=1, keepdims=True)
    assert rel_record.max() < 0.05, rel_record
    assert np.median(np.abs(res.delta) / np.abs(gain)) < 0.05
    assert res.params == {
        "baselines": "zeros",
        "n_steps": 50,
        "integration_method": "gausslegendre",
        "internal_batch_size": res.params["internal_batch_size"],
        "rtol": None,
        "atol": 0.0,
        "min_steps": 8,
        "output": "logit",
        "batch_size": 16,
        "multi_target": "shared",
        "precision": "fp32",
    }
    assert res.params["internal_batch_size"].startswith("auto (")


def test_ig_baseline_and_probability_output(model, x):
    """output='probability': relevance and delta refer to sigmoid outputs; a given baseline is used."""
    base = 0.1 * np.ones((12, N_SAMPLES), dtype=np.float32)
    res = attribute(model, x[:1], targets=["AF", "SB"], method="ig", n_steps=32, baselines=base, output="probability")
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    gain = sig(forward(model, x[:1])) - sig(forward(model, base[None]))
    gain = gain[:, [4, 3]]
    np.testing.assert_allclose(res.relevance.sum(axis=(2, 3)) - gain, res.delta, atol=1e-5)
    assert np.all(np.abs(res.delta) <= 0.05 * np.abs(gain).max() + 1e-6)
    assert res.params["output"] == "probability" and res.params["baselines"].startswith("array(shape=[12, 1024]")
    # logits/probabilities are still those of the plain model
    close(res.logits, forward(model, x[:1]))


def test_saliency_and_ixg_match_autograd(model, x):
    xt = torch.as_tensor(x[:2]).clone().requires_grad_(True)
    targets = [4, 1]
    grads = []
    for t in targets:
        (g,) = torch.autograd.grad(model(xt)[:, t].sum(), xt)
        grads.append(g.numpy())
    grads = np.stack(grads, axis=1)  # (N, T, 12, L)
    sal = attribute(model, x[:2], targets=targets, method="saliency")
    close(sal.relevance, np.abs(grads))
    signed = attribute(model, x[:2], targets=targets, method="saliency", abs=False)
    close(signed.relevance, grads)
    ixg = attribute(model, x[:2], targets=targets, method="ixg")
    close(ixg.relevance, x[:2, None] * grads)
    # the parameters are untouched: no grads accumulated on the model
    assert all(p.grad is None for p in model.parameters())


BATCH_CASES = [
    ("ig", dict(n_steps=8, internal_batch_size=7)),
    ("saliency", {}),
    ("ixg", {}),
    ("deeplift", {}),
    ("gradient_shap", dict(n_samples=4, internal_batch_size=5, compute_delta=True)),
    ("lrp_epsilon", {}),
    ("lrp_alpha_beta", {}),
]
BATCH_TARGETS = ["AF", 0, "SB"]


def one_by_one(model, x, method, params):
    rel = np.empty((len(x), len(BATCH_TARGETS), *x.shape[1:]), dtype=np.float32)
    delta = np.empty((len(x), len(BATCH_TARGETS)), dtype=np.float32)
    for i in range(len(x)):
        for j, t in enumerate(BATCH_TARGETS):
            one = attribute(model, x[i : i + 1], targets=[t], method=method, batch_size=1, **params)
            rel[i, j] = one.relevance[0, 0]
            delta[i, j] = np.nan if one.delta is None else one.delta[0, 0]
    return rel, delta


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("method,params", BATCH_CASES)
def test_batched_equals_one_by_one(model, x, method, params):
    """3 records x 3 targets in chunks of 5 rows (records split across chunks) == each (record, target) alone.

    Run with oneDNN off: the native CPU convolutions are batch-invariant, so this checks the
    row stacking / chunking / scatter-back exactly (the bound is 1e-5 of the max; IG differs
    only by the order in which Captum sums its internal batches). With oneDNN on, see
    :func:`test_batched_default_backend`.
    """
    with torch.backends.mkldnn.flags(enabled=False):
        res = attribute(model, x, targets=BATCH_TARGETS, method=method, batch_size=5, **params)
        rel, delta = one_by_one(model, x, method, params)
    assert res.relevance.shape == (3, 3, 12, N_SAMPLES)
    close(res.relevance, rel, rtol=1e-5)
    if res.delta is not None:
        # deltas are differences of sums: compare on the scale of the outputs
        scale = max(1.0, float(np.abs(res.logits).max()))
        np.testing.assert_allclose(res.delta, delta, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("method", ["ixg", "lrp_epsilon"])
def test_batched_default_backend(model, x, method):
    """With oneDNN (default on CPU) kernels differ with the batch size at the 1e-7 level.

    Gradients keep that level; LRP-0 divides by every pre-activation (stabiliser 1e-6) and
    amplifies the rounding at near-zero denominators: relative L2 difference seen up to
    ~5e-5 for lrp_epsilon in float32 (bit-identical with oneDNN off, which costs ~40 %).
    """
    res = attribute(model, x, targets=BATCH_TARGETS, method=method, batch_size=5)
    rel, _ = one_by_one(model, x, method, {})
    bound = 1e-5 if method == "ixg" else 2e-4
    assert rel_l2(res.relevance, rel) <= bound


def test_deeplift_summation_to_delta_and_determinism(model, x):
    res = attribute(model, x[:2], targets=["AF", "RBBB", "LBBB"], method="deeplift")
    gain = (forward(model, x[:2]) - forward(model, np.zeros_like(x[:2])))[:, [4, 1, 2]]
    np.testing.assert_allclose(res.relevance.sum(axis=(2, 3)) - gain, res.delta, atol=1e-4 * np.abs(gain).max())
    # rescale rule incl. max-pool rule: summation-to-delta holds to float precision
    assert np.abs(res.delta).max() <= 1e-4 * np.abs(gain).max() + 1e-5, res.delta
    again = attribute(model, x[:2], targets=["AF", "RBBB", "LBBB"], method="deeplift")
    np.testing.assert_array_equal(res.relevance, again.relevance)
    # through the sigmoid (an nn.Sigmoid module, rescale rule) as well
    prob = attribute(model, x[:1], targets=["AF"], method="deeplift", output="probability")
    assert abs(float(prob.delta[0, 0])) < 1e-5


def test_gradient_shap_seeded_and_rng_untouched(model, x):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = attribute(model, x[:2], targets=["AF"], method="gradient_shap", n_samples=6, seed=7)
    np.testing.assert_array_equal(torch.get_rng_state().numpy(), state.numpy())  # global RNG untouched
    b = attribute(model, x[:2], targets=["AF"], method="gradient_shap", n_samples=6, seed=7)
    np.testing.assert_array_equal(a.relevance, b.relevance)
    c = attribute(model, x[:2], targets=["AF"], method="gradient_shap", n_samples=6, seed=8)
    assert not np.allclose(a.relevance, c.relevance)
    # draws are keyed by record content: same record, other position / batch / targets -> same result
    d = attribute(model, x[[1, 0]], targets=["SB", "AF"], method="gradient_shap", n_samples=6, seed=7)
    close(d.relevance[1, 1], a.relevance[0, 0])
    close(d.relevance[0, 1], a.relevance[1, 0])
    assert a.params["seed"] == 7 and a.params["baselines"] == "zeros" and a.params["baseline_stdev"] == 0.01


def test_gradient_shap_approximates_ig(model, x):
    """With one (zero) baseline and no noise, GradientShap is a Monte-Carlo IG: compare."""
    gs = attribute(
        model, x[:1], targets=["AF"], method="gradient_shap", n_samples=64, baselines=np.zeros((1, 12, N_SAMPLES))
    )
    assert gs.params["baseline_stdev"] == 0.0 and gs.delta is None
    ig = attribute(model, x[:1], targets=["AF"], method="ig", n_steps=50)
    corr = np.corrcoef(gs.relevance.ravel(), ig.relevance.ravel())[0, 1]
    assert corr > 0.97, corr


def test_model_state_restored_and_dropout_off(x):
    model = make_model(seed=3)
    model.train()
    model.units[1].eval()  # a mixed pattern of training flags ...
    model.dense.weight.requires_grad_(False)  # ... and of requires_grad flags
    training = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("ig", "deeplift", "lrp_epsilon"):
        res = attribute(model, x[:1], targets=["AF"], method=method, n_steps=4) if method == "ig" else attribute(
            model, x[:1], targets=["AF"], method=method
        )
        assert {n: m.training for n, m in model.named_modules()} == training
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k  # BN running stats not updated, weights not folded
        assert all(type(u.add) is ResidualAdd for u in model.units)  # LRP's swap undone
    # eval mode inside: a train-mode model gives the eval-mode result (dropout off, BN running stats)
    ref = attribute(make_model(seed=3), x[:1], targets=["AF"], method="saliency")
    got = attribute(model, x[:1], targets=["AF"], method="saliency")
    np.testing.assert_array_equal(got.relevance, ref.relevance)
    # restored even when the method fails mid-way
    with pytest.raises(ValueError, match="baseline"):
        attribute(model, x[:1], method="ig", baselines=np.zeros((12, 7)))
    assert {n: m.training for n, m in model.named_modules()} == training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_works_under_inference_mode(model, x):
    with torch.inference_mode():
        xt = torch.as_tensor(x[:1]).clone()
        res = attribute(model, xt, targets=["AF"], method="ixg")
    assert np.isfinite(res.relevance).all() and np.abs(res.relevance).sum() > 0


def test_import_is_lazy():
    """Importing ecgray.attribution imports neither captum nor zennit."""
    code = (
        "import sys, ecgray.attribution as a; "
        "assert 'zennit' not in sys.modules, 'zennit'; assert 'captum' not in sys.modules, 'captum'; "
        "print(len(a.available_methods()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "13"
