"""Cost: self-hosted cost against the cloud-equivalent cost of the same tokens, savings per
feature, cost per request and per 1,000 requests."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import ui
from dashboard.analysis import cost_rows, fmt_usd, per_request_usd


def render() -> None:
    client = ui.client()
    start, end, label = ui.window()
    report = client.cost("feature", start, end)
    t = report.totals
    if t.requests == 0:
        ui.first_request_hint()
        return

    per_req = per_request_usd(t) or 0.0
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Self-hosted cost", fmt_usd(t.cost_usd), help="attributed GPU-seconds x hourly rate")
    c2.metric("Cloud-equivalent", fmt_usd(t.cloud_cost_usd), help="same tokens at cloud prices")
    c3.metric(
        "Savings",
        fmt_usd(t.savings_usd),
        delta="cheaper than cloud" if t.savings_usd >= 0 else "cloud would be cheaper",
        delta_color="normal" if t.savings_usd >= 0 else "inverse",
        delta_arrow="off",
    )
    c4.metric("Per 1,000 requests", fmt_usd(per_req * 1000), help=f"{fmt_usd(per_req)} per request")
    if t.savings_usd < 0:
        st.warning(
            f"Over the {label.lower()}, serving these requests cost {fmt_usd(-t.savings_usd)} more "
            "than the cloud API would have charged for the same tokens."
        )

    rows = cost_rows(report)
    long = ui.chart_data(
        {"group": r["group"], "kind": kind, "value": r[column]}
        for r in rows
        for kind, column in (("self-hosted", "cost_usd"), ("cloud-equivalent", "cloud_cost_usd"))
    )
    st.subheader("Self-hosted against cloud, per feature")
    st.altair_chart(
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("group:N", title=None),
            xOffset="kind:N",
            y=alt.Y("value:Q", title="USD"),
            color=alt.Color(
                "kind:N",
                scale=alt.Scale(
                    domain=["self-hosted", "cloud-equivalent"], range=["#1f77b4", "#ff7f0e"]
                ),
                title=None,
            ),
            tooltip=["group:N", "kind:N", alt.Tooltip("value:Q", format="$,.4f", title="USD")],
        ),
        width="stretch",
    )

    st.subheader("Savings per feature")
    st.markdown(
        "  \n".join(
            f"**{r['group']}**: {fmt_usd(r['savings_usd'])} "
            f"({fmt_usd(r['usd_per_1k_requests'] or 0.0)} per 1,000 requests)"
            for r in rows
        )
    )
    st.altair_chart(
        alt.Chart(ui.chart_data(rows))
        .mark_bar()
        .encode(
            x=alt.X("savings_usd:Q", title="savings, USD (negative: cloud is cheaper)"),
            y=alt.Y("group:N", sort="-x", title=None),
            color=alt.condition(
                alt.datum.savings_usd >= 0, alt.value("#2e9e5b"), alt.value("#d64541")
            ),
            tooltip=[
                "group:N",
                alt.Tooltip("savings_usd:Q", format="$,.4f", title="savings"),
                alt.Tooltip("cost_usd:Q", format="$,.4f", title="self-hosted"),
                alt.Tooltip("cloud_cost_usd:Q", format="$,.4f", title="cloud"),
            ],
        ),
        width="stretch",
    )

    money = "$%.4f"
    ui.table(
        rows,
        {
            "group": "Feature",
            "requests": st.column_config.NumberColumn("Requests", format="%d"),
            "cost_usd": st.column_config.NumberColumn("Self-hosted", format=money),
            "cloud_cost_usd": st.column_config.NumberColumn("Cloud-equivalent", format=money),
            "savings_usd": st.column_config.NumberColumn("Savings", format=money),
            "usd_per_request": st.column_config.NumberColumn("Per request", format="$%.6f"),
            "usd_per_1k_requests": st.column_config.NumberColumn("Per 1,000", format=money),
        },
    )
    st.caption(
        "Self-hosted cost here is each request's attributed share of the GPU; time the GPU sat "
        "idle is not in it — see *Utilization & break-even* for the whole engine's cost."
    )


if __name__ == "__main__":
    st.title("Cost vs cloud")
    ui.live(render)
