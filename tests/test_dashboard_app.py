"""Every dashboard page, run with Streamlit's AppTest against a real control plane (SQLite,
migrations applied) seeded with a week of generated usage; plus the empty states of a fresh
install, the unreachable / wrong-token banners and the password gate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from control_plane.reports.schemas import LatencyReport
from dashboard.analysis import fmt_hours, fmt_ms, fmt_usd
from gpuledger.contracts import UsageRecord
from tests.conftest import free_port
from tests.control_plane_support import (
    ADMIN_TOKEN,
    admin_client,
    cp_settings,
    make_record,
    post_usage,
    run_control_plane,
    seed_policy,
    seed_usage,
    sqlite_url,
)

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
# summarizer's tiny budget is exhausted by the seeded week; the others are far from theirs.
BUDGETS = {"support-bot": 10.0, "code-review": 2.0, "summarizer": 0.05}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[UsageRecord]]]:
    with run_control_plane(cp_settings(sqlite_url(tmp_path_factory.mktemp("cp")))) as url:
        seed = seed_policy(url, budgets=BUDGETS)
        records = seed_usage(url, seed, days=7, per_day=150)
        yield url, records


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A freshly installed control plane: no features, engines, budgets or usage."""
    with run_control_plane(cp_settings(sqlite_url(tmp_path_factory.mktemp("fresh")))) as url:
        yield url


def _env(monkeypatch: pytest.MonkeyPatch, url: str, token: str = ADMIN_TOKEN, **extra: str) -> None:
    monkeypatch.setenv("GPULEDGER_CONTROL_PLANE_URL", url)
    monkeypatch.setenv("GPULEDGER_ADMIN_TOKEN", token)
    for name in ("GPULEDGER_DASHBOARD_PASSWORD", "GPULEDGER_DASHBOARD_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(f"GPULEDGER_DASHBOARD_{name.upper()}", value)


def _page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _text(at: AppTest) -> str:
    parts: list[Any] = [*at.error, *at.warning, *at.info, *at.success, *at.markdown, *at.caption]
    return "\n".join(str(p.value) for p in parts)


def _ok(records: list[UsageRecord]) -> list[UsageRecord]:
    return [r for r in records if r.status == "ok"]


def test_budgets_page_shows_use_against_limit_and_exhaustion(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = seeded
    _env(monkeypatch, url)
    with admin_client(url) as client:
        budgets = {b["feature"]: b for b in client.get("/api/v1/budgets").json()}
    at = _page()  # Budgets is the default page
    metrics = _metrics(at)
    used = budgets["support-bot"]["used_gpu_seconds"] / 3600
    assert metrics["support-bot · OK"] == f"{fmt_hours(used)} / 10.000"
    assert "summarizer · EXHAUSTED" in metrics
    assert any("summarizer** has used its whole budget" in e.value for e in at.error)
    assert at.selectbox(key="burndown_feature").options == sorted(BUDGETS)
    at.selectbox(key="burndown_feature").select("code-review").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["feature"]) == set(BUDGETS)


def test_usage_page_totals_match_the_generated_usage(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, records = seeded
    _env(monkeypatch, url)
    at = _page("usage")
    metrics = _metrics(at)
    assert metrics["Requests"] == f"{len(records):,}"
    assert metrics["GPU-hours"] == fmt_hours(sum(r.gpu_seconds for r in records) / 3600)
    top = max(
        {r.feature for r in records},
        key=lambda f: sum(r.gpu_seconds for r in records if r.feature == f),
    )
    assert f"**1. {top}**" in _text(at)
    # By key: rows are named after the keys, not their ids.
    at.radio(key="usage_group").set_value("Key").run()
    assert not at.exception
    assert {"support-bot-0", "support-bot-1"} <= set(at.dataframe[0].value["group"])


def test_cost_page_shows_savings_per_feature(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, records = seeded
    _env(monkeypatch, url)
    at = _page("cost")
    cost = sum(r.cost_usd for r in records)
    cloud = sum(r.cloud_cost_usd or 0.0 for r in records)
    metrics = _metrics(at)
    assert metrics["Self-hosted cost"] == fmt_usd(cost)
    assert metrics["Cloud-equivalent"] == fmt_usd(cloud)
    assert metrics["Savings"] == fmt_usd(cloud - cost)
    per_feature = [r for r in records if r.feature == "code-review"]
    saving = sum((r.cloud_cost_usd or 0) - r.cost_usd for r in per_feature)
    assert f"**code-review**: {fmt_usd(saving)}" in _text(at)
    # The seeded prices make the cloud cheaper: the page says so in words.
    assert any("more than the cloud API" in w.value for w in at.warning)


def test_utilization_page_warns_about_an_idle_gpu(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, records = seeded
    _env(monkeypatch, url)
    at = _page("utilization")
    warnings = [w.value for w in at.warning]
    assert any("Low QPS with idle GPU — negative" in w and "local-cpu" in w for w in warnings)
    assert {"h100-a utilization", "local-cpu utilization"} <= set(_metrics(at))
    # The seeded summarizer starts every prompt with a timestamp: named, with its week's waste.
    wasted_s = sum(r.wasted_prefill_gpu_seconds for r in records if r.feature == "summarizer")
    waste = fmt_hours(wasted_s / 3600)
    assert wasted_s > 0
    assert any("**summarizer**" in w and f"{waste} GPU-hours of prefill" in w for w in warnings), (
        warnings
    )
    assert not any("**support-bot**" in w for w in warnings)


def test_latency_page_shows_the_latency_report(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, records = seeded
    _env(monkeypatch, url)
    end = datetime.now(UTC)
    with admin_client(url) as client:
        resp = client.get(
            "/api/v1/reports/latency",
            params={"start": (end - timedelta(days=7)).isoformat(), "end": end.isoformat()},
        )
    report = LatencyReport.model_validate(resp.json())
    support = next(r for r in report.rows if r.group == "support-bot")
    ok = [r for r in _ok(records) if r.feature == "support-bot"]
    assert support.requests == len(ok)
    # Every generated TTFT is 80 ms: the report interpolates inside its (75, 100] bucket.
    assert support.ttft.p95_ms is not None and 75 <= support.ttft.p95_ms <= 100

    at = _page("latency")
    metrics = {m.label: (m.value, m.delta) for m in at.metric}
    assert metrics["support-bot · P95 TTFT"] == (
        fmt_ms(support.ttft.p95_ms),
        "SLO 800 ms · met",
    )
    table = at.dataframe[0].value
    assert list(table["feature"]) == [r.group for r in report.rows]
    row = table[table["feature"] == "support-bot"].iloc[0]
    assert row["requests"] == support.requests
    assert row["e2e_p99_ms"] == pytest.approx(support.e2e.p99_ms)
    assert row["itl_p50_ms"] == pytest.approx(support.itl.p50_ms)
    assert row["ttft_over_slo"] == "0.0%"
    assert f"({report.totals.requests:,})" in _text(at)
    assert any("summarizer" in e.value and "budget exhausted" in e.value for e in at.error)
    assert "KV-cache" in _text(at)


def test_latency_page_without_histograms_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only failed requests: usage exists, but no latency was measured.
    with run_control_plane(cp_settings(sqlite_url(tmp_path))) as url:
        post_usage(url, [make_record(status="upstream_error") for _ in range(5)])
        _env(monkeypatch, url)
        at = _page("latency")
    assert any("No latency histograms in this range" in i.value for i in at.info)
    assert not any("No usage yet" in i.value for i in at.info)


def test_escalations_page_explains_the_empty_log(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = seeded
    _env(monkeypatch, url)
    at = _page("escalations")
    assert any("No escalations to show yet" in i.value for i in at.info)


@pytest.mark.parametrize("page", ["usage", "cost", "latency"])
def test_a_fresh_install_gets_a_first_request_hint(
    fresh: str, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    _env(monkeypatch, fresh)
    at = _page(page)
    assert any("No usage yet" in i.value for i in at.info)
    assert "/v1/chat/completions" in at.code[0].value


def test_a_fresh_install_gets_setup_hints_for_budgets_and_engines(
    fresh: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, fresh)
    at = _page()
    assert any("No budgets yet" in i.value for i in at.info)
    assert "/api/v1/budgets/" in at.code[0].value
    at = _page("utilization")
    assert any("No engines registered" in i.value for i in at.info)


def test_unreachable_control_plane_shows_a_banner(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert len(at.error) == 1
    assert "Control plane unreachable" in at.error[0].value
    assert not at.metric  # no page content under the banner


def test_wrong_admin_token_is_named_without_echoing_it(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = seeded
    _env(monkeypatch, url, token="not-the-admin-token")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert "rejected the admin token" in at.error[0].value
    assert "not-the-admin-token" not in at.error[0].value


def test_password_gate(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = seeded
    _env(monkeypatch, url, password="open sesame")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.metric
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert any("Wrong password" in e.value for e in at.error)
    at.text_input[0].input("open sesame")
    at.button[0].click().run()
    assert not at.exception
    assert "support-bot · OK" in _metrics(at)


def test_exposed_without_password_asks_for_the_admin_token(
    seeded: tuple[str, list[UsageRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = seeded
    _env(monkeypatch, url, host="0.0.0.0")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert at.text_input[0].label == "Dashboard admin token"
    at.text_input[0].input(ADMIN_TOKEN)
    at.button[0].click().run()
    assert "support-bot · OK" in _metrics(at)
