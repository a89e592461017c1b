"""Trainer input without Kafka: config, position, archive, history sampling, batch mixing."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from plum.config import ConfigError
from streams.contracts import schema
from tests.trainer_data_support import (
    BASE_TS,
    FakeFresh,
    archive_records,
    example,
    lookup,
    tiny_vocab,
)
from trainer.archive import HistoryArchive, HistoryReader, list_parts
from trainer.data import (
    DataConfig,
    DataPosition,
    MixedBatch,
    TrainingData,
    load_data_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DAY_MS = 24 * 3600 * 1000


@pytest.fixture(scope="module")
def vocab():
    return tiny_vocab()


def cfg(**kw) -> DataConfig:
    base = dict(
        batch_size=8,
        seq_len=40,
        max_prompt_len=32,
        fresh_fraction=0.5,
        fresh_wait_ms=50,
        prefetch_batches=2,
        sid_refresh_s=0.05,
        history_refresh_s=0.05,
    )
    base.update(kw)
    return DataConfig(**base)


def next_batch(data: TrainingData, timeout_s: float = 5.0) -> MixedBatch:
    mb = data.next_batch(timeout_s)
    assert mb is not None, f"no batch within {timeout_s} s; stats {data.stats}"
    return mb


def filled_archive(directory: Path, n: int, start: int = 1000, step: int = 1) -> None:
    archive = HistoryArchive(directory)
    archive.append(archive_records([example(start + i) for i in range(n)]))
    archive.flush(step)


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["test.toml", "demo.toml", "paper.toml"])
def test_every_config_file_has_a_valid_trainer_data_section(name):
    text = (CONFIGS / name).read_text()
    assert "[trainer_data]" in text
    load_data_config(CONFIGS / name, env={})


def test_environment_overrides_the_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trainer_data]\nfresh_fraction = 0.5\nwhen_idle = 'history'\n")
    env = {"PLUM_TRAINER_DATA__FRESH_FRACTION": "0.25", "PLUM_TRAINER_DATA__WHEN_IDLE": "wait"}
    c = load_data_config(path, env=env)
    assert (c.fresh_fraction, c.when_idle) == (0.25, "wait")
    assert load_data_config(path, env=env, batch_size=4).batch_size == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"fresh_fraction": 1.5},
        {"fresh_fraction": -0.1},
        {"when_idle": "sleep"},
        {"reward_mode": "both"},
        {"reward_max": 0.0},
        {"start_from": "middle"},
        {"batch_size": 0},
        {"prefetch_batches": 0},
        {"max_prompt_len": 200, "seq_len": 128},
        {"fresh_wait_ms": -1},
        {"sid_refresh_s": 0.0},
        {"prompt_layout": "columns"},
        {"train_positions": "some"},
        {"train_positions": "every"},  # needs the sequence layout
    ],
)
def test_bad_values_are_config_errors(tmp_path, bad):
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError):
        load_data_config(path, env={}, **bad)


def test_fresh_rows_per_batch():
    assert DataConfig(batch_size=32, fresh_fraction=0.5).n_fresh == 16
    assert DataConfig(batch_size=32, fresh_fraction=1.0).n_fresh == 32
    assert DataConfig(batch_size=32, fresh_fraction=0.0).n_fresh == 0
    # a tiny fraction still reads Kafka, or the stream would never be consumed
    assert DataConfig(batch_size=4, fresh_fraction=0.01).n_fresh == 1


def test_prompt_plus_target_must_fit_the_sequence(vocab):
    # 4 SID tokens: max_prompt_len + 4 <= seq_len + 1
    DataConfig(seq_len=40, max_prompt_len=37).check_vocab(vocab)
    with pytest.raises(ValueError, match="SID tokens"):
        DataConfig(seq_len=40, max_prompt_len=38).check_vocab(vocab)
    with pytest.raises(ValueError, match="empty-history"):
        DataConfig(seq_len=40, max_prompt_len=7).check_vocab(vocab)
    # the sequence layout's empty-history prompt is <bos> <hist> alone
    DataConfig(seq_len=40, max_prompt_len=7, prompt_layout="sequence").check_vocab(vocab)


def test_position_round_trips_through_json():
    pos = DataPosition({0: 17, 3: 5}, history_draws=41, archive_step=12)
    assert DataPosition.from_dict(json.loads(json.dumps(pos.to_dict()))) == pos
    assert DataPosition.from_dict({}) == DataPosition()
    assert pos.with_archive_step(20).archive_step == 20


# ---------------------------------------------------------------------------- archive


def test_flush_writes_one_part_per_utc_date_and_clears_the_buffer(tmp_path):
    archive = HistoryArchive(tmp_path)
    day1 = [example(i, ts=BASE_TS + i) for i in range(3)]  # 2023-11-14
    day2 = [example(10 + i, ts=BASE_TS + DAY_MS + i) for i in range(2)]  # 2023-11-15
    archive.append(archive_records(day1 + day2))
    written = archive.flush(7)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "date=2023-11-14/part-0000000007.parquet",
        "date=2023-11-15/part-0000000007.parquet",
    ]
    assert archive.pending == 0 and archive.count() == 5
    table = pq.read_table(written[1])
    assert table.column_names == ["partition", "offset", "ts", "event_id", "value"]
    assert table.column("event_id").to_pylist() == ["e10", "e11"]
    assert schema.decode_sft_example(table.column("value")[0].as_py()) == day2[0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_empty_flush_is_a_no_op_and_a_step_is_never_overwritten(tmp_path):
    archive = HistoryArchive(tmp_path)
    assert archive.flush(3) == []
    archive.append(archive_records([example(0)]))
    archive.flush(3)
    archive.append(archive_records([example(1)]))
    with pytest.raises(FileExistsError):
        archive.flush(3)


def test_a_flush_that_fails_midway_writes_nothing_and_a_later_one_archives_each_once(
    tmp_path, monkeypatch
):
    """Disk full on the second date's part file: the first date's part is removed again
    and the buffer kept, so the retry at a later step does not archive it twice."""
    import trainer.archive as archive_module

    archive = HistoryArchive(tmp_path)
    day1 = [example(i, ts=BASE_TS + i) for i in range(3)]
    day2 = [example(10 + i, ts=BASE_TS + DAY_MS + i) for i in range(2)]
    archive.append(archive_records(day1 + day2))
    real_write, calls = archive_module._write_atomic, []

    def full_on_second(table, path):
        calls.append(path)
        if len(calls) == 2:
            path.with_name(f".{path.name}.tmp").write_bytes(b"half")
            raise OSError(27, "File too large")
        real_write(table, path)

    monkeypatch.setattr(archive_module, "_write_atomic", full_on_second)
    with pytest.raises(OSError, match="File too large"):
        archive.flush(7)
    assert archive.pending == 5 and archive.count() == 0
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    monkeypatch.setattr(archive_module, "_write_atomic", real_write)
    archive.flush(9)
    assert archive.pending == 0 and archive.count() == 5


def test_truncate_after_deletes_only_later_steps(tmp_path):
    archive = HistoryArchive(tmp_path)
    for step in (1, 2, 3, 4):
        archive.append(archive_records([example(step, ts=BASE_TS + step * DAY_MS)]))
        archive.flush(step)
    (tmp_path / "date=2023-11-18" / ".part-0000000009.parquet.tmp").write_bytes(b"half")
    assert archive.truncate_after(2) == 2
    assert archive.count() == 2
    assert sorted(p.parent.name for p in list_parts(tmp_path)) == [
        "date=2023-11-15",
        "date=2023-11-16",
    ]
    assert not list(tmp_path.rglob("*.tmp"))
    assert sorted(d.name for d in tmp_path.iterdir()) == ["date=2023-11-15", "date=2023-11-16"]


# ---------------------------------------------------------------------------- history


def test_history_is_deterministic_per_seed_and_draw(tmp_path):
    filled_archive(tmp_path, 50)
    a, b, c = (HistoryReader(tmp_path, seed) for seed in (1, 1, 2))
    draws_a = [a.sample(i).event_id for i in range(30)]
    assert draws_a == [b.sample(i).event_id for i in range(30)]
    assert draws_a != [c.sample(i).event_id for i in range(30)]
    # a draw does not depend on which draws came before it
    assert [b.sample(i).event_id for i in reversed(range(30))] == draws_a[::-1]


def test_history_draws_cover_every_file_uniformly(tmp_path):
    archive = HistoryArchive(tmp_path)
    archive.append(archive_records([example(i) for i in range(10)]))
    archive.flush(1)
    archive.append(archive_records([example(100 + i) for i in range(30)]))
    archive.flush(2)
    reader = HistoryReader(tmp_path, seed=0, cache_files=1)  # forces file reloads
    ids = [reader.sample(i).event_id for i in range(2000)]
    share_small = sum(int(e[1:]) < 100 for e in ids) / len(ids)
    assert 0.2 < share_small < 0.3  # 10 of 40 rows
    assert len(set(ids)) == 40


def test_history_reads_files_flushed_after_it_started(tmp_path):
    reader = HistoryReader(tmp_path / "archive", seed=0)
    assert reader.total_rows == 0 and reader.sample(0) is None
    filled_archive(tmp_path / "archive", 5)
    assert reader.sample(0) is None  # not refreshed yet
    assert reader.refresh() == 5
    assert reader.sample(0).event_id.startswith("e")


def test_undecodable_history_rows_are_counted_and_skipped(tmp_path):
    from trainer.archive import ArchiveRecord

    archive = HistoryArchive(tmp_path)
    archive.append([ArchiveRecord(0, 0, BASE_TS, b"not json", "bad")])
    archive.flush(1)
    reader = HistoryReader(tmp_path, seed=0)
    assert reader.sample(0) is None
    assert reader.undecodable == {schema.NOT_JSON: 1}


# ---------------------------------------------------------------------------- mixing


def make_data(vocab, tmp_path, fresh, config=None, start=None, source=None) -> TrainingData:
    return TrainingData(
        config or cfg(),
        vocab,
        source or (lambda: lookup()),
        None,
        None,
        tmp_path / "archive",
        start,
        fresh=fresh,
    )


def row_weights(mb: MixedBatch) -> np.ndarray:
    return mb.batch.weights.sum(axis=1)  # [batch]


def test_batches_mix_fresh_and_history_at_the_configured_ratio(vocab, tmp_path):
    filled_archive(tmp_path / "archive", 40)
    fresh = FakeFresh()
    fresh.add_examples([example(i) for i in range(100)])
    with make_data(vocab, tmp_path, fresh) as data:
        for _ in range(3):
            mb = next_batch(data)
            assert (mb.n_fresh, mb.n_history) == (4, 4)
            assert mb.batch.inputs.shape == (8, 40)
            assert (row_weights(mb) > 0).all()
            assert len(mb.fresh_records) == 4 and len(mb.fresh_event_ids) == 4
            assert mb.sid_version == "v1"
            assert mb.newest_fresh_ts == max(r.ts for r in mb.fresh_records)
        assert mb.position.history_draws >= 12


def test_quiet_kafka_fills_the_batch_with_history(vocab, tmp_path):
    filled_archive(tmp_path / "archive", 40)
    with make_data(vocab, tmp_path, FakeFresh()) as data:
        mb = next_batch(data)
        assert (mb.n_fresh, mb.n_history) == (0, 8)
        assert mb.newest_fresh_ts is None and mb.fresh_records == ()
        assert data.stats.idle_batches >= 1


def test_no_fresh_and_no_history_yields_nothing(vocab, tmp_path):
    with make_data(vocab, tmp_path, FakeFresh()) as data:
        assert data.next_batch(0.3) is None


def test_without_history_a_batch_is_smaller_and_padded_with_zero_weight(vocab, tmp_path):
    fresh = FakeFresh()
    fresh.add_examples([example(i) for i in range(3)])
    with make_data(vocab, tmp_path, fresh) as data:
        mb = next_batch(data)
        assert (mb.n_fresh, mb.n_history) == (3, 0)
        assert mb.batch.inputs.shape == (8, 40)
        w = row_weights(mb)
        assert (w[:3] > 0).all() and (w[3:] == 0).all()
        assert not mb.batch.mask[3:].any()


def test_all_fresh_consumes_every_record_exactly_once(vocab, tmp_path):
    fresh = FakeFresh(partitions=3)
    fresh.add_examples([example(i) for i in range(37)])
    seen: list[str] = []
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        deadline = time.monotonic() + 10
        while len(seen) < 37 and time.monotonic() < deadline:
            mb = data.next_batch(1.0)
            if mb is not None:
                assert mb.n_history == 0 and mb.n_fresh <= 8
                seen += mb.fresh_event_ids
                last = mb
    assert sorted(seen) == sorted(f"e{i}" for i in range(37))
    assert last.position.fresh_offsets == fresh.end_offsets()


def test_a_restart_from_a_batch_position_continues_with_the_same_batches(vocab, tmp_path):
    filled_archive(tmp_path / "archive", 30)
    examples = [example(i) for i in range(40)]

    def run(start, n):
        fresh = FakeFresh(start=start.fresh_offsets if start else None)
        fresh.add_examples(examples)
        with make_data(vocab, tmp_path, fresh, start=start) as data:
            return [next_batch(data) for _ in range(n)]

    first = run(None, 3)
    again = run(first[0].position, 2)
    for a, b in zip(first[1:], again, strict=True):
        assert a.fresh_event_ids == b.fresh_event_ids
        assert a.position == b.position
        np.testing.assert_array_equal(a.batch.inputs, b.batch.inputs)  # history draws too


def test_unknown_targets_are_counted_archived_and_advance_the_position(vocab, tmp_path):
    fresh = FakeFresh(partitions=1)
    fresh.add_examples([example(0), example(1, target="v999"), example(2)])
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        mb = next_batch(data)
        assert mb.n_fresh == 2 and mb.n_skipped_unknown == 1
        assert mb.fresh_event_ids == ("e0", "e2")
        assert [r.event_id for r in mb.fresh_records] == ["e0", "e1", "e2"]
        assert mb.position.fresh_offsets == {0: 3}
        assert data.stats.skipped_unknown_target == 1


def test_malformed_records_are_counted_and_skipped_but_move_the_position(vocab, tmp_path):
    fresh = FakeFresh(partitions=1)
    fresh.add(0, b"{broken")
    fresh.add(0, schema.encode(example(1)))
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        mb = next_batch(data)
        assert (mb.n_fresh, mb.n_malformed) == (1, 1)
        assert [r.event_id for r in mb.fresh_records] == ["e1"]
        assert mb.position.fresh_offsets == {0: 2}
        assert data.stats.malformed == {schema.NOT_JSON: 1}


def test_a_batch_of_only_skipped_records_has_no_rows_but_moves_the_position(vocab, tmp_path):
    fresh = FakeFresh(partitions=1)
    fresh.add(0, b"[]")
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        mb = next_batch(data)
        assert mb.n_rows == 0 and mb.n_malformed == 1
        assert mb.position.fresh_offsets == {0: 1}
        assert (mb.batch.weights == 0).all()


def test_weighted_mode_weights_rows_by_reward(vocab, tmp_path):
    fresh = FakeFresh(partitions=1)
    fresh.add_examples([example(0, reward=0.5), example(1, reward=2.0)])
    config = cfg(fresh_fraction=1.0, reward_mode="weighted", reward_max=2.0)
    with make_data(vocab, tmp_path, fresh, config) as data:
        mb = next_batch(data)
    n_sid = vocab.num_sid_slots
    # the loss covers the target's SID tokens: n_sid positions of weight r / r_max
    np.testing.assert_allclose(row_weights(mb)[:2], [0.25 * n_sid, 1.0 * n_sid])


def test_fresh_and_history_rows_are_written_in_the_configured_prompt_layout(vocab, tmp_path):
    """[trainer_data] prompt_layout = "sequence": every row, fresh or from the archive, is
    the example's sequence_prompt then its target, as the quality bench prompts."""
    from trainer.prompt import collate, sft_sequence

    filled_archive(tmp_path / "archive", 1, start=500)
    fresh = FakeFresh(partitions=1)
    fresh.add_examples([example(0)])
    config = cfg(batch_size=2, prompt_layout="sequence")
    with make_data(vocab, tmp_path, fresh, config) as data:
        mb = next_batch(data)
    assert (mb.n_fresh, mb.n_history) == (1, 1)
    want = [
        sft_sequence(e, lookup(), vocab, config.max_prompt_len, layout="sequence")
        for e in (example(0), example(500))
    ]
    expected = collate(want, config.seq_len, vocab.pad_id)
    np.testing.assert_array_equal(mb.batch.inputs, expected.inputs)
    np.testing.assert_array_equal(mb.batch.weights, expected.weights)
    assert vocab.token_to_id("<tgt>") not in mb.batch.inputs


def test_every_position_rows_train_each_history_item_and_the_target_weighted_by_reward(
    vocab, tmp_path
):
    """[trainer_data] train_positions = "every": every row, fresh or from the archive, is
    the example's every_position_sequence, its weight the example's as in "target"."""
    from trainer.prompt import collate, every_position_sequence

    filled_archive(tmp_path / "archive", 1, start=500)
    fresh = FakeFresh(partitions=1)
    fresh.add_examples([example(0, reward=1.0)])
    config = cfg(
        batch_size=2,
        prompt_layout="sequence",
        train_positions="every",
        reward_mode="weighted",
        reward_max=2.0,
    )
    with make_data(vocab, tmp_path, fresh, config) as data:
        mb = next_batch(data)
    assert (mb.n_fresh, mb.n_history) == (1, 1)
    fresh_example, history_example = example(0, reward=1.0), example(500)
    want = [
        every_position_sequence(e, lookup(), vocab, config.max_prompt_len, e.reward / 2.0)
        for e in (fresh_example, history_example)
    ]
    expected = collate(want, config.seq_len, vocab.pad_id)
    np.testing.assert_array_equal(mb.batch.inputs, expected.inputs)
    np.testing.assert_array_equal(mb.batch.weights, expected.weights)
    # more than the target's SID is trained: the history items' SIDs too
    n_history = len(fresh_example.history)
    assert n_history >= 2
    assert row_weights(mb)[0] == pytest.approx(0.5 * vocab.num_sid_slots * n_history)


def test_sampled_mode_gives_weight_one_to_the_target_tokens(vocab, tmp_path):
    fresh = FakeFresh(partitions=1)
    fresh.add_examples([example(0, reward=0.5)])
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        mb = next_batch(data)
    assert row_weights(mb)[0] == vocab.num_sid_slots


def test_wait_policy_blocks_until_a_fresh_example_arrives(vocab, tmp_path):
    filled_archive(tmp_path / "archive", 40)
    fresh = FakeFresh(partitions=1)
    with make_data(vocab, tmp_path, fresh, cfg(when_idle="wait")) as data:
        assert data.next_batch(0.4) is None  # history exists, but the policy is to wait
        fresh.add_examples([example(0)])
        mb = next_batch(data)
        assert (mb.n_fresh, mb.n_history) == (1, 7)
        assert mb.wait_s > 0


def test_a_sid_version_switch_shows_up_in_later_batches(vocab, tmp_path):
    filled_archive(tmp_path / "archive", 20)
    current = {"lookup": lookup("v1")}
    with make_data(vocab, tmp_path, FakeFresh(), source=lambda: current["lookup"]) as data:
        assert next_batch(data).sid_version == "v1"
        current["lookup"] = lookup("v2")
        deadline = time.monotonic() + 5
        while next_batch(data).sid_version != "v2":
            assert time.monotonic() < deadline, "version switch never seen"


def test_a_failing_lookup_refresh_keeps_the_last_lookup(vocab, tmp_path):
    filled_archive(tmp_path / "archive", 20)
    calls = {"n": 0}

    def source():
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("database is locked")
        return lookup()

    with make_data(vocab, tmp_path, FakeFresh(), source=source) as data:
        for _ in range(3):
            assert next_batch(data).sid_version == "v1"


def test_a_failing_lookup_at_start_fails_the_constructor(vocab, tmp_path):
    def source():
        raise FileNotFoundError("no index")

    with pytest.raises(FileNotFoundError):
        make_data(vocab, tmp_path, FakeFresh(), source=source)


def test_an_input_thread_error_reaches_next_batch(vocab, tmp_path):
    fresh = FakeFresh()
    fresh.fail_with = RuntimeError("broker exploded")
    data = make_data(vocab, tmp_path, fresh)
    try:
        with pytest.raises(RuntimeError, match="broker exploded"):
            data.next_batch(5.0)
        with pytest.raises(RuntimeError, match="broker exploded"):
            data.next_batch(0.1)  # and stays failed
    finally:
        data.close()
    assert fresh.closed


def test_next_batch_after_close_is_an_error(vocab, tmp_path):
    data = make_data(vocab, tmp_path, FakeFresh())
    data.close()
    data.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        data.next_batch(0.1)


def test_mixed_batch_rows():
    mb = MixedBatch(None, DataPosition(), (), 3, 2, 0, 0, "v1", None)  # type: ignore[arg-type]
    assert mb.n_rows == 5
    assert dataclasses.replace(mb, wait_s=1.5).wait_s == 1.5


def test_index_lookup_source_follows_the_active_version(tmp_path):
    from tokenizer.index import SidIndex
    from trainer.data import index_lookup_source

    with pytest.raises(FileNotFoundError):
        index_lookup_source(tmp_path / "missing.sqlite")()
    index = SidIndex(tmp_path / "sids.sqlite")
    source = index_lookup_source(tmp_path / "sids.sqlite")
    assert source().version == ""  # no version at all: nothing known
    index.record("a", "v1", (1, 2, 0), BASE_TS)
    assert source().version == "a"  # the only version, before any switch
    index.record("b", "v1", (3, 1, 0), BASE_TS)
    assert source().version == ""  # two versions, none switched active: nothing known
    index.switch("a")
    assert source() == lookup_of("a", {"v1": (1, 2, 0)})
    index.record("a", "v2", (0, 0, 0), BASE_TS)  # assigned since: seen on the next read
    assert source().sids == {"v1": (1, 2, 0), "v2": (0, 0, 0)}
    index.switch("b")
    assert source().version == "b"
    index.close()


def lookup_of(version, sids):
    from trainer.prompt import SidLookup

    return SidLookup(version, sids)


def test_features_the_vocab_cannot_bucket_make_a_record_malformed_not_archived(vocab, tmp_path):
    bad = dataclasses.replace(
        example(1), history=(schema.HistoryItem("v1", 0.5, 30.0, hours_since=-3.0),)
    )
    fresh = FakeFresh(partitions=1)
    fresh.add_examples([example(0), bad, example(2)])
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        mb = next_batch(data)
        assert mb.fresh_event_ids == ("e0", "e2") and mb.n_malformed == 1
        assert [r.event_id for r in mb.fresh_records] == ["e0", "e2"]
        assert mb.position.fresh_offsets == {0: 3}
        assert data.stats.malformed == {"bad_features": 1}


def test_trained_fresh_records_become_history_after_a_flush(vocab, tmp_path):
    fresh = FakeFresh(partitions=2)
    examples = [example(i) for i in range(6)]
    fresh.add_examples(examples)
    archive = HistoryArchive(tmp_path / "archive")
    with make_data(vocab, tmp_path, fresh, cfg(fresh_fraction=1.0)) as data:
        archive.append(next_batch(data).fresh_records)
    archive.flush(1)
    reader = HistoryReader(tmp_path / "archive", seed=3)
    drawn = {reader.sample(i) for i in range(200)}
    assert drawn == set(examples)
