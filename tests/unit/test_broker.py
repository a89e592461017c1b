"""Broker helpers that need no broker."""

from __future__ import annotations

import base64

from streams.kafka.broker import new_cluster_id


def test_cluster_ids_never_start_with_a_dash_and_are_uuids():
    # 1 in 64 random URL-safe base64 UUIDs starts with '-', which the storage tool's
    # argument parser reads as an option; 3,000 draws would hit one almost surely.
    ids = [new_cluster_id() for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
