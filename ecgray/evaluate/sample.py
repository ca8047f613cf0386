"""``--sample N``: a seeded, class-stratified subset of a run's records.

Strata, one per class of the model and one for normal records: a record window falls into the stratum
of every class it is labelled with (``label_<class>`` True), else -- unlabelled for that class -- of
every class the run predicted (``prob_<class>`` >= 0.5); ``normal`` holds the windows labelled normal,
or, when unlabelled, predicted negative for every class. Each stratum contributes its first ``N``
windows in a seeded order (``crc32(seed, record_key, window)``), so the subset is the same for the same
run and seed in any order of the table, and growing ``N`` only adds windows. A window in two strata is
evaluated once. The result keeps the table's order.
"""
from __future__ import annotations

import zlib
from typing import Any, Sequence

THRESHOLD = 0.5


def _rank(seed: int, row: dict) -> int:
    return zlib.crc32(f"{seed}\0{row['record_key']}\0{row['window']}".encode())


def strata(row: dict, classes: Sequence[str]) -> list[str]:
    """The strata of one ``records`` row (see the module docstring)."""
    out = []
    for c in classes:
        label = row.get(f"label_{c}")
        prob = row.get(f"prob_{c}")
        if label is True or (label is None and prob is not None and prob >= THRESHOLD):
            out.append(c)
    normal = row.get("label_normal")
    if normal is True or (normal is None and not out):
        out.append("normal")
    return out


def stratified_sample(rows: Sequence[dict[str, Any]], classes: Sequence[str], n: int | None,
                      seed: int = 0) -> list[dict[str, Any]]:
    """At most ``n`` rows per stratum (``None``: every row), seeded (see the module docstring)."""
    if n is None:
        return list(rows)
    if int(n) < 1:
        raise ValueError(f"sample must be >= 1 per class, got {n}")
    by: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for s in strata(row, classes):
            by.setdefault(s, []).append(i)
    keep: set[int] = set()
    for idx in by.values():
        keep.update(sorted(idx, key=lambda i: (_rank(seed, rows[i]), i))[: int(n)])
    return [rows[i] for i in sorted(keep)]
