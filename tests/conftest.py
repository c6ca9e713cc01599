"""Session-wide fixtures for real services: the local vLLM engine, PostgreSQL and Redis.

The engine is started once per test session (about a minute on a warm cache). Set
GPULEDGER_TEST_ENGINE_URL to reuse one that is already running (what developers do between runs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    cond: Callable[[], bool], limit_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll `cond` until it holds; fail naming `what` after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval_s)


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    name: str,
    *,
    port: int | None = None,
    startup_timeout_s: float = 60.0,
    **config: Any,
) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a background thread on 127.0.0.1:`port` (default: a
    free one); yields the base URL and stops the server on exit. The app's lifespan runs in the
    server thread's own event loop. `config`: more uvicorn.Config options."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **config
        )
    )
    thread = threading.Thread(target=server.run, name=f"{name}-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the {name} failed to start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the {name} did not start in time")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def engine_url() -> Iterator[str]:
    """Base URL (no /v1) of a real vLLM engine serving the tiny model as `tiny`."""
    existing = os.environ.get("GPULEDGER_TEST_ENGINE_URL")
    if existing:
        yield existing.rstrip("/")
        return
    from serving.engine import EngineProcess

    with EngineProcess.start(profile="tiny-cpu", port=free_port()) as engine:
        yield engine.url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("GPULEDGER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    return os.environ.get(
        "GPULEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


@pytest.fixture
def postgres_db(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; yields its SQLAlchemy asyncpg URL."""
    import asyncio

    import asyncpg

    name = f"gpuledger_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = postgres_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
