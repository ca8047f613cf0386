"""EDF / EDF+ records (12-lead Holter and ambulatory exports), local or on S3.

One ``.edf`` file is one record: the record id is the file stem, the data set
the parent folder name (``unknown`` if none), labels none (EDF has no
diagnosis field), ``format="edf"``.

Read policy:

* the header (256 + 256 x ns bytes of fixed-width ASCII, decoded latin-1) is
  parsed here and checked strictly; the data records are decoded with numpy
  (little-endian int16) as ``physical = pmin + (digital - dmin) *
  (pmax - pmin) / (dmax - dmin)``, exactly the EDF definition, then
  converted to float32 mV with the physical dimension (``uV``/``µV`` /1000,
  ``mV`` x1, ``V`` x1000, ``nV`` /1e6; :data:`ecgray.io.wfdb_header.UNIT_SCALE`).
  ``wfdb.io.convert.edf.read_edf`` (wfdb 4.3.1) is *not* used for the data:
  its conversion is off by up to 1 LSB (baseline ``dmax - pmax*gain + 1``,
  truncated), it counts an EDF+ annotation channel as a signal (the record's
  rate becomes the gcd of all rates), it averages faster channels down to the
  slowest rate without dividing by the gain, and it crashes when one rate is
  not a multiple of another;
* lead names are the EDF labels as written (stripped); preprocessing maps
  ``ECG I``, ``EKG V1``, ``Lead II``, ``I`` ... to the model leads
  (:func:`ecgray.preprocess.canonical_lead`);
* EDF+ ``EDF Annotations`` channels are not leads: they are skipped (not in
  ``signal`` nor ``leads``; ``meta["annotation_channels"]`` counts them);
* a channel whose physical dimension is not a voltage (``mmHg``, ``NU``,
  ``%``, empty ...) does not fail the read: it is kept, in its own units, and
  listed in ``Record.bad_channels`` as ``("bad_units", reason)``; a channel
  whose physical or digital range is empty (no gain) is kept as NaN and
  listed as ``("bad_gain", reason)``. Preprocessing raises that error only if
  the model needs the channel;
* several sample rates (EDF allows a different number of samples per data
  record per signal): every channel is decoded at its own rate, then the
  channels at other rates are resampled with :func:`scipy.signal.resample_poly`
  (exact ratio of the samples per data record) to the highest rate among the
  usable channels; flag ``multi_frequency``, ``meta["channel_fs"]`` lists
  the rates as stored. Nothing is averaged;
* the file must be exactly ``header + n_records x record size`` bytes long;
* on S3 the object is copied into a temporary directory with fsspec and read
  there by the very same code, so local and S3 reads give identical arrays;
  :func:`describe_edf` (catalog) reads the header bytes and the object size
  only.

Errors (:class:`ecgray.errors.ReadError`, ``error_type``): ``missing_file``
(also an S3 object listed but gone, 404), ``not_a_record`` (a directory),
``access_denied`` (local ``PermissionError``, S3 403), ``bad_edf`` (empty
file, not an EDF file, garbled or inconsistent header, number of data
records -1 (unknown), no signal channels), ``unsupported_format`` (BDF
24-bit, EDF+D interrupted recordings: their data records are not contiguous
in time), ``truncated`` (the file ends inside the header or is shorter than
its header says), ``length_mismatch`` (longer than its header says),
``unreadable`` (anything else the storage or numpy raised).
"""
from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ecgray.errors import ReadError
from ecgray.io.fs import is_s3, open_fs
from ecgray.io.labels import Labels
from ecgray.io.record import Record
from ecgray.io.wfdb_header import UNIT_SCALE, fetch_error

FORMAT = "edf"
ANNOTATIONS_LABEL = "EDF Annotations"
FIXED_HEADER = 256
PER_SIGNAL = 256
BYTES_PER_SAMPLE = 2
# S3 header reads: one request covers the header of a file with up to 255 signals
REMOTE_BLOCK_SIZE = 1 << 16

# (name, width) of the per-signal header fields, in file order
_SIGNAL_FIELDS = (("label", 16), ("transducer", 80), ("units", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
                  ("dmax", 8), ("prefilter", 80), ("spr", 8), ("reserved", 32))

_NUMBERS = (("pmin", "physical minimum"), ("pmax", "physical maximum"), ("dmin", "digital minimum"),
            ("dmax", "digital maximum"))


@dataclass
class EdfChannel:
    """One channel of the header (numbers as written)."""

    label: str
    units: str
    pmin: float
    pmax: float
    dmin: float
    dmax: float
    spr: int  #: samples per data record

    @property
    def is_annotation(self) -> bool:
        return self.label.strip().lower() == ANNOTATIONS_LABEL.lower()


@dataclass
class EdfHeader:
    """A parsed, checked EDF header (see :func:`parse_header`)."""

    header_bytes: int
    n_records: int
    duration: float  #: seconds per data record
    edf_plus: bool
    channels: list[EdfChannel]
    signals: list[int]  #: indices (in ``channels``) of the signal channels, annotations left out
    spr: int  #: samples per data record of every channel after decoding (the common or highest usable rate)
    fs: float  #: the record's rate, ``spr / duration``
    n_samples: int
    bad_channels: dict[int, tuple[str, str]] = field(default_factory=dict)  #: by signal index (0..n_leads-1)
    flags: tuple[str, ...] = ()

    @property
    def record_bytes(self) -> int:
        return sum(c.spr for c in self.channels) * BYTES_PER_SAMPLE

    @property
    def file_bytes(self) -> int:
        return self.header_bytes + self.n_records * self.record_bytes

    @property
    def leads(self) -> tuple[str, ...]:
        return tuple(self.channels[i].label for i in self.signals)

    @property
    def channel_fs(self) -> list[float]:
        return [self.channels[i].spr / self.duration for i in self.signals]


def stem(uri: str) -> str:
    """Record id of an EDF URI: the file name without ``.edf`` (any case)."""
    name = str(uri).rstrip("/")
    name = posixpath.basename(name) if is_s3(name) else os.path.basename(name)
    return name[:-4] if name.lower().endswith(".edf") else name


def _parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri):
        return posixpath.basename(posixpath.dirname(uri.split("://", 1)[1]))
    return os.path.basename(os.path.dirname(os.path.abspath(uri)))


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").strip()


def _number(raw: bytes, what: str, rid: str, integer: bool = False):
    text = _text(raw)
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ReadError(rid, f"EDF header field {what} is {text!r}, not {'an integer' if integer else 'a number'}",
                        error_type="bad_edf") from None
    if not integer and not np.isfinite(value):
        raise ReadError(rid, f"EDF header field {what} is {text!r}, not a finite number", error_type="bad_edf")
    return value


def header_size(head: bytes, rid: str, file_size: int | None = None) -> int:
    """Check the first bytes of a file (at least the 256-byte fixed header, when the file has them)
    and return the full header size ``256 x (ns + 1)``."""
    if len(head) == 0:
        raise ReadError(rid, "file is empty (0 bytes): not an EDF file", error_type="bad_edf")
    if head[:1] == b"\xff" and head[1:8] == b"BIOSEMI":
        raise ReadError(rid, "BDF (24-bit BioSemi) file: only 16-bit EDF/EDF+ is supported",
                        error_type="unsupported_format")
    version = head[:8]
    if version.rstrip(b" ") != b"0":
        raise ReadError(rid, f"not an EDF file: version field is {version!r}, want b'0       '", error_type="bad_edf")
    if len(head) < FIXED_HEADER:
        raise ReadError(rid, f"file ends inside the EDF header: {len(head)} bytes, the fixed header alone is "
                             f"{FIXED_HEADER}", error_type="truncated")
    ns = _number(head[252:256], "number of signals", rid, integer=True)
    if ns < 1:
        raise ReadError(rid, f"EDF header lists {ns} signals", error_type="bad_edf")
    declared = _number(head[184:192], "number of header bytes", rid, integer=True)
    size = FIXED_HEADER + PER_SIGNAL * ns
    if declared != size:
        raise ReadError(rid, f"EDF header says {declared} header bytes, but {ns} signals need {size}",
                        error_type="bad_edf")
    if file_size is not None and file_size < size:
        raise ReadError(rid, f"file ends inside the EDF header: {file_size} bytes, a header of {ns} signals is "
                             f"{size}", error_type="truncated")
    return size


def parse_header(head: bytes, rid: str) -> EdfHeader:
    """Parse and check a complete EDF header (``head`` holds at least :func:`header_size` bytes).

    Raises ReadError ``bad_edf`` / ``unsupported_format`` / ``truncated`` (see the module docstring).
    """
    size = header_size(head, rid)
    if len(head) < size:
        raise ReadError(rid, f"file ends inside the EDF header: {len(head)} bytes, header is {size}",
                        error_type="truncated")
    ns = (size - FIXED_HEADER) // PER_SIGNAL
    reserved = _text(head[192:236])
    if reserved.startswith("EDF+D"):
        raise ReadError(rid, "EDF+D (interrupted recording: data records not contiguous in time) is not "
                             "supported", error_type="unsupported_format")
    n_records = _number(head[236:244], "number of data records", rid, integer=True)
    if n_records == -1:
        raise ReadError(rid, "EDF header gives the number of data records as -1 (unknown: the file was not "
                             "closed by its recorder)", error_type="bad_edf")
    if n_records < 0:
        raise ReadError(rid, f"EDF header gives {n_records} data records", error_type="bad_edf")
    duration = _number(head[244:252], "duration of a data record", rid)
    values: dict[str, list[bytes]] = {}
    pos = FIXED_HEADER
    for name, width in _SIGNAL_FIELDS:
        values[name] = [head[pos + i * width: pos + (i + 1) * width] for i in range(ns)]
        pos += width * ns
    channels = []
    for i in range(ns):
        label = _text(values["label"][i]) or f"#{i}"
        num = {k: _number(values[k][i], f"{what} of signal {label}", rid) for k, what in _NUMBERS}
        spr = _number(values["spr"][i], f"samples per data record of signal {label}", rid, integer=True)
        if spr < 1:
            raise ReadError(rid, f"signal {label} has {spr} samples per data record", error_type="bad_edf")
        channels.append(EdfChannel(label=label, units=_text(values["units"][i]), spr=spr, **num))
    signals = [i for i, c in enumerate(channels) if not c.is_annotation]
    if not signals:
        raise ReadError(rid, "EDF file has no signal channels (only EDF+ annotations)", error_type="bad_edf")
    if duration <= 0:
        raise ReadError(rid, f"EDF header gives a data record duration of {duration} s", error_type="bad_edf")
    bad: dict[int, tuple[str, str]] = {}
    for j, i in enumerate(signals):
        c = channels[i]
        if c.units.lower() not in UNIT_SCALE:
            bad[j] = ("bad_units", f"channel {c.label} has units {c.units!r} (not a voltage)")
        elif c.pmax == c.pmin or c.dmax == c.dmin:
            bad[j] = ("bad_gain", f"channel {c.label} has physical range [{c.pmin:g}, {c.pmax:g}] and digital range "
                                  f"[{c.dmin:g}, {c.dmax:g}]: no gain")
    rates = {channels[i].spr for i in signals}
    usable = [channels[i].spr for j, i in enumerate(signals) if j not in bad]
    spr = max(usable or rates)
    return EdfHeader(header_bytes=size, n_records=n_records, duration=duration, edf_plus=reserved.startswith("EDF+"),
                     channels=channels, signals=signals, spr=spr, fs=spr / duration, n_samples=n_records * spr,
                     bad_channels=bad, flags=("multi_frequency",) if len(rates) > 1 else ())


def check_size(hdr: EdfHeader, size: int, rid: str) -> None:
    """Raise ``truncated`` / ``length_mismatch`` unless the file is exactly as long as its header says."""
    want = hdr.file_bytes
    what = f"{hdr.n_records} data records of {hdr.record_bytes} bytes after a {hdr.header_bytes}-byte header"
    if size < want:
        raise ReadError(rid, f"file is truncated: {size} bytes, header needs {want} ({what})", error_type="truncated")
    if size > want:
        raise ReadError(rid, f"file has {size} bytes, header implies {want} ({what})", error_type="length_mismatch")


def read_header(f, size: int, rid: str) -> EdfHeader:
    """Parse the header from an open binary file object of ``size`` bytes (positioned at 0)."""
    head = f.read(FIXED_HEADER)
    n = header_size(head, rid, size)
    head += f.read(n - len(head))
    return parse_header(head, rid)


def decode(hdr: EdfHeader, data: bytes | np.ndarray, rid: str) -> np.ndarray:
    """The data records as float32 ``(n_samples, n_leads)``: physical values, voltages in mV, every
    channel at ``hdr.fs`` (see the module docstring)."""
    from scipy.signal import resample_poly

    total = sum(c.spr for c in hdr.channels)
    raw = np.frombuffer(data, dtype="<i2", count=hdr.n_records * total).reshape(hdr.n_records, total)
    offsets = np.concatenate([[0], np.cumsum([c.spr for c in hdr.channels])])
    target = hdr.spr
    out = np.empty((hdr.n_samples, len(hdr.signals)), dtype=np.float32)
    for j, i in enumerate(hdr.signals):
        c = hdr.channels[i]
        if hdr.bad_channels.get(j, ("",))[0] == "bad_gain":
            out[:, j] = np.nan
            continue
        digital = raw[:, offsets[i]:offsets[i + 1]].reshape(-1).astype(np.float64)
        x = c.pmin + (digital - c.dmin) * ((c.pmax - c.pmin) / (c.dmax - c.dmin))
        x *= UNIT_SCALE.get(c.units.lower(), 1.0)
        if c.spr != target and x.size:
            ratio = Fraction(target, c.spr)
            x = resample_poly(x, ratio.numerator, ratio.denominator)
        if x.shape[0] != hdr.n_samples:
            raise ReadError(rid, f"channel {c.label}: {x.shape[0]} samples after resampling, want {hdr.n_samples}",
                            error_type="unreadable")
        out[:, j] = x
    return out


def _open_local(path: str, rid: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ReadError(rid, f"EDF file not found: {path}", error_type="missing_file") from None
    except IsADirectoryError:
        raise ReadError(rid, f"{path} is a directory, not an EDF file", error_type="not_a_record") from None
    except PermissionError as e:
        raise ReadError(rid, f"access denied to {path}: {e}", error_type="access_denied") from None
    except OSError as e:
        raise ReadError(rid, f"cannot open {path}: {e}", error_type="unreadable") from None


def _read_local(path: str, rid: str) -> tuple[EdfHeader, np.ndarray]:
    with _open_local(path, rid) as f:
        size = os.fstat(f.fileno()).st_size
        hdr = read_header(f, size, rid)
        check_size(hdr, size, rid)
        try:
            data = f.read(hdr.file_bytes - hdr.header_bytes)
        except OSError as e:
            raise ReadError(rid, f"cannot read {path}: {e}", error_type="unreadable") from None
    if len(data) != hdr.file_bytes - hdr.header_bytes:  # changed while we read it
        raise ReadError(rid, f"read {len(data)} data bytes, header needs {hdr.file_bytes - hdr.header_bytes}",
                        error_type="truncated")
    try:
        return hdr, decode(hdr, data, rid)
    except ReadError:
        raise
    except Exception as e:  # MemoryError, a numpy/scipy failure: still one error naming the record
        raise ReadError(rid, f"cannot decode {path}: {type(e).__name__}: {e}", error_type="unreadable") from None


def make_record(hdr: EdfHeader, signal: np.ndarray, rid: str, uri: str, parent: str) -> Record:
    """Assemble the :class:`Record` of an EDF file."""
    meta = {
        "units": [hdr.channels[i].units for i in hdr.signals],
        "channel_fs": hdr.channel_fs,
        "edf_plus": hdr.edf_plus,
        "data_records": hdr.n_records,
        "data_record_s": hdr.duration,
        "annotation_channels": len(hdr.channels) - len(hdr.signals),
    }
    return Record(record_id=rid, uri=str(uri), format=FORMAT, signal=signal, fs=float(hdr.fs), leads=hdr.leads,
                  labels=Labels.none(), dataset=parent or "unknown", meta=meta, flags=tuple(hdr.flags),
                  bad_channels=dict(hdr.bad_channels))


def read_edf(uri: str) -> Record:
    """Read one EDF/EDF+ file (local path or ``s3://``), see the module docstring."""
    uri = str(uri)
    rid = stem(uri)
    if not is_s3(uri):
        hdr, signal = _read_local(os.path.abspath(uri), rid)
        return make_record(hdr, signal, rid, uri, _parent(uri))
    fs, path = open_fs(uri)
    with tempfile.TemporaryDirectory(prefix="ecgray-edf-") as tmp:
        local = os.path.join(tmp, "record.edf")
        try:
            fs.get_file(path, local)
        except Exception as e:
            raise fetch_error(rid, f"EDF file {uri}", e, "missing_file") from None
        hdr, signal = _read_local(local, rid)
    return make_record(hdr, signal, rid, uri, _parent(uri))


def describe_edf(uri: str) -> dict:
    """The catalog's view of one EDF file, from its header and size only: ``record_id, uri, dataset, fs,
    n_samples, n_leads, leads, flags, bad_channels``. Raises the read's header/size errors."""
    uri = str(uri)
    rid = stem(uri)
    if is_s3(uri):
        fs, path = open_fs(uri)
        try:
            f = fs.open(path, "rb", block_size=REMOTE_BLOCK_SIZE, cache_type="readahead")
        except Exception as e:
            raise fetch_error(rid, f"EDF file {uri}", e, "missing_file") from None
        try:
            with f:
                size = int(f.size)
                hdr = read_header(f, size, rid)
        except ReadError:
            raise
        except Exception as e:
            raise fetch_error(rid, f"EDF file {uri}", e, "missing_file") from None
    else:
        with _open_local(os.path.abspath(uri), rid) as f:
            size = os.fstat(f.fileno()).st_size
            hdr = read_header(f, size, rid)
    check_size(hdr, size, rid)
    return {"record_id": rid, "uri": uri, "dataset": _parent(uri) or "unknown", "fs": float(hdr.fs),
            "n_samples": int(hdr.n_samples), "n_leads": len(hdr.signals), "leads": list(hdr.leads),
            "flags": list(hdr.flags), "bad_channels": dict(hdr.bad_channels)}
