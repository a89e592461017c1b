"""Freshness arithmetic shared by benchmarks and dashboards: quantiles of the latency
histograms the components export (upload -> servable, event -> model)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a Prometheus histogram given as cumulative (upper bound, count)
    buckets, interpolated linearly within the bucket that holds it, exactly as
    Prometheus' `histogram_quantile` does: a quantile in the +Inf bucket is the last
    finite bound; an empty histogram has none (None)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q} must be in [0, 1]")
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            frac = 0.0 if width == 0 else (rank - lower_count) / width
            return lower_bound + (bound - lower_bound) * frac
        lower_bound, lower_count = bound, count
    return None
