"""Faithfulness of a relevance map: deletion curves (MoRF, LeRF, random) and faithfulness correlation.

Region perturbation (Samek et al., IEEE TNNLS 2017; ROAD: Rong et al., ICML 2022): the segments of a
record (:mod:`ecgray.evaluate.perturb`: blocks of ``block_ms`` x one lead, or the waves of each beat x
one lead) are removed cumulatively in an order, and the model's logit of the target (and its
probability) is recorded after each step. At step ``s`` the first ``round(fractions[s] * n_segments)``
segments of the order are removed (the fractions count segments, not samples).

* ``morf``: most relevant first -- blocks by *signed* relevance, largest first (the strongest evidence
  *for* the target goes first, so a faithful map makes the logit fall fast);
* ``lerf``: least relevant first -- smallest (most negative) first; the logit should rise or stay;
* ``random``: a seeded random order, the same for every method and target of a record
  (:func:`order_seed`), so that methods are compared on the same control.

``auc_<order>``: the area under the logit curve over ``fractions``, divided by the fraction range (the
curve's mean height, in logit units). A map is faithful when ``auc_random - auc_morf > 0`` (MoRF
drops the logit faster than chance) and ``auc_lerf - auc_morf > 0`` (ROAD's MoRF/LeRF gap).

Faithfulness correlation (Bhatt et al., IJCAI 2020; Quantus ``FaithfulnessCorrelation``): for
``n_subsets`` seeded random sets of ``subset_fraction`` of the blocks, Pearson's correlation between
the relevance summed over the set and the logit drop ``f(x) - f(x with the set removed)``.

Cost per record x method x target: ``3 * (len(fractions) - 1) + n_subsets`` forwards (59 with the
defaults), batched.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ecgray.evaluate.perturb import ROAD_NOISE, block_labels, replace, segment_mask, segment_scores

ORDERS = ("morf", "lerf", "random")
#: fractions of the blocks removed at each step of a deletion curve (0: the record itself)
DEFAULT_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
N_SUBSETS = 32
SUBSET_FRACTION = 0.05


def order_seed(seed: int, record_key: str, *parts: object) -> np.random.Generator:
    """A generator seeded by ``(seed, crc32(record_key + parts))``: the same in any batch or shard."""
    tag = "\0".join([str(record_key), *map(str, parts)])
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode())])


def forward_logits(model: nn.Module, xs: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The model's logits ``(K, C)`` on ``xs`` ``(K, leads, L)``, in chunks, without gradients."""
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    out = []
    with torch.inference_mode():
        for s in range(0, len(xs), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(xs[s:s + batch_size])).to(device=device, dtype=dtype)
            out.append(model(chunk).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def probabilities(logits: np.ndarray, activation: str = "sigmoid") -> np.ndarray:
    """Sigmoid (multi-label) or softmax (over the last axis) of ``logits``."""
    z = np.asarray(logits, dtype=np.float64)
    if activation == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-z))


def auc(fractions, values) -> float:
    """Area under ``values`` over ``fractions`` (trapezoids) divided by the fraction range."""
    f, v = np.asarray(fractions, np.float64), np.asarray(values, np.float64)
    span = f[-1] - f[0]
    return float(np.sum((v[1:] + v[:-1]) * np.diff(f)) / 2.0 / span) if span > 0 else float(v[0])


def deletion_orders(scores: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Segment ids in MoRF, LeRF and random order. Ties keep id order (stable)."""
    flat = scores.ravel()
    morf = np.argsort(-flat, kind="stable")
    lerf = np.argsort(flat, kind="stable")
    return {"morf": morf, "lerf": lerf, "random": rng.permutation(flat.size)}


@dataclass
class Faithfulness:
    """Deletion curves and faithfulness correlation of one map (one record x method x target)."""

    fractions: tuple[float, ...]
    logits: dict[str, np.ndarray]  # order -> (steps,) logit of the target
    probabilities: dict[str, np.ndarray]  # order -> (steps,) probability of the target
    correlation: float  # faithfulness correlation (Pearson); NaN when undefined
    n_segments: int

    def auc(self, order: str) -> float:
        return auc(self.fractions, self.logits[order])


def faithfulness(model: nn.Module, x: np.ndarray, rel: np.ndarray, target: int, *, rng: np.random.Generator,
                 block: int | None = None, labels: np.ndarray | None = None, fractions=DEFAULT_FRACTIONS, replacement: str = "zero",
                 noise: float = ROAD_NOISE, n_subsets: int = N_SUBSETS, subset_fraction: float = SUBSET_FRACTION,
                 activation: str = "sigmoid", batch_size: int = 64) -> Faithfulness:
    """Deletion curves and faithfulness correlation of map ``rel`` (leads, L) for class index ``target``
    of record ``x`` (leads, L); ``rng`` draws the random order, the subsets and the ROAD noise (in that
    order; seed it with :func:`order_seed`). The segments: ``labels`` (ids ``(leads, L)``, e.g.
    :func:`~ecgray.evaluate.perturb.wave_labels`) or blocks of ``block`` samples."""
    fractions = tuple(float(f) for f in fractions)
    if not fractions or fractions[0] != 0.0 or any(b <= a for a, b in zip(fractions, fractions[1:])) \
            or fractions[-1] > 1.0:
        raise ValueError(f"fractions must rise from 0 to at most 1, got {fractions}")
    if labels is None:
        if block is None:
            raise ValueError("faithfulness needs the segments: labels= or block=")
        labels = block_labels(np.shape(x), block)
    scores = segment_scores(rel, labels)
    nb = scores.size
    orders = deletion_orders(scores, rng)
    m = max(1, int(round(subset_fraction * nb)))
    subsets = [rng.choice(nb, size=m, replace=False) for _ in range(n_subsets)]
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))
    xs = [np.asarray(x, np.float32)]
    for o in ORDERS:
        for f in fractions[1:]:
            k = int(round(f * nb))
            xs.append(replace(x, segment_mask(orders[o][:k], labels), replacement, rng=noise_rng, noise=noise))
    for s in subsets:
        xs.append(replace(x, segment_mask(s, labels), replacement, rng=noise_rng, noise=noise))
    logits = forward_logits(model, np.stack(xs), batch_size=batch_size)
    probs = probabilities(logits, activation)[:, target]
    z = logits[:, target].astype(np.float64)
    n = len(fractions) - 1
    curves, pcurves = {}, {}
    for j, o in enumerate(ORDERS):
        curves[o] = np.concatenate([[z[0]], z[1 + j * n:1 + (j + 1) * n]])
        pcurves[o] = np.concatenate([[probs[0]], probs[1 + j * n:1 + (j + 1) * n]])
    drops = z[0] - z[1 + 3 * n:]
    sums = np.array([scores[s].sum() for s in subsets])
    corr = float(np.corrcoef(sums, drops)[0, 1]) if n_subsets > 1 and sums.std() > 0 and drops.std() > 0 \
        else float("nan")
    return Faithfulness(fractions, curves, pcurves, corr, nb)
