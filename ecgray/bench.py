"""``ecgray bench``: attribution and pipeline speed as ratios measured side by side in one run.

Every figure is a ratio against a baseline timed in the same process, on the same
inputs, with the machine, library versions and thread counts recorded:

* ``ig``: the naive loop users write -- one record and one target at a time,
  ``captum.attr.IntegratedGradients(model).attribute(x, target=t, n_steps=n)``
  with Captum's defaults -- vs ecgray's :func:`~ecgray.attribution.attribute`
  (all targets, fast path; and its rows path), outputs compared;
* ``ig_equal_error``: ecgray's adaptive IG (``rtol``: per row, nested
  trapezoid grids of 9, 17, 33, ... points until ``|delta| <= rtol |f(x) - f(0)|``;
  each level evaluates only its new midpoints) with ``rtol`` set to 1x and 2x
  the naive IG's median completeness error, vs the naive loop at its fixed steps;
* ``saliency`` / ``lrp_epsilon``: one (record, target) at a time vs ecgray;
* ``batch``: ecgray IG records per call;
* ``precision`` (CUDA): IG in true float32 (ecgray's default), TF32 and bf16,
  eager and (``--compile``) ``torch.compile``d, each with its error against
  the float32 result; the main phases run the naive loop and ecgray both in
  true float32 (TF32 off), so their outputs can be compared to 1e-4;
* ``end_to_end``: the local Ray pipeline (read, preprocess, attribute, beats,
  Parquet) vs the attribution stage alone on the same records.

Peak RSS of this process is sampled during each phase; on CUDA, GPU
utilisation (``nvidia-smi``) and the fraction of the card's bf16 dense peak.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

#: a source checkout's root (``pyproject.toml`` next to the package), None for an installed wheel
_CHECKOUT = Path(__file__).resolve().parents[1]
CHECKOUT: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None
DATA_ENV = "ECGRAY_DATA"


def data_root() -> Path:
    """Where the benchmark looks for the shared data (``code15-test80/``, ``cpsc2018-a0001-a0150/``):
    ``$ECGRAY_DATA``, else ``../shared/data`` next to the working directory, else next to a source
    checkout. Missing data fall back to synthetic inputs."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    for base in (Path.cwd(), CHECKOUT):
        if base is not None and (base.parent / "shared" / "data").is_dir():
            return base.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def default_output(name: str) -> Path:
    """``benchmarks/results/<name>`` of the working directory (or the source checkout) when that folder
    exists, else ``./<name>``: never inside an installed package."""
    for base in (Path.cwd(), CHECKOUT):
        if base is not None and (base / "benchmarks" / "results").is_dir():
            return base / "benchmarks" / "results" / name
    return Path.cwd() / name
#: dense bf16 peak (TFLOP/s, no sparsity) by card name fragment
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                    "L4": 121.0, "A10G": 70.0, "L40S": 362.0}


# ---------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------


class Sampler:
    """Peak RSS of this process (and GPU utilisation on CUDA) sampled in a thread."""

    def __init__(self, interval: float = 0.05, gpu: bool = False):
        import psutil

        self.proc = psutil.Process()
        self.interval, self.gpu = interval, gpu
        self.peak_rss = 0
        self.util: list[float] = []
        self._stop = threading.Event()

    def _gpu_util(self) -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except Exception:  # noqa: BLE001 - no nvidia-smi: no utilisation figure
            return None

    def _run(self):
        n = 0
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            if self.gpu and n % 4 == 0:
                u = self._gpu_util()
                if u is not None:
                    self.util.append(u)
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak_rss = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed(device: str, out: dict, gpu: bool = False):
    """Wall time, peak RSS (MiB) and GPU utilisation of the block into ``out``."""
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with Sampler(gpu=gpu) as s:
        t0 = time.perf_counter()
        yield out
        _sync(device)
        out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = round(s.peak_rss / 2**20, 1)
    if s.util:
        out["gpu_util_mean"] = round(float(np.mean(s.util)), 1)
    if device.startswith("cuda"):
        out["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def machine(device: str) -> dict:
    import captum

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # a GPU box with only the attribution stack: no pipeline phase there
        ray_version = None

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "captum": captum.__version__, "ray": ray_version, "device": device,
            "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32_conv"] = bool(torch.backends.cudnn.allow_tf32)  # fp32 convolutions run as TF32 when true
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def forward_flops(model, shape=(12, 4096)) -> float:
    """FLOPs (2 x multiply-adds) of one forward of one ECG, from the conv/linear layer shapes."""
    flops = 0.0

    def hook(m, inp, out):
        nonlocal flops
        if isinstance(m, torch.nn.Conv1d):
            flops += 2.0 * out.shape[1] * out.shape[2] * (m.in_channels // m.groups) * m.kernel_size[0]
        elif isinstance(m, torch.nn.Linear):
            flops += 2.0 * m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    p = next(model.parameters())
    with torch.no_grad():
        model(torch.zeros((1, *shape), device=p.device, dtype=p.dtype))
    for h in hs:
        h.remove()
    return flops


def peak_tflops(name: str) -> float | None:
    for key, v in PEAK_BF16_TFLOPS.items():
        if key in name:
            return v
    return None


def bench_inputs(n: int, data: Path | None = None) -> tuple[np.ndarray, str]:
    """``n`` model inputs: real CODE-15 exams if the shared data are there, else synthetic ECGs."""
    import h5py

    d = data or data_root() / "code15-test80"
    files = sorted(d.glob("*.hdf5"))[:n] if d.is_dir() else []
    if len(files) >= n:
        xs = []
        for f in files:
            with h5py.File(f, "r") as h:
                xs.append(np.asarray(h["tracings"][0], dtype=np.float32).T)
        return np.stack(xs), f"CODE-15 exams ({d})"
    from ecgray.synth import training_arrays

    X, _ = training_arrays({"normal": n}, seed=0)[:2]
    return X[:n].astype(np.float32), "synthetic ECGs (ecgray.synth, seed 0)"


def bench_setup(model: str, n_rec: int, data: Path | None, device: str, **extra) -> tuple:
    """``(net, X, T, F, res)``: the model on ``device`` in eval mode, ``n_rec`` inputs, all target
    indices, FLOPs of one forward, and the result dict every benchmark starts from (``extra`` added)."""
    from ecgray.models import load_model

    net = load_model(model).to(device).eval()
    X, source = bench_inputs(n_rec, data)
    F = forward_flops(net)
    res: dict = {"machine": machine(device), "model": model, "forward_gflop": round(F / 1e9, 3), "inputs": source,
                 "records": n_rec, "targets": list(net.classes), **extra, "phases": {}}
    return net, X, list(range(len(net.classes))), F, res


def ig_reference(net, X: np.ndarray, n_steps: int, device: str) -> tuple[np.ndarray, dict]:
    """The fast path's IG-``n_steps`` over all targets in float32 after a warm-up call, timed:
    ``(relevance, phase dict)`` -- the reference the GPU precision and layout figures compare with."""
    from ecgray.attribution import attribute

    attribute(net, X, targets=None, method="ig", n_steps=n_steps)  # warm-up
    ph: dict = {}
    with timed(device, ph, gpu=device.startswith("cuda")):
        ref = attribute(net, X, targets=None, method="ig", n_steps=n_steps).relevance
    return ref, ph


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |b|, per (record, target) row, worst row."""
    num = np.abs(a - b).reshape(*a.shape[:2], -1).max(-1)
    den = np.abs(b).reshape(*b.shape[:2], -1).max(-1)
    return float((num / np.maximum(den, 1e-30)).max())


# ---------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------


def naive_ig(model, X, targets, n_steps, device):
    from captum.attr import IntegratedGradients

    out = np.empty((len(X), len(targets), *X.shape[1:]), dtype=np.float32)
    ig = IntegratedGradients(model)
    for i in range(len(X)):
        xi = torch.as_tensor(X[i : i + 1], device=device)
        for j, t in enumerate(targets):
            out[i, j] = ig.attribute(xi, target=t, n_steps=n_steps)[0].detach().cpu().numpy()
    return out


def naive_saliency(model, X, targets, device):
    from captum.attr import Saliency

    out = np.empty((len(X), len(targets), *X.shape[1:]), dtype=np.float32)
    for i in range(len(X)):
        xi = torch.as_tensor(X[i : i + 1], device=device)
        for j, t in enumerate(targets):
            out[i, j] = Saliency(model).attribute(xi, target=t)[0].detach().cpu().numpy()
    return out


def gains(model, X, targets, device) -> np.ndarray:
    with torch.no_grad():
        x = torch.as_tensor(X, device=device)
        return (model(x) - model(torch.zeros_like(x)))[:, targets].float().cpu().numpy()


def run_bench(*, device: str = "cpu", quick: bool = False, model: str = "random", records: int | None = None,
              n_steps: tuple[int, ...] | None = None, e2e_records: int | None = None, precisions: bool = True,
              batch_sizes: tuple[int, ...] | None = None, data: Path | None = None, compile_model: bool = False,
              checkpoint: Path | None = None, console=None) -> dict:
    """Run the phases; returns the JSON-able result (``rows`` = the printed table).

    ``checkpoint``: a JSON path rewritten after every phase, so a run cut short
    (a time limit on a lent GPU) still leaves what it measured. ``compile_model``:
    also time ``torch.compile`` of the model (CUDA phases; compile time reported).
    """
    from ecgray.attribution import attribute
    from ecgray.attribution.core import precision_mode

    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    n_rec = records or (1 if quick else (64 if cuda else 4))
    steps = n_steps or ((8,) if quick else (16, 50))
    bsizes = tuple(dict.fromkeys(batch_sizes or ((1, n_rec) if not cuda else (1, 8, 32, 64))))
    net, X, T, F, res = bench_setup(model, n_rec, data, device, quick=quick)
    rows: list[dict] = []
    P = res["phases"]

    def row(name, base_s, s, n_attr, **extra):
        r = {"phase": name, "baseline_s": None if base_s is None else round(base_s, 3), "ecgray_s": round(s, 3),
             "ratio": None if base_s is None else round(base_s / s, 2), "attributions_per_s": round(n_attr / s, 2),
             **extra}
        rows.append(r)
        if checkpoint is not None:
            save({**res, "rows": rows, "partial": True}, checkpoint)
        return r

    # warm-up (kernels, lazy imports) outside every timing
    attribute(net, X[:1], targets=[0], method="ig", n_steps=2)
    naive_ig(net, X[:1], [0], 2, device)
    n_attr = n_rec * len(T)
    fast_by_steps: dict[int, np.ndarray] = {}
    for n in steps:
        ph: dict = {"n_steps": n}
        with timed(device, ph.setdefault("naive", {}), gpu=cuda), precision_mode("fp32", device):
            ref = naive_ig(net, X, T, n, device)
        with timed(device, ph.setdefault("ecgray", {}), gpu=cuda):
            fast = attribute(net, X, targets=None, method="ig", n_steps=n)
        with timed(device, ph.setdefault("ecgray_rows", {}), gpu=cuda):
            rows_path = attribute(net, X, targets=None, method="ig", n_steps=n, multi_target="rows")
        fast_by_steps[n] = fast.relevance
        ph["max_abs_diff"] = float(np.abs(fast.relevance - ref).max())
        ph["max_rel_diff"] = max_rel_diff(fast.relevance, ref)
        ph["max_rel_diff_rows_path"] = max_rel_diff(rows_path.relevance, ref)
        ph["chunk"] = fast.params["internal_batch_size"]
        b, e = ph["naive"]["seconds"], ph["ecgray"]["seconds"]
        row(f"IG-{n} all targets (fast path)", b, e, n_attr, max_rel_diff=f"{ph['max_rel_diff']:.1e}",
            peak_rss_mib=ph["ecgray"]["peak_rss_mib"])
        row(f"IG-{n} rows path (targets stacked)", b, ph["ecgray_rows"]["seconds"], n_attr,
            max_rel_diff=f"{ph['max_rel_diff_rows_path']:.1e}", peak_rss_mib=ph["ecgray_rows"]["peak_rss_mib"])
        if cuda:
            roofline(ph, n, F, len(T), n_attr, res["machine"].get("gpu", ""), seconds=e)
        # equal completeness error: adaptive steps (nested trapezoid) at rtol = the naive loop's median
        # error (then every row is held to it: more accurate than the naive loop, whose worse half is
        # above it) and at 2x that (closer to the naive loop's own median)
        g = gains(net, X, T, device)
        d_ref = ref.sum(axis=(2, 3)) - g
        e_ref = np.abs(d_ref) / np.maximum(np.abs(g), 1e-12)
        med = float(np.median(e_ref))
        ph["equal_error"] = {}
        for mult in (1, 2):
            rtol = mult * med
            eq: dict = {"rtol": rtol, "rtol_over_naive_median": mult}
            with timed(device, eq, gpu=cuda):
                ad = attribute(net, X, targets=None, method="ig", integration_method="trapezoid", rtol=rtol,
                               n_steps=8 * n + 1 if quick else 129)
            e_ad = np.abs(ad.delta) / np.maximum(np.abs(g), 1e-12)
            eq.update(naive_median_rel_error=med, naive_p90_rel_error=float(np.quantile(e_ref, 0.9)),
                      ecgray_median_rel_error=float(np.median(e_ad)),
                      ecgray_p90_rel_error=float(np.quantile(e_ad, 0.9)),
                      rows_within_rtol=float(np.mean(e_ad <= rtol * (1 + 1e-6))),
                      mean_points=float(ad.steps.mean()),
                      steps_histogram={int(k): int(v) for k, v in zip(*np.unique(ad.steps, return_counts=True))})
            ph["equal_error"][f"rtol_x{mult}"] = eq
            row(f"IG adaptive, rtol={mult}x naive IG-{n} median error", b, eq["seconds"], n_attr,
                median_err=f"{eq['ecgray_median_rel_error']:.1e} vs {med:.1e}",
                p90_err=f"{eq['ecgray_p90_rel_error']:.1e} vs {eq['naive_p90_rel_error']:.1e}",
                mean_points=round(eq["mean_points"], 1))
            if quick:
                break
        P[f"ig_{n}"] = ph

    for method, naive in (("saliency", lambda: naive_saliency(net, X, T, device)),
                          ("lrp_epsilon", lambda: attribute(net, X, targets=None, method="lrp_epsilon", batch_size=1,
                                                            multi_target="rows").relevance)):
        ph = {}
        with timed(device, ph.setdefault("naive", {}), gpu=cuda), precision_mode("fp32", device):
            ref = naive()
        with timed(device, ph.setdefault("ecgray", {}), gpu=cuda):
            fast = attribute(net, X, targets=None, method=method)
        ph["max_rel_diff"] = max_rel_diff(fast.relevance, ref)
        P[method] = ph
        label = "one row at a time" if method == "lrp_epsilon" else "Captum per target"
        row(f"{method} all targets (vs {label})", ph["naive"]["seconds"], ph["ecgray"]["seconds"], n_attr,
            max_rel_diff=f"{ph['max_rel_diff']:.1e}")

    n_b = steps[0]
    P["batch"] = {}
    for bs in bsizes:
        ph = {}
        with timed(device, ph, gpu=cuda):
            attribute(net, X, targets=None, method="ig", n_steps=n_b, batch_size=bs)
        P["batch"][bs] = ph
        row(f"IG-{n_b} batch_size={bs} records", None, ph["seconds"], n_attr, peak_rss_mib=ph["peak_rss_mib"])

    if cuda and precisions:
        n = steps[-1]
        P["precision"] = cuda_precisions(net, X, T, n, F, res["machine"].get("gpu", ""), device, row, compile_model,
                                          fast_by_steps[n], P[f"ig_{n}"]["ecgray"]["seconds"], layouts=("1d", "2d"))

    n_e2e = e2e_records if e2e_records is not None else (2 if quick else 8)
    if n_e2e:
        P["end_to_end"] = end_to_end(model, n_e2e, steps[0], device=device, data=data)
        e = P["end_to_end"]
        row(f"end to end, IG-{steps[0]}, {e['records']} CPSC records (vs attribution stage)", e["attribution_s"],
            e["pipeline_s"], e["records"] * len(T), records_per_s=round(e["pipeline_records_per_s"], 3))
    res["rows"] = rows
    return res


def roofline(ph: dict, n_steps: int, F: float, n_targets: int, n_attr: int, gpu: str,
              seconds: float | None = None) -> None:
    """Achieved TFLOP/s of an IG run and its fraction of the card's dense bf16 peak, into ``ph``.

    Work counted: per record ``n_steps`` shared forwards plus, per target, ``n_steps``
    input-gradient backwards of about one forward's FLOPs each."""
    per = n_steps * F * (1.0 / n_targets + 1.0)
    s = seconds if seconds is not None else ph["seconds"]
    ph["achieved_tflops"] = round(n_attr * per / s / 1e12, 2)
    pk = peak_tflops(gpu)
    ph["bf16_peak_tflops"] = pk
    ph["roofline_fraction_of_bf16_peak"] = None if pk is None else round(ph["achieved_tflops"] / pk, 4)


def rel_l2(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Median and worst relative L2 error per (record, target) row."""
    n = a.shape[0] * a.shape[1]
    num = np.linalg.norm((a - ref).reshape(n, -1), axis=1)
    den = np.maximum(np.linalg.norm(ref.reshape(n, -1), axis=1), 1e-30)
    return float(np.median(num / den)), float((num / den).max())


def cuda_precisions(net, X, T, n, F, gpu, device, row, compile_model, ref, ref_s, layouts=("1d",),
                     precisions=("fp32", "tf32", "bf16")) -> dict:
    """IG-``n`` in true float32, TF32 and bf16, eager and (``compile_model``) compiled, per layout
    (``"1d"``: the model as it is; ``"2d"``: :class:`~ecgray.models.ribeiro2020.ResNet2dView`,
    channels-last 2-D convolutions): time after a warm-up (the compile time is the first call's),
    error vs the float32 fast path ``ref``, achieved TFLOP/s and the share of the card's bf16 peak."""
    from ecgray.attribution import attribute
    from ecgray.attribution.fast import compile_model as _compile
    from ecgray.models.ribeiro2020 import ResNet2dView

    n_attr = len(X) * len(T)
    out: dict = {}
    for layout, prec, mode in ((lay, p, m) for lay in layouts for p in precisions
                               for m in (("eager", "compiled") if compile_model else ("eager",))):
        base = net if layout == "1d" else ResNet2dView(net).eval()
        key = f"{prec}_{mode}" if layout == "1d" else f"{prec}_{mode}_{layout}"
        ph: dict = {"precision": prec, "mode": mode, "layout": layout}
        try:
            if mode == "compiled":
                torch._dynamo.reset()  # a fresh cache: no recompile limit carried over from other settings
                model = _compile(base)
            else:
                model = base
            t0 = time.perf_counter()
            attribute(model, X, targets=None, method="ig", n_steps=n, precision=prec)  # warm-up / compile
            ph["first_call_s"] = time.perf_counter() - t0
            with timed(device, ph, gpu=True):
                res = attribute(model, X, targets=None, method="ig", n_steps=n, precision=prec)
        except Exception as exc:  # noqa: BLE001 - report, keep the other figures
            ph["error"] = f"{type(exc).__name__}: {exc}"[:500]
            out[key] = ph
            continue
        ph["median_rel_l2_vs_fp32"], ph["max_rel_l2_vs_fp32"] = rel_l2(res.relevance, ref)
        ph["max_rel_diff_vs_fp32"] = max_rel_diff(res.relevance, ref)
        roofline(ph, n, F, len(T), n_attr, gpu)
        out[key] = ph
        row(f"IG-{n} {prec} {mode}{'' if layout == '1d' else ' 2d-cl'} (vs fp32 eager)", ref_s, ph["seconds"], n_attr,
            rel_l2=f"{ph['median_rel_l2_vs_fp32']:.1e}", tflops=ph["achieved_tflops"],
            roofline=ph["roofline_fraction_of_bf16_peak"], gpu_util=ph.get("gpu_util_mean"),
            first_call_s=round(ph["first_call_s"], 1))
    return out


def end_to_end(model: str, n: int, n_steps: int, *, device: str, data: Path | None = None) -> dict:
    """Local Ray pipeline (read .. write) on ``n`` WFDB records vs ``attribute`` alone on the same windows."""
    import shutil
    import tempfile

    import ray

    from ecgray.attribution import attribute
    from ecgray.explain import prepare
    from ecgray.models import load_model
    from ecgray.pipeline import run as run_dataset
    from ecgray.pipeline.run import ray_init_if_needed

    src = data_root() / "cpsc2018-a0001-a0150"
    tmp = Path(tempfile.mkdtemp(prefix="ecgray-bench-"))
    try:
        inp = tmp / "in"
        inp.mkdir()
        if src.is_dir() and len(list(src.glob("*.hea"))) >= n:
            for h in sorted(src.glob("*.hea"))[:n]:
                for f in src.glob(h.stem + ".*"):
                    os.symlink(f, inp / f.name)
            source = f"CPSC 2018 ({src})"
        else:
            from ecgray.synth import write_dataset

            write_dataset(inp, {"normal": n}, seed=0)
            source = "synthetic WFDB (ecgray.synth)"
        uris = sorted(str(p.with_suffix("")) for p in inp.glob("*.hea"))[:n]
        xs = []
        for u in uris:
            prep, err = prepare(u, run_id="bench")
            if prep is not None:
                xs.extend(w.x for w in prep.windows)
        X = np.stack(xs).astype(np.float32)
        net = load_model(model).to(device).eval()
        attribute(net, X[:1], targets=[0], method="ig", n_steps=2)  # warm-up
        params = {"integrated_gradients": {"n_steps": n_steps}}
        out: dict = {"records": len(uris), "windows": len(X), "inputs": source, "n_steps": n_steps,
                     "torch_threads": torch.get_num_threads()}
        with timed(device, out.setdefault("attribution", {})):
            attribute(net, X, targets=None, method="ig", n_steps=n_steps, batch_size=8)
        if not ray.is_initialized():
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray_init_if_needed(log_to_driver=False)
        t0 = time.perf_counter()
        s = run_dataset(str(inp), str(tmp / "out"), model=model, methods=["integrated_gradients"], params=params,
                        shard_size=max(1, n // 4), progress=False, use_gpu=device.startswith("cuda"),
                        torch_threads=torch.get_num_threads())
        out["pipeline_s"] = time.perf_counter() - t0
        out["attribution_s"] = out["attribution"]["seconds"]
        out["pipeline_records_per_s"] = s.records_ok / out["pipeline_s"]
        out["attribution_records_per_s"] = len(uris) / out["attribution_s"]
        out["ratio_pipeline_to_attribution"] = out["attribution_s"] / out["pipeline_s"]
        out["stage_seconds"] = s.stage_seconds
        out["records_ok"], out["records_error"] = s.records_ok, s.records_error
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(res: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if console.width < 150:  # CI logs are not terminals: do not squeeze the table into 80 columns
        console = Console(width=150, file=console.file)
    m = res["machine"]
    title = (f"ecgray bench on {m.get('gpu') or m['cpu']} ({m['device']}, {m['torch_threads']} torch threads), "
             f"model {res['model']} ({res['forward_gflop']} GFLOP/forward), {res['records']} records x "
             f"{len(res['targets'])} targets")
    t = Table(title=title)
    for c in ("phase", "baseline s", "ecgray s", "ratio", "attr/s", "notes"):
        t.add_column(c, justify="left" if c in ("phase", "notes") else "right")
    for r in res["rows"]:
        notes = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k not in ("phase", "baseline_s", "ecgray_s", "ratio", "attributions_per_s"))
        t.add_row(r["phase"], "" if r["baseline_s"] is None else f"{r['baseline_s']:.2f}", f"{r['ecgray_s']:.2f}",
                  "" if r["ratio"] is None else f"{r['ratio']:.2f}x", f"{r['attributions_per_s']:.2f}", notes)
    console.print(t)


def save(res: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2, default=str))
    return path
