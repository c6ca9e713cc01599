"""Usage spool write path: group commit vs one fsync per record, and a JSONL+fsync reference.

    .venv/bin/python bench/bench_spool.py [--n 2000] [--dir /tmp]

For each variant and concurrency (concurrent `write`s in flight, as concurrent requests finish),
prints records/s and the latency of one durable append (p50/p99, ms). Variants:
* `spool group`: sidecar.spool.Spool as shipped (one transaction + one fsync per batch);
* `spool 1/commit`: the same with batch_max=1 (one transaction + fsync per record);
* `jsonl fsync`: append a line to a file and fsync it, per record, in a thread (the naive
  segment-file design without group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from gpuledger.contracts import UsageRecord
from sidecar.spool import Spool


def record(i: int) -> UsageRecord:
    return UsageRecord(
        id=f"0192f0c1-0000-7000-8000-{i:012d}", key_id="key_1234", feature="support-bot",
        model="tiny", upstream="local", sidecar_id="bench", started_at=datetime.now(UTC),
        ttft_ms=80.0, e2e_ms=900.0, input_tokens=120, output_tokens=48, finish_reason="stop",
        gpu_seconds=0.0123, cost_usd=0.0000085, cloud_cost_usd=0.000047,
    )  # fmt: skip


async def drive(
    write: Callable[[UsageRecord], Awaitable[None]], n: int, conc: int
) -> tuple[float, list[float]]:
    lat: list[float] = []
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            t0 = time.perf_counter()
            await write(record(i))
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return n / (time.perf_counter() - t0), sorted(lat)


async def jsonl_fsync(path: Path, n: int, conc: int) -> tuple[float, list[float]]:
    pool = ThreadPoolExecutor(1)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def append(line: bytes) -> None:
        os.write(fd, line)
        os.fsync(fd)

    async def write(r: UsageRecord) -> None:
        line = r.model_dump_json().encode() + b"\n"
        await asyncio.get_running_loop().run_in_executor(pool, append, line)

    try:
        return await drive(write, n, conc)
    finally:
        os.close(fd)
        pool.shutdown()


async def main(n: int, base: Path) -> None:
    for conc in (1, 16, 64):
        for variant in ("spool group", "spool 1/commit", "jsonl fsync"):
            with tempfile.TemporaryDirectory(dir=base) as d:
                if variant.startswith("spool"):
                    spool = Spool(Path(d) / "s.db", batch_max=1 if "1/" in variant else 512)
                    await spool.open()
                    rate, lat = await drive(spool.append, n, conc)
                    await spool.close()
                else:
                    rate, lat = await jsonl_fsync(Path(d) / "s.jsonl", n, conc)
            p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
            print(
                f"conc {conc:3}  {variant:15} {rate:8.0f} records/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    asyncio.run(main(args.n, args.dir))
