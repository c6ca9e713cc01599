"""The SSE scanner against streams captured from the real vLLM (tiny model, vLLM 0.32.0)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.streaming import SseScanner

FP = b'"system_fingerprint":"vllm-0.32.0-ab2a8536"'
ROLE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"tiny","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
    b"\n\n"
)


def _content(text: str, finish: str | None = None, fingerprint: bool = False) -> bytes:
    reason = b"null" if finish is None else b'"' + finish.encode() + b'"'
    tail = b"," + FP if fingerprint else b""
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"tiny","choices":'
        b'[{"index":0,"delta":{"content":"' + text.encode() + b'"},"logprobs":null,'
        b'"finish_reason":' + reason + b"}]" + tail + b"}\n\n"
    )


USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[],'
    b'"usage":{"prompt_tokens":9,"total_tokens":13,"completion_tokens":4},' + FP + b"}\n\n"
)
DONE = b"data: [DONE]\n\n"
TOKENS = ["the", " cache", ' \\"usage\\":{ data: x', " with"]

# What vLLM sends with include_usage, and what it sends to a client that did not ask for usage.
WITH_USAGE = (
    ROLE
    + b"".join(_content(t) for t in TOKENS[:-1])
    + _content(TOKENS[-1], "length")
    + USAGE
    + DONE
)
WITHOUT_USAGE = (
    ROLE
    + b"".join(_content(t) for t in TOKENS[:-1])
    + _content(TOKENS[-1], "length", fingerprint=True)
    + DONE
)


def _run(scanner: SseScanner, pieces: list[bytes]) -> bytes:
    out = b"".join(scanner.feed(p, float(i)) for i, p in enumerate(pieces))
    return out + scanner.finish()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_dropping_injected_usage_gives_what_vllm_sends_without_it() -> None:
    scanner = SseScanner(drop_usage=True)
    assert _run(scanner, [WITH_USAGE]) == WITHOUT_USAGE
    assert scanner.usage == {"prompt_tokens": 9, "total_tokens": 13, "completion_tokens": 4}
    assert scanner.finish_reasons == ["length"]
    assert scanner.done
    assert scanner.content_events(role_events=1) == 4


def test_client_asked_for_usage_gets_everything_unchanged() -> None:
    scanner = SseScanner(drop_usage=False)
    assert _run(scanner, [WITH_USAGE]) == WITH_USAGE
    assert scanner.usage is not None and scanner.usage["completion_tokens"] == 4


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_events_split_across_reads_are_reassembled(cuts: list[int], drop: bool) -> None:
    scanner = SseScanner(drop_usage=drop)
    out = _run(scanner, _split(WITH_USAGE, cuts))
    assert out == (WITHOUT_USAGE if drop else WITH_USAGE)
    assert scanner.usage is not None and scanner.usage["prompt_tokens"] == 9
    assert scanner.events == 7


def test_partial_event_is_held_until_complete() -> None:
    scanner = SseScanner(drop_usage=False)
    event = _content("the")
    assert scanner.feed(event[:10], 1.0) == b""
    assert scanner.first_at is None
    assert scanner.feed(event[10:], 2.0) == event
    assert scanner.first_at == 2.0


def test_cancelled_stream_counts_chunks_and_keeps_no_usage() -> None:
    scanner = SseScanner(drop_usage=True)
    out = _run(scanner, [ROLE, _content("a"), _content("b")])
    assert out == ROLE + _content("a") + _content("b")
    assert scanner.usage is None and not scanner.done
    assert scanner.content_events(role_events=1) == 2


def test_finish_chunks_are_released_at_done_if_usage_never_comes() -> None:
    scanner = SseScanner(drop_usage=True)
    last = _content("x", "stop")
    assert _run(scanner, [ROLE, last, DONE]) == ROLE + last + DONE
