"""The per-feature budget state and the per-token cost learner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpuledger.contracts import BudgetState, UsageRecord
from sidecar.budget_state import FeatureBudget, RateLearner


def _record(gpu_seconds: float, tokens: int) -> UsageRecord:
    return UsageRecord(
        id="r", feature="f", model="m", upstream="e", started_at=datetime.now(UTC),
        input_tokens=tokens, output_tokens=0, gpu_seconds=gpu_seconds,
    )  # fmt: skip


def test_the_prior_holds_only_until_the_first_request() -> None:
    learner = RateLearner(prior_rate=0.02)
    assert (learner.rate, learner.samples) == (0.02, 0)
    assert learner.observe(_record(0.01, 10)) == pytest.approx(0.001)
    assert learner.rate == pytest.approx(0.001)  # 20x below the prior, at once


def test_rises_fast_and_falls_slowly() -> None:
    learner = RateLearner(prior_rate=1.0)
    learner.learn(0.1)
    learner.learn(0.3)
    assert learner.rate == pytest.approx(0.2)  # half the gap up
    learner.learn(0.0)
    assert learner.rate == pytest.approx(0.19)  # 5% of the gap down
    assert learner.samples == 3


def test_peak_jumps_to_a_dearer_request_and_decays_towards_the_rate() -> None:
    learner = RateLearner(prior_rate=1.0)
    assert learner.peak == 1.0  # the prior, until the first request
    learner.learn(0.1)
    assert learner.peak == pytest.approx(0.1)
    learner.learn(0.6)  # one request six times dearer
    assert learner.rate == pytest.approx(0.35) and learner.peak == pytest.approx(0.6)
    for _ in range(100):
        learner.learn(0.1)
        assert learner.rate <= learner.peak
    # Forgotten over ~100 requests: within 10% of the (slowly falling) rate, from 6x the usual.
    assert learner.peak < 1.1 * learner.rate < 0.12


def test_requests_without_tokens_or_cost_teach_nothing() -> None:
    learner = RateLearner(prior_rate=0.02)
    assert learner.observe(_record(0.5, 0)) is None
    assert learner.observe(_record(0.0, 10)) is None
    assert (learner.rate, learner.samples) == (0.02, 0)


def test_available_is_the_lease_less_spent_and_reserved() -> None:
    now = datetime.now(UTC)
    budget = BudgetState(
        feature="f",
        period="day",
        period_start=now - timedelta(hours=1),
        period_end=now + timedelta(hours=23),
        limit_gpu_seconds=100.0,
        used_gpu_seconds=100.0,
    )
    st = FeatureBudget(budget, prior_rate=0.02, now=0.0)
    assert st.exhausted and st.cost.rate == 0.02
    st.granted, st.spent, st.reserved = 10.0, 3.0, 2.5
    assert st.available == pytest.approx(4.5)
