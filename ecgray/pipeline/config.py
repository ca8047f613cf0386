"""What a pipeline run computes and how it runs: one frozen :class:`RunConfig`.

:func:`ecgray.pipeline.run` builds it from its keyword arguments (or takes one, ``config=``), checks it
once, and hands the one object to the plan and its stages instead of threading twenty keywords
through ``run -> _execute -> _plan``. The fields that decide the output (:data:`RESUME_FIELDS`) go
into ``_manifest.json`` and must match for ``--resume``; the others only say how to run it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Mapping

from ecgray.attribution import resolve_method
from ecgray.attribution.core import PRECISIONS

#: output kinds an attribution can explain: the score before the activation, or the probability
OUTPUT_KINDS = ("logit", "probability")
#: how the beats table places P, QRS and T: delineated per record, or the fixed windows (faster)
WAVES = ("delineated", "fixed")


@dataclass(frozen=True)
class RunConfig:
    """One pipeline run (``ecgray run``); see :func:`ecgray.pipeline.run` for each field."""

    model: str
    weights: str | None = None
    methods: tuple[str, ...] = ("saliency",)  # canonical names once resolved (ecgray.attribution.resolve_method)
    targets: tuple[str, ...] | None = None  # None = every class of the model
    output_kind: str = "logit"
    params: Mapping[str, Mapping] = field(default_factory=dict)  # per method: {"integrated_gradients": {"n_steps": 16}}
    shard_size: int = 32
    policy: str = "first"  # windows of records longer than the model's: first, centre, windows
    labels_csv: str | None = None
    keep_relevance: bool = False
    beats: bool = True
    waves: str = "delineated"  # delineated (ecgray.delineate, ~0.33 s per record) | fixed (the fixed windows only)
    precision: str = "fp32"  # fp32 | tf32 | bf16 (CUDA only)
    batch_size: int = 8  # windows per attribution call
    # how to run it (not part of the output)
    num_attr_actors: int | None = None
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    torch_threads: int | None = None  # intra-op threads of each CPU attribution actor

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError("output_kind must be 'logit' or 'probability'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        methods = tuple(dict.fromkeys(resolve_method(m).name for m in self.methods))
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "targets", tuple(self.targets) if self.targets else None)
        object.__setattr__(self, "params", {m: dict((self.params or {}).get(m, {})) for m in methods})
        object.__setattr__(self, "beats", bool(self.beats))
        if self.waves not in WAVES:
            raise ValueError(f"waves must be one of {WAVES}, got {self.waves!r}")
        object.__setattr__(self, "keep_relevance", bool(self.keep_relevance))

    @classmethod
    def from_kwargs(cls, **kwargs) -> "RunConfig":
        """A config from :func:`ecgray.pipeline.run`'s keywords (``autocast=True``: the older spelling of
        ``precision="bf16"``); a TypeError names an unknown keyword."""
        if kwargs.pop("autocast", None):
            kwargs["precision"] = "bf16"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown run option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def with_(self, **changes) -> "RunConfig":
        return replace(self, **changes)
