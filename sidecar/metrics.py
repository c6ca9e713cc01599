"""The sidecar's request metrics (prometheus-client), registered on the app's registry.

Label values for `feature` and `model` come from the policy (`Policy.feature_label` /
`model_label` map unknown values to `other`), so cardinality stays bounded; no key id or secret is
ever a label. Inter-token latency is observed once per request (its mean), not per chunk: one
histogram observation per token would cost more than the relay itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gpuledger.contracts import UsageRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gpuledger_requests",
            "Requests by outcome (ok, upstream_error, cancelled, rejected:<reason>)",
            ["feature", "model", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "gpuledger_tokens",
            "Tokens by kind (input, cached_input, output), as vLLM reported them",
            ["feature", "model", "kind"],
            registry=registry,
        )
        self.gpu_seconds = Counter(
            "gpuledger_gpu_seconds",
            "GPU-seconds attributed to requests",
            ["feature", "model"],
            registry=registry,
        )
        self.cost_usd = Counter(
            "gpuledger_cost_usd",
            "Cost of the attributed GPU-seconds at the engine's hourly rate",
            ["feature", "model", "engine"],
            registry=registry,
        )
        self.cloud_cost_usd = Counter(
            "gpuledger_cloud_equivalent_cost_usd",
            "What the same tokens would cost at the reference cloud API's list price",
            # With the cost above, per engine: their ratio is the break-even utilization.
            ["feature", "model", "engine"],
            registry=registry,
        )
        self.rejections = Counter(
            "gpuledger_guardrail_rejections",
            "Requests refused by a guardrail, by tier (hard, medium, soft) and reason",
            ["feature", "tier", "reason"],
            registry=registry,
        )
        self.ttft = Histogram(
            "gpuledger_ttft_seconds",
            "Time to first token seen by the sidecar",
            ["feature", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "gpuledger_inter_token_latency_seconds",
            "Mean time between streamed chunks, one observation per request",
            ["feature", "model"],
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "gpuledger_e2e_seconds",
            "End-to-end request time in the sidecar",
            ["feature", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gpuledger_in_flight_requests",
            "Requests being proxied now",
            ["feature"],
            registry=registry,
        )
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._requests: dict[tuple[str, str, str], Counter] = {}

    def observe(
        self, record: UsageRecord, feature: str, model: str, mean_itl_s: float | None
    ) -> None:
        """Account one finished request; `feature` / `model` are already bounded label values."""
        series = self._series.get((feature, model, record.upstream))
        if series is None:
            series = _Series(self, feature, model, record.upstream)
            self._series[(feature, model, record.upstream)] = series
        status = self._requests.get((feature, model, record.status))
        if status is None:
            status = self.requests.labels(feature, model, record.status)
            self._requests[(feature, model, record.status)] = status
        status.inc()
        if record.input_tokens:
            series.input.inc(record.input_tokens)
        if record.cached_input_tokens:
            series.cached.inc(record.cached_input_tokens)
        if record.output_tokens:
            series.output.inc(record.output_tokens)
        if record.gpu_seconds:
            series.gpu.inc(record.gpu_seconds)
        if record.cost_usd:
            series.cost.inc(record.cost_usd)
        if record.cloud_cost_usd:
            series.cloud.inc(record.cloud_cost_usd)
        if record.ttft_ms is not None:
            series.ttft.observe(record.ttft_ms / 1000.0)
        if mean_itl_s is not None:
            series.itl.observe(mean_itl_s)
        if not record.status.startswith("rejected:"):
            series.e2e.observe(record.e2e_ms / 1000.0)


class _Series:
    """The labelled children of one (feature, model, engine): `labels()` validates and locks on
    every call, so the request path looks them up once and keeps them (all labels are bounded:
    engines come from the policy)."""

    __slots__ = ("cached", "cloud", "cost", "e2e", "gpu", "input", "itl", "output", "ttft")

    def __init__(self, m: SidecarMetrics, feature: str, model: str, engine: str) -> None:
        self.input = m.tokens.labels(feature, model, "input")
        self.cached = m.tokens.labels(feature, model, "cached_input")
        self.output = m.tokens.labels(feature, model, "output")
        self.gpu = m.gpu_seconds.labels(feature, model)
        self.cost = m.cost_usd.labels(feature, model, engine)
        self.cloud = m.cloud_cost_usd.labels(feature, model, engine)
        self.ttft = m.ttft.labels(feature, model)
        self.itl = m.itl.labels(feature, model)
        self.e2e = m.e2e.labels(feature, model)
