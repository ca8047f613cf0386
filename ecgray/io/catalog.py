"""Catalog: one row per record of a folder or S3 prefix, without reading signals.

* WFDB: every ``*.hea`` is parsed with :func:`wfdb.rdheader` (on S3 the
  headers are fetched in one concurrent batch and parsed from a temporary
  copy); the signal files are checked against the listing (present, size the
  header implies) but not read.
* HDF5 (``*.hdf5``, ``*.h5``, ``*.hdf``): one row per exam, from the shape
  of ``tracings`` and ``exam_id`` only; ``uri`` is ``file.hdf5#row`` for
  multi-exam files.
* Records that cannot be described are *kept*, with ``error`` (message) and
  ``error_type`` set and whatever could be read filled in; ``error`` is null
  for good rows. Route rows with an error to the errors table. This includes
  things that look like records but are not: a directory named ``X.hea`` or
  ``X.hdf5`` (``not_a_record``), and a signal file (``.dat``/``.mat``) that no
  header names and that has no ``.hea`` of its own name (``missing_header``:
  a record whose header was lost). Other files (``.csv``, ``.txt``, images,
  annotation files) are not records and are not listed.
* Rows are sorted by ``record_id`` (then ``uri``); local ``uri`` values are
  absolute paths, S3 ones ``s3://bucket/key``. ``record_key`` (:func:`record_key`)
  is the record's path relative to the input root (``site_a/X``,
  ``exams.hdf5#12``): unique within an input, so it is the key every output
  table and every join uses; ``record_id`` is the display name and may repeat
  across folders. Hidden files/folders (``.*``)
  are skipped. ``recursive=False`` looks at the top folder only.
* Labels: the header's, or ``labels_csv``'s for the records it lists (as in
  :func:`ecgray.io.read_record`).
"""
from __future__ import annotations

import os
import posixpath
import tempfile

import pyarrow as pa

from ecgray.errors import ECGError, ReadError
from ecgray.io.code15 import describe_hdf5
from ecgray.io.fs import is_s3, open_fs, to_uri
from ecgray.io.labels import Labels, LabelTable, from_dx, read_labels_csv
from ecgray.io.record import resolve_labels
from ecgray.io import wfdb as wfdb_io
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


def _label_fields(labels: Labels | None) -> dict:
    if labels is None:
        out = {name: None for name in LABEL_COLUMNS}
        out.update(label_normal=None, raw_codes=None, label_scheme=None)
        return out
    out = {f"label_{c}": bool(labels.classes.get(c, False)) for c in CLASSES}
    out.update(label_normal=bool(labels.normal), raw_codes=list(labels.raw), label_scheme=labels.scheme)
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
RECORD_SUFFIXES = (".hea",) + HDF5_SUFFIXES


def _listing(fs, path: str, recursive: bool) -> tuple[dict[str, int | None], list[str], str | None]:
    """``({path: size}, dirs, only)``: the files under ``path``, the directories whose names look like
    records (``X.hea/``, ``X.hdf5/``) and, when ``path`` names one WFDB record (with or without
    ``.hea``), that record's header path."""
    head = path if path.lower().endswith(".hea") else path + ".hea"
    if fs.isfile(head):
        folder = posixpath.dirname(head)
        found = fs.find(folder, maxdepth=1, detail=True)
        return {p: info.get("size") for p, info in found.items() if info.get("type", "file") == "file"}, [], head
    if fs.isfile(path):
        return {path: fs.size(path)}, [], None
    if not fs.isdir(path):
        raise FileNotFoundError(f"no such folder, prefix or file: {path}")
    found = fs.find(path, maxdepth=None if recursive else 1, detail=True, withdirs=True)
    root = path.rstrip("/")
    out, dirs = {}, []
    for p, info in found.items():
        rel = p[len(root):].lstrip("/") if p.startswith(root) else p
        if not rel or any(part.startswith(".") for part in rel.split("/")):
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
    return out, sorted(dirs), None


def _n_samples(hdr, sizes: dict) -> int | None:
    if hdr.sig_len is not None:
        return int(hdr.sig_len)
    files = wfdb_io.signal_files(hdr)
    if len(files) != 1 or sizes.get(files[0]) is None or hdr.fmt[0] not in wfdb_io.BYTES_PER_SAMPLE:
        return None
    per = wfdb_io.BYTES_PER_SAMPLE[hdr.fmt[0]] * sum(int(s or 1) for s in hdr.samps_per_frame)
    offset = int((hdr.byte_offset or [0])[0] or 0)
    return int((sizes[files[0]] - offset) // per) if per else None


def _wfdb_rows(uri_root: str, fs, heads: list[str], files: dict, table: LabelTable | None,
               referenced: set | None = None) -> list[dict]:
    """One row per header; the signal file paths the headers name are added to ``referenced``."""
    s3 = is_s3(uri_root)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecgray-cat-") as tmp:
        texts = fs.cat(heads, on_error="return") if (s3 and heads) else {}
        for i, hea in enumerate(heads):
            base = hea[:-4]
            folder, name = posixpath.split(base)
            row = _row(name, to_uri(uri_root, base), "wfdb", dataset=posixpath.basename(folder) or None)
            try:
                if s3:
                    data = texts.get(hea)
                    if data is None:
                        raise ReadError(name, "header not found", error_type="missing_header")
                    if isinstance(data, BaseException):
                        raise wfdb_io.fetch_error(name, f"header {to_uri(uri_root, hea)}", data, "missing_header")
                    local = os.path.join(tmp, str(i), name)
                    os.makedirs(os.path.dirname(local))
                    with open(local + ".hea", "wb") as f:
                        f.write(data)
                    text = data.decode("latin-1")
                else:
                    local = base
                    text = wfdb_io.read_header_text(base, name)
                hdr = wfdb_io.rdheader(local, name)
                wfdb_io.check_header(hdr, text, name)
                meta, dx = wfdb_io.header_fields(hdr.comments or [])
                header_labels = from_dx(dx) if dx else Labels.none()
                sizes = {fn: files.get(posixpath.join(folder, fn)) for fn in wfdb_io.signal_files(hdr)}
                if referenced is not None:
                    referenced.update(posixpath.join(folder, fn) for fn in sizes)
                row.update(
                    dataset=wfdb_io.guess_dataset(name, posixpath.basename(folder), header_labels.scheme),
                    fs=float(hdr.fs), n_samples=_n_samples(hdr, sizes), n_leads=int(hdr.n_sig),
                    leads=[str(s) for s in hdr.sig_name],
                )
                row.update(_label_fields(header_labels))
                labels, _ = resolve_labels(header_labels, [name], None, table)
                row.update(_label_fields(labels))
                wfdb_io.check_signal_files(hdr, sizes, name)
            except ECGError as e:
                _error(row, e)
            except Exception as e:  # never drop a record: an unexpected failure is an error row too
                _error(row, ReadError(name, f"{type(e).__name__}: {e}", error_type="unreadable"))
            rows.append(row)
    return rows


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


def _not_records(uri_root: str, dirs: list[str]) -> list[dict]:
    """Error rows for directories named like records (``X.hea/``, ``X.hdf5/``)."""
    rows = []
    for d in dirs:
        name, ext = posixpath.splitext(posixpath.basename(d))
        fmt = "wfdb" if ext.lower() == ".hea" else "code15"
        err = ReadError(name, f"{to_uri(uri_root, d)} is a directory, not a {'header' if fmt == 'wfdb' else 'HDF5'} "
                              "file", error_type="not_a_record")
        rows.append(_error(_row(name, to_uri(uri_root, d), fmt), err))
    return rows


def _orphans(uri_root: str, files: dict, heads: list[str], referenced: set[str]) -> list[dict]:
    """Error rows (``missing_header``) for signal files no header names and without a header of their own
    name: records whose ``.hea`` is missing. One row per (folder, name) even with both .dat and .mat."""
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


def catalog(path_or_s3_prefix: str, *, labels_csv: str | None = None, recursive: bool = True) -> pa.Table:
    """List the records under a local folder or S3 prefix as a :class:`pyarrow.Table`
    (schema :data:`CATALOG_SCHEMA`), reading headers/shapes only. See the module docstring."""
    root = str(path_or_s3_prefix)
    fs, path = open_fs(root)
    files, dirs, only = _listing(fs, path, recursive)
    table = read_labels_csv(labels_csv) if labels_csv else None
    if only is not None:
        heads, h5s = [only], []
    else:
        heads = sorted(p for p in files if p.lower().endswith(".hea"))
        h5s = sorted(p for p in files if p.lower().endswith(HDF5_SUFFIXES))
    referenced: set[str] = set()
    rows = _wfdb_rows(root, fs, heads, files, table, referenced) + _hdf5_rows(root, h5s, table)
    if only is None:
        rows += _not_records(root, dirs) + _orphans(root, files, heads, referenced)
    for r in rows:
        r["record_key"] = record_key(r["uri"], root)
    rows.sort(key=lambda r: (r["record_id"], r["uri"]))
    return pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)
