"""`plum serve`: the retrieval server as a component of plum.runtime.

    start   the batcher, then uvicorn in a background thread on a socket bound here (so
            port 0 is known at once); once it listens, the port goes to port_file and
            "serving on http://HOST:PORT" to the log; then the newest version of the model
            repository loads in the background (/readyz answers 503 until it is served)
    step    waits log_every_s (or until stopped) and reports the requests answered, for
            the runtime's progress line
    close   stops uvicorn (in-flight requests finish), then the batcher, and joins both

The runtime owns SIGTERM/SIGINT (uvicorn runs outside the main thread and so installs no
handler of its own): a signal ends the step, close() runs, the exit code is 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from monitoring.metrics import Metrics
from plum.config import state_dir
from plum.http_server import ThreadedServer
from plum.runtime import Runtime, RuntimeConfig, Step
from serving.artifact import ModelRepository
from serving.batcher import Batcher
from serving.config import ServingConfig, load_serving_config, model_repo_path
from serving.model_slot import ModelSlot, SearchCache

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0


def _write_port_file(path: Path, port: int) -> None:
    """Atomically (a reader polling for the file never sees it half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


class ServingComponent:
    """The retrieval server's life on the runtime (see the module docstring)."""

    def __init__(
        self,
        cfg: ServingConfig,
        metrics: Metrics | None = None,
        repo: ModelRepository | None = None,
        searches: SearchCache | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics.for_component("serving")
        self.repo = repo or ModelRepository(model_repo_path(cfg))
        self.slot = ModelSlot(
            self.repo, cfg.beam_widths, cfg.batch_sizes, self.metrics, searches=searches
        )
        self.batcher = Batcher(
            lambda: self.slot.served, cfg.batch_sizes, cfg.max_wait_ms, self.metrics
        )
        self.port: int | None = None
        self._http: ThreadedServer | None = None
        self._loader: threading.Thread | None = None
        self._reported = 0

    def start(self) -> None:
        from serving.app import create_app

        self.batcher.start()
        self._http = ThreadedServer(
            create_app(self.slot, self.batcher, self.cfg, self.metrics),
            self.cfg.host,
            self.cfg.port,
            "serving-http",
            shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        )
        self.port = self._http.start()
        if self.cfg.port_file:
            _write_port_file(Path(self.cfg.port_file), self.port)
        log.info(
            "serving on http://%s:%d (models from %s)",
            self.cfg.host,
            self.port,
            self.repo.base_path,
        )
        self._loader = threading.Thread(
            target=self._load_latest, name="serving-start-load", daemon=True
        )
        self._loader.start()

    def _load_latest(self) -> None:
        try:
            self.slot.load_latest()
        except Exception:  # noqa: BLE001 - a replica without a model still answers /healthz
            log.exception("loading the newest model at start failed")

    def step(self, stop: threading.Event) -> Step:
        stop.wait(self.cfg.log_every_s)
        if self._http is not None and not self._http.alive():
            raise RuntimeError("the HTTP server thread exited")
        answered = self.batcher.answered
        done, self._reported = answered - self._reported, answered
        return Step(done=done, active=True)

    def checkpoint(self) -> None:
        """Nothing to make durable: the model repository and the publisher own the state."""

    def close(self) -> None:
        if self._http is not None:
            self._http.stop()
        self.batcher.close()
        if self._loader is not None:
            self._loader.join(SHUTDOWN_TIMEOUT_S)

    def describe(self) -> str:
        served = self.slot.served
        if served is None:
            return "no model yet"
        return (
            f"model v{served.version} (step {served.manifest.step}), "
            f"index {served.index.sid_version}@{served.index.seq} ({served.index.items} items)"
        )


def serving_runtime(component: ServingComponent, stop: threading.Event | None = None) -> Runtime:
    """The server as `plum serve` runs it (tests run it in a thread with their own `stop`)."""
    cfg = component.cfg
    return Runtime(
        component,
        RuntimeConfig(
            name="serving",
            unit="requests",
            metrics_port=cfg.metrics_port,
            progress_every_s=cfg.log_every_s,
        ),
        registry=component.metrics.registry,
        stop=stop,
    )


def use_compilation_cache(directory: Path) -> None:
    """JAX's persistent compilation cache: a restarted (or second) replica loads its beam
    searches compiled instead of compiling them again (minutes on 2 loaded cores)."""
    import jax

    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    log.info("JAX compilation cache: %s", directory)


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum serve",
        description="The retrieval server: /v1/retrieve, hot swap of models, SID deltas.",
    )
    parser.add_argument("--config", help="TOML config (default $PLUM_CONFIG or configs/demo.toml)")
    parser.add_argument("--host", help="listen address ([serving].host)")
    parser.add_argument("--port", type=int, help="listen port; 0 = a free one ([serving].port)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--model-repo", help="model repository (default STATE/serving/models)")
    parser.add_argument("--metrics-port", type=int, help="/metrics port; 0 = a free one, -1 = none")
    args = parser.parse_args(argv)
    cfg = load_serving_config(
        args.config,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        model_repo=args.model_repo,
        metrics_port=args.metrics_port,
    )
    use_compilation_cache(state_dir() / "cache" / "jax")
    component = ServingComponent(cfg)
    result = serving_runtime(component).run()
    log.info("serving stopped (%s) after %d requests", result.reason, component.batcher.answered)
    return 0
