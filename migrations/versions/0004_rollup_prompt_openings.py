"""usage_rollups: prompt-opening sums for the prefix-cache report

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 01:10:00.000000

Sums of what the sidecars' prefix advisors put on each record: requests whose opening was
hashed, openings new on their sidecar, and the wasted-prefill estimate. Rows written before this
revision read 0 (no backfill), as do records from sidecars without the advisor's fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("opening_requests", sa.Integer(), "0"),
    ("new_openings", sa.Integer(), "0"),
    ("wasted_prefill_gpu_seconds", sa.Float(), "0"),
)


def upgrade() -> None:
    with op.batch_alter_table("usage_rollups") as batch:
        for name, type_, default in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("usage_rollups") as batch:
        for name, _, _ in reversed(_COLUMNS):
            batch.drop_column(name)
