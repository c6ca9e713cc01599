"""The prefix-cache report: features whose prompts rarely share an opening, from the rollups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.prefix_cache.schemas import PrefixCacheReport
from gpuledger.contracts import UsageRecord
from tests.control_plane_support import (
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
    seed_policy,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


def _opened(record: UsageRecord, opening: str, new: bool, wasted: float = 0.0) -> UsageRecord:
    return record.model_copy(
        update={
            "prompt_opening": opening,
            "prompt_opening_new": new,
            "wasted_prefill_gpu_seconds": wasted,
        }
    )


def _report(base_url: str, **params: str) -> PrefixCacheReport:
    with admin_client(base_url) as client:
        resp = client.get("/api/v1/reports/prefix-cache", params=params)
        resp.raise_for_status()
        return PrefixCacheReport.model_validate(resp.json())


def test_unstable_openings_are_named_and_priced(control_plane: str) -> None:
    seed_policy(control_plane)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    # One fixed system prompt: new once, then seen.
    stable = [
        _opened(make_record(feature="support-bot", started_at=hour_ago), "a" * 16, new=i == 0)
        for i in range(30)
    ]
    # A timestamp first: every opening new; the advisor charged waste once it judged it unstable.
    stamped = [
        _opened(
            make_record(feature="code-review", input_tokens=300 + i, started_at=hour_ago),
            f"{i:016x}",
            new=True,
            wasted=0.0288 if i >= 20 else 0.0,
        )
        for i in range(30)
    ]
    few = [
        _opened(make_record(feature="summarizer", started_at=hour_ago), f"{i + 99:016x}", True)
        for i in range(5)
    ]
    without_advisor = [make_record(feature="support-bot", started_at=hour_ago) for _ in range(7)]
    old = [
        _opened(
            make_record(feature="code-review", started_at=hour_ago - timedelta(days=3)),
            "b" * 16,
            new=True,
            wasted=1.0,
        )
    ]
    post_usage(control_plane, [*stable, *stamped, *few, *without_advisor, *old])
    post_usage(control_plane, stamped)  # a replayed batch is not counted twice

    report = _report(control_plane)
    rows = {r.feature: r for r in report.rows}
    assert report.rows[0].feature == "code-review"  # most wasteful first
    review = rows["code-review"]
    assert (review.requests, review.new_openings, review.unstable_ratio) == (30, 30, 1.0)
    assert review.unstable and "move static content" in review.advice
    assert review.wasted_prefill_gpu_seconds == pytest.approx(10 * 0.0288)
    usd_per_gpu_s = sum(r.cost_usd for r in stamped) / sum(r.gpu_seconds for r in stamped)
    assert review.wasted_prefill_usd == pytest.approx(
        review.wasted_prefill_gpu_seconds * usd_per_gpu_s
    )

    support = rows["support-bot"]  # records from sidecars without the advisor do not count
    assert (support.requests, support.new_openings) == (30, 1)
    assert not support.unstable and support.wasted_prefill_gpu_seconds == 0
    assert support.advice == ""
    both = [*stable, *without_advisor]  # token sums come from the whole feature
    hit = sum(r.cached_input_tokens for r in both) / sum(r.input_tokens for r in both)
    assert support.observed_cache_hit_ratio == pytest.approx(hit)

    summarizer = rows["summarizer"]  # all new, but too few requests to judge
    assert summarizer.unstable_ratio == 1.0 and not summarizer.unstable

    only = _report(control_plane, feature="support-bot")
    assert [r.feature for r in only.rows] == ["support-bot"]
    week = _report(control_plane, start=(hour_ago - timedelta(days=4)).isoformat())
    week_review = {r.feature: r for r in week.rows}["code-review"]
    assert week_review.requests == 31
    assert week_review.wasted_prefill_gpu_seconds == pytest.approx(10 * 0.0288 + 1.0)


def test_bad_window_is_refused(control_plane: str) -> None:
    now = datetime.now(UTC)
    with admin_client(control_plane) as client:
        resp = client.get(
            "/api/v1/reports/prefix-cache",
            params={"start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()},
        )
    assert resp.status_code == 422
    assert resp.json()["code"] == "invalid_time_range"
