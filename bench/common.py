"""Shared by every benchmark: describe the machine, write bench/results/NAME.json, read a
bench's config section with its `--set` overrides."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from plum.config import REPO_ROOT, ConfigError, load_section

T = TypeVar("T")

RESULTS_DIR = REPO_ROOT / "bench" / "results"


@contextmanager
def bench_broker(bootstrap: str | None = None, heap_mb: int = 1024) -> Iterator[str]:
    """Yield `bootstrap` if given, else start a private broker on free ports (its state in
    a temporary directory) and stop it afterwards; nothing else on the machine is touched."""
    if bootstrap is not None:
        yield bootstrap
        return
    from plum.ports import free_ports
    from streams.kafka.broker import KafkaConfig, LocalBroker

    port, controller_port = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="plum-bench-kafka-") as tmp:
        broker = LocalBroker(
            KafkaConfig(
                port=port, controller_port=controller_port, state_dir=Path(tmp), heap_mb=heap_mb
            )
        )
        try:  # a stop while it starts (SIGTERM: plum.cli) still stops what was started
            broker.up()
            yield broker.bootstrap
        finally:
            broker.down()


def write_sid_index(path: Path, version: str, sids: Mapping[str, Sequence[int]]) -> Path:
    """A SID index at `path` holding `sids` (video id -> SID) as `version`, switched
    active: what a trainer reads when a bench hands it SIDs made in advance."""
    from tokenizer.index import SidIndex

    index = SidIndex(path)
    try:
        with index.transaction():
            for video, sid in sids.items():
                index.record(version, video, tuple(sid), 0)
        index.switch(version)
    finally:
        index.close()
    return path


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the bar: results carry the machine)."""
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": mem_gb,
        "accelerator": _accelerator(),
        "python": platform.python_version(),
        "java": _java_version(),
        "platform": platform.platform(),
        # Other jobs on the machine change every number; this says how busy it was.
        "load_average_1m_at_write": round(os.getloadavg()[0], 2),
    }


def _accelerator() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().replace("\n", ", ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "none"


def _java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
        return out.stderr.splitlines()[0] if out.stderr else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def write_result(
    name: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    ratio: dict[str, Any] | None = None,
    notes: str = "",
    out_dir: Path | None = None,
) -> Path:
    """Write `{name, machine, config, metrics, baseline, ratio}` to bench/results/NAME.json."""
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    doc = {
        "name": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": config,
        "metrics": metrics,
        "baseline": baseline or {},
        "ratio": ratio or {},
    }
    if notes:
        doc["notes"] = notes
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def setting(text: str) -> tuple[str, Any]:
    """A `--set FIELD=VALUE` flag: VALUE in TOML syntax (a bare word is read as a string)."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected FIELD=VALUE")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def bench_config(
    parser: argparse.ArgumentParser,
    cls: type[T],
    section: str,
    path: Path | str | None,
    overrides: dict[str, Any],
) -> T:
    """A bench's config section with the CLI's overrides; an unknown field or a bad value
    ends the command through `parser.error` naming the known fields or the problem."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        parser.error(f"--set: unknown fields {unknown}; known: {sorted(known)}")
    try:
        return load_section(cls, path, section, **overrides)
    except ConfigError as err:
        parser.error(str(err))
