"""Times on the command line: epoch milliseconds, ISO-8601, or `now`."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, an ISO-8601 time (naive times are UTC), or `now`.

    Raises argparse.ArgumentTypeError (usable as an argparse `type=`) naming the text."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text.lower() == "now":
        return int(time.time() * 1000)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not epoch ms, ISO-8601 or 'now': {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def format_time_ms(ms: int) -> str:
    """`2023-11-14T22:13:20Z` (ISO-8601, UTC, to the second; milliseconds when not 0)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")
