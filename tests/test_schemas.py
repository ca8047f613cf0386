import pyarrow as pa
import pytest

from ecgray.schemas.tables import SCHEMA_VERSION, TABLES, SchemaError, conform, empty, from_rows, schema


def test_every_table_has_name_and_version_metadata():
    for name in TABLES:
        s = schema(name)
        assert s.metadata[b"ecgray.table"] == name.encode()
        assert s.metadata[b"ecgray.schema_version"] == str(SCHEMA_VERSION).encode()
        assert empty(name).num_rows == 0


def test_only_plain_columns():
    # Polars and DuckDB must read every column: no extension or tensor types.
    for name, s in TABLES.items():
        for f in s:
            t = f.type
            while pa.types.is_list(t):
                t = t.value_type
            assert not isinstance(t, pa.ExtensionType), (name, f.name)
            assert pa.types.is_primitive(t) or pa.types.is_string(t), (name, f.name, t)


def test_conform_rejects_missing_extra_and_nulls():
    row = {"run_id": "r", "record_key": "site/A1", "record_id": "A1", "uri": "x", "stage": "read", "error_type": "bad_header",
           "message": "m"}
    t = from_rows("errors", [row])
    assert conform(t, "errors").num_rows == 1
    with pytest.raises(SchemaError, match="missing"):
        conform(t.drop_columns(["stage"]), "errors")
    with pytest.raises(SchemaError, match="unexpected"):
        conform(t.append_column("oops", pa.array([1])), "errors")
    with pytest.raises(SchemaError, match="nulls"):
        conform(pa.table({**{k: [v] for k, v in row.items()}, "record_id": pa.array([None], pa.string())}), "errors")
    with pytest.raises(SchemaError, match="unknown columns"):
        from_rows("errors", [{**row, "nope": 1}])


def test_conform_reorders_and_casts_safely():
    row = {"run_id": "r", "record_key": "A1", "record_id": "A1", "uri": "x", "stage": "read", "error_type": "e", "message": "m"}
    t = pa.table({k: [v] for k, v in reversed(list(row.items()))})
    out = conform(t, "errors")
    assert out.column_names == schema("errors").names


def test_records_columns_follow_the_model_classes():
    """``records`` has label_<class> / prob_<class> per class of the model, in its order, and names them in the
    file metadata; conform reads the classes off the columns."""
    import json

    from ecgray.schemas.tables import check_classes, record_classes

    s = schema("records", ("NORM", "AF", "LBBB"))
    cls_cols = [n for n in s.names if n.startswith(("label_", "prob_")) and n not in ("label_normal", "label_scheme")]
    assert cls_cols == ["label_NORM", "label_AF", "label_LBBB", "prob_NORM", "prob_AF", "prob_LBBB"]
    assert json.loads(s.metadata[b"ecgray.classes"]) == ["NORM", "AF", "LBBB"]
    assert s.field("prob_AF").type == pa.float32() and s.field("label_AF").type == pa.bool_()
    t = empty("records", ("NORM", "AF", "LBBB"))
    assert record_classes(t.column_names) == ("NORM", "AF", "LBBB")
    assert conform(t, "records").schema.metadata[b"ecgray.classes"] == b'["NORM", "AF", "LBBB"]'
    with pytest.raises(SchemaError, match="unexpected columns"):
        conform(t, "records", ("NORM", "AF"))
    for bad in (("Normal",), ("SCHEME",), ("AF", "af"), ("",)):
        with pytest.raises(SchemaError):
            check_classes(bad)


def test_schemas_install_under_the_ecgray_name():
    """The top-level schemas/ folder installs as ``ecgray.schemas`` (never as a generic top-level ``schemas``
    package), and every package of ecgray/ is in the explicit package list of pyproject.toml."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {"ecgray.schemas": "schemas"}
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "ecgray").rglob("__init__.py")}
    assert set(cfg["packages"]) == on_disk | {"ecgray.schemas"}
    assert "schemas" not in cfg["packages"]


def test_schemas_import_from_a_source_tree_that_is_not_installed(tmp_path):
    """A Ray job's uploaded working dir (jobs/explain_dataset.py) has ecgray/ and schemas/ side by side, not
    installed: ``ecgray.schemas`` is that tree's schemas/."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for d in ("ecgray", "schemas"):
        shutil.copytree(root / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import ecgray, ecgray.schemas.tables as t; print(ecgray.__file__); print(t.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path.parent, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "ecgray" / "__init__.py"), str(tmp_path / "schemas" / "tables.py")]
