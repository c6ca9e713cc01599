"""The engine simulator: vLLM's wire formats and metric names, and continuous-batching behaviour.

Each test runs a simulator in-process on a free port and talks to it over HTTP (raw aiohttp or
the real `openai` client). Timing assertions are orderings forced by the scheduler (a queued
request cannot see its first token before a slot frees), never speeds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from serving.simulator import create_app, estimate_tokens
from serving.simulator_core import Scheduler, SimConfig, SimRequest, preset
from tests.conftest import free_port

# vLLM's metric names this simulator promises (from the real engine; /work/shared/notes/vllm-cpu.md).
VLLM_NAMES = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
    "vllm:iteration_tokens_total", "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
    "vllm:request_time_per_output_token_seconds",
}  # fmt: skip


async def _serve(cfg: SimConfig) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    runner, url = await _serve(preset("tiny", speedup=20.0))
    yield url
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _families(text: str) -> dict[str, list[str]]:
    """metric family name (as in `# TYPE`) -> its sample lines; `_created` series left out."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            if not name.endswith("_created"):
                out[name] = []
        elif line and not line.startswith("#"):
            sample = re.split(r"[{ ]", line, maxsplit=1)[0]
            base = re.sub(r"_(bucket|sum|count)$", "", sample)
            for fam in (sample, base):
                if fam in out:
                    out[fam].append(line)
                    break
    return out


def _gauge(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


async def test_metric_names_are_vllms(sim: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim}/metrics") as r:
        fams = _families(await r.text())
    ours = {f for f in fams if f.startswith("vllm:")}
    assert ours == VLLM_NAMES
    for fam in ours:  # labels as vLLM's: engine="0", model_name=<served name>
        assert all('engine="0"' in s and 'model_name="tiny"' in s for s in fams[fam]), fam


@pytest.mark.engine
async def test_metric_names_match_the_real_engine(sim: str, engine_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim}/metrics") as r:
        ours = {f for f in _families(await r.text()) if f.startswith("vllm:")}
    async with http.get(f"{engine_url}/metrics") as r:
        real = {f for f in _families(await r.text()) if f.startswith("vllm:")}
    assert ours <= real, sorted(ours - real)


async def test_requests_beyond_max_num_seqs_wait(http: aiohttp.ClientSession) -> None:
    # 2 slots, 6 requests of 12 tokens: 4 must queue, and they see their first token only after
    # an earlier request has finished.
    cfg = replace(preset("tiny"), max_num_seqs=2, step_base_s=0.02)
    runner, url = await _serve(cfg)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 12, "ignore_eos": True}

    async def one() -> dict[str, float]:
        r = await http.post(f"{url}/v1/completions", json=body)
        out = orjson.loads(await r.read())
        return {"ok": r.status == 200, "n": out["usage"]["completion_tokens"]}

    try:
        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.1)
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
        assert _gauge(text, "vllm:num_requests_running") == 2
        assert _gauge(text, "vllm:num_requests_waiting") == 4
        results = await asyncio.gather(*tasks)
        assert all(r["ok"] and r["n"] == 12 for r in results)
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
        assert _gauge(text, "vllm:num_requests_waiting") == 0
        lengths = re.search(r'^vllm:request_success_total{[^}]*finished_reason="length"[^}]*} (\S+)$',
                            text, re.M)  # fmt: skip
        assert lengths and float(lengths.group(1)) == 6  # each stopped at max_tokens
        # Queue time is recorded: the 4 late requests waited at least one full request (12 steps).
        q_sum = _gauge(text, "vllm:request_queue_time_seconds_sum")
        assert q_sum >= 4 * 12 * 0.02 * 0.9
    finally:
        await runner.cleanup()


async def _finished(reqs: list[SimRequest]) -> None:
    """Wait on each request's waiter, as the HTTP handlers do."""
    loop = asyncio.get_running_loop()
    for r in reqs:
        while not r.finished:
            r.waiter = loop.create_future()
            await r.waiter


async def test_ttft_grows_behind_a_full_batch() -> None:
    sched = Scheduler(replace(preset("tiny"), max_num_seqs=1, speedup=50.0))
    sched.start()
    try:
        reqs = [SimRequest(10, 8, None) for _ in range(3)]
        for r in reqs:
            sched.submit(r)
        await _finished(reqs)
        firsts = [r.first_token_at for r in reqs]
        # Serial: each one's first token comes after the previous one's last.
        assert reqs[0].finished_at <= firsts[1] and reqs[1].finished_at <= firsts[2]
    finally:
        await sched.stop()


async def test_kv_cache_pressure_preempts_and_still_finishes() -> None:
    # 16 blocks of 16 tokens; four requests that each grow to 7 blocks cannot all fit.
    cfg = replace(preset("tiny"), kv_cache_tokens=256, speedup=100.0)
    sched = Scheduler(cfg)
    sched.start()
    try:
        reqs = [SimRequest(40, 60, None) for _ in range(4)]
        for r in reqs:
            sched.submit(r)
        await _finished(reqs)
        assert sched.stats.preemptions > 0
        assert all(r.produced == 60 and r.finish_reason == "length" for r in reqs)
        assert sched.used_blocks == 0
    finally:
        await sched.stop()


async def test_prefix_cache_hits_repeat_prompts() -> None:
    sched = Scheduler(preset("tiny"))
    text = b"x" * 400  # 100 tokens: 6 full blocks
    a, b = SimRequest(100, 1, None), SimRequest(100, 1, None)
    sched.submit(a, text)
    sched.submit(b, text)
    assert a.cached_tokens == 0 and b.cached_tokens == 96
    assert sched.stats.prefix_hits == 96 and sched.stats.prefix_queries == 200


async def test_streamed_chat_has_vllms_sse_format(sim: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    async with http.post(f"{sim}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c for c in chunks[1:] if c["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in content][-1] == "length"
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert usage["completion_tokens"] == 5 == len(text.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


async def test_openai_client_usage_is_consistent(sim: str, http: aiohttp.ClientSession) -> None:
    client = openai.AsyncOpenAI(base_url=f"{sim}/v1", api_key="unused")
    prompt = "count the tokens of this prompt please " * 3
    out = await client.completions.create(model="tiny", prompt=prompt, max_tokens=7)
    assert out.usage is not None and out.usage.completion_tokens == 7
    assert out.choices[0].finish_reason == "length"
    async with http.post(f"{sim}/tokenize", json={"prompt": prompt}) as r:
        assert (await r.json())["count"] == out.usage.prompt_tokens == 1 + estimate_tokens(prompt)
    # Completions default to 16 tokens; chat to the rest of the context, cut by the natural EOS.
    out = await client.completions.create(model="tiny", prompt="hi")
    assert out.usage is not None and out.usage.completion_tokens == 16
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=300, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == preset("tiny").natural_output_tokens


async def test_errors_use_vllms_envelope(sim: str, http: aiohttp.ClientSession) -> None:
    async def post(body: object) -> tuple[int, dict[str, object]]:
        async with http.post(f"{sim}/v1/completions", data=orjson.dumps(body)) as r:
            return r.status, (await r.json())["error"]

    status, err = await post({"model": "tiny", "prompt": "hi", "max_tokens": 10_000})
    assert status == 400 and err["param"] == "max_tokens" and err["type"] == "BadRequestError"
    status, err = await post({"model": "nope", "prompt": "hi"})
    assert status == 404 and err["type"] == "NotFoundError"
    status, err = await post({"model": "tiny", "prompt": "word " * 600})
    assert status == 400 and "maximum context length" in str(err["message"])
    async with http.post(f"{sim}/v1/completions", data=b"{not json") as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == 400
    # prompt + max_tokens over the context is capped, not refused (as vLLM).
    status_ok = await http.post(f"{sim}/v1/completions", json={"model": "tiny", "prompt": "word " * 300, "max_tokens": 500})
    assert status_ok.status == 200 and (await status_ok.json())["choices"][0]["finish_reason"] == "length"


async def test_client_disconnect_frees_the_slot(http: aiohttp.ClientSession) -> None:
    runner, url = await _serve(replace(preset("tiny"), step_base_s=0.02))
    try:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 400, "stream": True, "ignore_eos": True}
        async with http.post(f"{url}/v1/completions", json=body) as r:
            await r.content.readline()
        for _ in range(100):
            async with http.get(f"{url}/metrics") as m:
                text = await m.text()
            if _gauge(text, "vllm:num_requests_running") == 0:
                break
            await asyncio.sleep(0.05)
        assert _gauge(text, "vllm:num_requests_running") == 0
        assert _gauge(text, "vllm:kv_cache_usage_perc") == 0
    finally:
        await runner.cleanup()


async def test_prompt_larger_than_the_kv_cache_is_aborted(http: aiohttp.ClientSession) -> None:
    runner, url = await _serve(replace(preset("tiny"), kv_cache_tokens=64))
    try:
        async with http.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "word " * 100}) as r:
            assert r.status == 500 and "KV cache" in (await r.json())["error"]["message"]
        async with http.get(f"{url}/metrics") as m:
            text = await m.text()
        assert 'finished_reason="abort",model_name="tiny"} 1.0' in text
        assert _gauge(text, "vllm:kv_cache_usage_perc") == 0
    finally:
        await runner.cleanup()
