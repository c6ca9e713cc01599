"""Debian's Prometheus against a running sidecar and the real engine, with our rules loaded:
it scrapes `gpuledger_*` series every second and evaluates every rule group without errors."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from tests.conftest import free_port
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="prometheus missing: apt-get install prometheus"
)


@contextlib.contextmanager
def run_prometheus(target: str, tmp: Path, job: str = "gpuledger-sidecar") -> Iterator[str]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULES],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    cfg = tmp / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={tmp / 'tsdb'}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _poll(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, "prometheus ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _poll(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.engine
def test_prometheus_scrapes_sidecar_and_evaluates_rules(engine_url: str, tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "state")
    store.replace(dev_snapshot(engine_url, chat={"slo_ttft_ms": 1500, "slo_e2e_ms": 30000}))
    settings = Settings(
        upstream_url=engine_url, state_dir=tmp_path / "state", engine_watch_interval_s=1.0
    )
    app = create_app(settings, policy_store=store, sink=MemorySink())
    with run_sidecar(app=app) as sidecar_url:
        client = openai.OpenAI(base_url=f"{sidecar_url}/v1", api_key=DEV_SECRET, max_retries=0)
        target = sidecar_url.removeprefix("http://")
        with run_prometheus(target, tmp_path) as prom:
            up = _poll(
                lambda: _query(prom, 'gpuledger_engine_up{engine="local"} == 1'), "engine_up"
            )
            assert up[0]["metric"]["job"] == "gpuledger-sidecar"
            # After the first scrapes, so that rate() sees the counters increase.
            for _ in range(3):
                stream = client.completions.create(model="tiny", prompt="hello there", max_tokens=4,
                                                   stream=True, extra_headers={"x-feature": "chat"})  # fmt: skip
                assert list(stream)  # streamed: the sidecar measures TTFT
                time.sleep(1.0)
            served = _poll(
                lambda: _query(prom, 'sum by (feature) (gpuledger_requests_total{feature="chat"})'),
                "requests_total",
            )
            assert float(served[0]["value"][1]) >= 3
            slo = _query(prom, 'gpuledger_feature_slo_seconds{feature="chat",kind="ttft"}')
            assert float(slo[0]["value"][1]) == 1.5
            # A recording rule over the sidecar's own histogram yields a per-feature P95.
            p95 = _poll(
                lambda: _query(prom, 'gpuledger:feature_ttft_seconds:p95_5m{feature="chat"} >= 0'),
                "recorded p95",
            )
            assert float(p95[0]["value"][1]) < 60
            assert _poll(
                lambda: _query(prom, 'gpuledger:feature_e2e_seconds:p95_5m{feature="chat"} > 0'),
                "e2e p95",
            )

            def rules_evaluated() -> list[dict[str, Any]] | None:
                groups = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return (
                    rules
                    if rules
                    and all(
                        r.get("lastEvaluation", "").startswith("2")
                        and not r["lastEvaluation"].startswith("0001")
                        for r in rules
                    )
                    else None
                )

            rules = _poll(rules_evaluated, "every rule evaluated")
            assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
            names = {r["name"] for r in rules}
            assert {
                "GpuledgerKVCacheHigh",
                "GpuledgerEngineDown",
                "gpuledger:feature_gpu_hours:rate1h",
            } <= names
            states = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
            # The engine answers and nothing is over budget: the engine alerts are quiet.
            assert states["GpuledgerEngineDown"] == "inactive"
            assert states["GpuledgerBudgetSpent"] == "inactive"


def test_budget_alerts_fire_from_control_plane_metrics(tmp_path: Path) -> None:
    """The control plane's budget gauges -> our rules in a real Prometheus -> firing alerts: one
    feature past its soft threshold, one past its limit, one well within."""
    from tests.control_plane_support import (
        cp_settings,
        make_record,
        post_usage,
        run_control_plane,
        seed_policy,
        sqlite_url,
    )

    with run_control_plane(cp_settings(sqlite_url(tmp_path))) as cp_url:
        # GPU-hours: 3.6 GPU-seconds for support-bot and summarizer, an hour for code-review.
        seed_policy(cp_url, budgets={"support-bot": 0.001, "summarizer": 0.001, "code-review": 1.0})
        used = {"support-bot": 3, "summarizer": 4, "code-review": 5}  # records of 1 GPU-second
        post_usage(
            cp_url,
            [make_record(feature=f, gpu_seconds=1.0) for f, n in used.items() for _ in range(n)],
        )
        with run_prometheus(
            cp_url.removeprefix("http://"), tmp_path, "gpuledger-control-plane"
        ) as prom:

            def firing() -> dict[str, set[str]] | None:
                alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
                out: dict[str, set[str]] = {}
                for a in alerts:
                    if a["state"] == "firing":
                        out.setdefault(a["labels"]["alertname"], set()).add(a["labels"]["feature"])
                want = {"GpuledgerBudgetSoftThreshold", "GpuledgerBudgetSpent"}
                return out if want <= set(out) else None

            alerts = _poll(firing, "budget alerts firing")
    assert alerts["GpuledgerBudgetSoftThreshold"] == {"support-bot"}  # 83% of the limit
    assert alerts["GpuledgerBudgetSpent"] == {"summarizer"}  # 111%
    assert all("code-review" not in features for features in alerts.values())
