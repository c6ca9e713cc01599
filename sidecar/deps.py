"""What the running sidecar is made of, and the typed FastAPI dependency to reach it.

`Components` is built by `create_app` (see `sidecar/wiring.py` for the pluggable parts) and lives
on `app.state.components`; the upstream HTTP session is opened in the app's lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import aiohttp
from fastapi import Depends, Request
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from gpuledger.contracts import EnginePolicy
from sidecar.hooks import Guard
from sidecar.metering import Metering
from sidecar.metrics import SidecarMetrics
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import UsageSink


@dataclass(slots=True)
class Components:
    settings: Settings
    registry: CollectorRegistry
    policy_store: PolicyStore
    metrics: SidecarMetrics
    sink: UsageSink
    metering: Metering
    tracer_provider: TracerProvider
    tracer: Tracer
    default_engine: EnginePolicy
    guards: list[Guard] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError("the sidecar's HTTP session is opened by the app's lifespan")
        return self.session

    def engine_for(self, model: str) -> EnginePolicy:
        return self.policy_store.current.engine_for(model) or self.default_engine


def get_components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(get_components)]
