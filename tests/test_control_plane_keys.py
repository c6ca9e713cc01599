"""API keys: secret shown once, stored only as a hash, rotate and revoke."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from control_plane import db
from gpuledger.contracts import hash_key
from tests.control_plane_support import (
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    seed_policy,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


async def _dump_tables(db_url: str) -> str:
    """Every value of every table, as text: what someone reading the database would see."""
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            names = ["api_keys", "features", "alerts", "policy_state", "rate_limits"]
            chunks = []
            for name in names:
                rows = (await conn.execute(text(f"SELECT * FROM {name}"))).all()
                chunks.append(repr(rows))
            return "\n".join(chunks)
    finally:
        await engine.dispose()


async def test_secrets_are_never_stored(control_plane: str, db_url: str) -> None:
    seed = seed_policy(control_plane)
    with admin_client(control_plane) as client:
        key_id = next(iter(seed.keys))
        rotated = client.post(f"/api/v1/keys/{key_id}/rotate").json()["secret"]
    dump = await _dump_tables(db_url)
    secrets = [*seed.keys.values(), rotated]
    for secret in secrets:
        assert secret.startswith("glk_") and len(secret) == 4 + 43
        assert secret not in dump
        assert secret[4:] not in dump
    assert hash_key(rotated) in dump
    if db_url.startswith("sqlite"):  # the raw file (and WAL) too
        path = db_url.split("///", 1)[1]
        raw = b"".join(_read(p) for p in (path, path + "-wal"))
        assert not any(s.encode() in raw for s in secrets)


def _read(path: str) -> bytes:
    file = Path(path)
    return file.read_bytes() if file.exists() else b""


def test_create_list_rotate_revoke(control_plane: str) -> None:
    with admin_client(control_plane) as client:
        client.post("/api/v1/features", json={"name": "a"}).raise_for_status()
        client.post("/api/v1/features", json={"name": "b"}).raise_for_status()
        created = client.post(
            "/api/v1/keys", json={"name": "k", "features": ["b", "a", "b"], "models": ["tiny"]}
        )
        assert created.status_code == 201
        key = created.json()
        assert key["features"] == ["b", "a"] and key["default_feature"] == "b"
        assert key["prefix"] == key["secret"][:8]

        listed = client.get("/api/v1/keys").json()
        assert listed["total"] == 1 and "secret" not in listed["items"][0]
        assert "secret" not in client.get(f"/api/v1/keys/{key['id']}").json()

        rotated = client.post(f"/api/v1/keys/{key['id']}/rotate").json()
        assert rotated["id"] == key["id"] and rotated["secret"] != key["secret"]
        assert rotated["rotated_at"] is not None

        revoked = client.post(f"/api/v1/keys/{key['id']}/revoke").json()
        assert revoked["enabled"] is False and revoked["revoked_at"] is not None
        again = client.post(f"/api/v1/keys/{key['id']}/rotate")
        assert again.status_code == 409 and again.json()["code"] == "key_revoked"
        assert client.get("/api/v1/keys", params={"include_revoked": "false"}).json()["total"] == 0


def test_key_errors(control_plane: str) -> None:
    with admin_client(control_plane) as client:
        unknown = client.post("/api/v1/keys", json={"name": "k", "features": ["ghost"]})
        assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_feature"
        empty = client.post("/api/v1/keys", json={"name": "k", "features": []})
        assert empty.status_code == 422 and empty.json()["code"] == "validation_error"
        missing = client.post("/api/v1/keys/key_nope/revoke")
        assert missing.status_code == 404 and missing.json()["code"] == "key_not_found"
