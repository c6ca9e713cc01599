"""One usage record per request: tokens from vLLM, GPU-seconds from attribution, money, metrics.

`Metering.build` then `Metering.write` run exactly once per request that got past
authentication, whatever its outcome (ok, upstream_error, cancelled, rejected:<reason>). It writes
the record to the sink, feeds the Prometheus metrics and the request's span. For a response that
completes, the proxy (through `Ledger`) does it *before* relaying the final bytes, so a sidecar
killed right after a client got its answer has that answer's record durable in the spool; the
cost is the spool's group commit on the last byte (numbers in docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uuid_utils
from opentelemetry.trace import Span, Status, StatusCode

from gpuledger.contracts import EnginePolicy, UsageRecord
from sidecar.attribution import AttributionMetrics, EngineClock
from sidecar.metrics import SidecarMetrics
from sidecar.policy import Policy
from sidecar.prefix_advisor import Opening
from sidecar.pricing import CloudPriceTable, cost_usd, gpu_hourly_rate
from sidecar.sinks import UsageSink

log = logging.getLogger(__name__)


def new_request_id() -> str:
    return str(uuid_utils.uuid7())


@dataclass(slots=True)
class Outcome:
    """What the proxy learnt about one request; filled in as it goes."""

    status: str = "ok"
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    response_model: str | None = None
    ttft_s: float | None = None
    mean_itl_s: float | None = None
    estimated: bool = False  # tokens counted by the sidecar because vLLM reported none
    opening: Opening | None = None  # the prefix advisor's view of the prompt's first bytes

    def take_usage(self, usage: dict[str, Any]) -> None:
        """Tokens exactly as vLLM reported them (OpenAI `usage` shape)."""
        # Chat/completions name them prompt/completion; the Responses and Messages APIs input/output.
        self.input_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        self.output_tokens = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if isinstance(details, dict):
            self.cached_input_tokens = int(details.get("cached_tokens") or 0)


class Metering:
    def __init__(
        self,
        *,
        sidecar_id: str,
        metrics: SidecarMetrics,
        sink: UsageSink,
        attribution: AttributionMetrics,
        prices: CloudPriceTable | None,
    ) -> None:
        self.sidecar_id = sidecar_id
        self.metrics = metrics
        self.sink = sink
        self.attribution = attribution
        self.prices = prices
        self._clocks: dict[str, EngineClock] = {}
        self._queue_caps: dict[str, int | None] = {}  # the max_num_seqs each clock was made with

    def clock(self, engine: EnginePolicy) -> EngineClock:
        """The attribution clock of `engine` (one per engine name, made on first use, remade
        when the policy changes its GPU count or max_num_seqs)."""
        clock = self._clocks.get(engine.name)
        if (
            clock is None
            or clock.gpus != engine.gpus
            or self._queue_caps.get(engine.name) != engine.max_num_seqs
        ):
            if engine.prefill_cost_factor is not None:
                clock = EngineClock(
                    engine.name,
                    engine.gpus,
                    engine.prefill_cost_factor,
                    max_num_seqs=engine.max_num_seqs,
                )
            else:
                clock = EngineClock(engine.name, engine.gpus, max_num_seqs=engine.max_num_seqs)
            self._clocks[engine.name] = clock
            self._queue_caps[engine.name] = engine.max_num_seqs
            self.attribution.track(clock, gpu_hourly_rate(engine.gpu_type, engine.hourly_rate_usd))
        return clock

    def build(
        self,
        *,
        request_id: str,
        policy: Policy,
        key_id: str | None,
        feature: str,
        model: str,
        engine: EnginePolicy,
        started_at: datetime,
        t0: float,
        outcome: Outcome,
        actions: list[str],
        span: Span | None,
        admitted: bool,
    ) -> UsageRecord:
        """The record, with the request's attribution, metrics and span closed (synchronous, so
        a cancellation can't leave it half done; call it once per request)."""
        e2e_s = time.monotonic() - t0
        gpu_seconds = 0.0
        if admitted:
            gpu_seconds = self.clock(engine).finish(
                request_id,
                prompt_tokens=outcome.input_tokens,
                cached_tokens=outcome.cached_input_tokens,
                output_tokens=outcome.output_tokens,
            )
        rate = gpu_hourly_rate(engine.gpu_type, engine.hourly_rate_usd)
        cloud = None
        if self.prices is not None and (outcome.input_tokens or outcome.output_tokens):
            try:
                cloud = self.prices.cost_for(
                    model,
                    feature,
                    outcome.input_tokens,
                    outcome.output_tokens,
                    outcome.cached_input_tokens,
                )
            except KeyError:
                cloud = None
        record = UsageRecord(
            id=request_id,
            key_id=key_id,
            feature=feature,
            model=model,
            upstream=engine.name,
            sidecar_id=self.sidecar_id,
            started_at=started_at,
            ttft_ms=None if outcome.ttft_s is None else outcome.ttft_s * 1000.0,
            e2e_ms=e2e_s * 1000.0,
            input_tokens=outcome.input_tokens,
            cached_input_tokens=outcome.cached_input_tokens,
            output_tokens=outcome.output_tokens,
            finish_reason=outcome.finish_reasons[0] if outcome.finish_reasons else None,
            status=outcome.status,
            guardrail_actions=actions,
            gpu_seconds=gpu_seconds,
            cost_usd=cost_usd(gpu_seconds, rate),
            cloud_cost_usd=cloud,
            trace_id=_trace_id(span),
            span_id=_span_id(span),
            prompt_opening=None if outcome.opening is None else outcome.opening.hash,
            prompt_opening_new=None if outcome.opening is None else outcome.opening.new,
            wasted_prefill_gpu_seconds=(
                0.0 if outcome.opening is None else outcome.opening.wasted_prefill_gpu_seconds
            ),
        )
        self.metrics.observe(
            record, policy.feature_label(feature), policy.model_label(model), outcome.mean_itl_s
        )
        if span is not None:
            _annotate(span, record, outcome)
            span.end()
        return record

    async def write(self, record: UsageRecord) -> None:
        """Hand the record to the sink; returns once the sink has it (the spool: durable)."""
        try:
            await self.sink.write(record)
        except Exception:  # a failing sink must not break the proxy; the spool has its own alarms
            log.exception("usage sink failed to write record %s", record.id)


class Ledger:
    """Writes one admitted request's usage record exactly once.

    The relay calls `write` just before a completed response's final bytes; the request's
    `finally` calls it again, which then only returns the record (or writes it, when no response
    completed). `build` is synchronous and runs first, so a cancellation during the sink's await
    (a shutdown) can't cause a second record: the spool already has the payload queued.
    """

    __slots__ = ("_build", "_metering", "actions", "model", "op", "outcome", "prompt_est", "record")

    def __init__(
        self,
        metering: Metering,
        build: Callable[[], UsageRecord],
        outcome: Outcome,
        actions: list[str],
        *,
        op: str,
        model: str,
        prompt_est: int,
    ) -> None:
        self._metering = metering
        self._build = build
        self.outcome = outcome
        self.actions = actions
        self.op = op
        self.model = model
        self.prompt_est = prompt_est
        self.record: UsageRecord | None = None

    async def write(self) -> UsageRecord:
        if self.record is not None:
            return self.record
        o = self.outcome
        if self.op != "other":
            if not o.input_tokens and o.status in ("ok", "cancelled"):
                o.input_tokens = self.prompt_est  # vLLM reported no usage (a cancelled stream)
                o.estimated = True
            if o.response_model is None:
                o.response_model = self.model  # streams: vLLM answers with the served name
        if o.estimated:
            self.actions.append("estimated_tokens")
        self.record = record = self._build()
        await self._metering.write(record)
        return record


def _trace_id(span: Span | None) -> str | None:
    if span is None:
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _span_id(span: Span | None) -> str | None:
    # Lets the control plane open its ingest span as a child of this request's span.
    ctx = span.get_span_context() if span is not None else None
    return format(ctx.span_id, "016x") if ctx is not None and ctx.is_valid else None


def _annotate(span: Span, record: UsageRecord, outcome: Outcome) -> None:
    span.set_attributes(
        {
            "feature": record.feature,
            "inference.backend": record.backend,
            "model": record.model,
            "gpu_seconds": record.gpu_seconds,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "gpuledger.status": record.status,
            "gpuledger.request_id": record.id,
            "gen_ai.system": "vllm",
            "gen_ai.usage.input_tokens": record.input_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
        }
    )
    if outcome.response_model:
        span.set_attribute("gen_ai.response.model", outcome.response_model)
    if outcome.finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", outcome.finish_reasons)
    if record.status != "ok":
        span.set_status(Status(StatusCode.ERROR, record.status))
