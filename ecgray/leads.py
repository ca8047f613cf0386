"""Lead names: the one place that knows what a lead is called.

:func:`canonical_lead` maps a file's lead name to the canonical name of one of
the 12 standard leads -- ``DI``, ``DII``, ``DIII``, ``AVR``, ``AVL``, ``AVF``,
``V1`` .. ``V6`` (:data:`STANDARD_LEADS`, the order and spelling of Ribeiro et
al. 2020) -- or None. Names are matched case-insensitively, ignoring spaces, a
leading ``ECG``/``EKG`` word (EDF labels: ``ECG I``, ``EKG V1``) and a
``Lead`` prefix: ``I``/``DI``/``D1`` -> DI, ``II``/``DII``/``D2`` -> DII,
``III``/``DIII``/``D3`` -> DIII, ``aVR`` -> AVR, ``aVL`` -> AVL, ``aVF`` -> AVF.
Anything else (``MLII``, which is not a standard lead II; ``ECG1``, a channel
number; Frank ``vx``) is unknown. A model's leads (:class:`ecgray.models.spec.ModelSpec`)
are matched to a record's through the same function.
"""
from __future__ import annotations

import re

STANDARD_LEADS: tuple[str, ...] = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")

_ALIASES = {
    "I": "DI", "DI": "DI", "D1": "DI",
    "II": "DII", "DII": "DII", "D2": "DII",
    "III": "DIII", "DIII": "DIII", "D3": "DIII",
    "AVR": "AVR", "AVL": "AVL", "AVF": "AVF",
    **{f"V{i}": f"V{i}" for i in range(1, 7)},
}


def canonical_lead(name: str) -> str | None:
    """Canonical standard-lead name for a lead name, None if unknown (see the module docstring)."""
    s = re.sub(r"^\s*(?:(?:ecg|ekg)[\s_-]+)?(?:lead[\s_-]*)?", "", str(name), flags=re.IGNORECASE)
    s = re.sub(r"\s+", "", s).upper()
    return _ALIASES.get(s)
