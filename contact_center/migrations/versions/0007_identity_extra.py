"""Customer identities carry how they were linked (web chat pre-chat email, verified or not);
web chat conversations belong to the visitor who started them (thread key "visitor:<id>")

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_identities", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "extra",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                server_default="{}",
                nullable=False,
            )
        )
    # Web chat conversations from before visitor scoping: the visitor is the customer's one
    # web chat identity (a customer with several, from a merge, keeps them unscoped).
    op.execute(
        "UPDATE conversations SET thread_key = (SELECT 'visitor:' || ci.address"
        " FROM customer_identities AS ci WHERE ci.customer_id = conversations.customer_id"
        " AND ci.kind = 'webchat')"
        " WHERE thread_key IS NULL"
        " AND inbox_id IN (SELECT id FROM inboxes WHERE kind = 'webchat')"
        " AND (SELECT count(*) FROM customer_identities AS ci"
        " WHERE ci.customer_id = conversations.customer_id AND ci.kind = 'webchat') = 1"
    )
    op.execute(
        "UPDATE conversations SET active_key = inbox_id || ':' || thread_key || ':'"
        " || CAST(customer_id AS VARCHAR)"
        " WHERE active_key IS NOT NULL AND thread_key LIKE 'visitor:%'"
        " AND inbox_id IN (SELECT id FROM inboxes WHERE kind = 'webchat')"
    )


def downgrade() -> None:
    # Scoped active keys back to "<inbox>:<customer>" (one per pair: the newest keeps it).
    op.execute(
        "UPDATE conversations SET active_key = NULL WHERE active_key IS NOT NULL"
        " AND thread_key LIKE 'visitor:%' AND EXISTS (SELECT 1 FROM conversations AS newer"
        " WHERE newer.inbox_id = conversations.inbox_id"
        " AND newer.customer_id = conversations.customer_id AND newer.active_key IS NOT NULL"
        " AND newer.id > conversations.id)"
    )
    op.execute(
        "UPDATE conversations SET active_key = inbox_id || ':' || CAST(customer_id AS VARCHAR)"
        " WHERE active_key IS NOT NULL AND thread_key LIKE 'visitor:%'"
    )
    with op.batch_alter_table("customer_identities", schema=None) as batch_op:
        batch_op.drop_column("extra")
