"""usage records: prompt_opening (the sidecar's hash of the prompt's first bytes)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:40:00.000000

Records ingested before this revision have no opening; the prefix-cache report skips them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("prompt_opening", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("prompt_opening")
