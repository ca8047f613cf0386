"""WFDB header text and header checks: the pure functions behind :mod:`ecgray.io.wfdb`.

Parsing the decoded header text (wfdb's own parse is ASCII-only), the files a header names, the
staging aliases, units and lead names, ``Key: value`` comments, data-set names, the checks a header
must pass and the sizes its signal files must have. No file is opened here.
"""
from __future__ import annotations

import re

import numpy as np
from wfdb.io._signal import BYTES_PER_SAMPLE, COMPRESSED_FMTS, _required_byte_num

from ecgray.errors import ReadError
from ecgray.units import UNIT_SCALE  # the one table of units

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
_SAFE_EXT = re.compile(r"\.[a-z0-9]{1,8}")
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
    """Signal file names of a (single-segment) header, in order, without repeats (``~`` = none)."""
    out: list[str] = []
    for name in hdr.file_name or []:
        if name and name != "~" and name not in out:
            out.append(name)
    return out


# ------------------------------------------------------------------------------------------ header text
def decode_header(data: bytes) -> str:
    """Header bytes as text: UTF-8 when they are valid UTF-8 (non-ASCII record names, units such as
    ``µV``), else latin-1 (any byte decodes)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def spec_lines(text: str) -> list[list[str]]:
    """The header's non-comment lines, split into tokens (record line first)."""
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def comment_lines(text: str) -> list[str]:
    """The header's comment lines, without the leading ``#`` (from the decoded text: wfdb reads headers
    as ASCII and drops every other character)."""
    return [ln.lstrip()[1:].strip() for ln in text.splitlines() if ln.lstrip().startswith("#")]


def n_segments(text: str) -> int | None:
    """Number of segments of a multi-segment header (record line ``name/n``), None for a single segment."""
    lines = spec_lines(text)
    if not lines or "/" not in lines[0][0]:
        return None
    m = re.match(r"^\d+$", lines[0][0].split("/", 1)[1])
    return int(m.group(0)) if m else None


def named_files(text: str) -> list[str]:
    """The files a header names, from its text alone (so even a header that fails its checks claims
    them): signal file names of a single-segment header, ``<segment>.hea`` of a multi-segment one."""
    lines = spec_lines(text)
    if not lines:
        return []
    multi = n_segments(text) is not None
    out: list[str] = []
    for tokens in lines[1:]:
        name = tokens[0]
        if name.startswith("~") or "/" in name or "\\" in name or name in (".", ".."):
            continue
        name = name + ".hea" if multi else name
        if name not in out:
            out.append(name)
    return out


def _units_and_names(text: str) -> tuple[list[str], list[str | None]]:
    """Units and descriptions of the signal lines, parsed from the decoded text (wfdb's own parse drops
    non-ASCII characters: ``µV`` would become ``V``)."""
    units, names = [], []
    for tokens in spec_lines(text)[1:]:
        gain = tokens[2] if len(tokens) > 2 else ""
        units.append(gain.split("/", 1)[1] if "/" in gain else "mV")
        names.append(" ".join(tokens[8:]) if len(tokens) > 8 else None)
    return units, names


def _alias_text(text: str, record_alias: str, names: dict[str, str]) -> str:
    """The header with its record name replaced by ``record_alias`` and the first token of every other
    line replaced through ``names`` (signal files or segments); all else byte for byte as written."""
    out, first = [], True
    for ln in text.splitlines():
        stripped = ln.strip()
        if not stripped or stripped.startswith("#"):
            out.append(ln)
            continue
        lead = ln[: len(ln) - len(ln.lstrip())]
        tok, rest = (stripped.split(None, 1) + [""])[:2]
        if first:
            tok = record_alias + (tok[tok.index("/"):] if "/" in tok else "")
            first = False
        else:
            tok = names.get(tok, tok)
        out.append(f"{lead}{tok} {rest}".rstrip())
    return "\n".join(out) + "\n"


def record_line_facts(text: str) -> dict:
    """``{"n_sig", "fs", "sig_len"}`` from a header's record line, best effort (None where unreadable): what
    the catalog still shows for a record whose header fails a later check."""
    out = {"n_sig": None, "fs": None, "sig_len": None}
    lines = spec_lines(text)
    tok = lines[0] if lines else []
    for key, i, cast in (("n_sig", 1, int), ("fs", 2, float), ("sig_len", 3, int)):
        if len(tok) > i:
            m = _NUMBER.match(tok[i].split("/", 1)[0])
            try:
                out[key] = cast(float(m.group(0))) if m else None
            except (ValueError, OverflowError):
                out[key] = None
    return out


def check_text(text: str, record_id: str, what: str = "header") -> None:
    """Checks on the raw header text: not empty, no signal file named by a path."""
    if not text.strip():
        raise ReadError(record_id, f"{what} file is empty ({len(text)} bytes)", error_type="bad_header")
    for tokens in spec_lines(text)[1:]:
        name = tokens[0]
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ReadError(record_id, f"signal file name {name!r} is not a plain file name (a path: refused)",
                            error_type="bad_header")


def check_header(hdr, text: str, record_id: str, *, layout: bool = False) -> None:
    """Reject single-segment headers wfdb accepts but we cannot use (see module docstring); ``layout``:
    the header is a multi-segment record's layout segment (no signal files)."""
    if not hdr.n_sig or not hdr.sig_name or not hdr.file_name:
        raise ReadError(record_id, "header lists no signals", error_type="bad_header")
    if hdr.sig_name and all(not n for n in hdr.sig_name):
        raise ReadError(record_id, f"header's {hdr.n_sig} signal lines have no description field: no lead names",
                        error_type="bad_header")
    if len(hdr.sig_name) != hdr.n_sig or any(not n for n in hdr.sig_name):
        raise ReadError(record_id, f"header: {hdr.n_sig} signals but lead names {hdr.sig_name}", error_type="bad_header")
    if hdr.fs is None:
        raise ReadError(record_id, "header has no sampling frequency", error_type="bad_header")
    if not signal_files(hdr) and not layout:
        raise ReadError(record_id, "header names no signal files (every signal is '~'): a multi-segment "
                                   "record's layout header, not a record", error_type="not_a_record")
    for fmt, fname in zip(hdr.fmt or [], hdr.file_name):
        if fmt not in BYTES_PER_SAMPLE and not (fname == "~" and str(fmt) == "0"):  # "~": a null signal
            raise ReadError(record_id, f"unsupported WFDB sample format {fmt!r}", error_type="unsupported_format")


def channel_problems(text: str, units: list[str], names: list[str]) -> dict[int, tuple[str, str]]:
    """Channels whose values are not a voltage in known units: ``{index: (error_type, reason)}`` --
    ``bad_gain`` for ADC gain 0 written in the header (uncalibrated; wfdb would silently use 200),
    ``bad_units`` for units other than those in :data:`UNIT_SCALE`."""
    out: dict[int, tuple[str, str]] = {}
    for i, tokens in enumerate(spec_lines(text)[1:]):
        if len(tokens) >= 3:
            m = _NUMBER.match(tokens[2])
            if m and float(m.group(0)) == 0:
                out[i] = ("bad_gain", f"ADC gain 0 (uncalibrated) for signal {names[i] if i < len(names) else i}")
    for i, u in enumerate(units):
        if i not in out and str(u).strip().lower() not in UNIT_SCALE:
            out[i] = ("bad_units", f"signal {names[i]} has units {u!r}, not a voltage (want mV, uV or V)")
    return out


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
        extra = max_skew(hdr) * spf  # a skewed file may hold the skew's extra frames
        out[name] = (offset + _required_byte_num("read", fmt, n),
                     offset + _required_byte_num("write", fmt, n + extra))
    return out


def max_skew(hdr) -> int:
    """The largest skew (frames) of a single-segment header's signals (0 when none)."""
    return max([int(s or 0) for s in (getattr(hdr, "skew", None) or [])] or [0])


def check_signal_files(hdr, sizes: dict[str, int | None], record_id: str, shown: dict[str, str] | None = None) -> None:
    """Raise ``missing_signal_file``/``truncated``/``length_mismatch`` from the file sizes (``shown`` maps
    the names in ``hdr`` to the names the user wrote)."""
    shown = shown or {}
    for alias, bounds in expected_sizes(hdr).items():
        name = shown.get(alias, alias)
        size = sizes.get(alias)
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
