"""The SID contract: every SID the SID service can emit is a SID the trainer can tokenize,
and a SID the trainer cannot tokenize is counted, never silently dropped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plum.config import REPO_ROOT, load_section
from streams.contracts import schema
from streams.contracts.sid import SidConfig, SidSpace, load_sid_config, sid_length
from tests.trainer_data_support import LEVELS, FakeFresh, example, lookup, tiny_vocab
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex, SidSpaceExhausted
from tokenizer.service import SidServiceConfig
from trainer.config import load_vocab_config
from trainer.data import DataConfig, TrainingData
from trainer.prompt import SidLookup
from trainer.vocab import Vocab, build_vocab

CONFIGS = REPO_ROOT / "configs"
FILES = ["demo.toml", "test.toml", "paper.toml"]
TEXTS = ["a user watched some videos today", "title of a video", "cats and dogs"] * 5


def service_and_trainer(name: str) -> tuple[tuple[int, ...], SidServiceConfig, Vocab]:
    """What one config file gives the SID service and the trainer, built as they build it:
    the tokenizer's level sizes, [sid_service], and the vocabulary CPT lays out."""
    path = CONFIGS / name
    levels = load_tokenizer_config(path, env={}).level_sizes
    service = load_section(SidServiceConfig, path, "sid_service", env={})
    vocab_cfg = load_vocab_config(path, env={}, text_vocab_size=300)  # the text part is moot
    return levels, service, build_vocab(TEXTS, vocab_cfg, levels)


CONTRACTS = {name: service_and_trainer(name) for name in FILES}


@pytest.fixture(params=FILES)
def contract(request):
    return CONTRACTS[request.param]


def test_every_disambiguation_code_the_service_hands_out_tokenizes(contract, tmp_path):
    levels, service, vocab = contract
    size = service.disambiguation_size
    index = SidIndex(tmp_path / "sids.sqlite", size)  # as `plum tokenizer serve` opens it
    largest = [n - 1 for n in levels]  # the largest code of every tokenizer level
    try:
        with index.transaction():
            got = index.assign_many("v", [(f"vid{i}", largest) for i in range(size + 1)], ts=0)
        sids = [a.sid for a in got[:size]]
        assert [s[-1] for s in sids] == list(range(size))  # codes 0 .. size - 1, all handed out
        assert isinstance(got[size], SidSpaceExhausted)  # one more video gets no SID at all
        for sid in sids:
            assert vocab.decode_sid(vocab.encode_sid(sid)) == sid
        assert SidLookup("v", index.all_sids("v")).unencodable(vocab) == 0
    finally:
        index.close()


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(FILES), data=st.data())
def test_any_sid_of_the_service_space_round_trips_through_the_vocab(name, data):
    levels, service, vocab = CONTRACTS[name]
    space = SidSpace(levels, service.disambiguation_size)
    sid = tuple(data.draw(st.integers(0, n - 1)) for n in space.code_ranges)
    assert space.contains(sid)
    tokens = vocab.encode_sid(sid)
    assert len(tokens) == space.length == sid_length(len(levels)) == vocab.num_sid_slots
    assert vocab.decode_sid(tokens) == sid


def test_sid_space_largest_and_containment():
    space = SidSpace((8, 4, 2), 3)
    assert space.length == 4 and space.code_ranges == (8, 4, 2, 3)
    assert space.largest() == (7, 3, 1, 2)
    assert space.contains((7, 3, 1, 2)) and not space.contains((7, 3, 1, 3))
    assert not space.contains((0, 0, 0)) and not space.contains((0, 0, 2, 0))
    assert space.count_outside([(0, 0, 0, 0), (0, 0, 0, 3), (8, 0, 0, 0)]) == 2
    assert SidSpace((8, 4, 2), 5).covers(space) and not space.covers(SidSpace((8, 4, 2), 5))
    assert not space.covers(SidSpace((8, 4), 3))


def test_sid_config_needs_a_disambiguation_code(tmp_path):
    assert load_sid_config(CONFIGS / "paper.toml", env={}) == SidConfig(64)
    with pytest.raises(ValueError, match="disambiguation_size=0 must be >= 1"):
        SidConfig(0)


# ---------------------------------------------------------------------------- counted, not silent


def test_a_vocab_narrower_than_the_service_counts_the_sids_it_cannot_write():
    # The old mismatch: the service hands out 256 codes, the vocabulary had 16, so the
    # 17th video sharing a prefix is one the trainer cannot write.
    text_vocab = tiny_vocab().text
    narrow = Vocab(text_vocab, (4, 4), 16)
    sids = {f"v{k}": (1, 2, k) for k in range(18)}  # codes 0 .. 17 on one prefix
    assert SidLookup("x", sids).unencodable(narrow) == 2  # codes 16 and 17
    assert SidLookup("x", sids).unencodable(Vocab(text_vocab, (4, 4), 18)) == 0


def test_the_trainer_input_counts_unencodable_sids_in_every_batch(tmp_path):
    vocab = tiny_vocab()  # LEVELS and 1 disambiguation code
    sids = dict(lookup().sids)
    sids["v0"] = (*sids["v0"][: len(LEVELS)], 1)  # a code the vocabulary has no token for
    sids["v1"] = (*sids["v1"][: len(LEVELS)], 2)
    fresh = FakeFresh(partitions=1)
    fresh.add(0, schema.encode(example(2)))
    config = DataConfig(
        batch_size=4, seq_len=40, max_prompt_len=32, fresh_fraction=1.0, fresh_wait_ms=50
    )
    source = lambda: SidLookup("v1", sids)  # noqa: E731
    with TrainingData(config, vocab, source, None, None, tmp_path / "a", fresh=fresh) as data:
        assert data.stats.unencodable_sids == 2
        mb = data.next_batch(timeout_s=5.0)
        assert mb is not None and mb.unencodable_sids == 2
