"""The sidecar policy snapshot: content, ETag / 304, and version changes."""

from __future__ import annotations

import httpx

from gpuledger.contracts import PolicySnapshot, hash_key
from tests.control_plane_support import (
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
    seed_policy,
    sidecar_client,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


def _policy(base_url: str, etag: str | None = None) -> httpx.Response:
    headers = {"If-None-Match": etag} if etag else {}
    with sidecar_client(base_url) as client:
        return client.get("/api/v1/sidecar/policy", headers=headers)


def test_snapshot_content(control_plane: str) -> None:
    seed = seed_policy(control_plane)
    with admin_client(control_plane) as client:
        key_id = next(iter(seed.keys))
        client.post(
            "/api/v1/rate-limits",
            json={
                "scope": "key_feature",
                "key_id": key_id,
                "feature": "support-bot",
                "requests_per_minute": 60,
                "concurrent_requests": 4,
            },
        ).raise_for_status()
    resp = _policy(control_plane)
    assert resp.status_code == 200
    snap = PolicySnapshot.model_validate_json(resp.content)
    assert resp.headers["etag"] == f'"{snap.version}"'
    assert {f.name for f in snap.features} == {"support-bot", "code-review", "summarizer"}
    by_id = {k.id: k for k in snap.keys}
    assert set(by_id) == set(seed.keys)
    for kid, secret in seed.keys.items():
        assert by_id[kid].key_hash == hash_key(secret)
    support = next(f for f in snap.features if f.name == "support-bot")
    assert (support.over_cap, support.priority, support.slo_ttft_ms) == ("clamp", 10, 800)
    assert {b.feature: b.limit_gpu_seconds for b in snap.budgets} == {
        "support-bot": 36000,
        "code-review": 7200,
    }
    assert snap.rate_limits[0].limits.concurrent_requests == 4
    assert {e.name: e.hourly_rate_usd for e in snap.engines} == {"h100-a": 2.49, "local-cpu": 0.1}
    assert {e.name: e.max_num_seqs for e in snap.engines} == {"h100-a": 256, "local-cpu": None}
    assert "secret" not in resp.text


def test_etag_304_and_version_bumps(control_plane: str) -> None:
    first = _policy(control_plane)
    etag = first.headers["etag"]
    again = _policy(control_plane, etag)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag

    with admin_client(control_plane) as client:
        client.post("/api/v1/features", json={"name": "chat"}).raise_for_status()
    changed = _policy(control_plane, etag)
    assert changed.status_code == 200
    rev_before = int(etag.strip('"').split(".")[0])
    rev_after = int(changed.headers["etag"].strip('"').split(".")[0])
    assert rev_after == rev_before + 1

    # budget state: the version moves when used GPU-seconds cross a 60 s bucket
    with admin_client(control_plane) as client:
        client.put("/api/v1/budgets/chat", json={"gpu_hours": 1}).raise_for_status()
    etag = _policy(control_plane).headers["etag"]
    post_usage(control_plane, [make_record(feature="chat", gpu_seconds=5)])
    assert _policy(control_plane, etag).status_code == 304
    post_usage(control_plane, [make_record(feature="chat", gpu_seconds=60)])
    moved = _policy(control_plane, etag)
    assert moved.status_code == 200
    assert moved.headers["etag"].split(".")[0] == etag.split(".")[0]  # same revision
    budget = PolicySnapshot.model_validate_json(moved.content).budgets[0]
    assert budget.used_gpu_seconds == 65


def test_revoked_keys_leave_the_snapshot(control_plane: str) -> None:
    seed = seed_policy(control_plane)
    key_id = next(iter(seed.keys))
    with admin_client(control_plane) as client:
        client.post(f"/api/v1/keys/{key_id}/revoke").raise_for_status()
        other = list(seed.keys)[1]
        client.patch(f"/api/v1/keys/{other}", json={"enabled": False}).raise_for_status()
    snap = PolicySnapshot.model_validate_json(_policy(control_plane).content)
    ids = {k.id: k.enabled for k in snap.keys}
    assert key_id not in ids
    assert ids[other] is False


def test_policy_needs_a_sidecar_token(control_plane: str) -> None:
    assert httpx.get(f"{control_plane}/api/v1/sidecar/policy").status_code == 401
    with admin_client(control_plane) as client:
        resp = client.get("/api/v1/sidecar/policy")
    assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
