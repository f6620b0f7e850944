"""Ingest: the one function every channel adapter hands its normalized message to.

In one transaction it deduplicates on (inbox, provider message id), resolves the customer from
the sender's identity (following merges), threads the message into a conversation, stores the
message with its attachments and appends the domain events. When it returns, the message is
committed: only then may the adapter answer the provider 2xx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.attachments import AttachmentRejected, AttachmentStore, StoredFile
from contact_center.clock import Clock
from contact_center.customers import active_key, resolve_customer
from contact_center.db import Database
from contact_center.identities import IdentityRef
from contact_center.models import (
    Attachment,
    AuthorType,
    Conversation,
    ConversationStatus,
    Customer,
    DeliveryStatus,
    Direction,
    Inbox,
    Message,
)
from contact_center.sanitize import clean_html, html_to_text
from contact_center.views import conversation_view, message_view

log = logging.getLogger(__name__)

MAX_TEXT = 64 * 1024
CONVERSATION_REF = "conversation:"
RETRIES = 5


class UnknownInbox(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class InboundAttachment:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message from a customer, in the same shape whatever channel it came by."""

    inbox_id: str
    provider_message_id: str
    sender: IdentityRef
    text: str = ""
    html: str | None = None
    subject: str | None = None
    # Provider ids this message replies to (email In-Reply-To/References, a Slack thread):
    # a conversation holding one of them, with the same customer, takes the message.
    thread_refs: tuple[str, ...] = ()
    # The provider thread this message starts or belongs to, stored on a new conversation.
    thread_key: str | None = None
    # Chat-like channels continue the customer's active conversation in the inbox; email
    # (continuous=False) opens a new conversation unless a thread reference matches.
    continuous: bool = True
    language: str | None = None
    attachments: tuple[InboundAttachment, ...] = ()
    sent_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestResult:
    message_id: int
    conversation_id: int
    customer_id: int
    duplicate: bool
    conversation_created: bool = False
    rejected_attachments: tuple[str, ...] = ()


class Ingestor:
    def __init__(self, db: Database, store: AttachmentStore, clock: Clock) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self._inbox_kinds: dict[str, str] = {}

    async def ingest(self, msg: InboundMessage) -> IngestResult:
        if not msg.provider_message_id:
            raise ValueError("an inbound message needs its provider message id")
        stored: list[StoredFile] = []
        rejected: list[str] = []
        for att in msg.attachments:
            try:
                stored.append(self.store.save(att.data, att.filename, att.content_type))
            except AttachmentRejected as exc:
                rejected.append(f"{att.filename or 'attachment'}: {exc}")
        for attempt in range(RETRIES):
            try:
                async with self.db.write() as session:
                    result = await self._ingest_once(session, msg, stored, rejected)
                return result
            except IntegrityError:
                # A concurrent ingest created the same message, identity or active
                # conversation first. Run again: the dedupe check or lookup now sees it.
                if attempt == RETRIES - 1:
                    raise
                log.debug("ingest race on %s, retrying", msg.provider_message_id)
        raise AssertionError("unreachable")

    async def _ingest_once(
        self,
        session: AsyncSession,
        msg: InboundMessage,
        stored: list[StoredFile],
        rejected: list[str],
    ) -> IngestResult:
        existing = (
            await session.execute(
                select(Message.id, Message.conversation_id, Message.customer_id).where(
                    Message.inbox_id == msg.inbox_id,
                    Message.provider_message_id == msg.provider_message_id,
                )
            )
        ).first()
        if existing is not None:
            return IngestResult(existing[0], existing[1], existing[2] or 0, duplicate=True)
        channel = await self._channel(session, msg.inbox_id)
        now = self.clock.now()
        customer, _ = await resolve_customer(session, msg.sender, clock=self.clock)
        conversation, created = await self._thread(session, msg, customer, now)

        html = clean_html(msg.html) if msg.html else None
        text = msg.text or (html_to_text(html) if html else "")
        extra = dict(msg.extra)
        if rejected:
            extra["rejected_attachments"] = rejected
        message = Message(
            conversation_id=conversation.id,
            inbox_id=msg.inbox_id,
            direction=Direction.inbound.value,
            author_type=AuthorType.customer.value,
            customer_id=customer.id,
            private=False,
            text=text[:MAX_TEXT],
            html=html,
            subject=msg.subject,
            provider_message_id=msg.provider_message_id,
            delivery_status=DeliveryStatus.received.value,
            send_attempts=0,
            extra=extra,
            created_at=now,
            sent_at=msg.sent_at,
        )
        session.add(message)
        await session.flush()
        rows = [
            Attachment(
                message_id=message.id,
                filename=f.filename,
                content_type=f.content_type,
                size=f.size,
                sha256=f.sha256,
                storage_key=f.storage_key,
                created_at=now,
            )
            for f in stored
        ]
        session.add_all(rows)
        if rows:
            await session.flush()

        changed = conversation.status in (ConversationStatus.pending, ConversationStatus.snoozed)
        reopened = conversation.status == ConversationStatus.resolved
        if changed or reopened:
            conversation.status = ConversationStatus.open.value
            conversation.resolved_at = None
        conversation.last_message_at = now
        conversation.updated_at = now
        await session.flush()
        conv_data = conversation_view(conversation, channel)
        if created:
            events.append(
                session,
                "conversation.created",
                conv_data,
                clock=self.clock,
                conversation_id=conversation.id,
                customer_id=customer.id,
            )
        elif changed or reopened:
            events.append(
                session,
                "conversation.updated",
                {**conv_data, "reason": "customer_replied"},
                clock=self.clock,
                conversation_id=conversation.id,
                customer_id=customer.id,
            )
        events.append(
            session,
            "message.created",
            message_view(message, channel, rows),
            clock=self.clock,
            conversation_id=conversation.id,
            customer_id=customer.id,
        )
        return IngestResult(
            message.id,
            conversation.id,
            customer.id,
            duplicate=False,
            conversation_created=created,
            rejected_attachments=tuple(rejected),
        )

    async def _channel(self, session: AsyncSession, inbox_id: str) -> str:
        kind = self._inbox_kinds.get(inbox_id)
        if kind is None:
            inbox = await session.get(Inbox, inbox_id)
            if inbox is None:
                raise UnknownInbox(inbox_id)
            kind = self._inbox_kinds[inbox_id] = inbox.kind
        return kind

    async def _thread(
        self, session: AsyncSession, msg: InboundMessage, customer: Customer, now: datetime
    ) -> tuple[Conversation, bool]:
        """The conversation this message belongs to, and whether it was opened for it."""
        if msg.thread_refs:
            found = await self._by_reference(session, msg, customer.id)
            if found is not None:
                return found, False
        key = active_key(msg.inbox_id, customer.id) if msg.continuous else None
        if key is not None:
            found = await session.scalar(select(Conversation).where(Conversation.active_key == key))
            if found is not None:
                return found, False
        conversation = Conversation(
            inbox_id=msg.inbox_id,
            customer_id=customer.id,
            status=ConversationStatus.open.value,
            subject=msg.subject,
            language=msg.language,
            thread_key=msg.thread_key,
            active_key=key,
            created_at=now,
            updated_at=now,
            last_message_at=now,
        )
        session.add(conversation)
        await session.flush()
        return conversation, True

    async def _by_reference(
        self, session: AsyncSession, msg: InboundMessage, customer_id: int
    ) -> Conversation | None:
        refs = list(msg.thread_refs)[-50:]
        # "conversation:<id>" names a conversation directly (a verified reply token).
        direct = [
            int(r.split(":", 1)[1])
            for r in refs
            if r.startswith(CONVERSATION_REF) and r.split(":", 1)[1].isdigit()
        ]
        if direct:
            found = await session.scalar(
                select(Conversation).where(
                    Conversation.id.in_(direct),
                    Conversation.inbox_id == msg.inbox_id,
                    Conversation.customer_id == customer_id,
                )
            )
            if found is not None:
                return found
        # A reference names either a thread or one of the messages in it (ours or theirs).
        conversation = await session.scalar(
            select(Conversation)
            .where(
                Conversation.inbox_id == msg.inbox_id,
                Conversation.thread_key.in_(refs),
                Conversation.customer_id == customer_id,
            )
            .order_by(Conversation.id.desc())
            .limit(1)
        )
        if conversation is not None:
            return conversation
        return await session.scalar(
            select(Conversation)
            .join(Message, Message.conversation_id == Conversation.id)
            .where(
                Message.inbox_id == msg.inbox_id,
                Message.provider_message_id.in_(refs),
                Conversation.customer_id == customer_id,
            )
            .order_by(Conversation.id.desc())
            .limit(1)
        )
