"""The durable usage spool: durability across reopen, torn WAL tail, the bound, acks."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gpuledger.contracts import UsageRecord
from sidecar.shipper import SpoolGuard
from sidecar.spool import Spool, SpoolFull


def record(i: int) -> UsageRecord:
    return UsageRecord(
        id=f"rec-{i:06d}",
        key_id="key-1",
        feature="chat",
        model="tiny",
        upstream="local",
        started_at=datetime(2026, 11, 27, tzinfo=UTC),
        input_tokens=10,
        output_tokens=i,
        gpu_seconds=0.01 * i,
    )


def ids(entries: list[bytes]) -> list[str]:
    return [orjson.loads(p)["id"] for p in entries]


async def test_appends_survive_reopen_and_ack_deletes(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", registry=registry)
    await spool.open()
    await asyncio.gather(*(spool.append(record(i)) for i in range(300)))
    assert spool.backlog_records == 300
    assert registry.get_sample_value("gpuledger_spool_backlog_records") == 300
    assert registry.get_sample_value("gpuledger_spool_oldest_record_age_seconds") >= 0  # type: ignore[operator]
    await spool.close()

    reopened = Spool(tmp_path / "spool.db")
    await reopened.open()
    assert reopened.backlog_records == 300
    assert reopened.has_data.is_set()
    batch = await reopened.read_batch(100)
    assert ids([e.payload for e in batch]) == [f"rec-{i:06d}" for i in range(100)]
    # Payloads round-trip to the same record.
    assert UsageRecord.model_validate_json(batch[5].payload) == record(5)
    await reopened.ack(batch)
    assert reopened.backlog_records == 200
    rest = await reopened.read_batch(1000)
    assert ids([e.payload for e in rest]) == [f"rec-{i:06d}" for i in range(100, 300)]
    await reopened.ack(rest)
    assert reopened.backlog_records == 0
    assert reopened.oldest_age_seconds() == 0.0
    assert reopened.empty.is_set()
    await reopened.close()

    again = Spool(tmp_path / "spool.db")
    await again.open()
    assert again.backlog_records == 0
    assert await again.read_batch(10) == []
    await again.close()


async def test_torn_wal_tail_loses_only_the_torn_commit(tmp_path: Path) -> None:
    """Copy the files of a live spool (what SIGKILL leaves: an un-checkpointed WAL), tear the
    WAL's last bytes as a crash mid-fsync would, and reopen: every earlier commit is intact."""
    spool = Spool(tmp_path / "spool.db")
    await spool.open()
    for i in range(50):  # 50 sequential appends = 50 separate commits
        await spool.append(record(i))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(tmp_path / f"spool.db{suffix}", crashed / f"spool.db{suffix}")
    await spool.close()

    wal = crashed / "spool.db-wal"
    size = wal.stat().st_size
    assert size > 0, "the copy must carry an un-checkpointed WAL"
    with wal.open("r+b") as f:
        f.truncate(size - 100)

    recovered = Spool(crashed / "spool.db")
    await recovered.open()
    got = ids([e.payload for e in await recovered.read_batch(1000)])
    assert got == [f"rec-{i:06d}" for i in range(49)]  # only the torn last commit is gone
    assert recovered.backlog_records == 49
    await recovered.close()


async def test_bound_refuses_new_requests_and_never_drops(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", max_records=10)
    await spool.open()
    guard = SpoolGuard(spool, on_full="reject", registry=registry)
    for i in range(10):
        assert await guard.admit(None) is None  # type: ignore[arg-type]
        await spool.append(record(i))
    assert spool.full
    with pytest.raises(SpoolFull) as err:
        await guard.admit(None)  # type: ignore[arg-type]
    assert err.value.status == 503
    assert err.value.code == "usage_spool_full"
    assert err.value.headers["retry-after"]
    assert registry.get_sample_value("gpuledger_spool_full_refusals_total") == 1
    # A request that was already admitted still gets accounted: appends past the bound are kept.
    await spool.append(record(10))
    assert spool.backlog_records == 11
    assert len(await spool.read_batch(100)) == 11

    # Once acks make room, admission resumes.
    await spool.ack(await spool.read_batch(5))
    assert not spool.full
    assert await guard.admit(None) is None
    await spool.close()


async def test_block_mode_holds_until_space(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=1)  # one record fills it
    await spool.open()
    await spool.append(record(1))
    guard = SpoolGuard(spool, on_full="block", block_timeout_s=5.0)
    admitted = asyncio.create_task(guard.admit(None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not admitted.done()  # held while full
    await spool.ack(await spool.read_batch(10))
    assert await asyncio.wait_for(admitted, 2.0) is None

    await spool.append(record(2))
    short = SpoolGuard(spool, on_full="block", block_timeout_s=0.05)
    with pytest.raises(SpoolFull):
        await short.admit(None)  # type: ignore[arg-type]
    await spool.close()


async def test_dead_letter_moves_the_entry_to_a_file(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path / "spool.db", registry=registry)
    await spool.open()
    await spool.append(record(1))
    await spool.append(record(2))
    first = (await spool.read_batch(1))[0]
    await spool.dead_letter(first, "HTTP 422: bad record")
    assert spool.backlog_records == 1
    lines = spool.dead_letter_path.read_bytes().splitlines()
    assert len(lines) == 1
    dead = orjson.loads(lines[0])
    assert dead["reason"] == "HTTP 422: bad record"
    assert orjson.loads(dead["payload"])["id"] == "rec-000001"
    assert registry.get_sample_value("gpuledger_usage_dead_letter_total") == 1
    await spool.close()
