"""Outbound: the one way a reply leaves.

``reply`` records the message as ``queued`` and its ``message.created`` event in one
transaction; the relay turns the event into a ``outbound.send`` job keyed by the message id.
The job claims the message (queued -> sending) in the database, so a job that runs twice, or
two workers racing, send it once. A transient failure puts it back to ``queued`` with a backoff
deadline that the scheduler's sweeper honours; after ``send_max_attempts`` it ends ``failed``
with the reason. A worker that dies mid-send leaves the message ``sending``; the sweeper marks it
``failed`` ("interrupted") after the lease rather than risk sending it twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.clock import Clock
from contact_center.jobs import job
from contact_center.models import (
    Agent,
    Attachment,
    AuthorType,
    Conversation,
    CustomerIdentity,
    DeliveryStatus,
    Direction,
    IdentityKind,
    Inbox,
    Message,
)
from contact_center.sanitize import clean_html, html_to_text
from contact_center.views import message_view

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

MAX_REPLY = 64 * 1024
# A queued message not picked up by then is enqueued again by the sweeper.
REDELIVER_AFTER = timedelta(seconds=30)

# Which identity of the customer a reply on each channel goes to.
CHANNEL_IDENTITY: dict[str, tuple[str, ...]] = {
    "email": (IdentityKind.email,),
    "sms": (IdentityKind.phone, IdentityKind.whatsapp),
    "voice": (IdentityKind.phone, IdentityKind.whatsapp),
    "whatsapp": (IdentityKind.whatsapp, IdentityKind.phone),
    "telegram": (IdentityKind.telegram,),
    "slack": (IdentityKind.slack,),
    "messenger": (IdentityKind.messenger,),
    "instagram": (IdentityKind.instagram,),
    "webchat": (IdentityKind.webchat,),
}


class ReplyError(ValueError):
    """The reply cannot be accepted (the caller shows this to the agent)."""


@dataclass(frozen=True, slots=True)
class InboxConfig:
    id: str
    kind: str
    address: str
    credentials: dict[str, Any]
    api_base_url: str | None
    settings: dict[str, Any]

    @classmethod
    def of(cls, inbox: Inbox) -> InboxConfig:
        return cls(
            inbox.id,
            inbox.kind,
            inbox.address,
            dict(inbox.credentials),
            inbox.api_base_url,
            dict(inbox.settings),
        )


@dataclass(frozen=True, slots=True)
class OutboundAttachment:
    filename: str
    content_type: str
    path: Path


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What a channel adapter needs to send one message. ``message_id`` is the idempotency key."""

    message_id: int
    conversation_id: int
    inbox: InboxConfig
    to_address: str
    text: str
    html: str | None = None
    subject: str | None = None
    # Provider ids earlier in the conversation, oldest first (email threading, Slack threads).
    thread_refs: tuple[str, ...] = ()
    thread_key: str | None = None
    attachments: tuple[OutboundAttachment, ...] = ()
    agent_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str
    status: DeliveryStatus = DeliveryStatus.sent


class SendError(Exception):
    """A send failed. ``retryable`` says whether trying again later may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ChannelSender(Protocol):
    async def send(self, message: OutboundMessage) -> SendResult: ...


class Notifier(Protocol):
    """Tells staff something (an SLA escalation) through an inbox of its channel: an email to
    an address, a Slack message to a channel. Raises ``SendError``."""

    async def notify(self, inbox: Inbox, to: str, subject: str, text: str) -> None: ...


async def reply(
    session: AsyncSession,
    *,
    conversation_id: int,
    agent: Agent | None,
    text: str,
    clock: Clock,
    html: str | None = None,
    private: bool = False,
    client_id: str | None = None,
    automatic: bool = False,
    subject: str | None = None,
    via_inbox_id: str | None = None,
) -> tuple[Message, bool]:
    """Record an agent's reply (or internal note). Returns (message, created); a repeated
    ``client_id`` returns the first message unchanged.

    Without an agent the message is the system's own; ``automatic`` marks it as sent by no
    person (email adds ``Auto-Submitted: auto-replied``), and ``subject`` replaces the
    conversation's subject on it exactly. ``via_inbox_id`` sends it on another of the
    customer's channels (docs/architecture.md §6)."""
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise LookupError("conversation not found")
    if client_id is not None:
        existing = await session.scalar(
            select(Message).where(
                Message.conversation_id == conversation_id, Message.client_id == client_id
            )
        )
        if existing is not None:
            return existing, False
    clean = clean_html(html) if html else None
    body = (text or (html_to_text(clean) if clean else "")).strip()
    if not body:
        raise ReplyError("a reply needs text")
    if len(body) > MAX_REPLY:
        raise ReplyError(f"a reply is at most {MAX_REPLY} characters")
    inbox = await session.get(Inbox, conversation.inbox_id)
    assert inbox is not None
    if via_inbox_id is not None and via_inbox_id != conversation.inbox_id:
        if private:
            raise ReplyError("an internal note is not sent on any channel")
        inbox = await session.get(Inbox, via_inbox_id)
        if inbox is None or not inbox.is_active:
            raise ReplyError(f"no active inbox {via_inbox_id!r}")
    now = clock.now()
    to_address = None
    if not private:
        to_address = await _reply_address(session, conversation.customer_id, inbox.kind)
        if to_address is None:
            raise ReplyError(f"the customer has no {inbox.kind} address to reply to")
    message = Message(
        conversation_id=conversation.id,
        inbox_id=inbox.id,
        direction=Direction.outbound.value,
        author_type=(AuthorType.agent if agent is not None else AuthorType.system).value,
        agent_id=agent.id if agent is not None else None,
        customer_id=conversation.customer_id,
        private=private,
        text=body,
        html=clean,
        client_id=client_id,
        delivery_status=(DeliveryStatus.note if private else DeliveryStatus.queued).value,
        send_attempts=0,
        next_attempt_at=None if private else now + REDELIVER_AFTER,
        to_address=to_address,
        subject=subject,
        extra={"automatic": True} if automatic else {},
        created_at=now,
    )
    session.add(message)
    conversation.updated_at = now
    if not private:
        conversation.last_message_at = now
    await session.flush()
    mentioned = await mentioned_agents(session, body) if private and "@" in body else []
    if mentioned:
        message.extra = {**message.extra, "mentions": [a.id for a in mentioned]}
    events.append(
        session,
        "message.created",
        message_view(message, inbox.kind, []),
        clock=clock,
        conversation_id=conversation.id,
        customer_id=conversation.customer_id,
        agent_id=agent.id if agent is not None else None,
    )
    for person in mentioned:
        if agent is not None and person.id == agent.id:
            continue
        events.append(
            session,
            "mention.created",
            {
                "conversation_id": conversation.id,
                "message_id": message.id,
                "by_agent_id": agent.id if agent is not None else None,
                "by_agent_name": agent.name if agent is not None else "",
                "preview": body[:200],
            },
            clock=clock,
            conversation_id=conversation.id,
            customer_id=conversation.customer_id,
            agent_id=person.id,
        )
    return message, True


MENTION = re.compile(r"(?<![\w@.])@([\w][\w.+-]*)", re.UNICODE)


async def mentioned_agents(session: AsyncSession, text: str) -> list[Agent]:
    """The active agents an internal note names: ``@`` + the local part of their email
    (``@ayse`` for ayse@example.com) or their first name (``@Ayşe``), case-insensitively."""
    tokens = {m.group(1).rstrip(".").casefold() for m in MENTION.finditer(text)}
    if not tokens:
        return []
    found = []
    for person in await session.scalars(select(Agent).where(Agent.is_active.is_(True))):
        local = person.email.split("@", 1)[0].casefold()
        first = (person.name.split() or [""])[0].casefold()
        if local in tokens or first in tokens:
            found.append(person)
    return sorted(found, key=lambda a: a.id)


async def _reply_address(session: AsyncSession, customer_id: int, channel: str) -> str | None:
    kinds = CHANNEL_IDENTITY.get(channel, ())
    if not kinds:
        return None
    rows = (
        await session.execute(
            select(CustomerIdentity.kind, CustomerIdentity.address)
            .where(CustomerIdentity.customer_id == customer_id, CustomerIdentity.kind.in_(kinds))
            .order_by(CustomerIdentity.id.desc())
        )
    ).all()
    ranked = sorted(rows, key=lambda r: kinds.index(r[0]))
    return ranked[0][1] if ranked else None


async def reply_channels(session: AsyncSession, conversation: Conversation) -> list[dict[str, Any]]:
    """Where an agent may answer: the conversation's inbox first, then every other active
    inbox whose kind the customer has an address for (with the address it would go to)."""
    inboxes = (
        await session.scalars(
            select(Inbox).where(Inbox.is_active.is_(True)).order_by(Inbox.name, Inbox.id)
        )
    ).all()
    out = []
    for inbox in sorted(inboxes, key=lambda i: i.id != conversation.inbox_id):
        address = await _reply_address(session, conversation.customer_id, inbox.kind)
        if address is None and inbox.id != conversation.inbox_id:
            continue
        out.append(
            {
                "inbox_id": inbox.id,
                "name": inbox.name,
                "kind": inbox.kind,
                "to_address": address,
                "current": inbox.id == conversation.inbox_id,
            }
        )
    return out


def wants_send(event: dict[str, Any]) -> bool:
    data = event["data"]
    return (
        event["type"] == "message.created"
        and data.get("direction") == Direction.outbound
        and not data.get("private")
        and data.get("delivery_status") == DeliveryStatus.queued
    )


async def set_status(
    session: AsyncSession,
    message: Message,
    status: DeliveryStatus,
    *,
    clock: Clock,
    reason: str | None = None,
    provider_message_id: str | None = None,
    force: bool = False,
) -> bool:
    """Move a message's delivery status forward (never backwards unless ``force``) and append
    ``message.status``. Returns whether anything changed."""
    current = DeliveryStatus(message.delivery_status)
    if not force and status.rank < current.rank:
        return False
    if status == current and provider_message_id in (None, message.provider_message_id):
        return False
    now = clock.now()
    message.delivery_status = status.value
    message.status_at = now
    if reason is not None or status in (DeliveryStatus.sent, DeliveryStatus.delivered):
        message.status_reason = reason
    if provider_message_id is not None:
        message.provider_message_id = provider_message_id
    if status == DeliveryStatus.sent and message.sent_at is None:
        message.sent_at = now
    await session.flush()
    events.append(
        session,
        "message.status",
        {
            "message_id": message.id,
            "conversation_id": message.conversation_id,
            "delivery_status": message.delivery_status,
            "status_reason": message.status_reason,
            "provider_message_id": message.provider_message_id,
        },
        clock=clock,
        conversation_id=message.conversation_id,
        customer_id=message.customer_id,
    )
    return True


@job("outbound.send")
async def send_job(rt: Runtime, payload: dict[str, Any]) -> None:
    """Send one queued message through its channel adapter (idempotent on the message id)."""
    message_id = int(payload["message_id"])
    now = rt.clock.now()
    async with rt.db.write() as session:
        claimed = await session.execute(
            update(Message)
            .where(Message.id == message_id, Message.delivery_status == DeliveryStatus.queued)
            .values(
                delivery_status=DeliveryStatus.sending.value,
                send_claimed_at=now,
                send_attempts=Message.send_attempts + 1,
            )
        )
        if claimed.rowcount == 0:  # type: ignore[attr-defined]
            return  # sent, being sent, or failed already: nothing to do
        outbound = await _load_outbound(session, message_id, rt)
    await rt.committed()
    sender = rt.senders.get(outbound.inbox.kind)
    try:
        if sender is None:
            raise SendError(f"no channel adapter for {outbound.inbox.kind}", retryable=False)
        result = await sender.send(outbound)
    except SendError as exc:
        await _failed(rt, message_id, exc.reason, retryable=exc.retryable)
    except Exception as exc:
        log.exception("send of message %s crashed", message_id)
        await _failed(rt, message_id, f"{type(exc).__name__}: {exc}", retryable=True)
    else:
        async with rt.db.write() as session:
            message = await session.get(Message, message_id, with_for_update=True)
            assert message is not None
            message.send_claimed_at = None
            message.next_attempt_at = None
            status = (
                result.status
                if result.status.rank >= DeliveryStatus.sent.rank
                else (DeliveryStatus.sent)
            )
            # The sweeper may have declared this send interrupted (failed) while it was in
            # flight; the provider's answer is the truth, so it wins over that guess.
            await set_status(
                session,
                message,
                status,
                clock=rt.clock,
                provider_message_id=result.provider_message_id,
                force=message.delivery_status == DeliveryStatus.failed,
            )
    await rt.committed()


async def _failed(rt: Runtime, message_id: int, reason: str, *, retryable: bool) -> None:
    async with rt.db.write() as session:
        message = await session.get(Message, message_id, with_for_update=True)
        assert message is not None
        if message.delivery_status != DeliveryStatus.sending:
            # The sweeper gave up on this send while it was in flight and told the agent it
            # failed: never queue it again behind their back.
            return
        message.send_claimed_at = None
        if retryable and message.send_attempts < rt.settings.send_max_attempts:
            delay = rt.settings.send_backoff_seconds * 2 ** (message.send_attempts - 1)
            message.next_attempt_at = rt.clock.now() + timedelta(seconds=delay)
            await set_status(
                session, message, DeliveryStatus.queued, clock=rt.clock, reason=reason, force=True
            )
        else:
            message.next_attempt_at = None
            await set_status(session, message, DeliveryStatus.failed, clock=rt.clock, reason=reason)


async def _load_outbound(session: AsyncSession, message_id: int, rt: Runtime) -> OutboundMessage:
    message = await session.get(Message, message_id)
    assert message is not None
    conversation = await session.get(Conversation, message.conversation_id)
    inbox = await session.get(Inbox, message.inbox_id)
    assert conversation is not None and inbox is not None
    # The conversation's thread (email references, a Slack thread) belongs to its own inbox:
    # a reply sent on another of the customer's channels starts fresh there.
    same_channel = message.inbox_id == conversation.inbox_id
    refs = (
        (
            await session.scalars(
                select(Message.provider_message_id)
                .where(
                    Message.conversation_id == conversation.id,
                    Message.inbox_id == message.inbox_id,
                    Message.provider_message_id.is_not(None),
                    Message.id != message.id,
                )
                .order_by(Message.id)
            )
        ).all()
        if same_channel
        else []
    )
    attachments = (
        await session.scalars(select(Attachment).where(Attachment.message_id == message.id))
    ).all()
    agent_name = None
    if message.agent_id is not None:
        agent = await session.get(Agent, message.agent_id)
        agent_name = agent.name if agent else None
    return OutboundMessage(
        message_id=message.id,
        conversation_id=conversation.id,
        inbox=InboxConfig.of(inbox),
        to_address=message.to_address or "",
        text=message.text,
        html=message.html,
        subject=message.subject or conversation.subject,
        thread_refs=tuple(r for r in refs if r),
        thread_key=conversation.thread_key if same_channel else None,
        attachments=tuple(
            OutboundAttachment(a.filename, a.content_type, rt.store.path(a.storage_key))
            for a in attachments
        ),
        agent_name=agent_name,
        extra={
            "public_url": rt.settings.public_url,
            "reply_key": rt.settings.derive_key("reply-token"),
            "automatic": bool(message.extra.get("automatic")),
        },
    )


async def sweep(rt: Runtime) -> int:
    """Re-enqueue queued messages whose deadline passed (lost jobs, backoff retries) and fail
    sends interrupted by a dead worker. Run by the scheduler. Returns how many it touched."""
    now = rt.clock.now()
    lease = timedelta(seconds=rt.settings.send_lease_seconds)
    async with rt.db.write() as session:
        due = (
            await session.scalars(
                select(Message)
                .where(
                    Message.delivery_status == DeliveryStatus.queued,
                    Message.next_attempt_at <= now,
                )
                .order_by(Message.next_attempt_at)
                .limit(200)
            )
        ).all()
        for message in due:
            message.next_attempt_at = now + REDELIVER_AFTER
        stuck = (
            await session.scalars(
                select(Message).where(
                    Message.delivery_status == DeliveryStatus.sending,
                    Message.send_claimed_at <= now - lease,
                )
            )
        ).all()
        for message in stuck:
            message.send_claimed_at = None
            await set_status(
                session,
                message,
                DeliveryStatus.failed,
                clock=rt.clock,
                reason="sending was interrupted; it may or may not have reached the customer",
            )
        due_ids = [(m.id, m.send_attempts) for m in due]
    for message_id, attempts in due_ids:
        await rt.jobs.enqueue(
            "outbound.send", {"message_id": message_id}, key=f"send:{message_id}:{attempts}"
        )
    if stuck:
        await rt.committed()
    return len(due_ids) + len(stuck)
