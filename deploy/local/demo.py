"""`plum up` (also `plum demo`, what `make demo` runs): the embedded single-machine
stack on simulated traffic, or on MovieLens-100k (`--data movielens`), supervised, with
one live status view.

Brings up the local KRaft broker and creates every topic, then runs each component as a
supervised child process (deploy/local/supervisor.py) in dependency order, each started
once what it needs is ready — an HTTP check on its /metrics or /healthz, a log line, or
a Kafka condition — never after a fixed sleep:

  prometheus -> dashboard; kafka_exporter; serving -> publisher, probe;
  tokenizer (trained on the simulated catalogue when STATE/demo/tokenizer has none)
    -> sid_service -> simulator (real time: event time = wall time), flink;
  sid_service + flink + Kafka holding cpt_min_sids SIDs and cpt_min_examples SFT
    examples -> cpt (when STATE/trainer/cpt has no checkpoint) -> trainer.

Each child logs to state/demo/logs/NAME.log. A crashed child restarts after a doubling
backoff; past the restart cap it is marked failed and the rest keeps running. The
terminal shows a live table (deploy/local/status.py): each component's state and
restarts, events/s, examples/s, training step and loss, served version, upload ->
servable p95, consumer lag and dead letters by reason, read from the stack's Prometheus,
and the dashboard and serving URLs; without a terminal a status line is logged instead.

`--data movielens` (or `[demo].data`) drives the same stack from the real data set
through the replay topics instead of the simulator: the data set is fetched into
`[demo].movielens_dir` when missing, imported once into the replay topics (`plum data
import movielens`; skipped when they already hold it), the tokenizer trains on its films
(titles, genres, years, co-occurrence), and the `replay` child (`plum replay play`) plays
the replay topics into the live topics at `replay_speed` times event time, at most `rate`
records/s, exactly once (a restarted demo resumes the play). Played records carry the wall
time as their Kafka timestamp, so upload -> servable is measured in real seconds; the
events keep their 1997-98 event times, so the Flink job's sessions and pairs are those of
the data set, and ages measured in event time (event -> model) show the data's age. The
play ending does not stop the stack. A state directory holds one data source: the first
run records it in STATE/demo/data-source and a run on the other is refused.

The run ends at `--duration`, when a bounded simulator finishes, or on Ctrl-C / SIGTERM:
every child gets SIGTERM in reverse start order (so it can checkpoint), then SIGKILL of
its process group after `grace_s`, and the broker is stopped unless `--keep-kafka`.
Nothing is left running; the exit code is 0 unless a child was marked failed or did not
stop cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.local.config_checks import check_stack
from deploy.local.status import Numbers, Snapshot, StatusOutput, query_numbers
from deploy.local.supervisor import (
    Check,
    ChildSpec,
    LogLine,
    RestartPolicy,
    State,
    Supervisor,
    http_ok,
)
from deploy.prometheus.targets import HOST as TARGET_HOST
from deploy.prometheus.targets import stack_targets
from plum.checkpoints import has_checkpoint
from plum.config import REPO_ROOT, load_section, state_dir
from plum.ports import http_url
from plum.runtime import stop_on_signals
from streams.contracts.topics import SFT_EXAMPLES, SID_ASSIGNMENTS, TopicNames, topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.broker import BrokerError, KafkaConfig, LocalBroker, load_kafka_config

log = logging.getLogger(__name__)


COMPONENTS = (
    "prometheus",
    "dashboard",
    "kafka_exporter",
    "simulator",
    "replay",
    "flink",
    "sid_service",
    "trainer",
    "serving",
    "publisher",
    "probe",
)
# Started before the tokenizer is trained, so the dashboard is up from the first minute.
MONITORING = ("prometheus", "dashboard", "kafka_exporter")
# What `plum flink run` logs once its live job is submitted and running: its readiness.
FLINK_READY = LogLine(" started (live")
DATA_SOURCES = ("simulator", "movielens")
REPLAY_PLAY_ID = "plum-demo-replay"  # the demo's play: a restarted demo resumes it
# Under --data movielens the traffic source is the replay player in the simulator's place.
TRAFFIC = {"simulator": "simulator", "movielens": "replay"}


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
    # The trainer joins once Kafka holds enough to learn from: CPT (skipped when
    # STATE/trainer/cpt holds a checkpoint) starts when the SID topic holds this many
    # assignments and the Flink job has written this many SFT examples, then continuous
    # SFT on the Flink job's examples.
    cpt_min_sids: int = 200
    cpt_min_examples: int = 0
    cpt_steps: int = 12
    trainer_metrics_port: int = 9104
    tokenizer_items: int = 3000
    grace_s: float = 20.0
    simulator_metrics_port: int = 9101
    exporter_metrics_port: int = 9102  # `plum kafka exporter`: consumer lag per group
    exporter_interval_s: float = 5.0
    probe_rate: float = 2.0  # retrieval requests per second once serving is ready
    # a crashed child is started again after 1, 2, 4 … max_backoff_s seconds; more than
    # max_restarts restarts within restart_window_s mark it failed (the rest keeps running)
    restart_backoff_s: float = 1.0
    restart_max_backoff_s: float = 30.0
    max_restarts: int = 5
    restart_window_s: float = 300.0
    status_every_s: float = 2.0  # the live view redraws this often
    status_line_every_s: float = 15.0  # without a terminal: one status line this often
    # what drives the stack: "simulator" or "movielens" (the data set through the replay
    # topics, played by the `replay` child in the simulator's place)
    data: str = "simulator"
    movielens_dir: str = "build/data/ml-100k"  # relative to the repository root
    # event time per wall time: 215 days in ~1 h 43 min, ~16 ratings/s on average. At
    # 10,000x (~31 min) the trainer on 2 busy cores trained ~12 examples/s of ~30/s made
    # and fell behind; ~16/s should let it keep up (not measured over a whole play)
    replay_speed: float = 3_000.0
    replay_metrics_port: int = 9105

    def __post_init__(self) -> None:
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data={self.data!r} is not one of {DATA_SOURCES}")
        if self.replay_speed < 0:
            raise ValueError(f"replay_speed={self.replay_speed} must be >= 0")

    @property
    def running(self) -> tuple[str, ...]:
        """`components` with the traffic source of `data` in the simulator's place."""
        other = {v for k, v in TRAFFIC.items() if k != self.data}
        ordered = []
        for c in self.components:
            c = TRAFFIC[self.data] if c in TRAFFIC.values() else c
            if c not in ordered and c not in other:
                ordered.append(c)
        return tuple(ordered)

    def movielens_path(self) -> Path:
        path = Path(self.movielens_dir)
        return path if path.is_absolute() else REPO_ROOT / path


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
    if name == "replay":  # the replay topics into the live topics (--data movielens)
        return plum + [
            "replay",
            "play",
            *common,
            "--id",
            REPLAY_PLAY_ID,
            "--speed",
            str(config.replay_speed),
            "--max-rate",
            str(config.rate),
            "--metrics-port",
            str(config.replay_metrics_port),
        ]
    if name == "tokenizer":  # SID-v2 on the simulated catalogue (write_catalogue) or the films
        data = (
            f"movielens:{config.movielens_path()}"
            if config.data == "movielens"
            else f"simulator:{catalogue_path()}"
        )
        return (
            plum
            + [
                "tokenizer",
                "train",
                "--data",
                data,
                "--out",
                str(tokenizer_dir()),
                "--steps",
                str(config.tokenizer_steps),
            ]
            + (["--config", config_path] if config_path else [])
        )
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


def sample_request(config_path: str | None, data: str = "simulator") -> str:
    """A /v1/retrieve call the user can paste (simulator video ids are v + 7 digits;
    MovieLens films are <id_prefix>-m<item id>: 50 is Star Wars, 181 Return of the Jedi)."""
    from serving.config import load_serving_config

    serving = load_serving_config(config_path)
    if data == "movielens":
        from streams.datasets.movielens import load_movielens_config

        prefix = load_movielens_config(config_path).id_prefix
        first, second = f"{prefix}-m50", f"{prefix}-m181"
    else:
        first, second = "v0000001", "v0000002"
    body = f'{{"history": [{{"video_id": "{first}"}}, {{"video_id": "{second}"}}], "k": 10}}'
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


def tokenizer_dir() -> Path:
    return state_dir() / "demo" / "tokenizer"


def catalogue_path() -> Path:
    return state_dir() / "demo" / "catalogue-uploads.jsonl"


def write_catalogue(config: DemoConfig, config_path: str | None) -> int:
    """The simulated platform's initial uploads (same seed, generated offline) as JSONL:
    what the demo's tokenizer trains on. Returns how many were written."""
    from streams.simulator.config import load_config
    from streams.simulator.stream import generate

    sim = load_config(config_path, seed=config.seed, bad_fraction=0.0, out_of_order_fraction=0.0)
    path = catalogue_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "wb") as fh:
        for record in generate(sim):
            if record.topic.endswith("uploads.v1"):
                fh.write(record.value + b"\n")
                n += 1
                if n >= config.tokenizer_items:
                    break
    return n


class DataSourceError(RuntimeError):
    """The state directory holds a stack driven by another data source."""


def claim_data_source(data: str) -> None:
    """Record `data` as the state directory's data source, or refuse a different one: SIDs,
    checkpoints, topics and the served model of one data set mean nothing for another.
    A state directory from before the marker existed holds a simulator stack."""
    marker = state_dir() / "demo" / "data-source"
    if marker.is_file():
        held = marker.read_text(encoding="utf-8").strip()
    elif has_checkpoint(tokenizer_dir()) or has_checkpoint(cpt_dir()):
        held = "simulator"
    else:
        held = data
    if held != data:
        raise DataSourceError(
            f"{state_dir()} holds a stack driven by {held!r} data ({marker}); `--data {data}`"
            " needs its own: set PLUM_STATE_DIR to another directory, or `make clean-state`"
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(data + "\n", encoding="utf-8")


def import_once(config: DemoConfig, bootstrap: str, config_path: str | None) -> None:
    """MovieLens-100k into the replay topics, unless they already hold exactly it (a
    restarted demo); replay topics holding anything else are refused."""
    from streams.datasets import cli as data_cli
    from streams.datasets import movielens
    from streams.kafka.clients import end_offsets

    directory = config.movielens_path()
    data_cli.fetch_movielens(directory)
    names = TopicNames()
    replay_topics = [names.uploads_replay, names.watches_replay]
    held = sum(end_offsets(bootstrap, replay_topics).values())
    try:
        data = movielens.load(directory)
    except movielens.MovieLensFormatError as exc:
        raise DataSourceError(f"{directory}: {exc}") from None
    expected = len(data.movies) + len(data.ratings)  # an upload per film, a watch per rating
    if held == expected:
        log.info("the replay topics hold MovieLens-100k (%d records): not imported again", held)
        return
    if held:
        raise DataSourceError(
            f"the replay topics {replay_topics} hold {held} records, not the {expected} of"
            f" MovieLens-100k in {directory}: an interrupted import or other data; start from"
            " a fresh state directory (PLUM_STATE_DIR, or `make clean-state`)"
        )
    counts = data_cli.import_movielens(
        directory, bootstrap, names, movielens.load_movielens_config(config_path)
    )
    log.info(
        "imported MovieLens-100k: %d uploads and %d watches in the replay topics (%.1f s)",
        counts.uploads,
        counts.watches,
        counts.seconds,
    )


def kafka_holds(bootstrap: str, minimum: dict[str, int]) -> Check:
    """A start condition: each topic's end offsets add up to at least its minimum (end
    offsets count transaction markers too: close enough for "there is data")."""
    from streams.kafka.clients import end_offsets

    def check() -> bool:
        try:
            ends = end_offsets(bootstrap, minimum)
        except Exception as exc:  # noqa: BLE001 - the broker busy or restarting: not yet
            log.debug("end offsets: %s", exc)
            return False
        held = {t: sum(v for tp, v in ends.items() if tp.topic == t) for t in minimum}
        ok = all(held[t] >= n for t, n in minimum.items())
        if ok:
            log.info("Kafka holds %s: starting CPT", held)
        return ok

    return check


def metrics_url(port: int) -> str | None:
    return f"http://{TARGET_HOST}:{port}/metrics" if port > 0 else None


def stack_specs(
    config: DemoConfig, bootstrap: str, config_path: str | None, env: dict[str, str]
) -> list[ChildSpec]:
    """Every child of the stack with what it needs and how it shows it is ready.

    The tokenizer (trained first when STATE/demo/tokenizer has none) and CPT (when
    STATE/trainer/cpt has none) are one-shot steps; the rest are services."""
    from monitoring.dashboards.config import load_dashboard_config
    from serving.config import load_serving_config

    chosen = set(config.running)
    ports = {t.job: t.port for t in stack_targets(config_path, DemoConfig, env)}
    policy = RestartPolicy(
        config.restart_backoff_s,
        config.restart_max_backoff_s,
        config.max_restarts,
        config.restart_window_s,
    )
    serving_url = load_serving_config(config_path).base_url
    ready: dict[str, Check | LogLine | None] = {
        "prometheus": http_ok(f"{prometheus_url(config_path)}/-/ready"),
        "dashboard": http_ok(f"{_dashboard_url(load_dashboard_config(config_path))}/healthz"),
        "kafka_exporter": _http_or_none(metrics_url(ports.get("kafka", -1))),
        "simulator": _http_or_none(metrics_url(ports.get("simulator", -1))),
        "replay": _http_or_none(metrics_url(ports.get("replay", -1))),
        "flink": FLINK_READY,
        "sid_service": _http_or_none(metrics_url(ports.get("sid_service", -1))),
        "trainer": _http_or_none(metrics_url(ports.get("trainer", -1))),
        "serving": http_ok(f"{serving_url}/healthz"),  # /readyz waits for a model
        "publisher": _http_or_none(metrics_url(ports.get("publisher", -1))),
        "probe": None,
    }
    needs = {
        "dashboard": ("prometheus",),
        # SIDs are assigned from the first upload on, so upload -> servable is honest
        "simulator": ("sid_service",),
        "replay": ("sid_service",),
        "sid_service": ("tokenizer",),
        "cpt": ("sid_service", "flink"),
        "trainer": ("cpt", "sid_service"),
        "publisher": ("serving", "sid_service"),
        "probe": ("serving",),
    }
    names = list(config.running)
    if "sid_service" in chosen and not has_checkpoint(tokenizer_dir()):
        names.insert(0, "tokenizer")
    elif "sid_service" in chosen:
        log.info("using the tokenizer in %s", tokenizer_dir())
    if "trainer" in chosen and not has_checkpoint(cpt_dir()):
        names.insert(names.index("trainer"), "cpt")
    elif "trainer" in chosen:
        log.info("using the CPT checkpoint in %s", cpt_dir())
    specs = []
    for name in names:
        start_when = None
        if name == "cpt":
            start_when = kafka_holds(
                bootstrap,
                {SID_ASSIGNMENTS: config.cpt_min_sids, SFT_EXAMPLES: config.cpt_min_examples},
            )
        simulator_bounded = name == "simulator" and (
            config.seconds or _simulator_events(config_path)
        )
        specs.append(
            ChildSpec(
                name,
                component_command(name, config, bootstrap, config_path),
                needs=tuple(n for n in needs.get(name, ()) if n in names),
                ready=ready.get(name),
                start_when=start_when,
                # the play ends with the data set; the stack keeps running
                oneshot=name in ("tokenizer", "cpt", "replay") or bool(simulator_bounded),
                restart=policy,
            )
        )
    return specs


def _simulator_events(config_path: str | None) -> int:
    """The simulator's configured number of events (0: it runs until stopped)."""
    from streams.simulator.config import load_config

    return load_config(config_path).events


def _http_or_none(url: str | None) -> Check | None:
    return http_ok(url) if url else None


def _dashboard_url(dash) -> str:
    return http_url(dash.host, dash.port)


def up(argv: list[str], prog: str = "plum up") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--config", help="TOML config (default configs/demo.toml)")
    parser.add_argument(
        "--duration",
        "--seconds",
        dest="duration",
        type=float,
        help="stop (cleanly, exit 0) after this many wall-clock seconds",
    )
    parser.add_argument(
        "--keep-kafka", action="store_true", help="leave the broker running at the end"
    )
    parser.add_argument(
        "--data",
        choices=DATA_SOURCES,
        help="what drives the stack (default [demo].data): simulated traffic, or"
        " MovieLens-100k through the replay topics",
    )
    args = parser.parse_args(argv)
    check_stack(args.config, DemoConfig)  # every section and check, before anything starts
    config = load_section(DemoConfig, args.config, "demo")
    if args.data:
        config = dataclasses.replace(config, data=args.data)
    unknown = sorted(set(config.components) - set(COMPONENTS))
    if unknown:
        parser.error(f"[demo].components: unknown {unknown}; known: {list(COMPONENTS)}")
    try:  # before the broker: a refused run starts and stops nothing
        claim_data_source(config.data)
    except DataSourceError as exc:
        log.error("%s", exc)
        return 1
    kafka = load_kafka_config(args.config)
    broker = LocalBroker(kafka)
    with stop_on_signals(threading.Event(), prog) as stop:
        return _supervise(config, args, kafka, broker, stop)


def demo(argv: list[str]) -> int:
    """`plum demo`: the same as `plum up` (its older name)."""
    return up(argv, prog="plum demo")


def _supervise(
    config: DemoConfig,
    args: argparse.Namespace,
    kafka: KafkaConfig,
    broker: LocalBroker,
    stop: threading.Event,
) -> int:
    """Start the stack and watch it until the simulator finishes, `--duration` passes or
    `stop` is set; then stop every child (reverse order) and, unless --keep-kafka, the
    broker. Exit 0 unless a child was marked failed or did not stop cleanly."""
    sup: Supervisor | None = None
    try:
        broker.up()
        created = ensure_topics(kafka.bootstrap, topic_set())
        log.info(
            "kafka up at %s; %d topics created, %d existed",
            kafka.bootstrap,
            len(created),
            len(topic_set()) - len(created),
        )
        # every child reads the same [demo].data as the supervisor (Prometheus' targets)
        env = admin_env(dict(os.environ, PYTHONUNBUFFERED="1", PLUM_DEMO__DATA=config.data))
        log_dir = state_dir() / "demo" / "logs"
        if config.data == "movielens" and "replay" in config.running:
            import_once(config, kafka.bootstrap, args.config)
        elif "sid_service" in config.running and not has_checkpoint(tokenizer_dir()):
            n = write_catalogue(config, args.config)
            log.info("the tokenizer trains on %d simulated uploads first", n)
        sup = Supervisor(stack_specs(config, kafka.bootstrap, args.config, env), log_dir, env)
        urls = [tuple(line.split(maxsplit=1)) for line in monitoring_urls(config, args.config)]
        request = ""
        if "serving" in config.components:
            from serving.config import load_serving_config

            urls.append(("serving", load_serving_config(args.config).base_url))
            request = sample_request(args.config, config.data)
        if urls:
            log.info("watch the stack:\n  %s", "\n  ".join(monitoring_urls(config, args.config)))
        if request:
            log.info(
                "serving answers once the publisher has pushed a model (GET /readyz); try:\n  %s",
                request,
            )
        log.info("logs of every component in %s", log_dir)
        prometheus = prometheus_url(args.config) if "prometheus" in config.components else ""
        started = time.monotonic()
        next_view = 0.0
        numbers = Numbers()
        played = False
        with StatusOutput(sys.stdout.isatty(), config.status_line_every_s, log) as view:
            while not stop.wait(0.25):
                sup.tick()
                elapsed = time.monotonic() - started
                if args.duration and elapsed > args.duration:
                    log.info("ran %.0f s: stopping", args.duration)
                    break
                if "simulator" in sup.children and sup.state("simulator") is State.DONE:
                    log.info("simulator finished: stopping")
                    break
                if "replay" in sup.children and sup.state("replay") is State.DONE and not played:
                    played = True
                    log.info("the replay topics are played to their end; the stack keeps running")
                if time.monotonic() >= next_view:
                    next_view = time.monotonic() + config.status_every_s
                    if prometheus:
                        numbers = query_numbers(prometheus)
                    view.show(Snapshot(elapsed, tuple(sup.status()), numbers, tuple(urls), request))
    except (BrokerError, RuntimeError) as exc:  # DataSourceError, DataImportError too
        log.error("%s", exc)
        return 1
    finally:
        codes = sup.shutdown(config.grace_s) if sup is not None else {}
        if codes:
            log.info("components stopped: %s", codes)
        if not args.keep_kafka:
            broker.down()
    failed = [s.name for s in sup.status() if s.state is State.FAILED]
    unclean = [n for n, c in codes.items() if c not in (0, None, -signal.SIGTERM)]
    if failed:
        log.error("failed (restart cap reached): %s", failed)
    if unclean:
        log.error("did not stop cleanly: %s", {n: codes[n] for n in unclean})
    return 1 if failed or unclean else 0
