"""Every Kafka topic of ARCHITECTURE.md: name, partitions, retention, compaction.

`TopicSpec.configs()` gives the broker-side topic configs; `plum kafka topics` creates
them all (see `streams.kafka.admin.ensure_topics`). A `prefix` lets tests create a
private copy of the whole set (`test123.plum.watches.v1`) on a shared broker.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 60 * 60 * 1000

WATCHES = "plum.watches.v1"
UPLOADS = "plum.uploads.v1"
SID_ASSIGNMENTS = "plum.sid-assignments.v1"
COOCCURRENCE = "plum.cooccurrence.v1"
SFT_EXAMPLES = "plum.sft-examples.v1"
DEADLETTER = "plum.deadletter.v1"
WATCHES_REPLAY = "plum.watches.replay.v1"
UPLOADS_REPLAY = "plum.uploads.replay.v1"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int  # -1: keep forever
    compacted: bool = False
    key: str = ""  # what the record key is, for documentation and producers
    max_message_bytes: int = 1024 * 1024

    def configs(self) -> dict[str, str]:
        cfg = {
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
            # Compact soon after a segment rolls so the "latest SID per video" view stays
            # small; a tombstone is kept a day so slow readers still see deletes.
            cfg["min.cleanable.dirty.ratio"] = "0.1"
            cfg["segment.ms"] = str(60 * 60 * 1000)
            cfg["delete.retention.ms"] = str(DAY_MS)
        else:
            cfg["cleanup.policy"] = "delete"
        return cfg

    def with_prefix(self, prefix: str) -> TopicSpec:
        return TopicSpec(
            name=f"{prefix}{self.name}",
            partitions=self.partitions,
            retention_ms=self.retention_ms,
            compacted=self.compacted,
            key=self.key,
            max_message_bytes=self.max_message_bytes,
        )


ALL_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(WATCHES, partitions=4, retention_ms=7 * DAY_MS, key="user_id"),
    TopicSpec(UPLOADS, partitions=2, retention_ms=30 * DAY_MS, key="video_id"),
    TopicSpec(SID_ASSIGNMENTS, partitions=2, retention_ms=-1, compacted=True, key="video_id"),
    TopicSpec(COOCCURRENCE, partitions=2, retention_ms=7 * DAY_MS, key="a|b"),
    TopicSpec(SFT_EXAMPLES, partitions=4, retention_ms=7 * DAY_MS, key="user_id"),
    # A dead letter holds its rejected record base64-encoded (4/3 of a record up to 1 MiB).
    TopicSpec(
        DEADLETTER,
        partitions=1,
        retention_ms=30 * DAY_MS,
        key="",
        max_message_bytes=2 * 1024 * 1024,
    ),
    # Replay topics keep everything: a backfill may reach back arbitrarily far.
    TopicSpec(WATCHES_REPLAY, partitions=4, retention_ms=-1, key="user_id"),
    TopicSpec(UPLOADS_REPLAY, partitions=2, retention_ms=-1, key="video_id"),
)

BY_NAME = {t.name: t for t in ALL_TOPICS}

# The source topics a backfill can replay, and the replay topic each is copied into.
REPLAY_OF = {WATCHES: WATCHES_REPLAY, UPLOADS: UPLOADS_REPLAY}


def replay_topic(source: str) -> str:
    """The replay topic of `source` (an unprefixed name); ValueError when it has none."""
    try:
        return REPLAY_OF[source]
    except KeyError:
        raise ValueError(
            f"{source!r} has no replay topic; replay topics exist for {sorted(REPLAY_OF)}"
        ) from None


def spec(name: str) -> TopicSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {sorted(BY_NAME)}") from None


def topic_set(prefix: str = "") -> tuple[TopicSpec, ...]:
    return tuple(t.with_prefix(prefix) for t in ALL_TOPICS) if prefix else ALL_TOPICS


@dataclass(frozen=True)
class TopicNames:
    """The concrete topic names a component uses (prefixed in tests)."""

    watches: str = WATCHES
    uploads: str = UPLOADS
    sid_assignments: str = SID_ASSIGNMENTS
    cooccurrence: str = COOCCURRENCE
    sft_examples: str = SFT_EXAMPLES
    deadletter: str = DEADLETTER
    watches_replay: str = WATCHES_REPLAY
    uploads_replay: str = UPLOADS_REPLAY

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        base = cls()
        return cls(**{k: f"{prefix}{v}" for k, v in base.__dict__.items()})
