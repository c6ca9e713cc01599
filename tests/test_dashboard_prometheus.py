"""The dashboard's Prometheus client and the Latency page's Prometheus sections, against Debian's
Prometheus scraping a real sidecar in front of the real vLLM engine."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from dashboard.prometheus import (
    ENGINE_GAUGES,
    PrometheusClient,
    PrometheusUnavailable,
    quantile_expr,
)
from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from tests.conftest import free_port
from tests.control_plane_support import (
    ADMIN_TOKEN,
    admin_client,
    cp_settings,
    run_control_plane,
    sqlite_url,
)
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
REQUESTS = 3


def _poll(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, PrometheusUnavailable):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prometheus(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping a sidecar (every second) that has served REQUESTS streamed requests
    tagged `chat`; yields Prometheus' URL once it holds their histograms."""
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: apt-get install -y prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    store = PolicyStore(tmp / "state")
    store.replace(dev_snapshot(engine_url))
    settings = Settings(
        upstream_url=engine_url, state_dir=tmp / "state", engine_watch_interval_s=1.0
    )
    app = create_app(settings, policy_store=store, sink=MemorySink())
    with run_sidecar(app=app) as sidecar_url:
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "gpuledger-sidecar",
                    "static_configs": [{"targets": [sidecar_url.removeprefix("http://")]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            with PrometheusClient(url) as prom:
                _poll(lambda: prom.vector("gpuledger_engine_up == 1"), "a first scrape")
                client = openai.OpenAI(
                    base_url=f"{sidecar_url}/v1", api_key=DEV_SECRET, max_retries=0
                )
                for i in range(REQUESTS):
                    stream = client.completions.create(
                        model="tiny",
                        prompt="tell me about budgets",
                        max_tokens=8,
                        stream=True,
                        extra_headers={"x-feature": "chat"},
                    )
                    assert list(stream)
                    if i == 0:
                        # increase() needs the series scraped before the later observations:
                        # a histogram born with all its counts shows no increase at all.
                        _poll(
                            lambda: prom.vector('gpuledger_ttft_seconds_count{feature="chat"}'),
                            "the first TTFT observation",
                        )
                _poll(
                    lambda: prom.vector(quantile_expr("gpuledger_ttft_seconds", 0.5, 3600)),
                    "a TTFT quantile",
                )
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            log.close()


def test_engine_gauges(prometheus: str) -> None:
    with PrometheusClient(prometheus) as prom:
        gauges = {name: prom.by_label(expr, "engine") for name, expr in ENGINE_GAUGES.items()}
    assert gauges["up"] == {"local": 1.0}
    assert 0.0 <= gauges["kv_cache"]["local"] <= 1.0
    assert gauges["waiting"]["local"] >= 0


def test_latency_quantiles_from_histograms(prometheus: str) -> None:
    with PrometheusClient(prometheus) as prom:
        p50 = prom.by_label(quantile_expr("gpuledger_ttft_seconds", 0.5, 3600), "feature")
        p95 = prom.by_label(quantile_expr("gpuledger_e2e_seconds", 0.95, 3600), "feature")
        assert prom.firing_alerts() == []  # no rules loaded here
    assert 0 < p50["chat"] < 60
    assert 0 < p95["chat"] < 120


def test_errors_are_prometheus_unavailable(prometheus: str) -> None:
    with PrometheusClient(prometheus) as prom, pytest.raises(PrometheusUnavailable):
        prom.vector("this is not promql")
    gone = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with gone, pytest.raises(PrometheusUnavailable):
        gone.vector("up")


def test_latency_page_shows_kv_cache_and_histogram_percentiles(
    prometheus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_control_plane(cp_settings(sqlite_url(tmp_path))) as cp:
        with admin_client(cp) as admin:
            admin.post("/api/v1/features", json={"name": "chat", "slo_ttft_ms": 60_000})
        monkeypatch.setenv("GPULEDGER_CONTROL_PLANE_URL", cp)
        monkeypatch.setenv("GPULEDGER_ADMIN_TOKEN", ADMIN_TOKEN)
        monkeypatch.setenv("GPULEDGER_DASHBOARD_PROMETHEUS_URL", prometheus)
        monkeypatch.delenv("GPULEDGER_DASHBOARD_PASSWORD", raising=False)
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.switch_page("views/latency.py").run()
    assert not at.exception, [e.value for e in at.exception]
    kv = next(m for m in at.metric if m.label == "local · KV-cache")
    assert kv.value.endswith("%")
    assert kv.delta.endswith("waiting")
    table = at.dataframe[0].value  # the histogram table; the ledger of this control plane is empty
    chat = table[table["feature"] == "chat"].iloc[0]
    assert chat["ttft_p50_ms"] > 0
    assert chat["slo"] == "met"
    assert any("No usage yet" in i.value for i in at.info)
