"""Routing ranks on one time scale: live tasks ranked a year behind (no SLA) are re-ranked

Tasks without an SLA deadline used to rank at their virtual deadline plus a year, behind every
task with one; now they rank at ``enqueued_at + DEFAULT_TARGET_SECONDS`` less priority bonuses
relative to normal (docs/architecture.md §12). Live tasks queued before this change are moved
to the new scale, so they are not stranded behind new work for a year.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op

from contact_center.models import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_OFFSET = 365 * 24 * 3600.0
DEFAULT_TARGET_SECONDS = 3600.0
NORMAL_BONUS = 2 * 300.0  # the old rank counted normal priority (2) as two levels of bonus


def upgrade() -> None:
    bind = op.get_bind()
    tasks = sa.table(
        "routing_tasks",
        sa.column("id", sa.BigInteger),
        sa.column("rank", sa.Float),
        sa.column("enqueued_at", UTCDateTime()),
        sa.column("active_conversation_id", sa.BigInteger),
    )
    rows = bind.execute(
        sa.select(tasks.c.id, tasks.c.rank, tasks.c.enqueued_at).where(
            tasks.c.active_conversation_id.is_not(None)
        )
    ).all()
    for task_id, rank, enqueued_at in rows:
        if enqueued_at is None:
            continue
        queued = (
            enqueued_at if enqueued_at.tzinfo else enqueued_at.replace(tzinfo=UTC)
        ).timestamp()
        if rank > queued + OLD_OFFSET / 2:  # ranked on the old no-SLA scale
            new = rank - OLD_OFFSET + DEFAULT_TARGET_SECONDS + NORMAL_BONUS
            bind.execute(sa.update(tasks).where(tasks.c.id == task_id).values(rank=new))


def downgrade() -> None:
    pass  # the old scale is not restored: ranks are re-derived as tasks are queued
