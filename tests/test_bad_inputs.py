"""A bad-input corpus (generated here, see tests/corpus.py) through the Ray pipeline, locally and on S3.

One local run holds every case plus good records; one S3 run (moto behind a proxy that injects S3
errors) holds the same files plus the S3-only cases (403, 404, transient 503). For each run:
every good or handled record is in ``records`` (with its flags), every bad one is exactly one row
of ``errors`` with the expected stage, a stable ``error_type`` and a message naming it, nothing is
in both, and records + errors are exactly the inputs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.corpus import Case, build_corpus, files_of, write_ecg
from tests.s3util import ENV, UNSET, FaultProxy, s3_client, start_moto, upload

ray = pytest.importorskip("ray")

TARGETS = ["AF", "LBBB"]
SHARD = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """moto + fault proxy + AWS env (pointing at the proxy) + local Ray whose workers get the same env."""
    server, moto = start_moto()
    proxy = FaultProxy(moto).start()
    mp = pytest.MonkeyPatch()
    env = {**ENV, "AWS_ENDPOINT_URL": proxy.endpoint}
    for k in UNSET:
        mp.delenv(k, raising=False)
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield {"proxy": proxy, "client": s3_client(moto), "root": tmp_path_factory.mktemp("bad")}
    finally:
        ray.shutdown()
        mp.undo()
        proxy.stop()
        server.stop()


@pytest.fixture(scope="module")
def corpus(stack):
    root = stack["root"] / "corpus"
    cases = build_corpus(root)
    return root, cases


def resample_factors(fs):
    from ecgray.preprocess import resample_factors as f

    return f(fs)


def run_pipeline(inp: str, out: str):
    from ecgray.pipeline import read_table, run

    s = run(inp, out, model="demo", methods=["saliency"], targets=TARGETS, shard_size=SHARD, progress=False)
    return s, {name: read_table(out, name) for name in ("records", "relevance_summary", "errors")}


def check_accounting(cases: list[Case], s, tables) -> dict:
    """The assertions shared by the local and the S3 run; returns the error rows by record id."""
    recs, summ, errs = tables["records"], tables["relevance_summary"], tables["errors"]
    ok = {c.record_id: c for c in cases if c.expect == "ok"}
    bad = {c.record_id: c for c in cases if c.expect == "error"}
    ignored = {c.record_id for c in cases if c.expect == "ignored"}
    rec_ids = recs.column("record_id").to_pylist()
    err_ids = errs.column("record_id").to_pylist()
    # exactly once: one window per record (policy "first"), one error row per bad record
    assert sorted(rec_ids) == sorted(ok), (set(rec_ids) ^ set(ok))
    assert sorted(err_ids) == sorted(bad), (set(err_ids) ^ set(bad))
    assert not set(rec_ids) & set(err_ids) and not (set(rec_ids) | set(err_ids)) & ignored
    assert (s.records, s.records_ok, s.records_error) == (len(ok) + len(bad), len(ok), len(bad))
    assert summ.num_rows == len(ok) * len(TARGETS) * 12
    # handled cases: processed, flagged, finite probabilities
    for row in recs.to_pylist():
        c = ok[row["record_id"]]
        assert sorted(row["flags"]) == sorted(c.flags), (c.name, row["flags"])
        assert row["n_samples_in"] == c.n_samples_in, c.name
        up, down = resample_factors(row["fs_in"])
        n_res = -(-c.n_samples_in * up // down)
        assert row["window_offset"] == (-((4096 - n_res) // 2) if "padded" in c.flags else 0), c.name
        probs = [row[f"prob_{k}"] for k in ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")]
        assert all(p is not None and math.isfinite(p) and 0 <= p <= 1 for p in probs), c.name
    assert np.isfinite(summ.column("sum").to_numpy()).all()
    # bad cases: stage, stable type, a message that names the record
    rows = {r["record_id"]: r for r in errs.to_pylist()}
    for rid, c in bad.items():
        r = rows[rid]
        assert (r["stage"], r["error_type"]) == (c.stage, c.error_type), (c.name, r["message"])
        assert rid in r["message"] and len(r["message"]) < 600, r["message"]
        assert "Traceback" not in r["message"]
    return rows


def test_corpus_local_run(corpus, stack):
    root, cases = corpus
    s, tables = run_pipeline(str(root), str(stack["root"] / "out_local"))
    rows = check_accounting(cases, s, tables)
    n = {k: sum(c.expect == k for c in cases) for k in ("ok", "error", "ignored")}
    print(f"\nlocal corpus: {len(cases)} cases ({n}); records {tables['records'].num_rows}, "
          f"errors {tables['errors'].num_rows}; {s.wall_s:.1f} s")
    for c in cases:
        what = (f"{c.stage}/{c.error_type}" if c.expect == "error" else
                f"ok {','.join(c.flags)}" if c.expect == "ok" else "ignored")
        print(f"  {c.record_id:20s} {what:36s} {c.name}")
    # messages a user understands, for the cases whose wording matters most
    assert "empty (0 bytes)" in rows["empty_header"]["message"]
    assert "empty (0 bytes)" in rows["empty_dat"]["message"]
    assert "is a directory" in rows["dir_not_record"]["message"]
    assert "not a plain file name" in rows["traversal_header"]["message"]
    assert "no header orphan_mat.hea" in rows["orphan_mat"]["message"]
    assert "['DIII', 'AVR', 'AVL', 'AVF']" in rows["leads_8"]["message"]
    assert "unknown leads" in rows["unknown_leads"]["message"]
    assert "truncated" in rows["trunc_mat"]["message"] and "trunc_mat.mat" in rows["trunc_mat"]["message"]
    # skipped files are named, in the run summary and the manifest: hidden ones and non-records
    import json

    skipped = {x["path"]: x["reason"] for x in s.skipped}
    manifest = json.loads((stack["root"] / "out_local" / "_manifest.json").read_text())
    assert {x["path"]: x["reason"] for x in manifest["skipped"]} == skipped
    assert skipped["..%2F..%2Fetc%2Fpasswd.hea"] == "hidden" and skipped[".trash"] == "hidden"
    assert skipped["docs/README.txt"] == skipped["labels_notes.csv"] == "not_a_record"
    assert not any(p.startswith(".trash/") for p in skipped)  # a hidden folder once, not file by file
    # messages for the cases of issue 14
    assert "2 signal" not in rows["mixedsignals"]["message"] and "format '999'" in rows["mixedsignals"]["message"]
    assert "segment header" in rows["seg_missing"]["message"] and "seg_missing_2.hea" in rows["seg_missing"]["message"]
    assert "missing leads" in rows["leads_8_bp"]["message"] and "'BP'" in rows["leads_8_bp"]["message"]
    assert "signal III" in rows["gain_zero"]["message"] and "'mmHg'" in rows["bad_units"]["message"]
    # ../outside.dat is a valid signal file: the header was refused, not followed
    assert (root.parent / "outside.dat").stat().st_size == 120000


def test_corpus_ray_free_prepare_agrees(corpus):
    """The Ray-free path (ecgray.explain.prepare over the catalog) applies the same policy per case."""
    from ecgray.explain import prepare
    from ecgray.io import catalog

    root, cases = corpus
    cat = {r["record_id"]: r for r in catalog(str(root)).to_pylist()}
    assert set(cat) == {c.record_id for c in cases if c.expect != "ignored"}
    for c in cases:
        if c.expect == "ignored":
            continue
        row = cat[c.record_id]
        if row["error"]:
            got = ("read", row["error_type"])
        else:
            prep, err = prepare(row["uri"], run_id="r")
            got = (err["stage"], err["error_type"]) if err else ("ok", tuple(sorted(prep.windows[0].flags)))
        want = (c.stage, c.error_type) if c.expect == "error" else ("ok", tuple(sorted(c.flags)))
        assert got == want, c.name


S3_CASES = [  # record id, what the proxy does, expectation
    ("s3_denied_hea", "403 on every GET of the .hea", Case("S3 header: 403 AccessDenied", "s3_denied_hea", "error",
                                                           stage="read", error_type="access_denied")),
    ("s3_denied_dat", "403 on every GET of the .dat", Case("S3 signal file: 403 AccessDenied", "s3_denied_dat",
                                                           "error", stage="read", error_type="access_denied")),
    ("s3_gone_hea", "404 on GET of a listed .hea", Case("S3 header listed, then 404", "s3_gone_hea", "error",
                                                        stage="read", error_type="missing_header")),
    ("s3_gone_dat", "404 on GET of a listed .dat", Case("S3 signal file listed, then 404", "s3_gone_dat", "error",
                                                        stage="read", error_type="missing_signal_file")),
    ("s3_no_dat", ".dat never uploaded", Case("S3 header naming a missing object", "s3_no_dat", "error",
                                              stage="read", error_type="missing_signal_file")),
    ("s3_flaky_hea", "503 SlowDown on the first 2 GETs of the .hea",
     Case("S3 transient 503 on the header (retried)", "s3_flaky_hea", "ok", flags=("resampled", "padded"),
          n_samples_in=5000)),
    ("s3_flaky_dat", "503 SlowDown on the first 2 GETs of the .dat",
     Case("S3 transient 503 on the signal file (retried)", "s3_flaky_dat", "ok", flags=("resampled", "padded"),
          n_samples_in=5000)),
    ("s3_dir_not_record", "objects under s3_dir_not_record.hea/",
     Case("S3 prefix named like a header", "s3_dir_not_record", "error", stage="read", error_type="not_a_record")),
]


def test_corpus_s3_run(corpus, stack):
    """The same corpus on S3 gives the same rows, plus: 403 -> access_denied, 404 after listing -> missing_*,
    transient 503s are retried and the records complete."""
    root, cases = corpus
    proxy, client = stack["proxy"], stack["client"]
    bucket = "ecgray-bad-inputs"
    client.create_bucket(Bucket=bucket)
    files = {f"in/{rel}": p for rel, p in files_of(root).items() if not rel.startswith("dir_not_record.hea/")}
    extra = stack["root"] / "s3extra"
    for i, (rid, _, _) in enumerate(S3_CASES[:-1]):
        write_ecg(extra, rid, seed=200 + i)
    (extra / "s3_no_dat.dat").unlink()
    files.update({f"in/{rel}": p for rel, p in files_of(extra).items()})
    files["in/s3_dir_not_record.hea/inside.txt"] = b"a prefix, not a header\n"
    upload(client, bucket, files)
    proxy.fail(f"{bucket}/in/s3_denied_hea.hea", 403)
    proxy.fail(f"{bucket}/in/s3_denied_dat.dat", 403)
    proxy.fail(f"{bucket}/in/s3_gone_hea.hea", 404)
    proxy.fail(f"{bucket}/in/s3_gone_dat.dat", 404)
    proxy.fail(f"{bucket}/in/s3_flaky_hea.hea", 503, times=2)
    proxy.fail(f"{bucket}/in/s3_flaky_dat.dat", 503, times=2)

    s3_cases = [c for c in cases if c.record_id != "dir_not_record"] + [c for _, _, c in S3_CASES]
    s, tables = run_pipeline(f"s3://{bucket}/in", str(stack["root"] / "out_s3"))
    rows = check_accounting(s3_cases, s, tables)
    injected = dict(proxy.injected)
    print(f"\nS3 corpus: {len(s3_cases)} cases; records {tables['records'].num_rows}, errors "
          f"{tables['errors'].num_rows}; injected S3 errors {injected}; {s.wall_s:.1f} s")
    # the transient failures really happened, twice each, and were retried to success
    assert injected[(f"{bucket}/in/s3_flaky_hea.hea", 503)] == 2
    assert injected[(f"{bucket}/in/s3_flaky_dat.dat", 503)] == 2
    assert injected[(f"{bucket}/in/s3_denied_hea.hea", 403)] >= 1
    assert injected[(f"{bucket}/in/s3_denied_dat.dat", 403)] >= 1
    assert "access denied" in rows["s3_denied_dat"]["message"]
    assert "s3://" in rows["s3_denied_hea"]["message"]
    # S3 uris in records; local messages name local paths, S3 ones s3:// uris
    assert all(u.startswith(f"s3://{bucket}/in/") for u in tables["records"].column("uri").to_pylist())
