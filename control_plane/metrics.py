"""Control plane Prometheus metrics, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.usage_ingested = Counter(
            "gpuledger_usage_ingested",
            "Usage records newly stored (duplicates excluded)",
            registry=registry,
        )
        self.usage_duplicates = Counter(
            "gpuledger_usage_duplicates",
            "Usage records acknowledged as already stored",
            registry=registry,
        )
        self.budget_used = Gauge(
            "gpuledger_budget_used_gpu_seconds",
            "GPU-seconds used in the budget's current period",
            ["feature"],
            registry=registry,
        )
        self.budget_limit = Gauge(
            "gpuledger_budget_limit_gpu_seconds",
            "GPU-second limit of the budget's period",
            ["feature"],
            registry=registry,
        )
        self.budget_soft_ratio = Gauge(
            "gpuledger_budget_soft_threshold_ratio",
            "Soft threshold as a fraction of the limit (0.8 = 80%)",
            ["feature"],
            registry=registry,
        )
        self.leases_granted = Counter(
            "gpuledger_budget_lease_granted_gpu_seconds",
            "GPU-seconds granted to sidecars in leases",
            ["feature"],
            registry=registry,
        )
