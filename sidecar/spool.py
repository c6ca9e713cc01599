"""Durable local usage spool: every UsageRecord is on disk before it counts as written.

Storage is one SQLite file in WAL mode with ``synchronous=FULL``: a commit returns only after the
WAL is fsynced, and SQLite's WAL checksums make a torn last write (power loss, SIGKILL mid-fsync)
roll back cleanly on the next open, so there is no hand-written framing to get wrong. Rows are
deleted once the control plane acknowledges them (the ack *is* the delete).

Group commit: `append` hands its payload to one writer task and awaits its batch. The writer takes
everything queued (up to `batch_max`), inserts it in one transaction and fsyncs once, so under load
N concurrent requests share one fsync instead of paying N (numbers in docs/benchmarks.md). All
SQLite work runs on one dedicated thread, so the event loop never blocks on the disk.

Bound: `max_records` / `max_bytes` (payload bytes). The spool never drops a record: `append`
always stores what it is given (a request that already ran must be accounted), and the bound is
enforced at admission by `SpoolGuard` (sidecar/shipper.py wires it) which refuses (503
`usage_spool_full`) or blocks new requests while the spool is full. So the spool can exceed its
bound by at most the requests in flight when it filled.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from gpuledger.contracts import UsageRecord
from sidecar.errors import SidecarError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    enqueued_at REAL NOT NULL,
    payload BLOB NOT NULL
)
"""


class SpoolFull(SidecarError):
    """The usage spool is at its bound: the sidecar refuses work it could not account for."""

    status = 503
    type = "api_error"
    code = "usage_spool_full"


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    row_id: int
    enqueued_at: float
    payload: bytes


class Spool:
    """Append-only durable queue of serialized UsageRecords (see module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_records: int = 1_000_000,
        max_bytes: int = 1 << 30,
        batch_max: int = 512,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.path = Path(path)
        self.dead_letter_path = self.path.with_name(self.path.stem + ".dead-letter.jsonl")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._batch_max = batch_max
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[tuple[bytes, float, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._records = 0
        self._bytes = 0
        self._oldest: float | None = None
        # Set on every committed append; the shipper waits on it instead of polling.
        self.has_data = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.empty = asyncio.Event()
        self._m_dead = None
        if registry is not None:
            Gauge(
                "gpuledger_spool_backlog_records",
                "Usage records spooled locally and not yet acknowledged by the control plane",
                registry=registry,
            ).set_function(lambda: self._records)
            Gauge(
                "gpuledger_spool_backlog_bytes",
                "Payload bytes spooled locally and not yet acknowledged",
                registry=registry,
            ).set_function(lambda: self._bytes)
            Gauge(
                "gpuledger_spool_oldest_record_age_seconds",
                "Age of the oldest unacknowledged usage record (0 when the spool is empty)",
                registry=registry,
            ).set_function(self.oldest_age_seconds)
            Gauge(
                "gpuledger_usage_dead_letter_pending_records",
                "Usage records in the dead-letter file, waiting for `gpuledger dead-letter replay`",
                registry=registry,
            ).set_function(self.dead_letter_pending)
            self._m_dead = Counter(
                "gpuledger_usage_dead_letter_total",
                "Usage records the control plane refused (4xx) and that went to the dead-letter file",
                registry=registry,
            )

    def dead_letter_pending(self) -> int:
        """Lines in the dead-letter file (read at scrape time: dead letters are rare and small,
        and a replay run by another process changes the file under us)."""
        try:
            with self.dead_letter_path.open("rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
        except FileNotFoundError:
            return 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuledger-spool")
        await self._run(self._open_sync)
        self._writer = asyncio.create_task(self._write_loop(), name="gpuledger-spool-writer")
        if self._records:
            self.has_data.set()
            log.info("usage spool reopened with %d unshipped records", self._records)
        self._update_space()

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)
        count, size, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(enqueued_at) FROM spool"
        ).fetchone()
        self._conn = conn
        self._records, self._bytes, self._oldest = int(count), int(size), oldest

    async def close(self) -> None:
        """Flush queued appends, then close. Unacked rows stay on disk for the next start."""
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self, fn: object, *args: object) -> object:
        assert self._executor is not None, "spool is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]

    # --- appends (hot path) ------------------------------------------------------------------

    async def append(self, record: UsageRecord) -> None:
        """Return once the record is durable on disk. Never refuses (see module docstring)."""
        await self.append_payload(orjson.dumps(record.model_dump(mode="json")))

    async def append_payload(self, payload: bytes) -> None:
        if self._writer is None:
            raise RuntimeError("spool is not open")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((payload, time.time(), fut))
        await fut

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            rows = [(ts, payload) for payload, ts, _ in batch]
            try:
                await self._run(self._insert_sync, rows)
            except Exception as exc:
                # A full disk: every waiter learns it (nothing is lost silently).
                log.error("usage spool append failed: %s", exc)
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                self._records += len(rows)
                self._bytes += sum(len(p) for _, p in rows)
                if self._oldest is None:
                    self._oldest = rows[0][0]
                self._update_space()
                self.has_data.set()
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _insert_sync(self, rows: list[tuple[float, bytes]]) -> None:
        assert self._conn is not None
        with self._conn:  # one transaction, one WAL fsync (synchronous=FULL)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT INTO spool (enqueued_at, payload) VALUES (?, ?)", rows)

    # --- bound -------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self._records >= self.max_records or self._bytes >= self.max_bytes

    def _update_space(self) -> None:
        if self.full:
            self._space.clear()
        else:
            self._space.set()
        if self._records:
            self.empty.clear()
        else:
            self.empty.set()

    async def wait_for_space(self, timeout_s: float) -> bool:
        """True once the spool is below its bound, False if it is still full after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._space.wait()
        except TimeoutError:
            return False
        return True

    @property
    def backlog_records(self) -> int:
        return self._records

    @property
    def backlog_bytes(self) -> int:
        return self._bytes

    def oldest_age_seconds(self) -> float:
        return 0.0 if self._oldest is None else max(0.0, time.time() - self._oldest)

    # --- shipping side -----------------------------------------------------------------------

    async def read_batch(self, limit: int) -> list[SpoolEntry]:
        """The oldest `limit` unacknowledged entries, oldest first."""
        rows = await self._run(self._read_sync, limit)
        return rows  # type: ignore[return-value]

    def _read_sync(self, limit: int) -> list[SpoolEntry]:
        assert self._conn is not None
        cur = self._conn.execute(
            "SELECT id, enqueued_at, payload FROM spool ORDER BY id LIMIT ?", (limit,)
        )
        return [SpoolEntry(int(i), float(t), bytes(p)) for i, t, p in cur.fetchall()]

    async def ack(self, entries: list[SpoolEntry]) -> None:
        """Delete acknowledged entries (durably) and update the backlog."""
        if not entries:
            return
        oldest = await self._run(self._delete_sync, [e.row_id for e in entries])
        self._records = max(0, self._records - len(entries))
        self._bytes = max(0, self._bytes - sum(len(e.payload) for e in entries))
        self._oldest = oldest  # type: ignore[assignment]
        if self._records == 0:
            self.has_data.clear()
        self._update_space()

    def _delete_sync(self, ids: list[int]) -> float | None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
        row = self._conn.execute("SELECT enqueued_at FROM spool ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    async def dead_letter(self, entry: SpoolEntry, reason: str) -> None:
        """Move one entry the control plane refused to the dead-letter file (fsynced), then ack it."""
        line = orjson.dumps(
            {
                "row_id": entry.row_id,
                "enqueued_at": entry.enqueued_at,
                "dead_at": time.time(),
                "reason": reason[:500],
                "payload": entry.payload.decode("utf-8", "replace"),
            }
        )
        await self._run(self._append_dead_sync, line + b"\n")
        log.error(
            "usage record moved to dead-letter file %s (spool row %d): %s",
            self.dead_letter_path,
            entry.row_id,
            reason[:200],
        )
        if self._m_dead is not None:
            self._m_dead.inc()
        await self.ack([entry])

    def _append_dead_sync(self, line: bytes) -> None:
        with locked_dead_letter(self.dead_letter_path) as fd:
            os.write(fd, line)
            os.fsync(fd)


@contextlib.contextmanager
def locked_dead_letter(path: Path) -> Iterator[int]:
    """An O_APPEND fd on the dead-letter file (created if missing) under an exclusive flock.

    `gpuledger dead-letter replay` rewrites the file by rename while holding this lock, so a
    writer that opened the old file and waited for the lock must not write to it (that inode is
    no longer linked: the line would be lost). It reopens until the fd it locked is the file at
    `path`.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)  # also releases the lock
