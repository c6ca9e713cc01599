"""GPU-second budgets across sidecars, end to end.

Real control plane (leases), three real sidecar apps with distinct sidecar ids, the real vLLM
engine. 200 concurrent requests (max_tokens 8) hit a budget sized from a calibration run to cover
about 50 of them. The total charged must stay within the limit plus one maximal request per
sidecar, and every refusal must be 429 `budget_exceeded`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from sidecar.settings import Settings as SidecarSettings
from tests.control_plane_support import SIDECAR_TOKEN, admin_client, cp_settings, run_control_plane
from tests.sidecar_support import run_sidecar

pytestmark = pytest.mark.engine

SIDECARS = 3


def seed(base_url: str, engine_url: str) -> str:
    with admin_client(base_url) as admin:
        for name in ("calib", "metered"):
            admin.post("/api/v1/features", json={"name": name, "owner": "t"}).raise_for_status()
        admin.put(
            "/api/v1/engines/local",
            json={"url": engine_url, "model": "tiny", "gpu_type": "cpu", "gpus": 1},
        ).raise_for_status()
        resp = admin.post("/api/v1/keys", json={"name": "k", "features": ["metered", "calib"]})
        resp.raise_for_status()
        secret: str = resp.json()["secret"]
        return secret


def charges(db_path: Path, feature: str) -> list[float]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT gpu_seconds FROM usage_records WHERE feature = ? AND status NOT LIKE 'rejected%'",
            (feature,),
        ).fetchall()
    return [float(r[0]) for r in rows]


def backlog(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("gpuledger_spool_backlog_records "):
            return float(line.split()[1])
    raise AssertionError("no backlog metric")


async def fire(urls: list[str], secret: str, feature: str, n: int) -> list[object]:
    clients = [
        openai.AsyncOpenAI(base_url=f"{u}/v1", api_key=secret, max_retries=0, timeout=300)
        for u in urls
    ]

    async def one(i: int) -> object:
        try:
            return await clients[i % len(clients)].completions.create(
                model="tiny",
                prompt=f"budget test {i}",
                max_tokens=8,
                extra_headers={"X-Feature": feature},
            )
        except openai.APIStatusError as exc:
            return exc

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        for c in clients:
            await c.close()


def test_three_sidecars_hold_one_budget(tmp_path: Path, engine_url: str) -> None:
    db_path = tmp_path / "cp.db"
    with ExitStack() as stack:
        cp_url = stack.enter_context(
            run_control_plane(cp_settings(f"sqlite+aiosqlite:///{db_path}"))
        )
        secret = seed(cp_url, engine_url)
        urls = [
            stack.enter_context(
                run_sidecar(
                    SidecarSettings(
                        sidecar_id=f"sidecar-{i}",
                        control_plane_url=cp_url,
                        control_plane_token=SIDECAR_TOKEN,
                        state_dir=tmp_path / f"sidecar-{i}",
                        upstream_url=engine_url,
                        tracing_enabled=False,
                        engine_watch_enabled=False,
                        policy_sync_interval_s=0.5,
                    )
                )
            )
            for i in range(SIDECARS)
        ]

        def drained() -> None:
            deadline = time.monotonic() + 60
            while any(backlog(u) for u in urls):
                assert time.monotonic() < deadline, "spools did not drain"
                time.sleep(0.2)

        # Calibrate: what does one such request cost on this engine, at this concurrency?
        calib = asyncio.run(fire(urls, secret, "calib", 24))
        assert all(isinstance(r, openai.types.Completion) for r in calib)
        drained()
        costs = charges(db_path, "calib")
        assert len(costs) == 24 and all(c > 0 for c in costs)
        mean = sum(costs) / len(costs)
        limit_s = 50 * mean
        with admin_client(cp_url) as admin:
            admin.put(
                "/api/v1/budgets/metered",
                json={"period": "month", "gpu_hours": limit_s / 3600, "hard_action": "reject"},
            ).raise_for_status()
        time.sleep(2.0)  # every sidecar syncs the policy with the new budget

        results = asyncio.run(fire(urls, secret, "metered", 200))
        drained()
        burst = charges(db_path, "metered")
        burst_total = sum(burst)
        # Later waves: what the burst left of the budget is still usable, never more.
        for _ in range(6):
            time.sleep(1.0)
            wave = asyncio.run(fire(urls, secret, "metered", 30))
            results += wave
            if not any(isinstance(r, openai.types.Completion) for r in wave):
                break
        drained()

    ok = [r for r in results if isinstance(r, openai.types.Completion)]
    refused = [r for r in results if not isinstance(r, openai.types.Completion)]
    for r in refused:
        assert isinstance(r, openai.APIStatusError)
        assert r.status_code == 429, r
        body = r.body if isinstance(r.body, dict) else {}
        assert body.get("code") == "budget_exceeded" or r.code == "budget_exceeded", r.body
        assert int(r.response.headers["retry-after"]) >= 1
    charged = charges(db_path, "metered")
    assert len(charged) == len(ok)  # one record per admitted request, none for refusals
    max_request = max(charged + costs)
    total = sum(charged)
    print(
        f"calibrated {mean:.4f} GPU-s/request (max {max(costs):.4f}), limit {limit_s:.3f} GPU-s; "
        f"burst of 200 admitted {len(burst)} at {burst_total / max(1, len(burst)):.4f} GPU-s each, "
        f"charged {burst_total:.3f}; in all admitted {len(ok)}, refused {len(refused)}, charged "
        f"{total:.3f} GPU-s (max request {max_request:.4f}); Retry-After values "
        f"{sorted({int(r.response.headers['retry-after']) for r in refused})[:3]}..."  # type: ignore[attr-defined]
    )
    assert refused, "the budget must bind"
    # How many fit depends on the engine's load (per-request cost swings ~10x between
    # calibration and burst), so no count is asserted; the numbers are printed. But the budget
    # must be used, not refused while most of it is left.
    assert total >= 0.5 * limit_s, "the budget refused requests while half of it was left"
    # Estimates use the recent peak cost per token (sidecar/budget_state.py), so the bound holds
    # unless the engine itself gets several times slower between calibration and burst (seen
    # only with CPU hogs beside the test: 5-50x dearer requests, 2 overshoots in 10 runs).
    assert burst_total <= limit_s + SIDECARS * max_request
    assert total <= limit_s + SIDECARS * max_request
