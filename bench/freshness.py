"""`plum bench freshness`: how fresh is what serving answers, in the embedded stack.

Runs the whole embedded stack exactly as `make demo` does (`plum demo`: broker, simulator,
Flink job, SID service, CPT then the continuous trainer, publisher, serving) for
`--duration` seconds, in a private state directory on free ports, and measures what the
serving process itself records:

1. upload -> servable: from an upload's Kafka timestamp (when it entered Kafka) to its
   SID applied in serving's index (`plum_serving_upload_to_servable_seconds`, observed by
   serving for every applied assignment). p50/p95 are interpolated within the
   histogram's buckets, as Prometheus' histogram_quantile does. Target: p95 <= 30 s.
2. event -> in the served model: now minus the newest event time the served model
   trained on (`plum_serving_model_event_lag_seconds`), sampled every `--poll` seconds
   once a model is served; the value right after each model swap is the event ->
   servable latency of that model. Target: <= 5 min at demo scale.

For (2) event time must be wall-clock time, so the simulator runs in real time here:
its clock starts now and `--rate` is about what it simulates per second (the demo's
default runs the simulated clock ~25x faster than the wall clock, which makes event time
meaningless against `now`). Uploads are made more frequent (`--uploads-per-minute`) so
the upload -> servable histogram has enough samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import write_result
from monitoring.freshness import histogram_quantile
from plum.config import REPO_ROOT
from plum.ports import free_ports
from plum.runtime import Progress

log = logging.getLogger(__name__)
UPLOAD_HIST = "plum_serving_upload_to_servable_seconds"
EVENT_LAG = "plum_serving_model_event_lag_seconds"


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] of every sample on http://127.0.0.1:PORT/metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _value(samples: dict, name: str) -> float | None:
    """The first sample of `name`; None when absent or NaN (a gauge of nothing served)."""
    got = next(iter(samples.get(name, [])), (None, None))[1]
    return None if got is None or math.isnan(got) else got


def upload_buckets(samples: dict) -> list[tuple[float, float]]:
    return [
        (float(labels["le"]), value) for labels, value in samples.get(f"{UPLOAD_HIST}_bucket", [])
    ]


def _status(row: dict[str, Any]) -> str:
    """The progress line's detail: what the stack serves at the newest sample."""
    return f"model {row['model_version']}, {row['uploads_servable']:.0f} uploads servable"


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum bench freshness", description=__doc__)
    parser.add_argument("--duration", type=float, default=900.0, help="seconds the stack runs")
    parser.add_argument("--rate", type=float, default=22.0, help="simulated events per second")
    parser.add_argument("--uploads-per-minute", type=float, default=60.0)
    parser.add_argument("--cpt-steps", type=int, default=20)
    parser.add_argument("--tokenizer-steps", type=int, default=300)
    parser.add_argument("--checkpoint-every-s", type=float, default=30.0)
    parser.add_argument("--publish-every-s", type=float, default=30.0)
    parser.add_argument(
        "--cpt-min-examples", type=int, default=50, help="SFT examples in Kafka before CPT"
    )
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args(argv)
    names = (
        "kafka",
        "controller",
        "serving",
        "metrics",
        "simulator",
        "trainer",
        "flink",
        "flink_job",
        "sid_service",
        "publisher",
    )
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    settings = {
        "PLUM_KAFKA__PORT": ports["kafka"],
        "PLUM_KAFKA__CONTROLLER_PORT": ports["controller"],
        "PLUM_SERVING__PORT": ports["serving"],
        "PLUM_SERVING__METRICS_PORT": ports["metrics"],
        "PLUM_SIMULATOR__START_EPOCH_MS": int(time.time() * 1000),
        "PLUM_SIMULATOR__NEW_UPLOADS_PER_SIM_MINUTE": args.uploads_per_minute,
        "PLUM_SIMULATOR__EVENTS": 0,
        "PLUM_DEMO__RATE": args.rate,
        # the stack whose freshness is measured, as the earlier results ran it: no
        # Prometheus, dashboard, exporter or probe (fixed demo ports, and load of their own)
        "PLUM_DEMO__COMPONENTS": "simulator,flink,sid_service,trainer,serving,publisher",
        "PLUM_DEMO__CPT_STEPS": args.cpt_steps,
        "PLUM_DEMO__TOKENIZER_STEPS": args.tokenizer_steps,
        "PLUM_DEMO__CPT_MIN_EXAMPLES": args.cpt_min_examples,
        "PLUM_DEMO__SIMULATOR_METRICS_PORT": ports["simulator"],
        "PLUM_DEMO__TRAINER_METRICS_PORT": ports["trainer"],
        "PLUM_FLINK__METRICS_PORT": ports["flink"],
        "PLUM_FLINK__JOB_METRICS_PORT": ports["flink_job"],
        "PLUM_FLINK__REST_PORT": 0,  # a free one, picked by `plum flink run`
        "PLUM_SID_SERVICE__METRICS_PORT": ports["sid_service"],
        "PLUM_PUBLISHER__METRICS_PORT": ports["publisher"],
        "PLUM_TRAINER__CHECKPOINT_EVERY_S": args.checkpoint_every_s,
        "PLUM_PUBLISHER__PUBLISH_EVERY_S": args.publish_every_s,
    }
    samples: list[dict[str, Any]] = []
    swaps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="plum-bench-freshness-") as state:
        env = dict(os.environ, PLUM_STATE_DIR=state, **{k: str(v) for k, v in settings.items()})
        log_path = Path(state) / "demo.log"
        cmd = [sys.executable, "-m", "plum.cli", "demo", "--seconds", str(args.duration)]
        with open(log_path, "wb") as out:
            demo = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
            )
            started = time.monotonic()
            last_version = None
            progress = Progress(
                "bench freshness",
                "samples",
                every_s=60.0,
                fraction=lambda: (time.monotonic() - started) / args.duration,
                detail=lambda: _status(samples[-1]) if samples else "stack starting",
                logger=log,
            )
            try:
                while demo.poll() is None:
                    time.sleep(args.poll)
                    try:
                        metrics = scrape(ports["metrics"])
                    except httpx.HTTPError:
                        continue
                    version = _value(metrics, "plum_serving_model_version") or 0
                    lag = _value(metrics, EVENT_LAG)
                    row = {
                        "t_s": round(time.monotonic() - started, 1),
                        "model_version": int(version or 0),
                        "event_lag_s": lag,
                        "uploads_servable": next(
                            iter(metrics.get(f"{UPLOAD_HIST}_count", [])), (None, 0)
                        )[1],
                        "buckets": upload_buckets(metrics),
                    }
                    samples.append(row)
                    progress.add()
                    if version and version != last_version:
                        swaps.append({k: row[k] for k in ("t_s", "model_version", "event_lag_s")})
                        log.info("model version %d served; event lag %.0f s", version, lag or -1)
                        last_version = version
                    progress.maybe_report()
                progress.report(final=True)
            finally:
                if demo.poll() is None:
                    demo.send_signal(signal.SIGTERM)
                code = demo.wait(timeout=300)
        tail = log_path.read_text(errors="replace")[-4000:]
    if code != 0 or not swaps:
        print(
            f"plum bench freshness: the stack failed (demo exit {code}, {len(swaps)} models "
            f"served); nothing written. Its log ends:\n{tail}"
        )
        return 1
    last = samples[-1] if samples else {"buckets": [], "uploads_servable": 0}
    p50 = histogram_quantile(0.5, last["buckets"])
    p95 = histogram_quantile(0.95, last["buckets"])
    lags = [
        s["event_lag_s"] for s in samples if s["model_version"] and s["event_lag_s"] is not None
    ]
    swap_lags = [s["event_lag_s"] for s in swaps if s["event_lag_s"] is not None]
    metrics_out = {
        "upload_to_servable_p50_s": p50,
        "upload_to_servable_p95_s": p95,
        "uploads_servable": last["uploads_servable"],
        "event_to_served_model_at_swap_s": swap_lags,
        "event_to_served_model_max_s": max(lags) if lags else None,
        "event_to_served_model_median_s": sorted(lags)[len(lags) // 2] if lags else None,
        "models_served": [s["model_version"] for s in swaps],
        "first_model_after_s": swaps[0]["t_s"] if swaps else None,
        "demo_exit_code": code,
        "targets": {
            "upload_to_servable_p95_s": {"target": 30.0, "measured": p95},
            "event_to_served_model_s": {
                "target": 300.0,
                "measured": max(swap_lags) if swap_lags else None,
            },
        },
    }
    path = write_result(
        "freshness",
        {
            "duration_s": args.duration,
            **{k.lower(): v for k, v in settings.items() if "PORT" not in k},
        },
        metrics_out,
        notes=(
            "upload->servable percentiles are interpolated within the serving histogram's "
            "buckets (as Prometheus' histogram_quantile); event lag sampled every "
            f"{args.poll} s from serving's gauge; simulator in real time (event time ~ wall)."
        ),
    )
    print(json.dumps({"results": str(path), **metrics_out}, indent=1, default=str))
    return 0
