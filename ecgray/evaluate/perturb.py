"""Removing parts of an ECG: segments of one lead (fixed blocks or the waves of each beat), and what
replaces them.

A *segmentation* of a record ``x`` (leads, L) is an integer label per sample, ``(leads, L)``, ids
``0..S-1``, each segment inside one lead (so a map that says "V1 at 2.3 s" can be tested without
touching the other leads). Two kinds (``segments=``):

* ``blocks`` (:func:`block_labels`): blocks of ``round(block_ms * fs / 1000)`` samples along time, per
  lead (the last block of a lead may be shorter); ids lead-major;
* ``waves`` (:func:`wave_labels`): per beat and lead the P wave, the PR segment, the QRS, the ST
  segment, the T wave and the TQ segment, from the record's R-peaks (:func:`ecgray.beats.detect_rpeaks`) and delineated bounds
  (:func:`ecgray.delineate.delineate`); samples outside every beat form one segment per lead and
  contiguous run. A record without usable beats falls back to blocks (reported).

Segment scores are the *signed* relevance summed over the segment (:func:`segment_scores`).

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


def block_labels(shape: tuple[int, int], block: int) -> np.ndarray:
    """Block ids ``(leads, L)``: ``lead * n_blocks + sample // block``."""
    n_leads, L = shape
    nb = n_blocks(L, block)
    return (np.arange(n_leads)[:, None] * nb + np.arange(L)[None, :] // int(block)).astype(np.int64)


#: the waves of :func:`wave_labels`, in the order of a beat
WAVE_SEGMENTS = ("P", "PR", "QRS", "ST", "T", "TQ")


def wave_labels(x: np.ndarray, fs: float, *, lead: int = 1) -> tuple[np.ndarray, list[str]] | None:
    """Wave segment ids ``(leads, L)`` and the wave of each id (``P``, ``PR``, ``QRS``, ``ST``, ``T``, ``TQ``,
    or ``other`` outside every beat), or None when the record has fewer than 2 usable R-peaks on lead
    ``lead`` (default lead II). Bounds relative to each R-peak from :func:`ecgray.delineate.delineate`;
    an ``absent`` P (AF) leaves its span to TQ; each beat's waves are clipped to end before the next R-peak's
    QRS onset."""
    from ecgray.beats import detect_rpeaks
    from ecgray.delineate import delineate

    x = np.asarray(x, dtype=np.float64)
    n_leads, L = x.shape
    lead = lead if lead < n_leads else 0
    peaks = np.asarray(detect_rpeaks(x[lead], fs), dtype=np.int64)
    if peaks.size < 2:
        return None
    wb = delineate(x, peaks, fs)
    ms = lambda v: int(round(v * fs / 1000.0))  # noqa: E731
    q_on, q_off = (ms(v) for v in wb.bounds["QRS"])
    t_on, t_off = (ms(v) for v in wb.bounds["T"])
    p_on, p_off = (ms(v) for v in wb.bounds["P"]) if wb.method["P"] != "absent" else (None, None)
    kind = np.full(L, -1, np.int64)  # wave index per sample (the same for every lead), -1 outside beats
    beat = np.full(L, -1, np.int64)
    for b, r in enumerate(peaks):
        nxt = int(peaks[b + 1]) + q_on if b + 1 < len(peaks) else L
        spans = []
        if p_on is not None:
            spans += [("P", r + p_on, r + p_off), ("PR", r + p_off, r + q_on)]
        spans += [("QRS", r + q_on, r + q_off), ("ST", r + q_off, r + t_on), ("T", r + t_on, r + t_off)]
        nxt_p = int(peaks[b + 1]) + (p_on if p_on is not None else q_on) if b + 1 < len(peaks) else L
        spans.append(("TQ", r + t_off, min(nxt_p, nxt)))
        for name, a, z in spans:
            a, z = max(int(a), 0), min(int(z), nxt, L)
            if z > a:
                sel = slice(a, z)
                free = kind[sel] < 0
                idx = np.arange(a, z)[free]
                kind[idx] = WAVE_SEGMENTS.index(name)
                beat[idx] = b
    # one id per (beat, wave), then each run of samples outside every beat
    key = np.where(kind >= 0, beat * len(WAVE_SEGMENTS) + kind, -1)
    ids = np.empty(L, np.int64)
    names: list[str] = []
    cur, prev = -1, None
    for t in range(L):  # run-length: a new id where the key changes
        k = key[t]
        if k != prev or k < 0 and (t == 0 or key[t - 1] >= 0):
            cur += 1
            names.append(WAVE_SEGMENTS[kind[t]] if kind[t] >= 0 else "other")
            prev = k
        ids[t] = cur
    n = cur + 1
    labels = np.arange(n_leads)[:, None] * n + ids[None, :]
    return labels.astype(np.int64), names * n_leads


def segment_scores(rel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Signed relevance summed per segment id (``(S,)``, ``S = labels.max() + 1``)."""
    return np.bincount(np.asarray(labels).ravel(), weights=np.asarray(rel, np.float64).ravel(),
                       minlength=int(labels.max()) + 1)


def segment_mask(chosen: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean ``(leads, L)`` mask of the samples of the segment ids ``chosen``."""
    on = np.zeros(int(labels.max()) + 1, dtype=bool)
    on[np.asarray(chosen, dtype=np.int64)] = True
    return on[labels]


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
