"""The packaged demo model: loads, has provenance, classifies held-out synthetic AF/LBBB; training is deterministic."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgray.models import CLASSES, load_model, model_id
from ecgray.models.registry import DEMO_WEIGHTS


@pytest.fixture(scope="module")
def demo():
    if not DEMO_WEIGHTS.is_file():
        pytest.skip("demo weights not built (ecgray train-demo --seed 0)")
    return load_model("demo")


def test_demo_loads_with_provenance(demo):
    assert tuple(demo.classes) == CLASSES
    assert demo.config.n_samples == 4096 and demo.config.n_leads == 12
    assert demo.metadata["trained_on"] == "ecgray.synth"
    info = json.loads(DEMO_WEIGHTS.with_suffix(".json").read_text())
    assert info["model_id"] == model_id(demo)  # demo.json describes exactly these weights
    assert info["command"].startswith("ecgray train-demo --seed") and info["seed"] == 0
    assert info["held_out_seed"] != info["seed"]
    ho = info["held_out"]["per_class"]
    assert ho["AF"]["accuracy"] >= 0.95 and ho["LBBB"]["accuracy"] >= 0.95
    assert DEMO_WEIGHTS.stat().st_size < 5_000_000


def test_demo_classifies_fresh_held_out(demo):
    from ecgray.synth import training_arrays
    from ecgray.train import predict

    X, Y, kinds = training_arrays({"normal": 6, "AF": 6, "LBBB": 6}, seed=4242)
    P = predict(demo, X) >= 0.5
    kinds = np.array(kinds)
    ia, il = CLASSES.index("AF"), CLASSES.index("LBBB")
    assert P[kinds == "AF", ia].mean() >= 5 / 6
    assert P[kinds == "LBBB", il].mean() >= 5 / 6
    assert (~P[kinds == "normal", ia]).mean() >= 5 / 6 and (~P[kinds == "normal", il]).mean() >= 5 / 6


def test_short_training_is_deterministic():
    from ecgray.synth import training_arrays
    from ecgray.train import TrainConfig, train_model

    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    try:
        cfg = TrainConfig(seed=3, width=0.0625, epochs=1, batch_size=4)
        X, Y, _ = training_arrays({"normal": 2, "AF": 2, "LBBB": 2}, seed=3)
        m1, i1 = train_model(cfg, X=X, Y=Y)
        m2, i2 = train_model(cfg, X=X, Y=Y)
        m3, _ = train_model(TrainConfig(seed=4, width=0.0625, epochs=1, batch_size=4), X=X, Y=Y)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert i1 == i2
    assert model_id(m1) != model_id(m3)
