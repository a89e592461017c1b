"""The behaviour embedding: co-occurrence counts in a window, PPMI, SVD."""

import numpy as np
import pytest

from tokenizer.behaviour import behaviour_embeddings, cooccurrence_counts, ppmi


def test_counts_pairs_within_the_window_in_both_orders():
    ids = ["a", "b", "c", "z"]
    near = cooccurrence_counts([["a", "b", "c"], ["a", "a", "x"]], ids, window=1).toarray()
    assert near.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    wide = cooccurrence_counts([["a", "b", "c"]], ids, window=2).toarray()
    assert wide[0, 2] == wide[2, 0] == 1  # a and c are two apart


def test_ppmi_keeps_only_pairs_seen_more_than_chance():
    counts = cooccurrence_counts([["a", "b"]] * 5 + [["c", "d"]] * 5 + [["a", "c"]], list("abcd"))
    m = ppmi(counts).toarray()
    assert m[0, 1] > 0 and m[2, 3] > 0  # the frequent pairs
    assert m[0, 2] == 0  # a-c: fewer than independence predicts
    assert np.all(m >= 0) and np.allclose(m, m.T)


def test_items_watched_together_embed_close_and_unseen_items_are_zero():
    ids = [f"g{g}i{i}" for g in range(2) for i in range(4)] + ["never"]
    rng = np.random.default_rng(0)
    timelines = [list(rng.permutation([f"g{g}i{i}" for i in range(4)])) for g in (0, 1) * 20]
    emb = behaviour_embeddings(timelines, ids, dim=4)
    assert emb.shape == (9, 4) and emb.dtype == np.float32
    assert np.all(emb[-1] == 0)
    cos = emb[:8] @ emb[:8].T
    within = np.mean([cos[i, j] for i in range(8) for j in range(8) if i != j and i // 4 == j // 4])
    across = np.mean([cos[i, j] for i in range(8) for j in range(8) if i // 4 != j // 4])
    assert within > across + 0.5
    assert np.array_equal(emb, behaviour_embeddings(timelines, ids, dim=4))


def test_dimension_must_be_positive():
    with pytest.raises(ValueError, match="dim"):
        behaviour_embeddings([["a", "b"]], ["a", "b"], dim=0)
