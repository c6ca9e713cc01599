"""CPU cost of the control plane's per-record ingest spans (control_plane/tracing.py).

    .venv/bin/python bench/bench_ingest_spans.py [--records 10000] [--repeat 3]

Times `record_ingest_spans` for one batch of records that all carry a trace, best of `--repeat`,
with three span pipelines: a provider with no processor (the spans' own cost), the SDK's
in-memory exporter (SimpleSpanProcessor, what tests use), and a BatchSpanProcessor whose exporter
drops everything (OTLP's pipeline without the network). Compare with the ingest path's own cost
per record (docs/benchmarks.md, "usage ingest throughput").
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from control_plane import tracing
from gpuledger.contracts import UsageRecord


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _records(n: int) -> list[UsageRecord]:
    now = datetime.now(UTC)
    return [
        UsageRecord(
            id=str(uuid.uuid4()),
            feature="chat",
            model="tiny",
            upstream="local-cpu",
            started_at=now,
            input_tokens=100,
            output_tokens=50,
            gpu_seconds=0.1,
            trace_id=uuid.uuid4().hex,
            span_id=uuid.uuid4().hex[:16],
        )
        for _ in range(n)
    ]


def _provider(kind: str) -> TracerProvider:
    provider = TracerProvider()
    if kind == "in-memory":
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    elif kind == "batch":
        provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1_000_000))
    return provider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    records = _records(args.records)
    ids = {r.id for r in records}
    for kind in ("no processor", "in-memory", "batch"):
        provider = _provider(kind)
        token = tracing._TRACER.set(provider.get_tracer("bench"))
        best = float("inf")
        try:
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                tracing.record_ingest_spans(records, ids, time.time_ns())
                best = min(best, time.perf_counter() - t0)
        finally:
            tracing._TRACER.reset(token)
            provider.shutdown()
        per = best / len(records) * 1e6
        print(f"{kind:>13}: {len(records):,} record spans in {best * 1000:7.0f} ms = {per:5.1f} us/record")


if __name__ == "__main__":
    main()
