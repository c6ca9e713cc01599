"""Where usage records go. Exactly one record per request is written to the app's sink.

`JsonlSink` appends one JSON line per record (standalone mode); `MemorySink` keeps them in a list
(tests). The durable spool + shipper (`sidecar/spool.py`) implements the same protocol.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Protocol

from gpuledger.contracts import UsageRecord


class UsageSink(Protocol):
    async def start(self) -> None: ...

    async def write(self, record: UsageRecord) -> None: ...

    async def close(self) -> None: ...


class MemorySink:
    """Keeps every record in memory. Tests read it from another thread: `wait_for(n)` polls."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[UsageRecord]:
        """Block (in a test thread) until at least `count` records exist; returns them."""
        deadline = time.monotonic() + timeout_s
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.records)} usage records, expected {count}")
            time.sleep(0.01)
        return list(self.records)

    async def start(self) -> None:
        return None

    async def write(self, record: UsageRecord) -> None:
        self.records.append(record)

    async def close(self) -> None:
        return None


class JsonlSink:
    """Appends records to a JSONL file, flushed per record.

    One short line per request is a single small write() to the OS and no fsync: this is the
    standalone/dev sink (the durable path is the spool). Doing it inline costs a few microseconds
    and keeps the order of records, so no thread or queue is worth its complexity here; a py-spy
    profile at 64 streams put it at ~1% of the sidecar's CPU (issue 9, docs/benchmarks.md).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    async def write(self, record: UsageRecord) -> None:
        if self._file is None:
            await self.start()
        assert self._file is not None
        self._file.write(record.model_dump_json().encode() + b"\n")
        self._file.flush()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class NullSink:
    """Drops records (no JSONL path and no spool configured)."""

    async def start(self) -> None:
        return None

    async def write(self, record: UsageRecord) -> None:
        return None

    async def close(self) -> None:
        return None
