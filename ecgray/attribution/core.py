"""``attribute``: explain a batch of ECGs x several target classes with one call.

>>> res = attribute(model, x, targets=["AF", "LBBB"], method="ig", n_steps=32)
>>> res.relevance.shape            # (N, T, 12, L) float32
>>> res.delta                      # (N, T) IG completeness error, or None

How a call runs
---------------
* The model is put in eval mode (Dropout off, BN running statistics) and its
  parameters are frozen (``requires_grad_(False)``); both are restored
  exactly, per module / per parameter, when the call returns or raises. The
  input is the only tensor that requires grad. Gradients are enabled even if
  the caller is under ``torch.no_grad()``/``inference_mode()``.
* ``output="probability"`` wraps the model as ``nn.Sigmoid()(model(x))``, so
  relevance and deltas refer to the sigmoid outputs (a module, so that DeepLift
  applies its rescale rule to it and LRP passes relevance through it).
* **Fast path** (``multi_target="auto"``, the default, for methods with
  ``shared_targets``: IG, Saliency, InputXGradient, GradientShap, LRP): all
  targets of a chunk of ``batch_size`` *records* come from one forward pass
  and one backward per target (:mod:`ecgray.attribution.fast`); IG's path
  points are further cut to a memory budget. Results equal the rows path to
  float rounding (tested).
* **Rows path** (``multi_target="rows"``, and DeepLift always):
  records x targets become *rows*, record-major (``r0:t0, r0:t1, ..., r1:t0``);
  a row is a copy of its record with its own target class. Rows are processed
  in chunks of at most ``batch_size`` rows (default per method: 16 for IG,
  whose interpolation steps are further bounded by ``internal_batch_size``;
  8 for GradientShap; 32 otherwise), so memory is bounded whatever N and T.
  Rows are independent in eval mode, so results equal one-by-one computation
  (tested to 1e-5 relative).
* ``logits``/``probabilities`` are the plain model's forward on ``x`` (no
  wrapper), in chunks, without gradients.

Not thread-safe for one model instance shared between threads (Captum
registers hooks on it; flags are toggled). DeepLift and LRP work on a deep
copy of the model.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgray.attribution.base import resolve_method
from ecgray.attribution.baselines import PER_RECORD_METHODS, SET_METHODS, baseline_set, named_baselines
from ecgray.models.spec import spec_of

OUTPUTS = ("logit", "probability")
MULTI_TARGET = ("auto", "shared", "rows")
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass
class Attribution:
    """Result of :func:`attribute` (numpy arrays).

    * ``relevance``: float32 ``(N, T, leads, L)`` -- relevance of every input sample
      for target ``targets[t]`` of record ``n``;
    * ``probabilities``: float32 ``(N, C)`` -- the model's probabilities on ``x`` (sigmoid of the logits, or
      softmax for a model whose spec says ``activation="softmax"``);
    * ``logits``: float32 ``(N, C)``;
    * ``targets``: class names, length T, in the order of axis 1 of ``relevance``;
    * ``method``: canonical method name (``"integrated_gradients"``, ...);
    * ``params``: effective, JSON-serialisable parameters (defaults filled in) plus
      ``output`` and ``batch_size``, for provenance;
    * ``delta``: float32 ``(N, T)`` or ``None`` -- IG/DeepLift completeness error
      ``sum(R) - (f(x) - f(baseline))``, LRP conservation error ``sum(R) - f(x)``
      (``f`` = logit or probability, per ``params["output"]``);
    * ``steps``: int32 ``(N, T)`` or ``None`` -- IG steps used per row (adaptive IG, ``rtol``).
    """

    relevance: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    targets: tuple[str, ...]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    delta: np.ndarray | None = None
    steps: np.ndarray | None = None

    @property
    def n_records(self) -> int:
        return int(self.relevance.shape[0])

    def target_index(self, target: str) -> int:
        """Position of the target class named ``target`` along axis 1 of ``relevance`` (and of ``delta``).

        Names only: ``targets`` holds names, and a result does not know its model's class list, so an int
        could only be a position -- not the class index that ``attribute(targets=[0])`` means.
        Raises ``TypeError`` for a non-string, ``ValueError`` for a name that was not attributed."""
        if not isinstance(target, str):
            raise TypeError(f"target_index expects a target class name (one of {list(self.targets)}), "
                            f"got {type(target).__name__} {target!r}")
        try:
            return list(self.targets).index(target)
        except ValueError:
            raise ValueError(f"target {target!r} was not attributed; targets are {list(self.targets)}") from None

    def for_target(self, target: str) -> np.ndarray:
        """Relevance ``(N, leads, L)`` for the target class named ``target`` (see :meth:`target_index`)."""
        return self.relevance[:, self.target_index(target)]


# ---------------------------------------------------------------------------


def _fs(model: nn.Module) -> float | None:
    """The sampling rate of the model's input (its spec's ``fs``; a ResNet1d without a spec: Ribeiro's)."""
    try:
        return float(spec_of(model).fs)
    except Exception:  # noqa: BLE001 - a model without a spec: named baselines that need fs say so
        return None


def _activation(model: nn.Module) -> str:
    """``"sigmoid"`` or ``"softmax"``: the output activation of the model's spec (sigmoid without one)."""
    spec = getattr(model, "spec", None)
    return getattr(spec, "activation", None) or "sigmoid"


class _SigmoidOutput(nn.Module):
    """The model's probabilities as modules, for ``output="probability"``: ``sigmoid(model(x))``
    (``nn.Sigmoid``), or ``softmax`` over the classes (``nn.Softmax``) for a single-label model whose
    :class:`~ecgray.models.spec.ModelSpec` says so."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.sigmoid = nn.Softmax(dim=-1) if _activation(model) == "softmax" else nn.Sigmoid()
        self.classes = getattr(model, "classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.sigmoid(self.model(x))


@contextlib.contextmanager
def precision_mode(precision: str, device) -> Iterator[None]:
    """The arithmetic of one :func:`attribute` call (see its ``precision``); flags restored on exit."""
    dev = torch.device(device)
    if dev.type != "cuda":
        if precision != "fp32":
            raise ValueError(f"precision {precision!r} needs a CUDA device; the model is on {dev}")
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode + frozen parameters inside; every module's ``training`` flag and every
    parameter's ``requires_grad`` are restored on exit (also on error)."""
    training = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in training:
            m.training = mode


def model_classes(model: nn.Module, n_classes: int | None = None) -> tuple[str, ...]:
    classes = getattr(model, "classes", None)
    if classes is not None:
        return tuple(str(c) for c in classes)
    if n_classes is None:
        raise ValueError("model has no .classes; cannot name the targets")
    return tuple(str(i) for i in range(n_classes))


def resolve_targets(targets: Any, classes: Sequence[str]) -> tuple[list[int], tuple[str, ...]]:
    """Class indices and names for ``targets`` (``None`` = all; names or indices)."""
    if targets is None:
        idx = list(range(len(classes)))
    else:
        if isinstance(targets, (str, int, np.integer)):
            targets = [targets]
        idx = []
        for t in targets:
            if isinstance(t, str):
                if t not in classes:
                    raise ValueError(f"unknown target class {t!r}; model classes: {list(classes)}")
                idx.append(list(classes).index(t))
            elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                if not 0 <= int(t) < len(classes):
                    raise ValueError(f"target index {t} out of range for {len(classes)} classes")
                idx.append(int(t))
            else:
                raise TypeError(f"targets must be class names or indices, got {t!r}")
        if not idx:
            raise ValueError("targets is empty")
        if len(set(idx)) != len(idx):
            raise ValueError(f"duplicate targets: {list(targets)}")
    return idx, tuple(classes[i] for i in idx)


def _as_input(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device="cpu", dtype=torch.float32)
        if t.is_inference():
            t = t.clone()
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))
    if t.ndim != 3:
        raise ValueError(f"x must be (N, leads, samples), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("x holds no records")
    if not torch.isfinite(t).all():
        raise ValueError("x contains NaN or inf")
    return t


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        return b.device, (b.dtype if b.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


# ---------------------------------------------------------------------------


def attribute(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    targets: Sequence[str | int] | str | int | None = None,
    method: str = "ig",
    *,
    output: str = "logit",
    batch_size: int | None = None,
    seed: int = 0,
    multi_target: str = "auto",
    precision: str = "fp32",
    **params: Any,
) -> Attribution:
    """Attribute the model's ``targets`` outputs to the samples of ``x``.

    ``model`` returns logits ``(N, C)`` and has ``.classes``; ``x`` is
    ``(N, leads, L)`` (numpy or torch, cast to float32); ``targets`` is
    ``None`` (all classes) or class names / indices; ``method`` a name or alias
    from :func:`available_methods`; ``output`` ``"logit"`` (pre-sigmoid,
    default) or ``"probability"``; ``batch_size`` rows (records x targets) per
    chunk; ``seed`` for stochastic methods (GradientShap); ``**params`` the
    method's parameters (unknown names raise ``TypeError``).

    ``precision`` (CUDA): ``"fp32"`` (default) computes in true float32 --
    TF32 convolutions and matmuls are switched off for the call, although
    PyTorch allows them for cuDNN by default; ``"tf32"`` allows them;
    ``"bf16"`` adds bf16 autocast. Measured on an H200 against Captum in true
    float32 (``benchmarks/results/gpu_precision.json``): TF32 moves the
    trained demo model's relevance by 0.5-0.7 % (median relative L2) and the
    seeded random network's by 3-14 %, bf16 by 10-40 %; they run 3x / 4-6x
    faster than float32. On CPU only ``"fp32"`` exists.
    """
    cls = resolve_method(method)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError("batch_size must be >= 1")
    if multi_target not in MULTI_TARGET:
        raise ValueError(f"multi_target must be one of {MULTI_TARGET}, got {multi_target!r}")
    if multi_target == "shared" and not cls.shared_targets:
        raise ValueError(f"method {cls.name!r} has no shared-target path; use multi_target='auto' or 'rows'")
    shared = cls.shared_targets and multi_target != "rows"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    eff = cls.resolve_params(params)
    named = eff.get("baselines") if isinstance(eff.get("baselines"), str) else None

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        xt = _as_input(x)
        n_rec = xt.shape[0]
        if named is not None and cls.name in SET_METHODS:  # "reference:ref.npy": the set to draw from
            eff = {**eff, "baselines": baseline_set(named, tuple(xt.shape[1:]))}
        elif named is not None:  # "blur:40", "noise:0.05", "mean:m.npy", "zero": one baseline per record
            if cls.name not in PER_RECORD_METHODS:
                raise ValueError(f"baseline {named!r}: the named baselines are one reference input per record, "
                                 f"for {', '.join(PER_RECORD_METHODS)}; {cls.name} takes arrays")
            eff = {**eff, "baselines": named_baselines(named, xt.numpy(), fs=_fs(model), seed=seed)}
        stack.enter_context(frozen_eval(model))
        device, dtype = _device_dtype(model)
        stack.enter_context(precision_mode(precision, device))
        # forward on x (plain model), in chunks
        with torch.no_grad():
            fwd_bs = max(1, int(batch_size or cls.default_batch_size))
            logits = torch.cat([model(c.to(device=device, dtype=dtype)).float().cpu() for c in xt.split(fwd_bs)])
        if logits.ndim != 2:
            raise ValueError(f"model must return (N, C) logits, got shape {tuple(logits.shape)}")
        classes = model_classes(model, logits.shape[1])
        if len(classes) != logits.shape[1]:
            raise ValueError(f"model.classes has {len(classes)} names but the model returns {logits.shape[1]} outputs")
        t_idx, t_names = resolve_targets(targets, classes)
        n_t = len(t_idx)

        forward = model if output == "logit" else _SigmoidOutput(model).eval()
        stack.enter_context(torch.enable_grad())
        impl = cls(forward, eff, seed=seed)
        stack.callback(impl.close)
        rows_per_chunk = impl.max_rows(int(batch_size or cls.default_batch_size))

        relevance = np.empty((n_rec, n_t, *xt.shape[1:]), dtype=np.float32)
        delta = np.empty((n_rec, n_t), dtype=np.float32) if cls.has_delta else None
        got_delta = False
        target_of = torch.as_tensor(t_idx, dtype=torch.long)
        if shared:
            rows_per_chunk = max(1, int(batch_size or cls.default_batch_size))
            for start in range(0, n_rec, rows_per_chunk):
                rec = torch.arange(start, min(start + rows_per_chunk, n_rec))
                rel, d = impl.attribute_records(xt[rec].to(device=device, dtype=dtype), list(t_idx), rec)
                relevance[start:start + len(rec)] = rel.detach().float().cpu().numpy()
                if delta is not None and d is not None:
                    delta[start:start + len(rec)] = d.detach().float().cpu().numpy()
                    got_delta = True
        else:
            n_rows = n_rec * n_t
            for start in range(0, n_rows, rows_per_chunk):
                rows = torch.arange(start, min(start + rows_per_chunk, n_rows))
                rec, tpos = rows // n_t, rows % n_t
                xr = xt[rec].to(device=device, dtype=dtype)
                rel, d = impl.attribute_rows(xr, target_of[tpos].to(device), rec)
                relevance[rec.numpy(), tpos.numpy()] = rel.detach().float().cpu().numpy()
                if delta is not None and d is not None:
                    delta[rec.numpy(), tpos.numpy()] = d.detach().float().cpu().numpy()
                    got_delta = True
        steps = None
        if getattr(impl, "steps", None):
            steps = np.zeros((n_rec, n_t), dtype=np.int32)
            for rec, st in impl.steps:
                steps[rec.numpy()] = st.numpy()

    prov = impl.provenance()
    if named is not None:
        prov["baselines"] = named
    prov["output"] = output
    prov["precision"] = precision
    prov["batch_size"] = rows_per_chunk
    prov["multi_target"] = "shared" if shared else "rows"
    return Attribution(
        relevance=relevance,
        probabilities=(torch.softmax(logits, dim=-1) if _activation(model) == "softmax" else torch.sigmoid(logits))
        .numpy().astype(np.float32),
        logits=logits.numpy().astype(np.float32),
        targets=t_names,
        method=cls.name,
        params=prov,
        delta=delta if got_delta else None,
        steps=steps,
    )
