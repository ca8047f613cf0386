"""Statistics of the reduce: bootstrap and normal-approximation CIs, mergeable moments (Chan et al.)."""
from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np
import polars as pl

Z95 = 1.959963984540054


def bootstrap_ci(values: Iterable[float], *, n_boot: int = 1000, rng: np.random.Generator | int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean (vectorised; resamples drawn in chunks of <= 4e6 draws)."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return float("nan"), float("nan")
    if n == 1 or n_boot <= 0:
        return float(v[0]) if n == 1 else float(v.mean()), float(v[0]) if n == 1 else float(v.mean())
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    means = np.empty(n_boot)
    step = max(1, int(4_000_000 // n))
    for s in range(0, n_boot, step):
        k = min(step, n_boot - s)
        means[s:s + k] = v[rng.integers(0, n, size=(k, n))].mean(axis=1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def row_seed(seed: int, *parts) -> list[int]:
    """Seed of one CI row: ``[seed, crc32("part0\\0part1...")]`` (stable across runs and platforms)."""
    return [int(seed), zlib.crc32("\0".join(map(str, parts)).encode())]


def _normal_ci(mean: str, sd: str, n: str, prefix: str = "") -> list[pl.Expr]:
    half = Z95 * pl.col(sd) / pl.col(n).cast(pl.Float64).sqrt()
    return [(pl.col(mean) - half).alias(f"{prefix}ci_low"), (pl.col(mean) + half).alias(f"{prefix}ci_high")]


# ------------------------------------------------------------------------- mergeable moments
def merge_moments(df: pl.DataFrame, by: list[str], names: Iterable[str] = ("",)) -> pl.DataFrame:
    """Combine partial ``(n, mean, m2)`` rows that share ``by`` (Chan et al. 1979, pairwise update):
    ``n = sum n_i``, ``mean = sum n_i mean_i / n``, ``m2 = sum m2_i + n_i (mean_i - mean)^2``.
    ``names``: column prefixes of moment sets sharing the count ``n`` (``"sig_"`` -> ``sig_mean``,
    ``sig_m2``). Rows with ``n == 0`` are dropped; other columns in ``df`` are summed.
    """
    df = df.filter(pl.col("n") > 0)
    nf = pl.col("n").cast(pl.Float64)
    means = {f"_{p}mean": (nf * pl.col(f"{p}mean")).sum().over(by) / nf.sum().over(by) for p in names}
    df = df.with_columns(**means)
    extra = [c for c in df.columns if c not in by and c != "n" and not c.startswith("_")
             and not any(c in (f"{p}mean", f"{p}m2") for p in names)]
    aggs = [pl.col("n").sum()]
    for p in names:
        aggs += [pl.col(f"_{p}mean").first().alias(f"{p}mean"),
                 (pl.col(f"{p}m2") + nf * (pl.col(f"{p}mean") - pl.col(f"_{p}mean")) ** 2).sum().alias(f"{p}m2")]
    aggs += [pl.col(c).sum() for c in extra]
    return df.group_by(by, maintain_order=True).agg(aggs)


def _sd(m2: str = "m2", n: str = "n") -> pl.Expr:
    """Sample standard deviation (ddof=1) from moments; null for n < 2."""
    return pl.when(pl.col(n) >= 2).then((pl.col(m2) / (pl.col(n) - 1)).clip(0).sqrt()).otherwise(None)


def _moments_np(x: np.ndarray, valid: np.ndarray, starts: np.ndarray):
    """Per group of consecutive rows (groups start at ``starts``): count, mean and m2 of ``x`` over the
    valid entries, column by column. ``x`` (R, K) float64, ``valid`` (R, K) bool."""
    xv = np.where(valid, x, 0.0)
    n = np.add.reduceat(valid.astype(np.int64), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.add.reduceat(xv, starts, axis=0) / n
    sizes = np.diff(np.r_[starts, len(x)])
    dev = np.where(valid, x - np.repeat(mean, sizes, axis=0), 0.0)
    m2 = np.add.reduceat(dev * dev, starts, axis=0)
    return n, np.where(n > 0, mean, 0.0), m2


