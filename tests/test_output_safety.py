"""Output safety: record ids and file names never reach a path, writes are staged and atomic, runs refuse to
write into a non-empty output, a run id cannot name a path."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import ecg_mv, write_ecg

ray = pytest.importorskip("ray")

# File names (WFDB .hea) and HDF5 exam ids that would escape or confuse a path if they were used as one.
ODD_FILE_NAMES = ["with space", "ünïcödé-Ω", "-rf", "hash#1", "semi;colon", "dollar$HOME", "quote'd", "star*?",
                  "dots..", "CON", "新しい記録", "tab\tand\u200bzero-width"]
ODD_EXAM_IDS = ["../../escape", "/abs/olute/path", "..", ".", "C:\\Windows\\system32", "a/b/../../c", "ünï©ødé 🫀",
                "%2e%2e%2fenc", "~root", "line\nbreak"]
BAD_EXAM_ID = "../../bad/../../record"
LAYOUT = re.compile(r"^(_manifest\.json|_commits/shard=\d{5}\.json|"
                    r"(records|relevance_summary|beats|beats_relevance|errors)/shard=\d{5}/part-0\.parquet)$")


def snapshot(*folders: Path) -> set[str]:
    out = set()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for n in dirnames + filenames:
                out.add(os.path.join(dirpath, n))
    return out


def make_odd_input(folder: Path) -> tuple[set[str], set[str]]:
    """WFDB records whose .hea files were renamed to odd names (the record id is the file name; the header
    still names its signal file ``r<i>.dat``, as WFDB syntax requires); one HDF5 file with odd exam ids (one
    exam has a NaN: an error row). Returns ``(ok ids, error ids)``."""
    folder.mkdir(parents=True)
    for i, name in enumerate(ODD_FILE_NAMES):
        base = write_ecg(folder, f"r{i}", seed=300 + i)
        os.rename(base.with_suffix(".hea"), folder / f"{name}.hea")
    ids = ODD_EXAM_IDS + [BAD_EXAM_ID]
    x = np.zeros((len(ids), 4096, 12), np.float32)
    for k in range(len(ids)):
        x[k, 48:4048] = ecg_mv(4000, 400, seed=400 + k)
    x[-1, 100, 5] = np.nan
    import h5py

    with h5py.File(folder / "exams.hdf5", "w") as f:
        f.create_dataset("tracings", data=x)
        f.create_dataset("exam_id", data=np.array([s.encode() for s in ids], dtype=object),
                         dtype=h5py.string_dtype())
    return set(ODD_FILE_NAMES) | set(ODD_EXAM_IDS), {BAD_EXAM_ID}


def test_odd_ids_stay_column_values(ray_local, tmp_path, monkeypatch):
    from ecgray.pipeline import read_table, run

    work = tmp_path / "work"
    ok_ids, bad_ids = make_odd_input(work / "in")
    out = work / "out"
    monkeypatch.chdir(work)  # a relative path, if one were built from an id, would land here
    before = snapshot(tmp_path)
    top_before = set(os.listdir(tmp_path.parent))
    s = run(str(work / "in"), str(out), model="demo", methods=["saliency"], targets=["AF"], shard_size=4,
            progress=False)
    recs, errs = read_table(out, "records"), read_table(out, "errors")
    # ids preserved exactly, as values
    assert sorted(recs.column("record_id").to_pylist()) == sorted(ok_ids)
    assert errs.column("record_id").to_pylist() == [BAD_EXAM_ID] and errs.column("error_type").to_pylist() == [
        "nan_or_inf"]
    assert (s.records_ok, s.records_error) == (len(ok_ids), 1)
    summ = read_table(out, "relevance_summary")
    assert set(summ.column("record_id").to_pylist()) == ok_ids
    uris = set(recs.column("uri").to_pylist())
    assert {u for u in uris if "exams.hdf5" in u} == {f"{work / 'in' / 'exams.hdf5'}#{k}"
                                                     for k in range(len(ODD_EXAM_IDS))}
    # everything written is the layout under the output folder, named by shard numbers only
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written and all(LAYOUT.match(w) for w in written), [w for w in written if not LAYOUT.match(w)]
    # nothing appeared anywhere else: walk tmp_path (input, cwd) and the folders above it
    new = sorted(p for p in snapshot(tmp_path) - before if not p.startswith(str(out) + os.sep) and p != str(out))
    assert new == [], new[:10]
    assert set(os.listdir(tmp_path.parent)) == top_before
    assert not Path("/abs").exists() and not [n for n in os.listdir("/tmp") if "escape" in n or "olute" in n]
    assert not [p for p in tmp_path.parent.parent.glob("*/*") if "escape" in p.name or p.name == "olute"]


def test_run_id_cannot_name_a_path(ray_local, tmp_path):
    from ecgray.pipeline import PipelineError, run

    inp = tmp_path / "in"
    write_ecg(inp, "r1")
    for bad in ("../../evil", "/abs", "a/b", "..", ".hidden", "x" * 200, "sp ace", "a\nb"):
        with pytest.raises(PipelineError, match="invalid run id"):
            run(str(inp), str(tmp_path / "out"), model="demo", methods=["saliency"], run_id=bad, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists() and not Path("/abs").exists()


def test_staged_write_is_atomic(tmp_path, monkeypatch):
    """A shard whose write dies half way leaves no table file of its own and no commit; the committed shards
    and their rows are untouched; a retry writes it completely."""
    import pyarrow.parquet as pq

    from ecgray.pipeline import Store, read_table
    from ecgray.schemas.tables import from_rows

    store = Store(str(tmp_path / "out"))
    errs = lambda rid: from_rows("errors", [{"run_id": "r", "record_key": rid, "record_id": rid, "uri": "u", "stage": "read",  # noqa
                                             "error_type": "truncated", "message": f"{rid}: x"}])
    store.write_shard("00000", {"errors": errs("a")}, run_id="r", record_hash="h0")
    real = pq.write_table
    calls = []

    def dying(table, where, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", dying)
    tables = {"errors": errs("b"), "records": from_rows("records", [])}
    with pytest.raises(OSError, match="injected"):
        store.write_shard("00001", tables, run_id="r", record_hash="h1")
    assert sorted(store.commits()) == ["00000"]
    assert read_table(str(tmp_path / "out"), "errors").column("record_id").to_pylist() == ["a"]
    assert not (tmp_path / "out" / "records" / "shard=00001").exists()  # the table that failed never appeared
    monkeypatch.setattr(pq, "write_table", real)
    store.write_shard("00001", tables, run_id="r", record_hash="h1")  # the retry
    store.clean(keep_shards=["00000", "00001"])
    assert read_table(str(tmp_path / "out"), "errors").column("record_id").to_pylist() == ["a", "b"]
    assert not (tmp_path / "out" / "_tmp").exists()
