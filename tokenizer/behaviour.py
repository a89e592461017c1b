"""A behaviour embedding per item from co-occurrence in users' timelines: PPMI + SVD.

Content embeddings say what an item is; this one says what it is watched with. Counts
of item pairs within `window` positions of each other in a user's timeline (both
orders), positive pointwise mutual information of those counts, then the top `dim`
singular vectors scaled by the square root of their singular values, rows L2-normalised.
An item never seen in a timeline gets a zero row (no behaviour yet).

It is an experimental tokenizer input (`plum bench quality --set sid_behaviour_dim=N`):
the SID service cannot compute it for a new upload, so the production tokenizer does not
train on it yet.

    emb = behaviour_embeddings([["a", "b", "c"], ["b", "c"]], ["a", "b", "c", "d"], dim=2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

DENSE_MAX = 4000  # items up to which the SVD is dense (exact, repeatable); sparse above


def cooccurrence_counts(
    timelines: Sequence[Sequence[str]], ids: Sequence[str], window: int = 5
) -> sp.csr_matrix:
    """Symmetric [items, items] counts of pairs at most `window` positions apart (a pair
    of the same item is not counted); rows in `ids` order, unknown ids ignored."""
    index = {v: i for i, v in enumerate(ids)}
    rows: list[int] = []
    cols: list[int] = []
    for timeline in timelines:
        seq = [index[v] for v in timeline if v in index]
        for i, a in enumerate(seq):
            for b in seq[i + 1 : i + 1 + window]:
                if a != b:
                    rows += [a, b]
                    cols += [b, a]
    n = len(ids)
    data = np.ones(len(rows), np.float64)
    return sp.csr_matrix((data, (rows, cols)), shape=(n, n))


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """max(0, log(p(a, b) / (p(a) p(b)))) on the non-zero counts."""
    counts = counts.tocoo()
    total = counts.sum()
    if total == 0:
        return sp.csr_matrix(counts.shape)
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    pmi = np.log(counts.data * total / (marginal[counts.row] * marginal[counts.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)


def behaviour_embeddings(
    timelines: Sequence[Sequence[str]], ids: Sequence[str], dim: int, window: int = 5
) -> np.ndarray:
    """float32 [len(ids), dim]: the PPMI-SVD embedding of each item, zero rows for items
    that co-occur with nothing; zero-padded when fewer than `dim` components exist."""
    if dim < 1:
        raise ValueError(f"dim={dim} must be >= 1")
    matrix = ppmi(cooccurrence_counts(timelines, ids, window))
    out = np.zeros((len(ids), dim), np.float32)
    k = min(dim, min(matrix.shape) - 1)
    if matrix.nnz == 0 or k < 1:
        return out
    if matrix.shape[0] <= DENSE_MAX:  # LAPACK: the same vectors on every call
        u, s, _ = np.linalg.svd(matrix.toarray())
        u, s = u[:, :k], s[:k]
    else:
        start = np.full(matrix.shape[0], 1.0 / np.sqrt(matrix.shape[0]))
        u, s, _ = svds(matrix, k=k, v0=start)
    order = np.argsort(-s)
    emb = u[:, order] * np.sqrt(s[order])
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.where(norms > 1e-12, emb / np.maximum(norms, 1e-12), 0.0)
    out[:, :k] = emb
    return out
