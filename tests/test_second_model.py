"""A second, different model end to end (issue #15, "explain any PyTorch ECG model").

The example plugin ``examples/ecg8_plugin`` (a package as a user would write it: an ``ecgray.models`` entry
point ``ecg8``, a tiny 1-D CNN for 8 leads I, II, V1..V6 at 500 Hz x 5,000 samples, three softmax classes
NORM / AF / LBBB, trained here on synthetic ECGs in seconds) is registered without pip (a ``*.dist-info``
folder on ``sys.path`` and on the Ray workers' ``PYTHONPATH``) and run through the public API:
``ecgray.pipeline.run`` (local, with ``resume``, and on S3 with moto), ``ecgray.reduce.reduce`` and
``ecgray.report.report``.

Every number is checked against an independent recomputation that uses none of ecgray's reading,
preprocessing or attribution code: the record read with ``wfdb.rdrecord``, the 8 leads picked by name (mV,
500 Hz so no resampling, the first 5,000 samples or centred zero padding), the weights loaded into the
plugin's network by hand, probabilities by ``torch.softmax`` and saliency ``|d logit / d x|`` by
``torch.autograd``; the reduced lead relevance as a NumPy mean over the records of a group.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.s3util import moto_and_local_ray, upload_dir

ray = pytest.importorskip("ray")
wfdb = pytest.importorskip("wfdb")

PLUGIN = ROOT / "examples" / "ecg8_plugin"
PACKAGE = "ecgray_example_ecg8"
#: the model's leads as the files name them, and as ecgray's tables name them (ecgray.leads.canonical_lead)
FILE_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
TABLE_LEADS = ("DI", "DII", "V1", "V2", "V3", "V4", "V5", "V6")
CLASSES = ("NORM", "AF", "LBBB")
KIND_OF_CLASS = {"NORM": "normal", "AF": "AF", "LBBB": "LBBB"}
FS, N = 500, 5000
IG_STEPS = 16

#: the input data set: name -> (synthetic kind, seconds, leads in the file); 500 Hz WFDB with SNOMED #Dx
RECORDS = {
    "N01": ("normal", 10.0, "12"),
    "N02": ("normal", 12.0, "12"),  # 6,000 samples: the first 5,000 (policy "first"), flag cropped
    "A01": ("AF", 10.0, "12"),
    "A02": ("AF", 8.0, "12"),  # 4,000 samples: centred zero padding, window_offset -500, flag padded
    "L01": ("LBBB", 10.0, "12"),
    "L02": ("LBBB", 10.0, "12"),
    "E8 only": ("AF", 10.0, "8"),  # only I, II, V1..V6 (no III/aVR/aVL/aVF), and a space in its name
    "with space": ("normal", 10.0, "12"),
}
ADDED = ("L03", ("LBBB", 10.0, "8"))  # added to the input before the resume run
EIGHT_LEAD = "E8 only"


# --------------------------------------------------------------------------- independent recomputation
def own_model(weights: Path) -> torch.nn.Module:
    """The plugin's network with the weights loaded by hand (strict), in eval mode."""
    from safetensors.torch import load_file

    from ecgray_example_ecg8 import ECG8Net

    m = ECG8Net()
    m.load_state_dict(load_file(str(weights)), strict=True)
    return m.eval()


def own_input(path: Path) -> tuple[np.ndarray, int]:
    """``(x (8, 5000) float32 mV, window offset)`` of a WFDB record: ``wfdb.rdrecord``, the 8 leads by name,
    the first 5,000 samples, or centred zero padding (``left = (5000 - n) // 2``, offset ``-left``)."""
    r = wfdb.rdrecord(str(path))
    assert r.fs == FS and set(r.units) == {"mV"}
    sig = r.p_signal[:, [r.sig_name.index(name) for name in FILE_LEADS]].astype(np.float32)
    n = sig.shape[0]
    if n >= N:
        return np.ascontiguousarray(sig[:N].T), 0
    left = (N - n) // 2
    out = np.zeros((N, len(FILE_LEADS)), np.float32)
    out[left:left + n] = sig
    return np.ascontiguousarray(out.T), -left


def own_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x[None]))[0].numpy()


def own_probabilities(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x[None])), dim=-1)[0].numpy()


def own_saliency(model, x: np.ndarray, target: str) -> np.ndarray:
    """``|d logit_target / d x|``, ``(8, 5000)``, by autograd."""
    xt = torch.from_numpy(x[None].copy()).requires_grad_(True)
    with torch.enable_grad():
        model(xt)[0, CLASSES.index(target)].backward()
    return xt.grad.abs()[0].numpy()


def record_files(folder: Path, name: str) -> list[str]:
    """The files of a WFDB record: its header and the signal files the header names."""
    hdr = wfdb.rdheader(str(folder / name))
    return [f"{name}.hea", *sorted(set(hdr.file_name))]


def write_record(folder: Path, name: str, kind: str, seconds: float, leads: str, seed: int) -> Path:
    """A 500 Hz WFDB record from ``ecgray.synth`` (``leads`` "12", or "8": I, II, V1..V6 only); a name with a
    space is a renamed header (WFDB names its signal file ``r<seed>.dat``, as its syntax requires)."""
    from ecgray.synth import LEAD_NAMES, SNOMED, simulate, write_wfdb

    sig, _ = simulate(kind, fs=FS, duration=seconds, seed=seed)
    names = list(LEAD_NAMES)
    if leads == "8":
        keep = [LEAD_NAMES.index(x) for x in FILE_LEADS]
        sig, names = sig[:, keep], list(FILE_LEADS)
    alias = name if name.isidentifier() else f"r{seed}"
    base = write_wfdb(folder, alias, sig, FS, dx=[SNOMED[kind]], leads=names)
    if alias != name:
        os.rename(base.with_suffix(".hea"), folder / f"{name}.hea")
    return folder / name


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example package importable and registered as the entry point ``ecg8`` (no pip install); yields the
    ``PYTHONPATH`` the Ray workers need to find it too."""
    root = tmp_path_factory.mktemp("ecg8_dist")
    dist = root / "ecgray_example_ecg8-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ecgray-example-ecg8\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[ecgray.models]\necg8 = {PACKAGE}:build\n")
    paths = [str(root), str(PLUGIN)]
    sys.path[:0] = paths
    importlib.invalidate_caches()
    try:
        yield os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    finally:
        for p in paths:
            sys.path.remove(p)
        for mod in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            sys.modules.pop(mod)
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def trained(plugin, tmp_path_factory):
    """``(weights path, training seconds)``: the example's own training, default settings, one thread (as
    ``python -m ecgray_example_ecg8.train``)."""
    from ecgray_example_ecg8.train import train

    t0 = time.perf_counter()
    path = train(tmp_path_factory.mktemp("ecg8_weights") / "ecg8.safetensors", seed=0, threads=1)
    return path, time.perf_counter() - t0


@pytest.fixture(scope="module")
def weights(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ecg8_input") / "in"
    folder.mkdir()
    for i, (name, (kind, seconds, leads)) in enumerate(RECORDS.items()):
        write_record(folder, name, kind, seconds, leads, seed=100 + i)
    return folder


@pytest.fixture(scope="module")
def cluster(plugin):
    """A moto S3 server, the AWS env pointing at it, and a local Ray (2 CPUs) whose workers see the env
    and the plugin (``PYTHONPATH`` of the driver, inherited by the local Ray's workers); yields
    ``(boto3 client, bucket)``."""
    bucket = f"ecg8-{uuid.uuid4().hex[:12]}"
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", plugin)
    try:
        with moto_and_local_ray(bucket) as client:
            yield client, bucket
    finally:
        mp.undo()


def _run(inp, out, weights, **kw):
    from ecgray.pipeline import run

    return run(str(inp), str(out), model="ecg8", weights=str(weights),
               methods=["saliency", "integrated_gradients"],
               params={"integrated_gradients": {"n_steps": IG_STEPS}}, shard_size=2, progress=False,
               keep_relevance=True, **kw)


@pytest.fixture(scope="module")
def explained(cluster, weights, dataset, tmp_path_factory):
    """A copy of the data set through ``run`` (saliency + IG, every class), then one record added to it and
    ``resume``; yields ``(output, first summary, resume summary, input)``."""
    work = tmp_path_factory.mktemp("ecg8_run")
    inp, out = work / "in", work / "out"
    shutil.copytree(dataset, inp)
    t0 = time.perf_counter()
    s1 = _run(inp, out, weights)
    t1 = time.perf_counter()
    name, (kind, seconds, leads) = ADDED
    write_record(inp, name, kind, seconds, leads, seed=999)
    s2 = _run(inp, out, weights, resume=True)
    print(f"ecg8 run: {t1 - t0:.1f} s ({s1.records} records); resume: {time.perf_counter() - t1:.1f} s")
    return out, s1, s2, inp


def _table(out, name):
    from ecgray.pipeline import read_table

    return read_table(str(out), name).to_pylist()


def _by_key(rows, *keys):
    return {tuple(r[k] for k in keys): r for r in rows}


# --------------------------------------------------------------------------- what the plugin is on its own
def test_training_is_fast_and_separates_the_classes(trained):
    """The example trains in seconds and classifies held-out synthetic records (another seed) far above
    chance (1/3)."""
    from safetensors import safe_open

    from ecgray_example_ecg8.train import evaluate

    path, seconds = trained
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    acc = evaluate(path, n_per_class=30, seed=4242)
    print(f"ecg8 training {seconds:.1f} s (train() itself {meta['train_seconds']} s), held-out accuracy "
          f"{acc:.3f} (seed 4242), {meta['heldout_accuracy']} (train's own held-out set)")
    assert seconds < 60  # 1.5-3.5 s measured
    assert acc > 0.6 and float(meta["heldout_accuracy"]) > 0.6


def test_entry_point_and_factory_load_the_weights_strictly(plugin, weights, tmp_path):
    from safetensors.torch import load_file, save_file

    from ecgray.errors import ModelError
    from ecgray.models import available_models, load_model, model_id
    from ecgray_example_ecg8 import SPEC

    assert "ecg8" in available_models() and f"{PACKAGE}:build" in available_models()["ecg8"]
    m = load_model("ecg8", weights=weights)
    f = load_model(f"{PACKAGE}:build", weights=weights)
    ref = own_model(weights)
    assert m.spec == SPEC == f.spec and m.classes == CLASSES and not m.training
    assert SPEC.to_dict() == {"fs": 500.0, "n_samples": 5000, "leads": list(FILE_LEADS), "classes": list(CLASSES),
                              "activation": "softmax", "units": "mV", "normalisation": "none", "target": "logit"}
    state = load_file(str(weights))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(2, 8, N)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x)) and torch.equal(f(x), ref(x))
    assert model_id(m) == model_id(f) == model_id(ref)
    save_file({k: v for k, v in state.items() if k != "fc.bias"}, str(tmp_path / "short.safetensors"))
    with pytest.raises(ModelError, match=r"missing tensors \['fc.bias'\]"):
        load_model("ecg8", weights=tmp_path / "short.safetensors")


def test_preprocess_builds_the_input_of_the_spec(plugin, dataset):
    """ecgray's reader + ``preprocess(rec, spec=SPEC)`` give exactly the independent input: leads by name,
    no resampling, first 5,000 samples or centred padding; the 8-lead record is processed, not refused."""
    from ecgray.io import read_record
    from ecgray.preprocess import preprocess
    from ecgray_example_ecg8 import SPEC

    for name, (_, seconds, leads) in RECORDS.items():
        rec = read_record(str(dataset / name))
        (w,) = preprocess(rec, spec=SPEC)
        x, offset = own_input(dataset / name)
        assert w.x.shape == (8, N) and w.offset == offset, name
        np.testing.assert_allclose(w.x, x, rtol=0, atol=1e-6, err_msg=name)
        assert ("extra_leads_dropped" in w.flags) == (leads == "12"), (name, w.flags)
        assert "resampled" not in w.flags
        assert ("cropped" in w.flags) == (seconds * FS > N) and ("padded" in w.flags) == (seconds * FS < N)


def test_attribute_matches_autograd(plugin, weights, dataset):
    from ecgray.attribution import attribute
    from ecgray.models import load_model

    m, ref = load_model("ecg8", weights=weights), own_model(weights)
    names = ["N01", "A01", EIGHT_LEAD]
    x = np.stack([own_input(dataset / n)[0] for n in names])
    res = attribute(m, x, targets=list(CLASSES), method="saliency")
    for i, n in enumerate(names):
        np.testing.assert_allclose(res.probabilities[i], own_probabilities(ref, x[i]), rtol=1e-5, atol=1e-7)
        for j, t in enumerate(CLASSES):
            want = own_saliency(ref, x[i], t)
            np.testing.assert_allclose(res.relevance[i, j], want, rtol=1e-4, atol=1e-6 * want.max(),
                                       err_msg=f"{n} {t}")


# --------------------------------------------------------------------------- the pipeline, end to end
def test_run_writes_the_models_own_tables(explained, weights):
    """records: one row per record, prob_/label_ columns of NORM, AF, LBBB only, probabilities equal to the
    independent softmax, labels from the #Dx codes; relevance_summary: the 8 leads, canonical names; the
    manifest carries the spec; beats at 500 Hz (2 ms steps); no errors (the 8-lead record included)."""
    from ecgray_example_ecg8 import SPEC

    out, s1, s2, inp = explained
    names = list(RECORDS) + [ADDED[0]]
    assert (s1.records, s1.records_ok, s1.records_error) == (len(RECORDS), len(RECORDS), 0)
    assert _table(out, "errors") == []
    recs = _table(out, "records")
    assert sorted(r["record_id"] for r in recs) == sorted(names)
    cols = set(recs[0])
    assert {c for c in cols if c.startswith("prob_")} == {f"prob_{c}" for c in CLASSES}
    assert {c for c in cols if c.startswith("label_")} - {"label_normal", "label_scheme"} == {
        f"label_{c}" for c in CLASSES}
    ref = own_model(weights)
    specs = {**RECORDS, ADDED[0]: ADDED[1]}
    kinds = {n: k for n, (k, _, _) in specs.items()}
    for r in recs:
        name = r["record_id"]
        x, offset = own_input(inp / name)
        assert r["window"] == 0 and r["window_offset"] == offset and r["fs_in"] == FS, name
        kind, seconds, leads = specs[name]
        assert r["n_samples_in"] == round(seconds * FS), name
        assert ("extra_leads_dropped" in r["flags"]) == (leads == "12") and "resampled" not in r["flags"], name
        got = np.array([r[f"prob_{c}"] for c in CLASSES])
        np.testing.assert_allclose(got, own_probabilities(ref, x), rtol=1e-4, atol=1e-6, err_msg=name)
        assert {c: r[f"label_{c}"] for c in CLASSES} == {c: KIND_OF_CLASS[c] == kinds[name] for c in CLASSES}, name
        assert r["label_normal"] == (kinds[name] == "normal")
        assert r["model"] == "ecg8"
    summ = _table(out, "relevance_summary")
    assert {r["lead"] for r in summ} == set(TABLE_LEADS)
    assert {r["target"] for r in summ} == set(CLASSES)
    assert {r["method"] for r in summ} == {"saliency", "integrated_gradients"}
    assert len(summ) == len(names) * 2 * len(CLASSES) * len(TABLE_LEADS)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model_spec"] == SPEC.to_dict()
    beats = _table(out, "beats")
    assert len(beats) == len(names) * len(TABLE_LEADS)
    assert {r["lead"] for r in beats} == set(TABLE_LEADS)
    # the average beat at the model's rate: -300..+500 ms in 2 ms steps (400 samples at 500 Hz)
    assert {(r["offset_start_ms"], r["offset_step_ms"]) for r in beats} == {(-300.0, 2.0)}
    assert all(r["n_beats"] > 0 and len(r["signal"]) == 400 for r in beats), [
        (r["record_id"], r["lead"], r["quality"]) for r in beats if not r["n_beats"]]
    brel = _table(out, "beats_relevance")
    assert len(brel) == len(names) * 2 * len(CLASSES) * len(TABLE_LEADS)
    assert {r["lead"] for r in brel} == set(TABLE_LEADS) and {len(r["relevance"]) for r in brel} == {400}


def test_saliency_matches_autograd(explained, weights):
    """relevance_summary.sum per lead = the sum of the independent |d logit / d x| over the lead's samples;
    the kept per-sample relevance equals it sample by sample."""
    out, _, _, inp = explained
    ref = own_model(weights)
    summ = _by_key([r for r in _table(out, "relevance_summary") if r["method"] == "saliency"],
                   "record_id", "target", "lead")
    rel = _by_key([r for r in _table(out, "relevance") if r["method"] == "saliency"], "record_id", "target", "lead")
    for name in list(RECORDS) + [ADDED[0]]:
        x, _ = own_input(inp / name)
        for t in CLASSES:
            sal = own_saliency(ref, x, t)
            got = np.array([summ[(name, t, ld)]["sum"] for ld in TABLE_LEADS])
            np.testing.assert_allclose(got, sal.sum(axis=1), rtol=1e-4, err_msg=f"{name} {t}")
            np.testing.assert_allclose([summ[(name, t, ld)]["abs_sum"] for ld in TABLE_LEADS], sal.sum(axis=1),
                                       rtol=1e-4)
            if name in ("A02", EIGHT_LEAD):
                got_rel = np.stack([np.asarray(rel[(name, t, ld)]["relevance"], np.float32) for ld in TABLE_LEADS])
                np.testing.assert_allclose(got_rel, sal, rtol=1e-4, atol=1e-6 * sal.max(), err_msg=f"{name} {t}")


def test_integrated_gradients_is_complete(explained, weights):
    """IG (zeros baseline, 16 steps): per record x target, the sum over the 8 leads of relevance_summary.sum
    minus the stored delta is the independent logit(x) - logit(0), and the delta is small."""
    out, _, _, inp = explained
    ref = own_model(weights)
    rows = [r for r in _table(out, "relevance_summary") if r["method"] == "integrated_gradients"]
    total: dict = {}
    for r in rows:
        total.setdefault((r["record_id"], r["target"]), []).append(r)
    zero = own_logits(ref, np.zeros((8, N), np.float32))
    for (name, t), rs in total.items():
        x, _ = own_input(inp / name)
        diff = float(own_logits(ref, x)[CLASSES.index(t)] - zero[CLASSES.index(t)])
        s = float(sum(r["sum"] for r in rs))
        delta = rs[0]["delta"]
        assert len(rs) == 8 and all(r["delta"] == delta for r in rs)
        assert abs((s - diff) - delta) <= 1e-3 * max(1.0, abs(diff)), (name, t, s, diff, delta)
        assert abs(delta) <= 0.15 * max(1.0, abs(diff)), (name, t, delta)  # measured <= 0.054


def test_resume_runs_only_the_added_record(explained):
    out, s1, s2, _ = explained
    n_shards = -(-len(RECORDS) // 2)
    assert (s1.shards, s1.shards_written) == (n_shards, n_shards)
    assert s2.resume["new_records"] == 1 and s2.resume["committed_shards"] == n_shards
    assert (s2.shards_written, s2.shards_skipped) == (1, n_shards)
    assert (s2.records, s2.records_ok, s2.records_error) == (len(RECORDS) + 1, len(RECORDS) + 1, 0)
    recs = _table(out, "records")
    assert len(recs) == len(RECORDS) + 1
    run_of = {r["record_id"]: r["run_id"] for r in recs}
    assert run_of[ADDED[0]] == s2.run_id and {run_of[n] for n in RECORDS} == {s1.run_id}


def test_reduce_and_report(explained, weights):
    """lead_relevance.mean_relevance of saliency / AF / positive per lead = NumPy mean over the AF-labelled
    records of the independent per-lead saliency sum; the report names the classes and the leads and has
    figures."""
    from ecgray.reduce import reduce
    from ecgray.report import report

    out, _, _, inp = explained
    tables = reduce(str(out))
    lr = tables["lead_relevance"].to_dicts()
    assert {r["lead"] for r in lr} == set(TABLE_LEADS) and {r["target"] for r in lr} == set(CLASSES)
    ref = own_model(weights)
    kinds = {**{n: k for n, (k, _, _) in RECORDS.items()}, ADDED[0]: ADDED[1][0]}
    for target, group, members in [
        ("AF", "positive", [n for n, k in kinds.items() if k == "AF"]),
        ("AF", "normal", [n for n, k in kinds.items() if k == "normal"]),
        ("LBBB", "positive", [n for n, k in kinds.items() if k == "LBBB"]),
    ]:
        sums = np.stack([own_saliency(ref, own_input(inp / n)[0], target).sum(axis=1) for n in members])
        want = sums.astype(np.float64).mean(axis=0)
        rows = {r["lead"]: r for r in lr if (r["method"], r["target"], r["group"]) == ("saliency", target, group)}
        assert set(rows) == set(TABLE_LEADS), (target, group)
        for j, ld in enumerate(TABLE_LEADS):
            assert rows[ld]["n"] == len(members)
            np.testing.assert_allclose(rows[ld]["mean_relevance"], want[j], rtol=1e-4, err_msg=f"{target} {group} {ld}")
            assert rows[ld]["rank"] == 1 + int((want > want[j]).sum()), (target, group, ld)
    cp = tables["class_probability"].to_dicts()
    assert {r["target"] for r in cp} == set(CLASSES)
    index = Path(report(str(out)))
    html = index.read_text()
    for word in CLASSES + TABLE_LEADS:
        assert word in html, word
    pngs = sorted(index.parent.glob("*.png"))
    assert pngs and html.count("<img") >= len(pngs) > 0
    assert all(p.name in html for p in pngs)


def test_the_ribeiro_model_refuses_the_8_lead_record(explained, tmp_path):
    """The published 12-lead network cannot take the record without III/aVR/aVL/aVF (missing_leads), which
    ecg8 explained above; a 12-lead record of the same input goes through both."""
    from ecgray.pipeline import run

    out, _, _, inp = explained
    sub = tmp_path / "in"
    sub.mkdir()
    for f in record_files(inp, EIGHT_LEAD) + record_files(inp, "N01"):
        shutil.copy(inp / f, sub / f)
    s = run(str(sub), str(tmp_path / "out"), model="demo", methods=["saliency"], targets=["AF"], shard_size=2,
            progress=False)
    assert (s.records, s.records_ok, s.records_error) == (2, 1, 1)
    (err,) = _table(tmp_path / "out", "errors")
    assert err["record_id"] == EIGHT_LEAD and err["error_type"] == "missing_leads"
    assert all(ld in err["message"] for ld in ("DIII", "AVR", "AVL", "AVF"))
    assert [r["record_id"] for r in _table(tmp_path / "out", "records")] == ["N01"]
    assert EIGHT_LEAD in {r["record_id"] for r in _table(out, "records")}


def test_s3_run_matches_the_local_run(cluster, explained, weights):
    """The same model on an S3 input and output (moto): the same probabilities and lead sums as locally."""
    client, bucket = cluster
    out, _, _, inp = explained
    names = ["A02", "L01", EIGHT_LEAD, "with space"]
    files = [f for n in names for f in record_files(inp, n)]
    upload_dir(client, bucket, "in", inp, files)
    s3_out = f"s3://{bucket}/out/"
    from ecgray.pipeline import run

    s = run(f"s3://{bucket}/in/", s3_out, model="ecg8", weights=str(weights), methods=["saliency"],
            shard_size=2, progress=False)
    assert (s.records, s.records_ok, s.records_error) == (len(names), len(names), 0)
    local = _by_key(_table(out, "records"), "record_id")
    remote = _table(s3_out, "records")
    assert sorted(r["record_id"] for r in remote) == sorted(names)
    for r in remote:
        np.testing.assert_allclose([r[f"prob_{c}"] for c in CLASSES],
                                   [local[(r["record_id"],)][f"prob_{c}"] for c in CLASSES], rtol=1e-5)
        assert r["uri"].startswith(f"s3://{bucket}/in/")
    lsum = _by_key([r for r in _table(out, "relevance_summary") if r["method"] == "saliency"],
                   "record_id", "target", "lead")
    rsum = _table(s3_out, "relevance_summary")
    assert {r["lead"] for r in rsum} == set(TABLE_LEADS) and len(rsum) == len(names) * len(CLASSES) * 8
    for r in rsum:
        np.testing.assert_allclose(r["sum"], lsum[(r["record_id"], r["target"], r["lead"])]["sum"], rtol=1e-5)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/_manifest.json").get("Contents", [])]
    assert keys == ["out/_manifest.json"]
    manifest = json.loads(client.get_object(Bucket=bucket, Key="out/_manifest.json")["Body"].read())
    from ecgray_example_ecg8 import SPEC

    assert manifest["model_spec"] == SPEC.to_dict()
