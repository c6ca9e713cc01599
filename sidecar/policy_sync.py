"""Keeps the sidecar's policy in step with the control plane.

Every `interval_s` the sidecar asks ``GET /api/v1/sidecar/policy`` with ``If-None-Match`` set to
the version it holds. 304 confirms it; 200 brings a new snapshot, validated before it replaces
the current one (`PolicyStore.replace` also writes it atomically to `<state_dir>/policy.json`).
On start the last good snapshot on disk is loaded first, so a sidecar restarted while the control
plane is down keeps serving its last known policy. A bad or failed fetch never replaces a good
policy: it is logged, metered and retried on the next tick.

`gpuledger_policy_age_seconds` = seconds since the control plane last confirmed the policy the
sidecar is enforcing (for a snapshot loaded from disk: since it was written; never confirmed:
since the sync started, so a sidecar that never reached the control plane ages too). An alert on it
tells an operator the sidecar enforces a stale policy.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from gpuledger.contracts import PolicySnapshot
from sidecar.background import cancel_and_wait, serve_until_cancelled
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.tracing import with_current_trace

log = logging.getLogger(__name__)


class PolicySync:
    def __init__(
        self,
        store: PolicyStore,
        *,
        control_plane_url: str,
        token: str,
        interval_s: float = 5.0,
        request_timeout_s: float = 10.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.url = control_plane_url.rstrip("/") + "/api/v1/sidecar/policy"
        self._headers = {"Authorization": f"Bearer {token}"}
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.confirmed_at: float | None = None  # wall clock of the last 200/304
        self._failing = False
        self._started_at = time.time()
        registry = registry if registry is not None else CollectorRegistry()
        Gauge(
            "gpuledger_policy_age_seconds",
            "Seconds since the control plane last confirmed the policy being enforced",
            registry=registry,
        ).set_function(self.age_seconds)
        self._m_failures = Counter(
            "gpuledger_policy_sync_failures",
            "Failed policy fetches (the last good policy stays in force)",
            registry=registry,
        )
        self._m_updates = Counter(
            "gpuledger_policy_updates",
            "Policy snapshots accepted from the control plane",
            registry=registry,
        )

    def age_seconds(self) -> float:
        since = self.confirmed_at if self.confirmed_at is not None else self._started_at
        return max(0.0, time.time() - since)

    async def start(self) -> None:
        """Load the last good snapshot from disk, try one fetch, then sync in the background."""
        self._started_at = time.time()
        if not self.store.loaded and self.store.load_last_good():
            log.info(
                "serving last good policy version %s until the control plane answers",
                self.store.version,
            )
        path = self.store.state_path
        if self.store.loaded and path is not None and path.exists():
            # Loaded from disk (here or by the app's lifespan): it was current when written.
            self.confirmed_at = path.stat().st_mtime
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        await self.sync_once()
        self._task = asyncio.create_task(self._run(), name="gpuledger-policy-sync")

    async def serve(self) -> None:
        """Background task form (sidecar/wiring.py): start, run until cancelled, close."""
        await serve_until_cancelled(self.start, self.close)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sync_once()

    async def sync_once(self) -> bool:
        """One fetch. True when the control plane answered with a usable policy (200 or 304)."""
        assert self._session is not None, "policy sync not started"
        headers = with_current_trace(self._headers)
        if self.store.loaded:
            headers["If-None-Match"] = f'"{self.store.version}"'
        try:
            async with self._session.get(self.url, headers=headers) as resp:
                if resp.status == 304:
                    return self._ok()
                if resp.status != 200:
                    return self._fail(f"HTTP {resp.status}")
                body = await resp.read()
            snapshot = PolicySnapshot.model_validate_json(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._fail(f"{type(exc).__name__}: {exc}")
        except ValidationError as exc:
            return self._fail(f"invalid snapshot ({exc.error_count()} errors)")
        if snapshot.version != self.store.version or not self.store.loaded:
            self.store.replace(snapshot)
            self._m_updates.inc()
            log.info("policy updated to version %s", snapshot.version)
        return self._ok()

    def _ok(self) -> bool:
        self.confirmed_at = time.time()
        if self._failing:
            log.info("policy sync recovered (version %s)", self.store.version)
            self._failing = False
        return True

    def _fail(self, why: str) -> bool:
        self._m_failures.inc()
        if not self._failing:  # log the transition; the metric counts the rest
            log.warning(
                "policy sync failed (%s); keeping policy version %s", why, self.store.version
            )
            self._failing = True
        return False


def build_policy_sync(
    settings: Settings, store: PolicyStore, registry: CollectorRegistry
) -> PolicySync | None:
    """Sync from the control plane when it is configured and no standalone policy file is."""
    if settings.policy_file is not None or not (
        settings.control_plane_url and settings.control_plane_token
    ):
        return None
    return PolicySync(
        store,
        control_plane_url=settings.control_plane_url,
        token=settings.control_plane_token,
        interval_s=settings.policy_sync_interval_s,
        registry=registry,
    )
