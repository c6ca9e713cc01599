"""Streamlit entrypoint: `streamlit run dashboard/app.py` (or `gpuledger dashboard`).

Gate, connection check and the shared sidebar run here on every rerun; then the selected page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import ui

# Not "pages/": that directory name turns on Streamlit's older multipage mode, which runs a page
# script directly, without this entrypoint (and its password gate).
PAGES = Path(__file__).parent / "views"


def main() -> None:
    st.set_page_config(page_title="gpuledger", page_icon=":material/memory:", layout="wide")
    s = ui.settings()
    ui.gate(s)
    nav = st.navigation(
        [
            st.Page(
                PAGES / "budgets.py",
                title="Budgets",
                icon=":material/savings:",
                url_path="budgets",
                default=True,
            ),
            st.Page(
                PAGES / "usage.py", title="Usage", icon=":material/bar_chart:", url_path="usage"
            ),
            st.Page(
                PAGES / "cost.py",
                title="Cost vs cloud",
                icon=":material/payments:",
                url_path="cost",
            ),
            st.Page(
                PAGES / "utilization.py",
                title="Utilization & break-even",
                icon=":material/balance:",
                url_path="utilization",
            ),
            st.Page(
                PAGES / "latency.py",
                title="Latency & health",
                icon=":material/speed:",
                url_path="latency",
            ),
            st.Page(
                PAGES / "escalations.py",
                title="Escalations",
                icon=":material/call_split:",
                url_path="escalations",
            ),
        ]
    )
    ui.window_picker()
    st.sidebar.caption(f"Control plane: `{s.control_plane_url}`")
    if s.dashboard_refresh_seconds > 0:
        st.sidebar.caption(f"Refreshes every {s.dashboard_refresh_seconds:g} s.")
    if not ui.check_connection(s):
        ui.retry_when_back(s)
        st.stop()
    nav.run()


if __name__ == "__main__":
    main()
