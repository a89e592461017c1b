"""A single-node Apache Kafka broker in KRaft mode, run from the jars `make setup` resolved.

`LocalBroker(config).up()` formats storage once (`kafka.tools.StorageTool format
--standalone`), starts `kafka.Kafka server.properties` as a child process in its own
session, and waits until the broker answers a metadata request. Its pid, logs and data
live under `config.state_dir`. Every failure is a `BrokerError` with the reason and the
tail of the broker log: a busy port, a stale pid file, a JVM that exits, a broker that
does not answer within `startup_timeout_s`. Nothing here ever waits without a deadline.

Settings are those right for one node: replication factor 1 and min ISR 1 for the
internal offsets/transaction topics (or exactly-once producers and Flink's transactional
sinks hang waiting for replicas that do not exist), and a transaction timeout ceiling of
one hour (Flink's Kafka sink asks for up to that by default).
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from plum.config import DEFAULT_KAFKA_HOST, DEFAULT_KAFKA_PORT, load_section, state_dir
from plum.jvm import java_binary, kafka_classpath

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The local broker could not be started, stopped or reached."""


@dataclass(frozen=True)
class KafkaConfig:
    host: str = DEFAULT_KAFKA_HOST
    port: int = DEFAULT_KAFKA_PORT
    controller_port: int = 9093
    heap_mb: int = 512
    startup_timeout_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    state_dir: Path | None = None  # None: $PLUM_STATE_DIR/kafka
    default_partitions: int = 1
    internal_topic_partitions: int = 4  # offsets + transaction state; 50 is wasteful on one node

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir else state_dir() / "kafka"


def load_kafka_config(path: Path | str | None = None, **overrides) -> KafkaConfig:
    return load_section(KafkaConfig, path, "kafka", **overrides)


@dataclass(frozen=True)
class Quorum:
    """The KRaft controller quorum of a multi-node cluster: every node's (id, controller
    port), and the replication its internal topics use."""

    voters: tuple[tuple[int, int], ...]  # (node id, controller port)
    replication_factor: int = 3
    min_insync_replicas: int = 2

    def voters_property(self, host: str) -> str:
        return ",".join(f"{node}@{host}:{port}" for node, port in self.voters)


def server_properties(
    config: KafkaConfig, data_dir: Path, node_id: int = 1, quorum: Quorum | None = None
) -> str:
    """server.properties of one combined broker+controller node: alone (`quorum` None:
    replication 1) or node `node_id` of a static `quorum` (replication factor and min ISR
    of the quorum for the internal topics and as the topics' defaults)."""
    h, p, c = config.host, config.port, config.controller_port
    n = config.internal_topic_partitions
    rf, isr = (1, 1) if quorum is None else (quorum.replication_factor, quorum.min_insync_replicas)
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
        "advertised.listeners": f"PLAINTEXT://{h}:{p}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(config.default_partitions),
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": str(n),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(isr),
        "transaction.state.log.num.partitions": str(n),
        "transaction.max.timeout.ms": str(60 * 60 * 1000),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(isr),
        "group.initial.rebalance.delay.ms": "0",
        # The compacted SID topic must really compact in a test's lifetime.
        "log.cleaner.backoff.ms": "1000",
    }
    if quorum is None:
        lines["controller.quorum.bootstrap.servers"] = f"{h}:{c}"
    else:
        lines["controller.quorum.voters"] = quorum.voters_property(h)
        lines["default.replication.factor"] = str(rf)
        lines["min.insync.replicas"] = str(isr)
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def log4j2_properties(log_file: Path) -> str:
    return (
        "status = warn\n"
        "appender.file.type = RollingFile\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        f"appender.file.filePattern = {log_file}.%i\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "appender.file.policies.type = Policies\n"
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy\n"
        "appender.file.policies.size.size = 50MB\n"
        "appender.file.strategy.type = DefaultRolloverStrategy\n"
        "appender.file.strategy.max = 3\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        "logger.request.name = kafka.request.logger\n"
        "logger.request.level = WARN\n"
    )


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64 that does not start with '-'
    (the storage tool's argument parser would read such an id as an option; Kafka's own
    Uuid.randomUuid() redraws those for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalBroker:
    """One KRaft broker+controller process whose state lives in one directory: alone, or
    node `node_id` of a `quorum` whose nodes share `cluster_id` (see KafkaCluster)."""

    def __init__(
        self,
        config: KafkaConfig,
        node_id: int = 1,
        quorum: Quorum | None = None,
        cluster_id: str | None = None,
    ):
        self.config = config
        self.node_id = node_id
        self.quorum = quorum
        self.cluster_id = cluster_id
        self.root = config.resolved_state_dir()
        self.data_dir = self.root / "data"
        self.logs_dir = self.root / "logs"
        self.properties_path = self.root / "server.properties"
        self.log4j_path = self.root / "log4j2.properties"
        self.pid_path = self.root / "broker.pid"
        self.log_file = self.logs_dir / "server.log"
        self.stdout_file = self.logs_dir / "stdout.log"
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    # ------------------------------------------------------------------ lifecycle

    def up(self) -> None:
        """Start the broker (idempotent if ours is already running and answering)."""
        pid = self._read_pid()
        if self.is_running():
            if self._answers(timeout_s=5.0):
                log.info("broker already running (pid %d) at %s", pid, self.bootstrap)
                return
            raise BrokerError(
                f"broker pid {pid} is alive but {self.bootstrap} does not answer; "
                f"`plum kafka down` and retry. Log tail:\n{self.log_tail()}"
            )
        self.start()
        self._wait_until_answering()

    def start(self) -> None:
        """Format storage if new and start the process, without waiting for an answer (a
        cluster node answers only once a quorum of controllers runs, so KafkaCluster
        starts every node first). Refuses busy ports; removes a stale pid file."""
        pid = self._read_pid()
        if pid is not None and not self.is_running():
            log.warning(
                "removing stale pid file %s (pid %d is not a running broker)", self.pid_path, pid
            )
            self.pid_path.unlink(missing_ok=True)
        for port in (self.config.port, self.config.controller_port):
            if port_in_use(self.config.host, port):
                raise BrokerError(
                    f"port {self.config.host}:{port} is in use by another process; stop it or "
                    f"choose other ports (PLUM_KAFKA__PORT / PLUM_KAFKA__CONTROLLER_PORT)"
                )
        self._prepare()
        self._start_process()

    def is_running(self) -> bool:
        """Our pid file names a live Kafka process."""
        pid = self._read_pid()
        return pid is not None and _pid_alive(pid) and "kafka.Kafka" in _pid_cmdline(pid)

    def kill(self) -> None:
        """SIGKILL the process (a crash, for fault tests); the pid file stays, stale."""
        pid = self._read_pid()
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            self._reap(wait=True)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(
            server_properties(self.config, self.data_dir, self.node_id, self.quorum)
        )
        self.log4j_path.write_text(log4j2_properties(self.log_file))
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def down(self) -> bool:
        """Stop the broker; True if one was running. Escalates to SIGKILL after the timeout."""
        pid = self._read_pid()
        if pid is None or not _pid_alive(pid):
            self.pid_path.unlink(missing_ok=True)
            return False
        log.info("stopping broker pid %d", pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.2)
        if _pid_alive(pid):
            log.warning(
                "broker pid %d did not stop in %.0f s; killing", pid, self.config.shutdown_timeout_s
            )
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._reap(wait=True)
        self.pid_path.unlink(missing_ok=True)
        return True

    def status(self) -> dict:
        pid = self._read_pid()
        alive = pid is not None and _pid_alive(pid)
        return {
            "bootstrap": self.bootstrap,
            "pid": pid,
            "running": alive,
            "answering": alive and self._answers(timeout_s=3.0),
            "state_dir": str(self.root),
            "log": str(self.log_file),
        }

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.stdout_file, self.log_file):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out) or "(no broker log yet)"

    # ------------------------------------------------------------------ internals

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            java_binary(),
            f"-Xmx{self.config.heap_mb}m",
            f"-Xms{min(self.config.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            kafka_classpath(),
            main,
            *args,
        ]

    def _format_storage(self) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        # alone: this node is the whole quorum; in a cluster the voters are in the file
        standalone = ("--standalone",) if self.quorum is None else ()
        cmd = self._java_cmd(
            "kafka.tools.StorageTool",
            "format",
            *standalone,
            "-t",
            cluster_id,
            "-c",
            str(self.properties_path),
        )
        log.info("formatting KRaft storage in %s (cluster %s)", self.data_dir, cluster_id)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError("formatting Kafka storage took over 120 s") from exc
        if done.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
            )

    def _start_process(self) -> None:
        cmd = self._java_cmd("kafka.Kafka", str(self.properties_path))
        with open(self.stdout_file, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
        self.pid_path.write_text(str(self._proc.pid))
        log.info(
            "started broker pid %d at %s (logs %s)", self._proc.pid, self.bootstrap, self.logs_dir
        )

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                self.pid_path.unlink(missing_ok=True)
                raise BrokerError(
                    f"broker exited with code {self._proc.returncode} during start-up. "
                    f"Log tail:\n{self.log_tail()}"
                )
            if self._answers(timeout_s=2.0):
                log.info("broker answers at %s", self.bootstrap)
                return
            time.sleep(0.25)
        self.down()
        raise BrokerError(
            f"broker did not answer at {self.bootstrap} within {self.config.startup_timeout_s:.0f} s; "
            f"stopped it. Log tail:\n{self.log_tail()}"
        )

    def _answers(self, timeout_s: float) -> bool:
        """True when the broker serves metadata (a TCP connect alone is not enough)."""
        return bool(self.cluster_brokers(timeout_s))

    def cluster_brokers(self, timeout_s: float) -> list[dict]:
        """The brokers this node reports in DescribeCluster (fenced ones included, each
        with `broker_id` and `is_fenced`); empty when it does not answer."""
        try:
            with socket.create_connection((self.config.host, self.config.port), timeout=timeout_s):
                pass
        except OSError:
            return []
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=int(timeout_s * 1000),
                client_id="plum-broker-probe",
            )
        except (KafkaError, OSError, ValueError):
            return []
        try:
            return list(admin.describe_cluster().get("brokers") or [])
        except (KafkaError, OSError, ValueError):
            return []
        finally:
            admin.close()

    @property
    def exit_code(self) -> int | None:
        """The exit code of the process this object started, None while it runs (or when
        it started none)."""
        return None if self._proc is None else self._proc.poll()

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _reap(self, wait: bool = False) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5 if wait else 0.01)
            except subprocess.TimeoutExpired:
                pass
