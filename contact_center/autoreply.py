"""Automatic acknowledgements ("we received your request") that can never loop.

When a customer's message opens a conversation in an inbox with ``settings.auto_reply``, the
job ``auto_reply.send`` records a system reply through ``outbound.reply`` (so it is sent,
retried and tracked like any other reply; email marks it ``Auto-Submitted: auto-replied``).
It is never sent when:

- the customer's message was automatic (``extra.automatic``: the email adapter sets it for
  auto-replies, bounces, lists and bulk mail, RFC 3834);
- the recipient is one of our own inboxes;
- the recipient already got ``max_per_sender_per_day`` automatic replies in the last 24 hours,
  counted in the database under a lock on the recipient's identity, so the cap holds across
  processes and two systems answering each other stop after at most that many.

The job is idempotent: the reply's ``client_id`` names the message it answers.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from contact_center.inbox_config import AutoReplyConfig, InboxConfigError
from contact_center.jobs import job
from contact_center.models import (
    AuthorType,
    Conversation,
    CustomerIdentity,
    Direction,
    Inbox,
    Message,
)
from contact_center.outbound import CHANNEL_IDENTITY, _reply_address, reply

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

JOB = "auto_reply.send"
CLIENT_PREFIX = "auto-reply:"
CHANNELS = frozenset({"email"})
WINDOW = timedelta(hours=24)


def wants_auto_reply(event: dict[str, Any]) -> bool:
    return event["type"] == "conversation.created" and event["data"].get("channel") in CHANNELS


@job(JOB)
async def auto_reply_job(rt: Runtime, payload: dict[str, Any]) -> None:
    if await send_auto_reply(rt, int(payload["conversation_id"])):
        await rt.committed()


async def send_auto_reply(rt: Runtime, conversation_id: int) -> bool:
    """Record the inbox's automatic reply to the message that opened the conversation, if it
    is due. Returns whether a reply was recorded now."""
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            return False
        inbox = await session.get(Inbox, conversation.inbox_id)
        if inbox is None or not inbox.is_active or inbox.kind not in CHANNELS:
            return False
        try:
            config = AutoReplyConfig.of(inbox.settings)
        except InboxConfigError as exc:
            log.warning("inbox %s: auto-reply not sent: %s", inbox.id, exc)
            return False
        if config is None:
            return False
        first = await session.scalar(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.id)
            .limit(1)
        )
        if (
            first is None
            or first.direction != Direction.inbound
            or first.author_type != AuthorType.customer
            or first.extra.get("automatic")
        ):
            return False
        address = await _reply_address(session, conversation.customer_id, inbox.kind)
        if address is None:
            return False
        ours = await session.scalar(
            select(Inbox.id).where(func.lower(Inbox.address) == address.lower()).limit(1)
        )
        if ours is not None:
            log.info("no auto-reply to our own inbox %s", ours)
            return False
        # One auto-reply decision per recipient at a time (SQLite serializes writers anyway).
        await session.execute(
            select(CustomerIdentity.id)
            .where(
                CustomerIdentity.kind.in_(CHANNEL_IDENTITY[inbox.kind]),
                CustomerIdentity.address == address,
            )
            .with_for_update()
        )
        client_id = f"{CLIENT_PREFIX}{first.id}"
        done = await session.scalar(
            select(Message.id).where(
                Message.conversation_id == conversation_id, Message.client_id == client_id
            )
        )
        if done is not None:
            return False
        now = rt.clock.now()
        recent = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(
                Message.to_address == address,
                Message.created_at > now - WINDOW,
                Message.client_id.like(f"{CLIENT_PREFIX}%"),
            )
        )
        if (recent or 0) >= config.max_per_sender_per_day:
            log.info("no auto-reply to %s: %s sent in 24 h (the cap)", address, recent)
            return False
        await reply(
            session,
            conversation_id=conversation_id,
            agent=None,
            text=config.text,
            clock=rt.clock,
            client_id=client_id,
            automatic=True,
            subject=config.subject_for(conversation.subject),
        )
        return True
