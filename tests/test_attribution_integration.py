"""The attribution clock driven by real streams from the real vLLM engine.

The sidecar's proxy is another engineer's module; these tests drive `EngineClock` from their own
small aiohttp streaming client with the same events the sidecar emits (admit after sending,
progress per chunk, finish after the last chunk), so they check the clock against real timing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from sidecar.attribution import EngineClock

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
