"""Ships the usage spool to the control plane; the sink and guard of control-plane mode.

`Shipper` reads the oldest batch from the spool, POSTs it to ``/api/v1/usage/batch`` with the
sidecar token and deletes it only after a 2xx ack (at-least-once; the control plane is idempotent
by record id, which makes accounting exactly-once). Failures retry forever with exponential
backoff and full jitter: the spool, not memory, holds the backlog.

A 400/413/422 means the control plane refuses the *content* of the batch. Retrying would wedge
the queue behind one poison record, so the batch is split in halves until the refused record is
alone; that record goes to the spool's dead-letter file (metered, logged) and the rest ship. Other
4xx (401/403/404: a misconfigured token or URL; 408/429) are not the records' fault and are
retried like 5xx — splitting on them would dead-letter every record.

`SpoolSink` is the `UsageSink` (start/write/close) of control-plane mode; `SpoolGuard` is the
admission guard that refuses or holds new requests while the spool is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Literal

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from gpuledger.contracts import UsageRecord
from sidecar.background import cancel_and_wait
from sidecar.hooks import Admission, RequestContext
from sidecar.settings import Settings
from sidecar.spool import Spool, SpoolEntry, SpoolFull
from sidecar.tracing import with_current_trace

log = logging.getLogger(__name__)

_SPLITTABLE = frozenset({400, 413, 422})


class _Retryable(Exception):
    pass


class Shipper:
    def __init__(
        self,
        spool: Spool,
        *,
        control_plane_url: str,
        token: str,
        batch_size: int = 1000,
        registry: CollectorRegistry | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        linger_s: float = 0.2,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.spool = spool
        self.url = control_plane_url.rstrip("/") + "/api/v1/usage/batch"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.batch_size = max(1, min(batch_size, 10_000))
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.linger_s = linger_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        registry = registry if registry is not None else CollectorRegistry()
        self._m_shipped = Counter(
            "gpuledger_usage_shipped",
            "Usage records acknowledged by the control plane",
            registry=registry,
        )
        self._m_failures = Counter(
            "gpuledger_usage_ship_failures",
            "Failed attempts to ship a usage batch (each is retried)",
            registry=registry,
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="gpuledger-shipper")

    async def close(self, flush_timeout_s: float = 2.0) -> None:
        """Try to ship what is left for a moment, then stop; the rest stays spooled on disk."""
        if self._task is not None:
            if self.spool.backlog_records:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(flush_timeout_s):
                        await self.spool.empty.wait()
            self._stop.set()
            await cancel_and_wait(self._task)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if not self.spool.backlog_records:
                await self.spool.has_data.wait()
                # Let a burst accumulate so batches are not one record each.
                await asyncio.sleep(self.linger_s)
            try:
                shipped = await self.ship_once()
            except _Retryable as exc:
                self._m_failures.inc()
                delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))
                attempt = min(attempt + 1, 30)
                log.warning(
                    "usage shipping failed (%s); %d records spooled, retry in %.1fs",
                    exc,
                    self.spool.backlog_records,
                    delay,
                )
                await asyncio.sleep(delay)
            except Exception:  # a bug must not silently stop shipping forever
                self._m_failures.inc()
                log.exception("usage shipper error; retrying")
                await asyncio.sleep(self.backoff_cap_s)
            else:
                attempt = 0
                if not shipped:  # the count said "backlog" but the table is empty: resync
                    await asyncio.sleep(self.linger_s)

    async def ship_once(self) -> int:
        """Ship the oldest batch; return how many records left the spool. Raises `_Retryable`."""
        entries = await self.spool.read_batch(self.batch_size)
        if entries:
            await self._ship(entries)
        return len(entries)

    async def _ship(self, entries: list[SpoolEntry]) -> None:
        status, detail = await self._post(entries)
        if 200 <= status < 300:
            await self.spool.ack(entries)
            self._m_shipped.inc(len(entries))
            return
        if status in _SPLITTABLE:
            if len(entries) == 1:
                await self.spool.dead_letter(entries[0], f"HTTP {status}: {detail}")
                return
            mid = len(entries) // 2
            await self._ship(entries[:mid])
            await self._ship(entries[mid:])
            return
        raise _Retryable(f"HTTP {status}: {detail[:200]}")

    async def _post(self, entries: list[SpoolEntry]) -> tuple[int, str]:
        assert self._session is not None, "shipper not started"
        # The payloads are already JSON: splice them instead of re-serializing.
        body = b'{"records":[' + b",".join(e.payload for e in entries) + b"]}"
        try:
            headers = with_current_trace(self._headers)
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                text = await resp.text() if resp.status >= 300 else ""
                return resp.status, text
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc


class SpoolSink:
    """UsageSink of control-plane mode: `write` returns once the record is durable on disk.

    One exception keeps the bound a bound: while the spool is full, records of *refused*
    requests (status ``rejected:*``, no GPU time, no spend) are counted in
    `gpuledger_usage_rejections_unspooled_total` instead of spooled, or a flood of refusals
    during an outage would grow the spool without limit. Every admitted request's record is kept.
    """

    def __init__(
        self, spool: Spool, shipper: Shipper, registry: CollectorRegistry | None = None
    ) -> None:
        self.spool = spool
        self.shipper = shipper
        self._warned = False
        self._m_unspooled = Counter(
            "gpuledger_usage_rejections_unspooled",
            "Records of refused requests counted here instead of spooled while the spool was full",
            registry=registry if registry is not None else CollectorRegistry(),
        )

    async def start(self) -> None:
        await self.spool.open()
        await self.shipper.start()

    async def write(self, record: UsageRecord) -> None:
        if self.spool.full and record.status.startswith("rejected"):
            self._m_unspooled.inc()
            if not self._warned:
                self._warned = True
                log.warning("usage spool full: counting refused requests instead of spooling")
            return
        self._warned = False
        await self.spool.append(record)

    async def close(self) -> None:
        await self.shipper.close()
        await self.spool.close()


class SpoolGuard:
    """Refuses (503 `usage_spool_full`) or holds new requests while the spool is at its bound."""

    name = "spool"

    def __init__(
        self,
        spool: Spool,
        *,
        on_full: Literal["reject", "block"] = "reject",
        block_timeout_s: float = 30.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.spool = spool
        self.on_full = on_full
        self.block_timeout_s = block_timeout_s
        self._warned = False
        self._m_full = Counter(
            "gpuledger_spool_full_refusals",
            "Requests refused (or held then refused) because the usage spool was full",
            registry=registry if registry is not None else CollectorRegistry(),
        )

    async def admit(self, ctx: RequestContext) -> Admission | None:
        if not self.spool.full:
            self._warned = False
            return None
        if not self._warned:  # once per episode: the metric carries the count
            self._warned = True
            log.error(
                "usage spool full (%d records, %d bytes): %s new requests until it drains",
                self.spool.backlog_records,
                self.spool.backlog_bytes,
                "refusing" if self.on_full == "reject" else "holding",
            )
        if self.on_full == "block" and await self.spool.wait_for_space(self.block_timeout_s):
            return None
        self._m_full.inc()
        raise SpoolFull(
            "usage accounting is backlogged (control plane unreachable); retry later",
            headers={"retry-after": "5"},
        )


SPOOL_FILE = "usage-spool.db"  # in the state dir; the dead-letter file sits beside it


def build_spool_sink(settings: Settings, registry: CollectorRegistry) -> SpoolSink | None:
    """The control-plane-mode sink (spool in `<state_dir>/usage-spool.db`), or None."""
    if not (settings.control_plane_url and settings.control_plane_token):
        return None
    spool = Spool(
        settings.state_dir / SPOOL_FILE,
        max_records=settings.spool_max_records,
        max_bytes=settings.spool_max_bytes,
        registry=registry,
    )
    shipper = Shipper(
        spool,
        control_plane_url=settings.control_plane_url,
        token=settings.control_plane_token,
        batch_size=settings.ship_batch_size,
        backoff_cap_s=settings.ship_backoff_cap_s,
        registry=registry,
    )
    return SpoolSink(spool, shipper, registry)


def build_spool_guard(
    settings: Settings, sink: object, registry: CollectorRegistry
) -> SpoolGuard | None:
    """The admission guard for a spool sink (None for any other sink)."""
    if not isinstance(sink, SpoolSink):
        return None
    return SpoolGuard(
        sink.spool,
        on_full=settings.spool_on_full,
        block_timeout_s=settings.spool_block_timeout_s,
        registry=registry,
    )
