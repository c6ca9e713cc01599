"""Utilization and break-even: engine busy against idle GPU time, and the utilization above
which self-hosting beats the cloud price of the same work."""

from __future__ import annotations

import altair as alt
import streamlit as st

from control_plane.prefix_cache.schemas import PrefixCacheReport
from dashboard import ui
from dashboard.analysis import break_even_verdict, fmt_hours, fmt_pct, fmt_usd

SHOW = {"success": st.success, "warning": st.warning, "info": st.info}


def render() -> None:
    client = ui.client()
    start, end, label = ui.window()
    report = client.utilization(start, end)
    if not report.engines:
        st.info(
            "**No engines registered and no usage yet.** Register the engine behind the sidecar "
            "with its hourly price to see its utilization and break-even point:",
            icon=":material/balance:",
        )
        st.code(
            f"curl -X PUT {ui.settings().control_plane_url}/api/v1/engines/<name> \\\n"
            '  -H "Authorization: Bearer $GPULEDGER_ADMIN_TOKEN" -H "content-type: application/json" \\\n'
            '  -d \'{"url": "http://127.0.0.1:8000", "gpu_type": "H100", "gpus": 1, '
            '"hourly_rate_usd": 2.49}\'',
            language="bash",
        )
        return

    for e in report.engines:
        verdict = break_even_verdict(e)
        SHOW[verdict.level](verdict.message)

    cols = st.columns(min(len(report.engines), 4))
    for i, e in enumerate(report.engines):
        be = fmt_pct(e.break_even_utilization) if e.break_even_utilization is not None else "n/a"
        cols[i % len(cols)].metric(
            f"{e.engine} utilization",
            fmt_pct(e.utilization),
            delta=f"break-even {be}",
            delta_color="off",
            delta_arrow="off",
            border=True,
            help=f"{e.gpus} x {e.gpu_type or '?'} at ${e.hourly_rate_usd:,.2f}/h; "
            f"engine cost {fmt_usd(e.engine_cost_usd)} vs cloud {fmt_usd(e.cloud_cost_usd)} "
            f"({label.lower()}).",
        )

    frame = ui.chart_data(
        {"engine": e.engine, "state": state, "gpu_hours": seconds / 3600}
        for e in report.engines
        for state, seconds in (("busy", e.attributed_gpu_seconds), ("idle", e.idle_gpu_seconds))
    )
    st.subheader("Busy against idle GPU time")
    st.altair_chart(
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("sum(gpu_hours):Q", title=f"GPU-hours ({label.lower()})"),
            y=alt.Y("engine:N", title=None),
            color=alt.Color(
                "state:N", scale=alt.Scale(domain=["busy", "idle"], range=["#1f77b4", "#cccccc"])
            ),
            tooltip=["engine:N", "state:N", alt.Tooltip("gpu_hours:Q", format=",.3f")],
        ),
        width="stretch",
    )

    ratios = [
        {
            "engine": e.engine,
            "utilization_pct": e.utilization * 100,
            "break_even_pct": (e.break_even_utilization or 0) * 100,
        }
        for e in report.engines
    ]
    st.subheader("Utilization against break-even")
    bars = (
        alt.Chart(ui.chart_data(ratios))
        .mark_bar(color="#1f77b4")
        .encode(
            x=alt.X(
                "utilization_pct:Q",
                title="% of GPU time busy",
                scale=alt.Scale(domain=[0, 100], clamp=True),
            ),
            y=alt.Y("engine:N", title=None),
            tooltip=[
                "engine:N",
                alt.Tooltip("utilization_pct:Q", format=".2f", title="utilization %"),
                alt.Tooltip("break_even_pct:Q", format=".2f", title="break-even %"),
            ],
        )
    )
    ticks = (
        alt.Chart(
            ui.chart_data(
                {"engine": e.engine, "break_even_pct": e.break_even_utilization * 100}
                for e in report.engines
                # Beyond 100% the tick would stretch the axis; the verdict above says it.
                if e.break_even_utilization is not None and e.break_even_utilization <= 1
            )
        )
        .mark_tick(color="#d64541", thickness=3, size=30)
        .encode(
            x="break_even_pct:Q",
            y="engine:N",
            tooltip=[
                "engine:N",
                alt.Tooltip("break_even_pct:Q", format=".2f", title="break-even %"),
            ],
        )
    )
    st.altair_chart(bars + ticks, width="stretch")
    st.caption(
        "Red tick: the utilization at which the engine's hourly cost equals the cloud price of "
        "the work it did; to its right self-hosting is cheaper (none: not reachable below "
        "100%, or no cloud prices). Idle time assumes the engine "
        "was up for the whole window (its real up-time is in Prometheus, `gpuledger_engine_up`)."
    )

    ui.table(
        [e.model_dump() for e in report.engines],
        {
            "engine": "Engine",
            "gpu_type": "GPU",
            "gpus": st.column_config.NumberColumn("GPUs", format="%d"),
            "hourly_rate_usd": st.column_config.NumberColumn("$/hour", format="$%.2f"),
            "utilization": st.column_config.NumberColumn("Utilization", format="percent"),
            "break_even_utilization": st.column_config.NumberColumn("Break-even", format="percent"),
            "engine_cost_usd": st.column_config.NumberColumn("Engine cost", format="$%.4f"),
            "cloud_cost_usd": st.column_config.NumberColumn("Cloud cost", format="$%.4f"),
            "savings_usd": st.column_config.NumberColumn("Savings", format="$%.4f"),
        },
    )

    _prefix_cache(client.prefix_cache(start, end))


def _prefix_cache(report: PrefixCacheReport) -> None:
    st.subheader("Prefix cache: prompt openings")
    if not report.rows:
        st.caption(
            "No prompt openings reported in this window (sidecars report them with each request)."
        )
        return
    for r in report.rows:
        if r.unstable:
            st.warning(
                f"**{r.feature}**: {fmt_pct(r.unstable_ratio)} of its prompts open differently, "
                "so vLLM's prefix cache cannot reuse the static text behind the opening: about "
                f"{fmt_hours(r.wasted_prefill_gpu_seconds / 3600)} GPU-hours of prefill "
                f"({fmt_usd(r.wasted_prefill_usd)}) wasted. {r.advice}",
                icon=":material/cached:",
            )
    ui.table(
        [r.model_dump() for r in report.rows],
        {
            "feature": "Feature",
            "requests": st.column_config.NumberColumn("Requests", format="%d"),
            "unstable_ratio": st.column_config.NumberColumn("New openings", format="percent"),
            "observed_cache_hit_ratio": st.column_config.NumberColumn(
                "Cache hits (vLLM)", format="percent"
            ),
            "wasted_prefill_gpu_seconds": st.column_config.NumberColumn(
                "Wasted prefill GPU-s", format="%.2f"
            ),
            "wasted_prefill_usd": st.column_config.NumberColumn("Wasted", format="$%.4f"),
        },
    )
    st.caption(
        "New openings: the share of requests whose first 256 bytes their sidecar had not seen "
        "among the feature's last 200. Wasted prefill is an upper bound (whole KV blocks of "
        "those prompts)."
    )


if __name__ == "__main__":
    st.title("Utilization & break-even")
    ui.live(render)
