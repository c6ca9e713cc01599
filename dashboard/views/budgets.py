"""Budgets: per feature, GPU-hours used against this period's limit, burn rate, projected
exhaustion, soft/hard status and a burn-down chart."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import streamlit as st

from dashboard import ui
from dashboard.analysis import BudgetOutlook, budget_outlook, burndown, fmt_hours, fmt_when

STATUS_COLORS = alt.Scale(
    domain=["ok", "soft_threshold", "exhausted"], range=["#2e9e5b", "#e8a317", "#d64541"]
)
STATUS_WORDS = {"ok": "OK", "soft_threshold": "soft threshold", "exhausted": "EXHAUSTED"}


def _banner(o: BudgetOutlook, hard_action: str, now_label: str) -> None:
    if o.status == "exhausted":
        st.error(
            f"**{o.feature}** has used its whole budget ({fmt_hours(o.used_gpu_hours)} of "
            f"{fmt_hours(o.limit_gpu_hours)} GPU-h); new requests get `{hard_action}`."
        )
    elif o.status == "soft_threshold":
        st.warning(
            f"**{o.feature}** passed its soft threshold: {o.used_ratio:.0%} of the budget used."
        )
    elif o.exhausts_before_period_end and o.projected_exhaustion is not None:
        st.warning(
            f"**{o.feature}** is on pace to run out {now_label}"
            f" at {o.burn_gpu_hours_per_day:.3f} GPU-h/day."
        )


def render() -> None:
    client, now = ui.client(), ui.now()
    budgets = client.budgets()
    if not budgets:
        st.info(
            "**No budgets yet.** Give a feature a monthly GPU-hour limit and its spend shows up "
            "here (admin token required):",
            icon=":material/savings:",
        )
        st.code(
            f"curl -X PUT {ui.settings().control_plane_url}/api/v1/budgets/<feature> \\\n"
            '  -H "Authorization: Bearer $GPULEDGER_ADMIN_TOKEN" -H "content-type: application/json" \\\n'
            '  -d \'{"period": "month", "gpu_hours": 10, "soft_threshold_pct": 80}\'',
            language="bash",
        )
        return
    last_day = client.cost("feature", now - timedelta(days=1), now)
    recent = {r.group: r.gpu_seconds for r in last_day.rows}
    outlooks = {b.feature: budget_outlook(b, recent.get(b.feature, 0.0), now) for b in budgets}

    for b in budgets:
        o = outlooks[b.feature]
        when = fmt_when(o.projected_exhaustion, now) if o.projected_exhaustion else ""
        _banner(o, b.hard_action, when)

    cols = st.columns(min(len(budgets), 4))
    for i, b in enumerate(budgets):
        o = outlooks[b.feature]
        projection = (
            fmt_when(o.projected_exhaustion, now)
            if o.projected_exhaustion
            else "not at the current pace"
        )
        cols[i % len(cols)].metric(
            f"{b.feature} · {STATUS_WORDS[o.status]}",
            f"{fmt_hours(o.used_gpu_hours)} / {fmt_hours(o.limit_gpu_hours)}",
            f"GPU-h · burning {o.burn_gpu_hours_per_day:.3f}/day",
            delta_color="off",
            delta_arrow="off",
            border=True,
            help=f"{b.period} budget, {b.period_start:%Y-%m-%d %H:%M} → "
            f"{b.period_end:%Y-%m-%d %H:%M} UTC. Runs out: {projection}.",
        )

    frame = ui.chart_data(
        [
            {
                "feature": b.feature,
                "used_gpu_hours": outlooks[b.feature].used_gpu_hours,
                "limit_gpu_hours": b.limit_gpu_hours,
                "used_pct": b.used_ratio * 100,
                "status": b.status,
            }
            for b in budgets
        ]
    )
    base = alt.Chart(frame).encode(y=alt.Y("feature:N", title=None))
    limit = base.mark_bar(color="#dddddd").encode(
        x=alt.X("limit_gpu_hours:Q", title="GPU-hours this period")
    )
    used = base.mark_bar().encode(
        x="used_gpu_hours:Q",
        color=alt.Color("status:N", scale=STATUS_COLORS, legend=alt.Legend(title="status")),
        tooltip=[
            "feature:N",
            alt.Tooltip("used_gpu_hours:Q", format=",.3f", title="used GPU-h"),
            alt.Tooltip("limit_gpu_hours:Q", format=",.3f", title="limit GPU-h"),
            alt.Tooltip("used_pct:Q", format=".1f", title="used %"),
            "status:N",
        ],
    )
    st.subheader("Used against limit")
    st.altair_chart(limit + used, width="stretch")

    st.subheader("Burn-down")
    feature = st.selectbox("Feature", [b.feature for b in budgets], key="burndown_feature")
    budget = next(b for b in budgets if b.feature == feature)
    daily = client.cost("day", budget.period_start, now, feature=feature)
    points = ui.chart_data(burndown(budget, daily, now))
    chart = (
        alt.Chart(points)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("gpu_hours:Q", title="GPU-hours remaining"),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(
                    domain=["actual", "even pace", "projected"],
                    range=["#1f77b4", "#aaaaaa", "#d64541"],
                ),
            ),
            strokeDash=alt.StrokeDash(
                "series:N",
                scale=alt.Scale(
                    domain=["actual", "even pace", "projected"], range=[[1, 0], [4, 4], [2, 2]]
                ),
                legend=None,
            ),
            tooltip=[
                "series:N",
                alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("gpu_hours:Q", format=",.3f", title="GPU-h remaining"),
            ],
        )
    )
    st.altair_chart(chart, width="stretch")

    ui.table(
        [
            {
                "feature": b.feature,
                "period": b.period,
                "used": outlooks[b.feature].used_gpu_hours,
                "limit": b.limit_gpu_hours,
                "used_pct": b.used_ratio * 100,
                "burn": outlooks[b.feature].burn_gpu_hours_per_day,
                "runs_out": outlooks[b.feature].projected_exhaustion,
                "status": STATUS_WORDS[b.status],
                "hard_action": b.hard_action,
                "period_end": b.period_end,
            }
            for b in budgets
        ],
        {
            "feature": "Feature",
            "period": "Period",
            "used": st.column_config.NumberColumn("Used GPU-h", format="%.3f"),
            "limit": st.column_config.NumberColumn("Limit GPU-h", format="%.3f"),
            "used_pct": st.column_config.ProgressColumn(
                "Used", format="%.1f%%", min_value=0, max_value=100
            ),
            "burn": st.column_config.NumberColumn("Burn GPU-h/day", format="%.3f"),
            "runs_out": st.column_config.DatetimeColumn(
                "Projected exhaustion", format="YYYY-MM-DD HH:mm"
            ),
            "status": "Status",
            "hard_action": "When exhausted",
            "period_end": st.column_config.DatetimeColumn("Period ends", format="YYYY-MM-DD"),
        },
    )


if __name__ == "__main__":
    st.title("Budgets")
    ui.live(render)
