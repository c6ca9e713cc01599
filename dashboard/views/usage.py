"""Usage: requests, tokens and GPU-hours by feature, model and key over a chosen time range."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import altair as alt
import streamlit as st

from dashboard import ui
from dashboard.analysis import cost_rows, fmt_hours, fmt_pct

GROUPS: dict[str, Literal["feature", "model", "key"]] = {
    "Feature": "feature",
    "Model": "model",
    "Key": "key",
}
MEASURES = {"GPU-hours": "gpu_hours", "Requests": "requests", "Tokens": "tokens"}
TOP_TREND = 5  # features drawn separately in the daily trend; the rest are summed as "other"


def _trend(start: datetime, end: datetime, features: list[str]) -> alt.Data:
    """GPU-hours per UTC day for the top features, the rest summed as "other"."""
    client = ui.client()
    per_day: dict[tuple[str, str], float] = {}
    for feature in features:
        for r in client.cost("day", start, end, feature=feature).rows:
            per_day[(r.group, feature)] = r.gpu_hours
    for r in client.cost("day", start, end).rows:
        shown = sum(v for (day, _), v in per_day.items() if day == r.group)
        if r.gpu_hours - shown > 1e-9:
            per_day[(r.group, "other")] = r.gpu_hours - shown
    return ui.chart_data(
        {"day": day, "feature": f, "gpu_hours": v} for (day, f), v in per_day.items()
    )


def render() -> None:
    client = ui.client()
    start, end, label = ui.window()
    by_feature = client.cost("feature", start, end)
    totals = by_feature.totals
    if totals.requests == 0:
        ui.first_request_hint()
        return

    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Requests", f"{totals.requests:,}", help=label)
    c2.metric(
        "Tokens",
        f"{totals.input_tokens + totals.output_tokens:,}",
        help=f"{totals.input_tokens:,} in ({totals.cached_input_tokens:,} cached), "
        f"{totals.output_tokens:,} out",
    )
    c3.metric("GPU-hours", fmt_hours(totals.gpu_hours))
    c4.metric("Error rate", fmt_pct(totals.errors / totals.requests))

    st.subheader("Top features")
    top = sorted(by_feature.rows, key=lambda r: r.gpu_seconds, reverse=True)
    share = totals.gpu_seconds or 1.0
    st.markdown(
        "  \n".join(
            f"**{i}. {r.group}** — {fmt_hours(r.gpu_hours)} GPU-h "
            f"({fmt_pct(r.gpu_seconds / share)}), {r.requests:,} requests"
            for i, r in enumerate(top[:5], start=1)
        )
    )

    left, right = st.columns(2)
    group_label = left.radio("Group by", list(GROUPS), horizontal=True, key="usage_group")
    measure_label = right.radio("Measure", list(MEASURES), horizontal=True, key="usage_measure")
    group = GROUPS[group_label or "Feature"]
    measure = MEASURES[measure_label or "GPU-hours"]
    report = by_feature if group == "feature" else client.cost(group, start, end)
    names = {k.id: k.name for k in client.api_keys()} if group == "key" else {}
    rows = cost_rows(report, names)
    for r in rows:
        r["tokens"] = r["input_tokens"] + r["output_tokens"]
    chart = (
        alt.Chart(ui.chart_data(rows))
        .mark_bar()
        .encode(
            x=alt.X(f"{measure}:Q", title=measure_label),
            y=alt.Y("group:N", sort="-x", title=group_label),
            tooltip=[
                alt.Tooltip("group:N", title=group_label),
                alt.Tooltip("requests:Q", format=","),
                alt.Tooltip("input_tokens:Q", format=",", title="input tokens"),
                alt.Tooltip("output_tokens:Q", format=",", title="output tokens"),
                alt.Tooltip("gpu_hours:Q", format=",.3f", title="GPU-hours"),
                alt.Tooltip("errors:Q", format=","),
            ],
        )
    )
    st.altair_chart(chart, width="stretch")

    st.subheader("GPU-hours per day")
    trend = _trend(start, end, [r.group for r in top[:TOP_TREND]])
    st.altair_chart(
        alt.Chart(trend)
        .mark_bar()
        .encode(
            x=alt.X("day:O", title=None),
            y=alt.Y("sum(gpu_hours):Q", title="GPU-hours"),
            color=alt.Color("feature:N"),
            tooltip=["day:O", "feature:N", alt.Tooltip("gpu_hours:Q", format=",.3f")],
        ),
        width="stretch",
    )

    ui.table(
        rows,
        {
            "group": group_label,
            "requests": st.column_config.NumberColumn("Requests", format="%d"),
            "errors": st.column_config.NumberColumn("Errors", format="%d"),
            "input_tokens": st.column_config.NumberColumn("Input tokens", format="%d"),
            "output_tokens": st.column_config.NumberColumn("Output tokens", format="%d"),
            "gpu_hours": st.column_config.NumberColumn("GPU-hours", format="%.4f"),
        },
    )


if __name__ == "__main__":
    st.title("Usage")
    ui.live(render)
