"""Trainer input against the real broker: exactly-once consumption by position, restarts,
read_committed, and fresh/history mixing."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from kafka import TopicPartition

from plum.batch_cycle import Record
from streams.contracts import schema
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.source import TopicEnds, TopicSource
from tests.trainer_data_support import archive_records, example, lookup, tiny_vocab
from trainer.archive import HistoryArchive
from trainer.data import DataConfig, DataPosition, MixedBatch, TrainingData

pytestmark = pytest.mark.integration

N = 203


@pytest.fixture(scope="module")
def vocab():
    return tiny_vocab()


def config(**kw) -> DataConfig:
    base = dict(batch_size=16, seq_len=40, max_prompt_len=32, fresh_fraction=1.0)
    base.update(fresh_wait_ms=300, prefetch_batches=2, sid_refresh_s=1.0, history_refresh_s=0.2)
    base.update(kw)
    return DataConfig(**base)


def produce(bootstrap: str, topic: str, examples, abort=()) -> None:
    """`examples` in one committed transaction, after `abort` in an aborted one."""
    producer = make_producer(bootstrap, transactional_id=f"test-{topic}-{time.monotonic_ns()}")
    producer.init_transactions()
    if abort:
        producer.begin_transaction()
        for ex in abort:
            producer.send(topic, key=ex.user_id.encode(), value=schema.encode(ex))
        producer.flush()
        producer.abort_transaction()
    producer.begin_transaction()
    for ex in examples:
        producer.send(topic, key=ex.user_id.encode(), value=schema.encode(ex))
    producer.commit_transaction()
    producer.close()


def end_offsets(bootstrap: str, topic: str, **kw) -> dict[int, int]:
    """kafka-python's end offsets (read_committed unless `isolation_level` says otherwise)."""
    consumer = make_consumer(bootstrap, **kw)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def settled_end_offsets(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """The read_committed end offsets once every transaction marker is in the log.

    `commit_transaction` returns when the coordinator has logged the commit; it writes the
    markers into the partitions afterwards, and until then a partition's last stable
    offset still stops before the transaction. With no transaction open, the marker is
    in once the read_committed end equals the log end."""
    deadline = time.monotonic() + timeout_s
    while True:
        committed = end_offsets(bootstrap, topic)
        if committed == end_offsets(bootstrap, topic, isolation_level="read_uncommitted"):
            return committed
        if time.monotonic() > deadline:
            pytest.fail(f"transaction markers of {topic} not written in {timeout_s} s")
        time.sleep(0.1)


def open_data(vocab, bootstrap, topic, archive_dir, start=None, **kw) -> TrainingData:
    return TrainingData(config(**kw), vocab, lambda: lookup(), bootstrap, topic, archive_dir, start)


def read_until(data: TrainingData, done, timeout_s: float = 60.0) -> list[MixedBatch]:
    """Batches until done(batches) holds; fails with what was seen after timeout_s."""
    batches: list[MixedBatch] = []
    deadline = time.monotonic() + timeout_s
    while not done(batches):
        if time.monotonic() > deadline:
            seen = sum(len(b.fresh_event_ids) for b in batches)
            last = batches[-1].position if batches else None
            pytest.fail(f"after {timeout_s} s: {len(batches)} batches, {seen} ids, at {last}")
        mb = data.next_batch(0.5)
        if mb is not None:
            batches.append(mb)
    return batches


def at_end(ends):
    return lambda bs: bool(bs) and bs[-1].position.fresh_offsets == ends


def ids_of(batches) -> list[str]:
    return [i for b in batches for i in b.fresh_event_ids]


def test_all_fresh_batches_consume_the_topic_exactly_once_and_resume_exactly(
    vocab, kafka_bootstrap, topics, tmp_path
):
    examples = [example(i) for i in range(N)]
    produce(kafka_bootstrap, topics.sft_examples, examples)
    ends = settled_end_offsets(kafka_bootstrap, topics.sft_examples)
    with open_data(vocab, kafka_bootstrap, topics.sft_examples, tmp_path) as data:
        batches = read_until(data, at_end(ends))
    ids = ids_of(batches)
    assert Counter(ids) == Counter(ex.event_id for ex in examples)  # each exactly once
    assert all(b.batch.inputs.shape == (16, 40) and b.n_history == 0 for b in batches)

    # restart from the position after a batch in the middle: exactly the rest follows
    k = len(batches) // 2
    done_ids = ids_of(batches[: k + 1])
    with open_data(
        vocab, kafka_bootstrap, topics.sft_examples, tmp_path, start=batches[k].position
    ) as data:
        rest = read_until(data, at_end(ends))
        assert data.next_batch(0.5) is None  # nothing after the end
    assert Counter(ids_of(rest)) == Counter(set(ids) - set(done_ids))


def test_records_of_an_aborted_transaction_are_never_read(vocab, kafka_bootstrap, topics, tmp_path):
    committed = [example(i) for i in range(40)]
    aborted = [example(1000 + i) for i in range(25)]
    produce(kafka_bootstrap, topics.sft_examples, committed, abort=aborted)
    ends = settled_end_offsets(kafka_bootstrap, topics.sft_examples)
    with open_data(vocab, kafka_bootstrap, topics.sft_examples, tmp_path) as data:
        batches = read_until(data, at_end(ends))
    # the position passes over the aborted records and the markers, yet none is trained on
    assert sorted(ids_of(batches)) == sorted(ex.event_id for ex in committed)
    assert sum(len(b.fresh_records) for b in batches) == len(committed)


def test_half_fresh_batches_mix_kafka_and_the_archive(vocab, kafka_bootstrap, topics, tmp_path):
    archive = HistoryArchive(tmp_path / "archive")
    archive.append(archive_records([example(5000 + i) for i in range(100)]))
    archive.flush(1)
    produce(kafka_bootstrap, topics.sft_examples, [example(i) for i in range(64)])
    with open_data(
        vocab,
        kafka_bootstrap,
        topics.sft_examples,
        tmp_path / "archive",
        fresh_fraction=0.5,
        fresh_wait_ms=3000,
    ) as data:
        batches = read_until(data, lambda bs: sum(b.n_fresh for b in bs) >= 64)
        after = data.next_batch(5.0)
    assert [(b.n_fresh, b.n_history) for b in batches] == [(8, 8)] * 8
    assert len(set(ids_of(batches))) == 64
    assert after is not None and (after.n_fresh, after.n_history) == (0, 16)  # Kafka quiet
    assert after.position.history_draws == 8 * 8 + 16  # one draw per history row


def test_latest_start_skips_what_was_there_before(vocab, kafka_bootstrap, topics, tmp_path):
    produce(kafka_bootstrap, topics.sft_examples, [example(i) for i in range(10)])
    with open_data(
        vocab, kafka_bootstrap, topics.sft_examples, tmp_path, start_from="latest"
    ) as data:
        produce(kafka_bootstrap, topics.sft_examples, [example(100 + i) for i in range(5)])
        ends = settled_end_offsets(kafka_bootstrap, topics.sft_examples)
        batches = read_until(data, at_end(ends))
    assert sorted(ids_of(batches)) == [f"e{100 + i}" for i in range(5)]


def test_a_saved_position_wins_over_start_from(vocab, kafka_bootstrap, topics, tmp_path):
    produce(kafka_bootstrap, topics.sft_examples, [example(i) for i in range(12)])
    ends = settled_end_offsets(kafka_bootstrap, topics.sft_examples)
    start = DataPosition({p: 0 for p in ends})
    with open_data(
        vocab, kafka_bootstrap, topics.sft_examples, tmp_path, start, start_from="latest"
    ) as data:
        batches = read_until(data, at_end(ends))
    assert len(ids_of(batches)) == 12


# ---------------------------------------------------------------- the Kafka source itself


def open_transaction(bootstrap: str, topic: str, examples):
    """A producer with `examples` sent in a transaction left open (the caller ends it)."""
    producer = make_producer(bootstrap, transactional_id=f"open-{topic}-{time.monotonic_ns()}")
    producer.init_transactions()
    producer.begin_transaction()
    for ex in examples:
        producer.send(topic, key=ex.user_id.encode(), value=schema.encode(ex))
    producer.flush()
    return producer


def read_to(source: TopicSource, ends: dict[int, int], timeout_s: float = 60.0) -> list:
    got = []
    deadline = time.monotonic() + timeout_s
    while source.position() != ends:
        if time.monotonic() > deadline:
            pytest.fail(f"position {source.position()} never reached {ends}; read {len(got)}")
        got.extend(source.take(50, 0.2))
    return got


def test_a_topic_that_ends_in_an_aborted_transaction_is_read_to_its_end(kafka_bootstrap, topics):
    """librdkafka's position steps over the abort marker and the aborted records even when
    no record follows them: the position reaches kafka-python's read_committed end."""
    topic = topics.sft_examples
    produce(kafka_bootstrap, topic, [example(i) for i in range(30)])
    producer = open_transaction(kafka_bootstrap, topic, [example(100 + i) for i in range(20)])
    producer.abort_transaction()
    producer.close()
    ends = settled_end_offsets(kafka_bootstrap, topic)
    source = TopicSource(kafka_bootstrap, topic)
    try:
        records = read_to(source, ends)
        assert source.position() == ends and source.take(10, 0.3) == []
    finally:
        source.close()
    assert sorted(schema.decode_sft_example(r.value).event_id for r in records) == sorted(
        f"e{i}" for i in range(30)
    )
    assert all(isinstance(r, Record) and r.topic == topic for r in records)


def test_positions_are_exact_for_what_was_handed_out(kafka_bootstrap, topics):
    """Records polled but not taken stay in the position: a source opened at another
    source's position continues with exactly the records the first did not hand out."""
    topic = topics.sft_examples
    produce(kafka_bootstrap, topic, [example(i) for i in range(60)], abort=[example(900)])
    ends = settled_end_offsets(kafka_bootstrap, topic)
    first = TopicSource(kafka_bootstrap, topic)
    try:
        taken: list = []
        deadline = time.monotonic() + 15
        while len(taken) < 25:
            assert time.monotonic() < deadline, f"only {len(taken)} records in 15 s"
            taken.extend(first.take(25 - len(taken), 0.2))
        position = first.position()
    finally:
        first.close()
    assert sum(position.values()) < sum(ends.values())
    second = TopicSource(kafka_bootstrap, topic, start=position)
    try:
        rest = read_to(second, ends)
    finally:
        second.close()
    ids = [schema.decode_sft_example(r.value).event_id for r in taken + rest]
    assert Counter(ids) == Counter(f"e{i}" for i in range(60))


def test_topic_ends_are_the_last_stable_offsets(kafka_bootstrap, topics):
    """TopicEnds (librdkafka) agrees with kafka-python's read_committed end offsets, also
    while a transaction is open (its records are not counted as lag yet)."""
    topic = topics.sft_examples
    produce(kafka_bootstrap, topic, [example(i) for i in range(20)])
    settled_end_offsets(kafka_bootstrap, topic)  # the first transaction's markers are in
    producer = open_transaction(kafka_bootstrap, topic, [example(100 + i) for i in range(10)])
    ends = TopicEnds(kafka_bootstrap, topic)
    try:
        open_ends = end_offsets(kafka_bootstrap, topic)
        assert ends(sorted(open_ends)) == open_ends
        log_ends = end_offsets(kafka_bootstrap, topic, isolation_level="read_uncommitted")
        assert sum(log_ends.values()) >= sum(open_ends.values()) + 10  # the open records
        producer.commit_transaction()
        committed = settled_end_offsets(kafka_bootstrap, topic)
        assert ends(sorted(committed)) == committed
        assert sum(committed.values()) > sum(log_ends.values())  # + the commit markers
    finally:
        producer.close()
        ends.close()
