"""Budget admission check in the sidecar: p50/p99 of `BudgetGuard.admit` (+ settle), in µs.

    .venv/bin/python bench/bench_budget.py [--n 200000]

Measures the request-path cost only: the guard holds a large lease (no control plane is
contacted; renewals are background work and never on this path). Each sample is one
`await guard.admit(ctx)` (coroutine creation included, as the proxy pays it), timed with
perf_counter_ns; `settle` is timed separately. Also times the no-budget path (a feature the
guard only learns from).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

from gpuledger.contracts import BudgetState, FeaturePolicy, KeyPolicy, PolicySnapshot, UsageRecord
from sidecar.budget import BudgetGuard
from sidecar.hooks import RequestContext
from sidecar.policy import PolicyStore


def pct(samples: list[int], p: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000


async def run(n: int) -> None:
    end = datetime.now(UTC) + timedelta(days=1)
    store = PolicyStore()
    store.replace(
        PolicySnapshot(
            version="1",
            features=[FeaturePolicy(name="chat"), FeaturePolicy(name="free")],
            budgets=[
                BudgetState(
                    feature="chat",
                    period="day",
                    period_start=end - timedelta(days=1),
                    period_end=end,
                    limit_gpu_seconds=1e9,
                    used_gpu_seconds=0,
                )
            ],
        ),
        persist=False,
    )
    guard = BudgetGuard(store, sidecar_id="bench", control_plane_url="http://unused", token="t")
    guard._refresh(time.time())
    st = guard.features["chat"]
    st.granted, st.lease_expires = 1e12, time.time() + 3600  # a lease that always covers
    key = KeyPolicy(id="k", name="k", key_hash="0" * 64, features=["chat"], default_feature="chat")
    record = UsageRecord(
        id="r", feature="chat", model="tiny", upstream="x", started_at=datetime.now(UTC),
        input_tokens=100, output_tokens=50, gpu_seconds=0.5,
    )  # fmt: skip

    def ctx(feature: str) -> RequestContext:
        return RequestContext(
            request_id="r", key=key, feature=FeaturePolicy(name=feature), model="tiny",
            engine="e", stream=False, prompt_tokens_estimate=100, max_output_tokens=50,
            started_at=datetime.now(UTC),
        )  # fmt: skip

    for feature in ("chat", "free"):
        c = ctx(feature)
        admit_ns: list[int] = []
        settle_ns: list[int] = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            adm = await guard.admit(c)
            t1 = time.perf_counter_ns()
            await adm.settle(record)
            t2 = time.perf_counter_ns()
            admit_ns.append(t1 - t0)
            settle_ns.append(t2 - t1)
        print(
            f"{'budgeted' if feature == 'chat' else 'no budget':9}  admit p50 {pct(admit_ns, 0.5):.2f} µs"
            f"  p99 {pct(admit_ns, 0.99):.2f} µs  max {max(admit_ns) / 1000:.1f} µs"
            f"  | settle p50 {pct(settle_ns, 0.5):.2f} µs  p99 {pct(settle_ns, 0.99):.2f} µs"
            f"  | mean admit {statistics.fmean(admit_ns) / 1000:.2f} µs  (n={n})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
