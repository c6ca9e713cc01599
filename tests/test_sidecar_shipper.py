"""The shipper: retry with backoff through outages, ack only after 2xx, isolate poison records.

The control plane here is a small aiohttp stand-in that implements the ingest contract
(idempotent by record id) and lets a test inject failures on demand (503s, a 401, a record it
refuses). The real control plane is exercised end to end in tests/test_shipping_e2e.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gpuledger.contracts import UsageRecord
from sidecar.shipper import Shipper, SpoolSink
from sidecar.spool import Spool
from tests.conftest import free_port

TOKEN = "sidecar-token-1"


@dataclass
class StandIn:
    url: str
    received: dict[str, dict[str, object]] = field(default_factory=dict)
    posts: int = 0
    fail_next: int = 0
    fail_status: int = 503
    poison_ids: set[str] = field(default_factory=set)


@pytest.fixture
async def control_plane() -> AsyncIterator[StandIn]:
    port = free_port()
    state = StandIn(url=f"http://127.0.0.1:{port}")

    async def batch(request: web.Request) -> web.Response:
        state.posts += 1
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"detail": "bad token"}, status=401)
        if state.fail_next:
            state.fail_next -= 1
            return web.json_response({"detail": "injected"}, status=state.fail_status)
        body = orjson.loads(await request.read())
        if any(r.get("id") in state.poison_ids for r in body["records"]):
            return web.json_response({"detail": "invalid record"}, status=422)
        dup = 0
        for r in body["records"]:
            if r["id"] in state.received:
                dup += 1
            state.received[r["id"]] = r
        return web.json_response({"accepted": len(body["records"]) - dup, "duplicates": dup})

    app = web.Application()
    app.router.add_post("/api/v1/usage/batch", batch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield state
    await runner.cleanup()


def record(i: int) -> UsageRecord:
    return UsageRecord(
        id=f"rec-{i:06d}",
        feature="chat",
        model="tiny",
        upstream="local",
        started_at=datetime(2026, 11, 27, tzinfo=UTC),
        output_tokens=i,
    )


def make(tmp_path: Path, url: str, **kw: object) -> tuple[Spool, Shipper, CollectorRegistry]:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", registry=registry)
    shipper = Shipper(
        spool,
        control_plane_url=url,
        token=TOKEN,
        registry=registry,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        linger_s=0.01,
        **kw,  # type: ignore[arg-type]
    )
    return spool, shipper, registry


async def wait_for(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_ships_in_batches_and_acks(tmp_path: Path, control_plane: StandIn) -> None:
    spool, shipper, registry = make(tmp_path, control_plane.url, batch_size=100)
    sink = SpoolSink(spool, shipper)
    await sink.start()
    await asyncio.gather(*(sink.write(record(i)) for i in range(250)))
    await wait_for(lambda: spool.backlog_records == 0)
    assert sorted(control_plane.received) == [f"rec-{i:06d}" for i in range(250)]
    assert control_plane.posts >= 3  # batches of at most 100
    assert registry.get_sample_value("gpuledger_usage_shipped_total") == 250
    await sink.close()


async def test_outage_then_recovery_delivers_everything(
    tmp_path: Path, control_plane: StandIn
) -> None:
    control_plane.fail_next = 5
    spool, shipper, registry = make(tmp_path, control_plane.url)
    sink = SpoolSink(spool, shipper)
    await sink.start()
    for i in range(20):
        await sink.write(record(i))
    await wait_for(lambda: spool.backlog_records == 0)
    assert len(control_plane.received) == 20
    assert registry.get_sample_value("gpuledger_usage_ship_failures_total") == 5
    await sink.close()


async def test_unreachable_control_plane_keeps_records_spooled(tmp_path: Path) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spool, shipper, registry = make(tmp_path, dead_url)
    sink = SpoolSink(spool, shipper)
    await sink.start()
    for i in range(5):
        await sink.write(record(i))
    await wait_for(
        lambda: (registry.get_sample_value("gpuledger_usage_ship_failures_total") or 0) >= 2
    )
    await sink.close()
    assert spool.backlog_records == 5  # nothing acked, nothing dropped


async def test_auth_failure_is_retried_not_dead_lettered(
    tmp_path: Path, control_plane: StandIn
) -> None:
    control_plane.fail_next = 3
    control_plane.fail_status = 401
    spool, shipper, _ = make(tmp_path, control_plane.url)
    sink = SpoolSink(spool, shipper)
    await sink.start()
    await sink.write(record(1))
    await wait_for(lambda: spool.backlog_records == 0)
    assert "rec-000001" in control_plane.received
    assert not spool.dead_letter_path.exists()
    await sink.close()


async def test_poison_record_is_isolated_and_dead_lettered(
    tmp_path: Path, control_plane: StandIn
) -> None:
    control_plane.poison_ids = {"rec-000037"}
    spool, shipper, registry = make(tmp_path, control_plane.url, batch_size=1000)
    await spool.open()
    for i in range(100):
        await spool.append(record(i))
    await shipper.start()
    await wait_for(lambda: spool.backlog_records == 0)
    assert len(control_plane.received) == 99
    assert "rec-000037" not in control_plane.received
    dead = [orjson.loads(line) for line in spool.dead_letter_path.read_bytes().splitlines()]
    assert [orjson.loads(d["payload"])["id"] for d in dead] == ["rec-000037"]
    assert "422" in dead[0]["reason"]
    assert registry.get_sample_value("gpuledger_usage_dead_letter_total") == 1
    await shipper.close()
    await spool.close()


async def test_restart_ships_what_a_previous_run_left(
    tmp_path: Path, control_plane: StandIn
) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"
    spool, shipper, _ = make(tmp_path, dead_url)
    sink = SpoolSink(spool, shipper)
    await sink.start()
    for i in range(30):
        await sink.write(record(i))
    await sink.close()

    spool2, shipper2, _ = make(tmp_path, control_plane.url)
    sink2 = SpoolSink(spool2, shipper2)
    await sink2.start()
    await wait_for(lambda: spool2.backlog_records == 0)
    assert len(control_plane.received) == 30
    await sink2.close()


async def test_real_control_plane_poison_record_is_dead_lettered(tmp_path: Path) -> None:
    """Against the real control plane: a record it can't validate (422) is isolated, the rest
    land exactly once."""
    from tests.control_plane_support import (
        SIDECAR_TOKEN,
        cp_settings,
        run_control_plane,
        sqlite_url,
    )

    with run_control_plane(cp_settings(sqlite_url(tmp_path))) as cp_url:
        registry = CollectorRegistry()
        spool = Spool(tmp_path / "spool.db", registry=registry)
        shipper = Shipper(
            spool, control_plane_url=cp_url, token=SIDECAR_TOKEN, registry=registry,
            backoff_base_s=0.01, backoff_cap_s=0.05, linger_s=0.01,
        )  # fmt: skip
        await spool.open()
        for i in range(20):
            await spool.append(record(i))
            if i == 9:  # not a UsageRecord: no feature, model, upstream or started_at
                await spool.append_payload(b'{"id": "poison-1"}')
        await shipper.start()
        await wait_for(lambda: spool.backlog_records == 0, 30)
        await shipper.close()
        await spool.close()
        dead = [orjson.loads(line) for line in spool.dead_letter_path.read_bytes().splitlines()]
        assert [orjson.loads(d["payload"])["id"] for d in dead] == ["poison-1"]
        assert registry.get_sample_value("gpuledger_usage_shipped_total") == 20


async def test_full_spool_keeps_admitted_records_and_counts_refusals(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", max_records=2)
    shipper = Shipper(spool, control_plane_url=f"http://127.0.0.1:{free_port()}", token=TOKEN)
    sink = SpoolSink(spool, shipper, registry)
    await spool.open()  # the shipper is not started: nothing drains
    for i in range(2):
        await sink.write(record(i))
    assert spool.full
    await sink.write(record(2).model_copy(update={"status": "rejected:usage_spool_full"}))
    await sink.write(record(3))  # admitted before the spool filled: kept past the bound
    assert spool.backlog_records == 3
    assert registry.get_sample_value("gpuledger_usage_rejections_unspooled_total") == 1
    await spool.close()
