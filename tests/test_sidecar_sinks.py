"""Usage sinks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gpuledger.contracts import UsageRecord
from sidecar.sinks import JsonlSink, MemorySink


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        id=f"r{i}", feature="f", model="m", upstream="e", started_at=datetime.now(UTC)
    )


async def test_jsonl_sink_appends_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "usage.jsonl"
    sink = JsonlSink(path)
    await sink.start()
    await sink.write(_record(1))
    await sink.write(_record(2))
    await sink.close()
    again = JsonlSink(path)
    await again.write(_record(3))  # opens lazily, appends
    await again.close()
    lines = path.read_text().splitlines()
    assert [UsageRecord.model_validate_json(line).id for line in lines] == ["r1", "r2", "r3"]


async def test_memory_sink() -> None:
    sink = MemorySink()
    await sink.write(_record(1))
    assert [r.id for r in sink.wait_for(1, timeout_s=0.1)] == ["r1"]
