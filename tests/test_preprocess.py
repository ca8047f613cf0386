"""Preprocessing: lead order, resampling, length policies, quality checks (against independent references)."""
from __future__ import annotations

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgray.errors import LeadError, SignalError
from ecgray.io import Record, read_record
from ecgray.models.ribeiro2020 import FS, LEADS, N_SAMPLES
from ecgray.preprocess import (
    Prepared,
    canonical_lead,
    fit_length,
    preprocess,
    reorder_leads,
    resample,
    resample_factors,
)

LEAD_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def make_rec(n: int = 5000, fs: float = 500.0, leads=LEAD_NAMES, seed: int = 0, signal=None, rid="syn") -> Record:
    if signal is None:
        rng = np.random.default_rng(seed)
        t = np.arange(n) / fs
        signal = (np.sin(2 * np.pi * 1.1 * t)[:, None] * np.linspace(0.3, 1.2, len(leads))[None, :]
                  + rng.normal(0, 0.05, (n, len(leads))))
    return Record(record_id=rid, uri=f"mem://{rid}", format="wfdb", signal=np.asarray(signal, np.float32),
                  fs=fs, leads=tuple(leads))


def reference_windows(signal64: np.ndarray, names, fs: float, offsets) -> list[np.ndarray]:
    """Independent reference: permute leads by hand, resample_poly, slice/pad at the offsets."""
    order = [list(names).index(n) for n in LEAD_NAMES]
    up, down = {500.0: (4, 5), 1000.0: (2, 5), 400.0: (1, 1), 257.0: (400, 257)}[fs]
    y = signal64[:, order] if up == down else resample_poly(signal64[:, order], up, down, axis=0)
    out = []
    for off in offsets:
        w = np.zeros((N_SAMPLES, 12))
        lo, hi = max(off, 0), min(off + N_SAMPLES, len(y))
        w[lo - off:hi - off] = y[lo:hi]
        out.append(w.T)
    return out


# --------------------------------------------------------------------------- leads

@pytest.mark.parametrize("name, model", [
    ("I", "DI"), ("DI", "DI"), ("Lead I", "DI"), ("lead_ii", "DII"), ("II", "DII"), ("D3", "DIII"),
    ("III", "DIII"), ("aVR", "AVR"), ("AVR", "AVR"), ("avr", "AVR"), ("aVL", "AVL"), ("avf", "AVF"),
    ("V1", "V1"), ("v6", "V6"), (" V4 ", "V4"),
    ("MLII", None), ("V7", None), ("vx", None), ("", None), ("ECG", None),
])
def test_canonical_lead(name, model):
    assert canonical_lead(name) == model


def test_reorder_leads_permutation_and_extras():
    rng = np.random.default_rng(0)
    names = ["V6", "aVF", "MLII", "II", "V1", "I", "V2", "III", "aVR", "V3", "aVL", "V4", "V5", "vx"]
    sig = rng.normal(size=(100, len(names)))
    out, flags = reorder_leads(sig, names)
    assert flags == ("extra_leads_dropped",)
    for k, lead in enumerate(LEADS):
        j = [canonical_lead(n) for n in names].index(lead)
        np.testing.assert_array_equal(out[:, k], sig[:, j])
    same, flags = reorder_leads(sig[:, :12], LEADS)
    assert flags == () and np.array_equal(same, sig[:, :12])


def test_lead_errors():
    sig = np.zeros((10, 12))
    with pytest.raises(LeadError) as e:
        reorder_leads(sig, ["I", "DI"] + LEAD_NAMES[2:], record_id="r9")
    assert e.value.error_type == "duplicate_leads" and "r9" in str(e.value) and e.value.stage == "preprocess"
    with pytest.raises(LeadError) as e:
        reorder_leads(sig[:, :8], LEAD_NAMES[:8], record_id="r9")
    assert e.value.error_type == "missing_leads" and "V3" in str(e.value)
    with pytest.raises(LeadError) as e:
        reorder_leads(sig[:, :3], ["MLII", "V", "X"], record_id="r9")
    assert e.value.error_type == "missing_leads" and "MLII" in str(e.value)


# --------------------------------------------------------------------------- resampling & lengths

def test_resample_factors():
    assert resample_factors(500) == (4, 5)
    assert resample_factors(1000) == (2, 5)
    assert resample_factors(257) == (400, 257)
    assert resample_factors(400) == (1, 1)
    assert resample_factors(250) == (8, 5)


def test_resample_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 12)).astype(np.float32)
    y = resample(x, 1000.0)
    assert y.dtype == np.float32 and y.shape == (400, 12)
    np.testing.assert_allclose(y, resample_poly(x.astype(np.float64), 2, 5, axis=0), atol=1e-6)
    assert resample(x, 400.0) is not None and np.array_equal(resample(x, 400.0), x)


def test_cpsc_against_wfdb_and_scipy(cpsc_dir):
    """Real records: preprocess == resample_poly(wfdb p_signal[:, perm]) at the reported offsets."""
    n_checked = 0
    for i in range(1, 151, 7):
        rid = f"A{i:04d}"
        raw = wfdb.rdrecord(str(cpsc_dir / rid))
        rec = read_record(str(cpsc_dir / rid))
        for policy in ("first", "centre", "windows"):
            ws = preprocess(rec, policy=policy)
            n400 = int(np.ceil(raw.sig_len * 4 / 5))
            if n400 < N_SAMPLES:
                assert len(ws) == 1 and ws[0].offset == -((N_SAMPLES - n400) // 2) and "padded" in ws[0].flags
            elif policy == "first":
                assert [w.offset for w in ws] == [0]
            elif policy == "centre":
                assert [w.offset for w in ws] == [(n400 - N_SAMPLES) // 2]
            refs = reference_windows(raw.p_signal, raw.sig_name, 500.0, [w.offset for w in ws])
            for w, ref in zip(ws, refs):
                assert w.x.shape == (12, N_SAMPLES) and w.x.dtype == np.float32 and w.x.flags.c_contiguous
                assert w.record_id == rid and w.fs_in == 500.0 and w.n_samples_in == raw.sig_len
                assert "resampled" in w.flags
                np.testing.assert_allclose(w.x, ref, atol=2e-5, rtol=0)
                n_checked += 1
    assert n_checked >= 60


def test_shuffled_leads_and_other_rates():
    for fs, n in ((1000.0, 9000), (257.0, 2570), (500.0, 4000)):
        rec = make_rec(n, fs, seed=int(fs))
        perm = [5, 0, 11, 3, 2, 1, 10, 9, 8, 7, 6, 4]
        shuffled = make_rec(signal=rec.signal[:, perm], fs=fs, leads=[LEAD_NAMES[p] for p in perm])
        a, b = preprocess(rec)[0], preprocess(shuffled)[0]
        np.testing.assert_array_equal(a.x, b.x)
        ref = reference_windows(rec.signal.astype(np.float64), LEAD_NAMES, fs, [a.offset])[0]
        np.testing.assert_allclose(a.x, ref, atol=2e-5)


def test_code15_pass_through(code15_dir):
    files = sorted(code15_dir.glob("pacient_*.hdf5"))
    assert len(files) == 80
    for p in files:
        rec = read_record(str(p))
        (w,) = preprocess(rec)
        assert w.offset == 0 and w.flags == () and w.fs_in == 400.0 and w.n_samples_in == 4096
        np.testing.assert_array_equal(w.x, rec.signal.T)


def test_fit_length_policies():
    y = np.arange(10000, dtype=np.float32)[:, None].repeat(2, axis=1)
    (off, w), = fit_length(y)[0]
    assert off == 0 and w[0, 0] == 0 and w[-1, 0] == 4095
    wins, flags = fit_length(y, policy="centre")
    assert flags == ("cropped",) and wins[0][0] == (10000 - 4096) // 2
    wins, flags = fit_length(y, policy="windows")
    assert [o for o, _ in wins] == [0, 4096, 10000 - 4096] and flags == ("windowed",)
    wins, _ = fit_length(y, policy="windows", stride=2000)
    assert [o for o, _ in wins] == [0, 2000, 4000, 5904]
    wins, flags = fit_length(y, policy="windows", stride=2000, max_windows=2)
    assert [o for o, _ in wins] == [0, 2000] and flags == ("windowed", "windows_capped")
    wins, _ = fit_length(y[:8192], policy="windows")
    assert [o for o, _ in wins] == [0, 4096]
    for off, w in fit_length(y, policy="windows", stride=1500)[0]:
        assert w.shape == (4096, 2) and np.array_equal(w[:, 0], y[off:off + 4096, 0])
    wins, flags = fit_length(y[:1001], policy="windows")
    assert flags == ("padded",) and wins[0][0] == -((4096 - 1001) // 2)
    w = wins[0][1]
    assert np.array_equal(w[1547:1547 + 1001, 0], y[:1001, 0]) and not w[:1547].any() and not w[1547 + 1001:].any()
    with pytest.raises(ValueError):
        fit_length(y, policy="random")


def test_windows_offsets_map_back():
    rec = make_rec(n=20000, fs=500.0)
    resampled = resample(reorder_leads(rec.signal, rec.leads)[0], rec.fs)
    ws = preprocess(rec, policy="windows", stride_s=5.0)
    assert [w.window for w in ws] == list(range(len(ws)))
    assert [w.offset for w in ws] == [0, 2000, 4000, 6000, 8000, 10000, 16000 - 4096]
    for w in ws:
        assert "windowed" in w.flags
        np.testing.assert_array_equal(w.x, resampled[w.offset:w.offset + 4096].T)
    assert len(preprocess(rec, policy="windows", stride_s=5.0, max_windows=3)) == 3
    with pytest.raises(ValueError):
        preprocess(rec, policy="windows", stride_s=0)
    with pytest.raises(ValueError):
        preprocess(rec, policy="nope")


# --------------------------------------------------------------------------- quality checks

def check_error(rec, error_type, cls=SignalError):
    with pytest.raises(cls) as e:
        preprocess(rec)
    assert e.value.error_type == error_type and rec.record_id in str(e.value)
    assert e.value.as_row()["stage"] == "preprocess"


def test_quality_checks():
    good = make_rec()
    sig = good.signal.copy()
    sig[100, 3] = np.nan
    check_error(make_rec(signal=sig, rid="nan1"), "nan_or_inf")
    sig = good.signal.copy()
    sig[5, 0] = np.inf
    check_error(make_rec(signal=sig, rid="inf1"), "nan_or_inf")
    check_error(make_rec(signal=np.full((5000, 12), 0.3), rid="flat1"), "flat_signal")
    sig = good.signal.copy()
    sig[:, 8] = 0.001
    (w,) = preprocess(make_rec(signal=sig))
    assert "flat_lead:V3" in w.flags
    check_error(make_rec(signal=good.signal * 1000, rid="uv1"), "implausible_amplitude")
    spikes = good.signal.copy()
    spikes[::200, 0] = 30.0          # 0.04 % of samples: tolerated
    preprocess(make_rec(signal=spikes))
    check_error(make_rec(n=998, fs=500.0, rid="short1"), "too_short")   # 799 samples at 400 Hz
    preprocess(make_rec(n=999, fs=500.0))       # 800 samples at 400 Hz: exactly 2 s is enough
    for fs in (0.0, -500.0, float("nan"), float("inf")):
        check_error(make_rec(signal=good.signal, fs=fs, rid="fs1"), "bad_fs")


def test_prepared_fields():
    (w,) = preprocess(make_rec(n=3000, rid="p1"))
    assert isinstance(w, Prepared) and w.record_id == "p1" and w.window == 0
    assert w.offset == -((4096 - 2400) // 2) and set(w.flags) == {"resampled", "padded"}
    assert w.fs_in == 500.0 and w.n_samples_in == 3000 and FS == 400


# --------------------------------------------------------------------------- end to end from WFDB files

def write(folder, name, leads, d_signal=None, p_signal=None, fs=500):
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), d_signal=d_signal, p_signal=p_signal,
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                comments=["Dx: 426783006"], write_dir=str(folder))
    return str(folder / name)


def test_wfdb_bad_records_end_to_end(tmp_path):
    rng = np.random.default_rng(5)
    d = rng.integers(-800, 800, size=(2000, 12)).astype(np.int16)
    d[50, 2] = -32768                                       # WFDB "invalid sample" -> NaN
    rec = read_record(write(tmp_path, "nanrec", LEAD_NAMES, d_signal=d))
    assert np.isnan(rec.signal[50, 2]) and np.isfinite(np.delete(rec.signal, 50, axis=0)).all()
    check_error(rec, "nan_or_inf")
    flat = read_record(write(tmp_path, "flatrec", LEAD_NAMES, d_signal=np.zeros((2000, 12), np.int16)))
    check_error(flat, "flat_signal")
    eight = read_record(write(tmp_path, "eight", ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"],
                              d_signal=d[:, :8].clip(-800)))
    check_error(eight, "missing_leads", LeadError)
    dup = read_record(write(tmp_path, "dup", ["I", "DI"] + LEAD_NAMES[2:], d_signal=d.clip(-800)))
    check_error(dup, "duplicate_leads", LeadError)
    same = write(tmp_path, "same", LEAD_NAMES, d_signal=d.clip(-800))      # wfdb will not write equal names:
    hea = tmp_path / "same.hea"                                            # edit the header (II -> I)
    lines = hea.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " I"
    hea.write_text("\n".join(lines) + "\n")
    dup2 = read_record(same)
    assert dup2.leads[:2] == ("I", "I")
    check_error(dup2, "duplicate_leads", LeadError)
    extra = read_record(write(tmp_path, "extra", LEAD_NAMES + ["vx", "vy", "vz"],
                              d_signal=np.concatenate([d.clip(-800), d[:, :3].clip(-800)], axis=1)))
    (w,) = preprocess(extra)
    assert "extra_leads_dropped" in w.flags
