"""What the budget guard keeps per feature, and how it learns what a token costs.

See sidecar/budget.py for the lease protocol these serve.
"""

from __future__ import annotations

import asyncio

from gpuledger.contracts import BudgetState, UsageRecord


class FeatureBudget:
    """One feature's lease, reservations and learned cost. Mutated only on the event loop."""

    __slots__ = (
        "burn",
        "cost",
        "exhausted",
        "failing",
        "feature",
        "granted",
        "hard_action",
        "last_call",
        "last_ok",
        "lease_expires",
        "max_estimate",
        "period_end",
        "renewed",
        "renewing",
        "reserved",
        "settled_total",
        "short",
        "spent",
        "unreported",
        "waiting",
        "warned",
    )

    def __init__(self, budget: BudgetState, prior_rate: float, now: float) -> None:
        self.feature = budget.feature
        self.hard_action = budget.hard_action
        self.period_end = budget.period_end.timestamp()
        self.exhausted = budget.used_gpu_seconds >= budget.limit_gpu_seconds
        self.granted = 0.0  # the current lease
        self.lease_expires = 0.0  # epoch seconds; 0: no lease yet
        self.spent = 0.0  # settled against the current lease
        self.reserved = 0.0  # estimates of admitted requests still running
        self.unreported = 0.0  # settled since the last lease call
        self.settled_total = 0.0
        self.cost = RateLearner(prior_rate)  # this feature's own GPU-seconds per token
        self.waiting = 0.0  # estimates of requests waiting for a renewal
        self.renewed = asyncio.Event()  # set (and replaced) after each lease call
        self.burn = 0.0  # GPU-seconds per second, smoothed
        self.max_estimate = 0.0
        self.last_ok = now  # last successful lease call (or when the budget appeared)
        self.last_call = 0.0
        self.failing = False
        self.renewing = False
        self.short = False  # the last grant was less than asked: the budget is nearly spent
        self.warned = False

    @property
    def available(self) -> float:
        return self.granted - self.spent - self.reserved


class RateLearner:
    """GPU-seconds per token, learned from completed requests: the prior until the first one,
    then rising fast and falling slowly (under-estimates are what overshoot a budget). The
    guard's engine-wide learner (every request, budgeted or not) is also the admission returned
    for features without a budget (one shared object: nothing to release).

    `peak` is the recent high: it jumps to any dearer request and decays towards `rate` by
    `PEAK_DECAY` per request. Requests of one feature differ several-fold in cost per token
    (one that runs alone at the tail of a batch pays all the engine's time); a burst admitted
    on the mean overshoots by the sum of those differences, on the peak it mostly does not."""

    __slots__ = ("peak", "rate", "samples")

    PEAK_DECAY = 0.05

    def __init__(self, prior_rate: float) -> None:
        self.rate = prior_rate
        self.peak = prior_rate
        self.samples = 0

    def learn(self, observed: float) -> None:
        if self.samples == 0:
            # The prior is a guess for an engine we know nothing about; one real request says
            # more. (Easing down from a prior 20x too high took ~60 requests, during which a
            # budget admitted a small fraction of what it covered.)
            self.rate = self.peak = observed
        else:
            self.rate += (0.5 if observed > self.rate else 0.05) * (observed - self.rate)
            if observed > self.peak:
                self.peak = observed
            else:
                self.peak += self.PEAK_DECAY * (self.rate - self.peak)
        self.samples += 1

    def observe(self, record: UsageRecord) -> float | None:
        tokens = record.input_tokens + record.output_tokens
        if tokens <= 0 or record.gpu_seconds <= 0:
            return None
        observed = record.gpu_seconds / tokens
        self.learn(observed)
        return observed

    async def settle(self, record: UsageRecord | None) -> None:
        if record is not None:
            self.observe(record)
