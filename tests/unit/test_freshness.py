"""Histogram quantiles as Prometheus computes them (monitoring/freshness.py)."""

from __future__ import annotations

import math

import pytest

from monitoring.freshness import histogram_quantile


def test_quantile_interpolates_within_its_bucket():
    # 10 observations <= 1 s, 10 more in (1, 5]: the median is the top of the first bucket,
    # the 75th percentile half-way through the second
    buckets = [(1.0, 10), (5.0, 20), (math.inf, 20)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.0)
    assert histogram_quantile(0.75, buckets) == pytest.approx(3.0)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.5)


def test_quantile_in_the_inf_bucket_is_the_last_finite_bound_and_empty_is_none():
    assert histogram_quantile(0.99, [(1.0, 1), (2.0, 1), (math.inf, 10)]) == 2.0
    assert histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.5, [(1.0, 1)])
