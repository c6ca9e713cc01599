"""Dashboard pages: Streamlit scripts run only through `dashboard/app.py`'s navigation."""
