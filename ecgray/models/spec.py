"""What a model expects and returns: :class:`ModelSpec`.

Every model ecgray explains carries a spec (``model.spec``; :func:`spec_of`):

* ``fs`` (Hz) and ``n_samples``: the input window -- preprocessing resamples
  every record to ``fs`` and fits it to ``n_samples``;
* ``leads``: the input channels in order, as lead names that
  :func:`ecgray.leads.canonical_lead` knows (``I``/``DI``, ``aVR``/``AVR``, ...);
  a record must have them (others are dropped, flag ``extra_leads_dropped``),
  so an 8-lead model (I, II, V1-V6) processes a record without III/aVR/aVL/aVF;
* ``units`` (``mV``, ``uV`` or ``V``) and ``normalisation`` (``none``, or
  ``zscore``: each lead of each window to mean 0, sd 1): how a window in mV
  becomes the model's input (:meth:`ModelSpec.to_input`);
* ``classes``: the output names, one per output unit;
* ``activation``: ``sigmoid`` (multi-label: one probability per class) or
  ``softmax`` (single-label: probabilities sum to 1) -- the model returns
  scores before it (:meth:`ModelSpec.probabilities`);
* ``target``: what attributions explain by default: ``logit``, the score
  before the activation.

:func:`check_model` runs the model once on zeros and refuses a spec whose
shapes do not match the model's output. The spec of the Ribeiro et al. 2020
network is :data:`RIBEIRO2020`.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np
import torch

from ecgray.errors import ModelError
from ecgray.leads import canonical_lead
from ecgray.units import UNIT_SCALE

ACTIVATIONS = ("sigmoid", "softmax")
#: the units a model's input can be in: mV, uV (µV) or V (scale: :data:`ecgray.units.UNIT_SCALE`)
INPUT_UNITS = ("mv", "uv", "µv", "v")
NORMALISATIONS = ("none", "zscore")
TARGETS = ("logit",)


@dataclass(frozen=True)
class ModelSpec:
    """Input geometry, leads, units, classes and output activation of a model (module docstring)."""

    fs: float
    n_samples: int
    leads: tuple[str, ...]
    classes: tuple[str, ...]
    activation: str = "sigmoid"
    units: str = "mV"
    normalisation: str = "none"
    target: str = "logit"

    def __post_init__(self) -> None:
        object.__setattr__(self, "leads", tuple(str(x) for x in self.leads))
        object.__setattr__(self, "classes", tuple(str(x) for x in self.classes))
        problems = []
        try:
            if not (float(self.fs) > 0 and np.isfinite(float(self.fs))):
                problems.append(f"fs must be a positive number of Hz, got {self.fs!r}")
        except (TypeError, ValueError):
            problems.append(f"fs must be a positive number of Hz, got {self.fs!r}")
        if not isinstance(self.n_samples, (int, np.integer)) or isinstance(self.n_samples, bool) or self.n_samples < 1:
            problems.append(f"n_samples must be a positive integer, got {self.n_samples!r}")
        if not self.leads:
            problems.append("leads is empty")
        unknown = [x for x in self.leads if canonical_lead(x) is None]
        if unknown:
            problems.append(f"unknown lead names {unknown} (use I, II, III, aVR, aVL, aVF, V1..V6)")
        canon = [canonical_lead(x) for x in self.leads if canonical_lead(x)]
        if len(set(canon)) != len(canon):
            problems.append(f"a lead appears twice in {list(self.leads)}")
        if not self.classes or len(set(self.classes)) != len(self.classes) or any(not c for c in self.classes):
            problems.append(f"classes must be distinct non-empty names, got {list(self.classes)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if str(self.units).lower() not in INPUT_UNITS:
            problems.append(f"units must be mV, uV or V, got {self.units!r}")
        if self.normalisation not in NORMALISATIONS:
            problems.append(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.target not in TARGETS:
            problems.append(f"target must be one of {TARGETS}, got {self.target!r}")
        if problems:
            raise ModelError("invalid model spec: " + "; ".join(problems))
        object.__setattr__(self, "fs", float(self.fs))
        object.__setattr__(self, "n_samples", int(self.n_samples))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """A spec from a mapping (e.g. JSON next to the weights); names every missing or unknown field."""
        if isinstance(d, ModelSpec):
            return d
        if not isinstance(d, dict):
            raise ModelError(f"a model spec must be a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in d]
        unknown = sorted(set(d) - set(names))
        if missing or unknown:
            raise ModelError("invalid model spec: " + "; ".join(
                ([f"missing spec field(s) {missing}"] if missing else []) +
                ([f"unknown spec field(s) {unknown} (known: {names})"] if unknown else [])))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def canonical_leads(self) -> tuple[str, ...]:
        """The leads in input order by their canonical names (``DI``, ``DII``, ..., ``V6``: the ``lead`` values
        of every output table)."""
        return tuple(canonical_lead(x) for x in self.leads)

    @property
    def n_leads(self) -> int:
        return len(self.leads)

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(leads, samples)``: one window, channels first."""
        return self.n_leads, self.n_samples

    def to_input(self, window_mv: np.ndarray) -> np.ndarray:
        """A ``(n_samples, leads)`` window in mV as the model's input (units, normalisation); the
        window itself when both are the identity (mV, none)."""
        x = window_mv
        scale = 1.0 / UNIT_SCALE[str(self.units).lower()]  # input units per mV
        if scale != 1.0:
            x = (np.asarray(x, np.float64) * scale).astype(np.float32)
        if self.normalisation == "zscore":
            x64 = np.asarray(x, np.float64)
            sd = x64.std(axis=0)
            x = ((x64 - x64.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
        return x

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """The model's scores (logits) as probabilities: sigmoid per class, or softmax over classes."""
        return torch.sigmoid(scores) if self.activation == "sigmoid" else torch.softmax(scores, dim=-1)


def check_model(model: torch.nn.Module, spec: ModelSpec, source: str = "model") -> None:
    """Run ``model`` once on zeros of ``(1, *spec.input_shape)``; :class:`ModelError` when the output is
    not ``(1, len(spec.classes))`` or the model does not accept that input."""
    param = next(iter(model.parameters()), None)
    x = torch.zeros((1, *spec.input_shape), dtype=torch.float32,
                    device=param.device if param is not None else "cpu")
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - a model that cannot take its own spec's input
        raise ModelError(f"{source}: the model does not accept its spec's input (1, {spec.n_leads} leads, "
                         f"{spec.n_samples} samples): {type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, len(spec.classes)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{source}: shape mismatch between spec and model output: the spec names "
                         f"{len(spec.classes)} classes {list(spec.classes)}, so (N, {len(spec.classes)}) scores "
                         f"for input (N, {spec.n_leads}, {spec.n_samples}); the model returned {got}")


def spec_of(model: torch.nn.Module) -> ModelSpec:
    """The model's spec: ``model.spec``, else (a :class:`~ecgray.models.ribeiro2020.ResNet1d` without one)
    the Ribeiro et al. 2020 geometry with the model's own classes and window length."""
    spec = getattr(model, "spec", None)
    if spec is not None:
        return spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__} has no .spec (a ModelSpec): ecgray cannot tell its input and "
                         "classes")
    if int(config.n_leads) != RIBEIRO2020.n_leads:
        raise ModelError(f"{type(model).__name__} with {config.n_leads} input leads has no .spec: ecgray cannot tell "
                         "which leads they are; set model.spec = ModelSpec(..., leads=(...))")
    return ModelSpec(fs=RIBEIRO2020.fs, n_samples=int(config.n_samples), leads=RIBEIRO2020.leads,
                     classes=tuple(getattr(model, "classes", None) or config.classes), activation="sigmoid")


def _ribeiro() -> ModelSpec:
    from ecgray.models.ribeiro2020 import CLASSES, FS, LEADS, N_SAMPLES

    return ModelSpec(fs=FS, n_samples=N_SAMPLES, leads=LEADS, classes=CLASSES, activation="sigmoid")


#: the Ribeiro et al. 2020 network: 12 leads at 400 Hz x 4,096 samples (mV), six sigmoid classes
RIBEIRO2020: ModelSpec = _ribeiro()
