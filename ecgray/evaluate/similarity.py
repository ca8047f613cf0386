"""How alike two relevance maps are: rank correlation of signed and absolute relevance, top-k overlap.

Every map is compared cell by cell over all ``leads x samples`` (a map of a 12-lead 4,096-sample record
has 49,152 cells). The measures are those Quantus uses for randomisation and agreement tests
(Adebayo et al. 2018 report Spearman rank correlation of absolute and signed maps):

* ``spearman_abs``: Spearman's rank correlation of ``|a|`` and ``|b|`` (ties get their average rank);
* ``spearman_signed``: the same of ``a`` and ``b``;
* ``topk_overlap``: ``|top_k(|a|) & top_k(|b|)| / k`` with ``k = ceil(frac * cells)``
  (:data:`TOPK_FRACTION` = 5 % by default).

A constant map has no ranks: its correlations are NaN (never 0 by accident).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

#: share of cells in the top-k set of :func:`topk_overlap`
TOPK_FRACTION = 0.05
MEASURES = ("spearman_abs", "spearman_signed", "topk_overlap")


def _ranks(a: np.ndarray) -> np.ndarray:
    return rankdata(np.asarray(a, dtype=np.float64).ravel(), method="average")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of the cells of ``a`` and ``b`` (same shape); NaN for a constant map."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return _pearson(_ranks(a), _ranks(b))


def topk_overlap(a: np.ndarray, b: np.ndarray, frac: float = TOPK_FRACTION) -> float:
    """Share of the ``k`` cells of largest ``|a|`` that are also among the ``k`` of largest ``|b|``."""
    a, b = np.abs(np.asarray(a, np.float64)).ravel(), np.abs(np.asarray(b, np.float64)).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    k = max(1, math.ceil(frac * a.size))
    ta = np.argpartition(-a, k - 1)[:k]
    tb = np.argpartition(-b, k - 1)[:k]
    return float(np.intersect1d(ta, tb, assume_unique=True).size) / k


def similarity(a: np.ndarray, b: np.ndarray, frac: float = TOPK_FRACTION) -> dict[str, float]:
    """``{spearman_abs, spearman_signed, topk_overlap}`` of two maps (see the module docstring)."""
    return {"spearman_abs": spearman(np.abs(a), np.abs(b)), "spearman_signed": spearman(a, b),
            "topk_overlap": topk_overlap(a, b, frac)}
