"""Dead-letter replay (sidecar/dead_letter.py, `gpuledger dead-letter`) against a real control plane.

Dead letters are produced for real: the sidecar's own spool sink ships to the control plane and
isolates what is refused. The control plane refuses a record's content only when it breaks the
UsageRecord contract (422): it accepts any feature or key name, so "create the missing feature"
is not a cause that exists. A refusal an operator fixes without touching the record comes from in
front of it: here a reverse proxy with a request-body limit that answers 413 (what nginx's
`client_max_body_size` does), which the shipper treats as a refused record. Raising the limit is
the fix; a record the contract itself refuses (NaN GPU-seconds, serialized as null) stays.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gpuledger.cli import main
from gpuledger.contracts import UsageRecord
from sidecar.dead_letter import dead_letter_path, read_dead_letters, replay, replayed_path
from sidecar.settings import Settings
from sidecar.shipper import build_spool_sink
from sidecar.spool import Spool
from tests.conftest import free_port
from tests.control_plane_support import (
    SIDECAR_TOKEN,
    admin_client,
    cp_settings,
    make_record,
    run_control_plane,
    sqlite_url,
)
from tests.sidecar_support import RecordingTap, run_recording_tap

LIMIT = 2048  # the proxy's body limit before the fix: an ordinary record is ~600 bytes


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_control_plane(cp_settings(sqlite_url(tmp_path_factory.mktemp("cp")))) as url:
        yield url


@pytest.fixture
def proxy(control_plane: str) -> Iterator[RecordingTap]:
    """A reverse proxy in front of the control plane that refuses bodies over LIMIT (413)."""
    with run_recording_tap(control_plane) as (_, tap):
        tap.max_body_bytes = LIMIT
        yield tap


def sidecar_settings(state_dir: Path, url: str) -> Settings:
    return Settings(state_dir=state_dir, control_plane_url=url, control_plane_token=SIDECAR_TOKEN)


def big_record(feature: str) -> UsageRecord:
    """A record over the proxy's limit on its own (a long list of guardrail actions)."""
    actions = [f"pii-redacted:span-{i}" for i in range(200)]
    return make_record(feature=feature).model_copy(update={"guardrail_actions": actions})


async def ship(settings: Settings, records: list[UsageRecord]) -> float:
    """Ship through the sidecar's own spool sink until the spool is empty; returns the
    dead-letter counter."""
    registry = CollectorRegistry()
    sink = build_spool_sink(settings, registry)
    assert sink is not None
    await sink.start()
    for record in records:
        await sink.write(record)
    deadline = time.monotonic() + 30
    while sink.spool.backlog_records:
        assert time.monotonic() < deadline, "spool did not drain"
        await asyncio.sleep(0.05)
    await sink.close()
    return registry.get_sample_value("gpuledger_usage_dead_letter_total") or 0.0


def landed(cp_url: str, feature: str) -> tuple[list[str], int]:
    """(record ids stored for `feature`, requests in its rollups): ingest must count once."""
    with admin_client(cp_url) as client:
        page = client.get("/api/v1/usage/records", params={"feature": feature, "limit": 1000})
        summary = client.get("/api/v1/usage/summary", params={"feature": feature})
    return [r["id"] for r in page.json()["items"]], summary.json()["totals"]["requests"]


def ids_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [orjson.loads(orjson.loads(x)["payload"])["id"] for x in path.read_bytes().splitlines()]


async def test_refused_record_lands_exactly_once_after_the_fix(
    tmp_path: Path, control_plane: str, proxy: RecordingTap
) -> None:
    settings = sidecar_settings(tmp_path, proxy.url)
    normal = [make_record(feature="dl-normal") for _ in range(3)]
    big = big_record("dl-big")
    assert 3 * len(orjson.dumps(normal[0].model_dump(mode="json"))) < LIMIT
    assert await ship(settings, [*normal, big]) == 1

    path = dead_letter_path(tmp_path)
    [letter] = read_dead_letters(path)
    assert (letter.record_id, letter.feature, letter.model) == (big.id, "dl-big", "tiny")
    assert letter.reason.startswith("HTTP 413") and letter.dead_at is not None
    assert sorted(landed(control_plane, "dl-normal")[0]) == sorted(r.id for r in normal)

    # Before the fix: the proxy still refuses, so it stays, stamped with the new answer.
    result = await replay(path, settings)
    assert (result.replayed, result.remaining) == ([], 1)
    [still] = read_dead_letters(path)
    assert still.record_id == big.id and still.entry is not None
    assert still.entry["last_replay_error"].startswith("HTTP 413")
    assert still.entry["reason"] == letter.reason  # the original reason is kept

    proxy.max_body_bytes = 1 << 20  # the fix
    result = await replay(path, settings)
    assert [x.record_id for x in result.replayed] == [big.id]
    assert (result.failed, result.remaining, result.error) == ([], 0, None)
    assert path.read_bytes() == b""
    assert ids_in(replayed_path(path)) == [big.id]
    assert "replayed_at" in orjson.loads(replayed_path(path).read_bytes())
    assert landed(control_plane, "dl-big") == ([big.id], 1)

    audit = replayed_path(path).read_bytes()
    again = await replay(path, settings)  # nothing left: a no-op
    assert (again.replayed, again.failed, again.remaining) == ([], [], 0)
    assert replayed_path(path).read_bytes() == audit and path.read_bytes() == b""

    # A crash after the audit append but before the rename leaves the line in both files: the
    # next replay sends it again and ingest (idempotent by id) still counts it once.
    path.write_bytes(still.line + b"\n")
    assert [x.record_id for x in (await replay(path, settings)).replayed] == [big.id]
    assert landed(control_plane, "dl-big") == ([big.id], 1)


async def test_what_still_fails_stays_byte_for_byte(
    tmp_path: Path, control_plane: str, proxy: RecordingTap
) -> None:
    settings = sidecar_settings(tmp_path, proxy.url)
    nan = make_record(feature="dl-nan", gpu_seconds=float("nan"))  # orjson writes NaN as null
    big = big_record("dl-big-2")
    assert await ship(settings, [nan, big, make_record(feature="dl-normal")]) == 2
    path = dead_letter_path(tmp_path)
    reasons = {x.record_id: x.reason for x in read_dead_letters(path)}
    assert reasons[nan.id].startswith("HTTP 422")  # the control plane itself refused it
    assert reasons[big.id].startswith("HTTP 413")
    with path.open("ab") as f:  # a torn line (power loss mid-append) must not break the replay
        f.write(b'{"row_id": 7, "payl\n')
    before = path.read_bytes()

    dry = await replay(path, settings, dry_run=True)
    assert (dry.sendable, dry.remaining, len(dry.failed)) == (1, 3, 2)
    assert path.read_bytes() == before and not replayed_path(path).exists()

    proxy.max_body_bytes = 1 << 20
    result = await replay(path, settings)
    assert [x.record_id for x in result.replayed] == [big.id]
    why = {x.record_id: reason for x, reason in result.failed}
    assert why[nan.id].startswith("invalid record: gpu_seconds")
    assert why["?"] == "no record payload in this line"
    assert result.remaining == 2
    # Not sent, so not rewritten: the nan record and the torn line are exactly as they were.
    assert path.read_bytes() == b"".join(
        line + b"\n" for line in before.splitlines() if big.id.encode() not in line
    )
    assert landed(control_plane, "dl-nan") == ([], 0)
    assert landed(control_plane, "dl-big-2") == ([big.id], 1)


async def test_unreachable_control_plane_changes_nothing(
    tmp_path: Path, proxy: RecordingTap
) -> None:
    assert await ship(sidecar_settings(tmp_path, proxy.url), [big_record("dl-down")]) == 1
    path = dead_letter_path(tmp_path)
    before = path.read_bytes()
    down = sidecar_settings(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = await replay(path, down)
    assert result.error is not None and "ClientConnector" in result.error
    assert result.replayed == [] and result.remaining == 1
    assert result.failed[0][1].startswith("not sent")
    assert path.read_bytes() == before and not replayed_path(path).exists()


def dead_letter_in_thread(state_dir: Path, records: list[UsageRecord]) -> threading.Thread:
    """A sidecar's spool dead-lettering `records` one by one (its own loop and spool thread)."""

    async def run() -> None:
        spool = Spool(state_dir / "usage-spool.db")
        await spool.open()
        for record in records:
            await spool.append(record)
        for entry in await spool.read_batch(len(records)):
            await spool.dead_letter(entry, "HTTP 413: test")
        await spool.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    return thread


async def test_lines_appended_during_replays_are_never_lost(
    tmp_path: Path, control_plane: str
) -> None:
    records = [make_record(feature="dl-race") for _ in range(300)]
    settings = sidecar_settings(tmp_path, control_plane)
    path = dead_letter_path(tmp_path)
    writer = dead_letter_in_thread(tmp_path, records)
    rounds = 0
    while writer.is_alive():
        await replay(path, settings)
        rounds += 1
    writer.join()
    await replay(path, settings)
    assert rounds > 5  # the replays really overlapped the appends
    assert ids_in(path) == []
    assert sorted(ids_in(replayed_path(path))) == sorted(r.id for r in records)
    ids, requests = landed(control_plane, "dl-race")
    assert sorted(ids) == sorted(r.id for r in records) and requests == len(records)


def test_cli_list_and_replay(
    tmp_path: Path,
    proxy: RecordingTap,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = big_record("dl-cli")
    assert asyncio.run(ship(sidecar_settings(tmp_path, proxy.url), [big])) == 1

    def run(*argv: str) -> int:
        return main(["dead-letter", *argv, "--state-dir", str(tmp_path)])

    def out() -> Any:
        return capsys.readouterr()

    monkeypatch.delenv("GPULEDGER_CONTROL_PLANE_URL", raising=False)
    assert run("replay") == 2
    assert "GPULEDGER_CONTROL_PLANE_URL" in out().err
    monkeypatch.setenv("GPULEDGER_CONTROL_PLANE_URL", proxy.url)
    monkeypatch.setenv("GPULEDGER_CONTROL_PLANE_TOKEN", SIDECAR_TOKEN)

    assert run("list") == 0
    text = out().out
    assert big.id in text and "dl-cli" in text and "HTTP 413" in text
    assert "1 dead letter(s) in" in text
    assert run("list", "--json") == 0
    assert orjson.loads(out().out)["reason"].startswith("HTTP 413")

    assert run("replay", "--dry-run") == 0
    assert "1 of 1 dead letter(s)" in out().out
    assert run("replay") == 1
    text = out().out
    assert "1 still failing" in text and "HTTP 413" in text

    proxy.max_body_bytes = 1 << 20
    assert run("replay") == 0
    assert "replayed 1 record(s)" in out().out
    assert run("list") == 0
    assert "no dead letters" in out().out
    assert run("replay") == 0
    assert "nothing to replay" in out().out
