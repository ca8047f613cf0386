"""The multi-target fast path: one forward, one backward per target, chunks sized to memory.

Gradient methods need ``d f_t / d x`` for every target ``t`` at a set of input
points (the record for Saliency, the ``n_steps`` points of the IG path, the
GradientShap draws). The naive way -- and the *rows* path of
:func:`ecgray.attribution.attribute` -- runs a forward and a backward per
(record, target). Here the points of a chunk go through the network once, the
graph is kept, and each target gets its own backward (``retain_graph``) --
measured against the alternatives on the 2-core CPU of ``benchmarks/`` with
the published network (50 IG points, 6 targets)::

    6 x (forward + backward), Captum per target      17.7 s
    1 forward + 6 backward (this module)              9.9 s
    1 forward + 1 vmapped backward (is_grads_batched) 11.9 s

``points_per_chunk`` bounds the points in one forward by the memory their
activations need (measured once per model and input shape with forward hooks),
so long IG paths and big batches are cut instead of running out of memory.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

#: activations kept for backward are ~2x the module outputs (inputs of ReLU/BN/conv are saved too)
SAVED_FACTOR = 2.0
_BYTES_CACHE: dict[tuple, int] = {}


def activation_bytes(forward: nn.Module, shape: Sequence[int], device, dtype) -> int:
    """Bytes of module outputs of one forward of ONE sample of ``shape`` (leads, L), via forward hooks."""
    n_par = sum(p.numel() for p in forward.parameters())
    key = (id(forward), n_par, tuple(shape), str(device), str(dtype))
    if key in _BYTES_CACHE:
        return _BYTES_CACHE[key]
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                total += o.numel() * o.element_size()

    handles = [m.register_forward_hook(hook) for m in forward.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            forward(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    _BYTES_CACHE[key] = max(int(total), 1)
    return _BYTES_CACHE[key]


def memory_budget(device) -> int:
    """Bytes that one chunk's activations may take: ``ECGRAY_ATTR_MEMORY_MB`` if set, else
    half the free memory of a CUDA device, else 1 GiB (CPU)."""
    env = os.environ.get("ECGRAY_ATTR_MEMORY_MB")
    if env:
        return int(float(env) * 2**20)
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free * 0.5)
    return 2**30


def points_per_chunk(forward: nn.Module, shape: Sequence[int], device, dtype, cap: int | None = None) -> int:
    """How many input points one forward/backward may hold within :func:`memory_budget`."""
    per_point = activation_bytes(forward, shape, device, dtype) * SAVED_FACTOR
    n = max(1, int(memory_budget(device) // per_point))
    return min(n, cap) if cap else n


def target_grads(forward: nn.Module, points: torch.Tensor, targets: Sequence[int]):
    """Yield ``(j, grad)`` for each target: ``d forward(points)[:, targets[j]] / d points``.

    One forward for all targets, then one backward per target on the retained graph.
    Rows are independent (eval mode), so each row's gradient is its own.
    """
    pts = points.detach().requires_grad_(True)
    out = forward(pts)
    last = len(targets) - 1
    for j, t in enumerate(targets):
        (g,) = torch.autograd.grad(out[:, int(t)].sum(), pts, retain_graph=j < last)
        yield j, g


def compile_model(model: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile(model)`` made fit for the fast path, which backpropagates through one
    forward graph once per target (``retain_graph``): AOTAutograd's donated buffers would
    free saved tensors after the first backward, so they are switched off. The compiled
    module shares the parameters and keeps ``.classes``. Compilation happens on the first
    call for each input shape and precision (tens of seconds); it pays on long runs
    (measured in ``benchmarks/``: see ``ecgray bench --compile``). ``mode`` is
    ``torch.compile``'s (e.g. ``"max-autotune-no-cudagraphs"``; measured in
    ``benchmarks/gpu_autotune.py``)."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    compiled = torch.compile(model, mode=mode)
    if getattr(model, "classes", None) is not None and getattr(compiled, "classes", None) is None:
        compiled.classes = model.classes
    return compiled
