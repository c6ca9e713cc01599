"""The control plane FastAPI app: `create_app(settings)`; the database lives in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from control_plane import db
from control_plane.alerts.routes import router as alerts_router
from control_plane.budgets.routes import router as budgets_router
from control_plane.budgets.routes import sidecar_router as leases_router
from control_plane.budgets.service import list_views
from control_plane.engines.routes import router as engines_router
from control_plane.errors import install_handlers
from control_plane.features.routes import router as features_router
from control_plane.keys.routes import router as keys_router
from control_plane.metrics import ControlPlaneMetrics
from control_plane.policy.routes import router as policy_router
from control_plane.prefix_cache.routes import router as prefix_cache_router
from control_plane.rate_limits.routes import router as rate_limits_router
from control_plane.reports.routes import router as reports_router
from control_plane.settings import Settings
from control_plane.tracing import flush_tracing, install_tracing
from control_plane.usage.routes import router as usage_router

log = logging.getLogger(__name__)

DESCRIPTION = """GPU-hour budgets, keys, features and the usage ledger behind gpuledger sidecars.

Admin endpoints take an admin bearer token (`GPULEDGER_ADMIN_TOKENS`); the `sidecar` endpoints
take a sidecar token (`GPULEDGER_SIDECAR_TOKENS`). Errors are `{"detail": ..., "code": ...}`.
"""


def create_app(
    settings: Settings | None = None, *, span_exporter: SpanExporter | None = None
) -> FastAPI:
    """`span_exporter` is for tests (an in-memory exporter); OTLP comes from the environment."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(
            settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms
        )
        try:
            if settings.migrate_on_start:
                await db.migrate(engine, "upgrade", "head")
            app.state.engine = engine
            app.state.sessionmaker = db.session_factory(engine)
            app.state.read_sessionmaker = db.read_session_factory(engine)
            for kind, tokens in (
                ("admin", settings.admin_token_list),
                ("sidecar", settings.sidecar_token_list),
            ):
                if not tokens:
                    log.warning(
                        "no %s tokens configured (GPULEDGER_%s_TOKENS): every %s "
                        "request will get 401",
                        kind,
                        kind.upper(),
                        kind,
                    )
            yield
        finally:
            await engine.dispose()
            flush_tracing(app)

    app = FastAPI(
        title="gpuledger control plane", version="1", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.registry = CollectorRegistry()
    app.state.metrics = ControlPlaneMetrics(app.state.registry)
    install_handlers(app)
    install_tracing(app, settings.tracing_enabled, span_exporter)
    for router in (
        usage_router,
        policy_router,
        leases_router,
        features_router,
        keys_router,
        budgets_router,
        rate_limits_router,
        engines_router,
        reports_router,
        prefix_cache_router,
        alerts_router,
    ):
        app.include_router(router)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready(request: Request) -> Response:
        """Readiness: the database answers."""
        try:
            engine = request.app.state.engine.execution_options(sqlite_begin="DEFERRED")
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means not ready; details stay in the logs
            return Response('{"status":"unavailable"}', 503, media_type="application/json")
        return Response('{"status":"ok"}', media_type="application/json")

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # Budget gauges are computed at scrape time (a few indexed sums per budget).
        m: ControlPlaneMetrics = request.app.state.metrics
        async with request.app.state.read_sessionmaker() as session:
            views = await list_views(session)
        for gauge in (m.budget_used, m.budget_limit, m.budget_soft_ratio):
            gauge.clear()  # a deleted budget must not linger
        for v in views:
            feature = v.budget.feature
            m.budget_used.labels(feature).set(v.used)
            m.budget_limit.labels(feature).set(v.budget.limit_gpu_seconds)
            m.budget_soft_ratio.labels(feature).set(v.budget.soft_threshold_pct / 100)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return app
