"""Feature lifecycle. Every change bumps the policy revision in the same transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.errors import Conflict, NotFound, Unprocessable
from control_plane.features.repository import FeatureRepository
from control_plane.features.schemas import FeatureCreate, FeatureUpdate
from control_plane.models import Feature
from control_plane.policy.repository import bump_revision


def _check_caps(feature: Feature) -> None:
    if feature.default_max_tokens > feature.max_tokens_cap:
        raise Unprocessable(
            "default_max_tokens must not exceed max_tokens_cap", code="invalid_max_tokens"
        )


async def create(session: AsyncSession, body: FeatureCreate) -> Feature:
    repo = FeatureRepository(session)
    if await repo.get(body.name) is not None:
        raise Conflict(f"feature {body.name!r} already exists", code="feature_exists")
    feature = Feature(**body.model_dump())
    _check_caps(feature)
    session.add(feature)
    await bump_revision(session)
    await session.commit()
    return feature


async def get(session: AsyncSession, name: str) -> Feature:
    feature = await FeatureRepository(session).get(name)
    if feature is None:
        raise NotFound("feature", name)
    return feature


async def update(session: AsyncSession, name: str, body: FeatureUpdate) -> Feature:
    feature = await get(session, name)
    for field, value in body.model_dump(exclude_unset=True).items():
        setattr(feature, field, value)
    _check_caps(feature)
    await bump_revision(session)
    await session.commit()
    return feature


async def delete(session: AsyncSession, name: str) -> None:
    feature = await get(session, name)
    await session.delete(feature)
    await bump_revision(session)
    await session.commit()
