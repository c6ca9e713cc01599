"""Run a real sidecar (uvicorn on a free port, in a background thread) for tests and benchmarks.

    with run_sidecar(settings) as base_url:      # or run_sidecar(app=create_app(...))
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=DEV_SECRET)

The app's lifespan runs in the server thread's own event loop, so a `MemorySink` passed to
`create_app` is read from the test thread with `sink.wait_for(n)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from aiohttp import ClientSession, web
from fastapi import FastAPI

from gpuledger.contracts import PolicySnapshot
from sidecar.policy import load_policy_file
from sidecar.settings import Settings
from tests.conftest import free_port, serve_in_thread

REPO = Path(__file__).resolve().parent.parent
DEV_POLICY = REPO / "deploy" / "policy.dev.yaml"
DEV_SECRET = "glk_dev_local_only_change_me"


@contextlib.contextmanager
def run_sidecar(
    settings: Settings | None = None, *, app: FastAPI | None = None, startup_timeout_s: float = 20.0
) -> Iterator[str]:
    """Serve `app` (or `create_app(settings)`) on 127.0.0.1:<free port>; yields the base URL."""
    if app is None:
        from sidecar.app import create_app

        app = create_app(settings)
    with serve_in_thread(
        app,
        "sidecar",
        startup_timeout_s=startup_timeout_s,
        loop="uvloop",
        http="httptools",
        access_log=False,
    ) as url:
        yield url


def dev_snapshot(engine_url: str, **feature_overrides: dict[str, object]) -> PolicySnapshot:
    """The dev policy (deploy/policy.dev.yaml) pointed at `engine_url`; `feature_overrides`
    replace fields of the named features (e.g. `default={"max_tokens_cap": 32}`)."""
    snapshot = load_policy_file(DEV_POLICY)
    engines = [e.model_copy(update={"url": engine_url}) for e in snapshot.engines]
    features = [f.model_copy(update=feature_overrides.get(f.name, {})) for f in snapshot.features]
    data = snapshot.model_dump()
    data.update(
        engines=[e.model_dump() for e in engines], features=[f.model_dump() for f in features]
    )
    return PolicySnapshot.model_validate(data)


class RecordingTap:
    """A pass-through in front of a service (vLLM, the control plane) that keeps what each side
    sent, streaming the answer through as it comes.

    vLLM may merge several tokens into one SSE event when its output loop falls behind (the CI
    machine is loaded), so two identical requests can stream different bytes. Comparing what the
    client got with what vLLM sent *for the same request* is the only exact check.

    `max_body_bytes`: request bodies above it get 413 and go no further, as nginx's
    `client_max_body_size` does (settable while serving).

    `hold_after_events`: relay that many SSE events of an answer (0: not even its headers, as
    vLLM does while it generates a plain answer), then relay no more until the caller hangs up,
    which `hung_up` records and which closes the connection to the engine. However fast the
    engine, the caller is still waiting when its own client goes: cancellation is tested
    without racing the engine."""

    def __init__(self, engine_url: str) -> None:
        self.engine_url = engine_url
        self.url = ""  # set by run_recording_tap
        self.max_body_bytes: int | None = None
        self.hold_after_events: int | None = None
        self.held: list[str] = []  # paths of the answers held so far
        self.hung_up: list[str] = []  # paths whose caller left while held
        self.exchanges: list[tuple[str, bytes, bytes]] = []  # (path, request body, response body)

    def bodies(self, path: str) -> list[tuple[bytes, bytes]]:
        return [(sent, got) for p, sent, got in self.exchanges if p == path]

    async def relay(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return web.Response(status=413, text="413 Request Entity Too Large")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with (
            ClientSession() as session,
            session.request(
                request.method, f"{self.engine_url}{request.path_qs}", data=body, headers=headers
            ) as upstream,
        ):
            held = self.hold_after_events
            if held == 0:
                await self._hold(request.path)
            reply = web.StreamResponse(status=upstream.status)
            reply.content_type = upstream.content_type
            await reply.prepare(request)
            received = bytearray()
            async for chunk in upstream.content.iter_any():
                # A loaded engine sends many events in one chunk: hold at the event boundary.
                for piece in re.split(rb"(?<=\n\n)", chunk) if held else [chunk]:
                    if held and received.count(b"\n\n") >= held:
                        await self._hold(request.path)
                    received += piece
                    await reply.write(piece)
            self.exchanges.append((request.path, body, bytes(received)))
            await reply.write_eof()
            return reply

    async def _hold(self, path: str) -> None:
        """Until the caller hangs up (the server then cancels the handler)."""
        self.held.append(path)
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            self.hung_up.append(path)
            raise
        raise AssertionError("held for 120 s: the caller never hung up")


_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@contextlib.contextmanager
def run_recording_tap(engine_url: str) -> Iterator[tuple[str, RecordingTap]]:
    """Serve a `RecordingTap` in front of `engine_url`; yields (its base URL, the tap)."""
    tap = RecordingTap(engine_url)
    port = free_port()
    tap.url = f"http://127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", tap.relay)
    # Cancelling the handler of a caller that left is what closes the engine's connection.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name=f"tap-{port}", daemon=True)
    thread.start()
    try:
        yield tap.url, tap
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
