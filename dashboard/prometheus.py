"""A small typed client for Prometheus' HTTP API: the engine gauges (KV-cache, queue) and the
sidecars' latency histograms live there, not in the control plane's ledger."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx


class PrometheusUnavailable(Exception):
    """Prometheus cannot be reached or rejected the query."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class FiringAlert:
    name: str
    state: str
    labels: dict[str, str]
    summary: str


class PrometheusClient:
    def __init__(
        self, base_url: str, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            resp = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            body = resp.json()
        except ValueError as exc:
            raise PrometheusUnavailable(f"HTTP {resp.status_code} from {path}") from exc
        if resp.status_code >= 400 or body.get("status") != "success":
            raise PrometheusUnavailable(f"HTTP {resp.status_code}: {body.get('error', '')}"[:200])
        return body["data"]

    def vector(self, expr: str) -> list[Sample]:
        """An instant query; NaN results (e.g. a quantile of no observations) are dropped."""
        data = self._get("/api/v1/query", {"query": expr})
        if data.get("resultType") != "vector":
            raise PrometheusUnavailable(f"expected a vector, got {data.get('resultType')}")
        out = [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]
        return [s for s in out if not math.isnan(s.value)]

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {s.labels.get(label, ""): s.value for s in self.vector(expr)}

    def firing_alerts(self) -> list[FiringAlert]:
        data = self._get("/api/v1/alerts")
        return [
            FiringAlert(
                name=a["labels"].get("alertname", "?"),
                state=a.get("state", ""),
                labels=dict(a["labels"]),
                summary=a.get("annotations", {}).get("summary", ""),
            )
            for a in data.get("alerts", [])
            if a.get("state") == "firing"
        ]


def quantile_expr(metric: str, q: float, window_s: int) -> str:
    """Per-feature quantile of a sidecar histogram over the window, summed over sidecars."""
    return (
        f"histogram_quantile({q}, sum by (feature, le) "
        f"(increase({metric}_bucket[{max(window_s, 60)}s])))"
    )


ENGINE_GAUGES = {
    "kv_cache": "max by (engine) (gpuledger_engine_kv_cache_usage_ratio)",
    "running": "sum by (engine) (gpuledger_engine_requests_running)",
    "waiting": "sum by (engine) (gpuledger_engine_requests_waiting)",
    "up": "max by (engine) (gpuledger_engine_up)",
}
LATENCY_HISTOGRAMS = {
    "ttft": "gpuledger_ttft_seconds",
    "itl": "gpuledger_inter_token_latency_seconds",
    "e2e": "gpuledger_e2e_seconds",
}
