"""`plum demo`: the embedded single-machine stack on simulated traffic.

Brings up the local KRaft broker, creates every topic, then runs each built component
as a child process (its output in state/demo/logs/NAME.log) and reports progress until
the simulator finishes or Ctrl-C. On Ctrl-C / SIGTERM every child gets SIGTERM (so it
can flush or checkpoint), then SIGKILL after a grace period, and the broker is stopped
unless `--keep-kafka` is given. Nothing is left running.

Components join the demo as they are built: the `[demo]` config lists which to start.
Monitoring comes first (Prometheus scraping every component's /metrics, the dashboard
page, the Kafka exporter), so the dashboard shows the stack from its first minute; their
URLs are printed. The simulator runs in real time (event time = wall time) and `plum
probe` asks serving for recommendations, so the freshness and serving panels read real
seconds and real requests. Before the SID service starts, a SID-v2 tokenizer is trained on the simulated platform's
initial catalogue (the same seed, generated offline) unless `state/demo/tokenizer` holds
one already.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.local.config_checks import check_stack
from plum.checkpoints import has_checkpoint
from plum.config import load_section, state_dir
from plum.ports import http_url
from plum.runtime import stop_on_signals
from streams.contracts.topics import topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.broker import BrokerError, KafkaConfig, LocalBroker, load_kafka_config

log = logging.getLogger(__name__)


COMPONENTS = (
    "prometheus",
    "dashboard",
    "kafka_exporter",
    "simulator",
    "flink",
    "sid_service",
    "trainer",
    "serving",
    "publisher",
    "probe",
)
# Started before the tokenizer is trained, so the dashboard is up from the first minute.
MONITORING = ("prometheus", "dashboard", "kafka_exporter")


@dataclass(frozen=True)
class DemoConfig:
    seconds: float = 0.0  # 0: run the simulator's configured duration
    rate: float = 500.0  # simulated events per wall-clock second
    bad_fraction: float = 0.01
    seed: int = 7
    components: tuple[str, ...] = COMPONENTS  # in start order
    # Event time = wall time (the simulator's real-time mode), so the freshness panels
    # read in real seconds; `rate` then only caps the pace.
    real_time: bool = True
    tokenizer_steps: int = 800
    # The trainer joins once Kafka holds uploads with SIDs and watches: CPT on what is
    # there after this many seconds (skipped when STATE/trainer/cpt holds a checkpoint),
    # then continuous SFT on the Flink job's examples.
    trainer_after_s: float = 60.0
    cpt_steps: int = 60
    trainer_metrics_port: int = 9104
    tokenizer_items: int = 3000
    grace_s: float = 20.0
    simulator_metrics_port: int = 9101
    exporter_metrics_port: int = 9102  # `plum kafka exporter`: consumer lag per group
    exporter_interval_s: float = 5.0
    probe_rate: float = 2.0  # retrieval requests per second once serving is ready


class Child:
    """One component process with its log file."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str]):
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.info("started %s (pid %d), log %s", name, self.proc.pid, self.log_path)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float) -> int:
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing", self.name, grace_s)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def last_line(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, fh.seek(0, 2) - 4096))
                lines = fh.read().decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else ""
        except OSError:
            return ""


def component_command(
    name: str, config: DemoConfig, bootstrap: str, config_path: str | None
) -> list[str]:
    plum = [sys.executable, "-m", "plum.cli"]
    common = ["--bootstrap", bootstrap] + (["--config", config_path] if config_path else [])
    if name == "simulator":
        cmd = plum + [
            "simulate",
            *common,
            "--seed",
            str(config.seed),
            "--rate",
            str(config.rate),
            "--bad-fraction",
            str(config.bad_fraction),
            "--metrics-port",
            str(config.simulator_metrics_port),
            "--truth",
            str(state_dir() / "demo" / "simulator-truth.json"),
        ]
        if config.seconds:
            cmd += ["--seconds", str(config.seconds)]
        if config.real_time:
            cmd += ["--real-time"]
        return cmd
    if name == "kafka_exporter":
        return plum + [
            "kafka",
            "exporter",
            *common,
            "--metrics-port",
            str(config.exporter_metrics_port),
            "--interval",
            str(config.exporter_interval_s),
        ]
    if name == "prometheus":  # scrapes every component's port (deploy/prometheus/targets.py)
        return plum + ["prometheus", "up"] + (["--config", config_path] if config_path else [])
    if name == "dashboard":
        return (
            plum
            + ["dashboard", "up", "--prometheus", prometheus_url(config_path)]
            + (["--config", config_path] if config_path else [])
        )
    if name == "flink":
        return plum + [
            "flink",
            "run",
            *common,
            "--checkpoint-dir",
            str(state_dir() / "flink" / "checkpoints"),
        ]
    if name == "sid_service":
        return plum + [
            "tokenizer",
            "serve",
            *common,
            "--checkpoint",
            str(tokenizer_dir()),
            "--index",
            str(state_dir() / "demo" / "sid-index.sqlite"),
        ]
    if name == "cpt":
        return plum + [
            "trainer",
            "cpt",
            *common,
            "--tokenizer",
            str(tokenizer_dir()),
            "--index",
            str(demo_index()),
            "--out",
            str(cpt_dir()),
            "--steps",
            str(config.cpt_steps),
        ]
    if name == "trainer":
        return plum + [
            "trainer",
            "run",
            *common,
            "--index",
            str(demo_index()),
            "--cpt",
            str(cpt_dir()),
            "--run-dir",
            str(state_dir() / "trainer" / "run"),
            "--metrics-port",
            str(config.trainer_metrics_port),
        ]
    if name == "serving":  # host, port, model repository and token from [serving] / env
        return plum + ["serve"] + (["--config", config_path] if config_path else [])
    if name == "probe":  # users asking for recommendations: traffic for the serving panels
        return plum + ["probe", *common, "--rate", str(config.probe_rate)]
    if name == "publisher":
        return plum + [
            "publish",
            "run",
            *common,
            "--run-dir",
            str(state_dir() / "trainer" / "run"),
        ]
    raise ValueError(f"unknown demo component {name!r}")


def admin_env(env: dict[str, str]) -> dict[str, str]:
    """The children's environment with serving's admin token: the operator's
    PLUM_SERVING__ADMIN_TOKEN if set, else a fresh random one for this run (serving and
    the publisher read it from [serving].admin_token; it is never written to a file)."""
    if env.get("PLUM_SERVING__ADMIN_TOKEN"):
        return env
    return dict(env, PLUM_SERVING__ADMIN_TOKEN=secrets.token_urlsafe(24))


def sample_request(config_path: str | None) -> str:
    """A /v1/retrieve call the user can paste (simulator video ids are v + 7 digits)."""
    from serving.config import load_serving_config

    serving = load_serving_config(config_path)
    body = '{"history": [{"video_id": "v0000001"}, {"video_id": "v0000002"}], "k": 10}'
    return (
        f"curl -s -X POST {serving.base_url}/v1/retrieve "
        f"-H 'content-type: application/json' -d '{body}'"
    )


def prometheus_url(config_path: str | None) -> str:
    """The demo's Prometheus, which the dashboard reads: [prometheus] host and port."""
    from monitoring.prometheus.config import load_prometheus_config

    cfg = load_prometheus_config(config_path)
    return http_url(cfg.host, cfg.port)


def monitoring_urls(config: DemoConfig, config_path: str | None) -> list[str]:
    """The lines that tell a person where to look."""
    from monitoring.dashboards.config import load_dashboard_config

    lines = []
    if "dashboard" in config.components:
        dash = load_dashboard_config(config_path)
        lines.append(f"dashboard   {http_url(dash.host, dash.port)}/")
    if "prometheus" in config.components:
        lines.append(f"prometheus  {prometheus_url(config_path)}/alerts")
    return lines


def demo_index() -> Path:
    return state_dir() / "demo" / "sid-index.sqlite"


def cpt_dir() -> Path:
    return state_dir() / "trainer" / "cpt"


class TrainerLauncher:
    """Starts CPT once enough data is in Kafka, then the continuous trainer after it."""

    def __init__(self, config: DemoConfig, bootstrap: str, config_path, log_dir, env) -> None:
        self.config, self.bootstrap, self.config_path = config, bootstrap, config_path
        self.log_dir, self.env = log_dir, env
        self.phase = "waiting"
        self.cpt: Child | None = None

    def _child(self, name: str) -> Child:
        cmd = component_command(name, self.config, self.bootstrap, self.config_path)
        return Child(name, cmd, self.log_dir, self.env)

    def poll(self, elapsed_s: float, children: list[Child]) -> None:
        """Advance: waiting -> cpt -> running. Raises RuntimeError when CPT fails."""
        if self.phase == "waiting" and elapsed_s >= self.config.trainer_after_s:
            if has_checkpoint(cpt_dir()):
                log.info("using the CPT checkpoint in %s", cpt_dir())
                self.phase = "start"
            else:
                log.info("CPT on what Kafka holds now (%d steps)", self.config.cpt_steps)
                self.cpt = self._child("cpt")
                children.append(self.cpt)
                self.phase = "cpt"
        if self.phase == "cpt" and self.cpt is not None and not self.cpt.running():
            if self.cpt.proc.returncode != 0:
                raise RuntimeError(
                    f"CPT failed (exit {self.cpt.proc.returncode}); see {self.cpt.log_path}"
                )
            self.phase = "start"
        if self.phase == "start":
            children.append(self._child("trainer"))
            self.phase = "running"


def tokenizer_dir() -> Path:
    return state_dir() / "demo" / "tokenizer"


def train_demo_tokenizer(
    config: DemoConfig, config_path: str | None, log_dir: Path, env: dict[str, str]
) -> None:
    """Write the simulated catalogue's uploads to JSONL and train a tokenizer on them."""
    if has_checkpoint(tokenizer_dir()):
        log.info("using the tokenizer in %s", tokenizer_dir())
        return
    from streams.simulator.config import load_config
    from streams.simulator.stream import generate

    sim = load_config(config_path, seed=config.seed, bad_fraction=0.0, out_of_order_fraction=0.0)
    uploads = tokenizer_dir().parent / "catalogue-uploads.jsonl"
    uploads.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(uploads, "wb") as fh:
        for record in generate(sim):
            if record.topic.endswith("uploads.v1"):
                fh.write(record.value + b"\n")
                n += 1
                if n >= config.tokenizer_items:
                    break
    log.info(
        "training the demo tokenizer on %d simulated uploads (%d steps); log %s",
        n,
        config.tokenizer_steps,
        log_dir / "tokenizer-train.log",
    )
    cmd = [
        sys.executable,
        "-m",
        "plum.cli",
        "tokenizer",
        "train",
        "--data",
        f"simulator:{uploads}",
        "--out",
        str(tokenizer_dir()),
        "--steps",
        str(config.tokenizer_steps),
    ]
    cmd += ["--config", config_path] if config_path else []
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "tokenizer-train.log", "ab") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"tokenizer training failed; see {log_dir / 'tokenizer-train.log'}")


def demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum demo", description=__doc__)
    parser.add_argument("--config", help="TOML config (default configs/demo.toml)")
    parser.add_argument("--seconds", type=float, help="stop after this many wall-clock seconds")
    parser.add_argument(
        "--keep-kafka", action="store_true", help="leave the broker running at the end"
    )
    args = parser.parse_args(argv)
    check_stack(args.config, DemoConfig)  # every section and check, before anything starts
    config = load_section(DemoConfig, args.config, "demo")
    unknown = sorted(set(config.components) - set(COMPONENTS))
    if unknown:
        parser.error(f"[demo].components: unknown {unknown}; known: {list(COMPONENTS)}")
    kafka = load_kafka_config(args.config)
    broker = LocalBroker(kafka)
    with stop_on_signals(threading.Event(), "demo") as stop:
        return _supervise(config, args, kafka, broker, stop)


def _supervise(
    config: DemoConfig,
    args: argparse.Namespace,
    kafka: KafkaConfig,
    broker: LocalBroker,
    stop: threading.Event,
) -> int:
    """Start the stack and watch it until the simulator ends, a child dies, `--seconds`
    pass or `stop` is set; then stop every child and (unless --keep-kafka) the broker."""
    children: list[Child] = []
    try:
        broker.up()
        created = ensure_topics(kafka.bootstrap, topic_set())
        log.info(
            "kafka up at %s; %d topics created, %d existed",
            kafka.bootstrap,
            len(created),
            len(topic_set()) - len(created),
        )
        env = admin_env(dict(os.environ, PYTHONUNBUFFERED="1"))
        log_dir = state_dir() / "demo" / "logs"

        def start(name: str) -> None:
            cmd = component_command(name, config, kafka.bootstrap, args.config)
            children.append(Child(name, cmd, log_dir, env))

        for name in (c for c in config.components if c in MONITORING):
            start(name)
        urls = monitoring_urls(config, args.config)
        if urls:
            log.info("watch the stack:\n  %s", "\n  ".join(urls))
        if "sid_service" in config.components:
            train_demo_tokenizer(config, args.config, log_dir, env)
        launcher = (
            TrainerLauncher(config, kafka.bootstrap, args.config, log_dir, env)
            if "trainer" in config.components
            else None
        )
        for name in (c for c in config.components if c != "trainer" and c not in MONITORING):
            start(name)
        if "serving" in config.components:
            log.info(
                "serving answers once the publisher has pushed a model (GET /readyz); try:\n  %s",
                sample_request(args.config),
            )
        started = time.monotonic()
        last_report = 0.0
        while not stop.wait(0.5):
            if args.seconds and time.monotonic() - started > args.seconds:
                log.info("demo ran %.0f s: stopping", args.seconds)
                break
            if launcher is not None:
                launcher.poll(time.monotonic() - started, children)
            simulator = next((c for c in children if c.name == "simulator"), None)
            if simulator is not None and not simulator.running():
                log.info("simulator finished (exit %s)", simulator.proc.returncode)
                break
            dead = [c for c in children if not c.running() and c.name not in ("simulator", "cpt")]
            if dead:
                log.error(
                    "%s exited with %s; see %s",
                    dead[0].name,
                    dead[0].proc.returncode,
                    dead[0].log_path,
                )
                break
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                for c in children:
                    if c.running():  # a finished step (CPT) has nothing new to say
                        log.info("[%s] %s", c.name, c.last_line()[-200:])
    except (BrokerError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        codes = {c.name: c.stop(config.grace_s) for c in reversed(children)}
        if codes:
            log.info("components stopped: %s", codes)
        if not args.keep_kafka:
            broker.down()
    failed = {
        n: c for n, c in ((c.name, c.proc.returncode) for c in children) if c not in (0, None, -15)
    }
    return 1 if failed else 0
