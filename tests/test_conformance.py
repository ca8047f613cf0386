"""WFDB conformance corpus, generated at test time: one record of every sample format, skew, byte
offsets, multi-frame, multi-frequency, multi-segment, 12 + extra channels, non-ASCII names, and broken
variants.

For every record: the catalog lists exactly one row (rows listed = records present, and no row for a
segment, a layout header or a signal file a failing header names); a readable record's signal equals
``wfdb.rdrecord`` (physical, converted to mV) bit for bit; formats wfdb cannot write (8, 61, 160, 310,
311) are packed here from the format's definition in WFDB's signal(5), so the digital values are
known independently of wfdb; a broken record is exactly one error whose ``error_type`` and message
are checked here.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgray.errors import ECGError
from ecgray.explain import prepare
from ecgray.io import catalog, read_record, skipped_files
from ecgray.preprocess import preprocess
from tests.corpus import LEADS12, write_extra_channel, write_multi_frequency, write_multi_segment

FS = 500
N = 1500


@dataclass
class Rec:
    name: str
    kind: str  # "ok" | "error"
    error_type: str | None = None
    message: str | None = None  # regex the message must match
    digital: np.ndarray | None = None  # independent digital values (n, ch) when known
    gain: float = 200.0
    flags: tuple[str, ...] = ()


def _digital(n: int = N, ch: int = 12, lo: int = -500, hi: int = 500, seed: int = 0) -> np.ndarray:
    """A bounded random walk per channel (int64), within [lo, hi]."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.integers(-6, 7, size=(n, ch)), axis=0)
    return np.clip(x, lo, hi).astype(np.int64)


def _header(name: str, fmt_spec: list[str], files: list[str], n: int, gain: float = 200.0,
            leads=LEADS12, extra: list[str] | None = None, init: list[int] | None = None) -> str:
    lines = [f"{name} {len(fmt_spec)} {FS} {n}"]
    for i, (spec, f) in enumerate(zip(fmt_spec, files)):
        iv = init[i] if init is not None else 0
        lines.append(f"{f} {spec} {gain}(0)/mV 12 0 {iv} 0 0 {leads[i]}")
    return "\n".join(lines + (extra or [])) + "\n"


# ----------------------------------------------------------------- packers for the formats wfdb cannot write
def pack(fmt: str, d: np.ndarray) -> bytes:
    """Frames ``d (n, ch)`` (interleaved, frame by frame) in WFDB format ``fmt`` (signal(5))."""
    s = d.reshape(-1).astype(np.int64)
    if fmt == "8":  # first differences, 8-bit two's complement; first sample relative to the initial value 0
        ch = d.shape[1]
        diffs = np.diff(np.vstack([np.zeros((1, ch), np.int64), d]), axis=0).reshape(-1)
        assert np.abs(diffs).max() <= 127
        return diffs.astype(np.int8).tobytes()
    if fmt == "61":  # 16-bit big-endian two's complement
        return s.astype(">i2").tobytes()
    if fmt == "160":  # 16-bit offset binary, little-endian
        return (s + 32768).astype("<u2").tobytes()
    if fmt in ("310", "311"):  # three 10-bit samples in 4 bytes
        pad = (-len(s)) % 3
        u = (np.r_[s, np.zeros(pad, np.int64)] & 0x3FF).reshape(-1, 3)
        if fmt == "311":  # one 32-bit little-endian word: bits 0-9, 10-19, 20-29
            w = u[:, 0] | (u[:, 1] << 10) | (u[:, 2] << 20)
            return w.astype("<u4").tobytes()
        # two 16-bit little-endian words: sample 0 in bits 1-10 of word 0, sample 1 in bits 1-10 of word 1,
        # sample 2's low 5 bits in bits 11-15 of word 0, its high 5 bits in bits 11-15 of word 1
        w0 = (u[:, 0] << 1) | ((u[:, 2] & 0x1F) << 11)
        w1 = (u[:, 1] << 1) | ((u[:, 2] >> 5) << 11)
        return np.stack([w0, w1], axis=1).astype("<u2").tobytes()
    raise ValueError(fmt)


def build(root: Path) -> list[Rec]:
    root.mkdir(parents=True, exist_ok=True)
    recs: list[Rec] = []
    # formats wfdb writes
    for k, fmt in enumerate(("16", "24", "32", "80", "212", "508", "516", "524")):
        d = _digital(seed=k, lo=-120, hi=120) if fmt in ("80", "508") else _digital(seed=k)
        wfdb.wrsamp(f"fmt{fmt}", fs=FS, units=["mV"] * 12, sig_name=LEADS12, d_signal=d.astype(np.int32),
                    fmt=[fmt] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(root))
        recs.append(Rec(f"fmt{fmt}", "ok", digital=d))
    # formats wfdb reads but does not write: packed here
    for k, fmt in enumerate(("8", "61", "160", "310", "311")):
        d = _digital(seed=20 + k, lo=-500 if fmt.startswith("31") else -3000, hi=500 if fmt.startswith("31") else 3000)
        name = f"fmt{fmt}"
        (root / f"{name}.dat").write_bytes(pack(fmt, d))
        (root / f"{name}.hea").write_text(_header(name, [fmt] * 12, [f"{name}.dat"] * 12, N))
        recs.append(Rec(name, "ok", digital=d))
    # two signal files of different formats in one record
    d = _digital(seed=40)
    (root / "mixed_a.dat").write_bytes(pack("61", d[:, :6]))
    (root / "mixed_b.dat").write_bytes(pack("160", d[:, 6:]))
    (root / "mixedfmt.hea").write_text(_header("mixedfmt", ["61"] * 6 + ["160"] * 6,
                                               ["mixed_a.dat"] * 6 + ["mixed_b.dat"] * 6, N))
    recs.append(Rec("mixedfmt", "ok", digital=d))
    # byte offset (a 24-byte prefix, as in Challenge .mat files)
    d = _digital(seed=41)
    (root / "offset.dat").write_bytes(b"MATLAB-ish 24-byte head!" + d.astype("<i2").tobytes())
    (root / "offset.hea").write_text(_header("offset", ["16+24"] * 12, ["offset.dat"] * 12, N))
    recs.append(Rec("offset", "ok", digital=d))
    # skew: lead I skewed by 3 frames; the file holds the 3 extra frames
    d = _digital(n=N + 3, seed=42)
    (root / "skew.dat").write_bytes(d.astype("<i2").tobytes())
    (root / "skew.hea").write_text(_header("skew", ["16:3"] + ["16"] * 11, ["skew.dat"] * 12, N))
    ref = d[:N - 3].copy()
    ref[:, 0] = d[3:N, 0]
    recs.append(Rec("skew", "ok", digital=ref, flags=("skew_trimmed",)))
    # multi-frame: every signal 2 samples per frame (a 250 Hz frame rate, 500 Hz signals)
    d = _digital(n=N, seed=43)
    frames = d.reshape(N // 2, 2, 12).transpose(0, 2, 1).reshape(-1)  # per frame: ch0 s0, ch0 s1, ch1 s0, ...
    (root / "multiframe.dat").write_bytes(frames.astype("<i2").tobytes())
    (root / "multiframe.hea").write_text("\n".join([f"multiframe 12 {FS // 2} {N // 2}"] + [
        f"multiframe.dat 16x2 200(0)/mV 16 0 0 0 0 {lead}" for lead in LEADS12]) + "\n")
    recs.append(Rec("multiframe", "ok", digital=d))
    write_multi_frequency(root, "multifreq", seed=44, seconds=4.0)
    recs.append(Rec("multifreq", "ok", flags=("multi_frequency",), gain=1000.0))
    write_multi_frequency(root, "multifreq32", seed=50, seconds=4.0, fs_frame=125.0, spf_leads=4, spf_resp=3)
    recs.append(Rec("multifreq32", "ok", flags=("multi_frequency",), gain=1000.0))
    write_multi_segment(root, "multiseg", seed=45, seg_seconds=(2.0, 3.0))
    recs.append(Rec("multiseg", "ok", gain=1000.0))
    write_multi_segment(root, "multivar", seed=46, layout="variable", seg_seconds=(2.0, 2.5))
    recs.append(Rec("multivar", "ok", gain=1000.0))
    write_extra_channel(root, "with_resp", seed=47)
    recs.append(Rec("with_resp", "ok", gain=1000.0))
    # non-ASCII record and signal file names (UTF-8 header)
    d = _digital(seed=48)
    name = "ЭКГ_ü_✓"
    (root / f"{name}.dat").write_bytes(d.astype("<i2").tobytes())
    (root / f"{name}.hea").write_bytes(_header(name, ["16"] * 12, [f"{name}.dat"] * 12, N,
                                               extra=["# Kommentar: Schrittmacher ✓"]).encode("utf-8"))
    recs.append(Rec(name, "ok", digital=d))
    # units written as µV (UTF-8): wfdb's ASCII parse alone would read "V" (1000x too large)
    d = _digital(seed=49)
    (root / "micro.dat").write_bytes(d.astype("<i2").tobytes())
    (root / "micro.hea").write_bytes(_header("micro", ["16"] * 12, ["micro.dat"] * 12, N, gain=0.2)
                                     .replace("/mV", "/µV").encode("utf-8"))
    recs.append(Rec("micro", "ok", digital=d, gain=200.0))  # 0.2 adu/µV = 200 adu/mV

    # ---------------------------------------------------------------- broken variants: one clear error each
    d = _digital(seed=60)
    (root / "trunc310.dat").write_bytes(pack("310", d)[:-400])
    (root / "trunc310.hea").write_text(_header("trunc310", ["310"] * 12, ["trunc310.dat"] * 12, N))
    recs.append(Rec("trunc310", "error", "truncated", r"signal file trunc310\.dat is truncated: \d+ bytes, "
                                                     r"header needs 24000 \(1500 samples\)"))
    (root / "long212.dat").write_bytes(pack("311", d) + bytes(4000))  # 212 needs 27000 bytes
    (root / "long212.hea").write_text(_header("long212", ["212"] * 12, ["long212.dat"] * 12, N))
    recs.append(Rec("long212", "error", "length_mismatch", r"signal file long212\.dat has 28000 bytes, header "
                                                            r"implies 27000"))
    (root / "fmt999.dat").write_bytes(d.astype("<i2").tobytes())
    (root / "fmt999.hea").write_text(_header("fmt999", ["999"] * 12, ["fmt999.dat"] * 12, N))
    recs.append(Rec("fmt999", "error", "unsupported_format", r"unsupported WFDB sample format '999'"))
    # a failing header naming signal files of other names: one row, and none for those files
    (root / "mixedsignals_e.dat").write_bytes(d[:, :6].astype("<i2").tobytes())
    (root / "mixedsignals_p.dat").write_bytes(d[:, 6:].astype("<i2").tobytes())
    (root / "mixedsignals.hea").write_text(_header("mixedsignals", ["16"] * 6 + ["999"] * 6,
                                                   ["mixedsignals_e.dat"] * 6 + ["mixedsignals_p.dat"] * 6, N))
    recs.append(Rec("mixedsignals", "error", "unsupported_format", r"unsupported WFDB sample format '999'"))
    (root / "nodat.hea").write_text(_header("nodat", ["16"] * 12, ["nodat_signals.dat"] * 12, N))
    recs.append(Rec("nodat", "error", "missing_signal_file", r"signal file nodat_signals\.dat is missing"))
    write_multi_segment(root, "segless", seed=61, seg_seconds=(2.0, 2.0))
    (root / "segless_2.hea").unlink()
    (root / "segless_2.dat").unlink()
    recs.append(Rec("segless", "error", "missing_header", r"segment header .*segless_2\.hea not found"))
    write_multi_segment(root, "segtrunc", seed=62, seg_seconds=(2.0, 2.0))
    seg = root / "segtrunc_1.dat"
    seg.write_bytes(seg.read_bytes()[:1000])
    recs.append(Rec("segtrunc", "error", "truncated", r"signal file segtrunc_1\.dat is truncated"))
    (root / "ЭКГ_bad.hea").write_bytes(_header("ЭКГ_bad", ["16"] * 12, ["ЭКГ_bad.dat"] * 12, N).encode("utf-8"))
    recs.append(Rec("ЭКГ_bad", "error", "missing_signal_file", r"signal file ЭКГ_bad\.dat is missing"))
    (root / "lonely_layout.hea").write_text("lonely_layout 12 500 0\n" + "".join(
        f"~ 0 200(0)/mV 16 0 0 0 0 {lead}\n" for lead in LEADS12))
    recs.append(Rec("lonely_layout", "error", "not_a_record", r"names no signal files .* layout header, not a record"))
    (root / "nodesc.dat").write_bytes(d[:, :2].astype("<i2").tobytes())
    (root / "nodesc.hea").write_text(f"nodesc 2 {FS} {N}\nnodesc.dat 16 200/mV\nnodesc.dat 16 200/mV\n")
    recs.append(Rec("nodesc", "error", "bad_header", r"2 signal lines have no description field: no lead names"))
    (root / "pathname.hea").write_text(_header("pathname", ["16"] * 12, ["../fmt16.dat"] * 12, N))
    recs.append(Rec("pathname", "error", "bad_header", r"'\.\./fmt16\.dat' is not a plain file name"))
    return recs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    recs = build(root)
    return root, recs, catalog(str(root))


def _wfdb_mv(path: Path) -> np.ndarray:
    """wfdb's own physical signal, converted to mV by the header's units (the reference)."""
    r = wfdb.rdrecord(str(path), physical=True, smooth_frames=False)  # each signal at its own rate
    scale = np.array([{"mv": 1.0, "uv": 1e-3}.get(u.lower(), 1.0) for u in r.units])  # other units: as written
    sig = np.stack(r.e_p_signal, axis=1) if r.e_p_signal is not None else r.p_signal  # equal rates only
    return (np.asarray(sig, np.float64) * scale).astype(np.float32)


def test_catalog_lists_exactly_the_records(corpus):
    root, recs, cat = corpus
    rows = cat.to_pylist()
    assert sorted(r["record_id"] for r in rows) == sorted(r.name for r in recs)  # one row per record, no more
    by = {r["record_id"]: r for r in rows}
    for rec in recs:
        row = by[rec.name]
        if rec.kind == "ok":
            assert row["error"] is None, (rec.name, row["error"])
        else:
            assert row["error_type"] == rec.error_type, (rec.name, row["error"])
            assert re.search(rec.message, row["error"]), (rec.name, row["error"])
            assert row["error"].startswith(rec.name + ": ")
    # segments and layout headers are part of their record; nothing was skipped but the leftovers named
    assert not {r["record_id"] for r in rows} & {"multiseg_1", "multiseg_2", "multivar_layout", "segless_1"}
    assert skipped_files(cat) == []


def test_readable_records_equal_wfdb(corpus):
    root, recs, cat = corpus
    by = {r["record_id"]: r for r in cat.to_pylist()}
    for rec in recs:
        if rec.kind != "ok":
            continue
        got = read_record(by[rec.name]["uri"])
        assert got.flags == rec.flags, rec.name
        assert got.n_samples == by[rec.name]["n_samples"] and got.fs == by[rec.name]["fs"], rec.name
        if rec.name.startswith("multifreq"):
            continue  # below: wfdb's smoothed read is what ecgray must not return
        src = root / rec.name
        if not rec.name.isascii() or rec.name == "micro":
            continue  # wfdb cannot read these names/units itself: checked against the digital values below
        ref = _wfdb_mv(src)
        if rec.name == "skew":
            ref = ref[:-3]  # wfdb leaves the last `skew` samples invalid (NaN); ecgray drops them
        assert got.signal.dtype == np.float32 and np.array_equal(got.signal, ref, equal_nan=True), rec.name
    for rec in recs:  # independent of wfdb: the digital values written, divided by the gain
        if rec.kind == "ok" and rec.digital is not None:
            got = read_record(by[rec.name]["uri"]).signal
            want = (rec.digital.astype(np.float64) / rec.gain).astype(np.float32)
            assert np.array_equal(got, want), (rec.name, np.abs(got - want).max())


def test_non_ascii_name_read_like_its_ascii_copy(corpus, tmp_path):
    root, _, _ = corpus
    name = "ЭКГ_ü_✓"
    got = read_record(str(root / name))
    assert got.record_id == name and got.meta.get("kommentar") == "Schrittmacher ✓"
    shutil.copy(root / f"{name}.dat", tmp_path / "ascii.dat")
    (tmp_path / "ascii.hea").write_text((root / f"{name}.hea").read_text("utf-8").replace(name, "ascii")
                                        .replace("✓", "ok"))
    assert np.array_equal(got.signal, _wfdb_mv(tmp_path / "ascii"))


def test_multi_frequency_any_ratio(corpus):
    """Leads at 4 samples per frame, RESP at 3: read at the fastest rate (4 x 125 Hz), RESP by 4/3."""
    root, _, _ = corpus
    got = read_record(str(root / "multifreq32"))
    ref = wfdb.rdrecord(str(root / "multifreq32"), physical=True, smooth_frames=False)
    assert got.fs == 500.0 and got.n_samples == 4 * ref.sig_len
    for i in range(12):
        assert np.array_equal(got.signal[:, i], ref.e_p_signal[i].astype(np.float32))
    resp = resample_poly(np.asarray(ref.e_p_signal[12], np.float64), 4, 3).astype(np.float32)
    assert np.array_equal(got.signal[:, 12], resp)


def test_multi_frequency_read_at_the_full_rate(corpus):
    root, _, _ = corpus
    got = read_record(str(root / "multifreq"))
    ref = wfdb.rdrecord(str(root / "multifreq"), physical=True, smooth_frames=False)
    assert got.fs == 2 * ref.fs and got.n_samples == 2 * ref.sig_len and got.flags == ("multi_frequency",)
    for i in range(12):  # the leads exactly as recorded, at 2 samples per frame
        assert np.array_equal(got.signal[:, i], ref.e_p_signal[i].astype(np.float32))
    resp = resample_poly(np.asarray(ref.e_p_signal[12], np.float64), 2, 1).astype(np.float32)
    assert np.array_equal(got.signal[:, 12], resp)  # RESP (1 sample per frame) brought to the leads' rate
    smooth = wfdb.rdrecord(str(root / "multifreq"), physical=True).p_signal  # what wfdb gives by default
    assert smooth.shape[0] == ref.sig_len  # averaged down to the frame rate: not what ecgray returns


def test_multi_segment_one_record(corpus):
    root, _, _ = corpus
    for name, parts in (("multiseg", ["multiseg_1", "multiseg_2"]), ("multivar", ["multivar_1", "multivar_2"])):
        got = read_record(str(root / name))
        want = np.concatenate([_wfdb_mv(root / p) for p in parts])
        assert np.array_equal(got.signal, want) and got.meta["n_segments"] == len(
            [ln for ln in (root / f"{name}.hea").read_text().splitlines()[1:] if ln and not ln.startswith("#")])
        assert got.labels.positives() == ("AF",) or got.labels.raw  # the master header's Dx


def test_extra_channel_processed_with_flag(corpus):
    root, _, _ = corpus
    rec = read_record(str(root / "with_resp"))
    assert rec.leads[-1] == "RESP" and rec.bad_channels == {12: ("bad_units", rec.bad_channels[12][1])}
    assert "RESP" in rec.bad_channels[12][1] and "'NU'" in rec.bad_channels[12][1]
    prep, err = prepare(str(root / "with_resp"), run_id="r")
    assert err is None and "extra_leads_dropped" in prep.windows[0].flags
    # the model input is exactly that of the 12 leads alone
    rec12 = read_record(str(root / "with_resp"))
    rec12.signal, rec12.leads, rec12.bad_channels = rec12.signal[:, :12], rec12.leads[:12], {}
    assert np.array_equal(prep.windows[0].x, preprocess(rec12)[0].x)
    # the same channel in place of a lead the model needs: refused, naming it
    rec.leads = rec.leads[:11] + ("V6_unused", "V6")
    rec.bad_channels = {12: ("bad_units", "signal V6 has units 'NU', not a voltage (want mV, uV or V)")}
    with pytest.raises(ECGError) as e:
        preprocess(rec)
    assert e.value.error_type == "bad_units" and "signal V6 has units 'NU'" in str(e.value)


def test_pipeline_path_agrees(corpus):
    """read + preprocess (what every run does per record) on the catalog's rows: readable records give
    windows, broken ones the catalog's error, never anything else."""
    root, recs, cat = corpus
    by = {r["record_id"]: r for r in cat.to_pylist()}
    for rec in recs:
        row = by[rec.name]
        prep, err = prepare(row["uri"], run_id="r")
        if rec.kind == "error":
            assert err is not None and (err["stage"], err["error_type"]) == ("read", rec.error_type), rec.name
        else:
            assert err is None, (rec.name, err)
            assert set(rec.flags) <= set(prep.windows[0].flags), rec.name
