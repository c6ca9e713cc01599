"""Latency and health: P50/P95/P99 TTFT, inter-token latency and e2e per feature against SLOs,
KV-cache usage and active alerts. The control plane's latency report (summed per-minute
histograms) covers the whole range; when Prometheus is configured, the sidecars' own histograms,
the engine gauges and firing alerts too."""

from __future__ import annotations

from typing import Any

import altair as alt
import streamlit as st

from dashboard import ui
from dashboard.analysis import fmt_ms, fmt_pct, latency_rows, slo_verdict
from dashboard.prometheus import (
    ENGINE_GAUGES,
    LATENCY_HISTOGRAMS,
    PrometheusClient,
    PrometheusUnavailable,
    quantile_expr,
)

ALERT_WORDS = {"soft_threshold": "soft threshold crossed", "budget_exhausted": "budget exhausted"}
KV_WARN = 0.85  # the same threshold as the GpuledgerKvCacheHigh alert rule
# Prometheus' table has P50/P95; the ledger's adds P99 and the share of requests over the SLO.
MS_COLUMNS = {
    "ttft_p50_ms": ("TTFT P50 ms", "%.0f"),
    "ttft_p95_ms": ("TTFT P95 ms", "%.0f"),
    "ttft_p99_ms": ("TTFT P99 ms", "%.0f"),
    "slo_ttft_ms": ("TTFT SLO ms", "%.0f"),
    "itl_p50_ms": ("ITL P50 ms", "%.1f"),
    "itl_p95_ms": ("ITL P95 ms", "%.1f"),
    "itl_p99_ms": ("ITL P99 ms", "%.1f"),
    "e2e_p50_ms": ("e2e P50 ms", "%.0f"),
    "e2e_p95_ms": ("e2e P95 ms", "%.0f"),
    "e2e_p99_ms": ("e2e P99 ms", "%.0f"),
    "slo_e2e_ms": ("e2e SLO ms", "%.0f"),
}
SHARE_COLUMNS = {"ttft_over_slo": "TTFT over SLO", "e2e_over_slo": "e2e over SLO"}


def _alerts(prom: PrometheusClient | None) -> None:
    st.subheader("Active alerts")
    alerts = ui.client().alerts(active=True)
    firing = []
    if prom is not None:
        try:
            firing = prom.firing_alerts()
        except PrometheusUnavailable as exc:
            st.warning(f"Prometheus alerts could not be read: {exc}")
    if not alerts and not firing:
        st.success("No active alerts: every budget is below its soft threshold.")
        return
    # An exhausted budget also crossed its soft threshold; one line per feature is enough.
    exhausted = {a.feature for a in alerts if a.kind == "budget_exhausted"}
    for a in alerts:
        if a.kind == "soft_threshold" and a.feature in exhausted:
            continue
        show = st.error if a.kind == "budget_exhausted" else st.warning
        show(
            f"**{a.feature}** — {ALERT_WORDS.get(a.kind, a.kind)} "
            f"({a.used_gpu_seconds / 3600:,.3f} of {a.limit_gpu_seconds / 3600:,.3f} GPU-h) · "
            f"since {a.created_at:%Y-%m-%d %H:%M} UTC. {a.message}"
        )
    for f in firing:
        where = f.labels.get("engine") or f.labels.get("feature") or f.labels.get("instance", "")
        st.error(f"**{f.name}** ({where}) — firing in Prometheus. {f.summary}")


def _chart(rows: list[dict[str, Any]]) -> None:
    long = ui.chart_data(
        {"feature": r["feature"], "metric": metric, "percentile": pct, "ms": r[f"{key}_{pct}_ms"]}
        for metric, key in (("TTFT", "ttft"), ("inter-token", "itl"), ("e2e", "e2e"))
        for pct in ("p50", "p95", "p99")
        for r in rows
    )
    st.altair_chart(
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("feature:N", title=None),
            xOffset="percentile:N",
            y=alt.Y("ms:Q", title="milliseconds"),
            color=alt.Color("percentile:N"),
            column=alt.Column("metric:N", title=None, sort=["TTFT", "inter-token", "e2e"]),
            tooltip=["feature:N", "metric:N", "percentile:N", alt.Tooltip("ms:Q", format=",.1f")],
        )
        .resolve_scale(y="independent")
    )


def _table(rows: list[dict[str, Any]]) -> None:
    columns: dict[str, Any] = {"feature": "Feature"}
    if "requests" in rows[0]:
        columns["requests"] = st.column_config.NumberColumn("Requests", format="%d")
    for key, (label, fmt) in MS_COLUMNS.items():
        if key in rows[0]:
            columns[key] = st.column_config.NumberColumn(label, format=fmt)
    columns |= {key: label for key, label in SHARE_COLUMNS.items() if key in rows[0]}
    columns["slo"] = "SLO at P95"
    ui.table(rows, columns)


def _prometheus_latency(prom: PrometheusClient, window_s: int) -> list[dict[str, Any]]:
    """Per-feature P50/P95 from the sidecars' histograms, with SLOs from the control plane."""
    values: dict[str, dict[str, float]] = {}
    pcts = (("p50", 0.5), ("p95", 0.95))
    for key, metric in LATENCY_HISTOGRAMS.items():
        for pct, q in pcts:
            for feature, seconds in prom.by_label(
                quantile_expr(metric, q, window_s), "feature"
            ).items():
                values.setdefault(feature, {})[f"{key}_{pct}_ms"] = seconds * 1000
    slos = {f.name: f for f in ui.client().features()}
    rows = []
    for feature in sorted(values):
        f = slos.get(feature)
        row: dict[str, Any] = {
            "feature": feature,
            **{f"{key}_{pct}_ms": None for key in LATENCY_HISTOGRAMS for pct, _ in pcts},
            **values[feature],
        }
        row["slo_ttft_ms"] = f.slo_ttft_ms if f else None
        row["slo_e2e_ms"] = f.slo_e2e_ms if f else None
        row["slo"] = slo_verdict(
            row["ttft_p95_ms"], row["slo_ttft_ms"], row["e2e_p95_ms"], row["slo_e2e_ms"]
        )
        rows.append(row)
    return rows


def _latency(prom: PrometheusClient | None) -> None:
    client = ui.client()
    start, end, label = ui.window()
    st.subheader("Latency per feature")
    if prom is not None:
        try:
            prom_rows = _prometheus_latency(prom, int((end - start).total_seconds()))
        except PrometheusUnavailable as exc:
            st.warning(f"Prometheus latency histograms could not be read: {exc}")
            prom_rows = []
        if prom_rows:
            st.caption(
                f"From the sidecars' histograms in Prometheus over the {label.lower()} "
                "(bucket-interpolated; inter-token latency is each request's mean gap)."
            )
            _table(prom_rows)
    report = client.latency(start, end)
    if not report.rows:
        if client.cost("feature", start, end).totals.requests:
            st.info(
                "No latency histograms in this range: its requests all failed, or they were "
                "ingested before the control plane kept latency histograms (migration 0003)."
            )
        else:
            ui.first_request_hint()
        return
    rows = latency_rows(report)
    st.caption(
        f"From the control plane's latency report over the {label.lower()}: every successful "
        f"request ({report.totals.requests:,}), summed from per-minute histograms, so a "
        f"percentile is accurate to its bucket ({len(report.bucket_bounds_ms)} buckets, "
        f"{report.bucket_bounds_ms[0]:g} ms to {report.bucket_bounds_ms[-1] / 1000:g} s, "
        "~1.5x apart). Inter-token latency is each request's mean gap, (e2e - TTFT) / "
        "(output tokens - 1); the share over an SLO shows its possible range when the SLO "
        "falls inside a bucket."
    )
    cols = st.columns(min(len(rows), 4))
    for i, r in enumerate(rows):
        slo = f"SLO {fmt_ms(r['slo_ttft_ms'])}" if r["slo_ttft_ms"] is not None else "no TTFT SLO"
        breached = r["slo"].startswith("breached")
        cols[i % len(cols)].metric(
            f"{r['feature']} · P95 TTFT",
            fmt_ms(r["ttft_p95_ms"]),
            delta=f"{slo} · {r['slo']}",
            delta_color="inverse" if breached else "off",
            delta_arrow="off",
            border=True,
            help=f"P50 {fmt_ms(r['ttft_p50_ms'])}, P99 {fmt_ms(r['ttft_p99_ms'])}, over SLO "
            f"{r['ttft_over_slo']}; e2e P50 {fmt_ms(r['e2e_p50_ms'])}, "
            f"P95 {fmt_ms(r['e2e_p95_ms'])}, P99 {fmt_ms(r['e2e_p99_ms'])}",
        )
    for r in rows:
        if r["slo"].startswith("breached"):
            st.warning(f"**{r['feature']}** misses its SLO at P95 ({r['slo'][10:]}).")
    _chart(rows)
    _table(rows)


def _engines(prom: PrometheusClient | None) -> None:
    st.subheader("Engines: KV-cache and queue")
    if prom is None:
        st.info(
            "KV-cache usage is not in the control plane. Each sidecar exports it as "
            "`gpuledger_engine_kv_cache_usage_ratio{engine}` (with running/waiting requests); "
            "set `GPULEDGER_DASHBOARD_PROMETHEUS_URL` to the Prometheus scraping the sidecars "
            "to see it here."
        )
        return
    try:
        gauges = {name: prom.by_label(expr, "engine") for name, expr in ENGINE_GAUGES.items()}
    except PrometheusUnavailable as exc:
        st.warning(f"Prometheus at `{prom.base_url}` could not be read: {exc}")
        return
    engines = sorted({e for values in gauges.values() for e in values})
    if not engines:
        st.info(
            "Prometheus has no `gpuledger_engine_*` series yet: is it scraping the sidecars' "
            "`/metrics`?"
        )
        return
    cols = st.columns(min(len(engines), 4))
    for i, engine in enumerate(engines):
        kv = gauges["kv_cache"].get(engine)
        running = gauges["running"].get(engine, 0.0)
        waiting = gauges["waiting"].get(engine, 0.0)
        if gauges["up"].get(engine) == 0:
            st.error(f"**{engine}** is down: its sidecars cannot reach it.")
        elif kv is not None and kv >= KV_WARN:
            st.warning(
                f"**{engine}** KV-cache is {fmt_pct(kv)} full: requests will queue or be preempted."
            )
        cols[i % len(cols)].metric(
            f"{engine} · KV-cache",
            fmt_pct(kv) if kv is not None else "—",
            delta=f"{running:.0f} running · {waiting:.0f} waiting",
            delta_color="off",
            delta_arrow="off",
            border=True,
        )


def render() -> None:
    prom = ui.prometheus()
    _alerts(prom)
    _latency(prom)
    _engines(prom)


if __name__ == "__main__":
    st.title("Latency & health")
    ui.live(render)
