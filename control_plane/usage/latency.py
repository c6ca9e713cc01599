"""Latency histograms kept beside the usage rollups (table latency_rollups).

Per (minute, feature, model, metric) the number of requests in each fixed bucket, Prometheus
style: a value v lands in the first bucket whose upper bound `le` satisfies v <= le, values above
the top bound in the overflow bucket (le = infinity). Bounds go 1, 1.5, 2, 3, 5, 7.5 per decade
from 1 ms to 75 s, then 100, 150, 200, 300 s: one set serves inter-token gaps (a few ms) and long
generations (minutes), and the worst-case interpolation error is the width of one bucket
(25-40% of its upper bound). Rows store their bound, not an index, so they stay readable if the
bounds ever change.

Only successful requests are counted: an error or a refusal ends early (a rejected request's e2e
is ~0 ms), and counting them would pull every percentile down. Inter-token latency is each
request's mean gap, (e2e - TTFT) / (output tokens - 1), so it needs a TTFT and 2+ output tokens.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

from control_plane.budgets.periods import floor_minute
from gpuledger.contracts import UsageRecord

LatencyMetric = Literal["ttft", "itl", "e2e"]
METRICS: tuple[LatencyMetric, ...] = ("ttft", "itl", "e2e")
BOUNDS_MS: tuple[float, ...] = (
    *(float(m * 10**e) for e in range(5) for m in (1, 1.5, 2, 3, 5, 7.5)),
    100_000.0,
    150_000.0,
    200_000.0,
    300_000.0,
)
OVERFLOW = math.inf
LATENCY_KEY = ("minute", "feature", "model", "metric", "le_ms")


def bucket_le(ms: float) -> float:
    """The upper bound of the bucket `ms` falls in (OVERFLOW above the top bound)."""
    i = bisect_left(BOUNDS_MS, ms)
    return BOUNDS_MS[i] if i < len(BOUNDS_MS) else OVERFLOW


def inter_token_ms(ttft_ms: float | None, e2e_ms: float, output_tokens: int) -> float | None:
    """A request's mean gap between output tokens; None without a TTFT or a second token."""
    if ttft_ms is None or output_tokens < 2:
        return None
    return max(e2e_ms - ttft_ms, 0.0) / (output_tokens - 1)


def observations(r: UsageRecord) -> Iterable[tuple[LatencyMetric, float]]:
    if r.status != "ok":
        return
    values: tuple[tuple[LatencyMetric, float | None], ...] = (
        ("ttft", r.ttft_ms),
        ("itl", inter_token_ms(r.ttft_ms, r.e2e_ms, r.output_tokens)),
        ("e2e", r.e2e_ms),
    )
    for metric, value in values:
        # NaN would land in the first bucket (every comparison is false): skip it, and inf too.
        if value is not None and math.isfinite(value):
            yield metric, value


def latency_deltas(records: Iterable[UsageRecord]) -> list[dict[str, Any]]:
    """Bucket counts to add, one dict per latency_rollups row, sorted by key (the lock order the
    rollup upserts use, so concurrent batches on PostgreSQL cannot deadlock)."""
    counts: Counter[tuple[Any, ...]] = Counter()
    for r in records:
        minute = floor_minute(r.started_at)
        for metric, value in observations(r):
            counts[(minute, r.feature, r.model, metric, bucket_le(value))] += 1
    return [
        dict(zip(LATENCY_KEY, key, strict=True)) | {"requests": counts[key]}
        for key in sorted(counts)
    ]
