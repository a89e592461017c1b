"""Scraping a real /metrics endpoint in integration tests."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import CATALOGUE

# What plum.runtime logs once a component's /metrics is up.
METRICS_LINE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def catalogue_names(component: str) -> set[str]:
    return {m.name for m in CATALOGUE if m.component == component}


def logged_metrics_port(log_path: Path, timeout_s: float = 120.0) -> int:
    """The /metrics port a component logged (poll its log until the line appears)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = METRICS_LINE.search(log_path.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if time.monotonic() > deadline:
            raise AssertionError(f"no 'metrics on' line in {log_path} after {timeout_s} s")
        time.sleep(0.2)


def scrape_until_complete(port: int, names: set[str], timeout_s: float = 60) -> list:
    """(name, value) samples of http://127.0.0.1:port/metrics once every name has a sample
    (a metric only declared, `# HELP` without a sample, does not count)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        families = [fam for fam in text_string_to_metric_families(text) if fam.samples]
        present = {fam.name for fam in families}  # a counter's family name has no _total
        missing = {n for n in names if n not in present and n.removesuffix("_total") not in present}
        if not missing:
            return [(s.name, s.value) for fam in families for s in fam.samples]
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics lacks {sorted(missing)} after {timeout_s} s")
        time.sleep(0.2)


def scrape(port: int) -> dict[str, float]:
    """Prometheus text exposition -> {sample with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def dead_letters_by_reason(samples: dict[str, float]) -> Counter:
    """plum_deadletter_total of a `scrape`, summed by its reason label."""
    out: Counter = Counter()
    for k, v in samples.items():
        if k.startswith("plum_deadletter_total{"):
            out[re.search(r'reason="([^"]+)"', k).group(1)] += int(v)
    return +out
