"""Usage ingestion and queries against a real control plane (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.control_plane_support import (
    SIDECAR_TOKEN,
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
    seed_policy,
    sidecar_client,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


def _summary(base_url: str, **params: str) -> dict[str, float]:
    with admin_client(base_url) as client:
        resp = client.get("/api/v1/usage/summary", params=params)
        resp.raise_for_status()
        totals: dict[str, float] = resp.json()["totals"]
        return totals


def test_same_batch_three_times_is_counted_once(control_plane: str) -> None:
    now = datetime.now(UTC)
    records = [
        make_record(feature="f1", model="tiny", started_at=now, gpu_seconds=0.25) for _ in range(50)
    ]
    acks = [post_usage(control_plane, records) for _ in range(3)]
    assert acks == [(50, 0), (0, 50), (0, 50)]
    totals = _summary(control_plane)
    assert totals["requests"] == 50
    assert totals["gpu_seconds"] == pytest.approx(12.5)
    assert totals["input_tokens"] == 50 * 100
    with admin_client(control_plane) as client:
        page = client.get("/api/v1/usage/records", params={"limit": 1}).json()
    assert page["total"] == 50


async def test_concurrent_replays_are_counted_once(control_plane: str) -> None:
    records = [make_record(gpu_seconds=0.5) for _ in range(300)]
    body = {"records": [r.model_dump(mode="json") for r in records]}
    reversed_body = {"records": body["records"][::-1]}
    async with httpx.AsyncClient(
        base_url=control_plane, headers={"Authorization": f"Bearer {SIDECAR_TOKEN}"}, timeout=60
    ) as client:
        replies = await asyncio.gather(
            *(client.post("/api/v1/usage/batch", json=b) for b in (body, reversed_body) * 3)
        )
    assert [r.status_code for r in replies] == [200] * 6
    assert sum(r.json()["accepted"] for r in replies) == 300
    totals = _summary(control_plane)
    assert totals["requests"] == 300
    assert totals["gpu_seconds"] == pytest.approx(150)


def test_partial_replay_and_in_batch_duplicates(control_plane: str) -> None:
    first = [make_record(gpu_seconds=1.0) for _ in range(10)]
    post_usage(control_plane, first)
    fresh = [make_record(gpu_seconds=1.0) for _ in range(5)]
    # a retry that overlaps the previous batch, with one record repeated inside the batch
    accepted, duplicates = post_usage(control_plane, first[5:] + fresh + fresh[:1])
    assert (accepted, duplicates) == (5, 6)
    assert _summary(control_plane)["gpu_seconds"] == pytest.approx(15.0)


def test_rollups_group_per_minute_feature_model_key(control_plane: str) -> None:
    t0 = datetime(2026, 3, 2, 10, 15, 5, tzinfo=UTC)
    records = [
        make_record(feature="a", model="m1", key_id="k1", started_at=t0, gpu_seconds=1),
        make_record(
            feature="a",
            model="m1",
            key_id="k1",
            started_at=t0 + timedelta(seconds=30),
            gpu_seconds=2,
        ),
        make_record(feature="a", model="m2", key_id="k1", started_at=t0, gpu_seconds=4),
        make_record(
            feature="b",
            model="m1",
            key_id=None,
            started_at=t0 + timedelta(minutes=1),
            gpu_seconds=8,
            status="upstream_error",
        ),
    ]
    post_usage(control_plane, records)
    minute = t0.replace(second=0)
    assert (
        _summary(
            control_plane, start=minute.isoformat(), end=(minute + timedelta(minutes=1)).isoformat()
        )["gpu_seconds"]
        == 7
    )
    b = _summary(control_plane, feature="b")
    assert (b["requests"], b["errors"], b["gpu_seconds"]) == (1, 1, 8)
    with admin_client(control_plane) as client:
        rows = client.get("/api/v1/reports/cost", params={"group_by": "key"}).json()["rows"]
    assert {r["group"]: r["gpu_seconds"] for r in rows} == {"": 8, "k1": 7}


def test_batch_of_10k_and_over_limit(control_plane: str) -> None:
    records = [make_record(gpu_seconds=0.001) for _ in range(10_000)]
    assert post_usage(control_plane, records, batch_size=10_000) == (10_000, 0)
    too_many = [make_record() for _ in range(10_001)]
    with sidecar_client(control_plane) as client:
        resp = client.post(
            "/api/v1/usage/batch", json={"records": [r.model_dump(mode="json") for r in too_many]}
        )
    assert resp.status_code == 422
    assert resp.json()["code"] == "validation_error"


def test_long_labels_are_stored_not_refused(control_plane: str) -> None:
    record = make_record(feature="f" * 300, model="m" * 300)
    assert post_usage(control_plane, [record]) == (1, 0)


def test_ingest_needs_a_sidecar_token(control_plane: str) -> None:
    body = {"records": [make_record().model_dump(mode="json")]}
    assert httpx.post(f"{control_plane}/api/v1/usage/batch", json=body).status_code == 401
    with admin_client(control_plane) as admin:
        assert admin.post("/api/v1/usage/batch", json=body).status_code == 403
    with sidecar_client(control_plane, token="wrong") as bad:
        assert bad.post("/api/v1/usage/batch", json=body).json()["code"] == "unauthorized"
    with sidecar_client(control_plane, token=SIDECAR_TOKEN) as good:
        assert good.post("/api/v1/usage/batch", json=body).status_code == 200


def test_records_query_filters_and_pages(control_plane: str) -> None:
    seed = seed_policy(control_plane)
    key_id = next(iter(seed.keys))
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    records = [
        make_record(feature="support-bot", key_id=key_id, started_at=t0 + timedelta(hours=i))
        for i in range(30)
    ]
    post_usage(control_plane, records)
    with admin_client(control_plane) as client:
        page = client.get(
            "/api/v1/usage/records",
            params={
                "key_id": key_id,
                "limit": 10,
                "offset": 10,
                "start": (t0 + timedelta(hours=5)).isoformat(),
            },
        ).json()
        bad = client.get(
            "/api/v1/usage/records", params={"start": t0.isoformat(), "end": t0.isoformat()}
        )
    assert page["total"] == 25
    assert len(page["items"]) == 10
    # newest first: offset 10 from hour 29 is hour 19
    assert page["items"][0]["started_at"].startswith("2026-05-01T19:00")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_time_range"


def test_ingest_metric_counts_new_records_only(control_plane: str) -> None:
    records = [make_record() for _ in range(7)]
    post_usage(control_plane, records)
    post_usage(control_plane, records)
    text = httpx.get(f"{control_plane}/metrics").text
    assert "gpuledger_usage_ingested_total 7.0" in text
    assert "gpuledger_usage_duplicates_total 7.0" in text
