"""Rules of the prefix-cache report.

vLLM reuses KV blocks only for an identical leading run of tokens. The sidecar hashes the first
bytes of every prompt (the prefix advisor's hash, `UsageRecord.prompt_opening`); a feature whose
requests rarely share an opening (a timestamp or a user name first) gets no prefix-cache hits on
the static text behind it. Wasted prefill is an upper bound: every whole block of a one-off
request's prompt, priced at `prefill_gpu_seconds_per_token`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import utcnow
from control_plane.errors import Unprocessable
from control_plane.prefix_cache import repository
from control_plane.prefix_cache.schemas import PrefixCacheReport, PrefixCacheRow
from control_plane.settings import Settings

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=7)  # the report scans raw records
ADVICE = (
    "Prompt openings keep changing: move static content (system prompt, instructions) first "
    "and per-request values (dates, names) last."
)


def _row(raw: dict[str, Any], settings: Settings) -> PrefixCacheRow:
    requests, distinct = int(raw["requests"]), int(raw["distinct_openings"])
    ratio = distinct / requests if requests else 0.0
    unstable = (
        requests >= settings.prefix_min_requests and ratio >= settings.prefix_unstable_threshold
    )
    wasted_s = int(raw["one_off_tokens"] or 0) * settings.prefill_gpu_seconds_per_token
    gpu_s, cost = float(raw["gpu_seconds"] or 0.0), float(raw["cost_usd"] or 0.0)
    input_tokens, cached = int(raw["input_tokens"] or 0), int(raw["cached_input_tokens"] or 0)
    return PrefixCacheRow(
        feature=str(raw["feature"]),
        requests=requests,
        distinct_openings=distinct,
        unstable_ratio=round(ratio, 4),
        unstable=unstable,
        one_off_requests=int(raw["one_off_requests"] or 0),
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
    if end - start > MAX_WINDOW:
        raise Unprocessable(
            f"the prefix-cache report covers at most {MAX_WINDOW.days} days; narrow start/end",
            code="invalid_time_range",
        )
    block = settings.prefix_cache_block_tokens
    raw = await repository.openings_by_feature(session, start, end, block, feature)
    rows = [_row(r, settings) for r in raw]
    rows.sort(key=lambda r: (-r.wasted_prefill_gpu_seconds, -r.unstable_ratio, r.feature))
    return PrefixCacheReport(
        start=start,
        end=end,
        block_tokens=block,
        prefill_gpu_seconds_per_token=settings.prefill_gpu_seconds_per_token,
        rows=rows,
    )
