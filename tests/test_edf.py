"""EDF / EDF+ records: read (local and S3), catalog, broken files, and the pipeline end to end.

Every EDF here is written byte by byte by :func:`write_edf` (the EDF header is fixed-width ASCII), from
signal values chosen in mV: the reference for a read is those values, to the file's quantisation
(``|read - written| <= half an LSB`` of the header's physical/digital ranges).
"""
from __future__ import annotations

import math
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ecgray.errors import ReadError

MODEL_LEADS = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
# labels as Holter/ambulatory exports write them: with and without an ECG/EKG/Lead prefix
EDF_LABELS = ("ECG I", "EKG II", "III", "Lead aVR", "ECG aVL", "ECG aVF",
              "ECG V1", "EKG V2", "V3", "ECG Lead V4", "ECG V5", "ECG V6")
UNIT_MV = {"mV": 1.0, "uV": 1e-3, "V": 1e3}


# --------------------------------------------------------------------------- an EDF writer for the tests
def _field(value, width: int) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode("latin-1")
    assert len(raw) <= width, (value, width)
    return raw.ljust(width, b" ")


def _num(v: float) -> str:
    """``v`` in at most 8 characters (EDF numbers); the tests only use values that fit exactly."""
    for digits in range(8, 0, -1):
        s = f"{v:.{digits}g}"
        if len(s) <= 8:
            assert float(s) == v, (v, s)
            return s
    raise AssertionError(v)


def chan(label: str, mv: np.ndarray | None = None, *, units: str = "uV", pmin: float = -5000.0, pmax: float = 5000.0,
         dmin: int = -32768, dmax: int = 32767, spr: int | None = None, raw: bytes | None = None) -> dict:
    """One channel: ``mv`` (values in mV) is quantised with the channel's ranges; ``raw`` gives the data
    bytes directly (annotation channels)."""
    return {"label": label, "mv": mv, "units": units, "pmin": pmin, "pmax": pmax, "dmin": dmin, "dmax": dmax,
            "spr": spr, "raw": raw}


def digital_of(c: dict) -> np.ndarray:
    """The channel's values as EDF digital samples (the inverse of the EDF physical mapping, rounded)."""
    scale = {"mv": 1.0, "uv": 1e-3, "v": 1e3}.get(c["units"].lower(), 1.0)
    phys = np.asarray(c["mv"], np.float64) / scale
    gain = (c["pmax"] - c["pmin"]) / (c["dmax"] - c["dmin"])
    d = np.round((phys - c["pmin"]) / gain + c["dmin"])
    return np.clip(d, c["dmin"], c["dmax"]).astype("<i2")


def lsb_mv(c: dict) -> float:
    scale = {"mv": 1.0, "uv": 1e-3, "v": 1e3}.get(c["units"].lower(), 1.0)
    return abs(c["pmax"] - c["pmin"]) / (c["dmax"] - c["dmin"]) * scale


def edf_bytes(channels: list[dict], *, n_records: int, duration: float = 1.0, reserved: str = "",
              n_records_field: str | None = None) -> bytes:
    """The bytes of an EDF file holding ``channels`` (``spr`` samples each per data record)."""
    ns = len(channels)
    h = (_field("0", 8) + _field("X X X X", 80) + _field("Startdate 01-JAN-2020 X X X", 80)
         + _field("01.01.20", 8) + _field("10.00.00", 8) + _field(256 * (ns + 1), 8) + _field(reserved, 44)
         + _field(n_records if n_records_field is None else n_records_field, 8) + _field(_num(duration), 8)
         + _field(ns, 4))
    for key, width in (("label", 16), ("transducer", 80), ("units", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
                       ("dmax", 8), ("prefilter", 80), ("spr", 8), ("reserved", 32)):
        for c in channels:
            v = c.get(key, "")
            h += _field(_num(v) if isinstance(v, float) else v, width)
    assert len(h) == 256 * (ns + 1)
    data = []
    for c in channels:
        if c["raw"] is not None:
            data.append(np.frombuffer(c["raw"], "<i2").reshape(n_records, c["spr"]))
        else:
            data.append(digital_of(c).reshape(n_records, c["spr"]))
    return h + np.concatenate(data, axis=1).astype("<i2").tobytes()


def write_edf(path: Path, channels: list[dict], *, n_records: int, duration: float = 1.0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    for c in channels:
        if c["spr"] is None:
            c["spr"] = len(c["mv"]) // n_records
    path.write_bytes(edf_bytes(channels, n_records=n_records, duration=duration, **kw))
    return path


def tal_bytes(n_records: int, spr: int) -> bytes:
    """EDF+ 'EDF Annotations' data: one time-keeping TAL per data record, NUL padded."""
    out = b""
    for k in range(n_records):
        tal = f"+{k}\x14\x14\x00".encode() + (b"+0.5\x1510\x14Beat\x14\x00" if k == 0 else b"")
        assert len(tal) <= 2 * spr
        out += tal.ljust(2 * spr, b"\x00")
    return out


def ecg12(fs: int = 500, seconds: int = 10, seed: int = 0) -> np.ndarray:
    """(n, 12) float mV: a synthetic ECG (ecgray.synth), leads in model order."""
    from ecgray.synth import simulate

    sig, _ = simulate("normal", fs=fs, duration=seconds, seed=seed)
    return np.asarray(sig, np.float64)


def good_edf(path: Path, *, seed: int = 0, resp: bool = True, annotations: bool = True, fs: int = 500,
             seconds: int = 10) -> tuple[Path, list[dict]]:
    """A 12-lead EDF(+) as a Holter export writes it: uV leads with ECG/EKG/Lead labels, an EDF+ annotation
    channel between the leads and a respiration channel in ``NU``."""
    x = ecg12(fs, seconds, seed)
    chans = [chan(name, x[:, i], pmin=-3276.8, pmax=3276.7) for i, name in enumerate(EDF_LABELS)]
    if annotations:
        chans.insert(6, chan("EDF Annotations", units="", pmin=-1.0, pmax=1.0, spr=30, raw=tal_bytes(seconds, 30)))
    if resp:
        r = np.sin(np.arange(seconds * 25) / 25 * 2 * np.pi * 0.25) * 100
        chans.append(chan("RESP", r, units="NU", pmin=-500.0, pmax=500.0, dmin=-2048, dmax=2047))
    write_edf(path, chans, n_records=seconds, reserved="EDF+C" if annotations else "")
    return path, chans


# --------------------------------------------------------------------------- reading
def test_reads_holter_export(tmp_path):
    from ecgray.io import read_record

    path, chans = good_edf(tmp_path / "holter" / "H0001.edf")
    rec = read_record(str(path))
    leads = [c for c in chans if c["label"] != "EDF Annotations"]
    assert rec.format == "edf" and rec.record_id == "H0001" and rec.dataset == "holter"
    assert rec.labels.scheme == "none" and rec.meta["label_source"] == "none"
    assert rec.leads == EDF_LABELS + ("RESP",)  # the annotation channel is not a lead
    assert rec.fs == 500.0 and rec.signal.dtype == np.float32 and rec.signal.shape == (5000, 13)
    assert rec.flags == ("multi_frequency",)  # RESP is stored at 25 Hz
    assert rec.meta["channel_fs"] == [500.0] * 12 + [25.0] and rec.meta["annotation_channels"] == 1
    assert rec.meta["edf_plus"] is True
    for i, c in enumerate(leads[:12]):  # the 12 leads: the written mV values to half an LSB
        err = np.abs(rec.signal[:, i].astype(np.float64) - c["mv"]).max()
        assert err <= lsb_mv(c) / 2 + 1e-6, (c["label"], err, lsb_mv(c))
    assert rec.bad_channels == {12: ("bad_units", "channel RESP has units 'NU' (not a voltage)")}


def test_lead_names_map_to_model_leads(tmp_path):
    from ecgray.io import read_record
    from ecgray.preprocess import canonical_lead, preprocess, reorder_leads

    assert [canonical_lead(n) for n in EDF_LABELS] == list(MODEL_LEADS)
    assert canonical_lead("ECG1") is None and canonical_lead("EKG") is None  # channel numbers are not leads
    path, chans = good_edf(tmp_path / "H0002.edf", resp=False)
    rec = read_record(str(path))
    sig, flags = reorder_leads(rec.signal, rec.leads, record_id=rec.record_id)
    assert sig.shape == (5000, 12)
    leads = [c for c in chans if c["label"] != "EDF Annotations"]
    np.testing.assert_allclose(sig[:, 6], leads[6]["mv"], atol=lsb_mv(leads[6]) / 2 + 1e-6)  # V1
    windows = preprocess(rec)
    assert len(windows) == 1 and windows[0].x.shape == (12, 4096)


@pytest.mark.parametrize("units", ["uV", "mV", "V"])
def test_units_to_mv(tmp_path, units):
    from ecgray.io import read_record

    rng = np.random.default_rng(1)
    x = rng.uniform(-2.0, 2.0, size=(1000, 2))
    scale = UNIT_MV[units]
    rng_phys = 4.0 / scale  # physical range +-4 mV in the file's units
    chans = [chan("I", x[:, 0], units=units, pmin=-rng_phys, pmax=rng_phys),
             chan("II", x[:, 1], units=units, pmin=-rng_phys, pmax=rng_phys, dmin=-2048, dmax=2047)]
    path = write_edf(tmp_path / f"u_{units}.edf", chans, n_records=2, duration=1)
    rec = read_record(str(path))
    assert rec.bad_channels == {} and rec.flags == () and rec.fs == 500.0
    for i, c in enumerate(chans):
        assert np.abs(rec.signal[:, i] - x[:, i]).max() <= lsb_mv(c) / 2 + 1e-6


def test_asymmetric_ranges_and_inverted_polarity(tmp_path):
    """The EDF mapping with an offset (the physical range not centred on the digital one) and pmin > pmax."""
    from ecgray.io import read_record

    x = np.linspace(-1.0, 3.0, 800)
    chans = [chan("I", x, units="mV", pmin=-1.5, pmax=3.5, dmin=-1000, dmax=3000),
             chan("II", x, units="uV", pmin=4000.0, pmax=-2000.0, dmin=0, dmax=4095)]
    rec = read_record(str(write_edf(tmp_path / "off.edf", chans, n_records=4, duration=2)))
    assert rec.fs == 100.0
    for i, c in enumerate(chans):
        assert np.abs(rec.signal[:, i] - x).max() <= lsb_mv(c) / 2 + 1e-6


@pytest.mark.parametrize("units", ["mmHg", "NU", "%", ""])
def test_non_voltage_channel_is_kept_as_bad_units(tmp_path, units):
    from ecgray.io import read_record

    x = np.zeros((500, 2))
    x[:, 0] = np.sin(np.arange(500) / 50)
    chans = [chan("ECG II", x[:, 0], units="mV", pmin=-5.0, pmax=5.0), chan("BP", x[:, 1] + 80.0, units=units,
                                                                            pmin=0.0, pmax=300.0)]
    rec = read_record(str(write_edf(tmp_path / "bp.edf", chans, n_records=1)))
    assert rec.signal.shape == (500, 2)
    assert rec.bad_channels == {1: ("bad_units", f"channel BP has units {units!r} (not a voltage)")}
    assert np.abs(rec.signal[:, 1] - 80.0).max() <= 300.0 / 65535 / 2 + 1e-4  # kept, in its own units


def test_needed_lead_not_in_volts_fails_preprocess_only(tmp_path):
    """A model lead in ``mmHg`` reads (kept in ``bad_channels``); preprocessing refuses it, naming it."""
    from ecgray.errors import ECGError
    from ecgray.io import read_record
    from ecgray.preprocess import preprocess

    path, chans = good_edf(tmp_path / "H0009.edf", resp=False, annotations=False)
    data = bytearray(path.read_bytes())
    units_at = 256 + 12 * (16 + 80) + 6 * 8  # the physical dimension of channel 6 (ECG V1)
    data[units_at:units_at + 8] = _field("mmHg", 8)
    path.write_bytes(bytes(data))
    rec = read_record(str(path))
    assert rec.bad_channels == {6: ("bad_units", "channel ECG V1 has units 'mmHg' (not a voltage)")}
    with pytest.raises(ECGError) as ei:
        preprocess(rec)
    assert ei.value.error_type == "bad_units" and "ECG V1" in str(ei.value)


def test_channel_without_gain_is_bad_gain(tmp_path):
    from ecgray.io import read_record

    chans = [chan("I", np.zeros(500), units="mV", pmin=-5.0, pmax=5.0),
             chan("II", np.zeros(500), units="mV", pmin=-5.0, pmax=5.0)]
    chans[1]["raw"] = np.zeros(500, "<i2").tobytes()
    chans[1]["pmin"] = chans[1]["pmax"] = 1.0
    chans[1]["spr"] = 500
    rec = read_record(str(write_edf(tmp_path / "g.edf", chans, n_records=1)))
    assert list(rec.bad_channels) == [1] and rec.bad_channels[1][0] == "bad_gain"
    assert "channel II" in rec.bad_channels[1][1] and np.isnan(rec.signal[:, 1]).all()


def test_edf_plus_annotations_are_not_leads(tmp_path):
    """An 'EDF Annotations' channel (any position, its own samples per record) is skipped; the leads around it
    are decoded at their own offsets."""
    from ecgray.io import read_record

    x = np.stack([np.linspace(-1, 1, 1000), np.linspace(2, -2, 1000)], axis=1)
    chans = [chan("EDF Annotations", units="", pmin=-1.0, pmax=1.0, spr=57, raw=tal_bytes(4, 57)),
             chan("I", x[:, 0], units="mV", pmin=-5.0, pmax=5.0),
             chan("EDF Annotations", units="", pmin=-1.0, pmax=1.0, spr=11, raw=tal_bytes(4, 11)),
             chan("II", x[:, 1], units="mV", pmin=-5.0, pmax=5.0)]
    rec = read_record(str(write_edf(tmp_path / "ann.edf", chans, n_records=4, duration=0.5, reserved="EDF+C")))
    assert rec.leads == ("I", "II") and rec.fs == 500.0 and rec.flags == () and rec.bad_channels == {}
    assert rec.meta["annotation_channels"] == 2
    np.testing.assert_allclose(rec.signal, x, atol=10 / 65535 / 2 + 1e-6)


def test_multi_frequency_is_resampled_not_averaged(tmp_path):
    """Leads at 500 and 250 Hz: the 500 Hz leads are exactly as stored, the 250 Hz one is resampled
    (polyphase) to 500 Hz, flag ``multi_frequency``."""
    from scipy.signal import resample_poly

    from ecgray.io import read_record

    t500, t250 = np.arange(5000) / 500, np.arange(2500) / 250
    wave = lambda t: 1.5 * np.sin(2 * np.pi * 1.3 * t) + 0.3 * np.sin(2 * np.pi * 7 * t)  # noqa: E731
    chans = [chan("I", wave(t500), units="mV", pmin=-5.0, pmax=5.0),
             chan("II", wave(t250), units="mV", pmin=-5.0, pmax=5.0),
             chan("III", -wave(t500), units="mV", pmin=-5.0, pmax=5.0)]
    rec = read_record(str(write_edf(tmp_path / "mf.edf", chans, n_records=10, duration=1)))
    assert rec.fs == 500.0 and rec.signal.shape == (5000, 3) and rec.flags == ("multi_frequency",)
    assert rec.meta["channel_fs"] == [500.0, 250.0, 500.0]
    half = 10 / 65535 / 2 + 1e-6
    assert np.abs(rec.signal[:, 0] - wave(t500)).max() <= half
    assert np.abs(rec.signal[:, 2] + wave(t500)).max() <= half
    stored = chans[1]["pmin"] + (digital_of(chans[1]).astype(np.float64) - chans[1]["dmin"]) * 10 / 65535
    np.testing.assert_allclose(rec.signal[:, 1], resample_poly(stored, 2, 1), atol=1e-5)
    inner = slice(200, 4800)  # the upsampled lead is the same wave at 500 Hz (edges: filter start-up)
    assert np.abs(rec.signal[inner, 1] - wave(t500)[inner]).max() < 0.01


def test_wfdb_written_edf_reads_back(tmp_path, monkeypatch):
    """An EDF written by wfdb's own converter (from a WFDB record) reads back as that record's signal."""
    import wfdb
    from wfdb.io.convert.edf import wfdb_to_edf

    from ecgray.io import read_record

    x = ecg12(500, 10, seed=3)
    monkeypatch.chdir(tmp_path)
    wfdb.wrsamp("W0001", fs=500, units=["mV"] * 12, sig_name=list(EDF_LABELS), p_signal=x, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12)
    wfdb_to_edf("W0001", output_filename=str(tmp_path / "W0001.edf"))
    rec = read_record(str(tmp_path / "W0001.edf"))
    assert rec.leads == EDF_LABELS and rec.fs == 500.0 and rec.bad_channels == {}
    assert rec.n_samples >= 5000  # wfdb pads the last data record
    assert np.abs(rec.signal[:5000] - x).max() <= 1e-3 + 1e-6  # wfdb's writer rounds to within 1 LSB (1 uV)


# --------------------------------------------------------------------------- broken files
def _broken(tmp_path: Path) -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, error_type, a phrase the message must hold)."""
    x = np.zeros((1000, 2))
    chans = [chan("I", x[:, 0], spr=500), chan("II", x[:, 1], spr=500)]
    good = edf_bytes(chans, n_records=2)
    garbled = bytearray(good)
    garbled[256 + 2 * 16 + 2 * 80 + 2 * 8: 256 + 2 * 16 + 2 * 80 + 2 * 8 + 8] = b"abc     "  # pmin of signal I
    bad_version = b"1" + good[1:]
    plus_d = good[:192] + _field("EDF+D", 44) + good[236:]
    bdf = b"\xffBIOSEMI" + good[8:]
    return {
        "truncated": (good[:-100], "truncated", "truncated: 4668 bytes, header needs 4768 (2 data records of 2000 bytes"),
        "cut_header": (good[:600], "truncated", "ends inside the EDF header"),
        "garbage": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "bad_edf", "not an EDF file"),
        "empty": (b"", "bad_edf", "empty (0 bytes)"),
        "longer": (good + b"\x00" * 10, "length_mismatch", "4778 bytes, header implies 4768"),
        "garbled": (bytes(garbled), "bad_edf", "physical minimum of signal I is 'abc', not a number"),
        "version": (bad_version, "bad_edf", "version field"),
        "unknown_length": (edf_bytes(chans, n_records=2, n_records_field="-1"), "bad_edf", "-1"),
        "plus_d": (plus_d, "unsupported_format", "EDF+D"),
        "bdf": (bdf, "unsupported_format", "BDF"),
    }


def test_broken_files_raise_one_read_error(tmp_path):
    from ecgray.io import catalog, read_record

    cases = _broken(tmp_path)
    folder = tmp_path / "broken"
    folder.mkdir()
    for name, (data, _, _) in cases.items():
        (folder / f"{name}.edf").write_bytes(data)
    for name, (_, etype, phrase) in cases.items():
        with pytest.raises(ReadError) as ei:
            read_record(str(folder / f"{name}.edf"))
        e = ei.value
        assert (e.record_id, e.error_type, e.stage) == (name, etype, "read"), (name, str(e))
        assert phrase in str(e), (name, str(e))
    rows = {r["record_id"]: r for r in catalog(str(folder)).to_pylist()}
    assert sorted(rows) == sorted(cases)  # one row per file, each an error row
    for name, (_, etype, phrase) in cases.items():
        assert rows[name]["format"] == "edf" and rows[name]["error_type"] == etype, (name, rows[name])
        assert phrase in rows[name]["error"]


def test_missing_and_directory(tmp_path):
    from ecgray.io import read_record

    with pytest.raises(ReadError) as ei:
        read_record(str(tmp_path / "nope.edf"))
    assert (ei.value.record_id, ei.value.error_type) == ("nope", "missing_file")
    (tmp_path / "dir.edf").mkdir()
    with pytest.raises(ReadError) as ei:
        read_record(str(tmp_path / "dir.edf"))
    assert ei.value.error_type == "not_a_record"


# --------------------------------------------------------------------------- catalog
def test_catalog_lists_edf(tmp_path):
    from ecgray.io import catalog

    root = tmp_path / "in"
    good_edf(root / "H0001.edf", seed=1)
    good_edf(root / "site_b" / "H0002.EDF", seed=2, resp=False, annotations=False, seconds=12)
    (root / "notes.txt").write_text("not a record")
    (root / "H0003.edf").write_bytes(b"")
    rows = {r["record_key"]: r for r in catalog(str(root)).to_pylist()}
    assert sorted(rows) == ["H0001.edf", "H0003.edf", "site_b/H0002.EDF"]
    a, b, bad = rows["H0001.edf"], rows["site_b/H0002.EDF"], rows["H0003.edf"]
    assert (a["record_id"], a["format"], a["dataset"], a["fs"], a["n_samples"], a["n_leads"]) == \
        ("H0001", "edf", "in", 500.0, 5000, 13)
    assert a["leads"] == list(EDF_LABELS) + ["RESP"] and a["error"] is None and a["label_scheme"] == "none"
    assert (b["record_id"], b["dataset"], b["n_samples"], b["n_leads"]) == ("H0002", "site_b", 6000, 12)
    assert a["uri"] == str(root / "H0001.edf")
    assert (bad["record_id"], bad["format"], bad["error_type"]) == ("H0003", "edf", "bad_edf")


# --------------------------------------------------------------------------- S3 and the pipeline (one local Ray)
BUCKET = f"ecgray-edf-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def s3_ray(tmp_path_factory):
    pytest.importorskip("ray")
    from tests.s3util import moto_and_local_ray

    root = tmp_path_factory.mktemp("edf_s3")
    with moto_and_local_ray(BUCKET) as client:
        yield {"root": root, "client": client}


def test_s3_reads_like_local(s3_ray):
    from ecgray.io import catalog, read_record

    local, _ = good_edf(s3_ray["root"] / "edf" / "H0001.edf", seed=4)
    s3_ray["client"].put_object(Bucket=BUCKET, Key="edf/H0001.edf", Body=local.read_bytes())
    a, b = read_record(str(local)), read_record(f"s3://{BUCKET}/edf/H0001.edf")
    assert b.uri == f"s3://{BUCKET}/edf/H0001.edf"
    np.testing.assert_array_equal(a.signal, b.signal)
    for attr in ("record_id", "format", "dataset", "fs", "leads", "flags", "bad_channels", "meta"):
        assert getattr(a, attr) == getattr(b, attr), attr
    cl, cs = (catalog(u).to_pylist() for u in (str(local.parent), f"s3://{BUCKET}/edf/"))
    for r in cl + cs:
        r.pop("uri")
    assert cl == cs and len(cl) == 1 and cl[0]["error"] is None
    with pytest.raises(ReadError) as ei:
        read_record(f"s3://{BUCKET}/edf/gone.edf")
    assert (ei.value.record_id, ei.value.error_type) == ("gone", "missing_file")


def test_pipeline_run_on_edf_folder(s3_ray):
    """2 good EDF records + 1 truncated through ``run``: each record lands exactly once, in records or errors."""
    from ecgray.pipeline import read_table, run

    inp = s3_ray["root"] / "run_in"
    good_edf(inp / "H0001.edf", seed=5)
    good_edf(inp / "H0002.edf", seed=6, resp=False)
    data = (inp / "H0001.edf").read_bytes()
    (inp / "H0003.edf").write_bytes(data[: len(data) - 1000])
    out = s3_ray["root"] / "run_out"
    s = run(str(inp), str(out), model="demo", methods=["saliency"], targets=["AF"], shard_size=8, progress=False)
    assert (s.records, s.records_ok, s.records_error) == (3, 2, 1)
    recs, errs = read_table(str(out), "records"), read_table(str(out), "errors")
    assert sorted(recs.column("record_key").to_pylist()) == ["H0001.edf", "H0002.edf"]
    assert set(recs.column("format").to_pylist()) == {"edf"}
    assert set(recs.column("fs_in").to_pylist()) == {500.0}
    flags = dict(zip(recs.column("record_key").to_pylist(), recs.column("flags").to_pylist()))
    assert "extra_leads_dropped" in flags["H0001.edf"]  # its RESP channel (units NU) is not a lead
    e = errs.to_pylist()
    assert [(r["record_key"], r["stage"], r["error_type"]) for r in e] == [("H0003.edf", "read", "truncated")]
    summ = read_table(str(out), "relevance_summary")
    assert summ.num_rows == 2 * 12  # 2 records x 1 window x 1 method x 1 target x 12 leads


# --------------------------------------------------------------------------- cross-check against pyEDFlib
# pyEDFlib (EDFlib's C code, a test-only dependency: ``pip install .[test]``) writes the files with its own
# writer and is the independent reference for the read. Its physical values are float64; ecgray's are
# float32 mV. The comparison rule (:func:`_match_pyedflib`):
#
# * ecgray evaluates the EDF definition as written, ``pmin + (d - dmin) * ((pmax - pmin) / (dmax - dmin))``,
#   EDFlib as ``bitvalue * (offset + d)`` with ``bitvalue = (pmax - pmin) / (dmax - dmin)`` and
#   ``offset = pmax / bitvalue - dmax`` (edflib.c). Same real number, different float64 roundings: the two
#   float64 results differ in their last bits for most samples (measured: 98-100 % of the lead samples of
#   the files below, 77-99 % of the codes in the exhaustive test), then both are scaled to mV (``* 1e-3``
#   for uV) and cast to float32. That cast absorbs the float64 noise unless it straddles a float32 rounding
#   boundary, which is why the rule allows 1 float32 ulp; measured on every file here: 0 samples off,
#   max |difference| 0.0 (the leads and the resampled RESP channel alike).
# * one real pyEDFlib deviation, not a rounding of the value but of EDFlib's ``offset``: ``pmax / bitvalue
#   - dmax`` is not exactly 0 when it should be, an *absolute* error of a few float64 eps x |pmax| that shows
#   where the physical value is ~0. Example (:func:`test_exhaustive_digital_codes_match_edf_spec`):
#   pmin/pmax -32.767/32.767 mV, d = 0: the EDF value is exactly 0 (ecgray: 0.0), pyEDFlib gives
#   3.637978807091713e-15. The rule allows that absolute error too (``4 eps64 max(|pmin|, |pmax|)``), and
#   the exact EDF value (rational arithmetic on the header's decimal text) decides who is right: ecgray.
PYEDFLIB_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def pyedflib():
    return pytest.importorskip("pyedflib")


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 values as integers in the order of the reals (so ``|a - b|`` counts ulps, across 0 too)."""
    i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _match_pyedflib(got: np.ndarray, phys: np.ndarray, scale: float, pmin: float, pmax: float) -> dict:
    """Assert ``got`` (ecgray, float32 mV) == ``float32(phys * scale)`` (pyEDFlib physical, float64) to
    1 float32 ulp, or to EDFlib's offset error near 0 (see the section comment); return the measurements."""
    assert got.dtype == np.float32 and phys.dtype == np.float64 and got.shape == phys.shape
    ref = (phys * scale).astype(np.float32)
    ulps = np.abs(_ordered(got) - _ordered(ref))
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    edflib_offset = 4 * EPS64 * max(abs(pmin), abs(pmax)) * scale
    ok = (ulps <= 1) | (diff <= edflib_offset)
    assert ok.all(), (np.flatnonzero(~ok)[:5], got[~ok][:5], ref[~ok][:5])
    return {"not_exact": int((ulps > 0).sum()), "max_ulps": int(ulps.max(initial=0)), "max_abs": float(diff.max())}


def _spec_f32(digital: np.ndarray, pmin: str, pmax: str, dmin: int, dmax: int, scale: Fraction) -> np.ndarray:
    """The EDF specification's physical value of each digital sample, ``(d - dmin) * (pmax - pmin) /
    (dmax - dmin) + pmin``, computed exactly from the header's decimal text, scaled to mV, rounded once
    to float32 (to nearest, ties to even)."""
    a, b = Fraction(pmin), Fraction(pmax)
    gain = (b - a) / (dmax - dmin) * scale
    base = (a - dmin * (b - a) / (dmax - dmin)) * scale  # value = d * gain + base, exactly
    den = math.lcm(gain.denominator, base.denominator)
    g, c = gain.numerator * (den // gain.denominator), base.numerator * (den // base.denominator)
    codes, inverse = np.unique(np.asarray(digital, np.int64), return_inverse=True)
    nums = [int(d) * g + c for d in codes]  # value = num / den
    f64 = np.array([n / den for n in nums])  # int / int is correctly rounded to float64
    out = f64.astype(np.float32)
    # float64 -> float32 is a second rounding; it can differ from rounding the exact value only where the
    # float64 value is exactly halfway between two float32s: decide those on the exact value
    lo = np.where(out.astype(np.float64) > f64, np.nextafter(out, np.float32(-np.inf)), out)
    hi = np.nextafter(lo, np.float32(np.inf))
    for k in np.flatnonzero((lo.astype(np.float64) + hi.astype(np.float64)) / 2 == f64):
        x, mid = Fraction(nums[k], den), Fraction(float(f64[k]))
        out[k] = hi[k] if x > mid else lo[k] if x < mid else out[k]  # a true tie: the cast's ties-to-even
    return out[inverse.reshape(-1)]


def _header_numbers(path: Path) -> dict[str, list[str]]:
    """The per-signal physical/digital range fields as written (text), annotation channels included."""
    raw = path.read_bytes()
    ns = int(raw[252:256])
    at = 256 + ns * (16 + 80 + 8)
    out = {}
    for key in ("pmin", "pmax", "dmin", "dmax"):
        out[key] = [raw[at + k * 8: at + (k + 1) * 8].decode("latin-1").strip() for k in range(ns)]
        at += 8 * ns
    out["ns"] = ns
    return out


# (name, writer, file type, fs, seconds, labels, units, pmin, pmax, resp fs, annotations)
PYEDFLIB_FILES = {
    # EDF+ through EdfWriter: 500 Hz uV leads, ECG-prefixed labels, a gain of 10111/65534 uV
    "P500": ("EdfWriter", "edf+", 500, 10, tuple(f"ECG {n}" for n in PYEDFLIB_LEADS), "uV", -4123.7, 5987.3, 25,
             [(0.5, -1, "Beat"), (3.25, 0.5, "Artifact"), (9.0, 1.0, "Pause")]),
    # EDF+ through highlevel.write_edf: 256 Hz mV leads, bare labels, RESP at 20 Hz (ratio 64/5)
    "P256": ("highlevel", "edf+", 256, 20, PYEDFLIB_LEADS, "mV", -12.345, 12.345, 20,
             [(1.0, 0.0, "Start"), (12.5, 2.0, "Cough")]),
    # plain EDF (no annotation channel) through EdfWriter: 1000 Hz mV leads, asymmetric range
    "P1000": ("EdfWriter", "edf", 1000, 12, tuple(f"ECG {n}" for n in PYEDFLIB_LEADS), "mV", -8.1919, 8.1923, 50,
              []),
}


def pyedflib_edf(pyedflib, folder: Path, name: str, seed: int = 0) -> tuple[Path, dict]:
    """Write one of :data:`PYEDFLIB_FILES` with pyEDFlib's own writer; return its path and spec."""
    from pyedflib import highlevel

    how, kind, fs, seconds, labels, units, pmin, pmax, resp_fs, annotations = PYEDFLIB_FILES[name]
    x = ecg12(fs, seconds, seed) * (1000.0 if units == "uV" else 1.0)
    resp = 100 * np.sin(2 * np.pi * 0.25 * np.arange(seconds * resp_fs) / resp_fs)
    heads = [highlevel.make_signal_header(lab, dimension=units, sample_frequency=fs, physical_min=pmin,
                                          physical_max=pmax, digital_min=-32767, digital_max=32767)
             for lab in labels]
    heads.append(highlevel.make_signal_header("RESP", dimension="NU", sample_frequency=resp_fs, physical_min=-512.3,
                                              physical_max=511.7, digital_min=-32767, digital_max=32767))
    signals = [np.ascontiguousarray(x[:, i]) for i in range(12)] + [resp]
    file_type = pyedflib.FILETYPE_EDFPLUS if kind == "edf+" else pyedflib.FILETYPE_EDF
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.edf"
    if how == "highlevel":
        assert highlevel.write_edf(str(path), signals, heads, header={"annotations": [list(a) for a in annotations]},
                                   file_type=file_type)
    else:
        w = pyedflib.EdfWriter(str(path), len(signals), file_type=file_type)
        try:
            w.setSignalHeaders(heads)
            w.writeSamples(signals)
            for onset, duration, text in annotations:
                w.writeAnnotation(onset, duration, text)
        finally:
            w.close()
    spec = {"fs": fs, "seconds": seconds, "labels": labels, "units": units, "pmin": pmin, "pmax": pmax,
            "resp_fs": resp_fs, "annotations": annotations, "edf_plus": kind == "edf+"}
    return path, spec


@pytest.mark.parametrize("name", list(PYEDFLIB_FILES))
def test_pyedflib_written_edf_matches_pyedflib_read(tmp_path, pyedflib, name):
    """Every channel ecgray reads equals pyEDFlib's physical values (float32 mV; see the section comment);
    the leads at the record's rate are pyEDFlib's samples one for one, RESP is resampled as edf.py
    documents, the annotation channel is not a lead."""
    from scipy.signal import resample_poly

    from ecgray.io import read_record
    from ecgray.io.edf import read_edf

    path, spec = pyedflib_edf(pyedflib, tmp_path / "pyedf", name)
    rec, rec2 = read_record(str(path)), read_edf(str(path))
    np.testing.assert_array_equal(rec.signal, rec2.signal)
    assert (rec.leads, rec.fs, rec.flags, rec.bad_channels) == (rec2.leads, rec2.fs, rec2.flags, rec2.bad_channels)
    hn = _header_numbers(path)
    with pyedflib.EdfReader(str(path)) as r:
        n = r.signals_in_file  # pyEDFlib leaves the annotation channel out of its signals
        assert n == 13 and hn["ns"] == n + (1 if spec["edf_plus"] else 0)
        assert r.getSignalLabels() == list(spec["labels"]) + ["RESP"]
        assert rec.leads == tuple(r.getSignalLabels())  # no "EDF Annotations" among the leads
        assert rec.meta["annotation_channels"] == hn["ns"] - n and rec.meta["edf_plus"] is spec["edf_plus"]
        onsets, durations, texts = r.readAnnotations()  # the annotations are in the file (pyEDFlib reads them)
        assert list(texts) == [a[2] for a in spec["annotations"]]
        np.testing.assert_allclose(onsets, [a[0] for a in spec["annotations"]])
        rates = [r.getSampleFrequency(i) for i in range(n)]
        counts = list(r.getNSamples())
        assert rates == [float(spec["fs"])] * 12 + [float(spec["resp_fs"])]
        assert rec.fs == rates[0] and rec.signal.shape == (counts[0], 13) and rec.signal.dtype == np.float32
        assert rec.meta["channel_fs"] == rates and rec.flags == ("multi_frequency",)
        assert rec.bad_channels == {12: ("bad_units", "channel RESP has units 'NU' (not a voltage)")}
        scale = {"uV": 1e-3, "mV": 1.0}[spec["units"]]
        measured = {}
        for i in range(12):  # the ECG leads, at their own rate: pyEDFlib's samples one for one
            head = r.getSignalHeader(i)
            assert (head["dimension"], head["physical_min"], head["physical_max"]) == \
                (spec["units"], float(hn["pmin"][i]), float(hn["pmax"][i]))  # both parse the header the same
            phys = r.readSignal(i)
            assert phys.dtype == np.float64 and phys.shape == (counts[i],) == (rec.n_samples,)
            measured[rec.leads[i]] = _match_pyedflib(rec.signal[:, i], phys, scale, spec["pmin"], spec["pmax"])
            spec_f32 = _spec_f32(r.readSignal(i, digital=True), hn["pmin"][i], hn["pmax"][i], int(hn["dmin"][i]),
                                 int(hn["dmax"][i]), Fraction(1, 1000) if spec["units"] == "uV" else Fraction(1))
            assert np.abs(_ordered(rec.signal[:, i]) - _ordered(spec_f32)).max() <= 1  # the EDF value itself
        # measured: every sample of every lead is bit-for-bit pyEDFlib's float32 (not_exact 0, max_abs 0.0);
        # the assertion is the rule (1 ulp), as exactness here depends on the synthetic signal's float64 noise
        assert all(m["max_ulps"] <= 1 for m in measured.values()), measured
        # RESP (NU, kept in its own units) at the lower rate: ecgray resamples with resample_poly by the exact
        # ratio of samples per data record; the same call on pyEDFlib's samples gives the same float32 values
        # (the float64 inputs differ in their last bits, see above: to 1 float32 ulp)
        ratio = Fraction(counts[0], counts[12])
        phys = r.readSignal(12)
        want = resample_poly(phys, ratio.numerator, ratio.denominator)
        m = _match_pyedflib(rec.signal[:, 12], want, 1.0, -512.3, 511.7)
        assert m["max_ulps"] <= 1, m


@pytest.mark.parametrize("name", list(PYEDFLIB_FILES))
def test_pyedflib_written_edf_leads_and_catalog(tmp_path, pyedflib, name):
    """Lead names map to the 12 model leads; the catalog row has pyEDFlib's rate, length and signal count."""
    from ecgray.io import catalog, read_record
    from ecgray.preprocess import canonical_lead, reorder_leads

    path, spec = pyedflib_edf(pyedflib, tmp_path / "cat", name, seed=2)
    rec = read_record(str(path))
    assert [canonical_lead(n) for n in rec.leads[:12]] == list(MODEL_LEADS) and canonical_lead("RESP") is None
    sig, flags = reorder_leads(rec.signal, rec.leads, record_id=rec.record_id)
    assert sig.shape == (rec.n_samples, 12) and flags == ("extra_leads_dropped",)
    (row,) = catalog(str(path.parent)).to_pylist()
    with pyedflib.EdfReader(str(path)) as r:
        n = r.signals_in_file  # annotation channels are not counted by pyEDFlib
        assert n == _header_numbers(path)["ns"] - (1 if spec["edf_plus"] else 0)
        assert (row["record_id"], row["format"], row["error"]) == (name, "edf", None)
        assert row["fs"] == max(r.getSampleFrequency(i) for i in range(n)) == r.getSampleFrequency(0)
        assert row["n_samples"] == max(r.getNSamples()) == r.getNSamples()[0] == spec["fs"] * spec["seconds"]
        assert row["n_leads"] == n
        assert row["leads"] == r.getSignalLabels()


def test_pyedflib_written_edf_prepares(tmp_path, pyedflib):
    """A record pyEDFlib writes goes through ``prepare`` with no error; RESP is dropped, the rates flagged."""
    from ecgray.explain import prepare

    path, _ = pyedflib_edf(pyedflib, tmp_path / "prep", "P500")
    prepared, err = prepare(str(path), run_id="r")
    assert err is None and prepared is not None
    assert prepared.record.record_id == "P500" and prepared.record.format == "edf"
    (w,) = prepared.windows
    assert w.x.shape == (12, 4096) and np.isfinite(w.x).all()
    assert "extra_leads_dropped" in w.flags and "multi_frequency" in w.flags


def test_exhaustive_digital_codes_match_edf_spec(tmp_path, pyedflib):
    """Every digital code -32767..32767 (written by pyEDFlib as digital samples) under ranges with
    non-round gains: ecgray's float32 mV is the EDF value of the header's decimal numbers rounded once to
    float32, bit for bit; pyEDFlib agrees to 1 float32 ulp except its offset error at 0 (section comment)."""
    from ecgray.io.edf import read_edf

    ranges = [("uV", -4123.7, 5987.3), ("uV", -3276.8, 3276.7), ("mV", -32.767, 32.767), ("mV", -8.1919, 8.1923)]
    codes = np.arange(-32767, 32768, dtype=np.int32)
    fs, seconds = 500, 132  # 66000 samples: every code once, then the first 465 again
    digital = np.resize(codes, fs * seconds)
    path = tmp_path / "codes.edf"
    w = pyedflib.EdfWriter(str(path), len(ranges), file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        w.setSignalHeaders([{"label": f"ECG V{k + 1}", "dimension": u, "sample_frequency": fs, "physical_min": a,
                             "physical_max": b, "digital_min": -32767, "digital_max": 32767}
                            for k, (u, a, b) in enumerate(ranges)])
        w.writeSamples([digital] * len(ranges), digital=True)
    finally:
        w.close()
    rec = read_edf(str(path))
    hn = _header_numbers(path)
    measured = {}
    with pyedflib.EdfReader(str(path)) as r:
        for k, (u, a, b) in enumerate(ranges):
            np.testing.assert_array_equal(r.readSignal(k, digital=True), digital)
            scale = Fraction(1, 1000) if u == "uV" else Fraction(1)
            spec = _spec_f32(digital, hn["pmin"][k], hn["pmax"][k], int(hn["dmin"][k]), int(hn["dmax"][k]), scale)
            np.testing.assert_array_equal(rec.signal[:, k], spec)  # ecgray: the EDF value, exactly
            phys = r.readSignal(k)
            measured[(a, b)] = _match_pyedflib(rec.signal[:, k], phys, float(scale), a, b)
            pyedf = (phys * float(scale)).astype(np.float32)
            off = np.flatnonzero(pyedf != spec)
            if (a, b) == (-32.767, 32.767):  # EDFlib's offset 32.767/0.001 - 32767 is 3.6e-12, not 0
                assert list(digital[off]) == [0] and (phys[off] == 3.637978807091713e-15).all()
            else:
                assert off.size == 0, (a, b, off[:5])
    assert max(m["max_abs"] for m in measured.values()) < 4e-15, measured
