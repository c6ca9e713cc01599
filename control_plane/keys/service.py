"""Key lifecycle: create (secret shown once), rotate (new secret, same id), revoke."""

from __future__ import annotations

import secrets

import uuid_utils
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import utcnow
from control_plane.errors import Conflict, NotFound, Unprocessable
from control_plane.features.repository import FeatureRepository
from control_plane.keys.repository import KeyRepository
from control_plane.keys.schemas import KeyCreate, KeyUpdate
from control_plane.models import ApiKey
from control_plane.policy.repository import bump_revision
from gpuledger.contracts import KEY_PREFIX, hash_key


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def _check_features(session: AsyncSession, features: list[str]) -> None:
    known = await FeatureRepository(session).names()
    missing = [f for f in features if f not in known]
    if missing:
        raise Unprocessable(f"unknown features: {', '.join(missing)}", code="unknown_feature")


async def create(session: AsyncSession, body: KeyCreate) -> tuple[ApiKey, str]:
    await _check_features(session, body.features)
    secret = new_secret()
    key = ApiKey(
        id=f"key_{uuid_utils.uuid7().hex}",
        name=body.name,
        owner=body.owner,
        key_hash=hash_key(secret),
        prefix=secret[:8],
        features=list(dict.fromkeys(body.features)),
        default_feature=body.features[0],
        models=body.models,
        enabled=True,
        expires_at=body.expires_at,
        created_at=utcnow(),
    )
    session.add(key)
    await bump_revision(session)
    await session.commit()
    return key, secret


async def get(session: AsyncSession, key_id: str) -> ApiKey:
    key = await KeyRepository(session).get(key_id)
    if key is None:
        raise NotFound("key", key_id)
    return key


async def update(session: AsyncSession, key_id: str, body: KeyUpdate) -> ApiKey:
    key = await get(session, key_id)
    if key.revoked_at is not None:
        raise Conflict("a revoked key cannot change", code="key_revoked")
    changes = body.model_dump(exclude_unset=True)
    if "features" in changes:
        await _check_features(session, changes["features"])
        changes["features"] = list(dict.fromkeys(changes["features"]))
        changes["default_feature"] = changes["features"][0]
    for field, value in changes.items():
        setattr(key, field, value)
    await bump_revision(session)
    await session.commit()
    return key


async def rotate(session: AsyncSession, key_id: str) -> tuple[ApiKey, str]:
    """The old secret stops working as soon as sidecars pick up the next policy version."""
    key = await get(session, key_id)
    if key.revoked_at is not None:
        raise Conflict("a revoked key cannot be rotated", code="key_revoked")
    secret = new_secret()
    key.key_hash = hash_key(secret)
    key.prefix = secret[:8]
    key.rotated_at = utcnow()
    await bump_revision(session)
    await session.commit()
    return key, secret


async def revoke(session: AsyncSession, key_id: str) -> ApiKey:
    key = await get(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        key.enabled = False
        await bump_revision(session)
        await session.commit()
    return key
