"""The load generator against a real (in-process) engine simulator: what it records and counts."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from bench.loadgen import (
    Result,
    Workload,
    _usage_tokens,
    closed_loop,
    make_session,
    open_loop,
    percentile,
    summarize,
)  # fmt: skip
from serving.simulator import create_app
from serving.simulator_core import preset
from tests.conftest import free_port


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(replace(preset("tiny"), max_num_seqs=16, speedup=20.0)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(timeout_s=30) as s:
        yield s


W = Workload(model="tiny", prompt_chars=200, max_tokens=5)


@pytest.mark.parametrize("stream", [True, False])
async def test_closed_loop_counts_every_request(sim: str, session: aiohttp.ClientSession, stream: bool) -> None:
    results, wall = await closed_loop(session, sim, replace(W, stream=stream), 4, requests=20)
    assert len(results) == 20 and wall > 0
    assert all(r.error is None and r.output_tokens == 5 for r in results)
    assert all(r.ttft is not None and 0 < r.ttft <= r.e2e for r in results)
    s = summarize(results, wall)
    assert s.errors == 0 and s.requests == 20
    assert s.output_tokens_per_s == pytest.approx(100 / wall)
    assert s.ttft_ms["p50"] <= s.ttft_ms["p99"] <= s.e2e_ms["p99"]


async def test_completions_path(sim: str, session: aiohttp.ClientSession) -> None:
    w = replace(W, path="/v1/completions")
    results, _ = await closed_loop(session, sim, w, 2, requests=4)
    assert [r.output_tokens for r in results] == [5] * 4


async def test_closed_loop_stops_at_duration(sim: str, session: aiohttp.ClientSession) -> None:
    results, _ = await closed_loop(session, sim, W, 2, duration_s=0.3)
    assert results and all(r.error is None for r in results)
    # Requests already started finish; none starts after the deadline.
    assert all(r.start < results[0].start + 0.3 + 0.05 for r in results)


async def test_open_loop_arrivals_are_poisson_and_independent(sim: str, session: aiohttp.ClientSession) -> None:
    results, _ = await open_loop(session, sim, W, rate=100, duration_s=1.0, seed=1)
    # 100/s for 1 s: Poisson count, well inside 60..140 for seed 1.
    assert 60 <= len(results) <= 140
    assert all(r.error is None for r in results)
    gaps = sorted(b.start - a.start for a, b in itertools.pairwise(results))
    assert gaps[0] < 0.01 < gaps[-1]  # exponential gaps: some short, some long


async def test_errors_are_recorded_not_raised(sim: str, session: aiohttp.ClientSession) -> None:
    results, _ = await closed_loop(session, sim, replace(W, model="nope"), 2, requests=3)
    assert len(results) == 3 and all(r.error and r.error.startswith("HTTP 404") for r in results)
    results, _ = await closed_loop(session, f"http://127.0.0.1:{free_port()}", W, 1, requests=1)
    assert results[0].error and "Connect" in results[0].error
    s = summarize(results, 1.0)
    assert s.errors == 1 and s.rps == 0 and s.first_error == results[0].error


def test_percentile_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 50 and percentile(xs, 99) == 99 and percentile(xs, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_usage_is_read_from_the_last_event() -> None:
    tail = (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\ndata: [DONE]\n\n')  # fmt: skip
    assert _usage_tokens(tail) == 7
    assert _usage_tokens(b"data: [DONE]\n\n") == 0
    assert summarize([Result(start=0.0, error="x")], 1.0).ttft_ms["p50"] != 0


async def test_hard_stop_counts_unfinished_requests(sim: str, session: aiohttp.ClientSession) -> None:
    # 200 tokens at 20x speed take ~60 ms of steps each; a 10 ms hard stop leaves both unfinished.
    slow = replace(W, max_tokens=200)
    results, wall = await closed_loop(session, sim, slow, 2, duration_s=1.0, hard_stop_s=0.01)
    assert len(results) == 2 and all(r.error == "unfinished at the time limit" for r in results)
    assert wall < 0.5
