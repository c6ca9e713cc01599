"""Pure computations behind the pages: budget outlook, burn-down, latency rows and SLO verdicts,
the break-even verdict and number formatting. No Streamlit here, so all of it is unit-testable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from control_plane.budgets.schemas import BudgetOut
from control_plane.reports.schemas import (
    CostReport,
    CostRow,
    EngineUtilization,
    LatencyReport,
    OverSlo,
)

DAY = 86_400.0

# --- formatting -------------------------------------------------------------------------------


def fmt_hours(gpu_hours: float) -> str:
    return f"{gpu_hours:,.3f}" if abs(gpu_hours) < 100 else f"{gpu_hours:,.1f}"


def fmt_usd(usd: float) -> str:
    sign = "-" if usd < 0 else ""
    value = abs(usd)
    return f"{sign}${value:,.4f}" if value < 1 else f"{sign}${value:,.2f}"


def fmt_pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def fmt_ms(ms: float | None) -> str:
    return "—" if ms is None or math.isnan(ms) else f"{ms:,.0f} ms"


def fmt_when(moment: datetime, now: datetime) -> str:
    delta = (moment - now).total_seconds()
    if delta < 0:
        return "already"
    if delta < 3600:
        return f"in {delta / 60:.0f} min"
    if delta < 2 * DAY:
        return f"in {delta / 3600:.1f} h"
    return f"in {delta / DAY:.1f} days ({moment:%Y-%m-%d %H:%M} UTC)"


# --- budgets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetOutlook:
    feature: str
    used_gpu_hours: float
    limit_gpu_hours: float
    used_ratio: float
    burn_gpu_hours_per_day: float
    projected_exhaustion: datetime | None  # None: not at this burn rate
    exhausts_before_period_end: bool
    status: Literal["ok", "soft_threshold", "exhausted"]


def budget_outlook(budget: BudgetOut, recent_gpu_seconds: float, now: datetime) -> BudgetOutlook:
    """Burn rate is the last 24 hours' GPU time (what matters for "will it last"); when the period
    is younger than a day, the period's own average (24 hours of a 3-hour-old period would
    under-count)."""
    elapsed = max((now - budget.period_start).total_seconds(), 1.0)
    per_day = budget.used_gpu_seconds / elapsed * DAY if elapsed < DAY else recent_gpu_seconds
    remaining = max(budget.limit_gpu_seconds - budget.used_gpu_seconds, 0.0)
    projected: datetime | None
    if remaining <= 0:
        projected = now
    elif per_day > 0:
        projected = now + timedelta(days=remaining / per_day)
    else:
        projected = None
    return BudgetOutlook(
        feature=budget.feature,
        used_gpu_hours=budget.used_gpu_seconds / 3600,
        limit_gpu_hours=budget.limit_gpu_hours,
        used_ratio=budget.used_ratio,
        burn_gpu_hours_per_day=per_day / 3600,
        projected_exhaustion=projected,
        exhausts_before_period_end=projected is not None and projected <= budget.period_end,
        status=budget.status,
    )


def burndown(budget: BudgetOut, daily: CostReport, now: datetime) -> list[dict[str, Any]]:
    """Rows for a burn-down chart: remaining GPU-hours at the end of each day so far ("actual"),
    the even-spend line from the limit to zero at period end ("even pace"), and a straight
    projection from now at the average pace so far ("projected")."""
    limit_h = budget.limit_gpu_hours
    start, end = budget.period_start, budget.period_end
    rows: list[dict[str, Any]] = [
        {"time": start, "series": "even pace", "gpu_hours": limit_h},
        {"time": end, "series": "even pace", "gpu_hours": 0.0},
        {"time": start, "series": "actual", "gpu_hours": limit_h},
    ]
    used_by_day = {r.group: r.gpu_hours for r in daily.rows}
    used = 0.0
    day = datetime(start.year, start.month, start.day, tzinfo=start.tzinfo)
    while day < min(now, end):
        used += used_by_day.get(day.strftime("%Y-%m-%d"), 0.0)
        point = min(day + timedelta(days=1), now, end)
        rows.append({"time": point, "series": "actual", "gpu_hours": limit_h - used})
        day += timedelta(days=1)
    elapsed = (min(now, end) - start).total_seconds()
    if used > 0 and elapsed > 0 and now < end:
        rate = used / elapsed  # GPU-hours per second so far
        rows.append({"time": now, "series": "projected", "gpu_hours": limit_h - used})
        left = limit_h - used
        hits_zero = now + timedelta(seconds=left / rate) if left > 0 else now
        stop = min(hits_zero, end)
        rows.append(
            {
                "time": stop,
                "series": "projected",
                "gpu_hours": limit_h - used - rate * (stop - now).total_seconds(),
            }
        )
    return rows


# --- cost -------------------------------------------------------------------------------------


def per_request_usd(row: CostRow) -> float | None:
    return row.cost_usd / row.requests if row.requests else None


def cost_rows(report: CostReport, names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Table rows for a cost report; `names` maps group ids (key ids) to readable names."""
    names = names or {}
    out: list[dict[str, Any]] = []
    for r in sorted(report.rows, key=lambda r: r.gpu_seconds, reverse=True):
        per_req = per_request_usd(r)
        out.append(
            {
                "group": names.get(r.group, r.group) or "(no key)",
                "requests": r.requests,
                "errors": r.errors,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "gpu_hours": r.gpu_hours,
                "cost_usd": r.cost_usd,
                "cloud_cost_usd": r.cloud_cost_usd,
                "savings_usd": r.savings_usd,
                "usd_per_request": per_req,
                "usd_per_1k_requests": per_req * 1000 if per_req is not None else None,
            }
        )
    return out


# --- utilization ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    level: Literal["success", "warning", "info"]
    message: str


def break_even_verdict(e: EngineUtilization) -> Verdict:
    hours = e.window_seconds / 3600
    if e.hourly_rate_usd <= 0:
        return Verdict("info", f"**{e.engine}** has no hourly rate configured, so its cost is $0.")
    if e.attributed_gpu_seconds <= 0:
        return Verdict(
            "warning",
            f"**Low QPS with idle GPU — negative.** **{e.engine}** did no work in the last "
            f"{hours:,.1f} h but cost {fmt_usd(e.engine_cost_usd)}.",
        )
    if e.break_even_utilization is None:
        return Verdict(
            "info",
            f"**{e.engine}**: its requests carry no cloud-equivalent price, so the break-even "
            "utilization cannot be computed (configure the sidecar's cloud price table).",
        )
    if e.utilization < e.break_even_utilization:
        need = (
            f"it would need {fmt_pct(e.break_even_utilization)}"
            if e.break_even_utilization <= 1
            else "even 100% busy would not be enough"
        )
        return Verdict(
            "warning",
            f"**Low QPS with idle GPU — negative.** **{e.engine}** is busy "
            f"{fmt_pct(e.utilization)} of the time; {need} to beat the cloud price. Over this "
            f"window it cost {fmt_usd(e.engine_cost_usd)} against {fmt_usd(e.cloud_cost_usd)} "
            f"on the cloud ({fmt_usd(-e.savings_usd)} more).",
        )
    return Verdict(
        "success",
        f"**{e.engine}** is busy {fmt_pct(e.utilization)} of the time, above its break-even "
        f"{fmt_pct(e.break_even_utilization)}: self-hosting saved {fmt_usd(e.savings_usd)} "
        "over this window.",
    )


# --- latency ----------------------------------------------------------------------------------


def slo_verdict(
    ttft_p95: float | None, slo_ttft: float | None, e2e_p95: float | None, slo_e2e: float | None
) -> str:
    """ "no SLO", "met", or "breached: <what>" when a P95 is above its SLO."""
    if slo_ttft is None and slo_e2e is None:
        return "no SLO"
    misses = [
        name
        for name, p95, slo in (("TTFT", ttft_p95, slo_ttft), ("e2e", e2e_p95, slo_e2e))
        if slo is not None and p95 is not None and p95 > slo
    ]
    return "breached: " + ", ".join(misses) if misses else "met"


def fmt_share(over: OverSlo | None) -> str:
    """Share of requests over an SLO; with its possible range when the SLO is inside a bucket."""
    if over is None:
        return "—"
    if over.exact:
        return fmt_pct(over.estimate)
    return f"≈{fmt_pct(over.estimate)} ({fmt_pct(over.at_least)}-{fmt_pct(over.at_most)})"


def latency_rows(report: LatencyReport) -> list[dict[str, Any]]:
    """Table rows for the latency report: percentiles per group, SLOs, the share over them."""
    rows: list[dict[str, Any]] = []
    for r in report.rows:
        row: dict[str, Any] = {"feature": r.group, "requests": r.requests}
        for key in ("ttft", "itl", "e2e"):
            stats = getattr(r, key)
            for pct in ("p50", "p95", "p99"):
                row[f"{key}_{pct}_ms"] = getattr(stats, f"{pct}_ms")
        row |= {
            "slo_ttft_ms": r.slo_ttft_ms,
            "slo_e2e_ms": r.slo_e2e_ms,
            "ttft_over_slo": fmt_share(r.ttft_over_slo),
            "e2e_over_slo": fmt_share(r.e2e_over_slo),
            "slo": slo_verdict(r.ttft.p95_ms, r.slo_ttft_ms, r.e2e.p95_ms, r.slo_e2e_ms),
        }
        rows.append(row)
    return rows
