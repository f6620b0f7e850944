"""SLA policies and clocks

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import contact_center.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "business_hours",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column(
            "calendar",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", contact_center.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", contact_center.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_business_hours")),
        sa.UniqueConstraint("name", name=op.f("uq_business_hours_name")),
    )
    op.create_table(
        "sla_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column(
            "conditions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "targets",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("business_hours_id", sa.Integer(), nullable=True),
        sa.Column("warn_at", sa.Float(), nullable=False),
        sa.Column(
            "escalations",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", contact_center.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", contact_center.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["business_hours_id"],
            ["business_hours.id"],
            name=op.f("fk_sla_policies_business_hours_id_business_hours"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_policies")),
        sa.UniqueConstraint("name", name=op.f("uq_sla_policies_name")),
    )
    op.create_table(
        "sla_clocks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("open_key", sa.String(length=60), nullable=True),
        sa.Column("target_seconds", sa.Integer(), nullable=False),
        sa.Column("business", sa.Boolean(), nullable=False),
        sa.Column("consumed_seconds", sa.Float(), nullable=False),
        sa.Column(
            "run_started_at", contact_center.models.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("due_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("warn_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_check_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", contact_center.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("warned_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("breached_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", contact_center.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "escalated",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_sla_clocks_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["sla_policies.id"],
            name=op.f("fk_sla_clocks_policy_id_sla_policies"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_clocks")),
        sa.UniqueConstraint("open_key", name=op.f("uq_sla_clocks_open_key")),
    )
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_clocks_closed_at"), ["closed_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sla_clocks_conversation_id_metric"),
            ["conversation_id", "metric"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_sla_clocks_due_at"), ["due_at"], unique=False)
        batch_op.create_index(
            "ix_sla_clocks_next_check_at",
            ["next_check_at"],
            unique=False,
            sqlite_where=sa.text("next_check_at IS NOT NULL"),
            postgresql_where=sa.text("next_check_at IS NOT NULL"),
        )
    # The SLA consumer's mark in the outbox starts at the last position so far: clocks are
    # kept from now on, past conversations get none (docs/architecture.md section 14).
    op.execute(
        "INSERT INTO relay_state (name, sequenced, published) "
        "SELECT 'sla', 0, COALESCE(MAX(position), 0) FROM domain_events"
    )


def downgrade() -> None:
    op.execute("DELETE FROM relay_state WHERE name = 'sla'")
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_sla_clocks_next_check_at",
            sqlite_where=sa.text("next_check_at IS NOT NULL"),
            postgresql_where=sa.text("next_check_at IS NOT NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_sla_clocks_due_at"))
        batch_op.drop_index(batch_op.f("ix_sla_clocks_conversation_id_metric"))
        batch_op.drop_index(batch_op.f("ix_sla_clocks_closed_at"))

    op.drop_table("sla_clocks")
    op.drop_table("sla_policies")
    op.drop_table("business_hours")
