"""Rules of the prefix-cache report.

vLLM reuses KV blocks only for an identical leading run of tokens. Each sidecar's prefix advisor
hashes the first bytes of every prompt and marks the record when that opening was not among the
feature's recent requests on that sidecar (`UsageRecord.prompt_opening_new`), with its estimate of
the prefill that a changing opening wasted. Ingest sums both into the per-minute rollups, so this
report, like the others, never scans raw records. A feature whose openings are mostly new (a
timestamp or a user name first) gets no prefix-cache hits on the static text behind them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import utcnow
from control_plane.prefix_cache.schemas import PrefixCacheReport, PrefixCacheRow
from control_plane.reports.repository import grouped
from control_plane.settings import Settings

DEFAULT_WINDOW = timedelta(hours=24)
ADVICE = (
    "Prompt openings keep changing: move static content (system prompt, instructions) first "
    "and per-request values (dates, names) last."
)


def _row(sums: dict[str, Any], settings: Settings) -> PrefixCacheRow:
    requests, new = int(sums["opening_requests"]), int(sums["new_openings"])
    ratio = new / requests if requests else 0.0
    unstable = (
        requests >= settings.prefix_min_requests and ratio >= settings.prefix_unstable_threshold
    )
    wasted_s = float(sums["wasted_prefill_gpu_seconds"])
    gpu_s, cost = float(sums["gpu_seconds"]), float(sums["cost_usd"])
    input_tokens, cached = int(sums["input_tokens"]), int(sums["cached_input_tokens"])
    return PrefixCacheRow(
        feature=str(sums["group"]),
        requests=requests,
        new_openings=new,
        unstable_ratio=round(ratio, 4),
        unstable=unstable,
        observed_cache_hit_ratio=cached / input_tokens if cached and input_tokens else None,
        wasted_prefill_gpu_seconds=wasted_s,
        wasted_prefill_usd=wasted_s * cost / gpu_s if gpu_s > 0 else 0.0,
        advice=ADVICE if unstable else "",
    )


async def prefix_cache_report(
    session: AsyncSession,
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    feature: str | None,
) -> PrefixCacheReport:
    end = end or utcnow()
    start = start or end - DEFAULT_WINDOW
    sums = await grouped(session, "feature", start, end, feature)
    rows = [_row(s, settings) for s in sums if s["opening_requests"]]
    rows.sort(key=lambda r: (-r.wasted_prefill_gpu_seconds, -r.unstable_ratio, r.feature))
    return PrefixCacheReport(start=start, end=end, rows=rows)
