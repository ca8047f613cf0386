"""Shared fixtures: paths to the real data in ../shared/data, small models, torch threads."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
CPSC = DATA / "cpsc2018-a0001-a0150"
CODE15 = DATA / "code15-test80"

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def pytest_configure(config):
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def ray_local():
    """Ray in local mode for one test module (2 CPUs, no dashboard, no progress bars)."""
    import ray
    import ray.data

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cpsc_dir() -> Path:
    if not (CPSC / "A0001.hea").exists():
        pytest.skip(f"real CPSC data not found at {CPSC}")
    return CPSC


@pytest.fixture(scope="session")
def code15_dir() -> Path:
    if not (CODE15 / "pacient_1.hdf5").exists():
        pytest.skip(f"real CODE-15 data not found at {CODE15}")
    return CODE15


def small_model(seed: int = 0, width: float = 0.25):
    """A narrow Ribeiro ResNet with seeded weights and non-trivial BatchNorm statistics (full 4096 input)."""
    import torch

    from ecgray.models.ribeiro2020 import ResNet1d, ResNetConfig

    torch.manual_seed(seed)
    model = ResNet1d(ResNetConfig.scaled(width))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.8, 1.2, generator=g)
                m.bias.normal_(0, 0.05, generator=g)
    model.eval().requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tiny_model():
    return small_model()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- the reduced ResNet of the attribution tests
#: window of the reduced ResNet the attribution tests use (1,024 samples: 4x faster than the published 4,096)
ATTR_N_SAMPLES = 1024
ATTR_CFG = dict(n_samples=ATTR_N_SAMPLES, samples=(256, 64, 16, 4))


def make_model(seed: int = 0, width: float = 0.25, random_bn: bool = True, bias_free: bool = False, **cfg):
    """Reduced ResNet1d (``ATTR_CFG``), He-initialised; non-trivial BN running statistics set by hand, or
    (``bias_free``) identity-like BNs and a zero dense bias (a per-channel scale only)."""
    import torch
    from torch import nn

    from ecgray.models.ribeiro2020 import ResNet1d, ResNetConfig

    torch.manual_seed(seed)
    model = ResNet1d(ResNetConfig.scaled(width, **(cfg or ATTR_CFG)))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv1d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu", generator=g)
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, 0.0, mod.in_features**-0.5, generator=g)
                if bias_free:
                    mod.bias.zero_()
            elif isinstance(mod, nn.BatchNorm1d) and random_bn and not bias_free:
                c = mod.num_features
                mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                mod.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    """:func:`make_model` with its defaults, one per test module (the attribution tests' network)."""
    return make_model()


def synthetic_ecg(n: int, length: int = ATTR_N_SAMPLES, seed: int = 0) -> np.ndarray:
    """ECG-like (N, 12, length): per-lead sums of harmonics of a heart rate + noise, mV scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 400.0
    out = np.empty((n, 12, length))
    for i in range(n):
        hr = rng.uniform(0.8, 1.8)
        for lead in range(12):
            a = rng.normal(0, 1, 3)
            out[i, lead] = (
                a[0] * np.sin(2 * np.pi * hr * t)
                + 0.3 * a[1] * np.sin(2 * np.pi * 3 * hr * t + 1)
                + 0.1 * a[2] * np.sin(2 * np.pi * 7 * hr * t)
                + 0.05 * rng.normal(size=length)
            )
    return out.astype(np.float32)


def ecg_batch(n: int, length: int = ATTR_N_SAMPLES, seed: int = 0) -> np.ndarray:
    """Real CODE-15 exams (centre ``length`` samples) if available, else :func:`synthetic_ecg`."""
    files = [CODE15 / f"pacient_{i}.hdf5" for i in range(1, n + 1)]
    if all(f.exists() for f in files):
        import h5py

        recs = []
        for f in files:
            with h5py.File(f, "r") as h:
                recs.append(np.asarray(h["tracings"][0], dtype=np.float64).T)  # (12, 4096)
        x = np.stack(recs)
        mid = x.shape[-1] // 2
        return x[:, :, mid - length // 2 : mid + length // 2].astype(np.float32)
    return synthetic_ecg(n, length, seed)
