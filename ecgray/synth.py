"""Synthetic 12-lead ECGs with known labels, written as WFDB records.

Deterministic for a given ``seed``. Built on NeuroKit2's ``ecg_simulate``
(``method="multileads"``). This first version plants rate-defined labels
(sinus rhythm, sinus bradycardia < 60 bpm, sinus tachycardia > 100 bpm) with
SNOMED CT codes in ``#Dx:``, so the real readers and label mapping are
exercised; morphology features (AF, LBBB, 1dAVb) come with the demo model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SNOMED = {"normal": "426783006", "SB": "426177001", "ST": "427084000"}
LEAD_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def ecg_simulate12(duration: float = 10.0, fs: int = 500, heart_rate: float = 70.0, *, noise: float = 0.01,
                   random_state: int = 0) -> np.ndarray:
    """A 12-lead ECG in mV, shape ``(duration*fs, 12)``, float32."""
    import neurokit2 as nk

    df = nk.ecg_simulate(duration=duration, sampling_rate=fs, heart_rate=heart_rate, method="multileads",
                         noise=noise, random_state=random_state)
    return df[LEAD_NAMES].to_numpy(np.float32)


def write_wfdb(out_dir: str | Path, record_name: str, signal: np.ndarray, fs: float, *, dx: list[str],
               leads: list[str] = LEAD_NAMES) -> Path:
    """Write a 16-bit WFDB record (``.hea`` + ``.dat``, 1000 adu/mV) with ``#Dx:`` codes."""
    import wfdb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(record_name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal.astype(np.float64),
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                comments=[f"Dx: {','.join(dx)}"], write_dir=str(out_dir))
    return out_dir / record_name


def make_dataset(out_dir: str | Path, n: int = 6, *, seed: int = 0, fs: int = 500, duration: float = 10.0) -> list[Path]:
    """Write ``n`` records cycling through normal / SB / ST with seeded heart rates."""
    rng = np.random.default_rng(seed)
    kinds = [("normal", (65, 90)), ("SB", (40, 52)), ("ST", (110, 140))]
    paths = []
    for i in range(n):
        kind, (lo, hi) = kinds[i % len(kinds)]
        hr = float(rng.uniform(lo, hi))
        sig = ecg_simulate12(duration, fs, hr, random_state=int(rng.integers(2**31)))
        paths.append(write_wfdb(out_dir, f"S{i + 1:04d}", sig, fs, dx=[SNOMED[kind]]))
    return paths
