"""ecgray: explain a 12-lead ECG classifier at data-set scale."""
import os as _os

# schemas/ (at the top of the repository) installs as ecgray.schemas (pyproject.toml: package-dir). Run from
# a source tree that is not installed -- a Ray job's uploaded working dir (jobs/explain_dataset.py) -- it is
# found at the top of that tree: the tree joins this package's search path, for that subpackage.
_TREE = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "schemas")) \
        and _os.path.isfile(_os.path.join(_TREE, "schemas", "tables.py")):
    __path__.append(_TREE)
