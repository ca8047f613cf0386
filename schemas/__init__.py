"""Arrow schemas of every table ecgray writes (:mod:`.tables`; ``ecgray evaluate``'s: :mod:`.evaluation`)."""
from . import evaluation as _evaluation  # noqa: F401  (registers the evaluation tables in tables.TABLES)
