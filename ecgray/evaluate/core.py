"""Evaluate the maps of a batch of records: the plain function behind ``ecgray evaluate`` (no Ray).

:func:`evaluate_batch` takes a model, preprocessed windows ``x`` (N, leads, L) and one row of the run's
``records`` table per window, and returns the evaluation tables (:mod:`ecgray.schemas.evaluation`) of
those records for every method in the :class:`EvaluateConfig`:

* ``faithfulness`` / ``deletion`` (:mod:`~ecgray.evaluate.faithfulness`);
* ``randomisation``: cascading MPRT and the random-logit test (:mod:`~ecgray.evaluate.randomisation`);
* ``agreement``: every pair of methods per record x target, and, with ``models``, every pair of models
  per method (:mod:`~ecgray.evaluate.similarity`).

Which targets (``targets=``): ``"predicted"`` (default) -- the classes the model predicts
(probability >= 0.5) or the record is labelled with, else the single most probable class, because a
deletion curve of a class the model already rejects measures little; ``"all"``; or class names.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ecgray.attribution import attribute, resolve_method
from ecgray.evaluate.faithfulness import (DEFAULT_FRACTIONS, N_SUBSETS, ORDERS, SUBSET_FRACTION, faithfulness,
                                          forward_logits, order_seed, probabilities)
from ecgray.evaluate.perturb import REPLACEMENTS, ROAD_NOISE, block_labels, block_samples, wave_labels
from ecgray.evaluate.randomisation import cascade, cascade_layers
from ecgray.evaluate.similarity import TOPK_FRACTION, similarity
from ecgray.models.spec import spec_of
from ecgray.schemas.tables import from_rows

TESTS = ("faithfulness", "randomisation", "agreement")
#: what the deletion curves remove (ecgray.evaluate.perturb): fixed blocks x lead, or each beat's waves x lead
SEGMENTS = ("blocks", "waves")
THRESHOLD = 0.5


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``ecgray evaluate`` measures; every field is in ``evaluation/_manifest.json``."""

    methods: tuple[str, ...] = ("saliency",)
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per canonical method name
    targets: str | tuple[str, ...] = "predicted"
    tests: tuple[str, ...] = TESTS
    replacement: str = "zero"
    segments: str = "blocks"
    block_ms: float = 40.0
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    n_subsets: int = N_SUBSETS
    subset_fraction: float = SUBSET_FRACTION
    noise: float = ROAD_NOISE
    topk: float = TOPK_FRACTION
    seed: int = 0
    output_kind: str = "logit"
    batch_size: int = 8
    models: tuple[str, ...] = ()  # further models for the agreement across models (refs for load_model)

    def __post_init__(self) -> None:
        methods = tuple(dict.fromkeys(resolve_method(m).name for m in self.methods))
        if not methods:
            raise ValueError("evaluate needs at least one method")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "params", {m: dict((self.params or {}).get(m, {})) for m in methods})
        if isinstance(self.targets, str) and self.targets not in ("predicted", "all"):
            object.__setattr__(self, "targets", tuple(t for t in self.targets.split(",") if t))
        elif not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))
        tests = tuple(dict.fromkeys(self.tests))
        bad = [t for t in tests if t not in TESTS]
        if bad or not tests:
            raise ValueError(f"unknown test(s) {bad}; choose from {TESTS}")
        object.__setattr__(self, "tests", tests)
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")
        block_samples(self.block_ms, 1000.0)  # checks > 0
        if self.segments not in SEGMENTS:
            raise ValueError(f"segments must be one of {SEGMENTS}, got {self.segments!r}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "models", tuple(self.models))
        if self.n_subsets < 2:
            raise ValueError("n_subsets must be >= 2 (a correlation needs two points)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = {k: dict(v) for k, v in self.params.items()}
        return d


def cost_per_target(cfg: EvaluateConfig, n_layers: int) -> dict[str, int]:
    """Model passes per record x target and method: ``forwards`` (batched perturbed inputs) and
    ``attributions`` (one attribution call each: MPRT recomputes the map once per randomised unit)."""
    fwd = (3 * (len(cfg.fractions) - 1) + cfg.n_subsets) if "faithfulness" in cfg.tests else 0
    attr = 1 + ((n_layers + 1) if "randomisation" in cfg.tests else 0) + \
        (len(cfg.models) if "agreement" in cfg.tests else 0)
    return {"forwards": fwd, "attributions": attr}


def record_targets(row: Mapping[str, Any], classes: Sequence[str], targets) -> tuple[str, ...]:
    """The classes to evaluate for one ``records`` row (see the module docstring)."""
    if targets == "all":
        return tuple(classes)
    if targets != "predicted":
        return tuple(c for c in classes if c in targets)
    probs = [float(row.get(f"prob_{c}") or 0.0) for c in classes]
    out = [c for c, p in zip(classes, probs) if p >= THRESHOLD or row.get(f"label_{c}") is True]
    return tuple(out) if out else (classes[int(np.argmax(probs))],)


def _maps(model, x, targets, cfg: EvaluateConfig, method: str) -> np.ndarray:
    return attribute(model, x, targets=list(targets), method=method, output=cfg.output_kind,
                     batch_size=cfg.batch_size, seed=cfg.seed, **cfg.params.get(method, {})).relevance


def evaluate_batch(model, x: np.ndarray, rows: Sequence[Mapping[str, Any]], cfg: EvaluateConfig, *,
                   evaluation_id: str, extra_models: Mapping[str, Any] | None = None,
                   model_name: str = "model") -> dict[str, pa.Table]:
    """The evaluation tables of windows ``x`` (N, leads, L) whose ``records`` rows are ``rows``."""
    spec = spec_of(model)
    classes = list(spec.classes)
    activation = spec.activation or "sigmoid"
    x = np.asarray(x, dtype=np.float32)
    logits = forward_logits(model, x, batch_size=max(1, cfg.batch_size))
    probs = probabilities(logits, activation)
    out: dict[str, list[dict]] = {"deletion": [], "faithfulness": [], "randomisation": [], "agreement": []}
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(record_targets(row, classes, cfg.targets), []).append(i)
    layers = cascade_layers(model) if "randomisation" in cfg.tests else []
    for targets, idx in groups.items():
        xi = x[idx]
        t_idx = [classes.index(t) for t in targets]
        maps = {m: _maps(model, xi, targets, cfg, m) for m in cfg.methods}  # (n, T, leads, L)
        keys = [{"evaluation_id": evaluation_id, "record_key": rows[i]["record_key"],
                 "record_id": rows[i]["record_id"], "window": int(rows[i]["window"])} for i in idx]
        if "faithfulness" in cfg.tests:
            _faithfulness_rows(out, model, xi, maps, keys, [rows[i] for i in idx], targets, t_idx, probs[idx],
                               logits[idx], cfg, spec, activation)
        if "randomisation" in cfg.tests:
            _randomisation_rows(out, model, xi, maps, keys, targets, classes, cfg, layers)
        if "agreement" in cfg.tests:
            _agreement_rows(out, maps, keys, targets, cfg, model_name, extra_models or {}, xi)
    return {name: from_rows(name, r) for name, r in out.items()}


def segmentation(x: np.ndarray, cfg: EvaluateConfig, fs: float, leads: Sequence[str]) -> tuple[np.ndarray, str]:
    """The segment ids of one record ``(leads, L)`` and their kind: ``blocks``, ``waves``, or ``blocks (no
    beats)`` when ``segments="waves"`` finds fewer than 2 R-peaks (on lead II, else the first lead)."""
    if cfg.segments == "waves":
        lead = list(leads).index("DII") if "DII" in leads else 0
        got = wave_labels(x, fs, lead=lead)
        if got is not None:
            return got[0], "waves"
        return block_labels(x.shape, block_samples(cfg.block_ms, fs)), "blocks (no beats)"
    return block_labels(x.shape, block_samples(cfg.block_ms, fs)), "blocks"


def _faithfulness_rows(out, model, xi, maps, keys, rows, targets, t_idx, probs, logits, cfg, spec, activation):
    segs = [segmentation(xi[n], cfg, spec.fs, spec.canonical_leads) for n in range(len(keys))]
    for m, rel in maps.items():
        for n, key in enumerate(keys):
            labels, kind = segs[n]
            for j, (t, ti) in enumerate(zip(targets, t_idx)):
                rng = order_seed(cfg.seed, key["record_key"], key["window"], t)
                f = faithfulness(model, xi[n], rel[n, j], ti, labels=labels, rng=rng, fractions=cfg.fractions,
                                 replacement=cfg.replacement, noise=cfg.noise, n_subsets=cfg.n_subsets,
                                 subset_fraction=cfg.subset_fraction, activation=activation)
                base = {**key, "method": m, "target": t, "replacement": cfg.replacement, "segments": kind,
                        "block_ms": None if kind == "waves" else float(cfg.block_ms)}
                for o in ORDERS:
                    for s, frac in enumerate(f.fractions):
                        out["deletion"].append({**base, "order": o, "step": s, "fraction": frac,
                                                "logit": float(f.logits[o][s]),
                                                "probability": float(f.probabilities[o][s])})
                a = {o: f.auc(o) for o in ORDERS}
                label = rows[n].get(f"label_{t}")
                out["faithfulness"].append({
                    **base, "n_segments": f.n_segments, "label": None if label is None else bool(label),
                    "probability": float(probs[n, ti]), "logit": float(logits[n, ti]),
                    "auc_morf": a["morf"], "auc_lerf": a["lerf"], "auc_random": a["random"],
                    "random_minus_morf": a["random"] - a["morf"], "lerf_minus_morf": a["lerf"] - a["morf"],
                    "faithfulness_correlation": f.correlation})


def _randomisation_rows(out, model, xi, maps, keys, targets, classes, cfg, layers):
    for m, rel in maps.items():
        for step, layer, rmodel in cascade(model, cfg.seed):
            rrel = _maps(rmodel, xi, targets, cfg, m)
            for n, key in enumerate(keys):
                for j, t in enumerate(targets):
                    out["randomisation"].append({**key, "method": m, "target": t, "test": "cascading", "step": step,
                                                 "layer": layer, "other_target": None,
                                                 **similarity(rel[n, j], rrel[n, j], cfg.topk)})
        if len(classes) < 2:
            continue
        for n, key in enumerate(keys):
            others = []
            for t in targets:
                rng = order_seed(cfg.seed, key["record_key"], key["window"], t, "random_logit")
                pool = [c for c in classes if c != t]
                others.append(pool[int(rng.integers(len(pool)))])
            uniq = list(dict.fromkeys(others))
            orel = _maps(model, xi[n:n + 1], uniq, cfg, m)[0]
            for j, (t, o) in enumerate(zip(targets, others)):
                out["randomisation"].append({**key, "method": m, "target": t, "test": "random_logit", "step": 0,
                                             "layer": None, "other_target": o,
                                             **similarity(rel[n, j], orel[uniq.index(o)], cfg.topk)})


def _agreement_rows(out, maps, keys, targets, cfg, model_name, extra_models, xi):
    for n, key in enumerate(keys):
        for j, t in enumerate(targets):
            for a, b in itertools.combinations(list(maps), 2):
                out["agreement"].append({**key, "target": t, "kind": "methods", "method": None, "model": model_name,
                                         "a": a, "b": b, **similarity(maps[a][n, j], maps[b][n, j], cfg.topk)})
    if not extra_models:
        return
    for m in cfg.methods:
        per_model = {model_name: maps[m], **{name: _maps(em, xi, targets, cfg, m) for name, em in extra_models.items()}}
        for n, key in enumerate(keys):
            for j, t in enumerate(targets):
                for a, b in itertools.combinations(list(per_model), 2):
                    out["agreement"].append({**key, "target": t, "kind": "models", "method": m, "model": None,
                                             "a": a, "b": b,
                                             **similarity(per_model[a][n, j], per_model[b][n, j], cfg.topk)})
