"""The budget lease guard: reservations, settlement, hard actions, renewal, fail-open/closed.

The lease endpoint here is a small aiohttp stand-in with the control plane's lease arithmetic
(one replaceable lease per sidecar; grants never exceed limit - used - other sidecars' leases),
so tests can take it down mid-test and read exactly what was reported. The real control plane
is used in tests/test_budget_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gpuledger.contracts import (
    BudgetState,
    FeaturePolicy,
    KeyPolicy,
    PolicySnapshot,
    UsageRecord,
)
from sidecar.budget import BudgetAdmission, BudgetGuard
from sidecar.errors import RateLimited
from sidecar.hooks import RequestContext
from sidecar.policy import PolicyStore
from tests.conftest import free_port

TOKEN = "sidecar-token-b"
PERIOD_END = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)


@dataclass
class LeaseStandIn:
    url: str
    limit: float = 10.0
    used: float = 0.0
    hard_action: str = "reject"
    leases: dict[str, float] = field(default_factory=dict)
    reported: float = 0.0
    up: bool = True
    calls: int = 0
    period_end: datetime = PERIOD_END

    def grant(self, req: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.used += req["settled_gpu_seconds"]
        self.reported += req["settled_gpu_seconds"]
        others = sum(v for k, v in self.leases.items() if k != req["sidecar_id"])
        room = max(0.0, self.limit - self.used - others)
        granted = min(req["requested_gpu_seconds"], room)
        self.leases[req["sidecar_id"]] = granted
        return {
            "feature": req["feature"],
            "granted_gpu_seconds": granted,
            "expires_at": (datetime.now(UTC) + timedelta(seconds=30)).isoformat(),
            "period_end": self.period_end.isoformat(),
            "exhausted": self.limit - self.used <= 0,
            "hard_action": self.hard_action,
        }


@pytest.fixture
async def leases() -> AsyncIterator[LeaseStandIn]:
    port = free_port()
    state = LeaseStandIn(url=f"http://127.0.0.1:{port}")

    async def handler(request: web.Request) -> web.Response:
        if not state.up:
            return web.json_response({"detail": "down"}, status=503)
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return web.json_response(state.grant(orjson.loads(await request.read())))

    app = web.Application()
    app.router.add_post("/api/v1/sidecar/leases", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    await runner.cleanup()


def store_with_budget(hard_action: str = "reject", used: float = 0.0) -> PolicyStore:
    store = PolicyStore()
    store.replace(
        PolicySnapshot(
            version="1",
            features=[FeaturePolicy(name="chat"), FeaturePolicy(name="free")],
            budgets=[
                BudgetState(
                    feature="chat",
                    period="day",
                    period_start=PERIOD_END - timedelta(days=1),
                    period_end=PERIOD_END,
                    limit_gpu_seconds=10.0,
                    used_gpu_seconds=used,
                    hard_action=hard_action,
                )
            ],
        ),
        persist=False,
    )
    return store


def ctx(feature: str = "chat", prompt: int = 10, max_out: int = 10) -> RequestContext:
    key = KeyPolicy(
        id="k", name="k", key_hash="0" * 64, features=[feature], default_feature=feature
    )
    return RequestContext(
        request_id="r",
        key=key,
        feature=FeaturePolicy(name=feature),
        model="tiny",
        engine="local",
        stream=False,
        prompt_tokens_estimate=prompt,
        max_output_tokens=max_out,
        started_at=datetime.now(UTC),
    )


def usage(gpu_seconds: float, tokens: int = 20) -> UsageRecord:
    return UsageRecord(
        id="u",
        feature="chat",
        model="tiny",
        upstream="local",
        started_at=datetime.now(UTC),
        input_tokens=tokens // 2,
        output_tokens=tokens - tokens // 2,
        gpu_seconds=gpu_seconds,
    )


def guard(store: PolicyStore, url: str, **kw: Any) -> BudgetGuard:
    kw.setdefault("prior_gpu_seconds_per_token", 0.05)  # 20 tokens x 0.05 x 1.25 = 1.25 GPU-s
    kw.setdefault("min_request_gpu_s", 100.0)  # ask for everything: easy arithmetic
    kw.setdefault("lease_wait_s", 0.2)
    return BudgetGuard(store, sidecar_id="s1", control_plane_url=url, token=TOKEN, **kw)


async def test_feature_without_budget_only_teaches_the_cost(leases: LeaseStandIn) -> None:
    g = guard(store_with_budget(), leases.url, prior_gpu_seconds_per_token=0.01, tick_s=3600)
    await g.start()
    for _ in range(3):
        adm = await g.admit(ctx("free"))
        await adm.settle(usage(2.0, tokens=20))  # 0.1 GPU-s per token
    assert g.features["chat"].reserved == 0.0
    # A budgeted feature without history borrows the cost learned from all traffic (the first
    # request replaced the prior), not the prior.
    adm = await g.admit(ctx("chat"))
    assert isinstance(adm, BudgetAdmission)
    assert adm.estimate == pytest.approx(20 * 0.1 * 1.25)
    await g.close()


async def test_admits_while_the_lease_covers_then_refuses(leases: LeaseStandIn) -> None:
    g = guard(store_with_budget(), leases.url, tick_s=3600)
    await g.start()
    st = g.features["chat"]
    assert st.granted == 10.0
    admitted = []
    with pytest.raises(RateLimited) as err:
        for _ in range(100):
            admitted.append(await g.admit(ctx()))
    assert len(admitted) == 8  # 8 x 1.25 = 10 GPU-s reserved
    assert err.value.code == "budget_exceeded"
    assert err.value.status == 429
    assert err.value.headers["retry-after"] == "1"  # lease short, budget not spent
    # Settling at the real (lower) cost frees the difference.
    for adm in admitted:
        assert adm is not None
        await adm.settle(usage(0.5))
    assert st.reserved == pytest.approx(0.0)
    assert st.spent == pytest.approx(4.0)
    assert await g.admit(ctx()) is not None
    await g.close()
    assert leases.reported == pytest.approx(4.0)  # close reports and releases
    assert leases.leases["s1"] == 0.0


async def test_released_admission_charges_nothing(leases: LeaseStandIn) -> None:
    g = guard(store_with_budget(), leases.url, tick_s=3600)
    await g.start()
    adm = await g.admit(ctx())
    assert adm is not None
    await adm.settle(None)
    st = g.features["chat"]
    assert st.reserved == 0.0 and st.spent == 0.0
    await g.close()


async def test_rate_is_learned_fast_up_slow_down(leases: LeaseStandIn) -> None:
    g = guard(store_with_budget(), leases.url, tick_s=3600, prior_gpu_seconds_per_token=0.01)
    await g.start()
    st = g.features["chat"]
    for gpu_seconds, want in (
        (2.0, 0.1),  # 0.1 GPU-s per token: the first request replaces the prior (0.01)
        (0.0002, 0.1 + 0.05 * (0.00001 - 0.1)),  # cheaper: falls 5% of the gap
        (4.0, 0.095 + 0.5 * (0.2 - 0.095)),  # dearer: rises half the gap
    ):
        adm = await g.admit(ctx())
        assert adm is not None
        await adm.settle(usage(gpu_seconds, tokens=20))
        assert st.cost.rate == pytest.approx(want, rel=1e-3)
    await g.close()


async def test_exhausted_budget_retries_after_period_end(leases: LeaseStandIn) -> None:
    leases.used = 10.0
    g = guard(store_with_budget(used=10.0), leases.url, tick_s=3600)
    await g.start()
    with pytest.raises(RateLimited) as err:
        await g.admit(ctx())
    retry = int(err.value.headers["retry-after"])
    # PERIOD_END is fixed at import; the suite may reach this test minutes later.
    to_period_end = (PERIOD_END - datetime.now(UTC)).total_seconds()
    assert to_period_end - 5 < retry <= to_period_end + 1
    await g.close()


async def test_zero_grant_while_peers_hold_the_budget_retries_soon(
    leases: LeaseStandIn,
) -> None:
    leases.leases["peer"] = 10.0  # another sidecar holds the whole limit; nothing is spent
    g = guard(store_with_budget(), leases.url)
    await g.start()
    st = g.features["chat"]
    assert st.granted == 0.0 and st.exhausted is False
    with pytest.raises(RateLimited) as err:
        await g.admit(ctx())
    assert err.value.code == "budget_exceeded"
    assert err.value.headers["retry-after"] == "1"  # not the period's end, 3 hours away
    leases.leases["peer"] = 0.0  # the peer settles nothing and hands its lease back
    await asyncio.sleep(1.1)  # the client honours Retry-After; the guard re-asks meanwhile
    assert await g.admit(ctx()) is not None
    assert st.granted == 10.0 and st.exhausted is False
    await g.close()


async def test_alert_only_admits_and_escalate_refuses_with_note(leases: LeaseStandIn) -> None:
    leases.used = 10.0
    leases.hard_action = "alert_only"
    g = guard(store_with_budget("alert_only", used=10.0), leases.url, tick_s=3600)
    await g.start()
    c = ctx()
    assert await g.admit(c) is not None
    assert c.response_headers["x-gpuledger-budget"] == "exceeded"
    await g.close()

    leases.hard_action = "escalate"
    g = guard(store_with_budget("escalate", used=10.0), leases.url, tick_s=3600)
    await g.start()
    with pytest.raises(RateLimited) as err:
        await g.admit(ctx())
    assert err.value.code == "budget_exceeded"
    assert "escalation" in err.value.message
    await g.close()


async def test_background_renewal_reports_settled_charges(leases: LeaseStandIn) -> None:
    leases.limit = 3.0
    g = guard(store_with_budget(), leases.url, tick_s=0.02, min_call_interval_s=0.01)
    await g.start()
    ran = refused = 0
    for _ in range(12):
        try:
            adm = await g.admit(ctx())
        except RateLimited:
            refused += 1
            await asyncio.sleep(0.1)  # the refusal kicked a renewal
            continue
        assert adm is not None
        await adm.settle(usage(0.5))
        ran += 1
        await asyncio.sleep(0.05)
    await g.close()
    # Estimates are 1.25 GPU-s, real cost 0.5: the lease is renewed as it runs low, and the
    # requests stop only when what is left of the budget can't cover one more estimate.
    assert ran >= 4 and refused >= 1
    assert ran * 0.5 <= 3.0
    assert leases.reported == pytest.approx(0.5 * ran)  # every charge reached the control plane
    assert leases.calls >= 2


async def test_fail_open_within_staleness_then_closed(leases: LeaseStandIn) -> None:
    registry = CollectorRegistry()
    g = guard(
        store_with_budget(),
        leases.url,
        tick_s=3600,
        staleness_s=1.0,
        min_request_gpu_s=1.0,  # a lease smaller than one request
        registry=registry,
    )
    leases.limit = 1.0  # a lease (and budget) smaller than one request's estimate
    await g.start()
    with pytest.raises(RateLimited):
        await g.admit(ctx())
    leases.up = False
    st = g.features["chat"]
    await g._call(st)  # the next renewal fails: control plane "unreachable"
    assert st.failing
    assert await g.admit(ctx()) is not None  # fail-open
    assert registry.get_sample_value("gpuledger_budget_fail_open_total", {"feature": "chat"}) == 1
    await asyncio.sleep(1.0)
    with pytest.raises(RateLimited) as err:
        await g.admit(ctx())  # past the staleness bound
    assert err.value.code == "budget_exceeded"
    leases.up = True
    await g.close()


async def test_fail_closed_refuses_when_unreachable(leases: LeaseStandIn) -> None:
    g = guard(
        store_with_budget(), leases.url, tick_s=3600, fail_mode="closed", min_request_gpu_s=1.0
    )
    leases.limit = 1.0
    await g.start()
    with pytest.raises(RateLimited):
        await g.admit(ctx())
    leases.up = False
    await g._call(g.features["chat"])
    assert g.features["chat"].failing
    with pytest.raises(RateLimited):
        await g.admit(ctx())
    leases.up = True
    await g.close()


async def test_two_sidecars_share_one_budget(leases: LeaseStandIn) -> None:
    leases.limit = 5.0
    g1 = guard(store_with_budget(), leases.url, tick_s=3600, min_request_gpu_s=2.5)
    g2 = BudgetGuard(
        store_with_budget(),
        sidecar_id="s2",
        control_plane_url=leases.url,
        token=TOKEN,
        tick_s=3600,
        prior_gpu_seconds_per_token=0.05,
        min_request_gpu_s=100.0,
    )
    await g1.start()
    await g2.start()
    assert g1.features["chat"].granted + g2.features["chat"].granted <= 5.0
    await g1.close()
    await g2.close()


async def test_burst_beyond_the_lease_waits_for_the_renewal(leases: LeaseStandIn) -> None:
    leases.limit = 20.0
    g = guard(
        store_with_budget(), leases.url, tick_s=3600, min_request_gpu_s=10.0, lease_wait_s=5.0
    )
    await g.start()
    assert g.features["chat"].granted == 10.0  # covers 8 estimates of 1.25
    admitted = await asyncio.gather(*(g.admit(ctx()) for _ in range(12)))
    assert all(isinstance(a, BudgetAdmission) for a in admitted)
    st = g.features["chat"]
    assert st.granted == 20.0  # the renewal asked for the 4 waiting requests too
    assert st.reserved == pytest.approx(15.0)
    assert st.waiting == 0.0
    # Beyond the budget itself, a burst is refused after the wait, not admitted.
    g.lease_wait_s = 0.3
    with pytest.raises(RateLimited):
        await asyncio.wait_for(asyncio.gather(*(g.admit(ctx()) for _ in range(5))), timeout=10)
    await g.close()


async def test_period_rollover_reopens_an_exhausted_budget(leases: LeaseStandIn) -> None:
    leases.used = 10.0
    leases.period_end = datetime.now(UTC) + timedelta(seconds=1.5)
    g = guard(store_with_budget(used=10.0), leases.url, tick_s=0.05, min_call_interval_s=0.01)
    await g.start()
    with pytest.raises(RateLimited) as err:
        await g.admit(ctx())
    assert 1 <= int(err.value.headers["retry-after"]) <= 2  # at the period's end, exactly
    # The control plane rolls the period over: spend restarts, a new period end.
    leases.used = 0.0
    leases.period_end = PERIOD_END
    await asyncio.sleep(1.6)
    adm = await g.admit(ctx())  # the old lease is void past its period: renewed, then admitted
    assert isinstance(adm, BudgetAdmission)
    assert g.features["chat"].period_end == PERIOD_END.timestamp()
    await g.close()
