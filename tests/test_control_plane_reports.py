"""Reports from rollups: cost by feature / model / key / engine / day, utilization, break-even."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from control_plane.reports.schemas import CostReport, UtilizationReport
from tests.control_plane_support import (
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    generate_usage,
    make_record,
    post_usage,
    seed_policy,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


def _cost(base_url: str, **params: str) -> CostReport:
    with admin_client(base_url) as client:
        resp = client.get("/api/v1/reports/cost", params=params)
        resp.raise_for_status()
        return CostReport.model_validate(resp.json())


def test_cost_reports_match_the_records(control_plane: str) -> None:
    seed = seed_policy(control_plane)
    now = datetime(2026, 6, 15, 18, tzinfo=UTC)
    records = generate_usage(seed, days=5, per_day=60, now=now)
    post_usage(control_plane, records)

    expected: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in records:
        for group, value in (
            ("feature", r.feature),
            ("model", r.model),
            ("key", r.key_id or ""),
            ("engine", r.upstream),
            ("day", r.started_at.strftime("%Y-%m-%d")),
        ):
            expected[group][value] += r.gpu_seconds
            expected[group + ":cloud"][value] += r.cloud_cost_usd or 0.0

    for group in ("feature", "model", "key", "engine", "day"):
        report = _cost(control_plane, group_by=group)
        got = {row.group: row.gpu_seconds for row in report.rows}
        assert got == pytest.approx(dict(expected[group]))
        cloud = {row.group: row.cloud_cost_usd for row in report.rows}
        assert cloud == pytest.approx(dict(expected[group + ":cloud"]))
        assert report.totals.requests == len(records)
        assert report.totals.gpu_hours == pytest.approx(sum(r.gpu_seconds for r in records) / 3600)
    days = _cost(control_plane, group_by="day")
    assert [row.group for row in days.rows] == sorted(expected["day"])

    one_day = _cost(
        control_plane,
        group_by="feature",
        feature="support-bot",
        start="2026-06-15T00:00:00",
        end="2026-06-16T00:00:00",
    )
    assert [row.group for row in one_day.rows] == ["support-bot"]
    assert one_day.rows[0].requests == sum(
        1 for r in records if r.feature == "support-bot" and r.started_at.day == 15
    )
    savings = one_day.rows[0]
    assert savings.savings_usd == pytest.approx(savings.cloud_cost_usd - savings.cost_usd)


def test_utilization_and_break_even(control_plane: str) -> None:
    start = datetime(2026, 6, 1, tzinfo=UTC)
    end = start + timedelta(hours=10)
    with admin_client(control_plane) as client:
        client.put(
            "/api/v1/engines/gpu-a", json={"url": "http://x", "gpus": 2, "hourly_rate_usd": 7.2}
        ).raise_for_status()
    # 7,200 attributed GPU-seconds whose cloud price is $4 -> $1 per 1,800 GPU-s
    records = [
        make_record(
            upstream="gpu-a",
            started_at=start + timedelta(minutes=i),
            gpu_seconds=72,
            input_tokens=0,
            output_tokens=0,
        )
        for i in range(100)
    ]
    records = [r.model_copy(update={"cloud_cost_usd": 0.04}) for r in records]
    records.append(make_record(upstream="unregistered", started_at=start, gpu_seconds=1))
    post_usage(control_plane, records)
    with admin_client(control_plane) as client:
        resp = client.get(
            "/api/v1/reports/utilization",
            params={"start": start.isoformat(), "end": end.isoformat()},
        )
    report = UtilizationReport.model_validate(resp.json())
    by_name = {e.engine: e for e in report.engines}
    gpu = by_name["gpu-a"]
    assert gpu.registered and gpu.window_seconds == 36_000
    assert gpu.capacity_gpu_seconds == 72_000
    assert gpu.attributed_gpu_seconds == pytest.approx(7200)
    assert gpu.idle_gpu_seconds == pytest.approx(64_800)
    assert gpu.utilization == pytest.approx(0.1)
    assert gpu.engine_cost_usd == pytest.approx(72)
    assert gpu.cloud_cost_usd == pytest.approx(4)
    # per-GPU cost 3.6 $/h = 0.001 $/s; cloud pays 4/7200 $/GPU-s -> break-even at 1.8 (never)
    assert gpu.break_even_utilization == pytest.approx(0.001 / (4 / 7200))
    assert not by_name["unregistered"].registered
    assert by_name["unregistered"].break_even_utilization is None
