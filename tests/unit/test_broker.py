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


def test_cluster_nodes_step_their_ports_and_keep_their_own_state(tmp_path):
    import pytest

    from streams.kafka.broker import KafkaConfig
    from streams.kafka.cluster import node_configs, replication_for

    nodes = node_configs(KafkaConfig(port=9092, controller_port=9093, state_dir=tmp_path), 3)
    assert [(n.port, n.controller_port) for n in nodes] == [
        (9092, 9093),
        (9094, 9095),
        (9096, 9097),
    ]
    assert [n.state_dir for n in nodes] == [tmp_path / f"node-{i}" for i in (1, 2, 3)]
    assert replication_for(3) == (3, 2) and replication_for(5) == (3, 2)
    assert replication_for(2) == (2, 1)
    with pytest.raises(ValueError, match="overlap"):
        node_configs(KafkaConfig(port=9092, controller_port=9094, state_dir=tmp_path), 3)
    with pytest.raises(ValueError, match="at least 2"):
        node_configs(KafkaConfig(state_dir=tmp_path), 1)


def test_a_cluster_node_names_the_quorum_and_replicates_three_ways(tmp_path):
    from streams.kafka.broker import KafkaConfig, Quorum, server_properties

    quorum = Quorum(((1, 9093), (2, 9095), (3, 9097)), replication_factor=3, min_insync_replicas=2)
    props = dict(
        line.split("=", 1)
        for line in server_properties(
            KafkaConfig(port=9094, controller_port=9095), tmp_path, 2, quorum
        ).splitlines()
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    assert "controller.quorum.bootstrap.servers" not in props
    for key in ("offsets.topic.replication.factor", "default.replication.factor"):
        assert props[key] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    alone = dict(
        line.split("=", 1) for line in server_properties(KafkaConfig(), tmp_path).splitlines()
    )
    assert alone["offsets.topic.replication.factor"] == "1" and "min.insync.replicas" not in alone
