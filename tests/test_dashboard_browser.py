"""End to end in headless Chromium: `gpuledger dashboard` serves the app against a seeded control
plane; every page is loaded, its key figures are checked on screen and a screenshot is saved to
test-artifacts/dashboard/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboard.analysis import fmt_hours, fmt_usd
from gpuledger.contracts import UsageRecord
from tests.conftest import free_port
from tests.control_plane_support import (
    ADMIN_TOKEN,
    cp_settings,
    make_record,
    post_usage,
    run_control_plane,
    seed_policy,
    seed_usage,
    sqlite_url,
)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
REFRESH_S = 4
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

DRAWN = """() => document.querySelectorAll("[data-testid='stSkeleton']").length === 0 &&
    [...document.querySelectorAll("[data-testid='stVegaLiteChart']")]
        .every(c => c.querySelector("canvas, svg"))"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[UsageRecord]]]:
    budgets = {"support-bot": 10.0, "code-review": 2.0, "summarizer": 0.05}
    with run_control_plane(cp_settings(sqlite_url(tmp_path_factory.mktemp("cp")))) as url:
        seed = seed_policy(url, budgets=budgets)
        yield url, seed_usage(url, seed, days=7, per_day=150)


@pytest.fixture(scope="module")
def dashboard_url(
    seeded: tuple[str, list[UsageRecord]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "GPULEDGER_CONTROL_PLANE_URL": seeded[0],
        "GPULEDGER_ADMIN_TOKEN": ADMIN_TOKEN,
        "GPULEDGER_DASHBOARD_REFRESH_SECONDS": str(REFRESH_S),
        "HOME": str(tmp_path_factory.mktemp("home")),  # no ~/.streamlit from the developer
    }
    env.pop("GPULEDGER_DASHBOARD_PASSWORD", None)
    log = (tmp_path_factory.mktemp("log") / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", "dashboard", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not come up; see {log.name}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_every_page_in_chromium(dashboard_url: str, seeded: tuple[str, list[UsageRecord]]) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import expect, sync_playwright

    _, records = seeded
    gpu_hours = fmt_hours(sum(r.gpu_seconds for r in records) / 3600)
    savings = fmt_usd(sum((r.cloud_cost_usd or 0) - r.cost_usd for r in records))
    pages = {
        "": ["support-bot · OK", "summarizer · EXHAUSTED", "Burn-down"],
        "usage": [f"{len(records):,}", gpu_hours, "Top features"],
        "cost": ["Self-hosted cost", savings, "Savings per feature"],
        "utilization": [
            "Low QPS with idle GPU — negative",
            "local-cpu utilization",
            "Prefix cache: prompt openings",
        ],
        "latency": ["support-bot · P95 TTFT", "SLO 800 ms · met", "Active alerts"],
        "escalations": ["No escalations to show yet"],
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for path, figures in pages.items():
                page.goto(f"{dashboard_url}/{path}")  # "": the default page, Budgets
                for text in figures:
                    expect(page.get_by_text(text, exact=False).first).to_be_visible(timeout=60_000)
                # Charts and tables load lazily: wait until no skeleton is left and every chart
                # has drawn its marks.
                page.wait_for_function(DRAWN, timeout=60_000)
                expect(page.locator("[data-testid='stException']")).to_have_count(0)
                expect(page.get_by_text("Page not found")).to_have_count(0)
                page.screenshot(path=str(ARTIFACTS / f"{path or 'budgets'}.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()


def test_pages_refresh_by_themselves(
    dashboard_url: str, seeded: tuple[str, list[UsageRecord]]
) -> None:
    """New usage shows up on an open page without a reload (the page body is a fragment that
    reruns every GPULEDGER_DASHBOARD_REFRESH_SECONDS)."""
    from playwright.sync_api import expect, sync_playwright

    url, records = seeded
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"{dashboard_url}/usage")
            expect(page.get_by_text(f"{len(records):,}", exact=True).first).to_be_visible(
                timeout=60_000
            )
            post_usage(url, [make_record(feature="summarizer") for _ in range(7)])
            expect(page.get_by_text(f"{len(records) + 7:,}", exact=True).first).to_be_visible(
                timeout=REFRESH_S * 1000 * 5
            )
        finally:
            browser.close()
