"""Escalations: the log of requests routed from the self-hosted engine to the cloud (reason, the
cheaper attempt's cost, the cloud cost, the delta) -- once routing lands."""

from __future__ import annotations

import streamlit as st

from dashboard import ui


def render() -> None:
    st.info(
        "**No escalations to show yet.** Routing to a cloud fallback is not built: when it "
        "lands, each escalated request appears here with its reason (budget exhausted, "
        "SLO miss, engine overloaded), the cost of the cheaper self-hosted attempt, the cloud "
        "cost and the difference. Until then a feature over budget with hard action `escalate` "
        "is rejected like `reject`.",
        icon=":material/call_split:",
    )
    routes = [f for f in ui.client().features() if f.fallback_route]
    if routes:
        st.markdown("Features that already name a fallback route:")
        ui.table(
            [{"feature": f.name, "fallback_route": f.fallback_route} for f in routes],
            {"feature": "Feature", "fallback_route": "Fallback route"},
        )
    else:
        st.caption("No feature names a fallback route (`fallback_route` on the feature).")


if __name__ == "__main__":
    st.title("Escalations")
    ui.live(render)
