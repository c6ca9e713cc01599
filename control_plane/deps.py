"""Typed FastAPI dependencies: the DB session and the two kinds of bearer credentials."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.errors import Forbidden, Unauthorized
from control_plane.metrics import ControlPlaneMetrics
from control_plane.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="Admin or sidecar bearer token")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    # Services commit explicitly (an ack must only go out after its commit); anything left
    # uncommitted when the request ends is rolled back by close().
    async with request.app.state.sessionmaker() as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """For routes that only read: on SQLite it does not wait for the writer (see db.py)."""
    async with request.app.state.read_sessionmaker() as session:
        yield session


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ControlPlaneMetrics:
    metrics: ControlPlaneMetrics = request.app.state.metrics
    return metrics


def _matches(token: str, allowed: list[str]) -> bool:
    # Compare against every token (no early exit) in constant time per token.
    found = False
    for candidate in allowed:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def _token(creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthorized("missing bearer token")
    return creds.credentials


async def require_admin(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    token = _token(creds)
    settings: Settings = request.app.state.settings
    if _matches(token, settings.admin_token_list):
        return "admin"
    if _matches(token, settings.sidecar_token_list):
        raise Forbidden("a sidecar token cannot use the admin API")
    raise Unauthorized("unknown bearer token")


async def require_sidecar(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    token = _token(creds)
    settings: Settings = request.app.state.settings
    if _matches(token, settings.sidecar_token_list):
        return "sidecar"
    if _matches(token, settings.admin_token_list):
        raise Forbidden("admin tokens cannot act as a sidecar; use a sidecar token")
    raise Unauthorized("unknown bearer token")


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ControlPlaneMetrics, Depends(get_metrics)]
AdminDep = Annotated[str, Depends(require_admin)]
SidecarDep = Annotated[str, Depends(require_sidecar)]
