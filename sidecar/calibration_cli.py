"""`gpuledger calibrate`: estimate an engine's prefill cost factor from its /metrics."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="estimate the prefill/decode cost factor of a running vLLM engine",
        description=(
            "Scrape a vLLM engine's /metrics and estimate prefill_cost_factor (the time of one "
            "uncached prompt token relative to one decode step), which the GPU-second "
            "attribution uses. With --window, only the traffic between two scrapes counts."
        ),
    )
    p.add_argument("--engine-url", required=True, help="engine base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--profile", help="profile name (serving/profiles/NAME.yaml) or YAML path")
    p.add_argument("--write", action="store_true", help="write the factor into --profile's file")
    p.add_argument(
        "--window", type=float, default=0.0, metavar="SECONDS",
        help="scrape twice, SECONDS apart, and use only that window's traffic",
    )
    p.add_argument("--min-requests", type=int, default=10, help="refuse with fewer (default 10)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=_calibrate)


def _scrape(url: str) -> str:
    import httpx

    from gpuledger.cli import CliError

    try:
        response = httpx.get(f"{url.rstrip('/')}/metrics", timeout=10.0)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot scrape {url}/metrics: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise CliError(f"{url}/metrics answered HTTP {response.status_code}")
    return response.text


def _profile_path(name_or_path: str) -> Path:
    from gpuledger.cli import CliError
    from serving.profiles import PROFILES_DIR

    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path)
    if not path.is_file():
        raise CliError(f"profile file not found: {path}")
    return path


def _calibrate(args: argparse.Namespace) -> int:
    from gpuledger.cli import CliError
    from sidecar.calibration import CalibrationError, estimate, parse_metrics, write_profile_factor

    if args.write and not args.profile:
        raise CliError("--write needs --profile")
    path = _profile_path(args.profile) if args.profile else None
    try:
        counters = parse_metrics(_scrape(args.engine_url))
        if args.window > 0:
            time.sleep(args.window)
            counters = parse_metrics(_scrape(args.engine_url)) - counters
        result = estimate(counters, min_requests=args.min_requests)
    except CalibrationError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps({
            "prefill_cost_factor": result.prefill_cost_factor,
            "requests": result.requests,
            "prefill_seconds_per_token": result.prefill_seconds_per_token,
            "decode_seconds_per_token": result.decode_seconds_per_token,
            "mean_queue_seconds": result.mean_queue_seconds,
            "mean_tokens_per_iteration": result.mean_tokens_per_iteration,
        }))
    else:
        print(result.summary())
    if args.write and path is not None:
        from serving.profiles import ProfileError, load_profile

        original = path.read_text(encoding="utf-8")
        note = (
            f"gpuledger calibrate, {time.strftime('%Y-%m-%d', time.gmtime())}: "
            f"{result.requests} requests from {args.engine_url}"
        )
        write_profile_factor(path, result.prefill_cost_factor, note)
        try:
            load_profile(str(path))
        except ProfileError as exc:  # never leave a profile the launcher cannot read
            path.write_text(original, encoding="utf-8")
            raise CliError(f"not written: {exc}") from None
        if not args.json:
            print(f"wrote prefill_cost_factor to {path}")
    return 0
