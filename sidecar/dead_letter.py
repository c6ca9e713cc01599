"""Read and replay the usage dead-letter file (`gpuledger dead-letter`, sidecar/dead_letter_cli.py).

The shipper moves a record the control plane refuses (400/413/422) to
`<state_dir>/usage-spool.dead-letter.jsonl`, one JSON line per record as `Spool.dead_letter`
writes it: ``row_id``, ``enqueued_at``, ``dead_at``, ``reason`` and the record as ``payload`` (a
JSON string). Once the cause is fixed, `replay` ships them again:

* each payload is validated against the current `UsageRecord` contract first; one that fails
  stays, with the error, and is not sent;
* the rest go through the shipper itself (`Shipper.ship_once`: same endpoint, token, batch size,
  timeout, and the same split-until-isolated handling of a refused record), fed from the file
  instead of the spool by `_ReplaySource`;
* the file is then rewritten atomically (temp file, fsync, rename, fsync of the directory):
  entries the control plane acknowledged are appended to `<name>.replayed.jsonl` (the audit
  trail) and leave it; refused ones stay with `last_replay_error`; lines appended meanwhile stay.

Ingest is idempotent by record id, so sending a record twice is harmless, and this module relies
on it: a crash between the audit append and the rename leaves a record in both files, and the
next replay sends it again as a duplicate (the control plane counts it once).

A running sidecar appends to the same file. Both sides take `locked_dead_letter` (flock on the
file, re-checked against renames), held only to read or to rewrite, never across the network: a
sidecar's append never waits for the control plane, and no line appended during a replay is lost
(the rewrite keeps every line it did not replay, matched byte for byte).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from gpuledger.contracts import UsageRecord
from sidecar.settings import Settings
from sidecar.shipper import SPOOL_FILE, Shipper
from sidecar.spool import Spool, SpoolEntry, locked_dead_letter


def dead_letter_path(state_dir: Path) -> Path:
    return Spool(state_dir / SPOOL_FILE).dead_letter_path


def replayed_path(path: Path) -> Path:
    """`usage-spool.dead-letter.jsonl` -> `usage-spool.dead-letter.replayed.jsonl`."""
    return path.with_suffix(".replayed.jsonl")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One line of the dead-letter file; `line` (exact bytes) identifies it in the rewrite."""

    line: bytes
    entry: dict[str, Any] | None  # None: the line is not a JSON object

    @property
    def payload(self) -> dict[str, Any]:
        if self.entry is None or not isinstance(self.entry.get("payload"), str):
            return {}
        try:
            value = orjson.loads(self.entry["payload"])
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def record_id(self) -> str:
        return str(self.payload.get("id", "?"))

    @property
    def feature(self) -> str:
        return str(self.payload.get("feature", "?"))

    @property
    def model(self) -> str:
        return str(self.payload.get("model", "?"))

    @property
    def reason(self) -> str:
        if self.entry is None:
            return "unreadable line (not JSON)"
        return str(self.entry.get("last_replay_error") or self.entry.get("reason", ""))

    @property
    def dead_at(self) -> float | None:
        value = self.entry.get("dead_at") if self.entry else None
        return float(value) if isinstance(value, int | float) else None

    def validate(self) -> bytes:
        """The payload bytes to send, or ValueError saying why the current contract refuses it."""
        if self.entry is None or not isinstance(self.entry.get("payload"), str):
            raise ValueError("no record payload in this line")
        raw: bytes = self.entry["payload"].encode()
        try:
            UsageRecord.model_validate_json(raw)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"invalid record: {errors}") from None
        # Sent as stored, not re-serialized: fields this contract does not know are kept.
        return raw


def _parse(line: bytes) -> DeadLetter:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return DeadLetter(line, None)
    return DeadLetter(line, entry if isinstance(entry, dict) else None)


def _read_locked(fd: int) -> list[bytes]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return [line for line in b"".join(chunks).splitlines() if line.strip()]


def read_dead_letters(path: Path) -> list[DeadLetter]:
    """Every entry in the file, oldest first (under the lock: never a half-written line)."""
    if not path.exists():
        return []
    with locked_dead_letter(path) as fd:
        return [_parse(line) for line in _read_locked(fd)]


@dataclass
class ReplayResult:
    replayed: list[DeadLetter] = field(default_factory=list)
    # Entries that stay, with why: invalid, refused by the control plane, or not sent.
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)
    sendable: int = 0  # entries the current contract accepts (what a dry run would send)
    error: str | None = None  # why the replay stopped early (control plane unreachable, 5xx)
    remaining: int = 0  # entries in the file afterwards, including ones appended meanwhile
    dry_run: bool = False


class _ReplaySource(Spool):
    """What the shipper reads instead of the spool: dead-letter entries, never opened on disk.

    `read_batch` hands out the pending entries; `ack` and `dead_letter` (the shipper's verdicts)
    are recorded here instead of touching SQLite or the dead-letter file. Its backlog stays 0,
    so the shipper's own background loop never wakes: only `ship_once` drives it.
    """

    def __init__(self, spool_path: Path, entries: list[SpoolEntry]) -> None:
        super().__init__(spool_path)
        self._pending = list(entries)
        self.acked: set[int] = set()
        self.refused: dict[int, str] = {}

    async def read_batch(self, limit: int) -> list[SpoolEntry]:
        batch, self._pending = self._pending[:limit], self._pending[limit:]
        return batch

    async def ack(self, entries: list[SpoolEntry]) -> None:
        self.acked.update(e.row_id for e in entries)

    async def dead_letter(self, entry: SpoolEntry, reason: str) -> None:
        self.refused[entry.row_id] = reason[:500]


async def replay(path: Path, settings: Settings, *, dry_run: bool = False) -> ReplayResult:
    """Ship the file's entries again (see module docstring); `dry_run` only validates."""
    letters = read_dead_letters(path)
    result = ReplayResult(dry_run=dry_run, remaining=len(letters))
    entries: list[SpoolEntry] = []
    for index, letter in enumerate(letters):
        try:
            entries.append(SpoolEntry(index, 0.0, letter.validate()))
        except ValueError as exc:
            result.failed.append((letter, str(exc)))
    result.sendable = len(entries)
    if dry_run or not entries:
        return result
    if not (settings.control_plane_url and settings.control_plane_token):
        raise ValueError(
            "GPULEDGER_CONTROL_PLANE_URL and GPULEDGER_CONTROL_PLANE_TOKEN must be set"
        )

    source = _ReplaySource(path.with_name(SPOOL_FILE), entries)
    shipper = Shipper(
        source,
        control_plane_url=settings.control_plane_url,
        token=settings.control_plane_token,
        batch_size=settings.ship_batch_size,
    )
    await shipper.start()
    try:
        while await shipper.ship_once():
            pass
    except Exception as exc:  # retryable (5xx, 401, unreachable) or not: stop, keep the rest
        result.error = str(exc) or type(exc).__name__
    finally:
        await shipper.close(flush_timeout_s=0)

    for entry in entries:
        letter = letters[entry.row_id]
        if entry.row_id in source.acked:
            result.replayed.append(letter)
        elif entry.row_id in source.refused:
            result.failed.append((letter, source.refused[entry.row_id]))
        else:
            result.failed.append((letter, f"not sent: {result.error}"))
    if result.replayed or source.refused:
        refused = [(letters[i], why) for i, why in source.refused.items()]
        result.remaining = _rewrite(path, result.replayed, refused)
    return result


def _rewrite(path: Path, replayed: list[DeadLetter], refused: list[tuple[DeadLetter, str]]) -> int:
    """Drop `replayed` lines (after appending them to the audit file) and stamp `refused` ones
    with the control plane's answer; every other line is kept as is. Returns the entries left."""
    now = time.time()
    done = {letter.line for letter in replayed}
    stamped = {
        letter.line: orjson.dumps(letter.entry | {"last_replay_at": now, "last_replay_error": why})
        for letter, why in refused
        if letter.entry is not None
    }
    with locked_dead_letter(path) as fd:
        current = _read_locked(fd)
        keep = [stamped.get(line, line) for line in current if line not in done]
        moved = [line for line in current if line in done]
        if moved:
            audit = b"".join(
                orjson.dumps(orjson.loads(line) | {"replayed_at": now}) + b"\n" for line in moved
            )
            _append_fsync(replayed_path(path), audit)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd_tmp = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd_tmp, "wb") as out:
            out.write(b"".join(line + b"\n" for line in keep))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    return len(keep)


def _append_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "ab") as out:  # buffered: writes all of `data`, even past a short write
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
