"""Small raw-ASGI helpers for the proxy's hot path: headers, bodies, responses, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import orjson

from sidecar.errors import InvalidRequest, PayloadTooLarge, SidecarError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
REQUEST_ID = "x-gpuledger-request-id"


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class DisconnectWatch:
    """Notices a client disconnect while the response is in flight, and aborts the upstream call.

    Once upstream headers are in (`resp` set), closing the aiohttp response closes its
    connection: the relay loop ends with the tokens seen so far and vLLM aborts the request.
    Before that (a non-streamed request waits for vLLM's whole answer), the request's task is
    cancelled; the proxy catches that cancellation (`gone` tells it apart from a shutdown).
    """

    __slots__ = ("finished", "gone", "resp", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.gone = False
        self.finished = False
        self.resp: aiohttp.ClientResponse | None = None
        self.task = task

    def __call__(self, message: asyncio.Future[Message]) -> None:
        if message.cancelled() or message.exception() is not None or self.finished:
            return
        if message.result().get("type") == "http.disconnect":
            self.gone = True
            if self.resp is not None:
                self.resp.close()
            elif self.task is not None:
                self.task.cancel()


def header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes, headers: dict[str, str]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *encode_headers(headers),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: SidecarError, headers: dict[str, str]) -> None:
    await send_bytes(send, exc.status, exc.body(), JSON, {**headers, **exc.headers})


async def read_body(receive: Receive, limit: int, content_length: str | None) -> bytes:
    """The whole request body; 413 as soon as it is known to exceed `limit`."""
    too_large = PayloadTooLarge(f"The request body exceeds {limit} bytes.")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required.", param="model")
    return model


def fanout_of(body: dict[str, Any]) -> int:
    n, best_of = body.get("n"), body.get("best_of")
    return max(n if isinstance(n, int) else 1, best_of if isinstance(best_of, int) else 1, 1)
