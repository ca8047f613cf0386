"""Reading ECG records: WFDB (.hea + .mat/.dat), CODE-15 HDF5 and EDF/EDF+, local or S3.

Flat API::

    from ecgray.io import read_record, catalog, Record, Labels, open_fs
    rec = read_record("data/A0001")                      # or s3://bucket/key, file.hdf5#3
    tbl = catalog("s3://bucket/prefix", labels_csv="s3://bucket/REFERENCE.csv")
    skipped_files(tbl)                                   # hidden files and non-records, named
"""
from __future__ import annotations

from ecgray.io.catalog import CATALOG_SCHEMA, catalog, skipped_files
from ecgray.io.fs import fs_path, is_s3, join, open_fs, pyarrow_fs
from ecgray.io.labels import LabelTable, Labels, canonical, from_codes, from_dx, parse_scp_codes, read_labels_csv
from ecgray.io.read import read_record
from ecgray.io.record import Record

__all__ = [
    "CATALOG_SCHEMA",
    "LabelTable",
    "Labels",
    "Record",
    "canonical",
    "catalog",
    "from_codes",
    "from_dx",
    "fs_path",
    "is_s3",
    "join",
    "open_fs",
    "parse_scp_codes",
    "pyarrow_fs",
    "read_labels_csv",
    "read_record",
    "skipped_files",
]
