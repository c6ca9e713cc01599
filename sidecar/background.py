"""Lifecycle of the sidecar's background workers (policy sync, budget leases, usage shipper,
engine watch, rate-limit client): each is started and stopped by the app's lifespan, which runs
`serve_until_cancelled` as a task and cancels it at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a worker task and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve_until_cancelled(
    start: Callable[[], Awaitable[None]] | None, close: Callable[[], Awaitable[None]]
) -> None:
    """Start a worker, idle until the lifespan cancels this task, then close the worker."""
    if start is not None:
        await start()
    try:
        await asyncio.Future()
    finally:
        await close()
