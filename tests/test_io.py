"""Readers and catalog: real CPSC 2018 / CODE-15 data, generated WFDB and HDF5 files, error cases."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest
import wfdb

from ecgray.errors import ECGError, LabelError, ReadError
from ecgray.io import CATALOG_SCHEMA, Labels, Record, catalog, read_record
from ecgray.models.ribeiro2020 import CLASSES, LEADS
from ecgray.preprocess import preprocess

LEAD_NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CPSC_NAMES = {"1": "Normal", "2": "AF", "3": "I-AVB", "4": "LBBB", "5": "RBBB", "6": "PAC", "7": "PVC",
              "8": "STD", "9": "STE"}


# --------------------------------------------------------------------------- helpers

def write_wfdb(folder: Path, name: str, signal: np.ndarray | None = None, *, fs: float = 500, n: int = 2000,
               leads: list[str] = LEAD_NAMES, dx: str | None = "426783006", units: str = "mV",
               gain: float = 1000.0, extra_comments: tuple[str, ...] = ("Age: 61", "Sex: Female"),
               dx_style: str = "# Dx:", seed: int = 0) -> Path:
    """Write a fmt-16 WFDB record; returns the record path (no extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    if signal is None:
        rng = np.random.default_rng(seed)
        t = np.arange(n) / fs
        signal = (np.sin(2 * np.pi * 1.2 * t)[:, None] * np.linspace(0.5, 1.5, len(leads))[None, :]
                  + rng.normal(0, 0.05, (n, len(leads))))
        signal = np.round(signal * gain) / gain
    comments = list(extra_comments) + ([f"Dx: {dx}"] if dx is not None else [])
    wfdb.wrsamp(name, fs=fs, units=[units] * len(leads), sig_name=list(leads), p_signal=np.asarray(signal, float),
                fmt=["16"] * len(leads), adc_gain=[gain] * len(leads), baseline=[0] * len(leads),
                comments=comments, write_dir=str(folder))
    hea = folder / f"{name}.hea"
    if dx_style != "# Dx:":
        hea.write_text(hea.read_text().replace("# Dx:", dx_style))
    return folder / name


def class_set(lab: Labels) -> set[str]:
    return {c for c in CLASSES if lab.classes[c]}


# --------------------------------------------------------------------------- real CPSC data

@pytest.fixture(scope="module")
def cpsc_records(cpsc_dir):
    heads = sorted(cpsc_dir.glob("A*.hea"))
    return [read_record(str(h.with_suffix(""))) for h in heads]


def test_read_all_cpsc(cpsc_dir, cpsc_records):
    assert len(cpsc_records) == 150
    assert [r.record_id for r in cpsc_records] == [f"A{i:04d}" for i in range(1, 151)]
    for rec in cpsc_records:
        assert isinstance(rec, Record) and rec.format == "wfdb" and rec.dataset == "cpsc2018"
        assert rec.signal.dtype == np.float32 and rec.signal.ndim == 2 and rec.signal.shape[1] == 12
        assert rec.fs == 500.0 and rec.leads == tuple(LEAD_NAMES)
        assert 5000 <= rec.signal.shape[0] <= 30000 and rec.meta["sex"] in ("M", "F")
    # independent reference: wfdb's physical signal (gain 1000/mV, so already mV)
    for rec in cpsc_records[::15]:
        ref = wfdb.rdrecord(str(cpsc_dir / rec.record_id)).p_signal
        np.testing.assert_array_equal(rec.signal, ref.astype(np.float32))


def test_cpsc_header_labels_equal_reference_csv(cpsc_dir, cpsc_records):
    with open(cpsc_dir / "REFERENCE.csv") as f:
        ref = {r["Recording"]: [CPSC_NAMES[r[k]] for k in ("First_label", "Second_label", "Third_label") if r[k]]
               for r in csv.DictReader(f)}
    assert len(ref) == 6877
    counts = dict.fromkeys(CLASSES, 0) | {"normal": 0}
    for rec in cpsc_records:
        hdr = rec.labels
        assert hdr.scheme == "cpsc" and rec.meta["label_source"] == "header"
        via_csv = read_record(rec.uri, labels_csv=str(cpsc_dir / "REFERENCE.csv")).labels
        assert set(hdr.raw) == set(ref[rec.record_id]) == set(via_csv.raw)
        assert (hdr.vector() == via_csv.vector()).all() and hdr.normal == via_csv.normal
        for c in class_set(hdr):
            counts[c] += 1
        counts["normal"] += hdr.normal
    assert counts == {"1dAVb": 7, "RBBB": 32, "LBBB": 8, "SB": 0, "AF": 24, "ST": 0, "normal": 20}


def test_catalog_cpsc(cpsc_dir):
    tbl = catalog(str(cpsc_dir))
    assert tbl.schema.equals(CATALOG_SCHEMA)
    assert tbl.num_rows == 150
    rows = tbl.to_pylist()
    assert [r["record_id"] for r in rows] == sorted(r["record_id"] for r in rows)
    for r in rows:
        hdr = wfdb.rdheader(str(cpsc_dir / r["record_id"]))
        assert r["n_samples"] == hdr.sig_len and r["fs"] == hdr.fs and r["n_leads"] == 12
        assert r["leads"] == LEAD_NAMES and r["error"] is None and r["format"] == "wfdb"
        assert r["dataset"] == "cpsc2018" and Path(r["uri"]).is_absolute()
    assert sum(tbl.column("label_RBBB").to_pylist()) == 32 and sum(tbl.column("label_normal").to_pylist()) == 20
    # the REFERENCE.csv catalog has the same labels
    tbl2 = catalog(str(cpsc_dir), labels_csv=str(cpsc_dir / "REFERENCE.csv"))
    for col in [f"label_{c}" for c in CLASSES] + ["label_normal", "label_scheme"]:
        assert tbl2.column(col).equals(tbl.column(col))
    assert [set(x) for x in tbl2.column("raw_codes").to_pylist()] == [set(x) for x in tbl.column("raw_codes").to_pylist()]
    # catalog rows read back to the same records
    rec = read_record(rows[3]["uri"])
    assert rec.record_id == rows[3]["record_id"] and rec.signal.shape == (rows[3]["n_samples"], 12)


def test_read_accepts_hea_suffix_and_record_id(cpsc_dir):
    a = read_record(str(cpsc_dir / "A0007"))
    b = read_record(str(cpsc_dir / "A0007.hea"), record_id="my-id")
    assert b.record_id == "my-id" and np.array_equal(a.signal, b.signal) and a.labels == b.labels


# --------------------------------------------------------------------------- real CODE-15 data

def test_read_all_code15(code15_dir):
    files = sorted(code15_dir.glob("pacient_*.hdf5"), key=lambda p: int(p.stem.split("_")[1]))
    assert len(files) == 80
    for p in files:
        rec = read_record(str(p))
        assert rec.format == "code15" and rec.dataset == "code15" and rec.record_id == p.stem
        assert rec.fs == 400.0 and rec.leads == LEADS and rec.signal.shape == (4096, 12)
        assert rec.signal.dtype == np.float32 and rec.labels.scheme == "none"
        with h5py.File(p) as f:
            np.testing.assert_array_equal(rec.signal, f["tracings"][0].astype(np.float32))
    tbl = catalog(str(code15_dir))
    assert tbl.num_rows == 80 and set(tbl.column("n_samples").to_pylist()) == {4096}
    assert tbl.column("error").null_count == 80


# --------------------------------------------------------------------------- generated WFDB

@pytest.mark.parametrize("style", ["# Dx:", "#Dx:", "#Dx :"])
def test_snomed_header_styles(tmp_path, style):
    base = write_wfdb(tmp_path, "E0001", dx="164889003,733534002,713427006,270492004", dx_style=style)
    assert style.replace(" ", "") in (tmp_path / "E0001.hea").read_text().replace(" ", "")
    rec = read_record(str(base))
    assert rec.labels.scheme == "snomed" and rec.dataset == "georgia"
    assert rec.labels.raw == ("164889003", "733534002", "713427006", "270492004")
    assert class_set(rec.labels) == {"AF", "LBBB", "RBBB", "1dAVb"} and not rec.labels.normal
    assert rec.meta["age"] == 61 and rec.meta["sex"] == "F"


def test_snomed_equivalent_codes_same_classes(tmp_path):
    a = read_record(str(write_wfdb(tmp_path, "r1", dx="733534002,713427006,427172004")))
    b = read_record(str(write_wfdb(tmp_path, "r2", dx="164909002,59118001,17338001")))
    assert (a.labels.vector() == b.labels.vector()).all() and class_set(a.labels) == {"LBBB", "RBBB"}
    flutter = read_record(str(write_wfdb(tmp_path, "r3", dx="164890007")))
    assert not flutter.labels.vector().any() and flutter.labels.raw == ("164890007",)
    sr = read_record(str(write_wfdb(tmp_path, "r4", dx="426783006")))
    assert sr.labels.normal and sr.dataset == tmp_path.name
    nodx = read_record(str(write_wfdb(tmp_path, "r5", dx=None)))
    assert nodx.labels.scheme == "none" and not nodx.labels.normal


@pytest.mark.parametrize("units, factor", [("uV", 1e-3), ("V", 1e3), ("mV", 1.0)])
def test_units_to_mv(tmp_path, units, factor):
    rng = np.random.default_rng(1)
    raw = np.round(rng.normal(0, 1, (1000, 12)) * 100) / 100       # in `units`
    base = write_wfdb(tmp_path, "u", raw, gain=100.0, units=units)
    rec = read_record(str(base))
    np.testing.assert_allclose(rec.signal, raw * factor, rtol=1e-6, atol=1e-6 * factor)
    assert rec.meta["units"] == [units] * 12


def test_ptbxl_labels_csv_overrides_header(tmp_path):
    base = write_wfdb(tmp_path / "records500" / "00000", "00004_hr", dx="426783006")
    db = tmp_path / "ptbxl_database.csv"
    db.write_text('ecg_id,scp_codes,filename_lr,filename_hr\n'
                  '4,"{\'CRBBB\': 100.0, \'AFIB\': 0.0}",records100/00000/00004_lr,records500/00000/00004_hr\n')
    rec = read_record(str(base), labels_csv=str(db))
    assert rec.labels.scheme == "ptbxl" and class_set(rec.labels) == {"RBBB", "AF"} and rec.dataset == "ptbxl"
    assert rec.meta["label_source"] == "csv"
    # a record the CSV does not list keeps its header labels
    other = write_wfdb(tmp_path, "X1", dx="426177001")
    rec = read_record(str(other), labels_csv=str(db))
    assert rec.meta["label_source"] == "header" and class_set(rec.labels) == {"SB"}
    tbl = catalog(str(tmp_path), labels_csv=str(db))
    assert tbl.column("record_id").to_pylist() == ["00004_hr", "X1"]
    assert tbl.column("label_RBBB").to_pylist() == [True, False] and tbl.column("label_SB").to_pylist() == [False, True]


# --------------------------------------------------------------------------- generated HDF5

def make_h5(path: Path, n: int = 5, exam_ids: bool = True, two_d: bool = False) -> np.ndarray:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.3, (n, 4096, 12))
    with h5py.File(path, "w") as f:
        f.create_dataset("tracings", data=x[0] if two_d else x)
        if exam_ids:
            f.create_dataset("exam_id", data=np.arange(1000, 1000 + n, dtype=np.int64))
    return x


def test_hdf5_multi_exam(tmp_path):
    p = tmp_path / "exams_part0.hdf5"
    x = make_h5(p, 5)
    rec = read_record(f"{p}#3")
    assert rec.record_id == "1003" and rec.uri == f"{p}#3" and rec.meta["row"] == 3 and rec.meta["exam_id"] == "1003"
    np.testing.assert_array_equal(rec.signal, x[3].astype(np.float32))
    with pytest.raises(ReadError) as e:
        read_record(str(p))
    assert e.value.error_type == "bad_index" and "5 exams" in str(e.value)
    for frag in ("#5", "#x", "#-1"):
        with pytest.raises(ReadError) as e:
            read_record(f"{p}{frag}")
        assert e.value.error_type == "bad_index"
    tbl = catalog(str(tmp_path))
    assert tbl.column("record_id").to_pylist() == [str(1000 + i) for i in range(5)]
    assert tbl.column("uri").to_pylist() == [f"{p}#{i}" for i in range(5)]
    for u in tbl.column("uri").to_pylist():
        assert read_record(u).signal.shape == (4096, 12)
    # code15 labels CSV keyed by exam_id
    lab = tmp_path / "exams.csv"
    lab.write_text("exam_id,1dAVb,RBBB,LBBB,SB,ST,AF,normal_ecg\n1003,True,False,False,False,False,False,False\n"
                   "1001,False,False,False,False,False,False,True\n")
    assert class_set(read_record(f"{p}#3", labels_csv=str(lab)).labels) == {"1dAVb"}
    assert read_record(f"{p}#1", labels_csv=str(lab)).labels.normal
    tbl = catalog(str(tmp_path), labels_csv=str(lab))
    # exams the CSV does not list have no labels: null, not False
    assert tbl.column("label_1dAVb").to_pylist() == [None, False, None, True, None]


def test_hdf5_without_exam_id_positional_labels(tmp_path):
    p = tmp_path / "ecg_tracings.hdf5"
    x = make_h5(p, 3, exam_ids=False)
    gold = tmp_path / "gold_standard.csv"
    gold.write_text("1dAVb,RBBB,LBBB,SB,AF,ST\n0,0,0,0,0,0\n0,1,0,0,0,0\n0,0,0,0,1,1\n")
    rec = read_record(f"{p}#2", labels_csv=str(gold))
    assert rec.record_id == "ecg_tracings_2" and class_set(rec.labels) == {"AF", "ST"}
    np.testing.assert_array_equal(rec.signal, x[2].astype(np.float32))
    single = tmp_path / "one.h5"
    y = make_h5(single, 1, exam_ids=False, two_d=True)
    rec = read_record(str(single), labels_csv=str(gold))       # single exam: no positional match
    assert rec.record_id == "one" and rec.labels.scheme == "none" and rec.signal.shape == (4096, 12)
    np.testing.assert_array_equal(rec.signal, y[0].astype(np.float32))


def test_hdf5_errors(tmp_path):
    bad = tmp_path / "notreally.hdf5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(ReadError) as e:
        read_record(str(bad))
    assert e.value.error_type == "bad_hdf5" and "notreally" in str(e.value)
    with pytest.raises(ReadError) as e:
        read_record(str(tmp_path / "missing.hdf5"))
    assert e.value.error_type == "missing_file"
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("signals", data=np.zeros((1, 4096, 12)))
    with h5py.File(tmp_path / "shape.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.zeros((1, 4096, 8)))
    with pytest.raises(ReadError) as e:
        read_record(str(tmp_path / "other.hdf5"))
    assert e.value.error_type == "missing_dataset"
    with pytest.raises(ReadError) as e:
        read_record(str(tmp_path / "shape.hdf5"))
    assert e.value.error_type == "bad_shape"
    rows = {r["record_id"]: r for r in catalog(str(tmp_path)).to_pylist()}
    assert rows["notreally"]["error_type"] == "bad_hdf5" and rows["shape"]["error_type"] == "bad_shape"


# --------------------------------------------------------------------------- WFDB error cases

@pytest.fixture
def small_rec(tmp_path) -> Path:
    return write_wfdb(tmp_path / "d", "R001", n=1000)


def expect_read_error(uri, error_type: str, record_id: str = "R001") -> ReadError:
    with pytest.raises(ReadError) as e:
        read_record(str(uri))
    assert e.value.error_type == error_type, str(e.value)
    assert e.value.record_id == record_id and record_id in str(e.value) and e.value.stage == "read"
    assert e.value.as_row()["error_type"] == error_type
    return e.value


def test_missing_signal_file(small_rec):
    small_rec.with_suffix(".dat").unlink()
    expect_read_error(small_rec, "missing_signal_file")


def test_missing_signal_file_mat(cpsc_dir, tmp_path):
    shutil.copy(cpsc_dir / "A0001.hea", tmp_path / "A0001.hea")        # header without its .mat
    e = expect_read_error(tmp_path / "A0001", "missing_signal_file", "A0001")
    assert "A0001.mat" in str(e)


def test_missing_header(tmp_path):
    expect_read_error(tmp_path / "R001", "missing_header")


def test_truncated(small_rec):
    dat = small_rec.with_suffix(".dat")
    data = dat.read_bytes()
    dat.write_bytes(data[: len(data) // 2 + 1])
    expect_read_error(small_rec, "truncated")


def test_truncated_mat(cpsc_dir, tmp_path):
    shutil.copy(cpsc_dir / "A0002.hea", tmp_path / "A0002.hea")
    data = (cpsc_dir / "A0002.mat").read_bytes()
    (tmp_path / "A0002.mat").write_bytes(data[:-100])
    expect_read_error(tmp_path / "A0002", "truncated", "A0002")


def test_longer_than_header(small_rec):
    dat = small_rec.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes() + b"\0" * 24 * 10)
    expect_read_error(small_rec, "length_mismatch")


@pytest.mark.parametrize("garbage", [
    "garbage line here\nmore garbage\n",
    "\x00\x01\x02\xff\xfe",
    "",
    "R001 12 500 1000\nR001.dat 16 1000/mV\n",          # 12 signals announced, 1 line
    "R001 twelve 500 1000\n",
])
def test_garbled_header(small_rec, garbage):
    small_rec.with_suffix(".hea").write_bytes(garbage.encode("latin-1"))
    expect_read_error(small_rec, "bad_header")


def test_gain_zero(small_rec):
    hea = small_rec.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    parts = lines[3].split()
    parts[2] = "0/mV"
    lines[3] = " ".join(parts)
    hea.write_text("\n".join(lines) + "\n")
    # read (wfdb would silently use gain 200): the channel is NaN and named in bad_channels; the model
    # needs III, so preprocessing refuses the record naming it
    rec = read_record(str(small_rec))
    assert list(rec.bad_channels) == [2] and rec.bad_channels[2][0] == "bad_gain"
    assert np.isnan(rec.signal[:, 2]).all() and np.isfinite(np.delete(rec.signal, 2, axis=1)).all()
    with pytest.raises(ECGError) as e:
        preprocess(rec)
    assert e.value.error_type == "bad_gain" and e.value.stage == "preprocess" and "III" in str(e.value)


def test_bad_units(tmp_path):
    base = write_wfdb(tmp_path, "R001", units="mmHg", n=500)
    rec = read_record(str(base))
    assert sorted(rec.bad_channels) == list(range(12))
    with pytest.raises(ECGError) as e:
        preprocess(rec)
    assert e.value.error_type == "bad_units" and "12 leads the model needs" in str(e.value) and "signal I has units 'mmHg'" in str(e.value)


def test_catalog_keeps_bad_records(small_rec, tmp_path):
    folder = small_rec.parent
    write_wfdb(folder, "R002", n=500)
    write_wfdb(folder, "R003", n=500)
    write_wfdb(folder, "R004", n=500)
    (folder / "R002.dat").unlink()
    (folder / "R003.hea").write_text("garbage\n")
    dat = folder / "R004.dat"
    dat.write_bytes(dat.read_bytes()[:100])
    (folder / "sub").mkdir()
    write_wfdb(folder / "sub", "R005", n=500)
    (folder / ".hidden").mkdir()
    write_wfdb(folder / ".hidden", "R006", n=500)
    tbl = catalog(str(folder))
    rows = {r["record_id"]: r for r in tbl.to_pylist()}
    assert list(rows) == ["R001", "R002", "R003", "R004", "R005"]
    assert rows["R001"]["error"] is None and rows["R005"]["error"] is None
    assert rows["R002"]["error_type"] == "missing_signal_file" and "R002" in rows["R002"]["error"]
    assert rows["R002"]["n_samples"] == 500 and rows["R002"]["label_normal"] is True   # header facts kept
    assert rows["R003"]["error_type"] == "bad_header" and rows["R003"]["n_samples"] is None
    assert rows["R004"]["error_type"] == "truncated"
    assert catalog(str(folder), recursive=False).column("record_id").to_pylist() == ["R001", "R002", "R003", "R004"]
    # every error row names a record that read_record rejects with the same error_type
    for rid in ("R002", "R003", "R004"):
        with pytest.raises(ECGError) as e:
            read_record(rows[rid]["uri"])
        assert e.value.error_type == rows[rid]["error_type"]
    # a single record path works too
    assert catalog(str(folder / "R001")).column("record_id").to_pylist() == ["R001"]
    one = catalog(str(folder / "R001.hea")).to_pylist()
    assert len(one) == 1 and one[0]["error"] is None and one[0]["n_samples"] == 1000
    with pytest.raises(FileNotFoundError):
        catalog(str(tmp_path / "nope"))


def test_labels_csv_errors(small_rec, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(LabelError) as e:
        read_record(str(small_rec), labels_csv=str(bad))
    assert e.value.error_type == "bad_labels_csv"


def test_error_names_requested_record_id(small_rec):
    small_rec.with_suffix(".dat").unlink()
    with pytest.raises(ReadError) as e:
        read_record(str(small_rec), record_id="custom")
    assert e.value.record_id == "custom" and "R001" in str(e.value)


def test_catalog_schema_types():
    assert CATALOG_SCHEMA.field("fs").type == pa.float64() and CATALOG_SCHEMA.field("n_samples").type == pa.int64()
    assert CATALOG_SCHEMA.field("n_leads").type == pa.int32()
    assert CATALOG_SCHEMA.field("leads").type == pa.list_(pa.string())
    assert [f"label_{c}" for c in CLASSES] + ["label_normal"] == [n for n in CATALOG_SCHEMA.names
                                                                 if n.startswith("label_") and n != "label_scheme"]


def test_symlinked_records_are_read(cpsc_dir, tmp_path):
    """A folder of symlinks to records (a common way to select a subset) reads like the originals."""
    import os

    from ecgray.io import catalog, read_record

    for name in ("A0001", "A0002"):
        for ext in (".hea", ".mat"):
            os.symlink(os.path.abspath(f"{cpsc_dir}/{name}{ext}"), tmp_path / f"{name}{ext}")
    cat = catalog(str(tmp_path))
    assert cat.num_rows == 2 and cat.column("error").to_pylist() == [None, None]
    assert cat.column("n_samples").to_pylist() == [7500, 5000]
    a, b = read_record(str(tmp_path / "A0001")), read_record(f"{cpsc_dir}/A0001")
    assert np.array_equal(a.signal, b.signal)
