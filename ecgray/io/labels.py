"""Labels: map the codes of each data set to the six model classes.

A :class:`Labels` holds ``classes`` (one bool per model class, in
:data:`CLASSES` order), ``normal`` (healthy control), ``raw`` (the codes as
written, in order) and ``scheme``.

Schemes and mapping policy
--------------------------
* ``cpsc`` - CPSC 2018 abbreviations in ``#Dx:`` (``AF,RBBB``) or the numeric
  codes of ``REFERENCE.csv`` (1 Normal, 2 AF, 3 I-AVB, 4 LBBB, 5 RBBB, 6 PAC,
  7 PVC, 8 STD, 9 STE; turned into the abbreviations so that ``raw`` is the
  same from either source). I-AVB -> 1dAVb, RBBB, LBBB, AF; no SB/ST.
* ``snomed`` - SNOMED CT codes of the PhysioNet/CinC Challenge 2020/21
  (``#Dx:`` or ``# Dx:``, comma separated). 270492004 -> 1dAVb,
  59118001/713427006 -> RBBB, 164909002/733534002 -> LBBB, 426177001 -> SB,
  164889003 -> AF, 427084000 -> ST. Atrial flutter (164890007) and
  incomplete RBBB (713426002) are *not* mapped (kept in ``raw``).
  :func:`canonical` folds the Challenge's equivalent pairs
  (733534002->164909002, 713427006->59118001, 284470004->63593006,
  427172004->17338001); ``raw`` keeps the codes as written.
* ``ptbxl`` - ``scp_codes`` of ``ptbxl_database.csv`` (a dict literal, parsed
  with :func:`ast.literal_eval`, never ``eval``): 1AVB -> 1dAVb, CRBBB -> RBBB
  (IRBBB not), CLBBB -> LBBB, AFIB -> AF, SBRAD -> SB, STACH -> ST. Every key
  counts whatever its likelihood value.
* ``code15`` - a CSV with the six class columns (``gold_standard.csv``,
  CODE-15% ``exams.csv``), 0/1 or True/False.
* ``none`` - no labels: all classes False, ``normal`` False.

Another model's classes (its ``ModelSpec``) get their labels from these through
:func:`label_of`: a class named as one of :data:`CLASSES` or by its CPSC/PTB-XL code
(``I-AVB``, ``CLBBB``, ``AFIB``, ...), ``NORM``/``normal`` (the ``normal`` flag);
any other name is unknown (null in the tables), never False.

``normal`` (healthy control) is strict: the record carries the scheme's
normal code and *no other code* except ones compatible with a normal ECG.
cpsc: ``Normal`` only; snomed: sinus rhythm 426783006 only (sinus rhythm plus
anything else, e.g. PVC, is not a control); ptbxl: ``NORM`` present and
nothing but ``NORM``/``SR``; code15: the ``normal_ecg`` column when present,
else False (no positive class is not the same as a normal ECG).
"""
from __future__ import annotations

import ast
import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ecgray.errors import LabelError
from ecgray.models.ribeiro2020 import CLASSES

SCHEMES = ("cpsc", "snomed", "ptbxl", "code15", "none")

CPSC_NUMERIC = {"1": "Normal", "2": "AF", "3": "I-AVB", "4": "LBBB", "5": "RBBB",
                "6": "PAC", "7": "PVC", "8": "STD", "9": "STE"}
CPSC_TO_CLASS = {"I-AVB": "1dAVb", "IAVB": "1dAVb", "RBBB": "RBBB", "LBBB": "LBBB", "AF": "AF"}
CPSC_NORMAL = {"NORMAL"}

SNOMED_TO_CLASS = {
    "270492004": "1dAVb",
    "59118001": "RBBB", "713427006": "RBBB",
    "164909002": "LBBB", "733534002": "LBBB",
    "426177001": "SB",
    "164889003": "AF",
    "427084000": "ST",
}
SNOMED_EQUIVALENT = {"733534002": "164909002", "713427006": "59118001",
                     "284470004": "63593006", "427172004": "17338001"}
SNOMED_SINUS_RHYTHM = "426783006"
SNOMED_NORMAL = {SNOMED_SINUS_RHYTHM}

PTBXL_TO_CLASS = {"1AVB": "1dAVb", "CRBBB": "RBBB", "CLBBB": "LBBB", "AFIB": "AF",
                  "SBRAD": "SB", "STACH": "ST"}
PTBXL_NORMAL = {"NORM"}
PTBXL_NORMAL_COMPATIBLE = {"NORM", "SR"}


@dataclass
class Labels:
    """Labels of one record (see the module docstring for the policy)."""

    classes: dict[str, bool] = field(default_factory=lambda: {c: False for c in CLASSES})
    normal: bool = False
    raw: tuple[str, ...] = ()
    scheme: str = "none"

    @classmethod
    def none(cls) -> "Labels":
        """No labels: all False, scheme ``none``."""
        return cls()

    def vector(self) -> np.ndarray:
        """Bool vector in :data:`CLASSES` order."""
        return np.array([bool(self.classes.get(c, False)) for c in CLASSES], dtype=bool)

    def positives(self) -> tuple[str, ...]:
        """The classes that are True, in :data:`CLASSES` order."""
        return tuple(c for c in CLASSES if self.classes.get(c, False))


#: model class names that mean the record's ``normal`` label (healthy control), case-insensitively
NORMAL_CLASS_NAMES = ("normal", "norm", "normal_ecg")


def label_of(labels, name: str) -> bool | None:
    """The label of a model's class ``name`` for a record's labels: a class the readers know
    (:data:`CLASSES`, or its CPSC / PTB-XL code such as ``I-AVB``, ``CLBBB``, ``AFIB``) from
    ``labels.classes``; ``NORM`` / ``normal`` (:data:`NORMAL_CLASS_NAMES`) from ``labels.normal``;
    None (unknown) for any other name, and for every name when the record has no labels (scheme
    ``none``). ``labels``: :class:`Labels` or anything with ``classes``, ``normal`` and ``scheme``."""
    if labels.scheme == "none":
        return None
    key = str(name).strip()
    if key.lower() in NORMAL_CLASS_NAMES:
        return bool(labels.normal)
    cls = key if key in CLASSES else CPSC_TO_CLASS.get(key.upper()) or PTBXL_TO_CLASS.get(key.upper())
    if cls is None:
        return None
    return bool(labels.classes.get(cls, False))


def canonical(code: str) -> str:
    """Canonical form of a code: stripped; SNOMED equivalent pairs folded
    (733534002->164909002, 713427006->59118001, 284470004->63593006,
    427172004->17338001); other codes unchanged."""
    code = str(code).strip()
    return SNOMED_EQUIVALENT.get(code, code)


def split_codes(text: str | None) -> tuple[str, ...]:
    """Split a ``Dx`` value on commas (and semicolons), dropping blanks."""
    if not text:
        return ()
    return tuple(c.strip() for c in re.split(r"[,;]", text) if c.strip())


def detect_scheme(codes: Iterable[str]) -> str:
    """``snomed`` if every code is numeric, ``cpsc`` if any is not, ``none`` if empty."""
    codes = [c for c in codes if c]
    if not codes:
        return "none"
    if all(c.isdigit() for c in codes):
        return "snomed"
    return "cpsc"


def from_codes(codes: Iterable[str], scheme: str | None = None) -> Labels:
    """Build :class:`Labels` from raw codes of one scheme (detected when None)."""
    raw = tuple(str(c).strip() for c in codes if str(c).strip())
    if scheme is None:
        scheme = detect_scheme(raw)
    classes = {c: False for c in CLASSES}
    if scheme == "none" or not raw:
        return Labels(classes, False, raw, scheme if raw else "none")
    if scheme == "cpsc":
        keys = {c.upper() for c in raw}
        for k in keys:
            if k in CPSC_TO_CLASS:
                classes[CPSC_TO_CLASS[k]] = True
        normal = bool(keys & CPSC_NORMAL) and keys <= CPSC_NORMAL
    elif scheme == "snomed":
        keys = {canonical(c) for c in raw}
        for k in keys:
            if k in SNOMED_TO_CLASS:
                classes[SNOMED_TO_CLASS[k]] = True
        normal = bool(keys & SNOMED_NORMAL) and keys <= SNOMED_NORMAL
    elif scheme == "ptbxl":
        keys = {c.upper() for c in raw}
        for k in keys:
            if k in PTBXL_TO_CLASS:
                classes[PTBXL_TO_CLASS[k]] = True
        normal = bool(keys & PTBXL_NORMAL) and keys <= PTBXL_NORMAL_COMPATIBLE
    else:
        raise ValueError(f"unknown label scheme {scheme!r}")
    if any(classes.values()):
        normal = False
    return Labels(classes, normal, raw, scheme)


def from_dx(text: str | None) -> Labels:
    """Labels from the value of a header ``Dx`` line (scheme detected)."""
    return from_codes(split_codes(text))


def parse_scp_codes(text: str) -> dict[str, float]:
    """Parse a PTB-XL ``scp_codes`` cell, e.g. ``"{'NORM': 100.0, 'SR': 0.0}"``.

    Uses :func:`ast.literal_eval` (literals only, never ``eval``); anything
    that is not a dict of str -> number raises ``ValueError``.
    """
    value = ast.literal_eval(str(text).strip())
    if not isinstance(value, dict):
        raise ValueError(f"scp_codes is not a dict: {text!r}")
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"scp_codes entry {k!r}: {v!r} is not str -> number")
        out[k] = float(v)
    return out


def _truthy(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "1.0", "true", "t", "yes", "y"):
        return True
    if v in ("0", "0.0", "false", "f", "no", "n", ""):
        return False
    raise ValueError(f"not a 0/1 label: {value!r}")


def _id_key(value: str) -> str:
    """Normalise an id cell: ``'123.0'`` -> ``'123'``; strings stripped."""
    v = str(value).strip()
    try:
        f = float(v)
    except ValueError:
        return v
    if math.isfinite(f) and f == int(f):
        return str(int(f))
    return v


class LabelTable:
    """Labels from a CSV, looked up by record id (or by HDF5 row).

    ``scheme`` is ``cpsc`` (REFERENCE.csv), ``ptbxl`` (ptbxl_database.csv) or
    ``code15`` (six class columns). PTB-XL rows are found by ``ecg_id``, by the
    base name of ``filename_lr``/``filename_hr`` (``00001_lr``) and, failing
    that, by the number in the record id (``HR00001`` -> 1). A code15 CSV with
    an ``exam_id``/``record_id``/``id`` column is keyed by it; without one, row
    *i* of the CSV labels row *i* of a multi-exam HDF5 file (the layout of
    ``ecg_tracings.hdf5`` + ``gold_standard.csv``).
    """

    def __init__(self, uri: str, scheme: str, by_id: dict, by_row: list | None = None):
        self.uri = uri
        self.scheme = scheme
        self.by_id = by_id
        self.by_row = by_row

    def __len__(self) -> int:
        return len(self.by_id) if self.by_row is None else len(self.by_row)

    def lookup(self, record_id: str, row: int | None = None) -> Labels | None:
        """Labels of a record, None when the CSV does not list it.

        Raises :class:`LabelError` when the CSV row exists but cannot be parsed.
        """
        if self.by_row is not None:
            hit = self.by_row[row] if row is not None and 0 <= row < len(self.by_row) else None
        else:
            hit = self.by_id.get(_id_key(record_id))
            if hit is None and self.scheme == "ptbxl":
                m = re.search(r"(\d+)", str(record_id))
                if m:
                    hit = self.by_id.get(str(int(m.group(1))))
        if isinstance(hit, LabelError):
            raise LabelError(record_id, hit.reason, error_type=hit.error_type)
        return hit


def _rows(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    return header, list(reader)


def parse_labels_csv(text: str, uri: str = "<labels_csv>") -> LabelTable:
    """Parse a labels CSV (format detected from its columns, see :class:`LabelTable`)."""
    header, rows = _rows(text.lstrip("\ufeff"))
    cols = set(header)
    if {"Recording", "First_label"} <= cols:
        by_id: dict = {}
        code_cols = [c for c in header if c.endswith("_label")]
        for r in rows:
            codes = []
            for c in code_cols:
                v = (r.get(c) or "").strip()
                if not v:
                    continue
                codes.append(CPSC_NUMERIC.get(_id_key(v), v))
            by_id[_id_key(r["Recording"])] = from_codes(codes, "cpsc")
        return LabelTable(uri, "cpsc", by_id)
    if {"ecg_id", "scp_codes"} <= cols:
        by_id = {}
        for r in rows:
            key = _id_key(r["ecg_id"])
            try:
                lab: Labels | LabelError = from_codes(parse_scp_codes(r["scp_codes"]).keys(), "ptbxl")
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
                lab = LabelError(key, f"cannot parse scp_codes {r['scp_codes']!r}: {e}", error_type="bad_scp_codes")
            by_id[key] = lab
            for c in ("filename_lr", "filename_hr"):
                if r.get(c):
                    by_id[os.path.basename(r[c].strip())] = lab
        return LabelTable(uri, "ptbxl", by_id)
    if set(CLASSES) <= cols:
        id_col = next((c for c in ("exam_id", "record_id", "id") if c in cols), None)
        by_id, by_row = {}, []
        for i, r in enumerate(rows):
            key = _id_key(r[id_col]) if id_col else str(i)
            try:
                classes = {c: _truthy(r[c]) for c in CLASSES}
                normal = _truthy(r["normal_ecg"]) if "normal_ecg" in cols else False
                lab = Labels(classes, normal and not any(classes.values()),
                             tuple(c for c in CLASSES if classes[c]) + (("normal_ecg",) if normal else ()),
                             "code15")
            except ValueError as e:
                lab = LabelError(key, f"bad label value in row {i}: {e}", error_type="bad_label_value")
            by_id[key] = lab
            by_row.append(lab)
        return LabelTable(uri, "code15", by_id, None if id_col else by_row)
    raise LabelError(uri, f"unknown labels CSV: columns {header[:12]} are not REFERENCE.csv "
                          "(Recording, First_label), ptbxl_database.csv (ecg_id, scp_codes) "
                          f"or {', '.join(CLASSES)}", error_type="bad_labels_csv")


_CACHE: dict = {}


def read_labels_csv(uri: str) -> LabelTable:
    """Read and parse a labels CSV (local or S3); cached per URI, endpoint and file version."""
    from ecgray.io.fs import open_fs, s3_endpoint

    fs, path = open_fs(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise LabelError(uri, f"labels CSV not found: {uri}", error_type="missing_labels_csv") from None
    key = (str(uri), s3_endpoint(), info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag")))
    hit = _CACHE.get(key)
    if hit is None:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        hit = parse_labels_csv(text, str(uri))
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = hit
    return hit


def resolve_labels(header: Labels, ids: list[str], row: int | None,
                   table: LabelTable | None) -> tuple[Labels, str]:
    """Pick labels: the CSV row when ``table`` lists the record (tried with each
    id in ``ids``), else the header's. Returns ``(labels, source)`` with source
    ``"csv"``, ``"header"`` or ``"none"``."""
    if table is not None:
        for rid in ids:
            hit = table.lookup(rid, row)
            if hit is not None:
                return hit, "csv"
    return header, ("none" if header.scheme == "none" else "header")
