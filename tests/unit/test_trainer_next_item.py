"""The next-item ("sequence") layout: every position of a user's sequence trained in one
causal pass gives exactly the loss of the one-target examples it replaces."""

import dataclasses

import jax
import numpy as np
import pytest

from streams.contracts import schema
from trainer.config import TINY
from trainer.model import Transformer, init_params
from trainer.prompt import (
    SidLookup,
    TrainingSequence,
    UnknownTargetError,
    Watch,
    collate,
    every_position_sequence,
    next_item_sequence,
    prompt_for,
    sequence_prompt,
    sft_sequence,
)
from trainer.step import batch_arrays, weighted_loss
from trainer.vocab import Vocab, train_text_tokenizer

LEVELS = (4, 3, 2)
LOOKUP = SidLookup(
    "v1", {"a": (0, 0, 0, 0), "b": (1, 2, 1, 0), "c": (3, 1, 0, 1), "d": (2, 0, 1, 0)}
)
HOUR = 3_600_000
# one user's watches: (video, ts ms, watch ratio); gaps of 0.5 h, 30 h and 2 min
WATCHES = [
    Watch("a", 10 * HOUR, 1.0, 6000.0),
    Watch("b", 10 * HOUR + HOUR // 2, 0.4, 2400.0),
    Watch("c", 40 * HOUR + HOUR // 2, 0.8, 4800.0),
    Watch("d", 40 * HOUR + HOUR // 2 + 120_000, 0.6, 3600.0),
]


@pytest.fixture(scope="module")
def vocab():
    text = train_text_tokenizer(["Video has title: The topics in video are: cats"] * 10, 300)
    return Vocab(text, LEVELS, disambiguation_size=2)


def one_target_example(i: int) -> schema.SftExample:
    """What the Flink job / movielens_examples would emit for WATCHES[i]: the history
    before it with hours since each item measured from the target."""
    target = WATCHES[i]
    history = tuple(
        schema.HistoryItem(w.video_id, w.watch_ratio, w.watch_time_s, (target.ts - w.ts) / HOUR)
        for w in WATCHES[:i]
    )
    ctx = WATCHES[i - 1].video_id
    return schema.SftExample(f"e{i}", "u1", history, ctx, target.video_id, 1.0, target.ts)


def one_target_sequence(i: int, vocab: Vocab) -> TrainingSequence:
    """The continuous trainer's sequence for that example with [trainer_data]
    prompt_layout = "sequence" (trainer.data.TrainingData writes it with sft_sequence)."""
    return sft_sequence(one_target_example(i), LOOKUP, vocab, 128, layout="sequence")


def test_a_one_target_example_in_the_sequence_layout_is_its_prompt_then_its_target(vocab):
    example = one_target_example(2)
    seq = one_target_sequence(2, vocab)
    prompt = sequence_prompt(example.history, LOOKUP, vocab, 128)
    assert seq.tokens == prompt + vocab.encode_sid(LOOKUP.sids["c"])
    assert seq.loss_start == len(prompt) and seq.loss_mask is None  # the target's SID only
    assert prompt_for(example, LOOKUP, vocab, 128, layout="sequence") == prompt
    # the "target" layout (the default) ends its prompt in the context and <tgt> instead
    target = sft_sequence(example, LOOKUP, vocab, 128)
    assert target.tokens[target.loss_start - 1] == vocab.token_to_id("<tgt>")
    assert target.tokens[target.loss_start :] == seq.tokens[seq.loss_start :]
    with pytest.raises(ValueError, match="prompt layout"):
        sft_sequence(example, LOOKUP, vocab, 128, layout="columns")


def test_every_prefix_of_the_sequence_is_the_one_target_example(vocab):
    full = next_item_sequence(WATCHES, LOOKUP, vocab)
    for i in range(1, len(WATCHES)):
        one = one_target_sequence(i, vocab)
        assert full.tokens[: len(one.tokens)] == one.tokens
    trained = [t for t, m in zip(full.tokens, full.loss_mask, strict=True) if m]
    n = vocab.num_sid_slots
    assert len(trained) == 3 * n  # the SIDs of b, c and d; never a's, never a feature


def batch_loss(vocab: Vocab, seed: int):
    """The trainer's weighted loss of a batch of sequences under a random TINY model."""
    cfg = dataclasses.replace(TINY, max_len=64).with_vocab(vocab.size)
    params = init_params(cfg, jax.random.PRNGKey(seed))
    model = Transformer(cfg)

    def loss(seqs: list[TrainingSequence]) -> float:
        arrays = batch_arrays(collate(seqs, 40, vocab.pad_id))
        return float(
            weighted_loss(params, model, {k: jax.numpy.asarray(v) for k, v in arrays.items()})[1][0]
        )

    return loss


def test_every_position_batch_gives_the_loss_of_the_one_target_examples(vocab):
    loss = batch_loss(vocab, 3)
    every = loss([next_item_sequence(WATCHES, LOOKUP, vocab)])
    singles = [one_target_sequence(i, vocab) for i in range(1, len(WATCHES))]
    assert every == pytest.approx(loss(singles), rel=1e-5)
    # and it is a real loss: the first target alone differs from the mean over three
    assert abs(loss(singles[:1]) - every) > 1e-3


def test_one_example_trained_at_every_position_is_the_window_ending_in_its_target(vocab):
    # the continuous trainer's every-position row of d's example ([trainer_data]
    # train_positions = "every") is the bench's window of a, b, c, d up to d's SID (the
    # window also writes d's features, never trained on): the same targets, trained alike
    row = every_position_sequence(one_target_example(3), LOOKUP, vocab, 128)
    window = next_item_sequence(WATCHES, LOOKUP, vocab)
    assert row.tokens == window.tokens[: len(row.tokens)]
    assert list(row.loss_mask) == list(window.loss_mask[: len(row.tokens)])
    assert sum(row.loss_mask) == sum(window.loss_mask) == 3 * vocab.num_sid_slots


def test_every_position_row_gives_the_loss_of_the_one_target_examples_it_replaces(vocab):
    loss = batch_loss(vocab, 5)
    row = every_position_sequence(one_target_example(3), LOOKUP, vocab, 128)
    singles = [one_target_sequence(i, vocab) for i in range(1, len(WATCHES))]
    assert loss([row]) == pytest.approx(loss(singles), rel=1e-5)
    assert abs(loss(singles[-1:]) - loss([row])) > 1e-3  # not the target's loss alone


def test_every_position_row_trains_no_unknown_item_and_refuses_an_unknown_target(vocab):
    lookup = SidLookup("v1", {k: v for k, v in LOOKUP.sids.items() if k != "b"})
    row = every_position_sequence(one_target_example(3), lookup, vocab, 128)
    n = vocab.num_sid_slots
    assert sum(row.loss_mask) == 2 * n  # c and d; b is <unk> in the prompt, a is first
    assert row.tokens[:-n] == sequence_prompt(one_target_example(3).history, lookup, vocab, 128)
    with pytest.raises(UnknownTargetError):
        every_position_sequence(one_target_example(1), lookup, vocab, 128)


def test_sequence_prompt_gaps_are_hours_since_the_previous_item(vocab):
    prompt = sequence_prompt(one_target_example(3).history, LOOKUP, vocab, 128)
    per_item = vocab.num_sid_slots + 3
    gaps = [prompt[2 + k * per_item + vocab.num_sid_slots + 2] for k in range(3)]
    want = [vocab.feature_token("hours_since", h) for h in (0.0, 0.5, 30.0)]
    assert gaps == want
    assert prompt[:2] == [vocab.bos_id, vocab.token_to_id("<hist>")]
    assert len(prompt) == 2 + 3 * per_item


def test_a_history_out_of_time_order_gets_gap_zero_not_an_error(vocab):
    history = one_target_example(3).history
    swapped = (history[0], history[2], history[1])  # a, c (2 min before d), b (30 h before)
    prompt = sequence_prompt(swapped, LOOKUP, vocab, 128)
    per_item = vocab.num_sid_slots + 3
    gaps = [prompt[2 + k * per_item + vocab.num_sid_slots + 2] for k in range(3)]
    assert gaps == [vocab.feature_token("hours_since", h) for h in (0.0, 30.5, 0.0)]


def test_sequence_prompt_drops_the_oldest_items_to_fit(vocab):
    history = one_target_example(3).history
    per_item = vocab.num_sid_slots + 3
    trimmed = sequence_prompt(history, LOOKUP, vocab, 2 + 2 * per_item)
    assert trimmed == sequence_prompt(history[1:], LOOKUP, vocab, 128)


def test_loss_mask_covers_only_the_marked_tokens():
    seq = TrainingSequence([1, 2, 3, 4, 5], 1, 2.0, [False, False, True, False, True])
    batch = collate([seq], 6, 0)
    np.testing.assert_array_equal(batch.weights[0], [0.0, 2.0, 0.0, 2.0, 0.0, 0.0])
