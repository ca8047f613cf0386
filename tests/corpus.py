"""A bad-input corpus generated at test time (synthetic signals; nothing here is a copy of real data).

:func:`build_corpus` writes every case into a folder and returns the list of :class:`Case` s
with what ecgray must do with each: ``ok`` (processed, with the expected ``flags``), ``error``
(one row in ``errors`` with ``stage`` and ``error_type``) or ``ignored`` (not a record at all:
never in any table). The same writers make the bad records of the soak test.

Signals are written as 16-bit WFDB (1000 adu/mV, baseline 0) from digital arrays, so rails
(+-32767 adu = +-32.767 mV), invalid samples (-32768 -> NaN) and gains are exact.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import wfdb

LEADS12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
GAIN = 1000.0
RAIL = 32767  # fmt 16 maximum (adu); -32768 is WFDB's "invalid sample"


@dataclass
class Case:
    name: str  # what the case is about
    record_id: str  # the id ecgray must report
    expect: str  # "ok" | "error" | "ignored"
    stage: str | None = None
    error_type: str | None = None
    flags: tuple[str, ...] = ()  # flags that must be set (ok cases)
    n_samples_in: int | None = None
    files: list[str] = field(default_factory=list)  # paths relative to the corpus root


def ecg_mv(n: int, fs: float, *, kind: str = "normal", seed: int = 0, n_leads: int = 12) -> np.ndarray:
    """A synthetic ECG in mV, ``(n, n_leads)`` (ecgray.synth; leads beyond 12 repeat the first ones)."""
    from ecgray.synth import simulate

    sig, _ = simulate(kind, fs=fs, duration=n / fs, seed=seed)
    sig = sig[:n]
    if n_leads > 12:
        sig = np.concatenate([sig, sig[:, : n_leads - 12] * 0.5], axis=1)
    return sig[:, :n_leads].astype(np.float64)


def digital(sig_mv: np.ndarray) -> np.ndarray:
    return np.clip(np.round(sig_mv * GAIN), -RAIL, RAIL).astype(np.int16)


def write_digital(folder: Path, name: str, d: np.ndarray, *, fs: float, leads: list[str] = LEADS12,
                  dx: str = "426783006") -> Path:
    """Write int16 samples ``d (n, leads)`` as a fmt-16 WFDB record; returns the record path."""
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), d_signal=np.asarray(d, np.int16),
                fmt=["16"] * len(leads), adc_gain=[GAIN] * len(leads), baseline=[0] * len(leads),
                comments=[f"Dx: {dx}"], write_dir=str(folder))
    return folder / name


def write_ecg(folder: Path, name: str, *, fs: float = 500, seconds: float = 10.0, kind: str = "normal",
              seed: int = 0, leads: list[str] = LEADS12) -> Path:
    n = int(round(seconds * fs))
    return write_digital(folder, name, digital(ecg_mv(n, fs, kind=kind, seed=seed, n_leads=len(leads))), fs=fs,
                         leads=leads)


def write_mat(folder: Path, name: str, d: np.ndarray, *, fs: float = 500) -> Path:
    """A PhysioNet/CinC-Challenge style record: ``.hea`` + MATLAB v4 ``.mat`` (``val``, 24-byte prefix)."""
    import scipy.io

    base = write_digital(folder, name, d, fs=fs)
    scipy.io.savemat(str(folder / f"{name}.mat"), {"val": np.asarray(d, np.int16).T}, format="4")
    (folder / f"{name}.dat").unlink()
    hea = folder / f"{name}.hea"
    hea.write_text(hea.read_text().replace(f"{name}.dat 16 ", f"{name}.mat 16+24 "))
    return base


def write_code15(path: Path, x: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("tracings", data=np.asarray(x, np.float32)[None])
    return path


def edit_header(base: Path, fn) -> None:
    hea = base.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join(fn(lines)) + "\n")


# --------------------------------------------------------------------------- bad-record writers (also used by the soak test)
def bad_truncated_dat(folder: Path, name: str, seed: int = 0) -> Path:
    base = write_ecg(folder, name, seed=seed)
    dat = base.with_suffix(".dat")
    data = dat.read_bytes()
    dat.write_bytes(data[: len(data) // 3])
    return base


def bad_missing_signal(folder: Path, name: str, seed: int = 0) -> Path:
    base = write_ecg(folder, name, seed=seed)
    base.with_suffix(".dat").unlink()
    return base


def bad_garbled_header(folder: Path, name: str, seed: int = 0) -> Path:
    base = write_ecg(folder, name, seed=seed)
    base.with_suffix(".hea").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return base


def bad_short(folder: Path, name: str, seed: int = 0) -> Path:
    return write_ecg(folder, name, seconds=1.0, seed=seed)


def bad_nan(folder: Path, name: str, seed: int = 0) -> Path:
    d = digital(ecg_mv(5000, 500, seed=seed))
    d[1000:1500, 4] = -32768  # WFDB invalid samples (signal dropout) -> NaN
    return write_digital(folder, name, d, fs=500)


def write_extra_channel(folder: Path, name: str, *, units: str = "NU", label: str = "RESP", seed: int = 0,
                        leads: list[str] = LEADS12) -> Path:
    """``leads`` plus one non-ECG channel (``label`` in ``units``, e.g. a respiration belt in ``NU``)."""
    d = digital(ecg_mv(5000, 500, seed=seed, n_leads=len(leads)))
    resp = np.round(2000 * np.sin(2 * np.pi * 0.25 * np.arange(5000) / 500)).astype(np.int16)[:, None]
    folder.mkdir(parents=True, exist_ok=True)
    n = len(leads) + 1
    wfdb.wrsamp(name, fs=500, units=["mV"] * len(leads) + [units], sig_name=list(leads) + [label],
                d_signal=np.concatenate([d, resp], axis=1), fmt=["16"] * n, adc_gain=[GAIN] * n, baseline=[0] * n,
                comments=["Dx: 426783006"], write_dir=str(folder))
    return folder / name


def write_multi_frequency(folder: Path, name: str, *, seed: int = 0, fs_frame: float = 250.0,
                          seconds: float = 10.0, spf_leads: int = 2, spf_resp: int = 1) -> Path:
    """12 leads at ``spf_leads`` samples per frame (``spf_leads x fs_frame``) + a RESP channel at
    ``spf_resp`` samples per frame (``NU``)."""
    n = int(round(seconds * fs_frame))
    ecg = digital(ecg_mv(spf_leads * n, spf_leads * fs_frame, seed=seed))
    t = np.arange(spf_resp * n) / (spf_resp * fs_frame)
    resp = np.round(2000 * np.sin(2 * np.pi * 0.25 * t)).astype(np.int64)
    e_d = [ecg[:, i].astype(np.int64) for i in range(12)] + [resp]
    spf = [spf_leads] * 12 + [spf_resp]
    rec = wfdb.Record(record_name=name, n_sig=13, fs=fs_frame, sig_len=n, file_name=[f"{name}.dat"] * 13,
                      fmt=["16"] * 13, samps_per_frame=spf, units=["mV"] * 12 + ["NU"], sig_name=LEADS12 + ["RESP"],
                      adc_gain=[GAIN] * 13, baseline=[0] * 13, adc_zero=[0] * 13, adc_res=[16] * 13,
                      block_size=[0] * 13, e_d_signal=e_d, comments=["Dx: 426783006"])
    rec.set_d_features(expanded=True)
    folder.mkdir(parents=True, exist_ok=True)
    rec.wrsamp(expanded=True, write_dir=str(folder))
    return folder / name


def write_multi_segment(folder: Path, name: str, *, seed: int = 0, layout: str = "fixed",
                        seg_seconds: tuple[float, ...] = (6.0, 6.0)) -> Path:
    """A multi-segment record ``name`` of segments ``<name>_1``, ``<name>_2``, ... (500 Hz, 12 leads); with
    ``layout="variable"`` a layout header ``<name>_layout`` (length 0) comes first."""
    segs = []
    for k, sec in enumerate(seg_seconds, 1):
        write_ecg(folder, f"{name}_{k}", seconds=sec, seed=seed + k)
        segs.append((f"{name}_{k}", int(round(sec * 500))))
    lines = []
    if layout == "variable":
        (folder / f"{name}_layout.hea").write_text(
            f"{name}_layout 12 500 0\n" + "".join(f"~ 0 {GAIN}(0)/mV 16 0 0 0 0 {lead}\n" for lead in LEADS12))
        lines.append(f"{name}_layout 0")
    lines += [f"{s} {n}" for s, n in segs]
    total = sum(n for _, n in segs)
    (folder / f"{name}.hea").write_text(f"{name}/{len(lines)} 12 500 {total}\n" + "\n".join(lines)
                                        + "\n#Dx: 426783006\n")
    return folder / name


SOAK_BAD = {  # writer -> (stage, error_type)
    "truncated": (bad_truncated_dat, "read", "truncated"),
    "missing_signal_file": (bad_missing_signal, "read", "missing_signal_file"),
    "bad_header": (bad_garbled_header, "read", "bad_header"),
    "too_short": (bad_short, "preprocess", "too_short"),
    "nan_or_inf": (bad_nan, "preprocess", "nan_or_inf"),
}


# --------------------------------------------------------------------------- the corpus
def build_corpus(root: Path) -> list[Case]:
    """Write every case under ``root`` (flat folder, plus ``docs/``); return the cases."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def ok(name, rid, flags=(), n=None):
        cases.append(Case(name, rid, "ok", flags=tuple(flags), n_samples_in=n))

    def err(name, rid, stage, etype):
        cases.append(Case(name, rid, "error", stage=stage, error_type=etype))

    # -- good records ---------------------------------------------------------------------
    for i, kind in enumerate(("normal", "AF", "LBBB")):
        write_ecg(root, f"good_{kind}", kind=kind, seed=10 + i)
        ok(f"good WFDB .dat ({kind}, 500 Hz, 10 s)", f"good_{kind}", ("resampled", "padded"), 5000)
    write_mat(root, "good_mat", digital(ecg_mv(5000, 500, seed=20)))
    ok("good Challenge-style .mat (500 Hz, 10 s)", "good_mat", ("resampled", "padded"), 5000)
    x = np.zeros((4096, 12), np.float32)
    x[48:4048] = ecg_mv(4000, 400, seed=21)
    write_code15(root / "good_code15.hdf5", x)
    ok("good CODE-15 HDF5 exam (400 Hz, 4096 samples)", "good_code15", (), 4096)

    # -- handled: processed and flagged ---------------------------------------------------
    for fs in (100, 257, 1000):
        write_ecg(root, f"fs_{fs}", fs=fs, seed=30 + fs)
        ok(f"{fs} Hz (10 s)", f"fs_{fs}", ("resampled", "padded"), 10 * fs)
    write_ecg(root, "long_30min", fs=500, seconds=10.0, seed=40)  # rewritten below as 30 min by tiling
    d = wfdb.rdrecord(str(root / "long_30min"), physical=False).d_signal
    write_digital(root, "long_30min", np.tile(d, (180, 1)), fs=500)
    ok("30 min record (500 Hz)", "long_30min", ("resampled", "cropped"), 900_000)
    write_ecg(root, "leads_15", leads=LEADS12 + ["vx", "vy", "vz"], seed=50)
    ok("15 leads (12 standard + Frank vx, vy, vz)", "leads_15", ("extra_leads_dropped", "resampled", "padded"), 5000)
    d = digital(ecg_mv(5000, 500, seed=60))
    d[:, 8] = 0
    write_digital(root, "zero_lead", d, fs=500)
    ok("one all-zero lead (V3)", "zero_lead", ("flat_lead:V3", "resampled", "padded"), 5000)
    d = digital(ecg_mv(5000, 500, seed=61))
    d[3000:4500, 7] = RAIL  # V2 pinned at the ADC rail for 3 s
    write_digital(root, "saturated_lead", d, fs=500)
    ok("one saturated lead (V2 at +32.767 mV for 3 s)", "saturated_lead", ("saturated_lead:V2", "resampled", "padded"),
       5000)
    write_ecg(root, "lower_case_leads", leads=[n.lower() for n in LEADS12], seed=62)
    ok("lead names in another spelling (i, ii, avr, ...)", "lower_case_leads", ("resampled", "padded"), 5000)

    write_extra_channel(root, "resp_extra", seed=63)
    ok("12 leads + a respiration channel in NU (not a voltage)", "resp_extra",
       ("extra_leads_dropped", "resampled", "padded"), 5000)
    write_extra_channel(root, "abp_extra", units="mmHg", label="ABP", seed=64)
    ok("12 leads + blood pressure in mmHg", "abp_extra", ("extra_leads_dropped", "resampled", "padded"), 5000)
    write_ecg(root, "ЭКГ_ü_✓", seed=65)
    ok("a non-ASCII record name (ЭКГ_ü_✓.hea, .dat)", "ЭКГ_ü_✓", ("resampled", "padded"), 5000)
    write_multi_frequency(root, "multi_freq", seed=66)
    ok("multi-frequency: 12 leads at 2 samples/frame (500 Hz), RESP at 1 (250 Hz)", "multi_freq",
       ("multi_frequency", "extra_leads_dropped", "resampled", "padded"), 5000)
    write_multi_segment(root, "multi_seg", seed=67)
    ok("multi-segment record (2 segments of 6 s, fixed layout)", "multi_seg", ("resampled", "cropped"), 6000)
    write_multi_segment(root, "multi_var", seed=68, layout="variable", seg_seconds=(4.0, 5.0))
    ok("multi-segment record, variable layout (layout header + 2 segments)", "multi_var", ("resampled", "padded"),
       4500)

    # -- read errors ----------------------------------------------------------------------
    bad_truncated_dat(root, "trunc_dat", seed=70)
    err("truncated .dat", "trunc_dat", "read", "truncated")
    d = digital(ecg_mv(5000, 500, seed=71))
    write_mat(root, "trunc_mat", d)
    mat = root / "trunc_mat.mat"
    mat.write_bytes(mat.read_bytes()[:-1000])
    err("truncated .mat", "trunc_mat", "read", "truncated")
    base = write_ecg(root, "longer_than_header", seed=72)
    edit_header(base, lambda ls: [ls[0].rsplit(" ", 1)[0] + " 4000"] + ls[1:])  # header: 4000, file: 5000
    err("header/data length mismatch (file longer than the header says)", "longer_than_header", "read",
        "length_mismatch")
    bad_missing_signal(root, "missing_dat", seed=73)
    err("header naming a missing signal file", "missing_dat", "read", "missing_signal_file")
    bad_garbled_header(root, "garbled_header", seed=74)
    err("garbled (binary) header", "garbled_header", "read", "bad_header")
    base = write_ecg(root, "nonnumeric_header", seed=75)
    edit_header(base, lambda ls: ["nonnumeric_header twelve 500 5000"] + ls[1:])
    err("non-numeric header field", "nonnumeric_header", "read", "bad_header")
    base = write_ecg(root, "empty_header", seed=76)
    base.with_suffix(".hea").write_bytes(b"")
    err("empty .hea (0 bytes)", "empty_header", "read", "bad_header")
    base = write_ecg(root, "empty_dat", seed=77)
    base.with_suffix(".dat").write_bytes(b"")
    err("empty .dat (0 bytes)", "empty_dat", "read", "truncated")
    base = write_ecg(root, "gain_zero", seed=78)
    edit_header(base, lambda ls: [ls[0]] + [ln.replace("1000.0(0)/mV", "0(0)/mV", 1) if i == 2 else ln
                                            for i, ln in enumerate(ls[1:])])
    err("ADC gain 0 on lead III (a lead the model needs)", "gain_zero", "preprocess", "bad_gain")
    base = write_ecg(root, "traversal_header", seed=79)
    # a valid signal file one folder up: following the header's path would read it without complaint
    shutil.copy(base.with_suffix(".dat"), root.parent / "outside.dat")
    edit_header(base, lambda ls: [ls[0]] + [ln.replace("traversal_header.dat", "../outside.dat") for ln in ls[1:]])
    err("header naming a signal file outside its folder (../outside.dat)", "traversal_header", "read", "bad_header")
    base = write_ecg(root, "bad_units", seed=80)
    edit_header(base, lambda ls: [ls[0]] + [ln.replace("/mV", "/mmHg") for ln in ls[1:]])
    err("units that are not a voltage (mmHg) on the 12 leads", "bad_units", "preprocess", "bad_units")
    base = write_ecg(root, "fs_zero", seed=81)
    edit_header(base, lambda ls: ["fs_zero 12 0 5000"] + ls[1:])
    err("sampling frequency 0 in the header", "fs_zero", "preprocess", "bad_fs")
    (root / "dir_not_record.hea").mkdir()
    (root / "dir_not_record.hea" / "inside.txt").write_text("a folder, not a header\n")
    err("a directory named like a header (dir_not_record.hea/)", "dir_not_record", "read", "not_a_record")
    (root / "not_hdf5.hdf5").write_bytes(b"this is a text file with an .hdf5 name\n")
    err("a .hdf5 file that is not HDF5", "not_hdf5", "read", "bad_hdf5")
    # a header that fails its checks and names signal files of other names: one error row, no phantom
    # "header-less" records for its signal files
    base = write_extra_channel(root, "mixedsignals", seed=83)
    for ext in ("_e", "_p"):
        shutil.copy(base.with_suffix(".dat"), root / f"mixedsignals{ext}.dat")
    base.with_suffix(".dat").unlink()
    edit_header(base, lambda ls: [ls[0]] + [ln.replace("mixedsignals.dat 16", "mixedsignals_e.dat 16", 1)
                                            if i < 12 else ln.replace("mixedsignals.dat 16", "mixedsignals_p.dat 999")
                                            for i, ln in enumerate(ls[1:])])
    err("header failing its checks (format 999) that names mixedsignals_e.dat, _p.dat", "mixedsignals", "read",
        "unsupported_format")
    base = write_multi_segment(root, "seg_missing", seed=84)
    (root / "seg_missing_2.hea").unlink()
    (root / "seg_missing_2.dat").rename(root / "seg_missing_2.dat.bak")  # keep no orphan signal file around
    err("multi-segment record whose second segment header is missing", "seg_missing", "read", "missing_header")
    base = write_mat(root, "orphan_mat", digital(ecg_mv(5000, 500, seed=82)))
    base.with_suffix(".hea").unlink()
    err("a signal file (.mat) whose header is missing", "orphan_mat", "read", "missing_header")

    # -- preprocess errors ----------------------------------------------------------------
    write_ecg(root, "leads_8", leads=["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"], seed=90)
    err("8 leads (I, II, V1-V6)", "leads_8", "preprocess", "missing_leads")
    write_extra_channel(root, "leads_8_bp", units="mmHg", label="BP", leads=["I", "II", "V1", "V2", "V3", "V4",
                                                                              "V5", "V6"], seed=98)
    err("8 leads + a mmHg channel (missing leads is the error, not the units)", "leads_8_bp", "preprocess",
        "missing_leads")
    write_ecg(root, "unknown_leads", leads=[f"ch{i}" for i in range(1, 13)], seed=91)
    err("12 unknown lead names (ch1..ch12)", "unknown_leads", "preprocess", "missing_leads")
    base = write_ecg(root, "dup_leads", seed=92)
    edit_header(base, lambda ls: [ls[0], ls[1], ls[2].rsplit(" ", 1)[0] + " I"] + ls[3:])  # I, I, III, ...
    err("duplicate lead names (I twice)", "dup_leads", "preprocess", "duplicate_leads")
    write_ecg(root, "alias_dup_leads", leads=["I", "DI"] + LEADS12[2:], seed=93)
    err("two names for one lead (I and DI)", "alias_dup_leads", "preprocess", "duplicate_leads")
    bad_nan(root, "nan_samples", seed=94)
    err("NaN samples (WFDB invalid value -32768)", "nan_samples", "preprocess", "nan_or_inf")
    x = np.zeros((4096, 12), np.float32)
    x[48:4048] = ecg_mv(4000, 400, seed=95)
    x[2000, 3] = np.inf
    write_code15(root / "inf_samples.hdf5", x)
    err("inf samples (CODE-15 HDF5)", "inf_samples", "preprocess", "nan_or_inf")
    write_digital(root, "all_zero", np.zeros((5000, 12), np.int16), fs=500)
    err("every lead all zero", "all_zero", "preprocess", "flat_signal")
    d = np.where((np.arange(5000) // 250 % 2 == 0)[:, None], RAIL, -RAIL).astype(np.int16) * np.ones((1, 12), np.int16)
    write_digital(root, "all_saturated", d, fs=500)
    err("every lead at the ADC rails", "all_saturated", "preprocess", "saturated_signal")
    # microvolt samples labelled as millivolts: gain 1 adu/mV instead of 1000
    write_digital(root, "wrong_units", digital(ecg_mv(5000, 500, seed=96)), fs=500)
    edit_header(root / "wrong_units", lambda ls: [ls[0]] + [ln.replace("1000.0(0)/mV", "1.0(0)/mV") for ln in ls[1:]])
    err("amplitudes 1000x too large (uV labelled mV)", "wrong_units", "preprocess", "implausible_amplitude")
    bad_short(root, "short_1s", seed=97)
    err("1 s record", "short_1s", "preprocess", "too_short")

    # -- not records at all: ignored --------------------------------------------------------
    (root / "docs").mkdir()
    (root / "docs" / "README.txt").write_text("notes about this data set\n")
    (root / "docs" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "labels_notes.csv").write_text("a,b\n1,2\n")
    cases.append(Case("a folder of non-record files (docs/README.txt, figure.png) and a stray .csv", "docs",
                      "ignored"))
    write_ecg(root / ".trash", "rec_in_hidden_folder", seed=99)
    cases.append(Case("a record inside a hidden folder (.trash/)", "rec_in_hidden_folder", "ignored"))
    dotted = "..%2F..%2Fetc%2Fpasswd"  # a legal file name; wfdb.wrsamp refuses '.' in names: rename
    base = write_ecg(root, "dotted_name", seed=100)
    edit_header(base, lambda ls: [ln.replace("dotted_name", dotted) for ln in ls])
    base.with_suffix(".hea").rename(root / f"{dotted}.hea")
    base.with_suffix(".dat").rename(root / f"{dotted}.dat")
    cases.append(Case("a record whose name starts with '.' (..%2F..%2Fetc%2Fpasswd.hea): hidden, skipped and named",
                      "..%2F..%2Fetc%2Fpasswd", "ignored"))
    return cases


def copy_corpus(src: Path, dst: Path, skip=()) -> None:
    """Copy the corpus files (not directories named like records) for upload elsewhere."""
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if any(str(rel).startswith(s) for s in skip) or not p.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst / rel)


def files_of(root: Path) -> dict[str, Path]:
    """``{relative posix path: path}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


__all__ = ["Case", "build_corpus", "write_ecg", "write_digital", "write_mat", "write_code15", "SOAK_BAD",
           "write_extra_channel", "write_multi_frequency", "write_multi_segment",
           "ecg_mv", "digital", "files_of", "copy_corpus"]
