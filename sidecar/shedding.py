"""Load shedding (opt-in) and the per-feature SLO gauge the alert rules compare against.

`ShedGuard` is a `sidecar.hooks.Guard`. It sheds only features whose priority is *below* the
cutoff, and only while the engine the request would go to is under sustained pressure:

* KV-cache usage above `kv_threshold` (default 0.85) for `sustain_s`, or
* the engine's P95 TTFT over the watch window above the tightest TTFT SLO of the *protected*
  features (priority >= cutoff) for `sustain_s` — shedding low-priority work is how their SLO is
  defended. Without any protected SLO, `default_ttft_slo_s` is used (None: KV only).

A shed request gets 429 `overloaded` (soft tier) with a Retry-After. Decisions read the engine
watch's memory only (no I/O); a stale or missing engine reading never sheds (fail open: the alerts
still fire). Feature fallback routes are future work: a feature with one is shed the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gpuledger.contracts import FeaturePolicy
from sidecar.engine_watch import EngineSample, EngineWatch
from sidecar.errors import RateLimited
from sidecar.hooks import Admission, RequestContext
from sidecar.policy import PolicyStore
from sidecar.prefix_advisor import PrefixAdvisor
from sidecar.settings import Settings

FeaturesProvider = Callable[[], Sequence[FeaturePolicy]]


@dataclass(frozen=True, slots=True)
class ShedConfig:
    kv_threshold: float = 0.85
    sustain_s: float = 30.0
    priority_cutoff: int = 1  # features with priority < cutoff may be shed
    default_ttft_slo_s: float | None = None
    retry_after_s: float = 5.0


class ShedGuard:
    name = "shedding"

    def __init__(
        self, watch: EngineWatch, features: FeaturesProvider, config: ShedConfig | None = None
    ) -> None:
        self.watch = watch
        self.features = features
        self.config = config or ShedConfig()

    def protected_ttft_slo_s(self) -> float | None:
        slos = [
            f.slo_ttft_ms / 1000.0
            for f in self.features()
            if f.priority >= self.config.priority_cutoff and f.slo_ttft_ms
        ]
        return min(slos) if slos else self.config.default_ttft_slo_s

    def pressure(self, engine: str) -> str | None:
        """Why `engine` is overloaded right now ("kv_cache" / "ttft_slo"), or None."""
        cfg = self.config
        if self.watch.kv_above_for(engine, cfg.kv_threshold, cfg.sustain_s):
            return "kv_cache"
        slo = self.protected_ttft_slo_s()
        if slo is not None:

            def over(s: EngineSample) -> bool:
                return s.p95_ttft_s is not None and s.p95_ttft_s > slo

            if self.watch.sustained(engine, over, cfg.sustain_s):
                return "ttft_slo"
        return None

    async def admit(self, ctx: RequestContext) -> Admission | None:
        if ctx.feature.priority >= self.config.priority_cutoff:
            return None
        reason = self.pressure(ctx.engine)
        if reason is None:
            return None
        ctx.guardrail_actions.append(f"shed:{reason}")
        raise RateLimited(
            f"The engine is overloaded ({reason.replace('_', ' ')}); requests of feature "
            f"'{ctx.feature.name}' (priority {ctx.feature.priority}) are shed until it recovers.",
            retry_after_s=self.config.retry_after_s,
            code="overloaded",
        )


class FeatureSloCollector(Collector):
    """`gpuledger_feature_slo_seconds{feature,kind="ttft|e2e"}` from the current policy, so alert
    rules compare latency quantiles to each feature's own SLO instead of a constant."""

    def __init__(self, features: FeaturesProvider) -> None:
        self._features = features

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily(
            "gpuledger_feature_slo_seconds",
            "Latency SLO of a feature from the policy (kind=ttft|e2e)",
            labels=["feature", "kind"],
        )
        for f in self._features():
            if f.slo_ttft_ms:
                g.add_metric([f.name, "ttft"], f.slo_ttft_ms / 1000.0)
            if f.slo_e2e_ms:
                g.add_metric([f.name, "e2e"], f.slo_e2e_ms / 1000.0)
        yield g


def register_slo_gauge(registry: CollectorRegistry, features: FeaturesProvider) -> None:
    registry.register(FeatureSloCollector(features))


# --- the pack wired into the sidecar ----------------------------------------------------------


@dataclass(slots=True)
class SoftGuardrails:
    """One engine watch, prefix advisor and shed guard per app, shared by the guard chain and the
    background tasks (`sidecar/wiring.py` asks for it from both places)."""

    watch: EngineWatch
    advisor: PrefixAdvisor
    guard: ShedGuard


_PACKS: weakref.WeakKeyDictionary[CollectorRegistry, SoftGuardrails] = weakref.WeakKeyDictionary()


def soft_guardrails(
    settings: Settings, policy_store: PolicyStore, registry: CollectorRegistry
) -> SoftGuardrails:
    """The app's pack, built and registered on first use (keyed by the app's registry)."""
    pack = _PACKS.get(registry)
    if pack is not None:
        return pack

    def engines() -> dict[str, str]:
        listed = policy_store.current.snapshot.engines
        if listed:
            return {e.name: e.url for e in listed}
        return {settings.upstream_name: settings.upstream_url}

    def features() -> Sequence[FeaturePolicy]:
        return policy_store.current.snapshot.features

    watch = EngineWatch(
        engines,
        interval_s=settings.engine_watch_interval_s,
        window_s=settings.engine_watch_window_s,
    )
    advisor = PrefixAdvisor(
        head_bytes=settings.prefix_head_bytes,
        prefill_gpu_seconds_per_token=settings.prefill_gpu_seconds_per_token,
        block_tokens=settings.prefix_cache_block_tokens,
    )
    config = ShedConfig(
        kv_threshold=settings.shedding_kv_threshold,
        sustain_s=settings.shedding_sustain_s,
        priority_cutoff=settings.shedding_priority_cutoff,
        default_ttft_slo_s=settings.shedding_ttft_slo_s,
    )
    pack = SoftGuardrails(watch=watch, advisor=advisor, guard=ShedGuard(watch, features, config))
    watch.register(registry)
    advisor.register(registry)
    register_slo_gauge(registry, features)
    _PACKS[registry] = pack
    return pack
