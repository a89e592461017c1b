"""A standalone Flink session cluster on one machine: a JobManager and N TaskManagers, run
with the scripts the apache-flink wheel ships (`bin/jobmanager.sh`, `bin/taskmanager.sh`,
in the foreground, as our child processes).

This is the scale-out shape of the Flink job proven on one machine: `plum flink run` with
`[flink] cluster_rest = "HOST:PORT"` submits the same job (pure SQL + the Java operators
of build/jvm/plum-flink.jar, shipped with the job as user jars) to the cluster's REST
endpoint instead of running a local MiniCluster, at the parallelism it asks for across
the TaskManagers; checkpoints go to a directory every process sees (object storage at
scale, a local directory here).

Each cluster has its own configuration directory (config.yaml + the console log4j
config), logs and pid file under its state directory, ports given or free ones.

    cluster = SessionCluster(SessionClusterConfig(taskmanagers=2), Path("state/flink/cluster"))
    cluster.up()                 # waits until every TaskManager has registered its slots
    cluster.rest                 # "127.0.0.1:8081"
    cluster.down()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from plum.ports import free_ports

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The session cluster could not be started or reached."""


def flink_home() -> Path:
    """The apache-flink wheel's distribution (bin/, lib/, conf/)."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


@dataclass(frozen=True)
class SessionClusterConfig:
    host: str = "127.0.0.1"
    rest_port: int = 0  # 0: a free port
    rpc_port: int = 0  # the JobManager's RPC; 0: a free port
    taskmanagers: int = 2
    slots_per_taskmanager: int = 1
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "1280m"
    jvm_options: str = "-XX:+UseParallelGC"
    startup_timeout_s: float = 120.0
    shutdown_timeout_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)  # more config.yaml entries

    def __post_init__(self) -> None:
        if self.taskmanagers < 1 or self.slots_per_taskmanager < 1:
            raise ValueError("taskmanagers and slots_per_taskmanager must be >= 1")


def config_yaml(cfg: SessionClusterConfig, rest_port: int, rpc_port: int) -> str:
    """The cluster's config.yaml (flat keys)."""
    entries = {
        "jobmanager.rpc.address": cfg.host,
        "jobmanager.rpc.port": str(rpc_port),
        "jobmanager.bind-host": cfg.host,
        "jobmanager.memory.process.size": cfg.jobmanager_memory,
        "taskmanager.host": cfg.host,
        "taskmanager.bind-host": cfg.host,
        "taskmanager.rpc.port": "0",
        "taskmanager.data.port": "0",
        "taskmanager.numberOfTaskSlots": str(cfg.slots_per_taskmanager),
        "taskmanager.memory.process.size": cfg.taskmanager_memory,
        # the job's state is on the heap (hashmap backend): little managed memory needed
        "taskmanager.memory.managed.fraction": "0.1",
        "parallelism.default": str(cfg.taskmanagers * cfg.slots_per_taskmanager),
        "rest.address": cfg.host,
        "rest.bind-address": cfg.host,
        "rest.port": str(rest_port),
        "blob.server.port": "0",
        "metrics.fetcher.update-interval": "1000",
        "env.java.opts.all": cfg.jvm_options,
        **cfg.extra,
    }
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in entries.items())


class SessionCluster:
    """One JobManager and `taskmanagers` TaskManagers, children of this process."""

    def __init__(self, cfg: SessionClusterConfig, root: Path):
        self.cfg = cfg
        self.root = Path(root)
        self.conf_dir = self.root / "conf"
        self.logs_dir = self.root / "logs"
        picked = free_ports(2)  # distinct, so rest and rpc never collide
        self.rest_port = cfg.rest_port or picked[0]
        self.rpc_port = cfg.rpc_port or picked[1]
        self._procs: list[subprocess.Popen] = []

    @property
    def processes(self) -> tuple[subprocess.Popen, ...]:
        """The JobManager's and TaskManagers' processes started by `up` (empty after down)."""
        return tuple(self._procs)

    @property
    def rest(self) -> str:
        return f"{self.cfg.host}:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.rest}"

    def up(self) -> None:
        """Start the JobManager and the TaskManagers; wait until every TaskManager's slots
        are registered. Stops what it started when that does not happen in time."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "config.yaml").write_text(
            config_yaml(self.cfg, self.rest_port, self.rpc_port)
        )
        shutil.copy(
            flink_home() / "conf" / "log4j-console.properties",
            self.conf_dir / "log4j-console.properties",
        )
        try:
            self._start("jobmanager", "jobmanager.sh")
            for i in range(self.cfg.taskmanagers):
                self._start(f"taskmanager-{i + 1}", "taskmanager.sh")
            self._wait_for_slots()
        except BaseException:
            self.down()
            raise
        (self.root / "cluster.pids").write_text(" ".join(str(p.pid) for p in self._procs))
        log.info(
            "flink session cluster up at %s: %d taskmanagers x %d slots",
            self.rest_url,
            self.cfg.taskmanagers,
            self.cfg.slots_per_taskmanager,
        )

    def overview(self) -> dict:
        with urllib.request.urlopen(f"{self.rest_url}/overview", timeout=3) as resp:
            return json.loads(resp.read())

    def get(self, path: str) -> dict:
        """GET a REST path of the cluster (e.g. /jobs/overview) as JSON."""
        with urllib.request.urlopen(f"{self.rest_url}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def down(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after the timeout."""
        for proc in self._procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            _signal_group(proc, signal.SIGKILL)  # anything the script left in its group
        self._procs.clear()
        (self.root / "cluster.pids").unlink(missing_ok=True)

    def _start(self, name: str, script: str) -> None:
        env = dict(
            os.environ,
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LOG_DIR=str(self.logs_dir),
            FLINK_IDENT_STRING=name,
        )
        out = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        try:
            proc = subprocess.Popen(
                ["bash", str(flink_home() / "bin" / script), "start-foreground"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
        finally:
            out.close()
        self._procs.append(proc)

    def _wait_for_slots(self) -> None:
        want = self.cfg.taskmanagers * self.cfg.slots_per_taskmanager
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        seen: dict = {}
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise ClusterError(
                        f"a cluster process exited with code {proc.returncode} during "
                        f"start-up; logs in {self.logs_dir}:\n{self._log_tails()}"
                    )
            try:
                seen = self.overview()
            except OSError:
                seen = {}
            if (
                seen.get("taskmanagers") == self.cfg.taskmanagers
                and seen.get("slots-total") == want
            ):
                return
            time.sleep(0.5)
        raise ClusterError(
            f"the session cluster at {self.rest_url} did not register {want} slots within "
            f"{self.cfg.startup_timeout_s:.0f} s (last overview {seen}); logs:\n"
            f"{self._log_tails()}"
        )

    def _log_tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.logs_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(out)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def cli(argv: list[str]) -> int:
    """`plum flink cluster`: run a session cluster in the foreground until Ctrl-C/SIGTERM
    (or until one of its processes dies: exit 1), then stop it."""
    import argparse
    import threading

    from plum.config import state_dir
    from plum.runtime import stop_on_signals

    parser = argparse.ArgumentParser(
        prog="plum flink cluster",
        description="a standalone Flink session cluster (foreground); submit with "
        "`plum flink run --cluster HOST:PORT`",
    )
    parser.add_argument("--taskmanagers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1, help="slots per TaskManager")
    parser.add_argument("--rest-port", type=int, default=8081, help="0: a free port")
    parser.add_argument("--state-dir", type=Path, default=None, help="default STATE/flink/cluster")
    args = parser.parse_args(argv)
    try:
        cfg = SessionClusterConfig(
            rest_port=args.rest_port,
            taskmanagers=args.taskmanagers,
            slots_per_taskmanager=args.slots,
        )
    except ValueError as err:
        parser.error(str(err))
    cluster = SessionCluster(cfg, args.state_dir or state_dir() / "flink" / "cluster")
    try:
        cluster.up()
    except ClusterError as err:
        print(f"plum flink cluster: {err}", file=sys.stderr)
        return 1
    print(f"flink session cluster at {cluster.rest_url}: plum flink run --cluster {cluster.rest}")
    died = False
    with stop_on_signals(threading.Event(), "flink cluster") as stop:
        while not stop.wait(1.0):
            if any(p.poll() is not None for p in cluster.processes):
                log.error(
                    "a cluster process died; stopping the cluster (logs %s)", cluster.logs_dir
                )
                died = True
                break
    cluster.down()
    return 1 if died else 0
