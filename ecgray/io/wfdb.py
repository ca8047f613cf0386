"""WFDB records (.hea + .mat/.dat), local or on S3.

Read policy:

* the header is parsed with :func:`wfdb.rdheader`; the signal with
  :func:`wfdb.rdrecord` (``physical=True``), converted to float32 mV using
  the header units (``mV`` x1, ``uV``/``µV`` /1000, ``nV`` /1e6, ``V`` x1000;
  any other unit is an error);
* on S3 the ``.hea`` and signal files are copied into a temporary directory
  with fsspec and read there by the very same code, so local and S3 reads
  give identical arrays;
* before the signal is read, every signal file named in the header must
  exist and have exactly the size the header implies
  (``byte_offset + bytes(sig_len x samples per frame)``; format 212/310/311
  padding tolerated; FLAC formats not size-checked);
* invalid samples (e.g. -32768 in format 16) come back as NaN, which
  preprocessing rejects (``nan_or_inf``).

Errors (:class:`ecgray.errors.ReadError`, ``error_type``):
``missing_header``, ``bad_header`` (empty, unparsable/garbled, no signals, no
lead names, a signal file name with a path in it), ``unsupported_format``
(multi-segment record, unknown sample format), ``bad_gain`` (ADC gain 0
written in the header; wfdb would silently use 200), ``bad_units``,
``missing_signal_file`` (also: an S3 object listed but gone, 404),
``truncated`` (signal file shorter than the header says, or empty),
``length_mismatch`` (longer, or wfdb returned another length),
``access_denied`` (no permission to read the header or a signal file: a
local ``PermissionError`` or S3 403), ``unreadable`` (anything else
wfdb/numpy/the storage raised; transient S3 failures are retried by
botocore/s3fs before this).
"""
from __future__ import annotations

import os
import posixpath
import re
import tempfile

import numpy as np
import wfdb
from wfdb.io._signal import BYTES_PER_SAMPLE, COMPRESSED_FMTS, _required_byte_num

from ecgray.errors import ReadError
from ecgray.io.fs import is_s3, open_fs
from ecgray.io.labels import Labels, from_dx
from ecgray.io.record import Record

UNIT_SCALE = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "nv": 1e-6, "v": 1e3}

# PhysioNet/CinC Challenge 2020/21 record-name prefixes, and PTB-XL's own names.
# (INCART ``I01`` and PTB ``S0001`` are left out: too easily confused with other names,
# e.g. ecgray.synth writes ``S0001``.)
DATASET_PATTERNS = (
    (re.compile(r"^A\d{4}$"), "cpsc2018"),
    (re.compile(r"^Q\d{4}$"), "cpsc2018_extra"),
    (re.compile(r"^HR\d{5}$"), "ptbxl"),
    (re.compile(r"^\d{5}_(lr|hr)$"), "ptbxl"),
    (re.compile(r"^E\d{4,5}$"), "georgia"),
    (re.compile(r"^JS\d{5}$"), "chapman_ningbo"),
)

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][\w .-]*?)\s*:\s*(.*?)\s*$")


def record_base(uri: str) -> str:
    """The record path without extension (``.hea`` stripped if given)."""
    uri = str(uri)
    return uri[:-4] if uri.lower().endswith(".hea") else uri


def guess_dataset(record_id: str, parent: str, scheme: str) -> str:
    """Data-set name: from Challenge/PTB-XL record-name patterns (``A0001`` ->
    ``cpsc2018``, ``HR00001`` -> ``ptbxl``, ...), else ``cpsc2018`` for CPSC
    abbreviation labels, else the parent folder name (``unknown`` if none)."""
    for rx, name in DATASET_PATTERNS:
        if rx.match(record_id):
            return name
    if scheme == "cpsc":
        return "cpsc2018"
    return parent or "unknown"


def header_fields(comments: list[str]) -> tuple[dict, str | None]:
    """Split header comments into ``meta`` (age, sex, other ``Key: value``) and the ``Dx`` text.

    ``age`` becomes a number (None when missing/``NaN``/``Unknown``), ``sex``
    ``"M"``/``"F"``/None; other keys are kept as lowercase strings.
    Several ``Dx`` lines are joined.
    """
    meta: dict = {}
    dx: list[str] = []
    for line in comments:
        m = _KEY_VALUE.match(line.strip().lstrip("#").strip())
        if not m:
            continue
        key, value = m.group(1).strip().lower(), m.group(2)
        if key == "dx":
            dx.append(value)
        elif key == "age":
            try:
                age = float(value)
                meta["age"] = int(age) if age.is_integer() else age
            except ValueError:
                meta["age"] = None
            if meta["age"] is not None and not np.isfinite(meta["age"]):
                meta["age"] = None
        elif key == "sex":
            v = value.strip().lower()
            meta["sex"] = "M" if v in ("m", "male") else "F" if v in ("f", "female") else None
        else:
            meta[key.replace(" ", "_")] = value
    return meta, (",".join(dx) if dx else None)


def signal_files(hdr) -> list[str]:
    """Signal file names of a header, in order, without repeats."""
    out: list[str] = []
    for name in hdr.file_name or []:
        if name not in out:
            out.append(name)
    return out


def check_header(hdr, text: str, record_id: str) -> None:
    """Reject headers wfdb accepts but we cannot use (see module docstring)."""
    if isinstance(hdr, wfdb.MultiRecord) or getattr(hdr, "seg_name", None):
        raise ReadError(record_id, "multi-segment WFDB records are not supported", error_type="unsupported_format")
    if not hdr.n_sig or not hdr.sig_name or not hdr.file_name:
        raise ReadError(record_id, "header lists no signals", error_type="bad_header")
    if len(hdr.sig_name) != hdr.n_sig or any(not n for n in hdr.sig_name):
        raise ReadError(record_id, f"header: {hdr.n_sig} signals but lead names {hdr.sig_name}", error_type="bad_header")
    if hdr.fs is None:
        raise ReadError(record_id, "header has no sampling frequency", error_type="bad_header")
    for name in signal_files(hdr):
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ReadError(record_id, f"signal file name {name!r} is not a plain file name", error_type="bad_header")
    for fmt in hdr.fmt or []:
        if fmt not in BYTES_PER_SAMPLE:
            raise ReadError(record_id, f"unsupported WFDB sample format {fmt!r}", error_type="unsupported_format")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for i, line in enumerate(lines[1:]):
        tokens = line.split()
        if len(tokens) >= 3:
            m = _NUMBER.match(tokens[2])
            if m and float(m.group(0)) == 0:
                lead = tokens[8] if len(tokens) > 8 else f"#{i}"
                raise ReadError(record_id, f"ADC gain 0 (uncalibrated) for signal {lead}", error_type="bad_gain")
    for units in hdr.units or []:
        if str(units).strip().lower() not in UNIT_SCALE:
            raise ReadError(record_id, f"unsupported units {units!r} (want mV, uV or V)", error_type="bad_units")


def expected_sizes(hdr) -> dict[str, tuple[int, int] | None]:
    """Allowed byte sizes ``(min, max)`` per signal file (None: not checkable)."""
    out: dict[str, tuple[int, int] | None] = {}
    for name in signal_files(hdr):
        idx = [i for i, n in enumerate(hdr.file_name) if n == name]
        fmt = hdr.fmt[idx[0]]
        if hdr.sig_len is None or fmt in COMPRESSED_FMTS:
            out[name] = None
            continue
        spf = sum(int(hdr.samps_per_frame[i] or 1) for i in idx)
        offset = int((hdr.byte_offset or [None] * hdr.n_sig)[idx[0]] or 0)
        n = int(hdr.sig_len) * spf
        out[name] = (offset + _required_byte_num("read", fmt, n), offset + _required_byte_num("write", fmt, n))
    return out


def check_signal_files(hdr, sizes: dict[str, int | None], record_id: str) -> None:
    """Raise ``missing_signal_file``/``truncated``/``length_mismatch`` from the file sizes."""
    for name, bounds in expected_sizes(hdr).items():
        size = sizes.get(name)
        if size is None:
            raise ReadError(record_id, f"signal file {name} is missing", error_type="missing_signal_file")
        if bounds is None:
            continue
        lo, hi = bounds
        if size == 0:
            raise ReadError(record_id, f"signal file {name} is empty (0 bytes), header needs {lo} "
                                       f"({hdr.sig_len} samples)", error_type="truncated")
        if size < lo:
            raise ReadError(record_id, f"signal file {name} is truncated: {size} bytes, header needs {lo} "
                                       f"({hdr.sig_len} samples)", error_type="truncated")
        if size > hi:
            raise ReadError(record_id, f"signal file {name} has {size} bytes, header implies {lo} "
                                       f"({hdr.sig_len} samples)", error_type="length_mismatch")


def fetch_error(record_id: str, what: str, exc: BaseException, missing_type: str) -> ReadError:
    """A storage failure as a ReadError: not found -> ``missing_type``, no permission -> ``access_denied``,
    anything else -> ``unreadable``."""
    if isinstance(exc, FileNotFoundError):
        return ReadError(record_id, f"{what} not found", error_type=missing_type)
    if isinstance(exc, PermissionError):
        return ReadError(record_id, f"access denied to {what}: {exc}", error_type="access_denied")
    return ReadError(record_id, f"cannot fetch {what}: {type(exc).__name__}: {exc}", error_type="unreadable")


def rdheader(base: str, record_id: str):
    """:func:`wfdb.rdheader` on a local record path; errors -> ReadError ``bad_header``."""
    try:
        with open(base + ".hea", "rb") as f:
            text = f.read().decode("latin-1")
    except OSError:
        text = None  # wfdb.rdheader says what is wrong
    if text is not None:
        if not text.strip():
            raise ReadError(record_id, f"header file is empty ({len(text)} bytes)", error_type="bad_header")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for line in lines[1:]:
            name = line.split()[0]
            if "/" in name or "\\" in name:
                raise ReadError(record_id, f"signal file name {name!r} is not a plain file name (a path: refused)",
                                error_type="bad_header")
    try:
        return wfdb.rdheader(base)
    except FileNotFoundError:
        raise ReadError(record_id, f"header {base}.hea not found", error_type="missing_header") from None
    except Exception as e:  # wfdb raises ValueError, HeaderSyntaxError, IndexError, ... on garbage
        raise ReadError(record_id, f"cannot parse header: {type(e).__name__}: {e}", error_type="bad_header") from None


def read_header_text(base: str, record_id: str) -> str:
    """The local ``.hea`` text (latin-1, so any byte decodes)."""
    try:
        with open(base + ".hea", "rb") as f:
            return f.read().decode("latin-1")
    except FileNotFoundError:
        raise ReadError(record_id, f"header {base}.hea not found", error_type="missing_header") from None
    except IsADirectoryError:
        raise ReadError(record_id, f"{base}.hea is a directory, not a header file",
                        error_type="not_a_record") from None
    except PermissionError as e:
        raise ReadError(record_id, f"access denied to header {base}.hea: {e}", error_type="access_denied") from None
    except OSError as e:
        raise ReadError(record_id, f"cannot read header: {e}", error_type="missing_header") from None


def parse_local_header(base: str, record_id: str):
    """Read and check a local header; returns the wfdb header object."""
    text = read_header_text(base, record_id)
    hdr = rdheader(base, record_id)
    check_header(hdr, text, record_id)
    return hdr


def _physical_mv(base: str, hdr, record_id: str) -> np.ndarray:
    try:
        rec = wfdb.rdrecord(base, physical=True)
    except PermissionError as e:
        raise ReadError(record_id, f"access denied to a signal file: {e}", error_type="access_denied") from None
    except Exception as e:
        raise ReadError(record_id, f"cannot read signal: {type(e).__name__}: {e}", error_type="unreadable") from None
    sig = rec.p_signal
    if sig is None or sig.ndim != 2 or sig.shape[1] != hdr.n_sig:
        raise ReadError(record_id, f"signal has shape {getattr(sig, 'shape', None)}, header says {hdr.n_sig} signals",
                        error_type="length_mismatch")
    if hdr.sig_len is not None and sig.shape[0] != hdr.sig_len:
        raise ReadError(record_id, f"signal has {sig.shape[0]} samples, header says {hdr.sig_len}",
                        error_type="length_mismatch")
    scale = np.array([UNIT_SCALE[str(u).strip().lower()] for u in rec.units], dtype=np.float64)
    sig = np.asarray(sig, dtype=np.float64)
    if np.any(scale != 1.0):
        sig = sig * scale
    return np.ascontiguousarray(sig, dtype=np.float32)


def _read_local(base: str, record_id: str, uri: str, parent: str) -> Record:
    hdr = parse_local_header(base, record_id)
    folder = os.path.dirname(base)
    sizes = {}
    for name in signal_files(hdr):
        p = os.path.join(folder, name)
        sizes[name] = os.path.getsize(p) if os.path.isfile(p) else None
    check_signal_files(hdr, sizes, record_id)
    signal = _physical_mv(base, hdr, record_id)
    return make_record(hdr, signal, record_id, uri, parent)


def make_record(hdr, signal: np.ndarray, record_id: str, uri: str, parent: str) -> Record:
    """Assemble a :class:`Record` from a header and its signal."""
    meta, dx = header_fields(hdr.comments or [])
    labels = from_dx(dx) if dx else Labels.none()
    meta["units"] = list(hdr.units or [])
    return Record(
        record_id=record_id,
        uri=uri,
        format="wfdb",
        signal=signal,
        fs=float(hdr.fs),
        leads=tuple(str(n) for n in hdr.sig_name),
        labels=labels,
        dataset=guess_dataset(record_id, parent, labels.scheme),
        meta=meta,
    )


def read_wfdb(uri: str, record_id: str | None = None) -> Record:
    """Read a WFDB record (local path or ``s3://``), see the module docstring."""
    base_uri = record_base(uri)
    name = posixpath.basename(base_uri) if is_s3(base_uri) else os.path.basename(base_uri)
    rid = record_id or name
    if not is_s3(base_uri):
        base = os.path.abspath(base_uri)
        return _read_local(base, rid, base_uri, os.path.basename(os.path.dirname(base)))
    fs, path = open_fs(base_uri)
    folder = posixpath.dirname(path)
    with tempfile.TemporaryDirectory(prefix="ecgray-wfdb-") as tmp:
        try:
            head = fs.cat_file(path + ".hea")
        except Exception as e:
            raise fetch_error(rid, f"header {base_uri}.hea", e, "missing_header") from None
        local = os.path.join(tmp, name)
        with open(local + ".hea", "wb") as f:
            f.write(head)
        hdr = rdheader(local, rid)
        check_header(hdr, head.decode("latin-1"), rid)
        sizes: dict[str, int | None] = {}
        for fname in signal_files(hdr):
            try:
                data = fs.cat_file(posixpath.join(folder, fname))
            except FileNotFoundError:
                sizes[fname] = None  # listed by the catalog but gone now (404): missing_signal_file
                continue
            except Exception as e:
                raise fetch_error(rid, f"signal file {fname}", e, "missing_signal_file") from None
            with open(os.path.join(tmp, fname), "wb") as f:
                f.write(data)
            sizes[fname] = len(data)
        check_signal_files(hdr, sizes, rid)
        signal = _physical_mv(local, hdr, rid)
    return make_record(hdr, signal, rid, base_uri, posixpath.basename(folder))
