"""Cost and utilization reports.

What can be computed from the ledger: attributed GPU-seconds, self-hosted cost and the
cloud-equivalent cost per feature / model / key / engine / day (all summed from rollups). Busy
time per engine is the sum of its requests' attributed GPU-seconds; idle is the rest of its
capacity (GPUs x window), assuming it was up for the whole window -- the engine's real up-time
is in Prometheus (`gpuledger_engine_up`), not in the ledger. Break-even utilization is the busy
fraction at which the engine's hourly cost equals the cloud price of the work it did:
    engine_usd_per_second / (cloud_cost / attributed_gpu_seconds) / gpus.
"""

from __future__ import annotations

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
    UtilizationReport,
)
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
