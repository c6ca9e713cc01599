"""Ingest throughput of the control plane, records/s, on SQLite and PostgreSQL.

Runs `gpuledger control-plane` as a subprocess (so client and server do not share a GIL) on a
fresh database and posts pre-serialised batches of usage records (default 1,000 per batch)
through HTTP, as sidecar shippers do: first by one shipper, then by several concurrently, then
the same batches again (all duplicates: the idempotent replay path).

    .venv/bin/python bench/bench_ingest.py --db sqlite --db postgres --records 50000

PostgreSQL: GPULEDGER_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
is used to create and drop a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import uuid_utils

TOKEN = "bench-sidecar-token"


def make_batches(n: int, batch: int, spread_s: int = 86_400, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    features = [f"feature-{i}" for i in range(8)]
    models = ["tiny", "llama-3.1-8b", "qwen-7b"]
    keys = [f"key_{i:03d}" for i in range(40)]
    out: list[bytes] = []
    for start in range(0, n, batch):
        records = []
        for _ in range(min(batch, n - start)):
            inp, outp = rng.randint(20, 2000), rng.randint(5, 500)
            # Varied latencies, so the histograms touch as many buckets as real traffic does.
            ttft = rng.lognormvariate(math.log(150), 0.6)
            new_opening = rng.random() < 0.3
            records.append(
                {
                    "id": str(uuid_utils.uuid7()),
                    "key_id": rng.choice(keys),
                    "feature": rng.choice(features),
                    "model": rng.choice(models),
                    "upstream": "engine-a",
                    "sidecar_id": "bench",
                    # over the last `spread_s`: a day (the default) is the worst case, each
                    # batch touching ~1,000 minute rows; a shipper's batch spans seconds
                    "started_at": (now - timedelta(seconds=rng.randrange(spread_s))).isoformat(),
                    "ttft_ms": ttft,
                    "e2e_ms": ttft + outp * rng.uniform(8.0, 30.0),
                    "prompt_opening": f"{rng.getrandbits(64):016x}",
                    "prompt_opening_new": new_opening,
                    "wasted_prefill_gpu_seconds": 0.01 if new_opening else 0.0,
                    "input_tokens": inp,
                    "cached_input_tokens": inp // 3,
                    "output_tokens": outp,
                    "finish_reason": "stop",
                    "status": "ok",
                    "gpu_seconds": 0.0001 * inp + 0.01 * outp,
                    "cost_usd": 1e-5,
                    "cloud_cost_usd": 2e-5,
                }
            )
        out.append(orjson.dumps({"records": records}))
    return out


async def post_all(base: str, batches: list[bytes], shippers: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                resp = await client.post("/api/v1/usage/batch", content=body)
                resp.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(shippers)))
        return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(db_url: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GPULEDGER_DATABASE_URL=db_url, GPULEDGER_SIDECAR_TOKENS=TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", "control-plane", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("control plane did not start")


async def pg_admin(sql: str) -> None:
    import asyncpg

    url = os.environ.get(
        "GPULEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def bench_one(kind: str, records: int, batch: int, shippers: int, spread_s: int) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-ingest-")
    name = f"gpuledger_bench_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        db_url = f"sqlite+aiosqlite:///{tmp}/bench.db"
    else:
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
        base = os.environ.get(
            "GPULEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        db_url = (
            base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
        )
    port = free_port()
    proc = start_server(db_url, port)
    try:
        base_url = f"http://127.0.0.1:{port}"
        half = make_batches(records // 2, batch, spread_s, seed=1)
        rest = make_batches(records - records // 2, batch, spread_s, seed=2)
        n1 = records // 2
        t1 = asyncio.run(post_all(base_url, half, 1))
        t2 = asyncio.run(post_all(base_url, rest, shippers))
        t3 = asyncio.run(post_all(base_url, half, 1))
        print(f"{kind:9} 1 shipper   new records : {n1 / t1:9.0f} records/s ({n1} in {t1:.1f} s)")
        n2 = records - n1
        print(
            f"{kind:9} {shippers} shippers  new records : {n2 / t2:9.0f} records/s ({n2} in {t2:.1f} s)"
        )
        print(f"{kind:9} 1 shipper   replayed    : {n1 / t3:9.0f} records/s (all duplicates)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if kind == "postgres":
            asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shippers", type=int, default=4)
    parser.add_argument(
        "--spread-seconds",
        type=int,
        default=86_400,
        help="records start within this many seconds before now (86400: worst case; 10: like "
        "a shipper's batches)",
    )
    args = parser.parse_args()
    print(f"batch {args.batch} records over {args.spread_seconds} s; {os.cpu_count()} CPUs")
    for kind in args.db or ["sqlite", "postgres"]:
        bench_one(kind, args.records, args.batch, args.shippers, args.spread_seconds)


if __name__ == "__main__":
    main()
