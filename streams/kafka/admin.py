"""Topic administration: create every topic of `streams.contracts.topics` with its configs, and read
back what the broker really has (so tests can check compaction is really set)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.contracts.topics import TopicSpec

log = logging.getLogger(__name__)


def admin_client(bootstrap: str, timeout_ms: int = 30_000) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, client_id="plum-admin"
    )


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An existing topic keeps its partitions (Kafka cannot shrink them) but gets its
    configs re-applied, so changing retention in `streams.contracts.topics` takes effect.
    """
    specs = list(specs)
    admin = admin_client(bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        if missing:
            # replication -1: the broker's default.replication.factor (1 alone, 3 in a
            # 3-node cluster), so the topic set is the same on either
            new = [NewTopic(s.name, s.partitions, -1, topic_configs=s.configs()) for s in missing]
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # another process created one between list and create
            created = [s.name for s in missing]
        for s in specs:
            if s.name in existing:
                admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, s.name, configs=s.configs())]
                )
        _wait_for_leaders(admin, [s.name for s in specs], timeout_s)
        for name in created:
            log.info("created topic %s", name)
        return created
    finally:
        admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        described = admin.describe_topics(pending)
        ready = {
            t["name"]
            for t in described
            if not t.get("error_code")
            and t["partitions"]
            and all(p["leader_id"] >= 0 for p in t["partitions"])
        }
        pending = [n for n in pending if n not in ready]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without partition leaders after {timeout_s} s: {pending}")
        time.sleep(0.1)


def topic_configs(bootstrap: str, name: str) -> dict[str, str]:
    """The broker's effective configs of one topic (defaults included)."""
    admin = admin_client(bootstrap)
    try:
        result = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all"
        )
    finally:
        admin.close()
    # {resource type: {resource name: {config name: {"value": ..., ...}}}}
    entries = result["topic"][name]
    return {key: entry.get("value") for key, entry in entries.items()}


def existing_topics(bootstrap: str) -> set[str]:
    """Names of the topics the broker has."""
    admin = admin_client(bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def committed_offsets(
    bootstrap: str, timeout_ms: int = 10_000
) -> dict[str, dict[TopicPartition, int]]:
    """{group: {partition: committed offset}} for every consumer group that committed one."""
    admin = admin_client(bootstrap, timeout_ms=timeout_ms)
    try:
        groups = [g["group_id"] for g in admin.list_groups()]
        committed = admin.list_group_offsets({g: None for g in groups}) if groups else {}
    finally:
        admin.close()
    return {
        group: {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        for group, offsets in committed.items()
    }


def partition_counts(bootstrap: str, names: Iterable[str]) -> dict[str, int]:
    admin = admin_client(bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(names))}
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    names = list(names)
    if not names:
        return
    admin = admin_client(bootstrap)
    try:
        admin.delete_topics(names)
    finally:
        admin.close()
