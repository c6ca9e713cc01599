"""A cheap scanner for vLLM's SSE stream: relays bytes as they come, meters on the side.

Per upstream read the scanner does a handful of `bytes.find`/`count` calls and no JSON parsing:
events end with a blank line (`\\n\\n`; vLLM's JSON never contains a raw newline, so the blank line
can only be an event boundary), one `data:` event is one decode step per choice. Only the usage
event (`"usage":{`) is JSON-parsed, once per stream. Partial events (an event split across TCP
reads) are held back until complete: a client can't use half an event anyway.

When the client did not ask for usage, the proxy injects `stream_options.include_usage` upstream
and the scanner drops the usage event, so the client sees what vLLM would have sent it. One detail
makes that more than a deletion: with usage on, vLLM moves `system_fingerprint` from each finishing
choice's chunk to the usage chunk. So in that mode the scanner holds back the finishing chunks
(normally the last content chunk, microseconds before the usage chunk) and, once the usage chunk
arrives, puts the fingerprint back where vLLM would have put it. With n > 1 a choice's finishing
chunk can thus arrive after other choices' later chunks (clients index choices, so this is benign).

The final event (`data: [DONE]`; `response.completed`/`incomplete`/`failed` in the Responses API,
`message_stop` in the Messages API) and anything after it are held back until `finish()`: the proxy
makes the usage record durable before it relays them, so a client never holds a complete answer
that the ledger could lose. Content chunks are never held for this.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_EVENT_END = b"\n\n"
_FINISH = b'"finish_reason":"'
_FINISH_RE = re.compile(rb'"finish_reason":"([^"]*)"')
_USAGE = (b'"usage":{', b'"usage": {')
_DONE = b"data: [DONE]"
_MESSAGE_STOP = b"event: message_stop"
_FINAL = (
    _DONE,
    _MESSAGE_STOP,
    b"event: response.completed",
    b"event: response.incomplete",
    b"event: response.failed",
)
_FINGERPRINT_RE = re.compile(rb'"system_fingerprint":("[^"]*"|null)')


def _has_usage(data: bytes) -> bool:
    return _USAGE[0] in data or _USAGE[1] in data


class SseScanner:
    __slots__ = (
        "_final",
        "_held",
        "done",
        "drop_usage",
        "events",
        "finish_reasons",
        "first_at",
        "last_at",
        "tail",
        "usage",
        "usage_events",
    )

    def __init__(self, *, drop_usage: bool) -> None:
        self.drop_usage = drop_usage
        self.tail = b""
        self.events = 0  # complete events seen (content, role, usage and [DONE] alike)
        self.usage_events = 0
        self.done = False
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reasons: list[str] = []
        self._held: list[bytes] = []
        self._final: list[bytes] = []  # the stream's final event(s), relayed by `finish()`

    def feed(self, chunk: bytes, now: float) -> bytes:
        """Account one upstream read; returns the bytes to relay now (may be empty)."""
        if self.tail:
            chunk = self.tail + chunk
        end = chunk.rfind(_EVENT_END)
        if end < 0:
            self.tail = chunk
            return b""
        end += 2
        complete = chunk[:end] if end < len(chunk) else chunk
        self.tail = chunk[end:]
        self.events += complete.count(_EVENT_END)
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        if (
            _FINISH not in complete
            and not _has_usage(complete)
            and _DONE not in complete
            and _MESSAGE_STOP not in complete  # the Responses API's final events carry usage
            and not self._held
            and not self._final
        ):
            return complete  # the common case: a plain content chunk, relayed as is
        return self._slow(complete)

    def _slow(self, complete: bytes) -> bytes:
        out: list[bytes] = []
        for event in complete.split(_EVENT_END)[:-1]:
            event += _EVENT_END
            if _has_usage(event):
                self.usage_events += 1
                self._parse_usage(event)
                if self.drop_usage:
                    out.extend(self._release(_FINGERPRINT_RE.search(event)))
                    continue
            elif _FINISH in event:
                self.finish_reasons.extend(
                    m.decode("utf-8", "replace") for m in _FINISH_RE.findall(event)
                )
                if self.drop_usage:
                    self._held.append(event)
                    continue
            elif event.startswith(_DONE):
                self.done = True
                out.extend(self._release(None))
            if self._final or event.startswith(_FINAL):
                self._final.append(event)
            else:
                out.append(event)
        return b"".join(out)

    def _release(self, fingerprint: re.Match[bytes] | None) -> list[bytes]:
        """The held finishing chunks, with the usage chunk's fingerprint put back on each."""
        held, self._held = self._held, []
        if fingerprint is None:
            return held
        field = b"," + fingerprint.group(0) + b"}"
        patched = []
        for event in held:
            body = event.rstrip()
            if body.endswith(b"}") and b'"system_fingerprint"' not in body:
                body = body[:-1] + field
            patched.append(body + _EVENT_END)
        return patched

    def _parse_usage(self, event: bytes) -> None:
        start = event.find(b"data:")  # after an `event:` line in the Responses/Messages APIs
        if start < 0:
            return
        payload = event[start + 5 :].strip()
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        usage = data.get("usage")
        if usage is None and isinstance(data.get("response"), dict):
            usage = data["response"].get("usage")  # Responses API: response.completed
        if isinstance(usage, dict):
            self.usage = usage

    def finish(self) -> bytes:
        """End of the upstream stream: the final event(s) and whatever is still held or partial."""
        rest = b"".join(self._release(None)) + b"".join(self._final) + self.tail
        self._final = []
        self.tail = b""
        return rest

    def content_events(self, role_events: int) -> int:
        """Events that carried generated tokens (an estimate of output tokens so far)."""
        return max(0, self.events - self.usage_events - int(self.done) - role_events)
