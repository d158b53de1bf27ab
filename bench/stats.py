"""Latency summaries as the results files hold them: percentiles of measured samples, or
of a Prometheus histogram's change over a run. Never NaN: no samples gives
{"count": 0, "reason": ...}."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = (50, 95, 99)
HISTOGRAM_METHOD = "interpolated within the server's /metrics histogram buckets (Prometheus rule)"


def no_samples(reason: str) -> dict[str, Any]:
    return {"count": 0, "reason": reason}


def latency_block(values_ms: Sequence[float], empty_reason: str) -> dict[str, Any]:
    """{"count", "mean_ms", "p50_ms", "p95_ms", "p99_ms"} of the samples (ms)."""
    if not values_ms:
        return no_samples(empty_reason)
    p50, p95, p99 = np.percentile(values_ms, QUANTILES)
    return {
        "count": len(values_ms),
        "mean_ms": round(float(np.mean(values_ms)), 2),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
    }


Buckets = list[tuple[float, float]]
"""Cumulative (upper bound, count) pairs, ending with +Inf."""


def histogram_delta(before: tuple[Buckets, float], after: tuple[Buckets, float]) -> tuple[Buckets, float]:
    """The observations between two scrapes of one histogram: (buckets, sum)."""
    (b0, s0), (b1, s1) = before, after
    if [b for b, _ in b0] != [b for b, _ in b1]:
        raise ValueError("histogram buckets changed between scrapes")
    return [(b, c1 - c0) for (b, c0), (_, c1) in zip(b0, b1, strict=True)], s1 - s0


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """Prometheus' histogram_quantile: linear within the bucket that holds rank q * count;
    a rank in the +Inf bucket gives the largest finite bound."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_block(buckets: Buckets, total_ms: float, empty_reason: str) -> dict[str, Any]:
    count = int(buckets[-1][1]) if buckets else 0
    if count == 0:
        return no_samples(empty_reason)
    return {
        "count": count,
        "mean_ms": round(total_ms / count, 2),
        **{f"p{q}_ms": round(histogram_quantile(q / 100, buckets), 2) for q in QUANTILES},
        "method": HISTOGRAM_METHOD,
    }
