"""Offline training: the shared fit loop (CPT and offline SFT) and SFT over examples in order."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from streams.contracts import schema
from trainer.config import TINY, VocabConfig
from trainer.cpt import vocab_for_corpus
from trainer.model import init_params
from trainer.offline import SftConfig, fit, sft_batches, sft_sequences, train_sft
from trainer.prompt import SidLookup, collate

CFG = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=64)
MAX_PROMPT = 40
SEQ_LEN = MAX_PROMPT + 4  # + the target's 4 SID tokens


@pytest.fixture(scope="module")
def setup():
    uploads = [
        schema.UploadEvent(f"v{i}", 0, f"title {i % 3}", "", "ch", (f"topic{i % 2}",), 60.0, {})
        for i in range(6)
    ]
    vocab = vocab_for_corpus(
        uploads, VocabConfig(text_vocab_size=300, disambiguation_size=2), (4, 2, 1)
    )
    lookup = SidLookup("sv1", {f"v{i}": (i % 4, i // 4, 0, 0) for i in range(6)})
    examples = [
        schema.SftExample(
            f"e{k}",
            f"u{k % 3}",
            (schema.HistoryItem(f"v{(k + 1) % 6}", 0.5, 30.0, 1.0),),
            f"v{(k + 2) % 6}",
            f"v{k % 6}" if k % 7 else "unknown",  # every 7th target has no SID
            1.0,
            1000 * k,
        )
        for k in range(1, 22)
    ]
    return vocab, lookup, examples


def test_sft_sequences_skip_targets_without_a_sid_and_count_them(setup):
    vocab, lookup, examples = setup
    seqs, skipped = sft_sequences(examples, lookup, vocab, MAX_PROMPT)
    assert skipped == 3 and len(seqs) == len(examples) - 3
    assert all(s.loss_start < len(s.tokens) <= SEQ_LEN + 1 for s in seqs)


def test_batches_pass_over_the_sequences_in_order_and_pad_each_pass_end(setup):
    vocab, lookup, examples = setup
    seqs, _ = sft_sequences(examples, lookup, vocab, MAX_PROMPT)  # 18 sequences
    batches = list(sft_batches(seqs, 8, SEQ_LEN, vocab.pad_id, passes=2))
    assert len(batches) == 2 * math.ceil(18 / 8)
    expected = collate(seqs[8:16], SEQ_LEN, vocab.pad_id)
    np.testing.assert_array_equal(batches[1].inputs, expected.inputs)
    last = batches[2]  # 2 real rows, 6 empty ones: no input, no loss
    assert last.inputs.shape == (8, SEQ_LEN)
    assert not last.mask[2:].any() and not last.weights[2:].any() and last.mask[:2].any()
    np.testing.assert_array_equal(batches[3].inputs, batches[0].inputs)  # pass 2 restarts


def test_offline_sft_takes_one_step_per_batch_and_learns(setup):
    vocab, lookup, examples = setup
    seqs, _ = sft_sequences(examples, lookup, vocab, MAX_PROMPT)
    model_cfg = CFG.with_vocab(vocab.size)
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    before = jax.tree.map(np.array, params)
    cfg = SftConfig(
        passes=6,
        batch_size=8,
        seq_len=SEQ_LEN,
        max_prompt_len=MAX_PROMPT,
        learning_rate=3e-3,
        warmup_steps=0,
    )
    trained, result = train_sft(params, model_cfg, vocab, seqs, cfg)
    assert result.steps == 6 * math.ceil(len(seqs) / 8)
    assert result.examples_trained == 6 * len(seqs)
    assert result.final_loss < result.first_loss
    jax.tree.map(np.testing.assert_array_equal, params, before)  # the caller's params stay
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), trained, before)
    assert max(jax.tree.leaves(moved)) > 0


class _NanStepper:
    def train(self, state, batch):
        return state, type("M", (), {"loss": np.float32("nan")})()


def test_fit_stops_on_a_non_finite_loss(setup):
    vocab, lookup, examples = setup
    seqs, _ = sft_sequences(examples, lookup, vocab, MAX_PROMPT)
    batches = sft_batches(seqs, 8, SEQ_LEN, vocab.pad_id, passes=1)
    with pytest.raises(FloatingPointError, match="at step 1"):
        fit(_NanStepper(), None, batches, steps=3, name="t")


def test_offline_sft_refuses_a_prompt_longer_than_its_input():
    with pytest.raises(ValueError, match="max_prompt_len"):
        SftConfig(seq_len=16, max_prompt_len=32)
