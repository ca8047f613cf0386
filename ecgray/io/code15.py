"""CODE-15 style HDF5 exams (Ribeiro et al. 2020 test set, CODE-15%).

Layout: dataset ``tracings`` of shape ``(N, n_samples, 12)`` (or
``(n_samples, 12)``), already model input (400 Hz, leads DI, DII, DIII, AVR,
AVL, AVF, V1-V6, mV-scale); optional dataset ``exam_id`` of shape ``(N,)``.

Policy:

* ``file.hdf5`` names a single exam; a file with N > 1 rows needs a 0-based
  row fragment, ``file.hdf5#3``;
* the record id is ``str(exam_id[row])`` when ``exam_id`` exists, else the
  file stem (single exam) or ``<stem>_<row>``;
* the sampling rate is the ``fs`` attribute of ``tracings`` (or of the file)
  when present, else 400 Hz; lead names are the model's :data:`LEADS`;
* the data set is ``code15``.

Errors (:class:`ReadError`): ``missing_file``, ``bad_hdf5`` (not HDF5 /
unreadable), ``missing_dataset`` (no ``tracings``), ``bad_shape`` (not
``(N, n, 12)``), ``bad_index`` (bad or out-of-range ``#row``, or no row
given for a multi-exam file).
"""
from __future__ import annotations

import contextlib
import os
import posixpath

import h5py
import numpy as np

from ecgray.errors import ReadError
from ecgray.io.fs import is_s3, open_fs
from ecgray.io.labels import Labels
from ecgray.io.record import Record
from ecgray.models.ribeiro2020 import FS, LEADS

DATASET = "code15"
REMOTE_BLOCK_SIZE = 1 << 20


def split_fragment(uri: str) -> tuple[str, int | None]:
    """``'f.hdf5#3'`` -> ``('f.hdf5', 3)``; ``'f.hdf5'`` -> ``('f.hdf5', None)``."""
    uri = str(uri)
    if "#" not in uri:
        return uri, None
    base, frag = uri.rsplit("#", 1)
    try:
        row = int(frag)
    except ValueError:
        raise ReadError(_stem(base), f"bad row fragment #{frag!r} in {uri}", error_type="bad_index") from None
    if row < 0:
        raise ReadError(_stem(base), f"negative row #{row} in {uri}", error_type="bad_index")
    return base, row


def _stem(uri: str) -> str:
    name = posixpath.basename(uri) if is_s3(uri) else os.path.basename(uri)
    return os.path.splitext(name)[0]


@contextlib.contextmanager
def open_hdf5(uri: str):
    """Open an HDF5 file (local or S3, read-only) as :class:`h5py.File`; errors -> ReadError."""
    rid = _stem(uri)
    with contextlib.ExitStack() as stack:
        try:
            if is_s3(uri):
                fs, path = open_fs(uri)
                fobj = stack.enter_context(fs.open(path, "rb", block_size=REMOTE_BLOCK_SIZE, cache_type="readahead"))
                h5 = stack.enter_context(h5py.File(fobj, "r"))
            else:
                h5 = stack.enter_context(h5py.File(uri, "r"))
        except FileNotFoundError:
            raise ReadError(rid, f"HDF5 file not found: {uri}", error_type="missing_file") from None
        except Exception as e:
            raise ReadError(rid, f"cannot open HDF5 {uri}: {type(e).__name__}: {e}", error_type="bad_hdf5") from None
        yield h5


def _tracings(h5, rid: str):
    ds = h5.get("tracings")
    if not isinstance(ds, h5py.Dataset):
        raise ReadError(rid, f"no 'tracings' dataset (found {sorted(h5.keys())})", error_type="missing_dataset")
    if ds.ndim not in (2, 3) or ds.shape[-1] != len(LEADS) or ds.shape[-2] < 1:
        raise ReadError(rid, f"tracings has shape {ds.shape}, want (N, n_samples, 12)", error_type="bad_shape")
    return ds


def _fs(h5, ds) -> float:
    for attrs in (ds.attrs, h5.attrs):
        if "fs" in attrs:
            return float(np.asarray(attrs["fs"]).reshape(-1)[0])
    return float(FS)


def _exam_ids(h5, n: int) -> list[str] | None:
    ds = h5.get("exam_id")
    if not isinstance(ds, h5py.Dataset) or ds.shape != (n,):
        return None
    out = []
    for v in ds[()]:
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, (np.integer, int)) or (isinstance(v, (np.floating, float)) and float(v).is_integer()):
            v = int(v)
        out.append(str(v))
    return out


def record_id_for(stem: str, row: int, n: int, exam_ids: list[str] | None) -> str:
    """Record id of row ``row`` of a file with ``n`` rows (see module docstring)."""
    if exam_ids is not None:
        return exam_ids[row]
    return stem if n == 1 else f"{stem}_{row}"


def row_uri(base_uri: str, row: int, n: int) -> str:
    """URI of one exam: ``base`` for a single-exam file, ``base#row`` otherwise."""
    return base_uri if n == 1 else f"{base_uri}#{row}"


def describe_hdf5(uri: str) -> list[dict]:
    """One dict per exam (``row, record_id, uri, fs, n_samples, n_leads``), reading shapes and ``exam_id`` only."""
    stem = _stem(uri)
    with open_hdf5(uri) as h5:
        ds = _tracings(h5, stem)
        n = 1 if ds.ndim == 2 else ds.shape[0]
        fs = _fs(h5, ds)
        ids = _exam_ids(h5, n)
        return [{"row": i, "record_id": record_id_for(stem, i, n, ids), "uri": row_uri(uri, i, n), "fs": fs,
                 "n_samples": int(ds.shape[-2]), "n_leads": int(ds.shape[-1]), "n_exams": n}
                for i in range(n)]


def read_code15(uri: str) -> Record:
    """Read one exam (``file.hdf5`` or ``file.hdf5#row``) as a :class:`Record` (labels: none)."""
    base, row = split_fragment(uri)
    stem = _stem(base)
    with open_hdf5(base) as h5:
        ds = _tracings(h5, stem)
        n = 1 if ds.ndim == 2 else ds.shape[0]
        if row is None:
            if n != 1:
                raise ReadError(stem, f"{base} holds {n} exams: name one as {base}#<row> (0-based)",
                                error_type="bad_index")
            row = 0
        if row >= n:
            raise ReadError(stem, f"row {row} out of range: {base} holds {n} exams", error_type="bad_index")
        ids = _exam_ids(h5, n)
        rid = record_id_for(stem, row, n, ids)
        try:
            x = ds[()] if ds.ndim == 2 else ds[row]
        except Exception as e:
            raise ReadError(rid, f"cannot read tracings row {row}: {type(e).__name__}: {e}", error_type="bad_hdf5") from None
        fs = _fs(h5, ds)
    meta = {"row": row, "n_exams": n}
    if ids is not None:
        meta["exam_id"] = ids[row]
    return Record(
        record_id=rid,
        uri=row_uri(base, row, n) if "#" not in str(uri) else str(uri),
        format="code15",
        signal=np.ascontiguousarray(x, dtype=np.float32),
        fs=fs,
        leads=tuple(LEADS),
        labels=Labels.none(),
        dataset=DATASET,
        meta=meta,
    )
