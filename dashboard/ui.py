"""Streamlit plumbing shared by the pages: settings, the client, the password gate, the
connection banner, the time-range picker, auto-refresh and the empty states."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import streamlit as st

from dashboard.client import (
    ControlPlaneAuthError,
    ControlPlaneClient,
    ControlPlaneRequestError,
    ControlPlaneUnavailable,
)
from dashboard.prometheus import PrometheusClient
from dashboard.settings import DashboardSettings

WINDOWS: dict[str, timedelta] = {
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
}
DEFAULT_WINDOW = "Last 7 days"


def settings() -> DashboardSettings:
    # Read on every run: cheap, and a test can point the app elsewhere through the environment.
    return DashboardSettings()


@st.cache_resource(show_spinner=False)
def _client(url: str, token: str, timeout: float) -> ControlPlaneClient:
    return ControlPlaneClient(url, token, timeout=timeout)


def client() -> ControlPlaneClient:
    s = settings()
    return _client(
        s.control_plane_url, s.admin_token.get_secret_value(), s.dashboard_timeout_seconds
    )


@st.cache_resource(show_spinner=False)
def _prometheus(url: str, timeout: float) -> PrometheusClient:
    return PrometheusClient(url, timeout=timeout)


def prometheus() -> PrometheusClient | None:
    s = settings()
    if not s.dashboard_prometheus_url:
        return None
    return _prometheus(s.dashboard_prometheus_url, s.dashboard_timeout_seconds)


def now() -> datetime:
    return datetime.now(UTC)


# --- gate ------------------------------------------------------------------------------------


def gate(s: DashboardSettings) -> None:
    """Stop the script unless this session passed the password (or token) check."""
    secret = s.gate_secret
    if secret is None or st.session_state.get("gate_ok"):
        return
    st.title("gpuledger")
    if secret == "":
        st.error(
            f"The dashboard listens on **{s.dashboard_host}**, beyond this machine, and has no "
            "password. Set `GPULEDGER_DASHBOARD_PASSWORD` (or `GPULEDGER_ADMIN_TOKEN`) and "
            "restart it, or bind it to 127.0.0.1."
        )
        st.stop()
    what = "password" if s.dashboard_password.get_secret_value() else "admin token"
    with st.form("gate"):
        typed = st.text_input(f"Dashboard {what}", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if hmac.compare_digest(typed.encode(), secret.encode()):
            st.session_state["gate_ok"] = True
            st.rerun()
        st.error(f"Wrong {what}.")
    st.stop()


# --- connection ------------------------------------------------------------------------------


def show_error(exc: Exception, s: DashboardSettings) -> None:
    if isinstance(exc, ControlPlaneUnavailable):
        st.error(
            f"**Control plane unreachable** at `{s.control_plane_url}` — no figures can be loaded. "
            f"Start it with `gpuledger control-plane` or point "
            f"`GPULEDGER_CONTROL_PLANE_URL` at it. ({exc})",
            icon=":material/cloud_off:",
        )
    elif isinstance(exc, ControlPlaneAuthError):
        st.error(
            "**The control plane rejected the admin token.** Set `GPULEDGER_ADMIN_TOKEN` to one "
            f"of the control plane's `GPULEDGER_ADMIN_TOKENS`. ({exc})",
            icon=":material/lock:",
        )
    else:
        st.error(f"**The control plane answered unexpectedly:** {exc}")


def check_connection(s: DashboardSettings) -> bool:
    try:
        client().ready()
    except (ControlPlaneUnavailable, ControlPlaneAuthError) as exc:
        show_error(exc, s)
        return False
    return True


def retry_when_back(s: DashboardSettings) -> None:
    """While the banner shows, poll quietly and rerun the whole app once the control plane
    answers again, so a restarted control plane needs no page reload."""
    if s.dashboard_refresh_seconds <= 0:
        return

    def poll() -> None:
        try:
            client().ready()
        except (ControlPlaneUnavailable, ControlPlaneAuthError):
            return
        st.rerun(scope="app")

    st.fragment(poll, run_every=min(s.dashboard_refresh_seconds, 10.0))()


def live(render: Callable[[], None]) -> None:
    """Run a page body, re-running just it every `dashboard_refresh_seconds` (a fragment), and
    turn control-plane failures into a banner instead of a traceback."""
    s = settings()

    def body() -> None:
        try:
            render()
        except (ControlPlaneUnavailable, ControlPlaneAuthError, ControlPlaneRequestError) as exc:
            show_error(exc, s)
        st.caption(f"Updated {now():%H:%M:%S} UTC from `{s.control_plane_url}`.")

    if s.dashboard_refresh_seconds > 0:
        st.fragment(body, run_every=s.dashboard_refresh_seconds)()
    else:
        body()


# --- time range ------------------------------------------------------------------------------


def window_picker() -> None:
    st.sidebar.selectbox("Time range", list(WINDOWS), key="window", index=2)


def window() -> tuple[datetime, datetime, str]:
    label = st.session_state.get("window", DEFAULT_WINDOW)
    end = now()
    return end - WINDOWS.get(label, WINDOWS[DEFAULT_WINDOW]), end, label


# --- empty states ----------------------------------------------------------------------------


def first_request_hint() -> None:
    s = settings()
    st.info(
        "**No usage yet** in this time range. Send a request through the sidecar and it shows "
        "up here within a few seconds:",
        icon=":material/waving_hand:",
    )
    st.code(
        f"curl -s {s.dashboard_sidecar_url}/v1/chat/completions \\\n"
        '  -H "Authorization: Bearer $GPULEDGER_KEY" -H "content-type: application/json" \\\n'
        '  -d \'{"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}\'',
        language="bash",
    )


def table(rows: list[dict[str, Any]], columns: dict[str, Any]) -> None:
    """A dataframe showing only `columns` (name -> st.column_config), in that order."""
    st.dataframe(
        rows, column_order=list(columns), column_config=columns, hide_index=True, width="stretch"
    )


def chart_data(rows: Iterable[dict[str, Any]]) -> alt.Data:
    """Inline chart data: datetimes as ISO strings and NaN as null, so the spec is valid JSON."""

    def clean(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, float) and math.isnan(v):
            return None
        return v

    values = [{k: clean(v) for k, v in r.items()} for r in rows]
    return alt.Data(values=values)  # type: ignore[no-untyped-call]
