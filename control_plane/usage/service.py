"""Usage ingestion: exactly-once accounting from at-least-once shipping.

One transaction per batch: insert the records that are new (ON CONFLICT DO NOTHING on the
record id, RETURNING the ids actually inserted), add only those to the per-minute rollups and
latency histograms, commit, then acknowledge. A replayed batch finds every id present, adds
nothing, and is acknowledged as duplicates; a crash before commit stores nothing, so the
sidecar's retry counts it once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.budgets.periods import floor_minute
from control_plane.budgets.service import check_alerts
from control_plane.db import utcnow
from control_plane.metrics import ControlPlaneMetrics
from control_plane.models import UsageRecordRow
from control_plane.tracing import record_ingest_spans
from control_plane.usage.latency import latency_deltas
from control_plane.usage.repository import ROLLUP_KEY, ROLLUP_SUMS, UsageRepository
from gpuledger.contracts import UsageBatch, UsageBatchAck, UsageRecord

_COLUMNS = frozenset(UsageRecordRow.__table__.columns.keys())


def _row(record: UsageRecord, received: Any) -> dict[str, Any]:
    # Only the ledger's columns: the wire contract grows additively (span_id is for tracing,
    # see record_ingest_spans), and an unknown key would fail the whole batch.
    row = {k: v for k, v in record.model_dump().items() if k in _COLUMNS}
    row["received_at"] = received
    return row


def rollup_deltas(records: list[UsageRecord]) -> list[dict[str, Any]]:
    sums: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: dict.fromkeys(ROLLUP_SUMS, 0))
    for r in records:
        key = (floor_minute(r.started_at), r.feature, r.model, r.key_id or "", r.upstream)
        acc = sums[key]
        acc["requests"] += 1
        acc["errors"] += 0 if r.status == "ok" else 1
        acc["input_tokens"] += r.input_tokens
        acc["cached_input_tokens"] += r.cached_input_tokens
        acc["output_tokens"] += r.output_tokens
        acc["gpu_seconds"] += r.gpu_seconds
        acc["cost_usd"] += r.cost_usd
        acc["cloud_cost_usd"] += r.cloud_cost_usd or 0.0
        if r.prompt_opening_new is not None:
            acc["opening_requests"] += 1
            acc["new_openings"] += r.prompt_opening_new
            acc["wasted_prefill_gpu_seconds"] += r.wasted_prefill_gpu_seconds
    return [dict(zip(ROLLUP_KEY, key, strict=True)) | sums[key] for key in sorted(sums)]


async def ingest(
    session: AsyncSession, batch: UsageBatch, metrics: ControlPlaneMetrics
) -> UsageBatchAck:
    started_ns = time.time_ns()
    unique: dict[str, UsageRecord] = {}
    for record in batch.records:
        unique.setdefault(record.id, record)
    received = utcnow()
    repo = UsageRepository(session)
    # Sorted by id so that concurrent overlapping batches on PostgreSQL wait on each other's
    # rows in one order instead of deadlocking.
    ordered = [unique[i] for i in sorted(unique)]
    new_ids = await repo.insert_new([_row(r, received) for r in ordered])
    new = [r for r in ordered if r.id in new_ids]
    await repo.add_to_rollups(rollup_deltas(new))
    await repo.add_to_latency(latency_deltas(new))
    await check_alerts(session, {r.feature for r in new})
    await session.commit()
    record_ingest_spans(ordered, new_ids, started_ns)
    metrics.usage_ingested.inc(len(new))
    metrics.usage_duplicates.inc(len(batch.records) - len(new))
    return UsageBatchAck(accepted=len(new), duplicates=len(batch.records) - len(new))
