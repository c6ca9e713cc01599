"""Cost, utilization and latency reports.

What can be computed from the ledger: attributed GPU-seconds, self-hosted cost and the
cloud-equivalent cost per feature / model / key / engine / day (all summed from rollups). Busy
time per engine is the sum of its requests' attributed GPU-seconds; idle is the rest of its
capacity (GPUs x window), assuming it was up for the whole window -- the engine's real up-time
is in Prometheus (`gpuledger_engine_up`), not in the ledger. Break-even utilization is the busy
fraction at which the engine's hourly cost equals the cloud price of the work it did:
    engine_usd_per_second / (cloud_cost / attributed_gpu_seconds) / gpus.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import utcnow
from control_plane.engines.repository import EngineRepository
from control_plane.reports import repository
from control_plane.reports.schemas import (
    CostGroup,
    CostReport,
    CostRow,
    EngineUtilization,
    LatencyGroup,
    LatencyReport,
    LatencyRow,
    OverSlo,
    Percentiles,
    UtilizationReport,
)
from control_plane.usage.latency import BOUNDS_MS, METRICS
from control_plane.usage.repository import ROLLUP_SUMS


def _row(group: str, sums: dict[str, Any]) -> CostRow:
    gpu_seconds = float(sums["gpu_seconds"])
    cost, cloud = float(sums["cost_usd"]), float(sums["cloud_cost_usd"])
    return CostRow(
        group=group,
        requests=int(sums["requests"]),
        errors=int(sums["errors"]),
        input_tokens=int(sums["input_tokens"]),
        cached_input_tokens=int(sums["cached_input_tokens"]),
        output_tokens=int(sums["output_tokens"]),
        gpu_seconds=gpu_seconds,
        gpu_hours=gpu_seconds / 3600,
        cost_usd=cost,
        cloud_cost_usd=cloud,
        savings_usd=cloud - cost,
    )


async def cost_report(
    session: AsyncSession,
    group_by: CostGroup,
    start: datetime | None,
    end: datetime | None,
    feature: str | None,
) -> CostReport:
    raw = await repository.grouped(session, group_by, start, end, feature)
    rows = [_row(str(r["group"]), r) for r in raw]
    totals: dict[str, Any] = dict.fromkeys(ROLLUP_SUMS, 0)
    for r in raw:
        for k in ROLLUP_SUMS:
            totals[k] += r[k]
    total_row = _row("total", totals)
    return CostReport(
        group_by=group_by, start=start, end=end, feature=feature, rows=rows, totals=total_row
    )


async def utilization_report(
    session: AsyncSession, start: datetime | None, end: datetime | None
) -> UtilizationReport:
    end = end or utcnow()
    start = start or end - timedelta(hours=24)
    window = (end - start).total_seconds()
    usage = {r["group"]: r for r in await repository.grouped(session, "engine", start, end, None)}
    engines = {e.name: e for e in await EngineRepository(session).list()}
    out: list[EngineUtilization] = []
    for name in sorted(set(usage) | set(engines)):
        eng = engines.get(name)
        sums = usage.get(name, {})
        gpus = eng.gpus if eng else 1
        rate = eng.hourly_rate_usd if eng else 0.0
        capacity = gpus * window
        busy = float(sums.get("gpu_seconds", 0.0))
        cloud = float(sums.get("cloud_cost_usd", 0.0))
        engine_cost = rate * window / 3600
        cloud_per_gs = cloud / busy if busy > 0 and cloud > 0 else None
        break_even = (rate / 3600 / gpus) / cloud_per_gs if cloud_per_gs and rate > 0 else None
        out.append(
            EngineUtilization(
                engine=name,
                registered=eng is not None,
                gpu_type=eng.gpu_type if eng else None,
                gpus=gpus,
                hourly_rate_usd=rate,
                window_seconds=window,
                capacity_gpu_seconds=capacity,
                attributed_gpu_seconds=busy,
                idle_gpu_seconds=max(0.0, capacity - busy),
                utilization=busy / capacity if capacity > 0 else 0.0,
                engine_cost_usd=engine_cost,
                attributed_cost_usd=float(sums.get("cost_usd", 0.0)),
                cloud_cost_usd=cloud,
                cloud_usd_per_gpu_second=cloud_per_gs,
                break_even_utilization=break_even,
                savings_usd=cloud - engine_cost,
            )
        )
    return UtilizationReport(start=start, end=end, engines=out)


# --- latency --------------------------------------------------------------------------------
# Percentiles come from the summed per-minute histograms (usage/latency.py), never from raw
# records, so a month costs the same few hundred summed rows per group as an hour.

Histogram = Mapping[float, int]  # bucket upper bound (ms, inf = overflow) -> requests


def _edges(hist: Histogram) -> list[float]:
    # The known bounds, not only the stored (non-empty) buckets: a bucket's lower edge is the
    # previous bound even when no request fell in between.
    return sorted(set(BOUNDS_MS) | set(hist))


def histogram_quantile(q: float, hist: Histogram) -> float | None:
    """Prometheus' histogram_quantile: find the bucket holding the q-th request and interpolate
    linearly inside it (the first bucket starts at 0). In the overflow bucket the answer is the
    top bound, a lower bound of the truth. None for an empty histogram."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    cumulative, lower = 0, 0.0
    for le in _edges(hist):
        count = hist.get(le, 0)
        if count and cumulative + count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - cumulative) / count
        cumulative += count
        lower = le if math.isfinite(le) else lower
    return lower


def over_slo(slo_ms: float, hist: Histogram) -> OverSlo | None:
    """Share of requests slower than `slo_ms`: exact from the buckets wholly above it, plus an
    interpolated part of the bucket it falls inside (none when it is a bucket bound)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    above = estimate = straddling = 0.0
    lower = 0.0
    for le in _edges(hist):
        count = hist.get(le, 0)
        if lower >= slo_ms:
            above += count
            estimate += count
        elif le > slo_ms:
            straddling = count
            # The overflow bucket has no width to interpolate in: count it as over.
            estimate += count if math.isinf(le) else count * (le - slo_ms) / (le - lower)
        lower = le
    return OverSlo(
        estimate=estimate / total,
        at_least=above / total,
        at_most=(above + straddling) / total,
        exact=straddling == 0,
    )


def _percentiles(hist: Histogram) -> Percentiles:
    return Percentiles(
        count=sum(hist.values()),
        p50_ms=histogram_quantile(0.50, hist),
        p95_ms=histogram_quantile(0.95, hist),
        p99_ms=histogram_quantile(0.99, hist),
    )


def _latency_row(
    group: str, hists: Mapping[str, Histogram], slo_ttft: float | None, slo_e2e: float | None
) -> LatencyRow:
    e2e = _percentiles(hists["e2e"])
    return LatencyRow(
        group=group,
        requests=e2e.count,
        ttft=_percentiles(hists["ttft"]),
        itl=_percentiles(hists["itl"]),
        e2e=e2e,
        slo_ttft_ms=slo_ttft,
        slo_e2e_ms=slo_e2e,
        ttft_over_slo=over_slo(slo_ttft, hists["ttft"]) if slo_ttft is not None else None,
        e2e_over_slo=over_slo(slo_e2e, hists["e2e"]) if slo_e2e is not None else None,
    )


async def latency_report(
    session: AsyncSession,
    group_by: LatencyGroup,
    start: datetime | None,
    end: datetime | None,
    feature: str | None,
    model: str | None,
) -> LatencyReport:
    buckets = await repository.latency_buckets(session, group_by, start, end, feature, model)
    groups: dict[str, dict[str, dict[float, int]]] = defaultdict(lambda: {m: {} for m in METRICS})
    totals: dict[str, dict[float, int]] = {m: defaultdict(int) for m in METRICS}
    for b in buckets:
        le, count = float(b["le_ms"]), int(b["requests"])
        groups[str(b["group"])][b["metric"]][le] = count
        totals[b["metric"]][le] += count
    slos = await repository.feature_slos(session)

    def slo(name: str | None) -> tuple[float | None, float | None]:
        # A feature's SLO applies only to rows made of that feature's requests.
        return slos.get(name, (None, None)) if name is not None else (None, None)

    rows = [
        _latency_row(g, groups[g], *slo(g if group_by == "feature" else feature))
        for g in sorted(groups)
    ]
    return LatencyReport(
        group_by=group_by,
        start=start,
        end=end,
        feature=feature,
        model=model,
        bucket_bounds_ms=list(BOUNDS_MS),
        rows=rows,
        totals=_latency_row("total", totals, *slo(feature)),
    )
