"""Signal units: the one table of how many millivolts one unit is (ECG files and model inputs alike)."""
from __future__ import annotations

#: mV per unit, by the unit's lower-case name (WFDB/EDF headers write ``mV``, ``uV``, ``µV``, ``nV``, ``V``)
UNIT_SCALE: dict[str, float] = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "nv": 1e-6, "v": 1e3}
