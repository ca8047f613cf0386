"""Reading one record: :func:`read_record`, the one entry point, dispatching on the URI.

Formats are chosen by the URI: ``.hdf5``/``.h5``/``.hdf`` (optionally with a
``#row`` fragment) is a CODE-15 style HDF5 exam (:mod:`ecgray.io.code15`), ``.edf``
an EDF/EDF+ file (:mod:`ecgray.io.edf`), anything else a WFDB record
(:mod:`ecgray.io.wfdb`; path without extension, or with ``.hea``).
"""
from __future__ import annotations

from ecgray.errors import ECGError, ReadError
from ecgray.io.code15 import read_code15
from ecgray.io.edf import read_edf
from ecgray.io.labels import read_labels_csv, resolve_labels
from ecgray.io.record import Record
from ecgray.io.wfdb import read_wfdb


def is_hdf5(uri: str) -> bool:
    """True when the URI (fragment removed) names an HDF5 file."""
    path = str(uri).split("#", 1)[0].lower()
    return path.endswith((".hdf5", ".h5", ".hdf"))


def is_edf(uri: str) -> bool:
    """True when the URI names an EDF/EDF+ file (``.edf``, any case)."""
    return str(uri).lower().endswith(".edf")


def read_record(uri: str, *, labels_csv: str | None = None, record_id: str | None = None) -> Record:
    """Read one record (local path or ``s3://``) with its labels.

    * WFDB: ``uri`` is the record path without extension (``.hea`` accepted);
      the signal is the physical signal in mV (units ``uV``/``V`` converted).
    * HDF5 (CODE-15): ``path/file.hdf5`` for a single exam, ``path/file.hdf5#3``
      for row 3 (0-based) of a multi-exam file; ``exam_id`` gives the record id
      when present.
    * EDF/EDF+: ``path/file.edf``, one record per file (:mod:`ecgray.io.edf`;
      annotation channels skipped, non-voltage channels in ``bad_channels``).
    * ``labels_csv`` (REFERENCE.csv, ptbxl_database.csv or a code15 CSV,
      detected by its columns) overrides the header labels for the records it
      lists; ``meta["label_source"]`` says which was used.
    * ``record_id`` overrides the id derived from the file.

    Raises :class:`ecgray.errors.ReadError` (or :class:`LabelError`) naming the
    record; never a raw wfdb/h5py/numpy exception.
    """
    try:
        if is_hdf5(uri):
            rec = read_code15(uri)
        elif is_edf(uri):
            rec = read_edf(uri)
        else:
            rec = read_wfdb(uri)
        native_id = rec.record_id
        if record_id is not None:
            rec.record_id = str(record_id)
        table = read_labels_csv(labels_csv) if labels_csv else None
        ids = [rec.record_id] + ([native_id] if native_id != rec.record_id else [])
        row = rec.meta.get("row") if rec.meta.get("n_exams", 1) > 1 else None
        rec.labels, rec.meta["label_source"] = resolve_labels(rec.labels, ids, row, table)
    except ECGError as e:
        _rename(e, record_id)
        raise
    except Exception as e:  # never leak a raw wfdb/h5py/numpy exception
        err = ReadError(record_id or _name_of(uri), f"cannot read {uri}: {type(e).__name__}: {e}",
                        error_type="unreadable")
        raise err from e
    return rec


def _name_of(uri: str) -> str:
    name = str(uri).split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".hea") else name


def _rename(e, record_id: str | None) -> None:
    """Make an error name the record id the caller asked for (keeping the file's id in the reason)."""
    if record_id is not None and e.record_id != str(record_id):
        e.reason = f"{e.reason} (file record {e.record_id})"
        e.record_id = str(record_id)
        e.args = (f"{e.record_id}: {e.reason}",)
