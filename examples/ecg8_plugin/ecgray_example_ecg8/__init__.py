"""An example third-party ecgray model: a tiny 1-D CNN for 8 leads (I, II, V1..V6) at 500 Hz x 5,000
samples (10 s), three single-label classes (NORM, AF, LBBB) with a softmax output.

ecgray finds it through the ``ecgray.models`` entry point ``ecg8`` (see ``pyproject.toml``):
:func:`build` returns the untrained network with ``.spec`` (:data:`SPEC`); ecgray loads the weights
(``--weights ecg8.safetensors``, written by :mod:`ecgray_example_ecg8.train`) into it strictly.
"""
from __future__ import annotations

import torch
from torch import nn

from ecgray.models.spec import ModelSpec

__all__ = ["SPEC", "LEADS", "CLASSES", "ECG8Net", "build"]

LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
CLASSES = ("NORM", "AF", "LBBB")

#: what the network expects and returns: ecgray preprocesses every record to this (leads by name,
#: 500 Hz, 5,000 samples, mV) and reads the scores as logits of a softmax
SPEC = ModelSpec(fs=500, n_samples=5000, leads=LEADS, classes=CLASSES, activation="softmax")


class ECG8Net(nn.Module):
    """Three strided convolutions, each followed by batch normalisation and a ReLU (8 -> 16 -> 16 -> 16
    channels; 5,000 -> 1,000 -> 250 -> 63 samples), global average pooling and a linear layer:
    ``(N, 8, 5000)`` mV -> ``(N, 3)`` logits; 6,723 parameters.

    Plain Conv1d / BatchNorm1d / ReLU / AdaptiveAvgPool1d / Linear modules, none in place: every ecgray
    attribution method (Captum and Zennit) works on it.
    """

    def __init__(self, n_leads: int = len(LEADS), n_classes: int = len(CLASSES), width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(n_leads, width, kernel_size=15, stride=5, padding=7),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=9, stride=4, padding=4),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=9, stride=4, padding=4),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def build() -> ECG8Net:
    """The untrained network with its spec (ecgray's model factory; weights are loaded by ecgray)."""
    model = ECG8Net()
    model.spec = SPEC
    return model
