"""The `gpuledger` command. Each domain registers its own subcommands (`register(subparsers)`),
so this file never grows with them; heavy imports happen inside the handlers, not here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that expose `register(subparsers) -> None`. Handlers are set with `set_defaults(func=...)`
# and return an exit code.
_COMMAND_MODULES = (
    "serving.cli",
    "serving.engine_cli",
    "sidecar.cli",
    "sidecar.calibration_cli",
    "sidecar.dead_letter_cli",
    "control_plane.cli",
    "dashboard.cli",
    "gpuledger.stack",
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2 (or `code`)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuledger",
        description="Guardrails, metering and GPU-hour budgets for self-hosted vLLM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"gpuledger: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
