"""`gpuledger dead-letter list|replay`: see and re-ship usage records the control plane refused.

Settings come from the sidecar's GPULEDGER_* environment (state dir, control plane URL and
token, batch size), so inside the sidecar's container the commands need no flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.dead_letter import DeadLetter, ReplayResult


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "dead-letter",
        help="list or replay usage records the control plane refused",
        description=(
            "Usage records the control plane refused (4xx) sit in "
            "<state dir>/usage-spool.dead-letter.jsonl. Fix the cause, then replay them; safe "
            "while the sidecar runs, and ingest is idempotent by record id."
        ),
    )
    cmds = p.add_subparsers(dest="dead_letter_command", required=True, metavar="ACTION")
    state_dir = argparse.ArgumentParser(add_help=False)
    state_dir.add_argument(
        "--state-dir", type=Path, help="the sidecar's state dir (default GPULEDGER_STATE_DIR)"
    )
    ls = cmds.add_parser("list", parents=[state_dir], help="show the dead letters")
    ls.add_argument("--json", action="store_true", help="one JSON object per line, unabridged")
    ls.set_defaults(func=_list)
    rp = cmds.add_parser(
        "replay",
        parents=[state_dir],
        help="ship them to the control plane again (exit 1 while some remain)",
    )
    rp.add_argument(
        "--dry-run", action="store_true", help="only validate them; send and change nothing"
    )
    rp.set_defaults(func=_replay)


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from gpuledger.cli import CliError
    from sidecar.settings import Settings

    try:
        return Settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    except ValidationError as exc:
        raise CliError(f"invalid GPULEDGER_* settings: {exc}") from None


def _when(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "?" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(rows: Sequence[tuple[str, ...]], indent: str = "") -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        indent + "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _list(args: argparse.Namespace) -> int:
    import orjson

    from sidecar.dead_letter import dead_letter_path, read_dead_letters

    path = dead_letter_path(_settings(args).state_dir)
    letters = read_dead_letters(path)
    if args.json:
        for letter in letters:
            print((orjson.dumps(letter.entry) if letter.entry else letter.line).decode())
        return 0
    if not letters:
        print(f"no dead letters in {path}")
        return 0
    rows: list[tuple[str, ...]] = [("ID", "FEATURE", "MODEL", "DEAD AT", "REASON")]
    rows += [(x.record_id, x.feature, x.model, _when(x.dead_at), _short(x.reason)) for x in letters]
    print(_table(rows))
    print(f"{len(letters)} dead letter(s) in {path}")
    return 0


def _failures(failed: list[tuple[DeadLetter, str]]) -> str:
    return _table([(x.record_id, x.feature, _short(why)) for x, why in failed], indent="  ")


def _replay(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from gpuledger.cli import CliError
    from sidecar.dead_letter import dead_letter_path, replay, replayed_path

    settings = _settings(args)
    path = dead_letter_path(settings.state_dir)
    try:
        result: ReplayResult = asyncio.run(replay(path, settings, dry_run=args.dry_run))
    except ValueError as exc:  # control plane not configured
        raise CliError(str(exc)) from None
    if args.dry_run:
        print(
            f"dry run: {result.sendable} of {result.remaining} dead letter(s) in {path} are valid "
            "under the current UsageRecord contract and would be sent; nothing was sent or changed"
        )
        if result.failed:
            print(f"{len(result.failed)} would stay:\n{_failures(result.failed)}")
        return 1 if result.failed else 0
    if not result.remaining and not result.replayed:
        print(f"no dead letters in {path}: nothing to replay")
        return 0
    if result.replayed:
        print(
            f"replayed {len(result.replayed)} record(s) to {settings.control_plane_url} "
            "(ingest is idempotent by record id: one sent twice counts once); "
            f"audit trail: {replayed_path(path)}"
        )
    if result.error:
        print(f"stopped early: {result.error}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} still failing:\n{_failures(result.failed)}")
    if result.remaining:
        arrived = result.remaining - len(result.failed)
        extra = f", {arrived} of them written during the replay (run again)" if arrived > 0 else ""
        print(f"{result.remaining} dead letter(s) remain in {path}{extra}")
        return 1
    print(f"{path} is empty")
    return 0
