"""Helpers to run a real control plane in tests and fill it with realistic data.

Reused by the sidecar (shipping, policy sync, leases) and dashboard tests:

    with run_control_plane(cp_settings(db_url)) as base_url:
        seed = seed_policy(base_url)                  # features, keys, engines, budgets
        seed_usage(base_url, seed, days=7)            # usage records through the ingest API
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uuid_utils

from control_plane.settings import Settings
from gpuledger.contracts import UsageRecord
from tests.conftest import serve_in_thread

ADMIN_TOKEN = "test-admin-token"
SIDECAR_TOKEN = "test-sidecar-token"


def sqlite_url(tmp_dir: Any) -> str:
    return f"sqlite+aiosqlite:///{tmp_dir}/gpuledger-{uuid.uuid4().hex[:8]}.db"


def cp_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "admin_tokens": ADMIN_TOKEN,
        "sidecar_tokens": SIDECAR_TOKEN,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def run_control_plane(
    settings: Settings, *, span_exporter: Any = None, port: int | None = None
) -> Iterator[str]:
    """Serve `create_app(settings)` with uvicorn in a thread (migrations are applied on start);
    yields the base URL. `port`: a chosen one, so a control plane can stop and come back at the
    same URL (default: a free one). `span_exporter`: an in-memory exporter for the app's spans
    (tracing tests)."""
    from control_plane.app import create_app

    app = create_app(settings, span_exporter=span_exporter)
    with serve_in_thread(app, "control plane", port=port) as url:
        yield url


def admin_client(base_url: str, token: str = ADMIN_TOKEN) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def sidecar_client(base_url: str, token: str = SIDECAR_TOKEN) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


# --- fixtures: import them into a test module as `from tests.control_plane_support import
# db_url_fixture, control_plane_fixture` (the pytest names are `db_url` and `control_plane`).


@pytest.fixture(
    name="db_url", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh, empty database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_db")
    return url


@pytest.fixture(name="control_plane")
def control_plane_fixture(db_url: str) -> Iterator[str]:
    """Base URL of a running control plane on `db_url` (tokens ADMIN_TOKEN / SIDECAR_TOKEN)."""
    with run_control_plane(cp_settings(db_url)) as base_url:
        yield base_url


# --- realistic data ---------------------------------------------------------------------------

FEATURES = {
    "support-bot": {"owner": "support", "priority": 10, "over_cap": "clamp", "slo_ttft_ms": 800},
    "code-review": {"owner": "devex", "priority": 5, "max_tokens_cap": 2048},
    "summarizer": {"owner": "search", "priority": 1, "default_max_tokens": 128},
}
MODELS = ("tiny", "llama-3.1-8b")
UNSTABLE_FEATURE = "summarizer"  # its prompts start with a timestamp (see _with_opening)
ENGINES = {
    "h100-a": {
        "url": "http://10.0.0.5:8000",
        "gpu_type": "H100",
        "gpus": 1,
        "hourly_rate_usd": 2.49,
        "max_num_seqs": 256,
    },
    "local-cpu": {
        "url": "http://127.0.0.1:8000",
        "gpu_type": "cpu",
        "gpus": 1,
        "hourly_rate_usd": 0.1,
    },
}
# Cloud-equivalent prices (USD per million tokens), roughly a small hosted model.
CLOUD_INPUT_PER_M, CLOUD_OUTPUT_PER_M = 0.15, 0.60


@dataclass
class Seed:
    features: list[str]
    keys: dict[str, str] = field(default_factory=dict)  # key id -> secret
    key_features: dict[str, list[str]] = field(default_factory=dict)
    engines: list[str] = field(default_factory=list)


def seed_policy(
    base_url: str, *, budgets: dict[str, float] | None = None, token: str = ADMIN_TOKEN
) -> Seed:
    """Create FEATURES, two keys per feature, ENGINES and monthly budgets (GPU-hours)."""
    budgets = budgets if budgets is not None else {"support-bot": 10.0, "code-review": 2.0}
    seed = Seed(features=list(FEATURES))
    with admin_client(base_url, token) as client:
        for name, fields in FEATURES.items():
            client.post("/api/v1/features", json={"name": name, **fields}).raise_for_status()
            for n in range(2):
                resp = client.post(
                    "/api/v1/keys",
                    json={"name": f"{name}-{n}", "owner": fields["owner"], "features": [name]},
                )
                resp.raise_for_status()
                body = resp.json()
                seed.keys[body["id"]] = body["secret"]
                seed.key_features[body["id"]] = body["features"]
        for name, engine in ENGINES.items():
            client.put(f"/api/v1/engines/{name}", json=engine).raise_for_status()
            seed.engines.append(name)
        for feature, hours in budgets.items():
            client.put(
                f"/api/v1/budgets/{feature}", json={"period": "month", "gpu_hours": hours}
            ).raise_for_status()
    return seed


def make_record(
    *,
    feature: str = "support-bot",
    model: str = "tiny",
    key_id: str | None = None,
    upstream: str = "local-cpu",
    started_at: datetime | None = None,
    input_tokens: int = 100,
    output_tokens: int = 50,
    gpu_seconds: float = 0.5,
    status: str = "ok",
    sidecar_id: str = "sidecar-test",
) -> UsageRecord:
    cloud = (input_tokens * CLOUD_INPUT_PER_M + output_tokens * CLOUD_OUTPUT_PER_M) / 1e6
    return UsageRecord(
        id=str(uuid_utils.uuid7()),
        key_id=key_id,
        feature=feature,
        model=model,
        upstream=upstream,
        sidecar_id=sidecar_id,
        started_at=started_at or datetime.now(UTC),
        ttft_ms=80.0,
        e2e_ms=900.0,
        input_tokens=input_tokens,
        cached_input_tokens=input_tokens // 4,
        output_tokens=output_tokens,
        finish_reason="stop" if status == "ok" else None,
        status=status,
        gpu_seconds=gpu_seconds,
        cost_usd=gpu_seconds * 2.49 / 3600,
        cloud_cost_usd=cloud,
    )


def generate_usage(
    seed: Seed, *, days: int = 7, per_day: int = 200, now: datetime | None = None, rng_seed: int = 7
) -> list[UsageRecord]:
    """Usage spread over the last `days` days, with a daytime peak, per feature / model / key."""
    rng = random.Random(rng_seed)
    openings = random.Random(rng_seed + 1)  # apart, so the other fields stay as they were
    now = now or datetime.now(UTC)
    records: list[UsageRecord] = []
    keys = list(seed.keys)
    for day in range(days):
        for _ in range(per_day):
            key_id = rng.choice(keys) if keys else None
            feature = seed.key_features[key_id][0] if key_id else rng.choice(seed.features)
            hour = min(23, max(0, int(rng.gauss(14, 4))))
            started = (now - timedelta(days=day)).replace(
                hour=hour, minute=rng.randrange(60), second=rng.randrange(60)
            )
            started = min(started, now - timedelta(seconds=1))
            inp, out = rng.randint(20, 400), rng.randint(5, 300)
            record = make_record(
                feature=feature,
                model=rng.choice(MODELS),
                key_id=key_id,
                upstream=rng.choice(seed.engines or ["local-cpu"]),
                started_at=started,
                input_tokens=inp,
                output_tokens=out,
                gpu_seconds=round(0.002 * inp / 10 + 0.01 * out, 4),
                status="ok" if rng.random() > 0.03 else "upstream_error",
            )
            records.append(_with_opening(record, openings))
    return records


def _with_opening(record: UsageRecord, rng: random.Random) -> UsageRecord:
    """What a sidecar's prefix advisor adds: UNSTABLE_FEATURE starts every prompt with a
    timestamp (each opening new, whole 16-token blocks wasted at 1e-4 GPU-s per token); the
    other features keep one system prompt (rarely new)."""
    new = record.feature == UNSTABLE_FEATURE or rng.random() < 0.02
    wasted = (record.input_tokens // 16) * 16 * 1e-4 if record.feature == UNSTABLE_FEATURE else 0.0
    return record.model_copy(
        update={
            "prompt_opening": f"{rng.getrandbits(64) if new else 0:016x}",
            "prompt_opening_new": new,
            "wasted_prefill_gpu_seconds": wasted,
        }
    )


def post_usage(
    base_url: str, records: list[UsageRecord], *, batch_size: int = 1000, token: str = SIDECAR_TOKEN
) -> tuple[int, int]:
    """Ship records through the ingest API; returns (accepted, duplicates)."""
    accepted = duplicates = 0
    with sidecar_client(base_url, token) as client:
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            body = {"records": [r.model_dump(mode="json") for r in chunk]}
            resp = client.post("/api/v1/usage/batch", json=body)
            resp.raise_for_status()
            accepted += resp.json()["accepted"]
            duplicates += resp.json()["duplicates"]
    return accepted, duplicates


def seed_usage(base_url: str, seed: Seed, **kwargs: Any) -> list[UsageRecord]:
    records = generate_usage(seed, **kwargs)
    post_usage(base_url, records)
    return records
