"""The core model. Kept in one module so relationships never create import cycles.

Tables owned by other packages (routing, tickets, knowledge base) live in their own packages
and share this ``Base`` (and therefore one metadata and one migration history).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from contact_center.clock import as_utc


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores naive values) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use the Clock")
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


JSONType = JSON().with_variant(JSONB(), "postgresql")
BigID = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Role(enum.StrEnum):
    admin = "admin"
    supervisor = "supervisor"
    agent = "agent"

    @property
    def rank(self) -> int:
        return {"agent": 1, "supervisor": 2, "admin": 3}[self.value]


class ChannelKind(enum.StrEnum):
    email = "email"
    sms = "sms"
    whatsapp = "whatsapp"
    voice = "voice"
    webchat = "webchat"
    telegram = "telegram"
    slack = "slack"
    messenger = "messenger"
    instagram = "instagram"


class IdentityKind(enum.StrEnum):
    """How a customer is addressed on a channel. SMS, WhatsApp and voice share ``phone``
    numbers (E.164) so one person stays one customer across them."""

    email = "email"
    phone = "phone"
    whatsapp = "whatsapp"
    telegram = "telegram"
    slack = "slack"
    messenger = "messenger"
    instagram = "instagram"
    webchat = "webchat"


class ConversationStatus(enum.StrEnum):
    open = "open"
    pending = "pending"  # waiting on the customer
    snoozed = "snoozed"
    resolved = "resolved"


class Priority(enum.IntEnum):
    low = 1
    normal = 2
    high = 3
    urgent = 4


class Direction(enum.StrEnum):
    inbound = "in"
    outbound = "out"


class AuthorType(enum.StrEnum):
    customer = "customer"
    agent = "agent"
    system = "system"


class DeliveryStatus(enum.StrEnum):
    """Forward-only delivery states; ``rank`` orders them (a status never moves backwards)."""

    received = "received"  # inbound messages
    note = "note"  # internal notes: never sent
    queued = "queued"
    sending = "sending"
    sent = "sent"
    delivered = "delivered"
    undelivered = "undelivered"
    failed = "failed"
    read = "read"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


_STATUS_RANK = {
    DeliveryStatus.received: 0,
    DeliveryStatus.note: 0,
    DeliveryStatus.queued: 1,
    DeliveryStatus.sending: 2,
    DeliveryStatus.sent: 3,
    # A provider cannot take a delivery back: delivered outranks the failures it may follow.
    DeliveryStatus.undelivered: 4,
    DeliveryStatus.failed: 4,
    DeliveryStatus.delivered: 5,
    DeliveryStatus.read: 6,
}


class TeamMember(Base):
    __tablename__ = "team_members"
    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Agent(Base):
    """A person who signs in: agent, supervisor or admin."""

    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20), default=Role.agent.value)
    languages: Mapped[list[str]] = mapped_column(JSONType, default=list)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    locale: Mapped[str] = mapped_column(String(16), default="en")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]
    # Routing: {"skill": level 1-10}; {"voice": n, "chat": n, "email": n} (missing = default).
    skills: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    capacity: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    voice_blocks_chat: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    teams: Mapped[list[Team]] = relationship(
        secondary="team_members", back_populates="members", lazy="selectin"
    )


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]

    members: Mapped[list[Agent]] = relationship(
        secondary="team_members", back_populates="teams", lazy="selectin"
    )


class CannedResponse(Base):
    """A reply agents insert with a shortcut; ``{{customer.name}}``-style placeholders are
    filled in the console. Without a team it is everyone's."""

    __tablename__ = "canned_responses"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    shortcut: Mapped[str] = mapped_column(String(40), unique=True)
    body: Mapped[str] = mapped_column(Text)
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ConversationRead(Base):
    """How far an agent has read a conversation: the customer's messages after
    ``last_read_message_id`` are unread for that agent (the console's unread counts)."""

    __tablename__ = "conversation_reads"
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    last_read_message_id: Mapped[int] = mapped_column(Integer, default=0)
    read_at: Mapped[datetime]


class AuthToken(Base):
    """An API or browser session. Only the SHA-256 of the secret is stored."""

    __tablename__ = "auth_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(20), default="api")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Inbox(Base):
    """A configured channel endpoint: its address, credentials and provider API base URL."""

    __tablename__ = "inboxes"
    __table_args__ = (UniqueConstraint("kind", "address"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(254))
    credentials: Mapped[dict[str, Any]] = mapped_column(default=dict)
    api_base_url: Mapped[str | None] = mapped_column(String(500))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    locale: Mapped[str | None] = mapped_column(String(16))
    tier: Mapped[str] = mapped_column(String(32), default="standard")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Set when this customer was merged into another; identity resolution follows it.
    merged_into_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    identities: Mapped[list[CustomerIdentity]] = relationship(
        back_populates="customer", lazy="selectin", order_by="CustomerIdentity.id"
    )


class CustomerIdentity(Base):
    """One address of a customer on one channel; unique across all customers."""

    __tablename__ = "customer_identities"
    __table_args__ = (UniqueConstraint("kind", "address"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str | None] = mapped_column(String(200))
    # How the identity was linked when no channel proved it: a web chat visitor who gave an
    # email in the pre-chat form carries {"email", "email_verified"} (channels/webchat.py).
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime]

    customer: Mapped[Customer] = relationship(back_populates="identities")


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index(None, "inbox_id", "thread_key"),
        Index(None, "status", "last_message_at"),
        Index(None, "customer_id", "created_at"),
        Index(None, "assignee_id", "status"),
        Index(None, "assignee_id", "resolved_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    inbox_id: Mapped[str] = mapped_column(ForeignKey("inboxes.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(20), default=ConversationStatus.open.value)
    priority: Mapped[int] = mapped_column(Integer, default=Priority.normal.value)
    subject: Mapped[str | None] = mapped_column(String(500))
    language: Mapped[str | None] = mapped_column(String(16))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    # Provider thread (email root Message-ID, Slack thread ts, ...), when the channel has one.
    thread_key: Mapped[str | None] = mapped_column(String(500))
    # "<inbox>:<customer>" while a chat-like conversation is active: at most one per pair.
    active_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_message_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("inbox_id", "provider_message_id"),
        # Partial: inbound messages (no client id, never re-sent) do not pay for these.
        Index(
            "uq_messages_conversation_id_client_id",
            "conversation_id",
            "client_id",
            unique=True,
            sqlite_where=text("client_id IS NOT NULL"),
            postgresql_where=text("client_id IS NOT NULL"),
        ),
        Index(None, "conversation_id", "created_at"),
        Index(
            "ix_messages_next_attempt_at",
            "next_attempt_at",
            sqlite_where=text("next_attempt_at IS NOT NULL"),
            postgresql_where=text("next_attempt_at IS NOT NULL"),
        ),
        # Automatic replies are capped per recipient per day (contact_center/autoreply.py).
        Index(
            "ix_messages_to_address_created_at",
            "to_address",
            "created_at",
            sqlite_where=text("to_address IS NOT NULL"),
            postgresql_where=text("to_address IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    inbox_id: Mapped[str] = mapped_column(ForeignKey("inboxes.id"))
    direction: Mapped[str] = mapped_column(String(3))
    author_type: Mapped[str] = mapped_column(String(20))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(500))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    # Chosen by the sending client so a resent reply is not a second message.
    client_id: Mapped[str | None] = mapped_column(String(64))
    delivery_status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str | None] = mapped_column(Text)
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    send_claimed_at: Mapped[datetime | None]
    # The customer address a reply goes to (defaults to the conversation's channel identity).
    to_address: Mapped[str | None] = mapped_column(String(254))
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    status_at: Mapped[datetime | None]

    attachments: Mapped[list[Attachment]] = relationship(
        lazy="selectin", order_by="Attachment.id", back_populates="message"
    )


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(BigID)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]

    message: Mapped[Message] = relationship(back_populates="attachments")


class DomainEvent(Base):
    """The outbox: append-only, written in the same transaction as the change it describes.

    ``id`` is the insertion order; ``position`` is given by the relay, in the order events are
    published, and is the id clients resume from (it never has gaps visible as reordering).
    """

    __tablename__ = "domain_events"
    __table_args__ = (
        # The relay's "next events to number": only the few not yet sequenced are indexed.
        Index(
            "ix_domain_events_unsequenced",
            "id",
            sqlite_where=text("position IS NULL"),
            postgresql_where=text("position IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    position: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    customer_id: Mapped[int | None] = mapped_column(BigInteger)
    agent_id: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class RelayState(Base):
    """Where the outbox relay stands: last position given, last position published."""

    __tablename__ = "relay_state"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    sequenced: Mapped[int] = mapped_column(BigInteger, default=0)
    published: Mapped[int] = mapped_column(BigInteger, default=0)


class MailboxState(Base):
    """Where polling of an email inbox's IMAP mailbox stands: one row per inbox.

    ``last_uid`` only moves after the message with that UID is committed, so a crash re-fetches
    it (ingest dedupes on the Message-ID). A changed ``uidvalidity`` or folder starts over from
    UID 1, which dedupe makes harmless. ``claimed_by`` is a lease: one poll at a time.
    """

    __tablename__ = "mailbox_states"
    inbox_id: Mapped[str] = mapped_column(
        ForeignKey("inboxes.id", ondelete="CASCADE"), primary_key=True
    )
    folder: Mapped[str | None] = mapped_column(String(200))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    next_poll_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None]
    last_polled_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None]
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # The latest messages skipped as unreadable: [{"uid", "reason", "at"}], newest last.
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
