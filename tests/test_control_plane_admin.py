"""Admin API: features, budgets, rate limits, engines, uniform errors, OpenAPI, ops endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from control_plane.budgets.periods import period_bounds
from tests.control_plane_support import (
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


def test_features_crud_and_errors(control_plane: str) -> None:
    with admin_client(control_plane) as c:
        body = {"name": "chat", "owner": "web", "default_max_tokens": 100, "max_tokens_cap": 200}
        assert c.post("/api/v1/features", json=body).status_code == 201
        dup = c.post("/api/v1/features", json=body)
        assert dup.status_code == 409 and dup.json()["code"] == "feature_exists"
        bad = c.post(
            "/api/v1/features", json={"name": "x", "default_max_tokens": 500, "max_tokens_cap": 100}
        )
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_max_tokens"
        patched = c.patch("/api/v1/features/chat", json={"priority": 7, "over_cap": "clamp"})
        assert patched.json()["priority"] == 7 and patched.json()["max_tokens_cap"] == 200
        page = c.get("/api/v1/features", params={"limit": 1}).json()
        assert page["total"] == 1 and page["items"][0]["name"] == "chat"
        assert c.delete("/api/v1/features/chat").status_code == 204
        gone = c.get("/api/v1/features/chat")
        assert gone.status_code == 404 and gone.json() == {
            "detail": "feature 'chat' not found",
            "code": "feature_not_found",
        }


def test_auth_is_uniform(control_plane: str) -> None:
    none = httpx.get(f"{control_plane}/api/v1/features")
    assert none.status_code == 401 and none.json()["code"] == "unauthorized"
    assert none.headers["www-authenticate"] == "Bearer"
    with admin_client(control_plane, token="nope") as c:
        assert c.get("/api/v1/features").status_code == 401
    with admin_client(control_plane, token="test-sidecar-token") as c:
        assert c.get("/api/v1/budgets").json()["code"] == "forbidden"


def test_budgets_periods_and_rollover(control_plane: str) -> None:
    now = datetime.now(UTC)
    this_month, _ = period_bounds("month", now)
    with admin_client(control_plane) as c:
        c.post("/api/v1/features", json={"name": "chat"}).raise_for_status()
        assert c.put("/api/v1/budgets/ghost", json={"gpu_hours": 1}).status_code == 404
        rolling_no_hours = c.put("/api/v1/budgets/chat", json={"period": "rolling", "gpu_hours": 1})
        assert rolling_no_hours.status_code == 422
        set_ = c.put(
            "/api/v1/budgets/chat",
            json={"period": "month", "gpu_hours": 1, "hard_action": "alert_only"},
        )
        assert set_.json()["limit_gpu_seconds"] == 3600

        # last month's spend does not count this month; this month's does
        post_usage(
            control_plane,
            [
                make_record(
                    feature="chat", started_at=this_month - timedelta(seconds=1), gpu_seconds=100
                ),
                make_record(feature="chat", started_at=this_month, gpu_seconds=10),
                make_record(feature="chat", started_at=now, gpu_seconds=1),
            ],
        )
        b = c.get("/api/v1/budgets/chat").json()
        assert b["used_gpu_seconds"] == 11
        assert b["period_start"].startswith(this_month.strftime("%Y-%m-01T00:00:00"))
        assert b["status"] == "ok" and b["hard_action"] == "alert_only"

        # a rolling window only sees its hours (minute-aligned)
        c.put(
            "/api/v1/budgets/chat", json={"period": "rolling", "rolling_hours": 1, "gpu_hours": 1}
        ).raise_for_status()
        post_usage(
            control_plane,
            [
                make_record(feature="chat", started_at=now - timedelta(minutes=90), gpu_seconds=50),
                make_record(feature="chat", started_at=now - timedelta(minutes=30), gpu_seconds=5),
            ],
        )
        rolling = c.get("/api/v1/budgets/chat").json()
        assert rolling["used_gpu_seconds"] == 6
        assert [x["feature"] for x in c.get("/api/v1/budgets").json()] == ["chat"]
        assert c.delete("/api/v1/budgets/chat").status_code == 204
        assert c.get("/api/v1/budgets/chat").json()["code"] == "budget_not_found"


def test_rate_limits(control_plane: str) -> None:
    with admin_client(control_plane) as c:
        c.post("/api/v1/features", json={"name": "chat"}).raise_for_status()
        rule = c.post(
            "/api/v1/rate-limits",
            json={"scope": "feature", "feature": "chat", "tokens_per_minute": 1000},
        )
        assert rule.status_code == 201
        again = c.post(
            "/api/v1/rate-limits",
            json={"scope": "feature", "feature": "chat", "requests_per_minute": 5},
        )
        assert again.status_code == 409
        no_limit = c.post("/api/v1/rate-limits", json={"scope": "feature", "feature": "chat"})
        assert no_limit.status_code == 422
        wrong_scope = c.post(
            "/api/v1/rate-limits",
            json={"scope": "key", "feature": "chat", "requests_per_minute": 5},
        )
        assert wrong_scope.status_code == 422
        ghost = c.post(
            "/api/v1/rate-limits",
            json={"scope": "key", "key_id": "key_x", "requests_per_minute": 5},
        )
        assert ghost.status_code == 404 and ghost.json()["code"] == "key_not_found"
        rid = rule.json()["id"]
        replaced = c.put(
            f"/api/v1/rate-limits/{rid}",
            json={"scope": "feature", "feature": "chat", "requests_per_minute": 9},
        )
        assert replaced.json()["requests_per_minute"] == 9
        assert replaced.json()["tokens_per_minute"] is None
        assert len(c.get("/api/v1/rate-limits").json()) == 1
        assert c.delete(f"/api/v1/rate-limits/{rid}").status_code == 204


def test_engines(control_plane: str) -> None:
    with admin_client(control_plane) as c:
        body = {
            "url": "http://10.0.0.5:8000",
            "gpu_type": "H100",
            "gpus": 2,
            "hourly_rate_usd": 5.0,
        }
        created = c.put("/api/v1/engines/h100-a", json=body).json()
        assert created["gpus"] == 2 and created["max_num_seqs"] is None
        body |= {"gpus": 4, "max_num_seqs": 64}
        assert c.put("/api/v1/engines/h100-a", json=body).json()["gpus"] == 4
        assert c.get("/api/v1/engines/h100-a").json()["max_num_seqs"] == 64
        assert c.put("/api/v1/engines/h100-a", json=body | {"max_num_seqs": 0}).status_code == 422
        assert [e["name"] for e in c.get("/api/v1/engines").json()] == ["h100-a"]
        assert c.put("/api/v1/engines/bad name", json=body).status_code == 422
        assert c.delete("/api/v1/engines/h100-a").status_code == 204
        assert c.get("/api/v1/engines/h100-a").status_code == 404


def test_ops_endpoints_and_openapi(control_plane: str) -> None:
    assert httpx.get(f"{control_plane}/health").json() == {"status": "ok"}
    assert httpx.get(f"{control_plane}/ready").json() == {"status": "ok"}
    with admin_client(control_plane) as c:
        c.post("/api/v1/features", json={"name": "chat"}).raise_for_status()
        c.put("/api/v1/budgets/chat", json={"gpu_hours": 2, "soft_threshold_pct": 75})
    post_usage(control_plane, [make_record(feature="chat", gpu_seconds=30)])
    metrics = httpx.get(f"{control_plane}/metrics").text
    assert 'gpuledger_budget_used_gpu_seconds{feature="chat"} 30.0' in metrics
    assert 'gpuledger_budget_limit_gpu_seconds{feature="chat"} 7200.0' in metrics
    assert 'gpuledger_budget_soft_threshold_ratio{feature="chat"} 0.75' in metrics
    spec = httpx.get(f"{control_plane}/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/v1/usage/batch",
        "/api/v1/sidecar/policy",
        "/api/v1/sidecar/leases",
        "/api/v1/keys/{key_id}/rotate",
        "/api/v1/reports/cost",
        "/api/v1/alerts",
    ):
        assert path in paths
    lease_body = paths["/api/v1/sidecar/leases"]["post"]["requestBody"]["content"]
    assert set(lease_body["application/json"]["examples"]) == {"renew", "release"}
    schemas = spec["components"]["schemas"]
    assert schemas["BudgetIn"]["examples"][0]["gpu_hours"] == 10
    assert "ErrorBody" in schemas
