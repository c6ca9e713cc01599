"""The Streamlit dashboard: budgets, usage, cost against cloud, utilization and break-even,
latency and health, escalations -- read through the control plane's admin REST API.

Run it with `gpuledger dashboard [--host 127.0.0.1 --port 8501]`. Settings (environment):
`GPULEDGER_CONTROL_PLANE_URL`, `GPULEDGER_ADMIN_TOKEN`, and the dashboard's own
`GPULEDGER_DASHBOARD_HOST` / `_PORT` / `_PASSWORD` / `_REFRESH_SECONDS` / `_PROMETHEUS_URL`
(see `dashboard.settings`). Bound beyond loopback it asks every visitor for the password, or
for the admin token when no password is set.

Layout: `app.py` (entrypoint: gate, connection banner, navigation), `views/` (one script per
page), `client.py` (typed control-plane client), `prometheus.py` (optional engine gauges and
latency histograms), `analysis.py` (pure computations), `ui.py` (shared Streamlit helpers).
"""
