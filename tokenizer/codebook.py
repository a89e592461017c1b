"""Codebook initialisation (k-means on the first batch) and dead-code re-seeding.

Both run on the host in numpy: they happen once, or once per window of steps, and are
easier to read and to test there than as jitted code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sq_dist(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[n, k] squared distances between rows of x [n, D] and centers [k, D]."""
    d = np.sum(x**2, axis=1)[:, None] - 2.0 * x @ centers.T + np.sum(centers**2, axis=1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: k rows of x, each drawn with probability ∝ distance² to the chosen.

    If x has fewer distinct rows than k, the remaining centers are copies of data rows
    with small noise so no two codewords coincide.
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    closest = _sq_dist(x, x[chosen]).ravel()
    while len(chosen) < min(k, n):
        total = closest.sum()
        if total <= 0:  # every row coincides with a chosen center
            break
        i = int(rng.choice(n, p=closest / total))
        chosen.append(i)
        closest = np.minimum(closest, _sq_dist(x, x[i : i + 1]).ravel())
    centers = x[chosen]
    if len(centers) < k:
        extra = x[rng.integers(n, size=k - len(centers))]
        scale = 1e-3 * (np.std(x) + 1e-6)
        centers = np.concatenate([centers, extra + scale * rng.standard_normal(extra.shape)])
    return centers


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding then `iters` Lloyd iterations; an empty cluster keeps its center."""
    x = np.asarray(x, np.float64)
    centers = kmeans_plus_plus(x, k, rng)
    for _ in range(iters):
        assign = np.argmin(_sq_dist(x, centers), axis=1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return centers


def init_codebooks(
    z: np.ndarray, level_sizes: Sequence[int], iters: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Residual k-means: level l's codebook is k-means over the residuals left by levels < l."""
    r = np.asarray(z, np.float64)
    books = []
    for k in level_sizes:
        centers = kmeans(r, k, iters, rng)
        books.append(centers.astype(np.float32))
        r = r - centers[np.argmin(_sq_dist(r, centers), axis=1)]
    return books


def reseed_dead_codes(
    codebook: np.ndarray, usage: np.ndarray, residuals: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replace codewords with zero `usage` by residuals drawn from the current batch.

    codebook [K, D], usage [K] (assignments over the last window), residuals [B, D] (this
    level's inputs in the current batch). Returns (new codebook, indices re-seeded). Rows
    are drawn without replacement when the batch is large enough, so re-seeded codes land
    on distinct points of the current data distribution.
    """
    dead = np.flatnonzero(np.asarray(usage) == 0)
    new = np.array(codebook, copy=True)
    if dead.size == 0:
        return new, dead
    residuals = np.asarray(residuals)
    replace = residuals.shape[0] < dead.size
    rows = rng.choice(residuals.shape[0], size=dead.size, replace=replace)
    picked = residuals[rows]
    if replace:  # duplicates would tie forever; jitter them apart
        picked = picked + 1e-3 * (np.std(residuals) + 1e-6) * rng.standard_normal(picked.shape)
    new[dead] = picked.astype(new.dtype)
    return new, dead
