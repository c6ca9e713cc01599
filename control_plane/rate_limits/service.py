"""Rate-limit policies: one rule per scope target (a second one is a 409)."""

from __future__ import annotations

import uuid_utils
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import utcnow
from control_plane.errors import Conflict, NotFound
from control_plane.features.repository import FeatureRepository
from control_plane.keys.repository import KeyRepository
from control_plane.models import RateLimitRule
from control_plane.policy.repository import bump_revision
from control_plane.rate_limits.repository import RateLimitRepository
from control_plane.rate_limits.schemas import RateLimitIn


async def _check_targets(session: AsyncSession, body: RateLimitIn) -> None:
    if body.key_id is not None and await KeyRepository(session).get(body.key_id) is None:
        raise NotFound("key", body.key_id)
    if body.feature is not None and await FeatureRepository(session).get(body.feature) is None:
        raise NotFound("feature", body.feature)


async def create(session: AsyncSession, body: RateLimitIn) -> RateLimitRule:
    await _check_targets(session, body)
    repo = RateLimitRepository(session)
    if await repo.find_scope(body.scope, body.key_id, body.feature) is not None:
        raise Conflict("a rate limit for this scope exists; update it", code="rate_limit_exists")
    rule = RateLimitRule(
        id=f"rl_{uuid_utils.uuid7().hex}", created_at=utcnow(), **body.model_dump()
    )
    session.add(rule)
    await bump_revision(session)
    await session.commit()
    return rule


async def replace(session: AsyncSession, rule_id: str, body: RateLimitIn) -> RateLimitRule:
    rule = await RateLimitRepository(session).get(rule_id)
    if rule is None:
        raise NotFound("rate_limit", rule_id)
    await _check_targets(session, body)
    for field, value in body.model_dump().items():
        setattr(rule, field, value)
    await bump_revision(session)
    await session.commit()
    return rule


async def delete(session: AsyncSession, rule_id: str) -> None:
    rule = await RateLimitRepository(session).get(rule_id)
    if rule is None:
        raise NotFound("rate_limit", rule_id)
    await session.delete(rule)
    await bump_revision(session)
    await session.commit()
