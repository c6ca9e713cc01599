"""The overhead benchmark (bench/runner.py) with each process on its own CPU cores.

On a 2-core VM the load generator, the engine simulator and the sidecar take CPU from each other,
so what the sidecar "adds" there is mostly queueing for a core (docs/benchmarks.md). On a host
with cores to spare this launcher gives each its own set, so the comparison with direct measures
the sidecar's own cost on the request path:

    python -m bench.pinning --quick                       # runner's quick plan, < 3 minutes
    python -m bench.pinning --sim 0-3 --load 4-7 --sidecar 8-11   # the longer plan below

The runner's process (the aiohttp load generator and the OTLP sink the sidecar exports spans to)
is pinned to `--load`. The children inherit the affinity of the thread that forks them, so the
launcher switches its own affinity around each spawn rather than wrapping commands in `taskset`.
LiteLLM is left out (its targets are met on the dev VM). Results land where the runner writes
them, bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import runner, stack

# Several windows at 256 streams (the targets' level) and a rate ladder above what the 2-core VM
# reached; ~5 minutes with two paths on a 16-core host.
LONG = runner.Plan({1: 2, 64: 3, 256: 6}, (1, 64, 256), {1: 4.0, 64: 6.0, 256: 10.0}, 500.0,
                   (40, 80, 120, 160, 200, 240, 320), 4.0, 20_000, 0, 60.0, 16)  # fmt: skip


def parse_cores(spec: str) -> set[int]:
    """`0-3,8` -> {0, 1, 2, 3, 8}, as taskset -c reads it."""
    cores: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def role(cmd: list[str]) -> str:
    if "serving.simulator" in cmd:
        return "sim"
    if "sidecar" in cmd:
        return "sidecar"
    return "other"


def install(pins: dict[str, set[int]]) -> None:
    """Make the runner spawn its children on their cores (and pin this process to `load`)."""
    original = stack.spawn

    def pinned(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        # Without an installed console script (the device has the repo on PYTHONPATH only),
        # run the same entry point as a module.
        if Path(cmd[0]).name == "gpuledger" and not shutil.which(cmd[0]):
            cmd = [sys.executable, "-m", "gpuledger.cli", *cmd[1:]]
        cores = pins.get(role(cmd), pins["load"])
        os.sched_setaffinity(0, cores)
        try:
            popen = original(cmd, env, log)
        finally:
            os.sched_setaffinity(0, pins["load"])
        got = sorted(os.sched_getaffinity(popen.pid))
        print(f"pinned {role(cmd)} (pid {popen.pid}) to cores {got}", flush=True)
        return popen

    os.sched_setaffinity(0, pins["load"])
    stack.spawn = pinned


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pinning", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the runner's quick plan")
    p.add_argument("--sim", default="0-3", help="cores for the engine simulator")
    p.add_argument("--load", default="4-7", help="cores for the runner and load generator")
    p.add_argument("--sidecar", default="8-11", help="cores for gpuledger's sidecar")
    p.add_argument("--paths", default="direct,gpuledger")
    p.add_argument("--speedup", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)
    pins = {k: parse_cores(getattr(args, k)) for k in ("sim", "load", "sidecar")}
    install(pins)
    shown = {k: sorted(v) for k, v in pins.items()}
    print(f"{os.cpu_count()} cores; pins {shown}", flush=True)
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    code: int = run(runner.run(runner.QUICK if args.quick else LONG, args))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
