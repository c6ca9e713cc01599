"""Engines: upsert by name (PUT), delete. Changes bump the policy revision."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import utcnow
from control_plane.engines.repository import EngineRepository
from control_plane.engines.schemas import EngineIn
from control_plane.errors import NotFound
from control_plane.models import Engine
from control_plane.policy.repository import bump_revision


async def put(session: AsyncSession, name: str, body: EngineIn) -> Engine:
    engine = await EngineRepository(session).get(name)
    if engine is None:
        engine = Engine(name=name, created_at=utcnow())
        session.add(engine)
    for field, value in body.model_dump().items():
        setattr(engine, field, value)
    await bump_revision(session)
    await session.commit()
    return engine


async def get(session: AsyncSession, name: str) -> Engine:
    engine = await EngineRepository(session).get(name)
    if engine is None:
        raise NotFound("engine", name)
    return engine


async def delete(session: AsyncSession, name: str) -> None:
    await session.delete(await get(session, name))
    await bump_revision(session)
    await session.commit()
