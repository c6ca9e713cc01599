"""Policy snapshot for sidecars.

version = "<revision>.<budget bucket>": the revision increases with every admin change; the
bucket is a short hash of each budget's period start and used GPU-seconds rounded down to
`policy_budget_bucket_gpu_seconds`, so the ETag also changes when budget state moves materially
(or a period rolls over), but not on every ingested record.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.budgets.service import list_views
from control_plane.features.repository import FeatureRepository
from control_plane.keys.repository import KeyRepository
from control_plane.models import Engine, RateLimitRule
from control_plane.policy.repository import current_revision
from gpuledger.contracts import (
    EnginePolicy,
    FeaturePolicy,
    KeyPolicy,
    PolicySnapshot,
    RateLimitPolicy,
    RateLimits,
)


async def build_snapshot(session: AsyncSession, bucket_gpu_seconds: float) -> PolicySnapshot:
    revision = await current_revision(session)
    features, _ = await FeatureRepository(session).list()
    keys, _ = await KeyRepository(session).list(include_revoked=False)
    rules = (await session.execute(select(RateLimitRule).order_by(RateLimitRule.id))).scalars()
    engines = (await session.execute(select(Engine).order_by(Engine.name))).scalars()
    views = await list_views(session)

    digest = hashlib.sha256()
    for v in views:
        bucket = int(v.used // bucket_gpu_seconds)
        digest.update(f"{v.budget.feature}|{v.start.isoformat()}|{bucket};".encode())
    version = f"{revision}.{digest.hexdigest()[:8]}"

    return PolicySnapshot(
        version=version,
        keys=[
            KeyPolicy(
                id=k.id,
                name=k.name,
                owner=k.owner,
                key_hash=k.key_hash,
                features=k.features,
                default_feature=k.default_feature,
                models=k.models,
                enabled=k.enabled,
                expires_at=k.expires_at,
            )
            for k in keys
        ],
        features=[
            FeaturePolicy(
                name=f.name,
                owner=f.owner,
                default_max_tokens=f.default_max_tokens,
                max_tokens_cap=f.max_tokens_cap,
                over_cap=f.over_cap,
                max_prompt_tokens=f.max_prompt_tokens,
                priority=f.priority,
                slo_ttft_ms=f.slo_ttft_ms,
                slo_e2e_ms=f.slo_e2e_ms,
                fallback_route=f.fallback_route,
            )
            for f in features
        ],
        rate_limits=[
            RateLimitPolicy(
                scope=r.scope,
                key_id=r.key_id,
                feature=r.feature,
                limits=RateLimits(
                    requests_per_minute=r.requests_per_minute,
                    tokens_per_minute=r.tokens_per_minute,
                    concurrent_requests=r.concurrent_requests,
                    gpu_seconds_per_minute=r.gpu_seconds_per_minute,
                ),
            )
            for r in rules
        ],
        budgets=[v.to_state() for v in views],
        engines=[
            EnginePolicy(
                name=e.name,
                url=e.url,
                model=e.model,
                gpu_type=e.gpu_type,
                gpus=e.gpus,
                hourly_rate_usd=e.hourly_rate_usd,
                prefill_cost_factor=e.prefill_cost_factor,
                max_num_seqs=e.max_num_seqs,
            )
            for e in engines
        ],
    )
