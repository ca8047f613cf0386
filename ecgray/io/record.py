"""The :class:`Record` container and :func:`read_record`, the one entry point for reading.

Formats are chosen by the URI: ``.hdf5``/``.h5``/``.hdf`` (optionally with a
``#row`` fragment) is a CODE-15 style HDF5 exam, ``.edf`` an EDF/EDF+ file,
anything else a WFDB record (path without extension, or with ``.hea``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ecgray.errors import ECGError, ReadError
from ecgray.io.labels import LabelTable, Labels, read_labels_csv


@dataclass
class Record:
    """One ECG record as read from disk/S3.

    ``signal`` is float32, shape ``(n_samples, n_leads)``, in mV; ``leads``
    are the lead names as written in the file (CODE-15: the model names
    ``DI`` .. ``V6``); ``format`` is ``"wfdb"`` or ``"code15"``.
    """

    record_id: str
    uri: str
    format: str
    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    labels: Labels = field(default_factory=Labels)
    dataset: str = ""
    meta: dict = field(default_factory=dict)
    #: unique key within the input (``ecgray.io.catalog.record_key``); "" = not set (tables use the URI)
    record_key: str = ""
    #: flags set by the reader (e.g. ``multi_frequency``); preprocessing adds them to the window's flags
    flags: tuple[str, ...] = ()
    #: channels that are not usable as a lead in mV, ``{channel index: (error_type, reason)}`` -- e.g.
    #: ``bad_units`` (a RESP channel in ``NU``), ``bad_gain`` (ADC gain 0). The reader keeps them (so a
    #: record whose *unneeded* channel is bad is still processed, flag ``extra_leads_dropped``);
    #: preprocessing raises the error when the model needs that channel.
    bad_channels: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_leads(self) -> int:
        return int(self.signal.shape[1])

    def __repr__(self) -> str:
        return (f"Record({self.record_id!r}, format={self.format!r}, dataset={self.dataset!r}, "
                f"signal={self.signal.shape} {self.signal.dtype}, fs={self.fs}, leads={self.leads}, "
                f"labels={self.labels.positives() or (('normal',) if self.labels.normal else ())})")


def is_hdf5(uri: str) -> bool:
    """True when the URI (fragment removed) names an HDF5 file."""
    path = str(uri).split("#", 1)[0].lower()
    return path.endswith((".hdf5", ".h5", ".hdf"))


def is_edf(uri: str) -> bool:
    """True when the URI names an EDF/EDF+ file (``.edf``, any case)."""
    return str(uri).lower().endswith(".edf")


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
            from ecgray.io.code15 import read_code15

            rec = read_code15(uri)
        elif is_edf(uri):
            from ecgray.io.edf import read_edf

            rec = read_edf(uri)
        else:
            from ecgray.io.wfdb import read_wfdb

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
