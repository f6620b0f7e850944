"""IMAP mailbox polling state; index for capping automatic replies per recipient

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import contact_center.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_states",
        sa.Column("inbox_id", sa.String(length=64), nullable=False),
        sa.Column("folder", sa.String(length=200), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("next_poll_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "last_polled_at", contact_center.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column(
            "skipped",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["inbox_id"],
            ["inboxes.id"],
            name=op.f("fk_mailbox_states_inbox_id_inboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("inbox_id", name=op.f("pk_mailbox_states")),
    )
    # Partial: only outbound messages have a recipient address worth counting.
    op.create_index(
        "ix_messages_to_address_created_at",
        "messages",
        ["to_address", "created_at"],
        unique=False,
        sqlite_where=sa.text("to_address IS NOT NULL"),
        postgresql_where=sa.text("to_address IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_to_address_created_at", table_name="messages")
    op.drop_table("mailbox_states")
