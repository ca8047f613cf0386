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
