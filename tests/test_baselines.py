"""Named baselines (``ecgray.attribution.baselines``): ``zero``, ``blur:<ms>``, ``noise:<sd>`` for integrated
gradients and DeepLift, against baselines built here independently (a NumPy Gaussian kernel, NumPy's seeded
generator) and passed as arrays."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from ecgray.attribution import attribute
from tests.conftest import ecg_batch

FS = 400.0  # the test network is a ResNet1d without a spec: Ribeiro's 400 Hz


@pytest.fixture(scope="module")
def x():
    return ecg_batch(2)


def numpy_blur(x: np.ndarray, ms: float, fs: float) -> np.ndarray:
    """Gaussian blur along time, sigma = ms at fs, kernel to 4 sigma, edges extended (written out here)."""
    sigma = ms * fs / 1000.0
    r = int(4.0 * sigma + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (r, r)), mode="edge")
    out = np.empty(x.shape, np.float64)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.convolve(pad[i, j], k, mode="valid")
    return out.astype(np.float32)


def numpy_noise(x: np.ndarray, sd: float, seed: int) -> np.ndarray:
    return np.stack([np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(r).tobytes())])
                     .normal(0.0, sd, r.shape) for r in x.astype(np.float32)]).astype(np.float32)


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
def test_blur_is_the_blurred_record(model, x, method):
    """``blur:40`` gives the attribution of the array of blurred records, and provenance names it; IG is complete
    against it: sum of relevance = f(x) - f(blur(x)) up to the reported delta."""
    kw = {"n_steps": 32} if method == "integrated_gradients" else {}
    named = attribute(model, x, targets=["AF", "LBBB"], method=method, baselines="blur:40", **kw)
    b = numpy_blur(x, 40, FS)
    assert np.abs(b - x).max() > 0.05  # the blur changes the records (QRS complexes go)
    ref = attribute(model, x, targets=["AF", "LBBB"], method=method, baselines=b, **kw)
    np.testing.assert_allclose(named.relevance, ref.relevance, rtol=1e-4, atol=1e-6)
    assert named.params["baselines"] == "blur:40" and ref.params["baselines"].startswith("array(")
    if method == "integrated_gradients":
        with torch.no_grad():
            fx = model(torch.as_tensor(x)).numpy()
            fb = model(torch.as_tensor(b)).numpy()
        t = [list(model.classes).index(c) for c in ("AF", "LBBB")]
        total = named.relevance.sum(axis=(2, 3), dtype=np.float64)
        np.testing.assert_allclose(total - named.delta, (fx - fb)[:, t], rtol=1e-3, atol=1e-4)


def test_noise_is_seeded_per_record(model, x):
    """``noise:0.05``: the baseline of a record depends on the seed and the record, not on its place in the batch."""
    a = attribute(model, x, targets=["AF"], method="ig", n_steps=16, baselines="noise:0.05", seed=3)
    ref = attribute(model, x, targets=["AF"], method="ig", n_steps=16, baselines=numpy_noise(x, 0.05, 3), seed=3)
    np.testing.assert_allclose(a.relevance, ref.relevance, rtol=1e-4, atol=1e-6)
    swapped = attribute(model, x[::-1].copy(), targets=["AF"], method="ig", n_steps=16, baselines="noise:0.05",
                        seed=3)
    np.testing.assert_allclose(swapped.relevance[::-1], a.relevance, rtol=1e-5, atol=1e-7)
    other = attribute(model, x, targets=["AF"], method="ig", n_steps=16, baselines="noise:0.05", seed=4)
    assert not np.allclose(other.relevance, a.relevance)
    assert abs(float(numpy_noise(x, 0.05, 3).std()) - 0.05) < 0.002


def test_zero_equals_the_default(model, x):
    for method in ("integrated_gradients", "deeplift"):
        kw = {"n_steps": 8} if method == "integrated_gradients" else {}
        a = attribute(model, x, targets=["AF"], method=method, baselines="zero", **kw)
        b = attribute(model, x, targets=["AF"], method=method, **kw)
        np.testing.assert_array_equal(a.relevance, b.relevance)
        assert a.params["baselines"] == "zero"


@pytest.mark.parametrize("bad, message", [
    ("blur:0", "must be a positive number"), ("blur:abc", r"blur needs a number of ms \(blur:<ms>\)"),
    ("wavelet:3", r"one of zero, blur:<ms>, noise:<sd>"), ("zero:1", "takes no argument"),
    ("noise:-1", "must be a positive number"),
])
def test_bad_names_say_what_is_accepted(model, x, bad, message):
    with pytest.raises(ValueError, match=message):
        attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines=bad)


def test_a_set_method_refuses_a_per_record_baseline(model, x):
    for name in ("blur:40", "noise:0.1"):
        with pytest.raises(ValueError, match="gradient_shap draws from a set of baselines .* for integrated_gradients "
                                             "and deeplift"):
            attribute(model, x, targets=["AF"], method="gradient_shap", baselines=name)


def test_cli_routes_a_named_baseline_to_the_methods_that_take_it():
    from ecgray.cli import _method_params, _parse_params

    params = _parse_params(["baselines=blur:40"])
    assert params == {"baselines": "blur:40"}
    assert _method_params(["integrated_gradients", "saliency", "deeplift"], params) == {
        "integrated_gradients": {"baselines": "blur:40"}, "saliency": {}, "deeplift": {"baselines": "blur:40"}}


def test_file_baselines_equal_the_arrays_passed_by_hand(model, x, tmp_path):
    """``mean:<file>`` (IG, DeepLift: one baseline for every record) and ``reference:<file>`` (GradientShap:
    expected gradients over the file's records) equal passing the arrays, computed here, directly."""
    from ecgray.attribution.baselines import reference_set

    pool = ecg_batch(5, seed=11)
    ref = reference_set(pool, 3, seed=4)
    assert ref.shape == (3, *pool.shape[1:])
    again = reference_set(pool, 3, seed=4)
    np.testing.assert_array_equal(ref, again)
    assert any(np.array_equal(ref[0], p) for p in pool)  # records of the pool, not new ones
    path = tmp_path / "reference set.npy"
    np.save(path, ref)
    mean = ref.astype(np.float64).mean(axis=0).astype(np.float32)
    a = attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines=f"mean:{path}")
    b = attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines=np.broadcast_to(mean, x.shape).copy())
    np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-6, atol=1e-7)
    assert a.params["baselines"] == f"mean:{path}"
    g = attribute(model, x, targets=["AF"], method="gradient_shap", n_samples=4, seed=2, baselines=f"reference:{path}")
    h = attribute(model, x, targets=["AF"], method="gradient_shap", n_samples=4, seed=2, baselines=ref)
    np.testing.assert_array_equal(g.relevance, h.relevance)
    gm = attribute(model, x, targets=["AF"], method="gradient_shap", n_samples=4, seed=2, baselines=f"mean:{path}")
    hm = attribute(model, x, targets=["AF"], method="gradient_shap", n_samples=4, seed=2, baselines=mean[None])
    np.testing.assert_array_equal(gm.relevance, hm.relevance)
    z = attribute(model, x, targets=["AF"], method="gradient_shap", n_samples=4, seed=2, baselines="zero")
    d = attribute(model, x, targets=["AF"], method="gradient_shap", n_samples=4, seed=2)
    np.testing.assert_array_equal(z.relevance, d.relevance)


def test_file_baselines_say_what_is_wrong(model, x, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 10), np.float32))
    with pytest.raises(ValueError, match=r"holds an array of shape \(2, 3, 10\).*must be \(K, 12, 1024\)"):
        attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines=f"mean:{bad}")
    with pytest.raises(ValueError, match="cannot read"):
        attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines=f"mean:{tmp_path / 'missing.npy'}")
    with pytest.raises(ValueError, match="a reference set is drawn from by gradient_shap"):
        attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines=f"reference:{bad}")
    with pytest.raises(ValueError, match="needs a .npy file"):
        attribute(model, x, targets=["AF"], method="ig", n_steps=4, baselines="mean")
