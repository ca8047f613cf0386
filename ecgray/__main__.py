"""``python -m ecgray`` = the ``ecgray`` command (where the package is on the path but not installed)."""
from ecgray.cli import app

app(prog_name="ecgray")
