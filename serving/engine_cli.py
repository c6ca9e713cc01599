"""`gpuledger engine ...`: build the tiny model, print or run a profile's `vllm serve` command."""

from __future__ import annotations

import argparse
from typing import Any

from gpuledger.cli import CliError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    engine = sub.add_parser("engine", help="run the vLLM engine from a workload profile")
    actions = engine.add_subparsers(dest="engine_command", required=True, metavar="ACTION")

    start = actions.add_parser("start", help="launch vLLM, wait for /health, stop cleanly on Ctrl-C")
    start.add_argument("--profile", default="tiny-cpu", help="profile name or YAML path")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=8000)
    start.set_defaults(func=_start)

    command = actions.add_parser("command", help="print the `vllm serve` command of a profile")
    command.add_argument("--profile", default="tiny-cpu")
    command.add_argument("--host", default="0.0.0.0")
    command.add_argument("--port", type=int, default=8000)
    command.set_defaults(func=_command)

    build = actions.add_parser("build-model", help="build the tiny local model (once; cached)")
    build.set_defaults(func=_build_model)


def _start(args: argparse.Namespace) -> int:
    from serving.engine import EngineError, run_foreground
    from serving.profiles import ProfileError

    try:
        return run_foreground(args.profile, args.host, args.port)
    except (EngineError, ProfileError) as exc:
        raise CliError(str(exc)) from exc


def _command(args: argparse.Namespace) -> int:
    from serving.engine import cache_dir
    from serving.profiles import ProfileError, load_profile

    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise CliError(str(exc)) from exc
    print(profile.command_line(profile.resolved_model(cache_dir()), args.host, args.port))
    return 0


def _build_model(args: argparse.Namespace) -> int:
    from serving.engine import EngineError, ensure_tiny_model

    try:
        print(ensure_tiny_model())
    except EngineError as exc:
        raise CliError(str(exc)) from exc
    return 0
