"""WFDB records (.hea + .mat/.dat), local or on S3: staging, describing and reading. The header text
functions and checks (pure, no file access) are in :mod:`ecgray.io.wfdb_header`.

Read policy:

* **Staging**: the header is read as bytes and decoded as UTF-8 (latin-1 when
  it is not valid UTF-8); a copy with ASCII aliases for the record, segment and
  signal file names is written into a temporary folder, next to links to the
  signal files (S3: the fetched objects), and wfdb reads that. So non-ASCII
  names (``ЭКГ_ü_✓.hea``) and any legal file name read, local and S3 reads run
  the very same code and give identical arrays, and wfdb's ASCII-only header
  parse (which drops every other character: ``µV`` would become ``V``) never
  decides units, lead names or comments -- those come from the decoded text.
* the signal is :func:`wfdb.rdrecord` (``physical=True``), converted to
  float32 mV using the header units (``mV`` x1, ``uV``/``µV`` /1000, ``nV``
  /1e6, ``V`` x1000).
* **Channels that are not a voltage** (``NU``, ``mmHg``, ``%``, ...) or
  written with ADC gain 0 (uncalibrated; wfdb would silently use 200, so the
  channel is set to NaN) do not fail the read: they are listed in
  :attr:`~ecgray.io.Record.bad_channels`, and preprocessing refuses the record
  (``bad_units`` / ``bad_gain``, naming the lead) only when the model needs
  that channel; otherwise it is dropped with the other extra channels.
* **Multi-frequency** records (signals with different samples per frame) are
  read with ``smooth_frames=False``: every signal at its own rate, the slower
  ones brought to the fastest rate with :func:`scipy.signal.resample_poly`
  (integer factors), flag ``multi_frequency``; ``fs`` is the fastest rate. wfdb's
  default would average the fast signals down to the frame rate. Equal
  samples per frame (all 2): read at ``2 x`` the frame rate, no flag.
* **Multi-segment** records are one record: every segment header is staged and
  checked like a single-segment header (signal files present, sizes), and
  :func:`wfdb.rdrecord` merges them (fixed or variable layout; a ``~`` gap or a
  signal missing in a segment reads as NaN, which preprocessing refuses).
* **Skew**: the file may hold the skew's extra frames; wfdb leaves the last
  ``max(skew)`` samples of the record invalid, so they are dropped (flag
  ``skew_trimmed``).
* before the signal is read, every signal file named in the header must
  exist and have exactly the size the header implies
  (``byte_offset + bytes(sig_len x samples per frame)``, plus the skew's frames;
  format 212/310/311 padding tolerated; FLAC formats not size-checked);
* invalid samples (e.g. -32768 in format 16) come back as NaN, which
  preprocessing rejects (``nan_or_inf``).

Errors (:class:`ecgray.errors.ReadError`, ``error_type``):
``missing_header`` (also a multi-segment record's missing segment header),
``bad_header`` (empty, unparsable/garbled, no signals, no lead names, a signal
file or segment name with a path in it), ``unsupported_format`` (unknown sample
format, nested multi-segment, multi-frequency segments), ``missing_signal_file``
(also: an S3 object listed but gone, 404), ``truncated`` (signal file shorter
than the header says, or empty), ``length_mismatch`` (longer, or wfdb returned
another length), ``access_denied`` (no permission to read the header or a
signal file: a local ``PermissionError`` or S3 403), ``unreadable`` (anything
else wfdb/numpy/the storage raised; transient S3 failures are retried by
botocore/s3fs before this). ``bad_units`` / ``bad_gain`` are raised by
preprocessing (stage ``preprocess``) for a channel the model needs.
"""
from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import wfdb
from scipy.signal import resample_poly

from ecgray.errors import ReadError
from ecgray.io.fs import is_s3, open_fs
from ecgray.io.labels import Labels, from_dx
from ecgray.io.record import Record
from ecgray.io.wfdb_header import (
    BYTES_PER_SAMPLE, UNIT_SCALE, _SAFE_EXT, _alias_text, _units_and_names, channel_problems, check_header,
    check_signal_files, check_text, comment_lines, decode_header, fetch_error, guess_dataset, header_fields,
    max_skew, n_segments, named_files, record_base, signal_files, spec_lines,
)


# ------------------------------------------------------------------------------------------ sources
class Source:
    """The folder that holds a record's files: local, or an S3 prefix (fsspec).

    ``sizes`` (a listing, ``{file name: bytes}``) and ``headers`` (``{header file name: bytes or the
    exception fetching it raised}``) let the catalog describe records without another request per file.
    Signal files are fetched (S3) or linked (local) into the staging folder only by :meth:`stage`.
    """

    def __init__(self, folder: str, fs=None, *, sizes: dict[str, int | None] | None = None,
                 headers: dict[str, object] | None = None, uri_folder: str | None = None):
        self.folder, self.fs = folder, fs
        self.uri_folder = uri_folder or folder
        self.sizes, self.headers = sizes, headers or {}
        self._data: dict[str, bytes] = {}

    def _path(self, name: str) -> str:
        return posixpath.join(self.folder, name) if self.fs is not None else os.path.join(self.folder, name)

    def header(self, name: str, record_id: str, what: str = "header") -> str:
        """The decoded text of header file ``name``."""
        uri = posixpath.join(self.uri_folder, name) if self.fs is not None else self._path(name)
        if name in self.headers:
            data = self.headers[name]
            if isinstance(data, BaseException):
                raise fetch_error(record_id, f"{what} {uri}", data, "missing_header")
        elif self.fs is not None:
            try:
                data = self.fs.cat_file(self._path(name))
            except Exception as e:
                raise fetch_error(record_id, f"{what} {uri}", e, "missing_header") from None
        else:
            try:
                with open(self._path(name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise ReadError(record_id, f"{what} {uri} not found", error_type="missing_header") from None
            except IsADirectoryError:
                raise ReadError(record_id, f"{uri} is a directory, not a header file",
                                error_type="not_a_record") from None
            except PermissionError as e:
                raise ReadError(record_id, f"access denied to {what} {uri}: {e}", error_type="access_denied") from None
            except OSError as e:
                raise ReadError(record_id, f"cannot read {what} {uri}: {e}", error_type="missing_header") from None
        return decode_header(bytes(data))

    def size(self, name: str, record_id: str) -> int | None:
        """Bytes of file ``name`` (None when it is not there)."""
        if self.sizes is not None:
            return self.sizes.get(name)
        if self.fs is None:
            p = self._path(name)
            return os.path.getsize(p) if os.path.isfile(p) else None
        if name not in self._data:
            try:
                self._data[name] = self.fs.cat_file(self._path(name))
            except FileNotFoundError:
                return None  # listed by the catalog but gone now (404): missing_signal_file
            except Exception as e:
                raise fetch_error(record_id, f"signal file {name}", e, "missing_signal_file") from None
        return len(self._data[name])

    def stage(self, name: str, dest: str, record_id: str) -> None:
        """Put file ``name`` at ``dest`` (local: a symbolic link; S3: the fetched bytes)."""
        if self.fs is None:
            os.symlink(os.path.abspath(self._path(name)), dest)
            return
        if self.size(name, record_id) is None:
            raise ReadError(record_id, f"signal file {name} is missing", error_type="missing_signal_file")
        with open(dest, "wb") as f:
            f.write(self._data.pop(name))


# ------------------------------------------------------------------------------------------ describe
@dataclass
class Described:
    """A record's header(s), parsed and checked, staged under ASCII names in a temporary folder.

    ``base`` is the staged record path wfdb reads; ``files`` maps each staged signal file name to the
    name the user wrote; ``fs`` and ``n_samples`` are those of the signal as ecgray reads it (a
    multi-frequency record at its highest rate); ``leads``/``units`` as written; ``bad_channels``
    see :attr:`ecgray.io.Record.bad_channels`."""

    base: str
    text: str
    hdr: object
    files: dict[str, str]
    fs: float
    n_samples: int | None
    leads: list[str]
    units: list[str]
    comments: list[str]
    bad_channels: dict[int, tuple[str, str]]
    spf: list[int]
    n_segments: int | None = None
    #: ``[(single-segment header, {staged name: bytes or None})]``: what :func:`check_files` checks
    sizes: list = None
    #: the largest skew (frames): wfdb reads skewed signals but leaves their last ``skew`` samples invalid,
    #: so ecgray drops the last ``skew`` samples of every channel (flag ``skew_trimmed``)
    skew: int = 0


def check_files(d: Described, record_id: str) -> None:
    """The size checks of every signal file of a described record (see :func:`check_signal_files`)."""
    for hdr, sizes in d.sizes or []:
        check_signal_files(hdr, sizes, record_id, d.files)


def _frame_multiple(spf: list[int]) -> int:
    """Samples per frame of the fastest signal: ecgray reads every signal at that rate."""
    return max(max(1, int(s or 1)) for s in spf) if spf else 1


def _n_samples(hdr, sizes: dict[str, int | None]) -> int | None:
    """Samples per channel at the frame rate: ``sig_len``, or from the file size when the header has none."""
    if hdr.sig_len is not None:
        return int(hdr.sig_len)
    files = signal_files(hdr)
    if len(files) != 1 or sizes.get(files[0]) is None or hdr.fmt[0] not in BYTES_PER_SAMPLE:
        return None
    per = BYTES_PER_SAMPLE[hdr.fmt[0]] * sum(int(s or 1) for s in hdr.samps_per_frame)
    offset = int((hdr.byte_offset or [0])[0] or 0)
    return int((sizes[files[0]] - offset) // per) if per else None


def rdheader(base: str, record_id: str, what: str = "header"):
    """:func:`wfdb.rdheader` on a staged record path; errors -> ReadError ``bad_header``."""
    try:
        return wfdb.rdheader(base)
    except FileNotFoundError:
        raise ReadError(record_id, f"{what} not found", error_type="missing_header") from None
    except Exception as e:  # wfdb raises ValueError, HeaderSyntaxError, IndexError, ... on garbage
        raise ReadError(record_id, f"cannot parse {what}: {type(e).__name__}: {e}", error_type="bad_header") from None


def _segment(src: Source, tmp: str, k: int, seg: str, record_id: str, sizes: dict, files: dict, named: set | None,
             layout: bool = False):
    """Stage and check segment ``seg`` (single-segment header) as ``s<k>``; returns ``(hdr, text)``."""
    what = f"segment header {seg}.hea"
    text = src.header(seg + ".hea", record_id, "segment header")
    check_text(text, record_id, what)
    if named is not None:
        named.update(named_files(text))
    if n_segments(text) is not None:
        raise ReadError(record_id, f"segment {seg} is itself a multi-segment record", error_type="unsupported_format")
    alias, hdr = _stage_single(src, tmp, f"s{k}", text, record_id, sizes, files, what, layout=layout)
    return hdr, text


def _stage_single(src: Source, tmp: str, alias: str, text: str, record_id: str, sizes: dict, files: dict,
                  what: str = "header", *, layout: bool = False):
    """Write the header under ASCII names and parse it; fills ``sizes``/``files`` for its signal files."""
    names = {}
    for name in named_files(text):
        ext = os.path.splitext(name)[1].lower()
        names[name] = f"{alias}_{len(names)}" + (ext if _SAFE_EXT.fullmatch(ext) else ".dat")
    with open(os.path.join(tmp, alias + ".hea"), "w", encoding="utf-8") as f:
        f.write(_alias_text(text, alias, names))
    hdr = rdheader(os.path.join(tmp, alias), record_id, what)
    if isinstance(hdr, wfdb.MultiRecord):
        raise ReadError(record_id, f"{what} is a multi-segment header", error_type="unsupported_format")
    check_header(hdr, text, record_id, layout=layout)
    for name, a in names.items():
        files[a] = name
        sizes[a] = src.size(name, record_id)
    return alias, hdr


def describe(src: Source, name: str, record_id: str, tmp: str, *, named: set | None = None,
             files_checked: bool = True) -> Described:
    """Parse and check the header ``<name>.hea`` in ``src`` (and its segments' headers), stage them in
    ``tmp`` under ASCII names and check the signal files' sizes -- everything but reading samples.
    ``named`` collects the files the header(s) name, even when a check fails; ``files_checked=False``
    leaves the signal files' checks to :func:`check_files`."""
    text = src.header(name + ".hea", record_id)
    if named is not None:
        named.update(named_files(text))
    check_text(text, record_id)
    sizes: dict[str, int | None] = {}
    files: dict[str, str] = {}
    nseg = n_segments(text)
    if nseg is None:
        alias, hdr = _stage_single(src, tmp, "r", text, record_id, sizes, files)
        units, names = _units_and_names(text)
        if text.isascii():
            units, names = list(hdr.units or units), list(hdr.sig_name)
        else:
            names = [n if n is not None else w for n, w in zip(names, hdr.sig_name)]
        spf = [int(s or 1) for s in (hdr.samps_per_frame or [1] * hdr.n_sig)]
        m = _frame_multiple(spf)
        n = _n_samples(hdr, sizes)
        skew = max_skew(hdr)
        if skew and any(x != 1 for x in spf):
            raise ReadError(record_id, "skewed multi-frequency records are not supported",
                            error_type="unsupported_format")
        d = Described(os.path.join(tmp, alias), text, hdr, files, float(hdr.fs) * m,
                      None if n is None else (n - skew) * m, names, units, comment_lines(text),
                      channel_problems(text, units, names), spf, sizes=[(hdr, sizes)], skew=skew)
        if files_checked:
            check_files(d, record_id)
        return d
    # multi-segment: the master header names segments (``~`` = a gap); a variable layout starts
    # with a layout segment of length 0 that holds the signal names and units
    seg_names = []
    for tokens in spec_lines(text)[1:]:
        seg_names.append(tokens[0])
    aliases = {s: (f"s{k}" if not s.startswith("~") else s) for k, s in enumerate(seg_names)}
    for k, seg in enumerate(seg_names):
        if not seg.startswith("~") and ("/" in seg or "\\" in seg or seg in (".", "..")):
            raise ReadError(record_id, f"segment name {seg!r} is not a plain name (a path: refused)",
                            error_type="bad_header")
    with open(os.path.join(tmp, "r.hea"), "w", encoding="utf-8") as f:
        f.write(_alias_text(text, "r", aliases))
    hdr = rdheader(os.path.join(tmp, "r"), record_id)
    if not isinstance(hdr, wfdb.MultiRecord) or not hdr.seg_name:
        raise ReadError(record_id, "multi-segment header lists no segments", error_type="bad_header")
    if hdr.fs is None or not hdr.n_sig:
        raise ReadError(record_id, "multi-segment header has no sampling frequency or signals", error_type="bad_header")
    segs, checks = [], []
    for k, seg in enumerate(seg_names):
        if seg.startswith("~"):
            continue
        s_hdr, s_text = _segment(src, tmp, k, seg, record_id, sizes, files, named,
                                 layout=k == 0 and int(hdr.seg_len[0]) == 0)
        checks.append((s_hdr, {a: sizes[a] for a in signal_files(s_hdr)}))
        if any(int(x or 1) != 1 for x in (s_hdr.samps_per_frame or [])):
            raise ReadError(record_id, f"segment {seg} has several samples per frame: multi-frequency "
                                       "multi-segment records are not supported", error_type="unsupported_format")
        if float(s_hdr.fs) != float(hdr.fs):
            raise ReadError(record_id, f"segment {seg} is at {s_hdr.fs} Hz, the record at {hdr.fs} Hz",
                            error_type="bad_header")
        segs.append((seg, s_hdr, s_text))
    if not segs:
        raise ReadError(record_id, "multi-segment record has no segments with signals", error_type="bad_header")
    # the channels as wfdb merges them: the layout segment's (variable layout), else the first segment's
    l_hdr, l_text = segs[0][1], segs[0][2]
    units, names = _units_and_names(l_text)
    if l_text.isascii():
        units, names = list(l_hdr.units or units), list(l_hdr.sig_name)
    bad: dict[int, tuple[str, str]] = {}
    for seg, s_hdr, s_text in segs:
        s_units, _ = _units_and_names(s_text)
        for i, prob in channel_problems(s_text, s_units, list(s_hdr.sig_name)).items():
            lead = s_hdr.sig_name[i]
            if lead in names and names.index(lead) not in bad:
                bad[names.index(lead)] = (prob[0], f"{prob[1]} (segment {seg})")
    for i, u in enumerate(units):
        if i not in bad and str(u).strip().lower() not in UNIT_SCALE:
            bad[i] = ("bad_units", f"signal {names[i]} has units {u!r}, not a voltage (want mV, uV or V)")
    n = int(hdr.sig_len) if hdr.sig_len is not None else int(sum(int(x) for x in hdr.seg_len))
    d = Described(os.path.join(tmp, "r"), text, hdr, files, float(hdr.fs), n, names, units,
                  comment_lines(text), bad, [1] * len(names), n_segments=nseg, sizes=checks)
    if files_checked:
        check_files(d, record_id)
    return d


# ------------------------------------------------------------------------------------------ read
def _unstaged(message: str, d: Described) -> str:
    """``message`` with the staged (temporary, aliased) file paths replaced by the names the user wrote."""
    folder = os.path.dirname(d.base)
    for alias in sorted(d.files, key=len, reverse=True):
        message = message.replace(os.path.join(folder, alias), d.files[alias]).replace(alias, d.files[alias])
    return message.replace(folder + os.sep, "")


def _physical_mv(d: Described, record_id: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The staged record's samples as float32 ``(n, channels)``: voltage channels in mV, others as
    written; a channel with several samples per frame at its own rate, the others brought to the highest
    rate with :func:`scipy.signal.resample_poly` (flag ``multi_frequency``)."""
    multi_freq = any(s != 1 for s in d.spf)
    try:
        rec = wfdb.rdrecord(d.base, physical=True, smooth_frames=not multi_freq)
    except PermissionError as e:
        raise ReadError(record_id, f"access denied to a signal file: {_unstaged(str(e), d)}",
                        error_type="access_denied") from None
    except Exception as e:
        raise ReadError(record_id, f"cannot read signal: {type(e).__name__}: {_unstaged(str(e), d)}",
                        error_type="unreadable") from None
    flags: tuple[str, ...] = ()
    n_sig = len(d.leads)
    if multi_freq:
        m = _frame_multiple(d.spf)
        chans = rec.e_p_signal
        if chans is None or len(chans) != n_sig:
            raise ReadError(record_id, f"signal has {0 if chans is None else len(chans)} channels, header says "
                                       f"{n_sig}", error_type="length_mismatch")
        cols = []
        for i, (x, s) in enumerate(zip(chans, d.spf)):
            x = np.asarray(x, dtype=np.float64)
            if d.hdr.sig_len is not None and x.shape[0] != int(d.hdr.sig_len) * s:
                raise ReadError(record_id, f"signal {d.leads[i]} has {x.shape[0]} samples, header says "
                                           f"{int(d.hdr.sig_len) * s}", error_type="length_mismatch")
            ratio = Fraction(m, s)  # e.g. 200/51: resample_poly takes any rational factor
            cols.append(x if s == m else resample_poly(x, ratio.numerator, ratio.denominator))
        sig = np.stack(cols, axis=1)
        if len(set(d.spf)) > 1:
            flags = ("multi_frequency",)
    else:
        sig = rec.p_signal
        if sig is None or sig.ndim != 2 or sig.shape[1] != n_sig:
            raise ReadError(record_id, f"signal has shape {getattr(sig, 'shape', None)}, header says {n_sig} "
                                       "signals", error_type="length_mismatch")
        want = None if d.n_samples is None else d.n_samples + d.skew
        if want is not None and sig.shape[0] != want:
            raise ReadError(record_id, f"signal has {sig.shape[0]} samples, header says {want}",
                            error_type="length_mismatch")
        if d.skew:
            if d.skew >= sig.shape[0]:
                raise ReadError(record_id, f"skew of {d.skew} samples leaves no samples of {sig.shape[0]}",
                                error_type="too_short")
            sig, flags = sig[: sig.shape[0] - d.skew], ("skew_trimmed",)
    scale = np.array([UNIT_SCALE.get(str(u).strip().lower(), 1.0) for u in d.units], dtype=np.float64)
    sig = np.asarray(sig, dtype=np.float64)
    if np.any(scale != 1.0):
        sig = sig * scale
    sig = np.array(sig, dtype=np.float32)
    for i, (kind, _) in d.bad_channels.items():
        if kind == "bad_gain":
            sig[:, i] = np.nan  # wfdb read it with gain 200: not a number anyone should use
    return np.ascontiguousarray(sig), flags


def make_record(d: Described, signal: np.ndarray, flags: tuple[str, ...], record_id: str, uri: str,
                parent: str) -> Record:
    """Assemble a :class:`Record` from a described record and its signal."""
    meta, dx = header_fields(d.comments)
    labels = from_dx(dx) if dx else Labels.none()
    meta["units"] = list(d.units)
    if any(s != 1 for s in d.spf):
        meta["samps_per_frame"] = list(d.spf)
    if d.n_segments is not None:
        meta["n_segments"] = d.n_segments
    return Record(
        record_id=record_id,
        uri=uri,
        format="wfdb",
        signal=signal,
        fs=float(d.fs),
        leads=tuple(str(n) for n in d.leads),
        labels=labels,
        dataset=guess_dataset(record_id, parent, labels.scheme),
        meta=meta,
        flags=flags,
        bad_channels=dict(d.bad_channels),
    )


def read_wfdb(uri: str, record_id: str | None = None) -> Record:
    """Read a WFDB record (local path or ``s3://``), see the module docstring."""
    base_uri = record_base(uri)
    if is_s3(base_uri):
        fs, path = open_fs(base_uri)
        folder, name = posixpath.split(path)
        src = Source(folder, fs, uri_folder=posixpath.dirname(base_uri))
        parent = posixpath.basename(folder)
    else:
        base = os.path.abspath(base_uri)
        folder, name = os.path.split(base)
        src = Source(folder)
        parent = os.path.basename(folder)
    rid = record_id or name
    with tempfile.TemporaryDirectory(prefix="ecgray-wfdb-") as tmp:
        d = describe(src, name, rid, tmp)
        for alias, orig in d.files.items():
            src.stage(orig, os.path.join(tmp, alias), rid)
        signal, flags = _physical_mv(d, rid)
    return make_record(d, signal, flags, rid, base_uri, parent)
