"""Hard guardrails on request bodies (the end-to-end checks against vLLM are in test_sidecar_proxy)."""

from __future__ import annotations

from typing import Any

import pytest

from gpuledger.contracts import FeaturePolicy
from sidecar.errors import GuardrailRejection, InvalidRequest
from sidecar.guardrails import CLAMP_HEADER, ENDPOINTS, apply_output_cap

REJECT = FeaturePolicy(name="f", default_max_tokens=100, max_tokens_cap=300, over_cap="reject")
CLAMP = REJECT.model_copy(update={"over_cap": "clamp"})


def _cap(
    body: dict[str, Any], feature: FeaturePolicy, chat: bool = True
) -> tuple[int, list[str], dict[str, str]]:
    actions: list[str] = []
    headers: dict[str, str] = {}
    endpoint = ENDPOINTS["/v1/chat/completions" if chat else "/v1/completions"]
    most = apply_output_cap(body, feature, endpoint, actions=actions, response_headers=headers)
    return most, actions, headers


def test_missing_limit_gets_the_default_for_chat_and_16_for_completions() -> None:
    chat: dict[str, Any] = {}
    assert _cap(chat, REJECT) == (100, ["default_max_tokens"], {})
    assert chat["max_tokens"] == 100
    completion: dict[str, Any] = {"max_tokens": None}
    assert _cap(completion, REJECT, chat=False)[0] == 16
    assert completion["max_tokens"] == 16


def test_n_multiplies_the_output_budget() -> None:
    body: dict[str, Any] = {"n": 3}
    assert _cap(body, REJECT)[0] == 300 and body["max_tokens"] == 100
    body = {"n": 4}
    assert _cap(body, REJECT)[0] == 300 and body["max_tokens"] == 75  # default shrinks to fit
    with pytest.raises(GuardrailRejection) as err:
        _cap({"n": 2, "max_tokens": 151}, REJECT)
    assert err.value.code == "max_tokens_exceeded" and err.value.status == 400
    with pytest.raises(GuardrailRejection) as err:
        _cap({"best_of": 301}, REJECT)
    assert err.value.param == "n"


def test_over_cap_rejects_or_clamps_each_limit_field() -> None:
    with pytest.raises(GuardrailRejection) as err:
        _cap({"max_completion_tokens": 301}, REJECT)
    assert err.value.param == "max_completion_tokens"
    assert _cap({"max_tokens": 300}, REJECT)[0] == 300  # at the cap is fine
    body: dict[str, Any] = {"max_tokens": 1000, "max_completion_tokens": 500, "n": 2}
    most, actions, headers = _cap(body, CLAMP)
    assert (most, body["max_tokens"], body["max_completion_tokens"]) == (300, 150, 150)
    assert actions == ["clamped:max_tokens"] and headers == {CLAMP_HEADER: "max_tokens"}


@pytest.mark.parametrize("value", [0, -1, "10", 1.5, True])
def test_bad_limits_are_invalid_requests(value: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        _cap({"max_tokens": value}, REJECT)
    assert err.value.param == "max_tokens" and err.value.code == "invalid_request"


def test_responses_and_messages_apis_are_capped_too() -> None:
    body: dict[str, Any] = {}
    actions: list[str] = []
    apply_output_cap(body, REJECT, ENDPOINTS["/v1/responses"], actions=actions, response_headers={})
    assert body == {"max_output_tokens": 100}
    with pytest.raises(GuardrailRejection) as err:
        apply_output_cap({"max_tokens": 301}, REJECT, ENDPOINTS["/v1/messages"], actions=[],
                         response_headers={})  # fmt: skip
    assert err.value.param == "max_tokens"
