"""What making the usage record durable before a response's final bytes costs the client.

`python -m bench.bench_durable_tail [--seconds 4] [--rounds 4] [--concurrency 1,32] [--max-tokens 16]`

Two sidecar processes (the same code, both spooling every record to a durable SQLite spool with
group commit, as in control-plane mode; no shipper) in front of the engine simulator:

* `durable`: what ships: the proxy awaits the spool append (fsync) before relaying `[DONE]` /
  the end of the stream, or a non-streamed body.
* `deferred`: the append is started but not awaited, which is what the client saw when the record
  was written after the last byte; the spool does the same fsync work.

Rounds alternate (this machine's speed drifts). Per streamed request the client measures the
*tail*: from the read that carried the last content chunk (`finish_reason`) to the end of the body;
the record's write lands in exactly that gap. Non-streamed requests: end-to-end time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from bench.bench_sidecar import MODEL, SECRET, _policy, _spawn, _stop
from bench.loadgen import make_session, percentile
from gpuledger.contracts import UsageRecord
from tests.conftest import free_port

MODES = ("deferred", "durable")
_FINISH = b'"finish_reason":"'


class _SpoolOnlySink:
    """The spool without a shipper; `deferred` does not await the append (see module doc)."""

    def __init__(self, path: Path, deferred: bool) -> None:
        from sidecar.spool import Spool

        self.spool = Spool(path)
        self.deferred = deferred
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        await self.spool.open()

    async def write(self, record: UsageRecord) -> None:
        if self.deferred:
            task = asyncio.ensure_future(self.spool.append(record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self.spool.append(record)

    async def close(self) -> None:
        await self.spool.close()


def serve(mode: str, port: int, state: Path, policy: Path, upstream: str) -> None:
    import uvicorn

    from sidecar.app import create_app
    from sidecar.settings import Settings

    settings = Settings(policy_file=policy, state_dir=state, upstream_url=upstream,
                        tracing_enabled=False, engine_watch_enabled=False)  # fmt: skip
    sink = _SpoolOnlySink(state / "usage-spool.db", deferred=mode == "deferred")
    app = create_app(settings, sink=sink)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)  # fmt: skip


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool) -> float:
    """Seconds of tail (streamed) or end-to-end (plain); raises on a bad answer."""
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    start = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        if not stream:
            data = await resp.read()
            assert resp.status == 200, data[:200]
            return time.perf_counter() - start
        fin = None
        last = b""
        async for piece in resp.content.iter_any():
            if fin is None and _FINISH in piece:
                fin = time.perf_counter()
            last = (last + piece)[-64:]
        end = time.perf_counter()
        assert resp.status == 200 and fin is not None and last.endswith(b"data: [DONE]\n\n")
        return end - fin


async def _round(url: str, c: int, seconds: float, stream: bool, max_tokens: int) -> list[float]:
    body = orjson.dumps({"model": MODEL, "max_tokens": max_tokens, "ignore_eos": True,
                         "stream": stream, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    out: list[float] = []
    stop = time.perf_counter() + seconds
    async with make_session() as session:

        async def worker() -> None:
            while time.perf_counter() < stop:
                out.append(await _one(session, f"{url}/v1/chat/completions", body, stream))

        await asyncio.gather(*(worker() for _ in range(c)))
    return out


async def run(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="gpuledger-bench-tail-"))
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    (tmp / "policy.yaml").write_text(_policy(sim_url))
    py = sys.executable
    procs = [_spawn([py, "-m", "serving.simulator", "--port", str(sim_port), "--speedup",
                     str(args.speedup)], {}, tmp / "simulator.log")]  # fmt: skip
    urls: dict[str, str] = {}
    for mode in MODES:
        port = free_port()
        urls[mode] = f"http://127.0.0.1:{port}"
        procs.append(_spawn([py, "-m", "bench.bench_durable_tail", "--serve", mode, "--port",
                             str(port), "--state", str(tmp / mode), "--policy",
                             str(tmp / "policy.yaml"), "--upstream", sim_url], {},
                            tmp / f"{mode}.log"))  # fmt: skip
    rows = []
    try:
        deadline = time.monotonic() + 90
        for url in urls.values():  # ready, and warm
            while True:
                try:
                    await _round(url, 4, 1.0, True, args.max_tokens)
                    break
                except (aiohttp.ClientError, AssertionError, OSError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not ready: {url} (logs in {tmp})") from None
                    await asyncio.sleep(0.5)
        for stream in (True, False):
            for c in args.concurrency:
                got: dict[str, list[float]] = {m: [] for m in MODES}
                for r in range(args.rounds):
                    for mode in MODES if r % 2 == 0 else MODES[::-1]:
                        got[mode] += await _round(urls[mode], c, args.seconds, stream,
                                                  args.max_tokens)  # fmt: skip
                p = {m: [percentile(got[m], q) * 1e3 for q in (50, 90, 99)] for m in MODES}
                d, s = p["deferred"], p["durable"]
                rows.append(
                    f"| {'stream: tail' if stream else 'plain: e2e'} | {c} | "
                    f"{len(got['deferred'])} / {len(got['durable'])} | "
                    f"{d[0]:.2f} / {d[1]:.2f} / {d[2]:.2f} | {s[0]:.2f} / {s[1]:.2f} / {s[2]:.2f} | "
                    f"{s[0] - d[0]:+.2f} | {s[2] - d[2]:+.2f} |"
                )
                print(rows[-1], flush=True)
    finally:
        for proc in procs:
            _stop(proc)
    return "\n".join([
        f"{args.rounds} alternating rounds x {args.seconds}s, {args.max_tokens}-token answers "
        f"(simulator speedup {args.speedup}), spool on {tmp}",
        "",
        "| measured | concurrency | requests deferred / durable | deferred p50/p90/p99 ms | "
        "durable p50/p90/p99 ms | added p50 ms | added p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_durable_tail", description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32])
    p.add_argument("--speedup", type=float, default=1.0, help="simulator time scale")
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--policy", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.state, args.policy, args.upstream)
        return 0
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        print(uvloop.run(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
