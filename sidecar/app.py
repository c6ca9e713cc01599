"""`create_app(settings)`: the sidecar as a FastAPI app.

`/health`, `/ready` and `/metrics` are ordinary FastAPI routes; `/v1/*` is the raw ASGI proxy
(`sidecar/proxy.py`). `SidecarApp.__call__` hands `/v1/` requests to the proxy *before* Starlette's
middleware stack: ServerErrorMiddleware and ExceptionMiddleware each wrap `send`, which costs a
call per relayed chunk, and the router matches a regex per request (issue 9). The proxy answers its
own errors in the OpenAI envelope, so those layers added nothing there.
Clients (the upstream HTTP session, the sink, background tasks) live in the lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import Receive, Scope, Send

from gpuledger.contracts import EnginePolicy
from sidecar.asgi import send_error
from sidecar.attribution import AttributionMetrics
from sidecar.deps import Components, ComponentsDep
from sidecar.errors import SidecarError
from sidecar.hooks import Guard
from sidecar.metering import Metering
from sidecar.metrics import SidecarMetrics
from sidecar.policy import PolicyStore, load_policy_file
from sidecar.pricing import CloudPriceTable
from sidecar.proxy import Proxy
from sidecar.settings import Settings
from sidecar.sinks import UsageSink
from sidecar.tracing import build_tracer_provider
from sidecar.wiring import build_background_tasks, build_guards, build_sink

log = logging.getLogger(__name__)


class SidecarApp(FastAPI):
    """FastAPI for everything but `/v1/`, which goes straight to the raw ASGI proxy."""

    proxy: Proxy | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = self.proxy
        if proxy is None or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            await proxy(scope, receive, send)
        except Exception:
            # What ServerErrorMiddleware did, but in the envelope: log, answer 500 if no response
            # started yet (a send of a second start raises), then let the server drop the socket.
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            with contextlib.suppress(Exception):
                await send_error(send, SidecarError("The sidecar failed unexpectedly."), {})
            raise


def create_app(
    settings: Settings | None = None,
    *,
    policy_store: PolicyStore | None = None,
    sink: UsageSink | None = None,
    registry: CollectorRegistry | None = None,
    guards: list[Guard] | None = None,
    span_exporter: SpanExporter | None = None,
) -> SidecarApp:
    """Build the app. The keyword arguments replace the parts `sidecar/wiring.py` would build
    (tests pass a MemorySink, an in-memory span exporter, a ready PolicyStore)."""
    settings = settings or Settings()
    registry = registry or CollectorRegistry()
    store = policy_store or PolicyStore(settings.state_dir)
    usage_sink = sink or build_sink(settings, registry)
    metrics = SidecarMetrics(registry)
    provider = build_tracer_provider(
        settings.service_name, span_exporter, sample_ratio=settings.trace_sample_ratio
    )
    components = Components(
        settings=settings,
        registry=registry,
        policy_store=store,
        metrics=metrics,
        sink=usage_sink,
        metering=Metering(
            sidecar_id=settings.sidecar_id,
            metrics=metrics,
            sink=usage_sink,
            attribution=AttributionMetrics(registry),
            prices=None,
        ),
        tracer_provider=provider,
        # Disabled: a no-op tracer (no spans, no trace id in records, no traceparent upstream).
        tracer=provider.get_tracer("gpuledger.sidecar")
        if settings.tracing_enabled
        else trace.NoOpTracer(),
        default_engine=EnginePolicy(
            name=settings.upstream_name,
            url=settings.upstream_url,
            max_num_seqs=settings.upstream_max_num_seqs,
        ),
        guards=guards if guards is not None else build_guards(settings, store, registry, usage_sink),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _load_policy(settings, store)
        try:
            components.metering.prices = CloudPriceTable.load()
        except (OSError, ValueError) as exc:
            log.warning("no cloud price table, cloud-equivalent cost disabled: %s", exc)
        await usage_sink.start()
        components.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.upstream_max_connections,
                keepalive_timeout=settings.upstream_keepalive_s,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.connect_timeout_s,
                sock_read=settings.read_timeout_s,
            ),
        )
        tasks = [asyncio.ensure_future(t()) for t in build_background_tasks(settings, components)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await components.session.close()
            await usage_sink.close()
            provider.shutdown()

    app = SidecarApp(title="gpuledger sidecar", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.components = components
    app.state.registry = registry
    app.state.settings = settings
    app.state.policy_store = store

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(c: ComponentsDep) -> JSONResponse:
        checks = {"policy": c.policy_store.loaded, "upstream": await _upstream_healthy(c)}
        return JSONResponse(
            {
                "ready": all(checks.values()),
                "checks": checks,
                "policy_version": c.policy_store.version,
            },
            status_code=200 if all(checks.values()) else 503,
        )

    @app.get("/metrics")
    async def metrics_endpoint(c: ComponentsDep) -> Response:
        return Response(generate_latest(c.registry), media_type=CONTENT_TYPE_LATEST)

    app.proxy = Proxy(components)
    return app


def _load_policy(settings: Settings, store: PolicyStore) -> None:
    """Standalone file first, else the last good snapshot on disk (the sync may replace it)."""
    if store.loaded:
        return
    if settings.policy_file is not None:
        store.replace(load_policy_file(settings.policy_file))
    elif store.load_last_good():
        log.info("serving the last good policy (version %s) until the sync answers", store.version)


async def _upstream_healthy(c: Components) -> bool:
    engines = c.policy_store.current.snapshot.engines or [c.default_engine]
    try:
        for url in dict.fromkeys(e.url.rstrip("/") for e in engines):
            async with c.http().get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status != 200:
                    return False
    except (aiohttp.ClientError, TimeoutError, RuntimeError):
        return False
    return True
