"""Where the sidecar's pluggable parts are chosen. Add a component with a one-line edit here.

* `build_sink`: where usage records go (JSONL file now; the durable spool + shipper plugs in here).
* `build_guards`: the guard chain, asked in order to admit each request (rate limits, budget
  leases, load shedding). See `sidecar/hooks.py` for the protocol.
* `build_background_tasks`: long-running coroutines started in the app's lifespan and cancelled at
  shutdown (policy sync, usage shipping, engine watch).

Each builder gets the settings, the app's `CollectorRegistry` (register metrics there, never on
the global registry) and, where useful, the policy store or the assembled `Components`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.budget import BudgetGuard, build_budget_guard
from sidecar.deps import Components
from sidecar.hooks import Guard
from sidecar.policy import PolicyStore
from sidecar.policy_sync import build_policy_sync
from sidecar.ratelimit.guard import RateLimitGuard, build_rate_limit_guard
from sidecar.settings import Settings
from sidecar.shedding import soft_guardrails
from sidecar.shipper import build_spool_guard, build_spool_sink
from sidecar.sinks import JsonlSink, NullSink, UsageSink

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


def build_sink(settings: Settings, registry: CollectorRegistry) -> UsageSink:
    # control-plane mode: durable spool + shipper (sidecar/shipper.py)
    spool_sink = build_spool_sink(settings, registry)
    if spool_sink is not None:
        return spool_sink
    if settings.usage_jsonl is not None:
        return JsonlSink(settings.usage_jsonl)
    return NullSink()


def build_guards(
    settings: Settings,
    policy_store: PolicyStore,
    registry: CollectorRegistry,
    sink: UsageSink | None = None,
) -> list[Guard]:
    guards: list[Guard] = []
    # Order matters: cheap local refusals first, then those that hold shared resources.
    spool_guard = build_spool_guard(settings, sink, registry)  # usage spool full: 503
    if spool_guard is not None:
        guards.append(spool_guard)
    guards.append(  # rate limits (sidecar/ratelimit)
        build_rate_limit_guard(settings, lambda: policy_store.current.snapshot, registry)
    )
    budget_guard = build_budget_guard(settings, policy_store, registry)  # budget leases
    if budget_guard is not None:
        guards.append(budget_guard)
    # load shedding (opt-in; the engine watch behind it runs regardless):
    if settings.shedding_enabled:
        guards.append(soft_guardrails(settings, policy_store, registry).guard)
    return guards


def build_background_tasks(settings: Settings, components: Components) -> list[BackgroundTask]:
    tasks: list[BackgroundTask] = []
    sync = build_policy_sync(settings, components.policy_store, components.registry)
    if sync is not None:  # policy sync with the control plane
        tasks.append(sync.serve)
    # budget leases: renewed in the background, handed back at exit
    tasks.extend(g.serve for g in components.guards if isinstance(g, BudgetGuard))
    # rate limits: renews nothing itself (leases renew on demand); closes the Redis client at exit.
    tasks.extend(g.serve for g in components.guards if isinstance(g, RateLimitGuard))
    # usage shipper: started and stopped with the sink (SpoolSink.start/close)
    # engine watch (its pack also registers the prefix advisor and the feature SLO gauge):
    soft = soft_guardrails(settings, components.policy_store, components.registry)
    if settings.engine_watch_enabled:
        tasks.append(soft.watch.run)
    return tasks
