"""`gpuledger` subcommands of the sidecar: `gpuledger sidecar` runs the proxy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "sidecar",
        help="run the guardrail + metering sidecar in front of vLLM",
        description=(
            "Run the OpenAI-compatible sidecar (uvicorn, uvloop, httptools). Settings come from "
            "GPULEDGER_* environment variables; the flags below override them."
        ),
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1, GPULEDGER_HOST)")
    p.add_argument("--port", type=int, help="port (default 8080, GPULEDGER_PORT)")
    p.add_argument("--upstream-url", help="vLLM base URL when the policy names no engine")
    p.add_argument(
        "--policy-file", type=Path, help="standalone YAML policy (GPULEDGER_POLICY_FILE)"
    )
    p.add_argument("--usage-jsonl", type=Path, help="append usage records to this JSONL file")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from gpuledger.cli import CliError
    from sidecar.app import create_app
    from sidecar.settings import Settings

    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("upstream_url", args.upstream_url),
            ("policy_file", args.policy_file),
            ("usage_jsonl", args.usage_jsonl),
        )
        if value is not None
    }
    settings = Settings(**overrides)
    if settings.policy_file is not None and not settings.policy_file.is_file():
        raise CliError(f"policy file not found: {settings.policy_file}")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,  # one log line per request would cost more than the relay itself
        # Longer than load balancers' idle timeouts (60 s on AWS ALB): the server must not close
        # a pooled connection just as a client reuses it.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=10,
    )
    return 0
