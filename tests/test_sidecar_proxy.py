"""The sidecar end to end: real `openai` clients -> sidecar (uvicorn) -> the real vLLM engine.

The tiny model is deterministic at temperature 0, so what the client gets through the sidecar is
compared with what vLLM answers directly; the stream's bytes with what vLLM sent for the same
request. Also: the record is written before the last byte, tracing and metrics.
The gate (guardrails, refusals) is in test_sidecar_proxy_gate.py, cancellation in
test_sidecar_relay.py.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import openai
import pytest

from tests.proxy_support import (
    CHAT,
    EXPIRED_SECRET,
    ONLY_OTHER_SECRET,
    Sidecar,
    direct_fixture,
    post_raw,
    serve_sidecar,
    sidecar_fixture,
)
from tests.sidecar_support import DEV_SECRET, run_recording_tap

__all__ = ["direct_fixture", "sidecar_fixture"]

pytestmark = pytest.mark.engine


# --- parity with vLLM -------------------------------------------------------------------------


def test_sync_chat_equals_direct(sidecar: Sidecar, direct: openai.OpenAI) -> None:
    args: Any = {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0, "seed": 7}
    want = direct.chat.completions.create(**args)
    raw = sidecar.client().chat.completions.with_raw_response.create(**args)
    got = raw.parse()
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.usage == want.usage
    record = sidecar.record(raw.headers["x-gpuledger-request-id"])
    assert record.status == "ok"
    assert (record.input_tokens, record.output_tokens) == (
        want.usage.prompt_tokens,
        want.usage.completion_tokens,
    )
    assert record.key_id == "key_dev" and record.feature == "default"
    assert record.finish_reason == want.choices[0].finish_reason
    assert record.gpu_seconds > 0


def test_stream_without_usage_is_byte_identical(
    engine_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The client gets exactly the bytes vLLM sent for its request, less the usage event the
    sidecar asked for. A tap between the two records what vLLM really sent."""
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 10, "temperature": 0, "stream": True}
    with (
        run_recording_tap(engine_url) as (tap_url, tap),
        serve_sidecar(tap_url, tmp_path_factory.mktemp("tap-state"), tap) as tapped,
    ):
        resp = httpx.post(
            f"{tapped.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {DEV_SECRET}"},
            timeout=120,
        )
        assert resp.status_code == 200
        record = tapped.record(resp.headers["x-gpuledger-request-id"])
    [(sent, from_vllm)] = tap.bodies("/v1/chat/completions")
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    events = from_vllm.decode().split("\n\n")
    [usage_event] = [e for e in events if '"choices":[]' in e and '"usage":{' in e]
    # Without usage, vLLM puts system_fingerprint on the finishing chunk; with it, on the usage
    # chunk. The client must see the former.
    fingerprint = re.search(r'"system_fingerprint":("[^"]*")', usage_event)
    assert fingerprint is not None
    want = [
        e[:-1] + f',"system_fingerprint":{fingerprint.group(1)}}}'
        if re.search(r'"finish_reason":"', e)
        else e
        for e in events
        if e is not usage_event
    ]
    assert resp.text == "\n\n".join(want)
    assert record.output_tokens == 10 and record.input_tokens > 0
    assert record.ttft_ms is not None and record.ttft_ms <= record.e2e_ms
    assert "estimated_tokens" not in record.guardrail_actions


def test_sync_stream_text_and_usage(sidecar: Sidecar, direct: openai.OpenAI) -> None:
    args: Any = {"model": "tiny", "messages": CHAT, "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip

    def collect(client: openai.OpenAI) -> tuple[str, object]:
        text, usage = "", None
        for chunk in client.chat.completions.create(**args):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        return text, usage

    assert collect(sidecar.client()) == collect(direct)
    _, usage = collect(direct)
    record = sidecar.last_record()
    assert record.output_tokens == usage.completion_tokens  # type: ignore[attr-defined]


async def test_async_stream_and_plain(sidecar: Sidecar, direct: openai.OpenAI) -> None:
    client = sidecar.aclient()
    stream = await client.completions.create(
        model="tiny", prompt="the cache", max_tokens=9, temperature=0, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    want = direct.completions.create(model="tiny", prompt="the cache", max_tokens=9, temperature=0)
    assert text == want.choices[0].text
    plain = await client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=5, temperature=0
    )
    assert plain.usage is not None and plain.usage.completion_tokens <= 5
    await client.close()


# --- the record is written before the final bytes ---------------------------------------------


def _ids(sidecar: Sidecar, request_id: str) -> int:
    return [r.id for r in list(sidecar.sink.records)].count(request_id)


@pytest.mark.parametrize(
    ("path", "body", "final"),
    [
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 4}, "data: [DONE]"),
        ("/v1/completions", {"prompt": "the cache", "max_tokens": 4}, "data: [DONE]"),
        ("/v1/responses", {"input": "the cache", "max_output_tokens": 4},
         "event: response.completed"),
        ("/v1/messages", {"messages": CHAT, "max_tokens": 4}, "event: message_stop"),
    ],
)  # fmt: skip
def test_stream_record_is_written_before_its_final_event(
    sidecar: Sidecar, path: str, body: dict[str, Any], final: str
) -> None:
    """A sidecar killed the instant a client has its whole answer must not lose the record
    (issue 5): when the client sees the stream's final event, the sink already has it. No
    polling here, on purpose."""
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{sidecar.url}{path}", json={"model": "tiny", "stream": True, **body},
                      headers={"authorization": f"Bearer {DEV_SECRET}"}) as resp,
    ):  # fmt: skip
        assert resp.status_code == 200
        request_id = resp.headers["x-gpuledger-request-id"]
        finals = 0
        for line in resp.iter_lines():
            if line.startswith(final):
                finals += 1
                assert _ids(sidecar, request_id) == 1, "final event relayed before the record"
    assert finals == 1
    record = sidecar.record(request_id)
    assert record.status == "ok" and record.output_tokens >= 1
    time.sleep(0.2)  # the request's `finally` has run by now: it must not write a second record
    assert _ids(sidecar, request_id) == 1


def test_plain_record_is_written_before_the_body(sidecar: Sidecar) -> None:
    resp = httpx.post(
        f"{sidecar.url}/v1/chat/completions",
        json={"model": "tiny", "messages": CHAT, "max_tokens": 4},
        headers={"authorization": f"Bearer {DEV_SECRET}"},
        timeout=120,
    )
    assert resp.status_code == 200
    request_id = resp.headers["x-gpuledger-request-id"]
    assert _ids(sidecar, request_id) == 1, "body sent before the record"
    time.sleep(0.2)
    assert _ids(sidecar, request_id) == 1
    assert sidecar.record(request_id).output_tokens == resp.json()["usage"]["completion_tokens"]


# --- tracing, metrics, secrets ----------------------------------------------------------------


def test_span_carries_genai_attributes_and_caller_trace(sidecar: Sidecar) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    raw = sidecar.client().chat.completions.with_raw_response.create(
        model="tiny", messages=CHAT, max_tokens=3, temperature=0,
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )  # fmt: skip
    record = sidecar.record(raw.headers["x-gpuledger-request-id"])
    assert record.trace_id == trace_id
    span = next(
        s for s in sidecar.spans.get_finished_spans()
        if s.attributes and s.attributes.get("gpuledger.request_id") == record.id
    )  # fmt: skip
    assert span.name == "chat tiny"
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.system"] == "vllm" and attrs["inference.backend"] == "vllm"
    assert attrs["gen_ai.request.model"] == "tiny" and attrs["gen_ai.response.model"] == "tiny"
    assert attrs["gen_ai.usage.output_tokens"] == record.output_tokens == 3
    assert attrs["gen_ai.request.max_tokens"] == 3
    assert attrs["feature"] == "default" and attrs["gpu_seconds"] == record.gpu_seconds


def test_metrics_families_and_no_secret_anywhere(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    sidecar.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    post_raw(sidecar.url, DEV_SECRET + "x", b"{}")
    text = httpx.get(f"{sidecar.url}/metrics").text
    for family in (
        "gpuledger_requests_total", "gpuledger_tokens_total", "gpuledger_gpu_seconds_total",
        "gpuledger_guardrail_rejections_total", "gpuledger_ttft_seconds_bucket",
        "gpuledger_inter_token_latency_seconds_bucket", "gpuledger_e2e_seconds_bucket",
        "gpuledger_in_flight_requests", "gpuledger_cost_usd_total",
        "gpuledger_engine_busy_gpu_seconds_total",
    ):  # fmt: skip
        assert family in text, family
    assert 'status="rejected:invalid_api_key"' in text
    assert 'kind="output"' in text and 'feature="default",model="tiny"' in text
    # Per engine too: the break-even recording rule divides one by the other, engine by engine.
    for money in ("gpuledger_cost_usd_total", "gpuledger_cloud_equivalent_cost_usd_total"):
        value = re.search(rf'^{money}{{engine="local",feature="default",model="tiny"}} (\S+)$',
                          text, re.M)  # fmt: skip
        assert value and float(value.group(1)) > 0, money
    for secret in (DEV_SECRET, ONLY_OTHER_SECRET, EXPIRED_SECRET, "glk_"):
        assert secret not in text
        assert secret not in caplog.text
        assert all(secret not in r.model_dump_json() for r in sidecar.sink.records)
        for span in sidecar.spans.get_finished_spans():
            assert secret not in str(dict(span.attributes or {}))


# --- vLLM's other generating APIs -------------------------------------------------------------


def test_responses_api_is_capped_streamed_and_metered(sidecar: Sidecar) -> None:
    client = sidecar.client()
    raw = client.responses.with_raw_response.create(model="tiny", input="the cache", temperature=0)
    response = raw.parse()
    assert response.usage is not None and response.usage.output_tokens <= 8  # feature default
    record = sidecar.record(raw.headers["x-gpuledger-request-id"])
    assert "default_max_tokens" in record.guardrail_actions
    assert record.output_tokens == response.usage.output_tokens
    assert record.input_tokens == response.usage.input_tokens
    with client.responses.stream(model="tiny", input="the cache", max_output_tokens=5) as stream:
        final = stream.get_final_response()
    assert final.usage is not None
    streamed = sidecar.last_record()
    assert streamed.status == "ok" and streamed.output_tokens == final.usage.output_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny", input="x", max_output_tokens=33)
    assert err.value.code == "max_tokens_exceeded"


def test_batch_endpoint_is_refused(sidecar: Sidecar) -> None:
    resp = httpx.post(
        f"{sidecar.url}/v1/chat/completions/batch",
        json={"model": "tiny", "messages": [CHAT, CHAT]},
        headers={"authorization": f"Bearer {DEV_SECRET}"},
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unsupported_endpoint"
