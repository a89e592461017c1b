"""The vocabulary: id layout, SID encode/decode (property tests), feature buckets, save/load."""

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts.schema import HistoryItem
from trainer.config import VocabConfig
from trainer.vocab import (
    SPECIAL_TOKENS,
    InvalidSidError,
    Vocab,
    bucket,
    build_vocab,
    train_text_tokenizer,
)

CORPUS = [
    "Video has title: How to bake sourdough bread at home",
    "The topics in video are: cooking, baking, bread",
    "Video has title: Ten minute morning yoga for beginners",
    "The topics in video are: fitness, yoga, health",
    "Video has title: Speedrunning the classic platformer in under ten minutes",
] * 20
LEVELS = (8, 4, 2)


@pytest.fixture(scope="module")
def text():
    return train_text_tokenizer(CORPUS, vocab_size=320, min_frequency=2)


@pytest.fixture(scope="module")
def vocab(text):
    return Vocab(text, LEVELS, disambiguation_size=3)


def test_special_tokens_come_first_in_a_trained_bpe(vocab):
    assert [vocab.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)


def test_layout_is_text_then_sid_slots_then_features(vocab):
    assert vocab.sid_slot_sizes == (8, 4, 2, 4)  # 3 disambiguation codes + "none"
    start = vocab.text_size
    for level, size in enumerate(vocab.sid_slot_sizes):
        assert vocab.sid_token_range(level) == (start, start + size)
        start += size
    assert vocab.id_to_token(vocab.sid_token_range(1)[0] + 3) == "<sid_l1_3>"
    assert vocab.id_to_token(vocab.sid_token_range(3)[0]) == "<sid_l3_none>"
    assert vocab.feature_token_range("watch_ratio") == (start, start + 10)
    assert vocab.size == start + 10 + 13 + 13
    assert vocab.tokens()[vocab.size - 1] == "<hours_since_12>"
    with pytest.raises(ValueError):
        vocab.sid_token_range(4)


def test_text_round_trips(vocab):
    s = "How to bake bread, in ten minutes!"
    ids = vocab.encode_text(s)
    assert max(ids) < vocab.text_size and vocab.decode_text(ids) == s


@st.composite
def sids(draw):
    codes = [draw(st.integers(0, n - 1)) for n in LEVELS]
    if draw(st.booleans()):
        codes.append(draw(st.integers(0, 2)))
    return tuple(codes)


@settings(max_examples=200, deadline=None)
@given(codes=sids())
def test_sid_encode_decode_round_trip(vocab, codes):
    tokens = vocab.encode_sid(codes)
    assert len(tokens) == vocab.num_sid_slots
    for level, t in enumerate(tokens):
        lo, hi = vocab.sid_token_range(level)
        assert lo <= t < hi and vocab.is_sid_token(t)
    assert vocab.decode_sid(tokens) == codes


@settings(max_examples=100, deadline=None)
@given(a=sids(), b=sids())
def test_distinct_sids_get_distinct_tokens(vocab, a, b):
    assert (a == b) == (vocab.encode_sid(a) == vocab.encode_sid(b))


@settings(max_examples=100, deadline=None)
@given(codes=sids(), position=st.integers(0, 3), token=st.integers(-5, 400))
def test_decode_rejects_any_token_of_another_level(vocab, codes, position, token):
    tokens = vocab.encode_sid(codes)
    lo, hi = vocab.sid_token_range(position)
    tokens[position] = token
    if lo <= token < hi:
        vocab.decode_sid(tokens)
    else:
        with pytest.raises(InvalidSidError):
            vocab.decode_sid(tokens)


@pytest.mark.parametrize(
    "codes,match",
    [
        ((8, 0, 0), "code 8 at level 0"),
        ((0, 0), "2 codes"),
        ((0, 0, 0, 3), "disambiguation code 3"),
        ((0, 4, 0), "level 1"),
    ],
)
def test_encode_rejects_invalid_codes_naming_them(vocab, codes, match):
    with pytest.raises(InvalidSidError, match=match):
        vocab.encode_sid(codes)


def test_decode_rejects_text_tokens_and_wrong_count(vocab):
    with pytest.raises(InvalidSidError, match="not a level-0 SID token"):
        vocab.decode_sid([5] + vocab.encode_sid((1, 1, 1))[1:])
    with pytest.raises(InvalidSidError, match="a SID has 4"):
        vocab.decode_sid(vocab.encode_sid((1, 1, 1))[:3])


def test_without_disambiguation_a_sid_is_l_tokens(text):
    v = Vocab(text, LEVELS, disambiguation_size=0)
    assert v.num_sid_slots == 3 and v.decode_sid(v.encode_sid((7, 3, 1))) == (7, 3, 1)
    with pytest.raises(InvalidSidError):
        v.encode_sid((7, 3, 1, 0))


@pytest.mark.parametrize(
    "x,edges,expected",
    [
        (0.0, (0.1, 0.2), 0),
        (0.1, (0.1, 0.2), 1),
        (0.15, (0.1, 0.2), 1),
        (0.2, (0.1, 0.2), 2),
        (9.0, (0.1, 0.2), 2),
    ],
)
def test_bucket_counts_edges_at_or_below(x, edges, expected):
    assert bucket(x, edges) == expected


def test_feature_tokens_hand_computed(vocab):
    item = HistoryItem("v1", watch_ratio=0.95, watch_time_s=45.0, hours_since=0.5)
    wr, wt, hs = vocab.feature_tokens(item)
    assert vocab.id_to_token(wr) == "<watch_ratio_9>"
    assert vocab.id_to_token(wt) == "<watch_time_6>"  # [30, 60) s
    assert vocab.id_to_token(hs) == "<hours_since_2>"  # [15 min, 1 h)
    zero = SimpleNamespace(watch_ratio=0.0, watch_time_s=0.0, hours_since=0.0)
    assert [vocab.id_to_token(t) for t in vocab.feature_tokens(zero)] == [
        "<watch_ratio_0>",
        "<watch_time_0>",
        "<hours_since_0>",
    ]
    huge = SimpleNamespace(watch_ratio=3.0, watch_time_s=1e6, hours_since=1e5)
    assert [vocab.id_to_token(t) for t in vocab.feature_tokens(huge)] == [
        "<watch_ratio_9>",
        "<watch_time_12>",
        "<hours_since_12>",
    ]
    with pytest.raises(ValueError, match="nan"):
        vocab.feature_token("watch_ratio", float("nan"))


def test_save_and_load_round_trip(vocab, tmp_path):
    loaded = Vocab.load(vocab.save(tmp_path / "vocab"))
    assert loaded.tokens() == vocab.tokens()
    assert loaded.encode_text("bake bread") == vocab.encode_text("bake bread")
    assert loaded.feature_edges == vocab.feature_edges
    assert loaded.decode_sid(vocab.encode_sid((3, 2, 1, 2))) == (3, 2, 1, 2)


def test_build_vocab_from_config():
    v = build_vocab(CORPUS, VocabConfig(text_vocab_size=300, disambiguation_size=2), (4, 4))
    assert v.text_size <= 300 and v.sid_slot_sizes == (4, 4, 3)
