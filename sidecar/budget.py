"""GPU-second budgets across sidecars: a lease-holding admission guard.

For each feature with a budget in the policy, the sidecar holds a *lease*: GPU-seconds the control
plane set aside for it (``POST /api/v1/sidecar/leases``). `admit` reserves an estimate of the
request's cost and admits only when the lease still covers it; `settle` swaps the reservation for
the real ``gpu_seconds``. There is no network call on the request path: a background task renews
leases (low balance, near expiry, or after a refusal) and reports what was settled since the last
call. So the total charged across sidecars stays within the limit, up to what estimates
under-shoot on requests in flight.

Lease protocol, as the sidecar uses it: a grant *replaces* the sidecar's previous lease for the
feature. ``granted_gpu_seconds`` is what it may still charge after everything it reported in
``settled_gpu_seconds``; charges settled while the call was in flight and reservations in flight
are charged against the new grant, and the request asks for them on top of its headroom.

Estimate = (prompt tokens + max output tokens) x GPU-seconds per token x `safety`. The per-token
cost is learned from completed requests, engine-wide and per feature (sidecar/budget_state.py):
a prior until the first request, then the recent *peak* (it jumps to any dearer request and
decays slowly towards an EWMA that rises fast and falls slowly). A burst is admitted all at once
on estimates, so what it overshoots is the sum of its requests' excess over their estimate: on
the mean that was up to 40% of a budget on a loaded CPU engine; on the peak, only what the burst
costs above the dearest recent request. A feature with fewer than 5 requests of its own never
goes below the engine-wide peak. Near the end of a budget this admits fewer requests at once;
settlement refunds the difference, and later requests use the rest.

Control plane unreachable (the last lease call failed) and the lease can't cover a request:
`fail_mode="open"` admits (metered `gpuledger_budget_fail_open_total{feature}`, logged) until
`staleness_s` after the last successful lease call; `"closed"` refuses. A budget the control plane
said is exhausted stays refused until its period ends, in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gpuledger.contracts import LeaseGrant, LeaseRequest, UsageRecord
from sidecar.background import cancel_and_wait, serve_until_cancelled
from sidecar.budget_state import FeatureBudget, RateLearner
from sidecar.errors import RateLimited
from sidecar.hooks import Admission, RequestContext
from sidecar.policy import Policy, PolicyStore
from sidecar.settings import Settings
from sidecar.tracing import with_current_trace

log = logging.getLogger(__name__)


class BudgetAdmission:
    __slots__ = ("estimate", "guard", "state")

    def __init__(self, guard: BudgetGuard, state: FeatureBudget, estimate: float) -> None:
        self.guard = guard
        self.state = state
        self.estimate = estimate

    async def settle(self, record: UsageRecord | None) -> None:
        self.guard.settle(self.state, self.estimate, record)


class BudgetGuard:
    name = "budget"

    def __init__(
        self,
        store: PolicyStore,
        *,
        sidecar_id: str,
        control_plane_url: str,
        token: str,
        fail_mode: Literal["open", "closed"] = "open",
        staleness_s: float = 300.0,
        prior_gpu_seconds_per_token: float = 0.02,
        safety: float = 1.25,
        lease_horizon_s: float = 30.0,
        min_request_gpu_s: float = 1.0,
        tick_s: float = 0.25,
        min_call_interval_s: float = 0.1,
        lease_wait_s: float = 1.0,
        report_interval_s: float = 5.0,
        request_timeout_s: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.sidecar_id = sidecar_id
        self.url = control_plane_url.rstrip("/") + "/api/v1/sidecar/leases"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.fail_mode = fail_mode
        self.staleness_s = staleness_s
        self.prior_rate = prior_gpu_seconds_per_token
        self.safety = safety
        self.lease_horizon_s = lease_horizon_s
        self.min_request_gpu_s = min_request_gpu_s
        self.tick_s = tick_s
        self.min_call_interval_s = min_call_interval_s
        self.lease_wait_s = lease_wait_s
        self._learner = RateLearner(prior_gpu_seconds_per_token)
        self.report_interval_s = report_interval_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.features: dict[str, FeatureBudget] = {}
        self._seen: Policy | None = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self._m_fail_open = Counter(
            "gpuledger_budget_fail_open",
            "Requests admitted without lease cover because the control plane was unreachable",
            ["feature"],
            registry=registry,
        )
        self._m_lease_failures = Counter(
            "gpuledger_budget_lease_failures",
            "Failed lease calls to the control plane",
            ["feature"],
            registry=registry,
        )
        self._m_available = Gauge(
            "gpuledger_budget_lease_available_gpu_seconds",
            "GPU-seconds left in this sidecar's lease after in-flight reservations",
            ["feature"],
            registry=registry,
        )

    # --- hot path -------------------------------------------------------------------------------

    async def admit(self, ctx: RequestContext) -> Admission:
        if self.store.current is not self._seen:
            self._refresh(time.time())
        st = self.features.get(ctx.feature.name)
        if st is None:
            return self._learner  # no budget: only learn the GPU cost per token
        tokens = ctx.prompt_tokens_estimate + ctx.max_output_tokens
        own = st.cost
        if own.samples >= 5:
            rate = own.peak
        else:  # little history of its own: never below what all traffic costs (or the prior)
            rate = max(own.peak, self._learner.peak) if own.samples else self._learner.peak
        estimate = tokens * rate * self.safety
        if estimate > st.max_estimate:
            st.max_estimate = estimate
        now = time.time()
        covered = now < st.lease_expires and now < st.period_end and st.available >= estimate
        if covered and not st.exhausted and not st.renewing:
            st.reserved += estimate
            return BudgetAdmission(self, st, estimate)  # the hot path ends here
        return await self._slow_admit(ctx, st, estimate, now)

    async def _slow_admit(
        self, ctx: RequestContext, st: FeatureBudget, estimate: float, now: float
    ) -> BudgetAdmission:
        """No cover in the lease, or a renewal in flight: wait briefly for the renewal, fail
        open, or refuse.

        While a lease call is in flight nothing is admitted against the old lease (unless the
        call outlasts `lease_wait_s`): the grant replaces that lease and was sized from the
        reservations at send time, so admissions in between could be granted twice.
        """
        deadline = now + self.lease_wait_s
        while True:
            if st.exhausted and now < st.period_end:
                self._kick.set()
                return self._over(ctx, st, estimate, now, "exhausted")
            if now < st.lease_expires and now < st.period_end and st.available >= estimate:
                if not st.renewing or now >= deadline:
                    st.reserved += estimate
                    return BudgetAdmission(self, st, estimate)
                await self._wait_renewal(st, estimate, deadline - now)
                now = time.time()
                continue
            self._kick.set()
            never_answered = st.lease_expires == 0.0 and now - st.last_ok > 2.0
            if st.failing or never_answered:
                # No cover, and the control plane can't be asked (or never answered).
                if self.fail_mode == "open" and now - st.last_ok <= self.staleness_s:
                    self._m_fail_open.labels(st.feature).inc()
                    if not st.warned:
                        st.warned = True
                        log.warning(
                            "budget %s: control plane unreachable, admitting without lease "
                            "cover (fail-open for up to %.0fs)",
                            st.feature,
                            self.staleness_s,
                        )
                    st.reserved += estimate
                    return BudgetAdmission(self, st, estimate)
                return self._over(ctx, st, estimate, now, "unreachable")
            if now >= deadline:
                return self._over(ctx, st, estimate, now, "lease")
            # A burst outran the lease: the background renewal asks for this demand too (no
            # network call here; this request only waits for the renewal, briefly).
            await self._wait_renewal(st, estimate, deadline - now)
            now = time.time()

    @staticmethod
    async def _wait_renewal(st: FeatureBudget, estimate: float, limit_s: float) -> None:
        st.waiting += estimate
        renewed = st.renewed
        try:
            async with asyncio.timeout(limit_s):
                await renewed.wait()
        except TimeoutError:
            pass
        finally:
            st.waiting -= estimate

    def _over(
        self, ctx: RequestContext, st: FeatureBudget, estimate: float, now: float, why: str
    ) -> BudgetAdmission:
        """The lease doesn't cover the request: apply the feature's hard action."""
        if st.hard_action == "alert_only":
            ctx.response_headers["x-gpuledger-budget"] = "exceeded"
            st.reserved += estimate
            return BudgetAdmission(self, st, estimate)
        if why == "exhausted":
            message = f"the GPU budget of feature '{st.feature}' is spent for this period"
            retry = st.period_end - now
        elif why == "unreachable":
            message = f"the budget of feature '{st.feature}' can't be checked right now"
            retry = 5.0
        else:
            message = f"the GPU budget of feature '{st.feature}' has no room for this request now"
            retry = 1.0
        if st.hard_action == "escalate":
            message += " (escalation to the cloud route is not available yet)"
        raise RateLimited(message, retry_after_s=retry, code="budget_exceeded")

    def settle(self, st: FeatureBudget, estimate: float, record: UsageRecord | None) -> None:
        st.reserved = max(0.0, st.reserved - estimate)
        if record is None:
            return
        charge = record.gpu_seconds
        st.spent += charge
        st.unreported += charge
        st.settled_total += charge
        observed = self._learner.observe(record)
        if observed is not None:
            st.cost.learn(observed)
        if st.available < st.max_estimate:
            self._kick.set()

    # --- policy -----------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        policy = self.store.current
        self._seen = policy
        fresh: dict[str, FeatureBudget] = {}
        for budget in policy.snapshot.budgets:
            st = self.features.get(budget.feature)
            if st is None:
                st = FeatureBudget(budget, self.prior_rate, now)
            else:
                st.hard_action = budget.hard_action
                end = budget.period_end.timestamp()
                if end != st.period_end:  # a new period: the policy's view is the fresh one
                    st.period_end = end
                    st.exhausted = budget.used_gpu_seconds >= budget.limit_gpu_seconds
            fresh[budget.feature] = st
        self.features = fresh
        self._kick.set()

    # --- background renewal -----------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._refresh(time.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                await self.renew_due()
        self._task = asyncio.create_task(self._run(), name="gpuledger-budget-leases")

    async def serve(self) -> None:
        """Background task form (sidecar/wiring.py): start, renew until cancelled, release."""
        await serve_until_cancelled(self.start, self.close)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            # Hand leases back and report the last charges, so others can use what is left.
            held = [st for st in self.features.values() if st.lease_expires or st.unreported]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*(self._call(st, release=True) for st in held))
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the event fires, and close() would then wait for the next tick.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.renew_due()
            except Exception:  # never let a bug stop lease renewal
                log.exception("budget lease renewal failed")
            await asyncio.sleep(self.min_call_interval_s)

    def _due(self, st: FeatureBudget, now: float) -> bool:
        if st.renewing or now - st.last_call < self.min_call_interval_s:
            return False
        if st.exhausted and now < st.period_end:
            # Only the period's end or a raised limit changes this; ask now and then.
            return now - st.last_call >= self.report_interval_s or st.unreported > 0
        lease_left = min(st.lease_expires, st.period_end) - now
        low_water = max(st.max_estimate, 0.25 * st.granted)
        # A short grant means the control plane has no more to give: asking again at once
        # would only load it, so wait a second (settlements elsewhere may free some).
        low = st.available < low_water and (not st.short or now - st.last_call >= 1.0)
        return (
            lease_left < max(2.0, self.lease_horizon_s / 3)
            or low
            or (st.unreported > 0 and now - st.last_call >= self.report_interval_s)
        )

    async def renew_due(self) -> None:
        if self.store.current is not self._seen:
            self._refresh(time.time())
        now = time.time()
        due = [st for st in self.features.values() if self._due(st, now)]
        if due:
            await asyncio.gather(*(self._call(st) for st in due))
        for st in self.features.values():
            self._m_available.labels(st.feature).set(st.available)

    async def _call(self, st: FeatureBudget, *, release: bool = False) -> None:
        if self._session is None:
            return
        st.renewing = True
        now = time.time()
        st.last_call = now
        report = st.unreported
        st.unreported = 0.0
        spent_mark = st.settled_total
        if release:
            wanted = 0.0
        else:
            # Sized to recent burn, at least one request: an idle sidecar holding a big lease
            # would starve the other sidecars of the same budget.
            headroom = max(self.min_request_gpu_s, st.burn * self.lease_horizon_s, st.max_estimate)
            wanted = st.reserved + st.waiting + headroom
        try:
            body = LeaseRequest(
                sidecar_id=self.sidecar_id,
                feature=st.feature,
                requested_gpu_seconds=max(0.0, wanted),
                settled_gpu_seconds=max(0.0, report),
            )
            async with self._session.post(
                self.url, data=body.model_dump_json(), headers=with_current_trace(self._headers)
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                grant = LeaseGrant.model_validate_json(await resp.read())
        except Exception as exc:
            st.unreported += report  # not acknowledged: report it next time
            self._m_lease_failures.labels(st.feature).inc()
            if not st.failing:
                log.warning("budget %s: lease call failed: %s", st.feature, exc)
            st.failing = True
            self._renewed(st)
            return
        except BaseException:  # cancelled (shutdown, a start-up timeout): never stay "renewing"
            st.unreported += report
            self._renewed(st)
            raise
        done = time.time()
        if st.last_ok < done and report:
            elapsed = max(done - st.last_ok, 1e-3)
            st.burn += 0.3 * (report / elapsed - st.burn)
        if st.failing:
            log.info("budget %s: control plane reachable again", st.feature)
        st.failing = False
        st.warned = False
        st.last_ok = done
        st.granted = grant.granted_gpu_seconds
        st.short = grant.granted_gpu_seconds < wanted
        st.spent = st.settled_total - spent_mark  # settled while the call was in flight
        st.lease_expires = grant.expires_at.timestamp()
        st.period_end = grant.period_end.timestamp()
        st.exhausted = grant.exhausted
        st.hard_action = grant.hard_action
        self._renewed(st)

    @staticmethod
    def _renewed(st: FeatureBudget) -> None:
        """End of a lease call: waiters re-check against the new state, whatever the outcome."""
        st.renewing = False
        woken, st.renewed = st.renewed, asyncio.Event()
        woken.set()


def build_budget_guard(
    settings: Settings, store: PolicyStore, registry: CollectorRegistry
) -> BudgetGuard | None:
    """Budget leases need the control plane; standalone sidecars enforce no budget."""
    if not (settings.control_plane_url and settings.control_plane_token):
        return None
    return BudgetGuard(
        store,
        sidecar_id=settings.sidecar_id,
        control_plane_url=settings.control_plane_url,
        token=settings.control_plane_token,
        fail_mode=settings.budget_fail_mode,
        staleness_s=settings.budget_staleness_s,
        prior_gpu_seconds_per_token=settings.budget_prior_gpu_seconds_per_token,
        registry=registry,
    )
