"""API key schemas. The secret appears in exactly one place: the create/rotate response."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "support-bot-prod",
                    "owner": "support-team",
                    "features": ["support-bot"],
                    "models": ["*"],
                }
            ]
        }
    )
    name: str = Field(min_length=1, max_length=128)
    owner: str = Field(default="", max_length=128)
    features: list[str] = Field(min_length=1, description="allowed features; the first is default")
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    expires_at: datetime | None = None


class KeyUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=128)
    owner: str | None = Field(default=None, max_length=128)
    features: list[str] | None = Field(default=None, min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    enabled: bool | None = None
    expires_at: datetime | None = None


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    owner: str
    prefix: str = Field(description="first characters of the secret, to recognise it")
    features: list[str]
    default_feature: str
    models: list[str]
    enabled: bool
    expires_at: datetime | None
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None


class KeyWithSecret(KeyOut):
    secret: str = Field(description="shown once; only its SHA-256 is stored")
