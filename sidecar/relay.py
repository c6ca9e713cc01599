"""Relaying one admitted request to its engine and the answer back to the client.

Streams are passed through as the bytes arrive: `SseScanner` (sidecar/streaming.py) reads only
what metering needs on the side and holds back the final event until the usage record is durable.
A non-streamed answer is read whole (vLLM sends its headers only when it is done), metered, made
durable, then sent. A client that hangs up (`DisconnectWatch`) ends the relay and closes the
engine connection, which is what makes vLLM abort the request.

The engine is the one upstream today; a routed or escalated request (a cloud API) will be another
`Relay` call with its own URL and credentials.
"""

from __future__ import annotations

import time

import aiohttp
import orjson
from opentelemetry.trace import Span

from gpuledger.contracts import EnginePolicy
from sidecar.asgi import (
    JSON,
    DisconnectWatch,
    Scope,
    Send,
    encode_headers,
    header,
    send_bytes,
    send_error,
)
from sidecar.deps import Components
from sidecar.errors import UpstreamUnavailable
from sidecar.metering import Ledger, Outcome
from sidecar.streaming import SseScanner
from sidecar.tracing import inject_headers


class Relay:
    """Sends an admitted request upstream and relays the answer, metering it into `outcome`."""

    def __init__(self, components: Components) -> None:
        self.c = components

    async def __call__(
        self,
        scope: Scope,
        send: Send,
        payload: bytes,
        span: Span,
        headers: dict[bytes, bytes],
        engine: EnginePolicy,
        extra: dict[str, str],
        outcome: Outcome,
        watch: DisconnectWatch,
        ledger: Ledger,
        *,
        request_id: str,
        t0: float,
        drop_usage: bool,
        stream: bool,
        op: str,
        fanout: int,
    ) -> None:
        c = self.c
        up_headers = {"content-type": header(headers, b"content-type") or "application/json"}
        if c.settings.upstream_api_key:
            up_headers["authorization"] = f"Bearer {c.settings.upstream_api_key}"
        inject_headers(span, up_headers)
        url = engine.url.rstrip("/") + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        try:
            try:
                resp = await c.http().request(
                    scope["method"], url, data=payload, headers=up_headers
                )
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the engine closed as we reused it: it saw no request.
                resp = await c.http().request(
                    scope["method"], url, data=payload, headers=up_headers
                )
        except TimeoutError:
            outcome.status = "upstream_error"
            await send_error(send, timeout_error(), extra)
            return
        except aiohttp.ClientError:
            outcome.status = "upstream_error"
            await send_error(send, unavailable(engine.name), extra)
            return
        watch.resp = resp
        try:
            ctype = resp.headers.get("content-type", "application/json").encode("latin-1")
            if resp.status == 200 and (stream or ctype.startswith(b"text/event-stream")):
                await self._stream(send, resp, ctype, extra, outcome, watch, ledger,
                                         request_id, engine=engine, t0=t0,
                                         drop_usage=drop_usage, chat=op == "chat",
                                         fanout=fanout)  # fmt: skip
            else:
                await self._whole(send, resp, ctype, extra, outcome, watch, ledger)
        finally:
            resp.close()

    async def _stream(
        self,
        send: Send,
        resp: aiohttp.ClientResponse,
        ctype: bytes,
        extra: dict[str, str],
        outcome: Outcome,
        watch: DisconnectWatch,
        ledger: Ledger,
        request_id: str,
        *,
        engine: EnginePolicy,
        t0: float,
        drop_usage: bool,
        chat: bool,
        fanout: int,
    ) -> None:
        progress = self.c.metering.clock(engine).progress
        scanner = SseScanner(drop_usage=drop_usage)
        await send(
            {
                "type": "http.response.start",
                "status": resp.status,
                "headers": [(b"content-type", ctype), *encode_headers(extra)],
            }
        )
        try:
            async for chunk in resp.content.iter_any():
                out = scanner.feed(chunk, time.monotonic())
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    progress(request_id, scanner.events)
                if watch.gone:
                    break
        except (aiohttp.ClientError, TimeoutError):
            # A clean end of the chunked body ends the loop; an engine that dies mid-stream or
            # goes silent past read_timeout_s raises here.
            if not watch.gone:
                outcome.status = "upstream_error"
        if scanner.first_at is not None:
            outcome.ttft_s = scanner.first_at - t0
        role_events = fanout if chat else 0
        content = scanner.content_events(role_events)
        if scanner.last_at is not None and scanner.first_at is not None and content > 1:
            outcome.mean_itl_s = (scanner.last_at - scanner.first_at) / (content - 1)
        outcome.finish_reasons = scanner.finish_reasons
        if scanner.usage is not None:
            outcome.take_usage(scanner.usage)
        else:
            outcome.output_tokens = content  # chunks seen: one token per chunk per choice
            outcome.estimated = True
        if watch.gone:
            outcome.status = "cancelled"
            return
        watch.finished = True
        await ledger.write()  # durable before the client sees the end (the scanner held it back)
        await send({"type": "http.response.body", "body": scanner.finish(), "more_body": False})

    async def _whole(
        self,
        send: Send,
        resp: aiohttp.ClientResponse,
        ctype: bytes,
        extra: dict[str, str],
        outcome: Outcome,
        watch: DisconnectWatch,
        ledger: Ledger,
    ) -> None:
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            if watch.gone:
                outcome.status = "cancelled"
                return
            outcome.status = "upstream_error"
            error = timeout_error() if isinstance(exc, TimeoutError) else unavailable("engine")
            await send_error(send, error, extra)
            return
        if watch.gone:
            outcome.status = "cancelled"
            return
        if resp.status >= 400:
            outcome.status = "upstream_error"
        elif ctype.startswith(JSON):
            take_response(data, outcome)
        watch.finished = True
        await ledger.write()  # durable before the client gets the answer
        await send_bytes(send, resp.status, data, ctype, extra)


def take_response(data: bytes, outcome: Outcome) -> None:
    """Usage, finish reasons and model from a non-streamed JSON response."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(parsed, dict):
        return
    usage = parsed.get("usage")
    if isinstance(usage, dict):
        outcome.take_usage(usage)
    model = parsed.get("model")
    if isinstance(model, str):
        outcome.response_model = model
    choices = parsed.get("choices")
    if isinstance(choices, list):
        outcome.finish_reasons = [
            ch["finish_reason"]
            for ch in choices
            if isinstance(ch, dict) and isinstance(ch.get("finish_reason"), str)
        ]


def timeout_error() -> UpstreamUnavailable:
    return UpstreamUnavailable("The engine did not answer in time.", code="upstream_timeout",
                               status=504)  # fmt: skip


def unavailable(engine: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"The engine {engine!r} is unreachable.")
