"""The shared-prefix beam search equals the full-KV-cache beam search it replaced.

`_reference_search` is the previous algorithm, kept here verbatim as the reference: prefill
into a KV cache of prompt + SID slots, repeat the whole cache per beam, gather it after every
slot, decode through Transformer.__call__. The search in trainer/beam.py must give the same
SIDs (and items) in the same order with scores within 1e-4, constrained and unconstrained,
on tiny models and the demo-size model, with grouped-query and multi-head attention.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.beam import BeamResult, BeamSearch, build_trie, left_pad, score_sids
from trainer.config import SMALL, TINY
from trainer.model import (
    KVCache,
    Transformer,
    decode_beams,
    empty_beam_cache,
    init_cache,
    init_params,
    prefill,
)


def _gather_rows(cache: KVCache, rows: jax.Array) -> KVCache:
    take = functools.partial(jnp.take, indices=rows, axis=0)
    return KVCache(
        tuple(map(take, cache.keys)), tuple(map(take, cache.values)), take(cache.mask), cache.index
    )


@functools.partial(
    jax.jit, static_argnames=("model", "slot_offsets", "slot_sizes", "beams", "constrained")
)
def _reference_search(
    params, prompt, prompt_mask, tables, *, model, slot_offsets, slot_sizes, beams, constrained
):
    b, p = prompt.shape
    k = beams
    num_slots = len(slot_sizes)
    cache = init_cache(model.config, b, p + num_slots - 1)
    out = model.apply({"params": params}, prompt, attention_mask=prompt_mask, cache=cache)
    logp = jax.nn.log_softmax(out.logits[:, -1], axis=-1)  # [b, vocab]
    logp = jnp.repeat(logp[:, None], k, axis=1)  # [b, k, vocab]
    cache = _gather_rows(out.cache, jnp.repeat(jnp.arange(b), k))  # rows b * k + beam
    scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(b, axis=0)  # [b, k]
    nodes = jnp.zeros((b, k), jnp.int32)
    chosen = jnp.zeros((b, k, num_slots), jnp.int32)
    for level in range(num_slots):
        start, size = slot_offsets[level], slot_sizes[level]
        lp = logp[..., start : start + size]  # [b, k, C]
        child = jnp.where(nodes[..., None] >= 0, tables[level][jnp.maximum(nodes, 0)], -1)
        if constrained:
            lp = jnp.where(child >= 0, lp, -jnp.inf)
        cand = (scores[..., None] + lp).reshape(b, k * size)
        scores, idx = jax.lax.top_k(cand, k)  # [b, k]
        parent, code = idx // size, idx % size
        nodes = jnp.take_along_axis(child.reshape(b, k * size), idx, axis=1)
        chosen = jnp.take_along_axis(chosen, parent[..., None], axis=1).at[:, :, level].set(code)
        if level + 1 < num_slots:
            rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
            cache = _gather_rows(cache, rows)
            token = (code + start).reshape(b * k, 1)
            out = model.apply({"params": params}, token, cache=cache)
            cache = out.cache
            logp = jax.nn.log_softmax(out.logits[:, 0], axis=-1).reshape(b, k, -1)
    item = jnp.where(jnp.isfinite(scores), nodes, -1)
    tokens = chosen + jnp.asarray(slot_offsets, jnp.int32)
    return BeamResult(chosen, tokens, scores, item)


# tiny layouts: 4 SID slots after a text range, vocabulary of 64
OFFSETS, SIZES = (20, 26, 31, 35), (6, 5, 4, 7)
TINY_CFGS = {
    "gqa": dataclasses.replace(TINY, d_model=32, d_ff=64, vocab_size=64),  # 4 heads / 2 kv
    "mha-untied": dataclasses.replace(
        TINY, d_model=32, d_ff=64, n_heads=2, n_kv_heads=2, tie_embeddings=False, vocab_size=64
    ),
    "mqa-3layers": dataclasses.replace(
        TINY, d_model=48, d_ff=64, n_layers=3, n_heads=4, n_kv_heads=1, vocab_size=64
    ),
}

CASES = {"gqa": 3, "mha-untied": 2, "mqa-3layers": 2}  # (batch, beams, ...) cases per model


def _params(cfg, seed, scale):
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.PRNGKey(seed))
    emb = params["embed_tokens"]["embedding"] * scale  # sharper (more spread) logits
    return {**params, "embed_tokens": {"embedding": emb}}


def _random_case(rng, sizes, batch, prompt_len, text_vocab, items):
    all_slots = np.stack([rng.integers(0, s, 4 * items) for s in sizes], axis=1)
    slots = np.unique(all_slots, axis=0)[:items]
    trie = build_trie(slots[rng.permutation(len(slots))], sizes)
    lengths = rng.integers(1, prompt_len + 1, batch)
    lengths[0] = prompt_len  # one full-length prompt, the others left-padded
    seqs = [list(rng.integers(1, text_vocab, n)) for n in lengths]
    prompt, mask = left_pad(seqs, 0, prompt_len)
    return prompt, mask, trie


def _assert_same(new: BeamResult, ref: BeamResult, atol=1e-4):
    new_s, ref_s = np.asarray(new.scores), np.asarray(ref.scores)
    found = np.isfinite(ref_s)
    np.testing.assert_array_equal(np.isfinite(new_s), found)
    np.testing.assert_array_equal(np.asarray(new.item), np.asarray(ref.item))
    np.testing.assert_array_equal(np.asarray(new.slots)[found], np.asarray(ref.slots)[found])
    np.testing.assert_array_equal(np.asarray(new.tokens)[found], np.asarray(ref.tokens)[found])
    np.testing.assert_allclose(new_s[found], ref_s[found], atol=atol, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY_CFGS))
@pytest.mark.parametrize("constrained", [True, False])
def test_search_equals_the_full_cache_reference_on_tiny_models(name, constrained):
    cfg = TINY_CFGS[name]
    model = Transformer(cfg)
    cases = [(1, 1, 5, 1.0, 30), (3, 8, 12, 10.0, 60), (4, 16, 7, 3.0, 200), (2, 4, 9, 5.0, 7)]
    for seed, (batch, beams, prompt_len, scale, items) in enumerate(cases[: CASES[name]]):
        rng = np.random.default_rng(seed)
        params = _params(cfg, seed, scale)
        prompt, mask, trie = _random_case(rng, SIZES, batch, prompt_len, OFFSETS[0], items)
        search = BeamSearch(cfg, OFFSETS, SIZES, beams, constrained)
        new = search(params, prompt, mask, trie)
        ref = _reference_search(
            params,
            jnp.asarray(prompt),
            jnp.asarray(mask),
            tuple(map(jnp.asarray, trie.tables)),
            model=model,
            slot_offsets=OFFSETS,
            slot_sizes=SIZES,
            beams=beams,
            constrained=constrained,
        )
        _assert_same(new, ref)
        # and the scores are the teacher-forced log-probs of the returned SIDs (last row)
        found = np.isfinite(np.asarray(new.scores[-1]))
        forced = score_sids(cfg, params, prompt[-1:], mask[-1:], np.asarray(new.tokens[-1])[found])
        np.testing.assert_allclose(
            np.asarray(new.scores[-1])[found], np.asarray(forced)[0], atol=1e-4
        )


def test_search_equals_the_full_cache_reference_on_the_demo_model():
    cfg = SMALL.with_vocab(1500)  # configs/demo.toml [trainer_model]: 8 heads / 4 kv heads
    sizes = (256, 256, 256, 257)
    offsets = tuple(400 + sum(sizes[:i]) for i in range(len(sizes)))
    rng = np.random.default_rng(7)
    params = _params(cfg, 7, 1.0)
    prompt, mask, trie = _random_case(rng, sizes, 3, 120, offsets[0], 5000)
    tables = tuple(map(jnp.asarray, trie.tables))
    for constrained in (True, False):
        new = BeamSearch(cfg, offsets, sizes, 20, constrained)(params, prompt, mask, trie)
        ref = _reference_search(
            params,
            jnp.asarray(prompt),
            jnp.asarray(mask),
            tables,
            model=Transformer(cfg),
            slot_offsets=offsets,
            slot_sizes=sizes,
            beams=20,
            constrained=constrained,
        )
        _assert_same(new, ref)


@pytest.mark.parametrize(
    "cfg",
    [
        TINY_CFGS["gqa"],
        TINY_CFGS["mha-untied"],
        dataclasses.replace(TINY_CFGS["gqa"], num_experts=4, moe_top_k=2),
    ],
    ids=["gqa", "mha-untied", "moe"],
)
def test_prefill_and_decode_beams_equal_the_kv_cache_forward(cfg):
    """Model level: logits and rotary positions of prefill + decode_beams match
    Transformer.__call__ over a KV cache holding prompt + that beam's tokens."""
    batch, beams, prompt_len, steps = 2, 3, 6, 3
    params = _params(cfg, 0, 4.0)
    prompt, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12]], 0, prompt_len)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (steps, batch, beams), 0, cfg.vocab_size)
    parents = np.array([[[0, 0, 0], [0, 0, 0]], [[2, 0, 1], [1, 1, 0]], [[0, 2, 2], [2, 1, 0]]])

    logits, prefix = jax.jit(lambda p, t, m: prefill(cfg, p, t, m))(params, prompt, mask)
    decode = jax.jit(lambda p, t, pre, c: decode_beams(cfg, p, t, pre, c))
    cache = empty_beam_cache(cfg, batch, beams)
    history = np.zeros((batch, beams, 0), np.int32)
    model = Transformer(cfg)
    forward = jax.jit(lambda p, t, m: model.apply({"params": p}, t, attention_mask=m).logits)
    full = forward(params, prompt, mask)[:, -1]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full), atol=1e-4)
    for step in range(steps):
        parent = jnp.asarray(parents[step])
        cache = cache.reorder(parent)
        history = np.take_along_axis(history, parents[step][..., None], axis=1)
        history = np.concatenate([history, np.asarray(tokens[step])[..., None]], axis=-1)
        logits, cache = decode(params, tokens[step], prefix, cache)
        assert logits.shape == (batch, beams, cfg.vocab_size) and cache.generated == step + 1
        # reference: the whole sequence through the model, without a cache
        seq = np.concatenate([np.repeat(prompt[:, None], beams, 1), history], -1)
        seq_mask = np.concatenate(
            [np.repeat(mask[:, None], beams, 1), np.ones_like(history, bool)], -1
        )
        ref = forward(params, seq.reshape(batch * beams, -1), seq_mask.reshape(batch * beams, -1))[
            :, -1
        ]
        np.testing.assert_allclose(
            np.asarray(logits).reshape(batch * beams, -1), np.asarray(ref), atol=1e-4
        )
