"""The dashboard's pure computations: budget outlook, burn-down, break-even verdicts, latency
rows and SLO verdicts, and number formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from control_plane.budgets.schemas import BudgetOut
from control_plane.reports.schemas import (
    CostReport,
    CostRow,
    EngineUtilization,
    LatencyReport,
    LatencyRow,
    OverSlo,
    Percentiles,
)
from dashboard.analysis import (
    break_even_verdict,
    budget_outlook,
    burndown,
    cost_rows,
    fmt_hours,
    fmt_ms,
    fmt_pct,
    fmt_usd,
    fmt_when,
    latency_rows,
    slo_verdict,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def budget(used_h: float, limit_h: float = 10.0, **kw: Any) -> BudgetOut:
    values: dict[str, Any] = {
        "feature": "support-bot",
        "period": "month",
        "rolling_hours": None,
        "limit_gpu_seconds": limit_h * 3600,
        "limit_gpu_hours": limit_h,
        "soft_threshold_pct": 80.0,
        "hard_action": "reject",
        "period_start": START,
        "period_end": END,
        "used_gpu_seconds": used_h * 3600,
        "outstanding_lease_gpu_seconds": 0.0,
        "remaining_gpu_seconds": max(limit_h - used_h, 0) * 3600,
        "used_ratio": used_h / limit_h,
        "status": "ok",
    }
    values.update(kw)
    return BudgetOut(**values)


def row(
    group: str, gpu_s: float, requests: int = 10, cost: float = 1.0, cloud: float = 2.0
) -> CostRow:
    return CostRow(
        group=group,
        requests=requests,
        errors=0,
        input_tokens=100,
        cached_input_tokens=0,
        output_tokens=50,
        gpu_seconds=gpu_s,
        gpu_hours=gpu_s / 3600,
        cost_usd=cost,
        cloud_cost_usd=cloud,
        savings_usd=cloud - cost,
    )


def report(rows: list[CostRow]) -> CostReport:
    return CostReport(group_by="day", start=None, end=None, rows=rows, totals=row("total", 0))


def test_outlook_projects_exhaustion_from_the_last_day() -> None:
    # 6 of 10 GPU-h used; the last 24 h burned 1 GPU-h: 4 days left, before the period ends.
    o = budget_outlook(budget(6.0), recent_gpu_seconds=3600, now=NOW)
    assert o.burn_gpu_hours_per_day == pytest.approx(1.0)
    assert o.projected_exhaustion == NOW + timedelta(days=4)
    assert o.exhausts_before_period_end


def test_outlook_without_recent_use_never_runs_out() -> None:
    o = budget_outlook(budget(6.0), recent_gpu_seconds=0, now=NOW)
    assert o.projected_exhaustion is None
    assert not o.exhausts_before_period_end


def test_outlook_of_a_young_period_uses_its_own_average() -> None:
    # 3 hours into a rolling day with 0.5 GPU-h used: 4 GPU-h/day, not "last 24 h".
    b = budget(0.5, 2.0, period="rolling", rolling_hours=24, period_start=NOW - timedelta(hours=3))
    o = budget_outlook(b, recent_gpu_seconds=99_999, now=NOW)
    assert o.burn_gpu_hours_per_day == pytest.approx(4.0)
    assert o.projected_exhaustion == NOW + timedelta(hours=9)


def test_outlook_of_an_exhausted_budget_is_now() -> None:
    o = budget_outlook(budget(12.0, status="exhausted"), recent_gpu_seconds=3600, now=NOW)
    assert o.projected_exhaustion == NOW
    assert o.status == "exhausted"


def test_burndown_accumulates_days_and_projects_to_zero() -> None:
    daily = report([row("2026-11-02", 3600 * 2), row("2026-11-20", 3600 * 3)])
    points = burndown(budget(5.0), daily, NOW)
    actual = [p for p in points if p["series"] == "actual"]
    assert actual[0]["gpu_hours"] == 10.0
    assert actual[1]["gpu_hours"] == pytest.approx(10.0)  # end of Nov 1
    assert actual[2]["gpu_hours"] == pytest.approx(8.0)  # end of Nov 2: its 2 GPU-h are gone
    assert actual[-1]["time"] == NOW
    assert actual[-1]["gpu_hours"] == pytest.approx(5.0)
    even = [p for p in points if p["series"] == "even pace"]
    assert (even[0]["gpu_hours"], even[-1]["gpu_hours"]) == (10.0, 0.0)
    projected = [p for p in points if p["series"] == "projected"]
    # 5 GPU-h in 20.5 days: 5 more take another 20.5 days, past the period end -> stops there.
    assert projected[-1]["time"] == END
    assert projected[-1]["gpu_hours"] > 0


def test_cost_rows_sort_by_gpu_time_and_price_per_request() -> None:
    rows = cost_rows(
        report([row("a", 10, requests=4, cost=2.0), row("k1", 50), row("", 5)]),
        names={"k1": "prod-key"},
    )
    assert [r["group"] for r in rows] == ["prod-key", "a", "(no key)"]
    assert rows[1]["usd_per_request"] == 0.5
    assert rows[1]["usd_per_1k_requests"] == 500.0


def engine(**kw: Any) -> EngineUtilization:
    values: dict[str, Any] = {
        "engine": "h100-a",
        "registered": True,
        "gpu_type": "H100",
        "gpus": 1,
        "hourly_rate_usd": 2.0,
        "window_seconds": 3600.0,
        "capacity_gpu_seconds": 3600.0,
        "attributed_gpu_seconds": 360.0,
        "idle_gpu_seconds": 3240.0,
        "utilization": 0.1,
        "engine_cost_usd": 2.0,
        "attributed_cost_usd": 0.2,
        "cloud_cost_usd": 1.0,
        "cloud_usd_per_gpu_second": 1.0 / 360,
        "break_even_utilization": 0.2,
        "savings_usd": -1.0,
    }
    values.update(kw)
    return EngineUtilization(**values)


def test_break_even_verdicts() -> None:
    low = break_even_verdict(engine())
    assert low.level == "warning"
    assert "Low QPS with idle GPU — negative" in low.message
    assert "it would need 20.0%" in low.message
    assert "$1.00 more" in low.message
    assert "not be enough" in break_even_verdict(engine(break_even_utilization=3.0)).message
    good = break_even_verdict(engine(utilization=0.5, cloud_cost_usd=5.0, savings_usd=3.0))
    assert good.level == "success"
    assert "saved $3.00" in good.message
    idle = break_even_verdict(engine(attributed_gpu_seconds=0.0, utilization=0.0))
    assert idle.level == "warning"
    assert "did no work" in idle.message
    assert break_even_verdict(engine(break_even_utilization=None)).level == "info"
    assert break_even_verdict(engine(hourly_rate_usd=0.0)).level == "info"


def _row(group: str, ttft_p95: float | None, e2e_p95: float | None, **kw: Any) -> LatencyRow:
    def stats(p95: float | None) -> Percentiles:
        n = 0 if p95 is None else 100
        return Percentiles(count=n, p50_ms=p95 and p95 / 2, p95_ms=p95, p99_ms=p95 and p95 * 2)

    values: dict[str, Any] = {
        "group": group,
        "requests": 100,
        "ttft": stats(ttft_p95),
        "itl": stats(None),
        "e2e": stats(e2e_p95),
        "slo_ttft_ms": None,
        "slo_e2e_ms": None,
        "ttft_over_slo": None,
        "e2e_over_slo": None,
    }
    values.update(kw)
    return LatencyRow(**values)


def test_latency_rows_from_the_report() -> None:
    inside = OverSlo(estimate=0.08, at_least=0.05, at_most=0.1, exact=False)
    on_bound = OverSlo(estimate=0.02, at_least=0.02, at_most=0.02, exact=True)
    rows = [
        _row("chat", 400.0, 900.0, slo_ttft_ms=300.0, ttft_over_slo=inside),
        _row("batch", 50.0, 500.0),
        _row("search", 100.0, 2000.0, slo_ttft_ms=200.0, slo_e2e_ms=1000.0, e2e_over_slo=on_bound),
    ]
    report = LatencyReport(
        group_by="feature",
        start=None,
        end=None,
        bucket_bounds_ms=[1.0, 10.0],
        rows=rows,
        totals=_row("total", 400.0, 2000.0),
    )
    out = {r["feature"]: r for r in latency_rows(report)}
    chat = out["chat"]
    assert (chat["ttft_p50_ms"], chat["ttft_p95_ms"], chat["ttft_p99_ms"]) == (200, 400, 800)
    assert chat["itl_p95_ms"] is None
    assert chat["slo"] == "breached: TTFT"
    assert chat["ttft_over_slo"] == "≈8.0% (5.0%-10.0%)"
    assert chat["e2e_over_slo"] == "—"
    assert out["batch"]["slo"] == "no SLO"
    assert out["search"]["slo"] == "breached: e2e"
    assert out["search"]["e2e_over_slo"] == "2.0%"


def test_slo_verdict() -> None:
    assert slo_verdict(100.0, 200.0, 900.0, 1000.0) == "met"
    assert slo_verdict(300.0, 200.0, 1100.0, 1000.0) == "breached: TTFT, e2e"
    assert slo_verdict(None, 200.0, None, None) == "met"  # nothing measured, nothing breached
    assert slo_verdict(300.0, None, 1100.0, None) == "no SLO"


def test_formatting() -> None:
    assert fmt_hours(0.12345) == "0.123"
    assert fmt_hours(1234.5) == "1,234.5"
    assert fmt_usd(0.01234) == "$0.0123"
    assert fmt_usd(-1234.567) == "-$1,234.57"
    assert fmt_pct(0.356) == "35.6%"
    assert fmt_ms(None) == "—"
    assert fmt_ms(1234.4) == "1,234 ms"
    assert fmt_when(NOW - timedelta(minutes=1), NOW) == "already"
    assert fmt_when(NOW + timedelta(minutes=30), NOW) == "in 30 min"
    assert fmt_when(NOW + timedelta(hours=5), NOW) == "in 5.0 h"
    assert fmt_when(NOW + timedelta(days=3), NOW).startswith("in 3.0 days (2026-11-24 12:00")
