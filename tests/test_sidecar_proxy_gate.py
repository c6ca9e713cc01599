"""The sidecar's gate against the real engine: hard guardrails (max_tokens, prompt cap), auth and
request refusals in the OpenAI envelope that never reach vLLM, upstream errors, the models list,
and the prompt-opening hash on each record. The sidecar talks to vLLM through a recording tap,
so "never reaches vLLM" is checked exactly, whatever else uses the engine.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import openai
import pytest

from gpuledger.contracts import UsageRecord
from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from tests.conftest import free_port
from tests.proxy_support import (
    CHAT,
    DISABLED_SECRET,
    EXPIRED_SECRET,
    ONLY_OTHER_SECRET,
    Sidecar,
    post_raw,
    tapped_sidecar_fixture,
)
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

__all__ = ["tapped_sidecar_fixture"]

pytestmark = pytest.mark.engine


def test_missing_max_tokens_gets_the_feature_default(sidecar: Sidecar) -> None:
    raw = sidecar.client().chat.completions.with_raw_response.create(
        model="tiny", messages=CHAT, temperature=0, extra_body={"ignore_eos": True}
    )
    assert raw.parse().usage.completion_tokens == 8  # type: ignore[union-attr]
    record = sidecar.record(raw.headers["x-gpuledger-request-id"])
    assert "default_max_tokens" in record.guardrail_actions


def test_over_cap_rejects_or_clamps(sidecar: Sidecar) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sidecar.client().chat.completions.create(model="tiny", messages=CHAT, max_tokens=33)
    assert err.value.code == "max_tokens_exceeded" and err.value.param == "max_tokens"
    # A refusal's record is written after its response (nothing ran to lose): look it up by id.
    rejected = sidecar.record(err.value.response.headers["x-gpuledger-request-id"])
    assert rejected.status == "rejected:max_tokens_exceeded"
    (span,) = [s for s in sidecar.spans.get_finished_spans()
               if (s.attributes or {}).get("gpuledger.request_id") == rejected.id]  # fmt: skip
    assert span.name == "chat tiny" and not span.status.is_ok
    raw = sidecar.client().chat.completions.with_raw_response.create(
        model="tiny", messages=CHAT, max_completion_tokens=1000, temperature=0,
        extra_headers={"X-Feature": "chat"}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert raw.headers["x-gpuledger-clamped"] == "max_tokens"
    assert raw.parse().usage.completion_tokens == 24  # type: ignore[union-attr]
    record = sidecar.record(raw.headers["x-gpuledger-request-id"])
    assert record.feature == "chat" and "clamped:max_tokens" in record.guardrail_actions


def test_prompt_cap_uses_the_engine_tokenizer(sidecar: Sidecar) -> None:
    client = sidecar.client()
    long_prompt: Any = [{"role": "user", "content": "cache " * 60}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=long_prompt, max_tokens=2,
                                       extra_headers={"X-Feature": "chat"})  # fmt: skip
    assert err.value.code == "prompt_too_long"
    # 70 bytes of JSON but fewer than 40 tokens: the exact count lets it through.
    fits: Any = [{"role": "user", "content": "cache cache cache cache cache cache cache"}]
    ok = client.chat.completions.create(model="tiny", messages=fits, max_tokens=2,
                                        extra_headers={"X-Feature": "chat"})  # fmt: skip
    assert ok.usage is not None and ok.usage.prompt_tokens <= 40


def test_rejections_answer_the_envelope_and_never_reach_vllm(
    sidecar: Sidecar, engine_url: str
) -> None:
    ok_body = b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
    cases = [
        (None, ok_body, {}, 401, "invalid_api_key"),
        ("glk_wrong", ok_body, {}, 401, "invalid_api_key"),
        (EXPIRED_SECRET, ok_body, {}, 401, "key_expired"),
        (DISABLED_SECRET, ok_body, {}, 403, "key_disabled"),
        (DEV_SECRET, ok_body, {"x-feature": "nope"}, 403, "feature_not_allowed"),
        (ONLY_OTHER_SECRET, ok_body, {}, 403, "model_not_allowed"),
        (DEV_SECRET, b'{"model": "tiny", "messages": [', {}, 400, "invalid_request"),
        (DEV_SECRET, b"[1, 2]", {}, 400, "invalid_request"),
        (DEV_SECRET, b'{"messages": []}', {}, 400, "invalid_request"),
        (DEV_SECRET, ok_body.replace(b'"max_tokens":2', b'"max_tokens":99'), {}, 400,
         "max_tokens_exceeded"),
        (DEV_SECRET, ok_body.replace(b'"max_tokens":2', b'"n":40'), {}, 400, "max_tokens_exceeded"),
        (DEV_SECRET, b'{"model":"tiny","pad":"' + b"x" * (1024 * 1024) + b'"}', {}, 413,
         "request_too_large"),
    ]  # fmt: skip
    before = sidecar.upstream_api_calls()
    for secret, content, headers, status, code in cases:
        resp = post_raw(sidecar.url, secret, content, **headers)
        assert resp.status_code == status, (code, resp.text)
        error = resp.json()["error"]
        assert error["code"] == code
        assert set(error) == {"message", "type", "param", "code"}
    assert sidecar.upstream_api_calls() == before  # none of them reached vLLM


def test_upstream_errors_pass_through_unchanged(sidecar: Sidecar, engine_url: str) -> None:
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2, "temperature": 0, "n": 2}
    want = httpx.post(f"{engine_url}/v1/chat/completions", json=body, timeout=120)
    got = httpx.post(f"{sidecar.url}/v1/chat/completions", json=body, timeout=120,
                     headers={"authorization": f"Bearer {DEV_SECRET}"})  # fmt: skip
    assert want.status_code == 400
    assert (got.status_code, got.content) == (want.status_code, want.content)
    assert sidecar.record(got.headers["x-gpuledger-request-id"]).status == "upstream_error"


def test_models_lists_only_what_the_key_may_use(sidecar: Sidecar) -> None:
    assert [m.id for m in sidecar.client().models.list()] == ["tiny"]
    assert [m.id for m in sidecar.client(ONLY_OTHER_SECRET).models.list()] == []


def test_unreachable_upstream_is_503(
    engine_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = PolicyStore(None)
    store.replace(dev_snapshot(dead))
    sink = MemorySink()
    app = create_app(Settings(upstream_url=dead), policy_store=store, sink=sink)
    with run_sidecar(app=app) as url:
        resp = post_raw(url, DEV_SECRET, b'{"model":"tiny","prompt":"x"}')
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "upstream_unavailable"
        assert httpx.get(f"{url}/ready").status_code == 503
        models = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {DEV_SECRET}"})
        assert models.status_code == 503
        assert sink.wait_for(1)[0].status == "upstream_error"


def test_record_carries_a_hash_of_the_prompt_opening_never_the_prompt(sidecar: Sidecar) -> None:
    def record(messages: Any) -> UsageRecord:
        raw = sidecar.client().chat.completions.with_raw_response.create(
            model="tiny", messages=messages, max_tokens=2
        )
        return sidecar.record(raw.headers["x-gpuledger-request-id"])

    system = {"role": "system", "content": "You answer questions about the cache."}
    first = record([system, {"role": "user", "content": "what is a block?"}])
    assert first.prompt_opening is not None and re.fullmatch(r"[0-9a-f]{16}", first.prompt_opening)
    assert first.prompt_opening_new is True
    again = record([system, {"role": "user", "content": "what is eviction?"}])
    assert (again.prompt_opening, again.prompt_opening_new) == (first.prompt_opening, False)
    stamped = {"role": "system", "content": f"Now: {time.time()}. You answer questions."}
    other = record([stamped, {"role": "user", "content": "what is a block?"}])
    assert other.prompt_opening != first.prompt_opening and other.prompt_opening_new is True
    # Too few requests in the feature's window to call it unstable: no waste charged yet.
    assert first.wasted_prefill_gpu_seconds == other.wasted_prefill_gpu_seconds == 0.0
