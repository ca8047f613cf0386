"""Removing parts of an ECG: blocks of ``block_ms`` x one lead, and what replaces them.

A record ``x`` (leads, L) is cut into blocks of ``round(block_ms * fs / 1000)`` samples along time, per
lead (the last block of a lead may be shorter); a block is one lead x one time span, so a map that
says "V1 at 2.3 s" can be tested without touching the other leads. Block scores are the *signed*
relevance summed over the block (:func:`block_scores`).

Replacements (``replacement=``), recorded with every result:

* ``zero``: the removed samples become 0 (the model's input units; 0 is the isoelectric line after
  preprocessing, but a flat segment is off the data distribution);
* ``linear``: linear interpolation, per lead, between the nearest kept samples on either side (at the
  record's edges: the nearest kept sample); a lead with nothing kept becomes 0;
* ``noisy_linear``: ``linear`` plus Gaussian noise of SD ``noise * sd(kept samples of the lead)``
  (default :data:`ROAD_NOISE` = 0.1), seeded -- the noisy linear imputation of ROAD (Rong et al.,
  ICML 2022), which keeps the perturbed input close to the data so that a logit drop is not just the
  model's reaction to an artificial flat line. (ROAD imputes from a weighted neighbourhood; along one
  time axis that is the linear interpolation between the block's two neighbours.)
"""
from __future__ import annotations

import numpy as np

REPLACEMENTS = ("zero", "linear", "noisy_linear")
#: relative noise SD of ``noisy_linear`` (ROAD)
ROAD_NOISE = 0.1


def block_samples(block_ms: float, fs: float) -> int:
    """Samples per block: ``round(block_ms * fs / 1000)``, at least 1."""
    if not block_ms > 0:
        raise ValueError(f"block_ms must be > 0, got {block_ms!r}")
    return max(1, int(round(float(block_ms) * float(fs) / 1000.0)))


def n_blocks(n_samples: int, block: int) -> int:
    return -(-int(n_samples) // int(block))


def block_scores(rel: np.ndarray, block: int) -> np.ndarray:
    """Signed relevance summed per block: ``(leads, n_blocks)`` from ``rel`` ``(leads, L)``."""
    rel = np.asarray(rel, dtype=np.float64)
    n_leads, L = rel.shape
    nb = n_blocks(L, block)
    pad = np.zeros((n_leads, nb * block))
    pad[:, :L] = rel
    return pad.reshape(n_leads, nb, block).sum(axis=2)


def cell_mask(blocks: np.ndarray, shape: tuple[int, int], block: int) -> np.ndarray:
    """Boolean ``(leads, L)`` mask of the samples of the flat block indices ``blocks`` (lead-major)."""
    n_leads, L = shape
    nb = n_blocks(L, block)
    on = np.zeros(n_leads * nb, dtype=bool)
    on[np.asarray(blocks, dtype=np.int64)] = True
    return np.repeat(on.reshape(n_leads, nb), block, axis=1)[:, :L]


def replace(x: np.ndarray, removed: np.ndarray, replacement: str = "zero", *,
            rng: np.random.Generator | None = None, noise: float = ROAD_NOISE) -> np.ndarray:
    """A copy of ``x`` (leads, L) with the samples where ``removed`` is True replaced (module docstring)."""
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {replacement!r}")
    x = np.asarray(x, dtype=np.float32)
    out = x.copy()
    if replacement == "zero":
        out[removed] = 0.0
        return out
    t = np.arange(x.shape[1])
    for lead in range(x.shape[0]):
        gone = removed[lead]
        if not gone.any():
            continue
        kept = ~gone
        if not kept.any():
            out[lead] = 0.0
            continue
        out[lead, gone] = np.interp(t[gone], t[kept], x[lead, kept])
        if replacement == "noisy_linear":
            if rng is None:
                raise ValueError("noisy_linear needs a seeded rng")
            sd = float(x[lead, kept].std()) if kept.sum() > 1 else 0.0
            out[lead, gone] += (noise * sd * rng.standard_normal(int(gone.sum()))).astype(np.float32)
    return out
