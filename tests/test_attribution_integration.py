"""The attribution clock driven by real streams from the real vLLM engine.

Two ways: through the real sidecar (uvicorn, `tests.sidecar_support.run_sidecar`), reading its
usage records and /metrics; and directly, from a small aiohttp streaming client that sends the
clock the same events the sidecar does (admit after sending, progress per chunk, finish after the
last chunk), which also compares the charge with vLLM's own per-request timings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from sidecar.app import create_app
from sidecar.attribution import EngineClock
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

pytestmark = pytest.mark.engine

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven"]


@dataclass
class Stream:
    rid: str
    sent: float = 0.0
    done: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    charge: float = 0.0
    engine_metrics: dict[str, float] | None = None


async def stream_one(
    session: aiohttp.ClientSession,
    url: str,
    clock: EngineClock,
    rid: str,
    words: int,
    max_tokens: int,
) -> Stream:
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    body = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    out = Stream(rid)
    out.sent = time.monotonic()
    # A rough prompt estimate (about 4 characters a token), as a sidecar makes before tokenizing.
    clock.admit(rid, prompt_tokens=len(prompt) // 4)
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            usage = chunk.get("usage")
            if usage:
                out.prompt_tokens = usage["prompt_tokens"]
                out.output_tokens = usage["completion_tokens"]
                clock.progress(rid, out.output_tokens)
            if chunk.get("metrics"):
                out.engine_metrics = chunk["metrics"]
    out.charge = clock.finish(
        rid, prompt_tokens=out.prompt_tokens, output_tokens=out.output_tokens
    )
    out.done = time.monotonic()
    return out


async def test_lone_request_is_charged_its_service_time(engine_url: str) -> None:
    clock = EngineClock("tiny", gpus=1, prefill_cost_factor=0.2)
    async with aiohttp.ClientSession() as session:
        s = await stream_one(session, engine_url, clock, "lone", words=60, max_tokens=150)
    assert s.output_tokens == 150
    service = s.done - s.sent
    assert s.charge == pytest.approx(service, rel=0.05)
    assert clock.busy_gpu_seconds == pytest.approx(s.charge, rel=1e-6)
    # The engine's own view (vLLM per-request metrics) of the same request: what the sidecar
    # sees adds only HTTP and tokenization time on top, a few ms on this machine.
    if s.engine_metrics is not None:
        m = s.engine_metrics
        engine_service = (m["time_to_first_token_ms"] + m["generation_time_ms"]) / 1000.0
        assert engine_service <= s.charge * 1.01
        assert s.charge - engine_service < max(0.05, 0.25 * s.charge)


async def test_sixteen_concurrent_streams_add_up(engine_url: str) -> None:
    gpus = 2  # pretend TP=2: charges and busy time both scale
    clock = EngineClock("tiny", gpus=gpus, prefill_cost_factor=0.2)
    # (prompt words, max_tokens), varied; the tiny tokenizer makes ~4 tokens a word, context 512.
    shapes = [(3 + 23 * i % 60, 8 + 37 * i % 200) for i in range(16)]
    async with aiohttp.ClientSession() as session:
        streams = await asyncio.gather(
            *(
                stream_one(session, engine_url, clock, f"r{i}", w, m)
                for i, (w, m) in enumerate(shapes)
            )
        )
    assert clock.in_flight == 0
    busy = clock.busy_gpu_seconds
    total = sum(s.charge for s in streams)
    assert total == pytest.approx(busy, rel=0.02)
    assert clock.attributed_gpu_seconds == pytest.approx(busy, rel=0.02)
    assert all(s.charge > 0 for s in streams)
    for s, (_, m) in zip(streams, shapes, strict=True):
        assert s.output_tokens == m
    # Busy time is the union of the service windows, not their sum (what a wall-time x rate
    # bill like LiteLLM's would charge): with 16 overlapping streams the sum is far larger.
    first, last = min(s.sent for s in streams), max(s.done for s in streams)
    assert busy <= (last - first) * gpus * 1.001
    walls = sum(s.done - s.sent for s in streams) * gpus
    assert walls > 2 * busy
    # No request pays more than its own wall time x gpus.
    assert all(s.charge <= (s.done - s.sent) * gpus * 1.001 for s in streams)


# --- through the sidecar --------------------------------------------------------------------

GPUS, RATE = 2, 3.6  # a pretend TP=2 engine at $3.60/h: 1 GPU-second = $0.001


@dataclass
class Sidecar:
    url: str
    sink: MemorySink
    registry: CollectorRegistry

    def sample(self, name: str) -> float:
        value = self.registry.get_sample_value(name, {"engine": "local"})
        return 0.0 if value is None else value


@pytest.fixture
def sidecar(engine_url: str, tmp_path: Path) -> Iterator[Sidecar]:
    """A fresh sidecar per test, so its attribution clock sees only that test's requests."""
    store = PolicyStore(tmp_path)
    base = dev_snapshot(engine_url)
    engines = [e.model_copy(update={"gpus": GPUS, "hourly_rate_usd": RATE}) for e in base.engines]
    store.replace(base.model_copy(update={"engines": engines}))
    sink, registry = MemorySink(), CollectorRegistry()
    settings = Settings(upstream_url=engine_url, state_dir=tmp_path, engine_watch_enabled=False)
    app = create_app(settings, policy_store=store, sink=sink, registry=registry)
    with run_sidecar(app=app) as url:
        yield Sidecar(url, sink, registry)


async def through_sidecar(
    session: aiohttp.ClientSession, url: str, words: int, max_tokens: int
) -> tuple[float, float]:
    """One streamed completion via the sidecar; returns (sent, last byte) monotonic times."""
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {DEV_SECRET}"}
    sent = time.monotonic()
    async with session.post(f"{url}/v1/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for _ in resp.content:
            pass
    return sent, time.monotonic()


def test_sidecar_lone_request_is_charged_its_service_time(sidecar: Sidecar) -> None:
    async def go() -> tuple[float, float]:
        async with aiohttp.ClientSession() as session:
            return await through_sidecar(session, sidecar.url, 60, 150)

    sent, done = asyncio.run(go())
    (record,) = sidecar.sink.wait_for(1)
    assert record.status == "ok" and record.output_tokens == 150
    # Its charge is its whole service time x gpus: the sidecar's e2e (which also covers the
    # sidecar's own few ms before sending) and the client's view, within 5%.
    assert record.gpu_seconds == pytest.approx(record.e2e_ms / 1000.0 * GPUS, rel=0.05)
    assert record.gpu_seconds == pytest.approx((done - sent) * GPUS, rel=0.05)
    assert record.cost_usd == pytest.approx(record.gpu_seconds * RATE / 3600.0)


def test_sidecar_sixteen_concurrent_streams_add_up(sidecar: Sidecar) -> None:
    shapes = [(3 + 23 * i % 60, 8 + 37 * i % 200) for i in range(16)]

    async def go() -> list[tuple[float, float]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(
                *(through_sidecar(session, sidecar.url, w, m) for w, m in shapes)
            )

    windows = asyncio.run(go())
    records = sidecar.sink.wait_for(16)
    assert all(r.status == "ok" for r in records)
    assert sorted(r.output_tokens for r in records) == sorted(m for _, m in shapes)
    busy = sidecar.sample("gpuledger_engine_busy_gpu_seconds_total")
    charged = sum(r.gpu_seconds for r in records)
    assert busy > 0
    assert charged == pytest.approx(busy, rel=0.02)
    assert sidecar.sample("gpuledger_attributed_gpu_seconds_total") == pytest.approx(busy, rel=0.02)
    assert abs(sidecar.sample("gpuledger_attribution_drift_ratio")) < 0.02
    assert sidecar.sample("gpuledger_engine_gpus") == GPUS
    assert sum(r.cost_usd for r in records) == pytest.approx(busy * RATE / 3600.0, rel=0.02)
    # The busy clock is the union of the requests' windows, never more than the whole span.
    span = max(d for _, d in windows) - min(s for s, _ in windows)
    assert busy <= span * GPUS * 1.001
    assert sum(r.e2e_ms for r in records) / 1000.0 * GPUS > 2 * busy
