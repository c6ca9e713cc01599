"""Migrations up and down on SQLite and PostgreSQL (real Alembic, never create_all)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

import control_plane.models  # noqa: F401  (registers the tables on Base.metadata)
from control_plane import db
from control_plane.db import Base
from tests.control_plane_support import (
    admin_client,
    cp_settings,
    db_url_fixture,
    run_control_plane,
    sidecar_client,
    sqlite_url,
)

__all__ = ["db_url_fixture"]

TABLES = {
    "policy_state",
    "features",
    "api_keys",
    "budgets",
    "rate_limits",
    "engines",
    "usage_records",
    "usage_rollups",
    "latency_rollups",
    "leases",
    "settlements",
    "alerts",
}


def _revisions() -> list[str]:
    """Revision ids from base to head (one linear history)."""
    script = ScriptDirectory(str(db.MIGRATIONS_DIR))
    assert len(script.get_heads()) == 1, script.get_heads()
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _head() -> str:
    return _revisions()[-1]


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(db_url)
    yield engine
    await engine.dispose()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        names: set[str] = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    return names - {"alembic_version"}


async def test_migrations_up_down_up(engine: AsyncEngine) -> None:
    await db.migrate(engine, "upgrade", "head")
    assert await _tables(engine) == TABLES
    assert await db.current_revision(engine) == _head()
    async with engine.connect() as conn:
        revision = (await conn.execute(text("SELECT revision FROM policy_state"))).scalar()
    assert revision == 1

    await db.migrate(engine, "downgrade", "base")
    assert await _tables(engine) == set()
    assert await db.current_revision(engine) is None

    await db.migrate(engine, "upgrade", "head")
    assert await _tables(engine) == TABLES


async def test_each_revision_steps_down_and_up(engine: AsyncEngine) -> None:
    await db.migrate(engine, "upgrade", "head")
    for below in [None, *_revisions()][-2::-1]:
        await db.migrate(engine, "downgrade", "-1")
        assert await db.current_revision(engine) == below
    for revision in _revisions():
        await db.migrate(engine, "upgrade", "+1")
        assert await db.current_revision(engine) == revision


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    """Autogenerate finds nothing to do: the models and the migrations describe one schema."""
    await db.migrate(engine)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )
    assert diff == []


async def test_latency_rollups_migration_up_and_down(engine: AsyncEngine) -> None:
    """0003 adds only latency_rollups (with its index) and its downgrade removes only it."""
    await db.migrate(engine, "upgrade", "0002")
    assert "latency_rollups" not in await _tables(engine)
    await db.migrate(engine, "upgrade", "0003")
    assert await _tables(engine) == TABLES
    async with engine.connect() as conn:
        pk = await conn.run_sync(lambda c: inspect(c).get_pk_constraint("latency_rollups"))
        indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("latency_rollups"))
    assert pk["name"] == "pk_latency_rollups"
    assert pk["constrained_columns"] == ["minute", "feature", "model", "metric", "le_ms"]
    assert [i["name"] for i in indexes] == ["ix_latency_rollups_feature_minute"]
    await db.migrate(engine, "downgrade", "0002")
    assert await _tables(engine) == TABLES - {"latency_rollups"}
    assert await db.current_revision(engine) == "0002"


async def test_naming_convention_names_constraints(engine: AsyncEngine) -> None:
    await db.migrate(engine)
    async with engine.connect() as conn:
        fks = await conn.run_sync(lambda c: inspect(c).get_foreign_keys("budgets"))
        uniques = await conn.run_sync(lambda c: inspect(c).get_unique_constraints("api_keys"))
    assert fks[0]["name"] == "fk_budgets_feature_features"
    assert [u["name"] for u in uniques] == ["uq_api_keys_key_hash"]


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///{tmp}/x/y/ledger.db"])
async def test_sqlite_pragmas_and_directory(url: str, tmp_path: object) -> None:
    engine = db.create_engine(url.format(tmp=tmp_path))
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
            timeout = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
        assert (mode, fks, timeout) == ("wal", 1, 30_000)
    finally:
        await engine.dispose()


def test_sqlite_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    with run_control_plane(cp_settings(url, sqlite_busy_timeout_ms=2000)) as base_url:
        writer = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            with sidecar_client(base_url) as client:
                assert client.get("/api/v1/sidecar/policy").status_code == 200
            with admin_client(base_url) as client:
                assert client.get("/api/v1/reports/cost").status_code == 200
                assert client.get("/api/v1/budgets").status_code == 200
                # a write waits for the lock and fails after the busy timeout
                with pytest.raises(httpx.HTTPError):
                    client.post("/api/v1/features", json={"name": "x"}, timeout=1.0)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
