"""Trie-constrained beam search: never an invalid SID, exact on a tiny case, hallucination rate."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.beam import (
    BeamSearch,
    build_trie,
    hallucination_rate,
    left_pad,
    score_sids,
    trie_from_sids,
)
from trainer.config import TINY
from trainer.model import init_params
from trainer.vocab import Vocab, train_text_tokenizer

LEVELS = (4, 3, 2)  # + a disambiguation slot of 1 code + "none" -> slot sizes (4, 3, 2, 2)
BEAMS = 8
ALL_SIDS = [c for c in itertools.product(*map(range, LEVELS))] + [
    c + (0,) for c in itertools.product(*map(range, LEVELS))
]
CAPACITY = (1, 4, 12, 24)  # most prefixes per slot: one compiled search for every SID set


@pytest.fixture(scope="module")
def vocab():
    text = train_text_tokenizer(["a user watched some videos today"] * 10, 300)
    return Vocab(text, LEVELS, disambiguation_size=1)


@pytest.fixture(scope="module")
def setup(vocab):
    cfg = dataclasses.replace(TINY, d_model=32, d_ff=64).with_vocab(vocab.size)
    init = jax.jit(lambda key: init_params(cfg, key))
    prompt, mask = left_pad([[1, 9, 17, 40, 41, 42], [5, 60, 61]], vocab.pad_id)
    searches = {c: BeamSearch.for_vocab(cfg, vocab, BEAMS, constrained=c) for c in (True, False)}
    return cfg, init, prompt, mask, searches


def _peaked(params, scale):
    """Scale the tied embedding: logits scale with it, so the model gets confident."""
    return {**params, "embed_tokens": {"embedding": params["embed_tokens"]["embedding"] * scale}}


def _trie(vocab, sids):
    slots = np.array([vocab.sid_slots(s) for s in sids])
    return build_trie(slots, vocab.sid_slot_sizes, min_nodes=CAPACITY)


def test_trie_tables_hand_computed():
    slots = np.array([[1, 0], [1, 2], [0, 1]])
    trie = build_trie(slots, (2, 3), pad_pow2=False)
    np.testing.assert_array_equal(trie.tables[0], [[0, 1]])  # prefixes (0,) -> 0, (1,) -> 1
    np.testing.assert_array_equal(trie.tables[1], [[-1, 2, -1], [0, -1, 1]])  # -> item rows
    assert [t.shape for t in build_trie(slots, (2, 3)).tables] == [(1, 2), (2, 3)]
    assert build_trie(slots, (2, 3), min_nodes=(1, 8)).tables[1].shape == (8, 3)
    with pytest.raises(ValueError, match="more than once"):
        build_trie(np.array([[1, 0], [1, 0]]), (2, 3))
    with pytest.raises(ValueError, match="slot 1 codes"):
        build_trie(np.array([[1, 3]]), (2, 3))


def test_trie_from_sids_writes_codes_as_vocab_slots(vocab):
    sids = [(3, 2, 1), (3, 2, 1, 0), (0, 0, 0)]
    trie = trie_from_sids(vocab, sids)
    np.testing.assert_array_equal(trie.slots, [[3, 2, 1, 0], [3, 2, 1, 1], [0, 0, 0, 0]])
    assert trie.tables[3][trie.tables[2][trie.tables[1][trie.tables[0][0, 3], 2], 1], 1] == 1


def test_constrained_search_equals_exhaustive_search(vocab, setup):
    cfg, init, prompt, mask, searches = setup
    params = _peaked(init(jax.random.PRNGKey(0)), 20.0)
    rng = np.random.default_rng(0)
    sids = [ALL_SIDS[i] for i in rng.choice(len(ALL_SIDS), BEAMS, replace=False)]
    trie = _trie(vocab, sids)
    result = searches[True](params, prompt, mask, trie)
    exhaustive = np.asarray(
        score_sids(cfg, params, prompt, mask, [vocab.encode_sid(s) for s in sids])
    )  # [batch, sids]
    for b in range(2):
        order = np.argsort(-exhaustive[b])
        np.testing.assert_array_equal(np.asarray(result.item[b]), order)
        np.testing.assert_allclose(np.asarray(result.scores[b]), exhaustive[b][order], atol=1e-4)
        for k in range(BEAMS):
            assert vocab.decode_sid(np.asarray(result.tokens[b, k])) == sids[int(result.item[b, k])]
    assert hallucination_rate(result) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1.0, 200.0),
    chosen=st.sets(st.integers(0, len(ALL_SIDS) - 1), min_size=1, max_size=30),
)
def test_constrained_search_never_yields_an_invalid_sid(vocab, setup, seed, scale, chosen):
    cfg, init, prompt, mask, searches = setup
    params = _peaked(init(jax.random.PRNGKey(seed)), scale)
    sids = [ALL_SIDS[i] for i in sorted(chosen)]
    trie = _trie(vocab, sids)
    result = searches[True](params, prompt, mask, trie)
    scores, item, slots = map(np.asarray, (result.scores, result.item, result.slots))
    found = np.isfinite(scores)
    assert (found.sum(axis=1) == min(BEAMS, len(sids))).all()
    assert (item[found] >= 0).all() and (item[~found] == -1).all()
    np.testing.assert_array_equal(slots[found], trie.slots[item[found]])
    valid = {vocab.sid_slots(s) for s in sids}
    assert all(tuple(row) in valid for row in slots[found])
    for b in range(scores.shape[0]):
        assert (np.diff(scores[b][found[b]]) <= 1e-6).all()  # best first
        assert len(set(item[b][found[b]])) == found[b].sum()  # no SID twice


def test_unconstrained_search_can_hallucinate_and_the_rate_is_counted(vocab, setup):
    cfg, init, prompt, mask, searches = setup
    params = _peaked(init(jax.random.PRNGKey(1)), 20.0)
    sids = ALL_SIDS[:3]  # 3 of 48 SIDs: most of 8 free beams must miss the index
    trie = _trie(vocab, sids)
    free = searches[False](params, prompt, mask, trie)
    slots, item, scores = map(np.asarray, (free.slots, free.item, free.scores))
    assert np.isfinite(scores).all()
    valid = {vocab.sid_slots(s): i for i, s in enumerate(sids)}
    expected_item = [[valid.get(tuple(r), -1) for r in row] for row in slots]
    np.testing.assert_array_equal(item, expected_item)
    misses = sum(i < 0 for row in expected_item for i in row)
    assert misses >= 2 * (BEAMS - len(sids))
    assert hallucination_rate(free) == pytest.approx(misses / (2 * BEAMS))
    for b in range(2):  # every result is still a well-formed SID of the vocabulary
        for row in np.asarray(free.tokens[b]):
            vocab.decode_sid(row)
    constrained = searches[True](params, prompt, mask, trie)
    assert (np.asarray(free.scores[:, 0]) >= np.asarray(constrained.scores[:, 0]) - 1e-5).all()


def test_search_rejects_right_padded_prompts(vocab, setup):
    cfg, init, prompt, mask, searches = setup
    with pytest.raises(ValueError, match="left-padded"):
        searches[True](
            init(jax.random.PRNGKey(0)), prompt, mask[:, ::-1], _trie(vocab, ALL_SIDS[:2])
        )
