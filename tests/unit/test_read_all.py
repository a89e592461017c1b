"""`read_all` returns every partition as of the end offsets it saw at the start, even when
a poll hands back records written after that (a fake consumer stands in for the broker)."""

from __future__ import annotations

from dataclasses import dataclass

from kafka import TopicPartition

from streams.kafka import clients

TOPIC = "t"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int


class LiveTopicConsumer:
    """Partition 0 has 2 records at the start and 2 more arrive while partition 1's 3 are
    read; the first poll already returns all 4 of partition 0."""

    def __init__(self, **_config):
        self._polls = [
            {P0: [Record(0, o) for o in range(4)]},
            {P1: [Record(1, o) for o in range(3)]},
        ]
        self._position = {P0: 0, P1: 0}

    def partitions_for_topic(self, topic):
        return {0, 1}

    def assign(self, tps):
        pass

    def seek_to_beginning(self, *tps):
        pass

    def end_offsets(self, tps):
        return {P0: 2, P1: 3}

    def position(self, tp):
        return self._position[tp]

    def poll(self, timeout_ms):
        batch = self._polls.pop(0) if self._polls else {}
        for tp, records in batch.items():
            self._position[tp] = records[-1].offset + 1
        return batch

    def close(self):
        pass


def test_records_written_after_the_start_are_left_out(monkeypatch):
    monkeypatch.setattr(clients, "KafkaConsumer", LiveTopicConsumer)
    got = clients.read_all("unused:9092", TOPIC)
    assert sorted((r.partition, r.offset) for r in got) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
