"""Typed, synchronous client over the control plane's admin REST API.

Streamlit scripts are synchronous, so this uses `httpx.Client`. Responses are parsed into the
control plane's own pydantic schemas (the contract it publishes), so a shape change fails loudly
here instead of as a KeyError deep inside a chart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from control_plane.alerts.schemas import AlertOut
from control_plane.budgets.schemas import BudgetOut
from control_plane.engines.schemas import EngineOut
from control_plane.features.schemas import FeatureOut
from control_plane.keys.schemas import KeyOut
from control_plane.prefix_cache.schemas import PrefixCacheReport
from control_plane.reports.schemas import (
    CostGroup,
    CostReport,
    LatencyGroup,
    LatencyReport,
    UtilizationReport,
)
from control_plane.usage.schemas import UsageRecordOut

M = TypeVar("M", bound=BaseModel)
_PAGE_LIMIT = 1000  # the control plane's maximum page size


class ControlPlaneUnavailable(Exception):
    """The control plane cannot be reached or answered with a server error."""


class ControlPlaneAuthError(Exception):
    """The admin token is missing, unknown or of the wrong kind (401/403)."""


class ControlPlaneRequestError(Exception):
    """Any other 4xx: a bug in the dashboard or an API change."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class ControlPlaneClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport ----------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.get(path, params=clean)
        except httpx.HTTPError as exc:
            # The exception text names the URL and the OS error, never the token.
            raise ControlPlaneUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code in (401, 403):
            raise ControlPlaneAuthError(_detail(resp))
        if resp.status_code >= 500:
            raise ControlPlaneUnavailable(f"HTTP {resp.status_code} from {path}")
        if resp.status_code >= 400:
            raise ControlPlaneRequestError(f"HTTP {resp.status_code} from {path}: {_detail(resp)}")
        return resp.json()

    def _pages(self, path: str, model: type[M], params: dict[str, Any], cap: int) -> list[M]:
        items: list[M] = []
        while len(items) < cap:
            limit = min(_PAGE_LIMIT, cap - len(items))
            body = self._get(path, {**params, "limit": limit, "offset": len(items)})
            batch = [model.model_validate(i) for i in body["items"]]
            items.extend(batch)
            if len(batch) < limit or len(items) >= int(body["total"]):
                break
        return items

    # --- endpoints ----------------------------------------------------------------------------

    def ready(self) -> None:
        """Raise ControlPlaneUnavailable unless the control plane and its database answer, and
        ControlPlaneAuthError unless the admin token is accepted."""
        self._get("/ready")
        self._get("/api/v1/engines")  # cheapest admin endpoint: checks the token

    def budgets(self) -> list[BudgetOut]:
        return TypeAdapter(list[BudgetOut]).validate_python(self._get("/api/v1/budgets"))

    def features(self) -> list[FeatureOut]:
        return self._pages("/api/v1/features", FeatureOut, {}, cap=10_000)

    def api_keys(self) -> list[KeyOut]:
        return self._pages("/api/v1/keys", KeyOut, {}, cap=10_000)

    def engines(self) -> list[EngineOut]:
        return TypeAdapter(list[EngineOut]).validate_python(self._get("/api/v1/engines"))

    def alerts(self, *, active: bool = True) -> list[AlertOut]:
        return self._pages("/api/v1/alerts", AlertOut, {"active": active}, cap=1000)

    def cost(
        self,
        group_by: CostGroup = "feature",
        start: datetime | None = None,
        end: datetime | None = None,
        feature: str | None = None,
    ) -> CostReport:
        params = {"group_by": group_by, "start": _iso(start), "end": _iso(end), "feature": feature}
        return CostReport.model_validate(self._get("/api/v1/reports/cost", params))

    def utilization(self, start: datetime | None, end: datetime | None) -> UtilizationReport:
        params = {"start": _iso(start), "end": _iso(end)}
        return UtilizationReport.model_validate(self._get("/api/v1/reports/utilization", params))

    def latency(
        self,
        start: datetime | None,
        end: datetime | None,
        *,
        group_by: LatencyGroup = "feature",
        feature: str | None = None,
        model: str | None = None,
    ) -> LatencyReport:
        """P50/P95/P99 TTFT, inter-token and e2e latency from the control plane's histograms."""
        params = {
            "group_by": group_by,
            "start": _iso(start),
            "end": _iso(end),
            "feature": feature,
            "model": model,
        }
        return LatencyReport.model_validate(self._get("/api/v1/reports/latency", params))

    def prefix_cache(self, start: datetime | None, end: datetime | None) -> PrefixCacheReport:
        """Features whose prompt openings keep changing, with the prefill that wastes."""
        params = {"start": _iso(start), "end": _iso(end)}
        return PrefixCacheReport.model_validate(self._get("/api/v1/reports/prefix-cache", params))

    def records(
        self,
        start: datetime | None,
        end: datetime | None,
        *,
        feature: str | None = None,
        cap: int = 5000,
    ) -> list[UsageRecordOut]:
        """The newest `cap` raw records in the window (newest first)."""
        params = {"start": _iso(start), "end": _iso(end), "feature": feature}
        return self._pages("/api/v1/usage/records", UsageRecordOut, params, cap=cap)


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail)[:200] if detail is not None else resp.text[:200]
