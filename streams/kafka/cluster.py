"""A multi-node KRaft cluster on one machine: `plum kafka up --brokers 3`.

Each node is a `LocalBroker` (a combined broker+controller process) with its own ports
and state directory (STATE/kafka/node-N); the nodes form a static controller quorum and
share one cluster id (kept in STATE/kafka/cluster.json, so a restart reuses the formatted
storage). With 3 nodes every internal topic and, by default, every topic has replication
factor 3 and min ISR 2: one node can die and producers with acks=all, transactions and
consumer groups carry on. This is the scale-out shape of the embedded broker, proven on
one machine; production runs a real cluster (deploy/).

Ports: node i (0-based) listens on `port + 2i` and its controller on
`controller_port + 2i` (9092/9093, 9094/9095, 9096/9097 by default); every port must be
distinct and free.

    cluster = KafkaCluster.from_config(load_kafka_config(), brokers=3)
    cluster.up()          # every node started, then waits until all answer
    cluster.bootstrap     # "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    cluster.down()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streams.kafka.broker import BrokerError, KafkaConfig, LocalBroker, Quorum, new_cluster_id

log = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"
PORT_STRIDE = 2


def node_configs(config: KafkaConfig, brokers: int) -> list[KafkaConfig]:
    """The nodes' configs: ports stepped by PORT_STRIDE, state in ROOT/node-N."""
    if brokers < 2:
        raise ValueError(f"a cluster needs at least 2 brokers, got {brokers}")
    root = config.resolved_state_dir()
    nodes = [
        dataclasses.replace(
            config,
            port=config.port + PORT_STRIDE * i,
            controller_port=config.controller_port + PORT_STRIDE * i,
            state_dir=root / f"node-{i + 1}",
        )
        for i in range(brokers)
    ]
    ports = [p for n in nodes for p in (n.port, n.controller_port)]
    if len(set(ports)) != len(ports):
        raise ValueError(
            f"ports {ports} overlap: with {brokers} brokers the broker port and the "
            f"controller port must differ by an odd number (they step by {PORT_STRIDE})"
        )
    return nodes


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min ISR): 3 and 2 from 3 brokers on, else all and all - 1."""
    rf = min(3, brokers)
    return rf, max(1, rf - 1)


class KafkaCluster:
    """The nodes of one local KRaft cluster, started and stopped together."""

    def __init__(self, nodes: Sequence[KafkaConfig], root: Path):
        if len(nodes) < 2:
            raise ValueError(f"a cluster needs at least 2 nodes, got {len(nodes)}")
        self.root = Path(root)
        self.nodes = list(nodes)
        rf, isr = replication_for(len(nodes))
        self.quorum = Quorum(
            tuple((i + 1, n.controller_port) for i, n in enumerate(nodes)), rf, isr
        )
        self.cluster_id = self._cluster_id()
        self.brokers = [
            LocalBroker(n, i + 1, self.quorum, self.cluster_id) for i, n in enumerate(nodes)
        ]

    @classmethod
    def from_config(cls, config: KafkaConfig, brokers: int) -> KafkaCluster:
        return cls(node_configs(config, brokers), config.resolved_state_dir())

    @staticmethod
    def size_in(root: Path) -> int:
        """Brokers of the cluster whose state is under `root` (0: none was made there)."""
        try:
            return int(json.loads((Path(root) / CLUSTER_FILE).read_text())["brokers"])
        except (FileNotFoundError, KeyError, ValueError):
            return 0

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def startup_timeout_s(self) -> float:
        return max(n.startup_timeout_s for n in self.nodes)

    def up(self) -> None:
        """Start every node that is not running, then wait until every node answers and
        sees all the others (idempotent)."""
        for broker in self.brokers:
            if not broker.is_running():
                broker.start()
        try:
            self.wait_until_formed(self.startup_timeout_s)
        except BrokerError:
            self.down()
            raise

    def wait_until_formed(self, timeout_s: float) -> None:
        """Until each running node answers with every node of the cluster registered."""
        deadline = time.monotonic() + timeout_s
        want = {b.node_id for b in self.brokers}
        while time.monotonic() < deadline:
            for broker in self.brokers:
                if broker.exit_code is not None:
                    raise BrokerError(
                        f"node {broker.node_id} exited with code {broker.exit_code} "
                        f"during start-up. Log tail:\n{broker.log_tail()}"
                    )
            if all(self.registered(b) == want for b in self.brokers):
                log.info("kafka cluster of %d answers at %s", len(want), self.bootstrap)
                return
            time.sleep(0.5)
        tails = "\n".join(b.log_tail(10) for b in self.brokers)
        raise BrokerError(
            f"the {len(want)}-node cluster did not form within {timeout_s:.0f} s. "
            f"Log tails:\n{tails}"
        )

    @staticmethod
    def registered(broker: LocalBroker) -> set[int]:
        """Ids of the unfenced brokers `broker` reports (empty when it does not answer)."""
        return {int(b["broker_id"]) for b in broker.cluster_brokers(2.0) if not b.get("is_fenced")}

    def down(self) -> bool:
        """Stop every node (in parallel: a node waiting on the others' controlled shutdown
        must not hold up theirs); True if any was running."""
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            return any(list(pool.map(LocalBroker.down, self.brokers)))

    def status(self) -> dict:
        nodes = [b.status() for b in self.brokers]
        return {
            "bootstrap": self.bootstrap,
            "brokers": len(self.brokers),
            "replication_factor": self.quorum.replication_factor,
            "min_insync_replicas": self.quorum.min_insync_replicas,
            "answering": all(n["answering"] for n in nodes),
            "nodes": nodes,
        }

    def _cluster_id(self) -> str:
        """The id every node formats with: kept in ROOT/cluster.json with the size."""
        path = self.root / CLUSTER_FILE
        if path.exists():
            saved = json.loads(path.read_text())
            if int(saved["brokers"]) != len(self.nodes):
                raise BrokerError(
                    f"{self.root} holds a {saved['brokers']}-broker cluster, not "
                    f"{len(self.nodes)}; `plum kafka down` and remove it, or use that size"
                )
            return str(saved["cluster_id"])
        self.root.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        path.write_text(json.dumps({"brokers": len(self.nodes), "cluster_id": cluster_id}))
        return cluster_id
