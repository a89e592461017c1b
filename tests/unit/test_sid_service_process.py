"""SidService.process on records in hand (no Kafka): what a batch publishes."""

from __future__ import annotations

import json

import numpy as np

from plum.batch_cycle import Record
from streams.contracts import schema
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig

DIMS = (("text", 3), ("visual", 2))


class FixedEncoder:
    """Codes from the first two embedding values: enough to give distinct SIDs."""

    sid_version = "unit-v1"
    modalities = DIMS

    def encode(self, item_embeddings):
        text = np.asarray(item_embeddings["text"])  # [items, 3]
        return (np.abs(text[:, :2]) * 10).astype(np.int64) % 8  # [items, 2]


def upload(video_id: str, x: float) -> bytes:
    return json.dumps(
        {
            "video_id": video_id,
            "ts": 1_700_000_000_000,
            "title": f"video {video_id}",
            "duration_s": 60.0,
            "embeddings": {"text": [x, x + 0.1, 0.0], "visual": [0.5, 0.5]},
        }
    ).encode()


def record(offset: int, value: bytes | None) -> Record:
    return Record("plum.uploads.v1", 0, offset, value, 1_700_000_000_000, b"k")


def test_an_upload_with_no_value_is_dead_lettered_and_the_batch_goes_on(tmp_path):
    # A tombstone (a record with no value) used to raise TypeError out of process(),
    # taking the service down; it is now not_json, like the Flink job reads it.
    index = SidIndex(tmp_path / "sids.sqlite")
    service = SidService(SidServiceConfig(), FixedEncoder(), index)
    try:
        batch = [record(0, upload("a", 0.1)), record(1, None), record(2, upload("b", 0.3))]
        processed = service.process(batch)
        processed.on_committed()
        by_topic: dict[str, list[bytes]] = {}
        for topic, _, value in processed.outputs:
            by_topic.setdefault(topic, []).append(value)
        letters = [schema.decode_dead_letter(v) for v in by_topic["plum.deadletter.v1"]]
        assert [(d.offset, d.reason, d.raw) for d in letters] == [(1, schema.NOT_JSON, b"")]
        sids = [schema.decode_sid_assignment(v) for v in by_topic["plum.sid-assignments.v1"]]
        assert sorted(a.video_id for a in sids) == ["a", "b"]
        assert service.totals.dead_letters == {schema.NOT_JSON: 1}
        assert index.size("unit-v1") == 2
    finally:
        index.close()
