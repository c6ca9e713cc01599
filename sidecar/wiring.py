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

from sidecar.deps import Components
from sidecar.hooks import Guard
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import JsonlSink, NullSink, UsageSink

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


def build_sink(settings: Settings, registry: CollectorRegistry) -> UsageSink:
    # shipping: return the durable spool sink here when the control plane is configured.
    if settings.usage_jsonl is not None:
        return JsonlSink(settings.usage_jsonl)
    return NullSink()


def build_guards(
    settings: Settings, policy_store: PolicyStore, registry: CollectorRegistry
) -> list[Guard]:
    guards: list[Guard] = []
    # Order matters: cheap local refusals first, then those that hold shared resources.
    # rate limits:   guards.append(...)
    # budget leases: guards.append(...)
    # load shedding: guards.append(...)
    return guards


def build_background_tasks(settings: Settings, components: Components) -> list[BackgroundTask]:
    tasks: list[BackgroundTask] = []
    # policy sync:  tasks.append(...)
    # usage shipper: tasks.append(...)
    # engine watch: tasks.append(...)
    return tasks
