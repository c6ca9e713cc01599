"""The dashboard's typed client against a real control plane (SQLite, migrations applied)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.client import (
    ControlPlaneAuthError,
    ControlPlaneClient,
    ControlPlaneRequestError,
    ControlPlaneUnavailable,
)
from tests.conftest import free_port
from tests.control_plane_support import (
    ADMIN_TOKEN,
    SIDECAR_TOKEN,
    Seed,
    cp_settings,
    make_record,
    post_usage,
    run_control_plane,
    seed_policy,
    sqlite_url,
)

RECORDS = 1205  # more than one page of the control plane's 1,000-row maximum


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seed]]:
    with run_control_plane(cp_settings(sqlite_url(tmp_path_factory.mktemp("cp")))) as url:
        seed = seed_policy(url)
        now = datetime.now(UTC)
        key = next(iter(seed.keys))
        records = [
            make_record(
                feature="support-bot",
                key_id=key,
                started_at=now - timedelta(seconds=10 + i),
                gpu_seconds=1.0,
            )
            for i in range(RECORDS)
        ]
        post_usage(url, records)
        yield url, seed


@pytest.fixture
def client(cp: tuple[str, Seed]) -> Iterator[ControlPlaneClient]:
    with ControlPlaneClient(cp[0], ADMIN_TOKEN) as c:
        yield c


def test_reads_policy_objects(client: ControlPlaneClient, cp: tuple[str, Seed]) -> None:
    client.ready()
    assert {f.name for f in client.features()} == set(cp[1].features)
    assert {k.id for k in client.api_keys()} == set(cp[1].keys)
    assert {e.name for e in client.engines()} == set(cp[1].engines)
    budgets = {b.feature: b for b in client.budgets()}
    assert budgets["support-bot"].limit_gpu_hours == 10.0
    assert budgets["support-bot"].used_gpu_seconds == pytest.approx(RECORDS * 1.0)
    assert client.alerts() == []


def test_reports(client: ControlPlaneClient) -> None:
    end = datetime.now(UTC) + timedelta(minutes=1)
    start = end - timedelta(days=1)
    cost = client.cost("feature", start, end)
    assert cost.totals.requests == RECORDS
    assert [r.group for r in cost.rows] == ["support-bot"]
    by_day = client.cost("day", start, end, feature="support-bot")
    assert sum(r.requests for r in by_day.rows) == RECORDS
    util = client.utilization(start, end)
    assert {e.engine for e in util.engines} >= {"local-cpu", "h100-a"}
    assert sum(e.attributed_gpu_seconds for e in util.engines) == pytest.approx(RECORDS * 1.0)


def test_latency_report(client: ControlPlaneClient) -> None:
    end = datetime.now(UTC) + timedelta(minutes=1)
    start = end - timedelta(days=1)
    report = client.latency(start, end)
    assert [r.group for r in report.rows] == ["support-bot"]
    row = report.rows[0]
    # make_record: TTFT 80 ms and e2e 900 ms, in the (75, 100] and (750, 1000] buckets
    assert row.requests == row.ttft.count == RECORDS
    assert row.ttft.p50_ms is not None and 75 <= row.ttft.p50_ms <= 100
    assert row.e2e.p95_ms is not None and 750 <= row.e2e.p95_ms <= 1000
    assert row.slo_ttft_ms == 800 and row.ttft_over_slo is not None
    assert row.ttft_over_slo.estimate == 0
    by_model = client.latency(start, end, group_by="model", feature="support-bot", model="tiny")
    assert [(r.group, r.requests) for r in by_model.rows] == [("tiny", RECORDS)]
    assert client.latency(start, end, feature="summarizer").rows == []
    with pytest.raises(ControlPlaneRequestError, match="422"):
        client.latency(end, start)


def test_records_page_through_the_limit_and_stop_at_the_cap(client: ControlPlaneClient) -> None:
    everything = client.records(None, None, cap=5000)
    assert len(everything) == RECORDS
    assert len({r.id for r in everything}) == RECORDS
    assert everything[0].started_at >= everything[-1].started_at  # newest first
    assert len(client.records(None, None, cap=1100)) == 1100
    assert client.records(None, None, feature="summarizer") == []


def test_unreachable_control_plane() -> None:
    with ControlPlaneClient(f"http://127.0.0.1:{free_port()}", ADMIN_TOKEN, timeout=2) as c:
        with pytest.raises(ControlPlaneUnavailable):
            c.ready()
        with pytest.raises(ControlPlaneUnavailable):
            c.budgets()


@pytest.mark.parametrize("token", ["wrong-token", SIDECAR_TOKEN, ""])
def test_rejected_tokens_are_auth_errors_that_never_echo_the_token(
    cp: tuple[str, Seed], token: str
) -> None:
    with ControlPlaneClient(cp[0], token) as c, pytest.raises(ControlPlaneAuthError) as err:
        c.ready()
    if token:
        assert token not in str(err.value)


def test_bad_request_is_a_request_error(client: ControlPlaneClient) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ControlPlaneRequestError, match="422"):
        client.cost("feature", start=now, end=now - timedelta(hours=1))
