"""Catalog: one row per record of a folder or S3 prefix, without reading signals.

* WFDB: every ``*.hea`` is read (on S3 in concurrent batches of
  :data:`HEADER_CHUNK`), staged under ASCII names and parsed with
  :func:`wfdb.rdheader` (:func:`ecgray.io.wfdb.describe`); the signal files are
  checked against the listing (present, size the header implies) but not read.
  A multi-segment record is *one* row: the headers its master header names as
  segments (and a variable layout's layout header) are parts of it, not records.
  Every file a header names counts as named *whether or not the header passes
  its checks*, so a failing header never makes its signal files look like
  header-less records.
* HDF5 (``*.hdf5``, ``*.h5``, ``*.hdf``): one row per exam, from the shape
  of ``tracings`` and ``exam_id`` only; ``uri`` is ``file.hdf5#row`` for
  multi-exam files. EDF/EDF+ (``*.edf``): one row per file, from its header.
* Records that cannot be described are *kept*, with ``error`` (message) and
  ``error_type`` set and whatever could be read filled in; ``error`` is null
  for good rows. Route rows with an error to the errors table. This includes
  things that look like records but are not: a directory named ``X.hea``,
  ``X.hdf5`` or ``X.edf`` (``not_a_record``), and a signal file
  (``.dat``/``.mat``) that no header names and that has no ``.hea`` of its own
  name (``missing_header``: a record whose header was lost).
* **Skipped, and named**: hidden files and folders (``.*``: ``.DS_Store``,
  ``._*`` debris, ``.git/``, but also a record named ``..%2Fx.hea``) and files
  that are not records (``.csv``, ``.txt``, images, annotation files). They are
  in no row; :func:`skipped_files` returns them (``path`` relative to the
  input, ``reason`` ``hidden`` / ``not_a_record``), from the table's schema
  metadata; ``ecgray catalog`` prints them, ``ecgray run`` logs them and keeps
  them in ``_manifest.json`` (``skipped``).
* Rows are sorted by ``record_id`` (then ``uri``); local ``uri`` values are
  absolute paths, S3 ones ``s3://bucket/key``. ``record_key`` (:func:`record_key`)
  is the record's path relative to the input root (``site_a/X``,
  ``exams.hdf5#12``): unique within an input, so it is the key every output
  table and every join uses; ``record_id`` is the display name and may repeat
  across folders. ``recursive=False`` looks at the top folder only.
* Labels: the header's, or ``labels_csv``'s for the records it lists (as in
  :func:`ecgray.io.read_record`). A record with neither (MIMIC-IV-ECG style:
  no ``#Dx``, not in the CSV) has ``label_scheme`` ``"none"`` and null
  ``label_*`` / ``label_normal`` (unknown, not False).
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from typing import Iterable

import pyarrow as pa

from ecgray.errors import ECGError, ReadError
from ecgray.io.code15 import describe_hdf5
from ecgray.io.fs import is_s3, open_fs, to_uri
from ecgray.io.labels import Labels, LabelTable, from_dx, read_labels_csv
from ecgray.io.labels import resolve_labels
from ecgray.io import wfdb as wfdb_io
from ecgray.io.wfdb_header import (decode_header, guess_dataset, header_fields, n_segments, named_files,
                                   record_line_facts)
from ecgray.models.ribeiro2020 import CLASSES, LEADS

LABEL_COLUMNS = tuple(f"label_{c}" for c in CLASSES)

CATALOG_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("record_key", pa.string()),
        ("uri", pa.string()),
        ("format", pa.string()),
        ("dataset", pa.string()),
        ("fs", pa.float64()),
        ("n_samples", pa.int64()),
        ("n_leads", pa.int32()),
        ("leads", pa.list_(pa.string())),
        *[(name, pa.bool_()) for name in LABEL_COLUMNS],
        ("label_normal", pa.bool_()),
        ("raw_codes", pa.list_(pa.string())),
        ("label_scheme", pa.string()),
        ("error", pa.string()),
        ("error_type", pa.string()),
    ]
)

HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf")
EDF_SUFFIXES = (".edf",)  # matched case-insensitively, like the others


def _label_fields(labels: Labels | None) -> dict:
    if labels is None:
        out = {name: None for name in LABEL_COLUMNS}
        out.update(label_normal=None, raw_codes=None, label_scheme=None)
        return out
    known = labels.scheme != "none"  # no labels at all (no #Dx, no labels CSV row): null, not False
    out = {f"label_{c}": bool(labels.classes.get(c, False)) if known else None for c in CLASSES}
    out.update(label_normal=bool(labels.normal) if known else None, raw_codes=list(labels.raw),
               label_scheme=labels.scheme)
    return out


def record_key(uri: str, root: str) -> str:
    """The key of the record at ``uri`` within the input ``root``: its path relative to the root
    (WFDB: without extension, ``site_a/X``; HDF5 exams keep the ``#row`` fragment,
    ``exams.hdf5#12``). When ``root`` names the record itself (one file or one WFDB record), the key
    is its base name; a URI outside ``root`` keeps its full URI. Unique within one input, stable as
    the input grows.
    """
    uri, root = str(uri), str(root)
    if is_s3(root):
        root = root.rstrip("/")
    else:
        root = os.path.abspath(root)
        if root.lower().endswith(".hea"):
            root = root[:-4]
    if uri == root or uri.startswith(root + "#"):
        return posixpath.basename(root) + uri[len(root):]
    if uri.startswith(root.rstrip("/") + "/"):
        return uri[len(root.rstrip("/")) + 1:]
    return uri


def _row(record_id: str, uri: str, fmt: str, **kw) -> dict:
    row = {"record_id": record_id, "record_key": None, "uri": uri, "format": fmt, "dataset": None, "fs": None, "n_samples": None,
           "n_leads": None, "leads": None, "error": None, "error_type": None}
    row.update(_label_fields(kw.pop("labels", None)))
    row.update(kw)
    return row


def _error(row: dict, e: ECGError) -> dict:
    row["error"] = str(e)
    row["error_type"] = e.error_type
    return row


SIGNAL_SUFFIXES = (".dat", ".mat")
#: schema-metadata key of the catalog's skipped files (:func:`skipped_files`)
SKIPPED_KEY = b"ecgray.skipped"
RECORD_SUFFIXES = (".hea",) + HDF5_SUFFIXES + EDF_SUFFIXES


def _listing(fs, path: str, recursive: bool) -> tuple[dict[str, int | None], list[str], str | None, list[str]]:
    """``({path: size}, dirs, only, hidden)``: the files under ``path``, the directories whose names look
    like records (``X.hea/``, ``X.hdf5/``), when ``path`` names one WFDB record (with or without
    ``.hea``) that record's header path, and the hidden files and folders skipped (``.*``; a hidden
    folder once, not each file in it), as paths relative to ``path``."""
    head = path if path.lower().endswith(".hea") else path + ".hea"
    if fs.isfile(head):
        folder = posixpath.dirname(head)
        found = fs.find(folder, maxdepth=1, detail=True)
        return {p: info.get("size") for p, info in found.items() if info.get("type", "file") == "file"}, [], head, []
    if fs.isfile(path):
        return {path: fs.size(path)}, [], None, []
    if not fs.isdir(path):
        raise FileNotFoundError(f"no such folder, prefix or file: {path}")
    found = fs.find(path, maxdepth=None if recursive else 1, detail=True, withdirs=True)
    root = path.rstrip("/")
    out, dirs, hidden = {}, [], set()
    for p, info in found.items():
        rel = p[len(root):].lstrip("/") if p.startswith(root) else p
        if not rel:
            continue
        parts = rel.split("/")
        hid = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        if hid is not None:
            hidden.add("/".join(parts[:hid + 1]))
            continue
        if info.get("islink"):  # local symlink: fsspec reports type "other"; follow it like open() does
            info = dict(info, type="file" if fs.isfile(p) else ("directory" if fs.isdir(p) else "other"))
            if info["type"] == "file":
                info["size"] = fs.size(p)
        if info.get("type", "file") != "file":
            if p.rstrip("/").lower().endswith(RECORD_SUFFIXES):
                dirs.append(p.rstrip("/"))
            continue
        out[p] = info.get("size")
    return out, sorted(dirs), None, sorted(hidden)


HEADER_CHUNK = 256  # headers fetched together (S3: one concurrent batch)


def _chunks(heads: list[str]) -> Iterable[list[str]]:
    """``heads`` (sorted) in chunks of about :data:`HEADER_CHUNK`, never splitting a folder (a multi-segment
    record's segment headers live in its folder)."""
    chunk: list[str] = []
    for h in heads:
        if len(chunk) >= HEADER_CHUNK and posixpath.dirname(h) != posixpath.dirname(chunk[-1]):
            yield chunk
            chunk = []
        chunk.append(h)
    if chunk:
        yield chunk


def _wfdb_rows(uri_root: str, fs, heads: list[str], files: dict, table: LabelTable | None,
               referenced: set | None = None) -> list[dict]:
    """One row per record header; the files the headers name (signal files, segment headers: whether or
    not the header passes its checks) are added to ``referenced``. A header that a multi-segment
    header in its folder names as a segment is part of that record, not a record of its own."""
    s3 = is_s3(uri_root)
    referenced = set() if referenced is None else referenced
    by_folder: dict[str, dict[str, int | None]] = {}
    for p, size in files.items():
        folder, fname = posixpath.split(p)
        by_folder.setdefault(folder, {})[fname] = size
    rows = []
    for chunk in _chunks(heads):
        if s3:
            texts = fs.cat(chunk, on_error="return")
        else:
            texts = {}
            for h in chunk:
                try:
                    with open(h, "rb") as f:
                        texts[h] = f.read()
                except Exception as e:  # noqa: BLE001 - the record's row says what went wrong
                    texts[h] = e
        segments = set()
        for h in chunk:
            data = texts.get(h)
            if isinstance(data, bytes):
                text = decode_header(data)
                if n_segments(text) is not None:
                    segments.update(posixpath.join(posixpath.dirname(h), n) for n in named_files(text))
        with tempfile.TemporaryDirectory(prefix="ecgray-cat-") as tmp:  # one per chunk: cheaper than per row
            for i, h in enumerate(chunk):
                if h in segments:
                    continue
                stage = os.path.join(tmp, str(i))
                os.mkdir(stage)
                rows.append(_wfdb_row(uri_root, fs if s3 else None, h, texts.get(h, FileNotFoundError(h)),
                                      by_folder, table, referenced, stage))
        referenced.update(segments)
    return rows


def _wfdb_row(uri_root: str, fs, hea: str, data, by_folder: dict, table: LabelTable | None,
              referenced: set, tmp: str) -> dict:
    base = hea[:-4]
    folder, name = posixpath.split(base)
    row = _row(name, to_uri(uri_root, base), "wfdb", dataset=posixpath.basename(folder) or None)
    src = wfdb_io.Source(folder, fs, sizes=by_folder.get(folder, {}), headers={name + ".hea": data},
                         uri_folder=posixpath.dirname(to_uri(uri_root, base)))
    named: set[str] = set()
    try:
        d = wfdb_io.describe(src, name, name, tmp, named=named, files_checked=False)
        meta, dx = header_fields(d.comments)
        header_labels = from_dx(dx) if dx else Labels.none()
        row.update(  # header facts, kept when a signal file check fails below
            dataset=guess_dataset(name, posixpath.basename(folder), header_labels.scheme),
            fs=float(d.fs), n_samples=d.n_samples, n_leads=len(d.leads), leads=[str(s) for s in d.leads],
        )
        labels, _ = resolve_labels(header_labels, [name], None, table)
        row.update(_label_fields(labels))
        wfdb_io.check_files(d, name)
    except ECGError as e:
        _error(row, e)
    except Exception as e:  # never drop a record: an unexpected failure is an error row too
        _error(row, ReadError(name, f"{type(e).__name__}: {e}", error_type="unreadable"))
    if row["error"] and row["fs"] is None and isinstance(data, bytes):  # what the record line still tells
        facts = record_line_facts(decode_header(data))
        row.update(fs=facts["fs"], n_samples=facts["sig_len"], n_leads=facts["n_sig"])
    referenced.update(posixpath.join(folder, n) for n in named)
    return row


def _hdf5_rows(uri_root: str, paths: list[str], table: LabelTable | None) -> list[dict]:
    rows = []
    for p in paths:
        uri = to_uri(uri_root, p)
        stem = os.path.splitext(posixpath.basename(p))[0]
        try:
            exams = describe_hdf5(uri)
        except ECGError as e:
            rows.append(_error(_row(stem, uri, "code15", dataset="code15"), e))
            continue
        except Exception as e:  # never drop a file silently
            err = ReadError(stem, f"{type(e).__name__}: {e}", error_type="unreadable")
            rows.append(_error(_row(stem, uri, "code15", dataset="code15"), err))
            continue
        for ex in exams:
            row = _row(ex["record_id"], ex["uri"], "code15", dataset="code15", fs=ex["fs"],
                       n_samples=ex["n_samples"], n_leads=ex["n_leads"],
                       leads=list(LEADS), labels=Labels.none())
            try:
                labels, _ = resolve_labels(Labels.none(), [ex["record_id"]],
                                           ex["row"] if ex["n_exams"] > 1 else None, table)
                row.update(_label_fields(labels))
            except ECGError as e:
                _error(row, e)
            rows.append(row)
    return rows


def _edf_rows(uri_root: str, paths: list[str], table: LabelTable | None) -> list[dict]:
    """One row per EDF/EDF+ file (``format="edf"``), from its header and size only
    (:func:`ecgray.io.edf.describe_edf`); a file that cannot be described is an error row."""
    from ecgray.io.edf import describe_edf, stem

    rows = []
    for p in paths:
        uri = to_uri(uri_root, p)
        name = stem(p)
        row = _row(name, uri, "edf", dataset=posixpath.basename(posixpath.dirname(p)) or "unknown")
        try:
            d = describe_edf(uri)
            row.update(dataset=d["dataset"], fs=d["fs"], n_samples=d["n_samples"], n_leads=d["n_leads"],
                       leads=d["leads"])
            labels, _ = resolve_labels(Labels.none(), [name], None, table)
            row.update(_label_fields(labels))
        except ECGError as e:
            _error(row, e)
        except Exception as e:  # never drop a file silently
            _error(row, ReadError(name, f"{type(e).__name__}: {e}", error_type="unreadable"))
        rows.append(row)
    return rows


def _not_records(uri_root: str, dirs: list[str]) -> list[dict]:
    """Error rows for directories named like records (``X.hea/``, ``X.hdf5/``, ``X.edf/``)."""
    rows = []
    kinds = {".hea": ("wfdb", "header"), ".edf": ("edf", "EDF")}
    for d in dirs:
        name, ext = posixpath.splitext(posixpath.basename(d))
        fmt, what = kinds.get(ext.lower(), ("code15", "HDF5"))
        err = ReadError(name, f"{to_uri(uri_root, d)} is a directory, not a {what} file", error_type="not_a_record")
        rows.append(_error(_row(name, to_uri(uri_root, d), fmt), err))
    return rows


def _orphans(uri_root: str, files: dict, heads: list[str], referenced: set[str]) -> list[dict]:
    """Error rows (``missing_header``) for signal files no header names (whether or not that header
    passes its checks) and without a header of their own name: records whose ``.hea`` is missing. One
    row per (folder, name) even with both .dat and .mat."""
    have = {h[:-4] for h in heads}
    seen: dict[str, list[str]] = {}
    for p in sorted(files):
        base, ext = posixpath.splitext(p)
        if ext.lower() in SIGNAL_SUFFIXES and p not in referenced and base not in have:
            seen.setdefault(base, []).append(posixpath.basename(p))
    rows = []
    for base, names in seen.items():
        name = posixpath.basename(base)
        err = ReadError(name, f"signal file {', '.join(names)} has no header {name}.hea (and no header names it)",
                        error_type="missing_header")
        rows.append(_error(_row(name, to_uri(uri_root, base), "wfdb"), err))
    return rows


def skipped_files(table: pa.Table) -> list[dict]:
    """The files the catalog that made ``table`` skipped: ``[{"path": relative path, "reason": "hidden" |
    "not_a_record"}]`` (from the table's schema metadata; empty for a table without it)."""
    meta = table.schema.metadata or {}
    raw = meta.get(SKIPPED_KEY)
    return json.loads(raw) if raw else []


def _not_record_files(root: str, files: dict, listed: set[str], referenced: set[str],
                      dirs: list[str] = ()) -> list[str]:
    """Files that are neither a record, nor part of one, nor an orphaned signal file (``.csv``, ``.txt``,
    images, annotation files ...), relative to ``root``; files inside a directory named like a record
    (already an error row, ``not_a_record``) are not listed again."""
    base = root.rstrip("/")
    inside = tuple(d.rstrip("/") + "/" for d in dirs)
    out = []
    for p in sorted(files):
        low = p.lower()
        if p in listed or p in referenced or low.endswith(RECORD_SUFFIXES) or low.endswith(SIGNAL_SUFFIXES):
            continue
        if inside and p.startswith(inside):
            continue
        out.append(p[len(base):].lstrip("/") if p.startswith(base) else p)
    return out


def catalog(path_or_s3_prefix: str, *, labels_csv: str | None = None, recursive: bool = True) -> pa.Table:
    """List the records under a local folder or S3 prefix as a :class:`pyarrow.Table`
    (schema :data:`CATALOG_SCHEMA`), reading headers/shapes only. See the module docstring."""
    root = str(path_or_s3_prefix)
    fs, path = open_fs(root)
    files, dirs, only, hidden = _listing(fs, path, recursive)
    table = read_labels_csv(labels_csv) if labels_csv else None
    if only is not None:
        heads, h5s = [only], []
    else:
        heads = sorted(p for p in files if p.lower().endswith(".hea"))
        h5s = sorted(p for p in files if p.lower().endswith(HDF5_SUFFIXES))
    referenced: set[str] = set()
    rows = _wfdb_rows(root, fs, heads, files, table, referenced) + _hdf5_rows(root, h5s, table)
    rows += _edf_rows(root, [] if only else sorted(p for p in files if p.lower().endswith(EDF_SUFFIXES)), table)
    if only is None:
        rows += _not_records(root, dirs) + _orphans(root, files, heads, referenced)
    skipped = [{"path": p, "reason": "hidden"} for p in hidden]
    if only is None:
        listed = set(heads) | set(h5s) | {r["uri"] for r in rows}
        skipped += [{"path": p, "reason": "not_a_record"}
                    for p in _not_record_files(path, files, listed, referenced, dirs)]
    for r in rows:
        r["record_key"] = record_key(r["uri"], root)
    rows.sort(key=lambda r: (r["record_id"], r["uri"]))
    schema = CATALOG_SCHEMA.with_metadata({SKIPPED_KEY: json.dumps(sorted(skipped, key=lambda x: x["path"]))})
    return pa.Table.from_pylist(rows, schema=schema)
