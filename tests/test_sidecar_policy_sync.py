"""Policy sync: ETag/304, validation, last-good on disk, serving through an outage.

The control plane is a small aiohttp stand-in implementing the policy contract (ETag =
``"<version>"``, 304 on If-None-Match), so a test can switch it off, make it answer garbage and
count conditional requests. The real control plane is used in tests/test_shipping_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gpuledger.contracts import FeaturePolicy, KeyPolicy, PolicySnapshot, hash_key
from sidecar.policy import PolicyStore
from sidecar.policy_sync import PolicySync
from tests.conftest import free_port

TOKEN = "sidecar-token-ps"


def snapshot(version: str) -> PolicySnapshot:
    return PolicySnapshot(
        version=version,
        keys=[
            KeyPolicy(
                id="k1",
                name="k1",
                key_hash=hash_key("glk_secret"),
                features=["chat"],
                default_feature="chat",
            )
        ],
        features=[FeaturePolicy(name="chat")],
    )


@dataclass
class StandIn:
    url: str
    policy: PolicySnapshot
    mode: str = "ok"  # ok | down500 | garbage
    conditional_hits: int = 0
    seen_if_none_match: list[str | None] = field(default_factory=list)


@pytest.fixture
async def control_plane() -> AsyncIterator[StandIn]:
    port = free_port()
    state = StandIn(url=f"http://127.0.0.1:{port}", policy=snapshot("1"))

    async def policy(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"detail": "bad token"}, status=401)
        if state.mode == "down500":
            return web.json_response({"detail": "boom"}, status=500)
        if state.mode == "garbage":
            return web.Response(body=b'{"keys": "not a list"}', content_type="application/json")
        etag = f'"{state.policy.version}"'
        inm = request.headers.get("If-None-Match")
        state.seen_if_none_match.append(inm)
        if inm == etag:
            state.conditional_hits += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(
            body=state.policy.model_dump_json(),
            content_type="application/json",
            headers={"ETag": etag},
        )

    app = web.Application()
    app.router.add_get("/api/v1/sidecar/policy", policy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    await runner.cleanup()


async def test_fetches_then_uses_etag_and_persists(tmp_path: Path, control_plane: StandIn) -> None:
    registry = CollectorRegistry()
    store = PolicyStore(tmp_path)
    sync = PolicySync(
        store, control_plane_url=control_plane.url, token=TOKEN, interval_s=0.05, registry=registry
    )
    await sync.start()
    assert store.version == "1"
    assert store.current.key_for_secret("glk_secret") is not None
    assert control_plane.seen_if_none_match[0] is None
    await asyncio.sleep(0.3)
    assert control_plane.conditional_hits >= 2  # later polls are 304s
    age = registry.get_sample_value("gpuledger_policy_age_seconds")
    assert age is not None and 0 <= age < 1

    control_plane.policy = snapshot("2")
    await asyncio.sleep(0.3)
    assert store.version == "2"
    assert (
        PolicySnapshot.model_validate_json((tmp_path / "policy.json").read_bytes()).version == "2"
    )
    assert registry.get_sample_value("gpuledger_policy_updates_total") == 2
    await sync.close()


async def test_bad_answers_keep_the_last_good_policy(
    tmp_path: Path, control_plane: StandIn
) -> None:
    registry = CollectorRegistry()
    store = PolicyStore(tmp_path)
    sync = PolicySync(
        store, control_plane_url=control_plane.url, token=TOKEN, interval_s=3600, registry=registry
    )
    await sync.start()
    assert store.version == "1"
    control_plane.mode = "garbage"
    assert await sync.sync_once() is False
    control_plane.mode = "down500"
    assert await sync.sync_once() is False
    assert store.version == "1"
    assert registry.get_sample_value("gpuledger_policy_sync_failures_total") == 2
    await sync.close()


async def test_restart_with_control_plane_down_serves_last_good(
    tmp_path: Path, control_plane: StandIn
) -> None:
    store = PolicyStore(tmp_path)
    sync = PolicySync(store, control_plane_url=control_plane.url, token=TOKEN, interval_s=3600)
    await sync.start()
    await sync.close()

    registry = CollectorRegistry()
    restarted = PolicyStore(tmp_path)
    down = PolicySync(
        restarted,
        control_plane_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
        token=TOKEN,
        interval_s=3600,
        registry=registry,
    )
    await down.start()
    assert restarted.version == "1"
    assert restarted.current.key_for_secret("glk_secret") is not None
    age = registry.get_sample_value("gpuledger_policy_age_seconds")
    assert age is not None and age >= 0  # measured from when the snapshot was written
    assert registry.get_sample_value("gpuledger_policy_sync_failures_total") == 1
    await down.close()


async def test_never_synced_ages_from_start(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    sync = PolicySync(
        PolicyStore(tmp_path),
        control_plane_url=f"http://127.0.0.1:{free_port()}",
        token=TOKEN,
        registry=registry,
    )
    await sync.start()
    await asyncio.sleep(0.2)
    age = registry.get_sample_value("gpuledger_policy_age_seconds")
    assert age is not None and age >= 0.2
    await sync.close()


async def test_real_control_plane_etag_and_updates(tmp_path: Path) -> None:
    from tests.control_plane_support import (
        SIDECAR_TOKEN,
        admin_client,
        cp_settings,
        run_control_plane,
        sqlite_url,
    )

    with run_control_plane(cp_settings(sqlite_url(tmp_path))) as cp_url:
        with admin_client(cp_url) as admin:
            admin.post("/api/v1/features", json={"name": "chat", "owner": "t"}).raise_for_status()
            secret = admin.post("/api/v1/keys", json={"name": "k", "features": ["chat"]}).json()[
                "secret"
            ]
        registry = CollectorRegistry()
        store = PolicyStore(tmp_path / "state")
        sync = PolicySync(
            store, control_plane_url=cp_url, token=SIDECAR_TOKEN, interval_s=3600, registry=registry
        )
        await sync.start()
        first = store.version
        assert store.current.key_for_secret(secret) is not None
        assert await sync.sync_once()  # unchanged: a 304, no new snapshot
        assert registry.get_sample_value("gpuledger_policy_updates_total") == 1
        with admin_client(cp_url) as admin:
            admin.post("/api/v1/features", json={"name": "other", "owner": "t"}).raise_for_status()
        assert await sync.sync_once()
        assert store.version != first and "other" in store.current.features
        assert registry.get_sample_value("gpuledger_policy_updates_total") == 2
        await sync.close()
    state = (tmp_path / "state" / "policy.json").read_bytes()
    assert secret.encode() not in state
