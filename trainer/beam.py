"""Beam search over SID tokens, constrained by a trie of the SIDs in the current index.

After a prompt the model generates one token per SID slot (L levels, plus the
disambiguation slot when the vocabulary has one; see trainer/vocab.py). At slot l only
that slot's tokens are scored (log-softmax over the whole vocabulary, then the slot's
range), so every output is a well-formed SID; the trie decides whether it names an item.

Trie layout (dense, usable inside jit): for each slot l a table

    tables[l]  int32 [num_nodes_l, slot_size_l]

where row n is a prefix of length l (node 0 of slot 0 is the empty prefix) and entry
[n, c] is the node id of prefix + (c,) in tables[l + 1], or, at the last slot, the row of
that SID in `SidTrie.slots` (the item index); -1 marks a prefix no SID has. Masking a
beam's candidates is then one gather, `tables[l][node]`. Node counts are padded to a
power of two (rows of -1) so a growing index recompiles the search only when a count
crosses a power of two. Memory is sum_l num_nodes_l * slot_size_l ints: fine for the
demo (a few MB), but at paper scale (2048 x 1024 x 512 codes, ~1e7 items) the deep tables
would need a sparse form (sorted (node, code) keys + searchsorted) -- not done.

Modes: constrained (invalid candidates get -inf, so no invalid SID can come out) and
unconstrained (only the slot ranges; used to measure the hallucination rate = share of
generated SIDs that are not in the index). Both walk the trie, so `item` is -1 for a
generated SID outside the index.

Decoding: one prefill over the (left-padded) prompts computes their keys/values once per
request (trainer.model.prefill; logits only for the last position), and every decode step
attends to that shared prompt cache plus a small per-beam cache of the <= num_slots - 1
generated tokens (trainer.model.decode_beams). Only the per-beam cache is reordered (a
gather) after every slot; the prompt's cache is never copied per beam.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trainer.config import ModelConfig
from trainer.model import Transformer, decode_beams, empty_beam_cache, prefill
from trainer.vocab import Vocab


class SidTrie(NamedTuple):
    tables: tuple[np.ndarray, ...]  # per slot [num_nodes_l (padded), slot_size_l] int32
    slots: np.ndarray  # [num_items, num_slots] int32: slot codes of each SID, row = item index

    @property
    def num_items(self) -> int:
        return int(self.slots.shape[0])

    @property
    def slot_sizes(self) -> tuple[int, ...]:
        return tuple(int(t.shape[1]) for t in self.tables)


class BeamResult(NamedTuple):
    slots: jax.Array  # [batch, beams, num_slots] int32 slot-local codes
    tokens: jax.Array  # [batch, beams, num_slots] int32 token ids
    scores: jax.Array  # [batch, beams] float32 sum of token log-probs, best first; -inf = none
    item: jax.Array  # [batch, beams] int32 row in SidTrie.slots, -1 = not a SID of the index


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def build_trie(
    slots: np.ndarray,
    slot_sizes: Sequence[int],
    pad_pow2: bool = True,
    min_nodes: Sequence[int] | None = None,
) -> SidTrie:
    """The dense trie of SIDs given as slot codes [num_items, num_slots] (row = item index).

    pad_pow2 pads each table's node count to a power of two; min_nodes (per slot) sets a
    floor, so tries of different SID sets can share one compiled search.
    """
    slots = np.asarray(slots, dtype=np.int64).reshape(-1, len(slot_sizes))
    n, num_slots = slots.shape
    for level, size in enumerate(slot_sizes):
        col = slots[:, level]
        if n and (col.min() < 0 or col.max() >= size):
            raise ValueError(
                f"slot {level} codes must be in [0, {size}); got {col.min()}..{col.max()}"
            )
    if n:
        _, counts = np.unique(slots, axis=0, return_counts=True)
        if counts.max() > 1:
            raise ValueError(f"{int((counts > 1).sum())} SIDs appear more than once")
    # node id of every item's prefix of length l (sorted prefix order)
    node = [np.zeros(n, np.int64)]
    counts_per_level = [1]
    for level in range(1, num_slots):
        uniq, inverse = np.unique(slots[:, :level], axis=0, return_inverse=True)
        node.append(inverse.reshape(-1))
        counts_per_level.append(len(uniq))
    tables = []
    for level in range(num_slots):
        rows = counts_per_level[level]
        rows = _pow2(rows) if pad_pow2 else rows
        if min_nodes is not None:
            rows = max(rows, int(min_nodes[level]))
        table = np.full((rows, slot_sizes[level]), -1, np.int32)
        child = node[level + 1] if level + 1 < num_slots else np.arange(n)
        table[node[level], slots[:, level]] = child
        tables.append(table)
    return SidTrie(tuple(tables), slots.astype(np.int32))


def trie_from_sids(vocab: Vocab, sids: Iterable[Sequence[int]]) -> SidTrie:
    """The trie of SIDs given as codes (L or L + 1 with disambiguation), in item order."""
    rows = [vocab.sid_slots(s) for s in sids]
    slots = np.array(rows, np.int64).reshape(-1, vocab.num_sid_slots)
    return build_trie(slots, vocab.sid_slot_sizes)


def _search(
    params, prompt, prompt_mask, tables, *, config, slot_offsets, slot_sizes, beams, constrained
):
    b, _ = prompt.shape
    k = beams
    num_slots = len(slot_sizes)
    # the prompt's keys/values once per request, shared by its beams (see decode_beams)
    last_logits, prefix = prefill(config, params, prompt, prompt_mask)
    logp = jax.nn.log_softmax(last_logits, axis=-1)  # [b, vocab]
    logp = jnp.repeat(logp[:, None], k, axis=1)  # [b, k, vocab]
    cache = empty_beam_cache(config, b, k)  # each beam's generated tokens only
    # one live beam at the start; the others are -inf copies so every slot has k*C candidates
    scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(b, axis=0)  # [b, k]
    nodes = jnp.zeros((b, k), jnp.int32)  # trie node of each beam's prefix, -1 = off the trie
    chosen = jnp.zeros((b, k, num_slots), jnp.int32)
    for level in range(num_slots):  # static: slot sizes differ, so the loop is unrolled
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
            logits, cache = decode_beams(
                config, params, code + start, prefix, cache.reorder(parent)
            )
            logp = jax.nn.log_softmax(logits, axis=-1)  # [b, k, vocab]
    item = jnp.where(jnp.isfinite(scores), nodes, -1)
    tokens = chosen + jnp.asarray(slot_offsets, jnp.int32)
    return BeamResult(chosen, tokens, scores, item)


class BeamSearch:
    """Jitted top-`beams` SID generation for a model config and SID slot layout.

        search = BeamSearch.for_vocab(cfg, vocab, beams=10)
        result = search(params, prompt, prompt_mask, trie)   # prompt left-padded

    Compiled once per (batch, prompt length, trie table shapes).
    """

    def __init__(
        self,
        config: ModelConfig,
        slot_offsets: Sequence[int],
        slot_sizes: Sequence[int],
        beams: int,
        constrained: bool = True,
    ) -> None:
        if beams < 1:
            raise ValueError(f"beams={beams} must be >= 1")
        if len(slot_offsets) != len(slot_sizes):
            raise ValueError("slot_offsets and slot_sizes differ in length")
        for off, size in zip(slot_offsets, slot_sizes, strict=True):
            if off < 0 or off + size > config.vocab_size:
                raise ValueError(
                    f"slot [{off}, {off + size}) outside vocab_size {config.vocab_size}"
                )
        self.config = config
        self.slot_offsets = tuple(int(o) for o in slot_offsets)
        self.slot_sizes = tuple(int(s) for s in slot_sizes)
        self.beams = beams
        self.constrained = constrained
        self._fn = jax.jit(
            functools.partial(
                _search,
                config=config,
                slot_offsets=self.slot_offsets,
                slot_sizes=self.slot_sizes,
                beams=beams,
                constrained=constrained,
            )
        )

    @classmethod
    def for_vocab(cls, config: ModelConfig, vocab: Vocab, beams: int, constrained: bool = True):
        return cls(config, vocab.sid_slot_offsets, vocab.sid_slot_sizes, beams, constrained)

    def __call__(self, params, prompt, prompt_mask, trie: SidTrie) -> BeamResult:
        """prompt [batch, time] token ids, LEFT-padded; prompt_mask [batch, time] 1 = real."""
        prompt_mask = np.asarray(prompt_mask)
        if prompt_mask.shape != np.shape(prompt):
            raise ValueError(f"prompt_mask {prompt_mask.shape} != prompt {np.shape(prompt)}")
        if not prompt_mask[:, -1].all():
            raise ValueError("prompts must be left-padded: the last position must be real")
        if trie.slot_sizes != self.slot_sizes:
            raise ValueError(f"trie slot sizes {trie.slot_sizes} != search's {self.slot_sizes}")
        if np.shape(prompt)[1] + len(self.slot_sizes) - 1 > self.config.max_len:
            raise ValueError(f"prompt length {np.shape(prompt)[1]} + SID exceeds max_len")
        tables = tuple(jnp.asarray(t) for t in trie.tables)
        return self._fn(params, jnp.asarray(prompt), jnp.asarray(prompt_mask, bool), tables)


def score_sids(config: ModelConfig, params, prompt, prompt_mask, sid_tokens) -> jax.Array:
    """Teacher-forced log-prob [batch, num_sids] of each SID's tokens [num_sids, num_slots]
    after each prompt, by full forward passes without a cache (a reference for the search)."""
    model = Transformer(config)
    prompt = jnp.asarray(prompt)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    sid_tokens = jnp.asarray(sid_tokens)
    b, p = prompt.shape
    n, s = sid_tokens.shape

    @jax.jit
    def run(params, prompt, prompt_mask, sid_tokens):
        seq = jnp.concatenate(
            [jnp.repeat(prompt[:, None], n, 1), jnp.broadcast_to(sid_tokens, (b, n, s))], axis=-1
        ).reshape(b * n, p + s)
        mask = jnp.concatenate(
            [jnp.repeat(prompt_mask[:, None], n, 1), jnp.ones((b, n, s), bool)], axis=-1
        ).reshape(b * n, p + s)
        logits = model.apply({"params": params}, seq, attention_mask=mask).logits
        logp = jax.nn.log_softmax(logits[:, p - 1 : p + s - 1], axis=-1)  # predicts SID tokens
        picked = jnp.take_along_axis(logp, seq[:, p:, None], axis=-1)[..., 0]
        return picked.sum(-1).reshape(b, n)

    return run(params, prompt, prompt_mask, sid_tokens)


def hallucination_rate(result: BeamResult) -> float:
    """Share of generated SIDs (finite score) that name no item of the index."""
    generated = np.isfinite(np.asarray(result.scores))
    if not generated.any():
        return 0.0
    invalid = generated & (np.asarray(result.item) < 0)
    return float(invalid.sum() / generated.sum())


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    """Token lists -> (tokens [batch, length], mask [batch, length]) padded on the left."""
    length = max(len(s) for s in sequences) if length is None else length
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for i, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence {i} has {len(seq)} tokens > length {length}")
        if seq:
            tokens[i, length - len(seq) :] = seq
            mask[i, length - len(seq) :] = True
    return tokens, mask
