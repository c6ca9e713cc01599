"""latency_rollups: per-minute latency histograms per feature / model

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 01:00:00.000000

Filled on ingest from this revision on. Records ingested before it have no histogram (no
backfill: on a large ledger it would make the upgrade, which runs on start, take minutes), so
the latency report covers only usage received after the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "latency_rollups",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("metric", sa.String(length=8), nullable=False),
        sa.Column("le_ms", sa.Float(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "minute", "feature", "model", "metric", "le_ms", name=op.f("pk_latency_rollups")
        ),
    )
    with op.batch_alter_table("latency_rollups", schema=None) as batch_op:
        batch_op.create_index(
            "ix_latency_rollups_feature_minute", ["feature", "minute"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("latency_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_latency_rollups_feature_minute")
    op.drop_table("latency_rollups")
