"""Latency histograms on ingest (usage/latency.py) and the latency report built from them, on a
real control plane over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
import uuid_utils
from sqlalchemy import text

from control_plane import db
from control_plane.reports.schemas import LatencyReport, LatencyRow
from control_plane.reports.service import histogram_quantile, over_slo
from control_plane.usage.latency import BOUNDS_MS
from gpuledger.contracts import UsageRecord
from tests.control_plane_support import (
    SIDECAR_TOKEN,
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
    seed_policy,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]

START = datetime(2026, 6, 15, 12, tzinfo=UTC)
DAY = timedelta(days=1)
QUANTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}


def _records(
    n: int, *, feature: str = "support-bot", model: str = "tiny", seed: int = 3
) -> list[UsageRecord]:
    """Log-normal TTFT and e2e over ~40 minutes, 1-400 output tokens (1: no inter-token gap), 5%
    errors; a few extremes (0 ms, above the top bound) so that the first and the overflow
    buckets are used too."""
    rng = random.Random(seed)
    out: list[UsageRecord] = []
    for i in range(n):
        ttft = rng.lognormvariate(math.log(150), 0.8)
        tokens = rng.randint(1, 400)
        e2e = ttft + tokens * rng.lognormvariate(math.log(12), 0.5)
        if i % 97 == 0:
            ttft, e2e = 0.0, 400_000.0
        r = make_record(
            feature=feature,
            model=model,
            started_at=START + timedelta(seconds=rng.randrange(2400)),
            output_tokens=tokens,
            status="ok" if rng.random() > 0.05 else "upstream_error",
        )
        out.append(r.model_copy(update={"ttft_ms": ttft, "e2e_ms": e2e}))
    return out


def _values(records: list[UsageRecord], metric: str) -> list[float]:
    """The exact measurements the histograms should hold (successful requests only)."""
    values = []
    for r in records:
        if r.status != "ok":
            continue
        if metric == "e2e":
            values.append(r.e2e_ms)
        elif metric == "ttft" and r.ttft_ms is not None:
            values.append(r.ttft_ms)
        elif metric == "itl" and r.ttft_ms is not None and r.output_tokens >= 2:
            values.append(max(r.e2e_ms - r.ttft_ms, 0.0) / (r.output_tokens - 1))
    return values


def _bucket(value: float) -> tuple[float, float]:
    """(lower, upper] of the bucket holding `value`, found by a plain scan of the bounds."""
    lower = 0.0
    for le in BOUNDS_MS:
        if value <= le:
            return lower, le
        lower = le
    return lower, math.inf


def _expected_rows(records: list[UsageRecord]) -> Counter[tuple[Any, ...]]:
    rows: Counter[tuple[Any, ...]] = Counter()
    for metric in ("ttft", "itl", "e2e"):
        for r in records:
            for v in _values([r], metric):
                minute = r.started_at.replace(second=0, microsecond=0)
                rows[(minute, r.feature, r.model, metric, _bucket(v)[1])] += 1
    return rows


async def _read_rows(db_url: str) -> Counter[tuple[Any, ...]]:
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT minute, feature, model, metric, le_ms, requests FROM latency_rollups")
            )
            rows = result.all()
    finally:
        await engine.dispose()
    out: Counter[tuple[Any, ...]] = Counter()
    for minute, feature, model, metric, le, n in rows:
        if isinstance(minute, str):  # SQLite hands back text for a raw SELECT
            minute = datetime.fromisoformat(minute)
        minute = minute.replace(tzinfo=UTC) if minute.tzinfo is None else minute
        out[(minute.astimezone(UTC), feature, model, metric, float(le))] = n
    return out


def _stored_rows(db_url: str) -> Counter[tuple[Any, ...]]:
    return asyncio.run(_read_rows(db_url))


def _report(base_url: str, **params: str) -> LatencyReport:
    with admin_client(base_url) as client:
        resp = client.get("/api/v1/reports/latency", params=params)
        resp.raise_for_status()
        return LatencyReport.model_validate(resp.json())


def test_histograms_match_the_records_and_replays_add_nothing(
    control_plane: str, db_url: str
) -> None:
    seed_policy(control_plane)
    records = _records(600) + _records(300, feature="code-review", model="llama-3.1-8b", seed=4)
    expected = _expected_rows(records)
    assert any(math.isinf(key[4]) for key in expected)  # the overflow bucket is exercised
    assert post_usage(control_plane, records[:500], batch_size=200) == (500, 0)
    # an overlapping batch: only its new half may be counted
    assert post_usage(control_plane, records[250:], batch_size=1000) == (400, 250)
    assert _stored_rows(db_url) == expected

    assert post_usage(control_plane, records) == (0, len(records))
    assert _stored_rows(db_url) == expected
    report = _report(control_plane)
    assert report.totals.requests == len(_values(records, "e2e"))
    assert report.totals.itl.count == len(_values(records, "itl"))


async def test_concurrent_overlapping_batches_count_each_record_once(
    control_plane: str, db_url: str
) -> None:
    # Three sets over the same minutes and buckets, each shipped twice (once reversed) at once:
    # the upserts contend for the same rows, on PostgreSQL from concurrent transactions.
    sets = [_records(300, seed=s) for s in (11, 12, 13)]
    bodies = [{"records": [r.model_dump(mode="json") for r in rs]} for rs in sets]
    bodies += [{"records": b["records"][::-1]} for b in bodies]
    async with httpx.AsyncClient(
        base_url=control_plane, headers={"Authorization": f"Bearer {SIDECAR_TOKEN}"}, timeout=60
    ) as client:
        replies = await asyncio.gather(
            *(client.post("/api/v1/usage/batch", json=b) for b in bodies)
        )
    assert [r.status_code for r in replies] == [200] * len(bodies)
    assert sum(r.json()["accepted"] for r in replies) == 900
    assert await _read_rows(db_url) == _expected_rows([r for rs in sets for r in rs])


def _assert_in_bucket_of_exact(row: LatencyRow, records: list[UsageRecord]) -> None:
    for metric in ("ttft", "itl", "e2e"):
        values = np.array(_values(records, metric))
        stats = getattr(row, metric)
        assert stats.count == len(values)
        for field, q in QUANTILES.items():
            # inverted_cdf: the smallest value with at least q of them at or below it -- the
            # order statistic whose bucket histogram_quantile interpolates in.
            exact = float(np.quantile(values, q, method="inverted_cdf"))
            lower, upper = _bucket(exact)
            reported = getattr(stats, field)
            assert lower <= reported <= (upper if math.isfinite(upper) else lower), (
                metric,
                field,
                exact,
                reported,
            )


def test_percentiles_and_slo_share_within_one_bucket_of_the_exact_values(
    control_plane: str,
) -> None:
    seed_policy(control_plane)  # support-bot: TTFT SLO 800 ms, between the 750 and 1000 bounds
    records = _records(1009)
    post_usage(control_plane, records)
    row = _report(control_plane).rows[0]
    assert row.group == "support-bot"
    _assert_in_bucket_of_exact(row, records)

    ttft = _values(records, "ttft")
    over = sum(v > 800 for v in ttft) / len(ttft)
    share = row.ttft_over_slo
    assert share is not None and not share.exact
    assert share.at_least <= over <= share.at_most
    assert share.at_least <= share.estimate <= share.at_most
    assert row.slo_ttft_ms == 800 and row.e2e_over_slo is None and row.slo_e2e_ms is None

    # On a bucket bound the share is exact.
    with admin_client(control_plane) as client:
        client.patch(
            "/api/v1/features/support-bot", json={"slo_ttft_ms": 500, "slo_e2e_ms": 5000}
        ).raise_for_status()
    row = _report(control_plane).rows[0]
    for share, values, slo in (
        (row.ttft_over_slo, ttft, 500),
        (row.e2e_over_slo, _values(records, "e2e"), 5000),
    ):
        assert share is not None and share.exact
        assert share.estimate == share.at_least == share.at_most
        assert share.estimate == pytest.approx(sum(v > slo for v in values) / len(values))


def test_filters_windows_and_group_by(control_plane: str) -> None:
    seed_policy(control_plane)
    a = _records(200, feature="support-bot", model="tiny", seed=1)
    b = _records(200, feature="support-bot", model="llama-3.1-8b", seed=2)
    c = _records(200, feature="summarizer", model="tiny", seed=5)
    later = [
        r.model_copy(update={"id": str(uuid_utils.uuid7()), "started_at": r.started_at + DAY})
        for r in c
    ]
    post_usage(control_plane, a + b + c + later)

    by_feature = _report(control_plane)
    assert [r.group for r in by_feature.rows] == ["summarizer", "support-bot"]
    assert by_feature.rows[1].requests == len(_values(a + b, "e2e"))
    assert by_feature.rows[0].requests == len(_values(c + later, "e2e"))
    assert by_feature.totals.requests == len(_values(a + b + c + later, "e2e"))
    assert by_feature.totals.slo_ttft_ms is None  # mixed features: no one SLO applies
    assert by_feature.bucket_bounds_ms == list(BOUNDS_MS)

    by_model = _report(control_plane, group_by="model")
    assert {r.group: r.requests for r in by_model.rows} == {
        "llama-3.1-8b": len(_values(b, "e2e")),
        "tiny": len(_values(a + c + later, "e2e")),
    }
    assert all(r.slo_ttft_ms is None for r in by_model.rows)

    # A feature filter makes that feature's SLO apply to each model row.
    one = _report(control_plane, group_by="model", feature="support-bot")
    assert {r.group for r in one.rows} == {"llama-3.1-8b", "tiny"}
    assert all(r.slo_ttft_ms == 800 and r.ttft_over_slo is not None for r in one.rows)
    assert one.totals.slo_ttft_ms == 800
    _assert_in_bucket_of_exact(next(r for r in one.rows if r.group == "tiny"), a)

    tiny = _report(control_plane, model="tiny")
    assert {r.group: r.requests for r in tiny.rows} == {
        "summarizer": len(_values(c + later, "e2e")),
        "support-bot": len(_values(a, "e2e")),
    }

    # end is exclusive, at minute resolution: the window holds only the first day's records.
    day = {"start": "2026-06-15T00:00:00", "end": "2026-06-16T00:00:00"}
    first = _report(control_plane, feature="summarizer", **day)
    assert first.rows[0].requests == len(_values(c, "e2e"))
    assert _report(control_plane, feature="nope").rows == []


def test_bad_input_is_a_clear_4xx(control_plane: str) -> None:
    with admin_client(control_plane) as client:
        resp = client.get(
            "/api/v1/reports/latency",
            params={"start": "2026-06-16T00:00:00", "end": "2026-06-15T00:00:00"},
        )
        assert resp.status_code == 422 and resp.json()["code"] == "invalid_time_range"
        resp = client.get("/api/v1/reports/latency", params={"group_by": "key"})
        assert resp.status_code == 422 and resp.json()["code"] == "validation_error"
        assert resp.json()["detail"][0]["loc"] == ["query", "group_by"]
        resp = client.get("/api/v1/reports/latency", params={"start": "yesterday"})
        assert resp.status_code == 422
    with admin_client(control_plane, token=SIDECAR_TOKEN) as client:
        assert client.get("/api/v1/reports/latency").status_code == 403
    with admin_client(control_plane, token="unknown") as client:
        assert client.get("/api/v1/reports/latency").status_code == 401


# --- the interpolation itself ---------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    assert histogram_quantile(0.5, {}) is None
    # 10 requests in (0, 1]: the median is interpolated from 0.
    assert histogram_quantile(0.5, {1.0: 10}) == pytest.approx(0.5)
    # 100 in (75, 100]: p95 sits 95% of the way up the bucket.
    assert histogram_quantile(0.95, {100.0: 100}) == pytest.approx(98.75)
    # Empty buckets in between still give the lower edge (200, not 10).
    assert histogram_quantile(0.75, {10.0: 2, 300.0: 2}) == pytest.approx(250.0)
    # Above the top bound the answer is the top bound (a lower bound of the truth).
    assert histogram_quantile(0.99, {1.0: 1, math.inf: 99}) == BOUNDS_MS[-1]


def test_over_slo_bounds() -> None:
    hist = {500.0: 6, 750.0: 2, 1000.0: 2}
    share = over_slo(800.0, hist)
    assert share is not None and not share.exact
    assert (share.at_least, share.at_most) == (0.0, 0.2)
    assert share.estimate == pytest.approx(0.2 * 200 / 250)
    exact = over_slo(500.0, hist)
    assert exact is not None and exact.exact and exact.estimate == pytest.approx(0.4)
    assert over_slo(800.0, {}) is None
