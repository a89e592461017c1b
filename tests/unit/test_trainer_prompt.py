"""SFT prompts, CPT sequences and collation: layout, trimming, unknown videos, loss weights."""

import numpy as np
import pytest

from streams.contracts import schema
from trainer.prompt import (
    SidLookup,
    TrainingSequence,
    UnknownTargetError,
    Watch,
    behaviour_sequences,
    collate,
    metadata_sequences,
    sft_prompt,
    sft_sequence,
)
from trainer.vocab import Vocab, train_text_tokenizer

LEVELS = (4, 3, 2)


@pytest.fixture(scope="module")
def vocab():
    text = train_text_tokenizer(["Video has title: The topics in video are: cats"] * 10, 300)
    return Vocab(text, LEVELS, disambiguation_size=2)


LOOKUP = SidLookup(
    "v1", {"a": (0, 0, 0, 0), "b": (1, 2, 1, 0), "c": (3, 1, 0, 1), "d": (2, 0, 1, 0)}
)


def _example(history=("a", "b"), ctx="c", target="d"):
    hist = tuple(schema.HistoryItem(v, 0.5, 30.0, float(i)) for i, v in enumerate(history))
    return schema.SftExample("e1", "u1", hist, ctx, target, 1.5, 1_700_000_000_000)


def test_sft_prompt_lays_out_history_context_and_target_marker(vocab):
    prompt = sft_prompt(_example(), LOOKUP, vocab, max_prompt_len=64)
    tok = vocab.token_to_id
    per_item = vocab.num_sid_slots + 3  # SID + watch ratio, watch time, hours since
    assert prompt[:2] == [vocab.bos_id, tok("<hist>")]
    assert prompt[2 : 2 + vocab.num_sid_slots] == vocab.encode_sid((0, 0, 0, 0))
    second = 2 + per_item
    assert prompt[second : second + vocab.num_sid_slots] == vocab.encode_sid((1, 2, 1, 0))
    assert prompt[second + vocab.num_sid_slots] == vocab.feature_token("watch_ratio", 0.5)
    assert prompt[-(vocab.num_sid_slots + 2) :] == [
        tok("<ctx>"),
        *vocab.encode_sid((3, 1, 0, 1)),
        tok("<tgt>"),
    ]
    assert len(prompt) == 2 + 2 * per_item + vocab.num_sid_slots + 2


def test_history_is_trimmed_oldest_first(vocab):
    full = sft_prompt(_example(), LOOKUP, vocab, max_prompt_len=64)
    per_item = vocab.num_sid_slots + 3
    trimmed = sft_prompt(_example(), LOOKUP, vocab, max_prompt_len=len(full) - 1)
    assert len(trimmed) == len(full) - per_item
    # the newest item ("b") survived
    assert trimmed[2 : 2 + vocab.num_sid_slots] == vocab.encode_sid((1, 2, 1, 0))


def test_unknown_history_and_context_become_unk_but_unknown_target_raises(vocab):
    prompt = sft_prompt(_example(history=("zz",), ctx=None), LOOKUP, vocab, 64)
    assert prompt[2] == vocab.unk_id
    assert prompt[-2] == vocab.unk_id
    with pytest.raises(UnknownTargetError, match="zz"):
        sft_sequence(_example(target="zz"), LOOKUP, vocab, 64)


def test_a_sid_the_vocab_cannot_write_counts_as_unknown(vocab):
    lookup = SidLookup("v1", {**LOOKUP.sids, "d": (2, 0, 1, 7)})  # disambiguation 7 >= 2
    with pytest.raises(UnknownTargetError):
        sft_sequence(_example(), lookup, vocab, 64)


def test_sft_sequence_trains_on_the_target_sid_only(vocab):
    seq = sft_sequence(_example(), LOOKUP, vocab, 64, weight=0.75)
    assert seq.tokens[seq.loss_start :] == vocab.encode_sid((2, 0, 1, 0))
    batch = collate([seq], seq_len=64, pad_id=vocab.pad_id)
    trained = np.flatnonzero(batch.weights[0])
    assert batch.targets[0, trained].tolist() == vocab.encode_sid((2, 0, 1, 0))
    assert np.all(batch.weights[0, trained] == 0.75)
    # inputs are the tokens shifted by one: the position before each target sees the prefix
    assert batch.inputs[0, trained[0]] == vocab.token_to_id("<tgt>")


def test_collate_pads_right_and_cuts_long_sequences():
    seqs = [TrainingSequence([1, 2, 3, 4, 5, 6], 1), TrainingSequence([7, 8], 1)]
    batch = collate(seqs, seq_len=4, pad_id=0)
    assert batch.inputs.tolist() == [[1, 2, 3, 4], [7, 0, 0, 0]]
    assert batch.targets.tolist() == [[2, 3, 4, 5], [8, 0, 0, 0]]
    assert batch.mask.tolist() == [[True] * 4, [True, False, False, False]]
    assert batch.weights.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]


def test_behaviour_sequences_are_time_ordered_chunks_with_hours_since(vocab):
    watches = [
        Watch("b", 3_600_000 * 3, 1.0, 60.0),
        Watch("a", 0, 0.2, 5.0),
        Watch("zz", 10, 0.2, 5.0),  # no SID: skipped
    ]
    (seq,) = behaviour_sequences(watches, LOOKUP, vocab, max_len=64)
    n = vocab.num_sid_slots
    assert seq.tokens[0] == vocab.bos_id and seq.tokens[-1] == vocab.eos_id
    assert seq.tokens[1 : 1 + n] == vocab.encode_sid((0, 0, 0, 0))
    second = 1 + n + 3
    assert seq.tokens[second : second + n] == vocab.encode_sid((1, 2, 1, 0))
    assert seq.tokens[second + n + 2] == vocab.feature_token("hours_since", 3.0)
    chunks = behaviour_sequences(watches * 10, LOOKUP, vocab, max_len=2 * (n + 3) + 2)
    assert len(chunks) > 1 and all(len(c.tokens) <= 2 * (n + 3) + 2 for c in chunks)


def test_metadata_sentences_name_the_video_by_its_sid(vocab):
    seqs = metadata_sequences("c", "Cats at play", ("cats", "pets"), LOOKUP, vocab, 64)
    assert len(seqs) == 2
    sid = vocab.encode_sid((3, 1, 0, 1))
    for s in seqs:
        i = s.tokens.index(sid[0])
        assert s.tokens[i : i + len(sid)] == sid
        assert s.loss_start == 1
    assert "Cats at play" in vocab.decode_text(seqs[0].tokens)
    assert metadata_sequences("zz", "t", (), LOOKUP, vocab, 64) == []
