"""ecgray.delineate against the truth windows of ecgray.synth, and the reduce's waves from delineated bounds.

Measured (``simulate(kind, fs=400, seed=s)``, first 4096 samples, R-peaks and beats of
``ecgray.beats.average_beats``; error = delineated - true bound in ms, truth offsets taken as the last
sample of the wave; median |error| over seeds 0-4 [max |error|]; neurokit2 0.2.13)::

    class    P on        P off       QRS on     QRS off     T on        T off
    normal    1.2 [ 2.5]  0.0 [ 2.5]  2.5 [5.0]  10.0 [12.5]  15.0 [15.0]  7.5 [10.0]
    1dAVb     2.5 [ 2.5]  0.0 [ 1.2]  0.0 [5.0]  10.0 [10.0]  13.8 [15.0]  7.5 [10.0]
    LBBB      2.5 [42.5]  2.5 [43.8]  2.5 [2.5]   7.5 [ 7.5]  15.0 [20.0] 10.0 [11.2]
    ST        8.8 [10.0] 10.0 [10.0]  2.5 [5.0]  10.0 [12.5]  10.0 [10.0]  5.0 [ 7.5]
    SB        2.5 [ 2.5]  0.0 [ 2.5]  2.5 [5.0]  10.0 [10.0]  15.0 [17.5] 10.0 [12.5]
    AF        absent (5/5 records)    2.5 [2.5]  10.0 [10.0]  12.5 [15.0]  7.5 [ 7.5]

(also in ``benchmarks/results/delineation_errors.json``, with the signed means).

P is delineated in every sinus record (the irregular "normal" seed 0 included) and absent in every AF
record. The waves of the synthetic records are raised cosines that start and end at zero amplitude, so
every threshold-based bound is a little inside the true one (T onset late, T offset early, QRS offset
late by the 10 ms smoothing). Tolerances asserted below, with margin for other seeds: median |error|
<= 15 ms for P and QRS, <= 25 ms for T, per class; every single record within 20 ms (QRS), 40 ms (T),
60 ms (P: one LBBB record is off by ~43 ms, the prominence delineator picking a later P peak).
"""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgray import delineate as D
from ecgray.beats import average_beats
from ecgray.synth import simulate

KINDS = ("normal", "1dAVb", "LBBB", "ST", "SB", "AF")
SEEDS = range(4)
FS = 400.0
BOUNDS = ("P", "QRS", "T")


def _truth_ms(truth: list[dict], peaks: np.ndarray) -> dict[str, tuple[float, float]]:
    """Median over beats of each wave's (first, last) sample relative to its beat's R-peak (ms)."""
    out = {}
    for f in BOUNDS:
        on, off = [], []
        for r in truth:
            if r["feature"] != f or r["lead"] != "all":
                continue
            if f == "P":
                ref = peaks[peaks >= r["stop"]][:1]
            elif f == "QRS":
                ref = peaks[(peaks >= r["start"]) & (peaks < r["stop"])][:1]
            else:
                ref = peaks[peaks < r["start"]][-1:]
            if ref.size:
                on.append((r["start"] - ref[0]) * 1000 / FS)
                off.append((r["stop"] - 1 - ref[0]) * 1000 / FS)
        out[f] = (float(np.median(on)), float(np.median(off))) if on else (np.nan, np.nan)
    return out


@pytest.fixture(scope="module")
def measured():
    rows = []
    for kind in KINDS:
        for s in SEEDS:
            sig, truth = simulate(kind, fs=FS, seed=s)
            x = sig[:4096].T
            avg = average_beats(x, np.zeros((1,) + x.shape, np.float32), FS)
            wb = D.delineate(x, avg.peaks, FS)
            tr = _truth_ms(truth, avg.peaks)
            p_true = [r for r in truth if r["feature"] == "P"]
            rows.append({"kind": kind, "seed": s, "wb": wb, "truth": tr, "peaks": avg.peaks,
                         "rr_ms": float(np.median(np.diff(avg.peaks))) * 1000 / FS, "p_true": p_true})
    return rows


def _errors(measured, kind: str, wave: str) -> np.ndarray:
    """(n_records, 2) on/off errors (ms) of the records of ``kind`` where ``wave`` was delineated."""
    e = [np.subtract(r["wb"].bounds[wave], r["truth"][wave]) for r in measured
         if r["kind"] == kind and r["wb"].delineated(wave)]
    return np.array(e).reshape(-1, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_delineation_error_per_class(measured, kind):
    recs = [r for r in measured if r["kind"] == kind]
    assert all(r["wb"].method["QRS"] == D.QRS_METHOD and r["wb"].method["T"] == D.T_METHOD for r in recs)
    if kind == "AF":
        assert all(r["wb"].method["P"] == D.ABSENT for r in recs)
        assert all(r["wb"].bounds["P"] == D.FIXED_WAVES["P"] for r in recs)
    else:
        assert all(r["wb"].method["P"] == D.P_METHOD for r in recs)
    tol_median = {"P": 15.0, "QRS": 15.0, "T": 25.0}
    tol_max = {"P": 60.0, "QRS": 20.0, "T": 40.0}
    table = {}
    for wave in BOUNDS:
        e = _errors(measured, kind, wave)
        if kind == "AF" and wave == "P":
            continue
        assert e.shape[0] == len(recs), wave
        med, mx = np.median(np.abs(e), axis=0), np.abs(e).max(axis=0)
        table[wave] = (med.tolist(), mx.tolist())
        assert (med <= tol_median[wave]).all(), (kind, wave, med)
        assert (mx <= tol_max[wave]).all(), (kind, wave, mx)
    print(kind, json.dumps(table))


def test_pr_prolongation_detected(measured):
    """1dAVb: P onset earlier than in the normal records by >= 60 ms (class medians); every 1dAVb P onset is
    before the fixed P window's start (-250 ms), where the fixed window cuts the P wave."""
    p_on = {k: np.median([r["wb"].bounds["P"][0] for r in measured if r["kind"] == k]) for k in ("normal", "1dAVb")}
    assert p_on["1dAVb"] <= p_on["normal"] - 60.0, p_on
    assert all(r["wb"].bounds["P"][0] < D.FIXED_WAVES["P"][0] for r in measured if r["kind"] == "1dAVb")


def test_lbbb_qrs_is_wide(measured):
    for r in measured:
        on, off = r["wb"].bounds["QRS"]
        if r["kind"] == "LBBB":
            assert off - on >= 120.0, (r["seed"], on, off)
            assert on < D.FIXED_WAVES["QRS"][0] - 20  # the fixed QRS window misses its first 40+ ms
        else:
            assert off - on <= 110.0, (r["kind"], r["seed"], on, off)


def test_st_t_window_excludes_next_p(measured):
    """Sinus tachycardia: the delineated T ends before the next beat's P wave starts, whereas the fixed T window
    (+120..+400 ms) reaches into it."""
    reached = 0
    for r in (r for r in measured if r["kind"] == "ST"):
        next_p_on = r["rr_ms"] + r["truth"]["P"][0]  # the next P onset, ms after this R-peak
        assert r["wb"].bounds["T"][1] < next_p_on, (r["seed"], r["wb"].bounds["T"], next_p_on)
        reached += D.FIXED_WAVES["T"][1] >= next_p_on
    assert reached >= 2


def test_never_raises_and_falls_back():
    rng = np.random.default_rng(0)
    flat = np.zeros((12, 4096))
    for x, peaks in [(flat, np.arange(200, 4000, 400)), (rng.normal(size=(12, 4096)), np.arange(200, 4000, 400)),
                     (flat, np.zeros(0, np.int64)), (np.full((12, 4096), np.nan), np.array([100, 500]))]:
        wb = D.delineate(x, peaks, FS)
        assert set(wb.method) == set(BOUNDS)
        assert all(m in (D.FIXED, D.ABSENT) or m in D.DELINEATED for m in wb.method.values())
        for w in BOUNDS:
            if not wb.delineated(w):
                assert wb.bounds[w] == D.FIXED_WAVES[w]
    assert D.delineate(flat, np.arange(200, 4000, 400), FS).method == dict.fromkeys(BOUNDS, D.FIXED)
    cols = D.columns_of(None)
    assert cols["wave_qrs_method"] == "fixed" and cols["wave_qrs_on_ms"] is None and len(cols) == 9


def test_fast_paths_equal_neurokit2():
    """The delineator functions called directly (T-only dwt, prominence) give what ``nk.ecg_delineate`` gives."""
    import neurokit2 as nk

    sig, _ = simulate("LBBB", fs=FS, seed=2)
    x = sig[:4096].T.astype(np.float64)
    avg = average_beats(x, np.zeros((1,) + x.shape, np.float32), FS)
    pk = avg.peaks
    compared = 0
    for lead in (1, 6, 10):
        clean = nk.ecg_clean(x[lead], sampling_rate=FS)
        for method, keys in (("dwt", ("ECG_T_Onsets", "ECG_T_Offsets")),
                             ("prominence", ("ECG_P_Onsets", "ECG_P_Offsets"))):
            ref = nk.ecg_delineate(clean, rpeaks=pk, sampling_rate=FS, method=method)[1]
            got = D._nk_waves(clean, pk, FS, method)
            for k in keys:
                a, b = np.asarray(ref[k], float), np.asarray(got[k], float)
                if a.shape == b.shape:  # nk.ecg_delineate drops values <= 0 (then its list no longer aligns)
                    np.testing.assert_array_equal(a, b, err_msg=f"{method} {k} lead {lead}")
                    compared += 1
    assert compared >= 8


def test_valid_region_is_the_frame(measured):
    """Peaks in the full frame, delineation restricted to ``valid``: the same bounds as on the cut signal."""
    sig, _ = simulate("normal", fs=FS, seed=1)
    x = sig[:4096].T
    pad = np.concatenate([np.zeros((12, 300), np.float32), x[:, :3500]], axis=1)
    avg = average_beats(x[:, :3500], np.zeros((1, 12, 3500), np.float32), FS)
    a = D.delineate(x[:, :3500], avg.peaks, FS)
    b = D.delineate(pad, avg.peaks + 300, FS, valid=(300, 3800))
    assert a.method == b.method and a.bounds == b.bounds


# ------------------------------------------------------------------ the reduce on delineated bounds
def test_reduce_waves_use_delineated_bounds(tmp_path):
    """An output whose ``beats`` rows carry delineated bounds for some records: each record's wave relevance is
    the mean over its own window; the others (method "fixed"/"absent", or null) use the fixed window;
    n_delineated / n_fixed count them, start_ms / end_ms are the mean bounds used."""
    from ecgray import reduce as R
    from tests.test_reduce import LEADS, METHODS, OFFSETS, TARGETS, make_output, sd1

    root = tmp_path / "out"
    tr = make_output(root, relevance=False)
    K = len(tr.keys)
    rng = np.random.default_rng(1)
    # per record: delineated (even index) or not; bounds drawn around the fixed windows
    dl = np.array([i % 2 == 0 for i in range(K)])
    bounds = {"P": rng.uniform(-330, -200, K), "QRS": rng.uniform(-110, -30, K), "T": rng.uniform(100, 180, K)}
    ends = {"P": bounds["P"] + 100, "QRS": rng.uniform(45, 70, K), "T": bounds["T"] + rng.uniform(100, 200, K)}
    bounds["P"][4] = -700.0  # delineated but outside the beat grid: falls back to the fixed window
    ends["P"][4] = -600.0
    index = {(f"data/{r}", w): i for i, (r, w) in enumerate(tr.keys)}
    for path in sorted(root.glob("beats/shard=*/part-0.parquet")):
        if "shard=00003" in str(path):  # the uncommitted shard (never read)
            continue
        t = pq.read_table(path)
        idx = np.array([index[(k, w)] for k, w in zip(t["record_key"].to_pylist(), t["window"].to_pylist())])
        for wave in BOUNDS:
            w = wave.lower()
            on = pa.array(np.where(dl[idx], bounds[wave][idx], np.nan).astype(np.float32), from_pandas=True)
            off = pa.array(np.where(dl[idx], ends[wave][idx], np.nan).astype(np.float32), from_pandas=True)
            meth = pa.array(np.where(dl[idx], {"P": D.P_METHOD, "QRS": D.QRS_METHOD, "T": D.T_METHOD}[wave],
                                     np.where(idx % 3 == 0, "absent", "fixed")))
            for name, col in ((f"wave_{w}_on_ms", on), (f"wave_{w}_off_ms", off), (f"wave_{w}_method", meth)):
                t = t.set_column(t.schema.get_field_index(name), name, col)
        pq.write_table(t, path)
    wr = R.reduce(str(root), write=False)["wave_relevance"]
    assert {"n_delineated", "n_fixed"} <= set(wr.columns)
    b32 = {w: (bounds[w].astype(np.float32).astype(np.float64), ends[w].astype(np.float32).astype(np.float64))
           for w in BOUNDS}
    checked = 0
    for mi, m in enumerate(METHODS):
        for ti, t in enumerate(TARGETS):
            for g in R.GROUPS:
                sel = np.flatnonzero((tr.group[:, ti] == g) & tr.beats_ok)
                if not sel.size:
                    continue
                rel = tr.b_rel[sel, mi, ti].astype(np.float64)  # (n, 12, O)
                for wave in BOUNDS:
                    a0, b0 = D.FIXED_WAVES[wave]
                    lo, hi = b32[wave][0][sel], b32[wave][1][sel]
                    use = dl[sel] & np.array([((OFFSETS >= l) & (OFFSETS <= h)).any() for l, h in zip(lo, hi)])
                    lo, hi = np.where(use, lo, a0), np.where(use, hi, b0)
                    per_rec = np.stack([rel[j][:, (OFFSETS >= lo[j]) & (OFFSETS <= hi[j])].mean(-1)
                                        for j in range(sel.size)])  # (n, 12)
                    ww = wr.filter(method=m, target=t, group=g, wave=wave)
                    assert ww["lead"].to_list() == list(LEADS)
                    np.testing.assert_allclose(ww["mean_relevance"].to_numpy(), per_rec.mean(0), rtol=1e-9, atol=1e-12)
                    se = sd1(per_rec) / np.sqrt(sel.size)
                    np.testing.assert_allclose((ww["ci_high"] - ww["mean_relevance"]).to_numpy(),
                                               1.959963984540054 * se, rtol=1e-6, atol=1e-12)
                    assert (ww["n"] == sel.size).all() and (ww["n_delineated"] == use.sum()).all()
                    assert (ww["n_fixed"] == sel.size - use.sum()).all()
                    np.testing.assert_allclose(ww["start_ms"].to_numpy(), lo.mean(), rtol=1e-12)
                    np.testing.assert_allclose(ww["end_ms"].to_numpy(), hi.mean(), rtol=1e-12)
                    checked += 1
    assert checked > 10
    assert wr.filter(wave="P")["n_fixed"].sum() > wr.filter(wave="QRS")["n_fixed"].sum()  # record 4's P fell back


def test_old_output_without_wave_columns_is_fixed(tmp_path):
    """A schema 4 output (beats without wave_* columns) reduces with the fixed windows, every record flagged."""
    from ecgray import reduce as R
    from tests.test_reduce import make_output

    root = tmp_path / "v4"
    make_output(root, relevance=False)
    for path in root.glob("beats/shard=*/part-0.parquet"):
        t = pq.read_table(path)
        pq.write_table(t.drop([c for c in t.column_names if c.startswith("wave_")]), path)
    for marker in (root / "_commits").glob("*.json"):
        m = json.loads(marker.read_text())
        m["schema_version"] = 4
        marker.write_text(json.dumps(m))
    wr = R.reduce(str(root), write=False)["wave_relevance"]
    assert wr.height > 0 and (wr["n_delineated"] == 0).all() and (wr["n_fixed"] == wr["n"]).all()
    for wave, (a, b) in D.FIXED_WAVES.items():
        assert (wr.filter(wave=wave)["start_ms"] == a).all() and (wr.filter(wave=wave)["end_ms"] == b).all()
    assert wr.select(pl.col("wave").unique().sort()).to_series().to_list() == ["P", "QRS", "T"]


def test_beats_table_carries_the_waves():
    """``ecgray.tables.beats_tables`` with the real ``average_beats``: the ``beats`` rows of a window carry its
    delineated waves (the same on every lead), conformed to the schema; a stand-in without ``peaks`` and a window
    without beats give "fixed" and null bounds."""
    from types import SimpleNamespace

    from ecgray.beats import average_beats as real_average_beats
    from ecgray.leads import STANDARD_LEADS
    from ecgray.schemas.tables import schema
    from ecgray.tables import beats_tables

    xs = [simulate(k, fs=FS, seed=3)[0][:4096].T for k in ("1dAVb", "AF")] + [np.zeros((12, 4096), np.float32)]
    x = np.stack(xs)
    rel = np.random.default_rng(0).normal(size=(3, 1, 12, 4096)).astype(np.float32)
    attrs = {"saliency": SimpleNamespace(relevance=rel, targets=["AF"])}
    cfg = SimpleNamespace(spec=SimpleNamespace(fs=FS), leads=list(STANDARD_LEADS), model_name="m", model_id="m@0",
                          output="logit")
    wins = [SimpleNamespace(record_key=f"k{i}", record_id=f"r{i}", window=0, offset=0, n_resampled=4096)
            for i in range(3)]
    p = {"recs": [None] * 3, "wins": wins, "x": x, "attrs": attrs}
    beats = beats_tables("run", cfg, p, real_average_beats)["beats"]
    assert beats.schema.equals(schema("beats"), check_metadata=False)
    rows = beats.to_pylist()
    assert len(rows) == 36
    for i in range(3):
        mine = rows[12 * i:12 * (i + 1)]
        assert len({tuple(v for k, v in r.items() if k.startswith("wave_")) for r in mine}) == 1  # same on all leads
    avb, af, flat = rows[0], rows[12], rows[24]
    assert avb["wave_p_method"] == D.P_METHOD and avb["wave_p_on_ms"] < -250
    assert avb["wave_qrs_method"] == D.QRS_METHOD and avb["wave_t_method"] == D.T_METHOD
    assert af["wave_p_method"] == D.ABSENT and af["wave_p_on_ms"] is None and af["wave_qrs_on_ms"] is not None
    assert flat["n_beats"] == 0 and all(flat[f"wave_{w}_method"] == D.FIXED for w in ("p", "qrs", "t"))
    assert flat["wave_t_on_ms"] is None

    def no_peaks(*a, **k):  # an average_beats without ``peaks`` (the pipeline tests' stand-in): fixed windows
        avg = real_average_beats(*a, **k)
        return SimpleNamespace(**{f: getattr(avg, f) for f in ("offsets_ms", "signal", "relevance", "n_beats",
                                                                "lead_used", "quality", "heart_rate_bpm")})

    rows = beats_tables("run", cfg, p, no_peaks)["beats"].to_pylist()
    assert all(r[f"wave_{w}_method"] == D.FIXED and r[f"wave_{w}_on_ms"] is None
               for r in rows for w in ("p", "qrs", "t"))
    cfg.waves = "fixed"  # `ecgray run --waves fixed`: the beats, not the delineation
    rows = beats_tables("run", cfg, p, real_average_beats)["beats"].to_pylist()
    assert rows[0]["n_beats"] > 0 and all(r[f"wave_{w}_method"] == D.FIXED for r in rows for w in ("p", "qrs", "t"))


def test_run_config_checks_waves():
    import pytest as _pytest

    from ecgray.pipeline.config import RunConfig

    assert RunConfig(model="demo").waves == "delineated" and RunConfig(model="demo", waves="fixed").waves == "fixed"
    with _pytest.raises(ValueError, match="waves must be one of"):
        RunConfig(model="demo", waves="dwt")
