"""Hard guardrails: decided from the request alone, before anything reaches vLLM.

* Output cap. The feature's `max_tokens_cap` bounds everything one request may emit:
  `max_tokens` (or `max_completion_tokens`) x `max(n, best_of)`. Above it the request is rejected
  (400 `max_tokens_exceeded`) or clamped (`x-gpuledger-clamped: max_tokens`), per feature. When the
  client sends no limit, chat gets the feature's `default_max_tokens` (vLLM's own chat default is
  "the rest of the context", i.e. unbounded). Completions keep OpenAI's and vLLM's default of 16
  (capped), so an unchanged completions client sees the same output through the sidecar. The
  same cap guards vLLM's other generating APIs (`/v1/responses`: `max_output_tokens`,
  `/v1/messages`: `max_tokens`); `/v1/chat/completions/batch` is refused (many requests, one cap).
* Prompt cap (`max_prompt_tokens`). The raw JSON body's byte count is an upper bound of the
  prompt's token count for byte-level BPE tokenizers (one token covers at least one byte, and the
  JSON syntax around each message is longer than the chat template's special tokens). Only when
  that bound exceeds the cap does the sidecar ask the engine (`POST /tokenize`) for the exact
  count, so the common case costs nothing and the rare long prompt costs one local call.
  (`/v1/responses` and `/v1/messages` fall back to ~4 bytes per token above the byte bound.)
* Body size: see `proxy.read_body` (413 on Content-Length and while reading).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gpuledger.contracts import FeaturePolicy
from sidecar.errors import GuardrailRejection, InvalidRequest

log = logging.getLogger(__name__)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
CLAMP_HEADER = "x-gpuledger-clamped"


def _count(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{field}` must be a positive integer.", param=field)
    return value


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An inference endpoint the sidecar guards: where its output limit lives in the body."""

    op: str  # GenAI operation name, used in span names
    limit_fields: tuple[str, ...]  # every field that bounds output; all are capped
    inject: str  # the field set when the client sent none
    openai_default_16: bool = False  # /v1/completions: OpenAI's default of 16 tokens
    stream_usage_option: bool = False  # understands stream_options.include_usage
    prompt_kind: str = "other"  # "chat" / "completion": how /tokenize can count the prompt


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(
        "chat", ("max_completion_tokens", "max_tokens"), "max_tokens",
        stream_usage_option=True, prompt_kind="chat",
    ),
    "/v1/completions": Endpoint(
        "text_completion", ("max_tokens",), "max_tokens",
        openai_default_16=True, stream_usage_option=True, prompt_kind="completion",
    ),
    "/v1/responses": Endpoint("responses", ("max_output_tokens",), "max_output_tokens"),
    "/v1/messages": Endpoint("messages", ("max_tokens",), "max_tokens"),
}  # fmt: skip

# Endpoints that would carry many requests past the per-request guardrails in one call.
BLOCKED_PATHS = frozenset({"/v1/chat/completions/batch"})


def apply_output_cap(
    body: dict[str, Any],
    feature: FeaturePolicy,
    endpoint: Endpoint,
    *,
    actions: list[str],
    response_headers: dict[str, str],
) -> int:
    """Enforce the output cap on `body` (in place). Returns the most tokens the request may emit."""
    fanout = max(_count(body, "n") or 1, _count(body, "best_of") or 1)
    per_choice_cap = feature.max_tokens_cap // fanout
    if per_choice_cap < 1:
        raise GuardrailRejection(
            f"n={fanout} exceeds this feature's output cap of {feature.max_tokens_cap} tokens.",
            code="max_tokens_exceeded",
            param="n",
        )
    fields = [f for f in endpoint.limit_fields if body.get(f) is not None]
    if not fields:
        default = (
            COMPLETIONS_DEFAULT_MAX_TOKENS
            if endpoint.openai_default_16
            else feature.default_max_tokens
        )
        body[endpoint.inject] = min(default, per_choice_cap)
        actions.append("default_max_tokens")
        return int(body[endpoint.inject]) * fanout
    for field in fields:
        value = _count(body, field)
        assert value is not None
        if value <= per_choice_cap:
            continue
        if feature.over_cap == "reject":
            limit = (
                f"{per_choice_cap} per choice with n={fanout}"
                if fanout > 1
                else str(per_choice_cap)
            )
            raise GuardrailRejection(
                f"`{field}`={value} exceeds the cap of feature {feature.name!r} ({limit}).",
                code="max_tokens_exceeded",
                param=field,
            )
        body[field] = per_choice_cap
        if "clamped:max_tokens" not in actions:
            actions.append("clamped:max_tokens")
        response_headers[CLAMP_HEADER] = "max_tokens"
    # vLLM uses the first field present (max_completion_tokens over max_tokens).
    return int(body[fields[0]]) * fanout


def estimate_prompt_tokens(raw_body: bytes) -> int:
    """A typical-case estimate (~4 bytes per token) for reservations, not for enforcement."""
    return len(raw_body) // 4 + 1


async def check_prompt_cap(
    session: aiohttp.ClientSession,
    engine_url: str,
    body: dict[str, Any],
    raw_body: bytes,
    feature: FeaturePolicy,
    endpoint: Endpoint,
) -> int | None:
    """Enforce `max_prompt_tokens`. Returns the exact prompt token count when it was needed."""
    cap = feature.max_prompt_tokens
    if cap is None or len(raw_body) <= cap:
        return None  # the byte count bounds the token count: certainly under the cap
    chat = endpoint.prompt_kind == "chat"
    exact = None
    if endpoint.prompt_kind != "other":  # other APIs: the ~4 bytes/token estimate decides
        exact = await _tokenize(session, engine_url, body, chat=chat)
    count = exact if exact is not None else estimate_prompt_tokens(raw_body)
    if count > cap:
        raise GuardrailRejection(
            f"The prompt has {count} tokens; feature {feature.name!r} allows {cap}.",
            code="prompt_too_long",
            param={"chat": "messages", "completion": "prompt"}.get(endpoint.prompt_kind, "input"),
        )
    return exact


async def _tokenize(
    session: aiohttp.ClientSession, engine_url: str, body: dict[str, Any], *, chat: bool
) -> int | None:
    """The engine's exact count (vLLM `POST /tokenize`); None when it can't say."""
    model = body.get("model")
    if chat:
        requests = [{"model": model, "messages": body.get("messages", [])}]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return len(prompt)  # already token ids
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if prompts and all(isinstance(p, list) for p in prompts):
            return max(len(p) for p in prompts if isinstance(p, list))
        requests = [{"model": model, "prompt": p} for p in prompts]
    counts = []
    for req in requests:
        try:
            async with session.post(f"{engine_url}/tokenize", data=orjson.dumps(req)) as resp:
                if resp.status != 200:
                    return None
                counts.append(int(orjson.loads(await resp.read())["count"]))
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            log.warning("tokenize failed, using the estimate: %s", type(exc).__name__)
            return None
    # Each prompt of a batch is its own sequence: the cap applies to the longest one.
    return max(counts) if counts else None
