"""Model names -> loaders: ``load_model("ribeiro2020", weights=...)``, ``load_model("demo")``, paths.

Every model returned by :func:`load_model` is float32, in eval mode, with
``requires_grad_(False)`` parameters, on the requested device, and has
``.classes`` (tuple of output names) and ``.source`` (where it came from).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ecgray.errors import ModelError
from ecgray.models.ribeiro2020 import ResNet1d, ResNetConfig
from ecgray.models.weights import HDF5_SUFFIXES, SAFETENSORS_SUFFIXES, finalize_model, load_model_file

__all__ = ["load_model", "available_models", "register_model", "DEMO_WEIGHTS", "RIBEIRO_ENV"]

RIBEIRO_ENV = "ECGRAY_RIBEIRO_WEIGHTS"
DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights" / "demo.safetensors"
RIBEIRO_URL = "https://zenodo.org/records/3765717"

Loader = Callable[[str | None], ResNet1d]


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, loader: Loader, description: str, *, overwrite: bool = False) -> None:
    """Register ``loader(weights: str | None) -> ResNet1d`` under ``name``.

    ``weights`` is what the caller passed to :func:`load_model` (a path, or
    ``None``). Names that look like model files (``.hdf5``, ``.h5``,
    ``.safetensors``) are not allowed. Re-registering a name needs
    ``overwrite=True``.
    """
    if not name or not isinstance(name, str) or name.lower().endswith(HDF5_SUFFIXES + SAFETENSORS_SUFFIXES):
        raise ValueError(f"invalid model name {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(loader):
        raise TypeError("loader must be callable")
    _REGISTRY[name] = _Entry(loader, description)


def available_models() -> dict[str, str]:
    """Registered model names and their descriptions."""
    return {name: e.description for name, e in _REGISTRY.items()}


def _looks_like_path(s: str) -> bool:
    return s.lower().endswith(HDF5_SUFFIXES + SAFETENSORS_SUFFIXES) or os.sep in s or "/" in s


def load_model(name_or_path: str | os.PathLike, *, weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> ResNet1d:
    """A registered model by name, or a ``.hdf5``/``.h5``/``.safetensors`` file by path.

    ``weights`` is passed to the named model's loader (for ``"ribeiro2020"``:
    the path of the official ``model.hdf5``; for ``"demo"``: another
    safetensors file instead of the packaged one). Raises :class:`ModelError`
    with what to do when weights are missing or the name is unknown.
    """
    key = os.fspath(name_or_path)
    w = None if weights is None else os.fspath(weights)
    if key in _REGISTRY:
        model = _REGISTRY[key].loader(w)
    elif _looks_like_path(key) or Path(key).exists():
        if w is not None:
            raise ModelError(f"weights= is only for named models; {key!r} is already a file")
        model = load_model_file(key)
    else:
        names = ", ".join(sorted(_REGISTRY))
        raise ModelError(f"unknown model {key!r}: use one of {names}, or a path to a .hdf5/.h5/.safetensors file")
    if not isinstance(model, ResNet1d):
        raise ModelError(f"loader for {key!r} returned {type(model).__name__}, not ResNet1d")
    if not getattr(model, "source", None):
        model.source = key
    return finalize_model(model, device)


# --------------------------------------------------------------------------- built-in models
def _load_ribeiro2020(weights: str | None) -> ResNet1d:
    path = weights or os.environ.get(RIBEIRO_ENV)
    if not path:
        raise ModelError(
            "model 'ribeiro2020' needs the official Keras weights file model.hdf5 of Ribeiro et al. 2020 "
            "(Nat. Commun. 11:1760), which ecgray does not ship. Download it from the authors' Zenodo record "
            f"({RIBEIRO_URL}; linked from github.com/antonior92/automatic-ecg-diagnosis), then pass "
            f"weights='path/to/model.hdf5' or set {RIBEIRO_ENV}=path/to/model.hdf5"
        )
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ribeiro2020 weights not found at {p} (from {'weights=' if weights else RIBEIRO_ENV}); "
                         f"download model.hdf5 from {RIBEIRO_URL}")
    if p.suffix.lower() not in HDF5_SUFFIXES + SAFETENSORS_SUFFIXES:
        raise ModelError(f"{p}: ribeiro2020 weights must be the Keras model.hdf5 (or an ecgray .safetensors copy)")
    model = load_model_file(p)
    published = ResNetConfig()
    keys = ("n_leads", "n_samples", "n_classes", "stem_filters", "filters", "samples", "kernel_size")
    diff = {k: (getattr(published, k), getattr(model.config, k)) for k in keys
            if getattr(published, k) != getattr(model.config, k)}
    if diff:
        raise ModelError(f"{p} is not the published Ribeiro et al. 2020 network (published, file): {diff}; "
                         "load it by path instead")
    return model


def _load_demo(weights: str | None) -> ResNet1d:
    p = Path(weights) if weights else DEMO_WEIGHTS
    if not p.is_file():
        raise ModelError(f"demo weights not found at {p}: produce them with `ecgray train-demo` "
                         "(trains the small demo network on synthetic ECGs and writes this file)")
    return load_model_file(p)


register_model("ribeiro2020", _load_ribeiro2020,
               "Ribeiro et al. 2020 12-lead ECG ResNet (6 abnormalities); official Keras weights model.hdf5 "
               f"from Zenodo, via weights= or ${RIBEIRO_ENV}")
register_model("demo", _load_demo,
               "ecgray demo weights (same architecture, trained by `ecgray train-demo`), "
               "ecgray/models/weights/demo.safetensors")


def _load_random(weights: str | None) -> ResNet1d:
    """The published architecture with seeded random weights (``weights`` may name the integer seed)."""
    try:
        seed = int(weights) if weights is not None else 0
    except ValueError:
        raise ModelError(f"model 'random' takes an integer seed as weights=, got {weights!r}") from None
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = ResNet1d(ResNetConfig())
    finally:
        torch.random.set_rng_state(gen_state)
    # Non-trivial BatchNorm statistics and biases, as a trained network has: with PyTorch's defaults
    # (mean 0, var 1, no biases) the network would be positively homogeneous, f(a x) = a f(x), and
    # integrated gradients exact at any step count -- useless for accuracy-vs-steps benchmarks.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                c = mod.num_features
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                mod.weight.copy_(0.5 + torch.rand(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
    model.eval()
    model.source = f"random(seed={seed})"
    return model


register_model("random", _load_random,
               "the published architecture with seeded random weights (weights=SEED, default 0): "
               "checks the plumbing; its explanations mean nothing")
