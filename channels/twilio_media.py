"""Inbound MMS / WhatsApp media: downloaded after the webhook's ack, one job per item.

Twilio waits at most 15 s for a webhook, and a provider hears 2xx only after the commit, so the
webhook stores the message with ``extra["media"] = [{url, content_type, status: "pending"}]``
and answers; ``twilio.media`` jobs (key ``twilio-media:<message id>:<index>``) then fetch each
URL with HTTP Basic auth (account SID + auth token), following Twilio's redirect to its CDN,
from Twilio's hosts only (``channels.media``), and store it as an attachment of the message.
"""

from __future__ import annotations

import copy
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from channels.media import MediaError, MediaHosts, fetch_media
from contact_center import events
from contact_center.attachments import AttachmentRejected
from contact_center.jobs import MAX_TRIES, RetryJob, job
from contact_center.models import Attachment, Direction, Inbox, Message
from contact_center.runtime import Runtime
from contact_center.views import message_view

log = logging.getLogger(__name__)

MAX_MEDIA_ITEMS = 10  # Twilio sends at most 10 per message
MEDIA_JOB = "twilio.media"
MEDIA_TIMEOUT = 30.0
MEDIA_MAX_ATTEMPTS = MAX_TRIES  # the job runners' tries: the last one records the failure
MEDIA_PENDING, MEDIA_STORED, MEDIA_FAILED = "pending", "stored", "download_failed"
# A message whose media is still pending this long after it came (its jobs lost with a dead
# worker or process) has them enqueued again by the sweep.
MEDIA_SWEEP_AFTER = timedelta(minutes=10)

# Twilio's media hosts: the API (which answers with a redirect to a short-lived CDN URL) and
# its CDN; accounts without media authentication still get Twilio's bucket on S3.
TWILIO_MEDIA_HOSTS = MediaHosts(
    hosts=frozenset({"api.twilio.com", "media.twiliocdn.com", "mms.twiliocdn.com"}),
    suffixes=(".twiliocdn.com",),
    path_prefixes=(("s3-external-1.amazonaws.com", "/media.twiliocdn.com/"),),
)
# Basic auth (account SID + auth token) goes to the API only, never to a CDN.
MEDIA_AUTH_HOSTS = frozenset({"api.twilio.com"})


async def mark_media_due(rt: Runtime, message_id: int) -> None:
    """Give a message with media a sweep deadline (``next_attempt_at``, indexed), kept if set:
    the webhook does this before enqueueing the jobs, so a lost job is found again."""
    async with rt.db.write() as session:
        await session.execute(
            update(Message)
            .where(Message.id == message_id, Message.next_attempt_at.is_(None))
            .values(next_attempt_at=rt.clock.now() + MEDIA_SWEEP_AFTER)
        )


async def sweep(rt: Runtime) -> int:
    """Enqueue again the media of inbound messages past their deadline that still have items
    pending; clear the deadline of those that have none. Run by the scheduler."""
    now = rt.clock.now()
    async with rt.db.write() as session:
        due = (
            await session.execute(
                select(Message.id, Message.extra)
                .where(Message.direction == Direction.inbound, Message.next_attempt_at <= now)
                .order_by(Message.next_attempt_at)
                .limit(100)
                .with_for_update(skip_locked=True)
            )
        ).all()
        pending = [mid for mid, extra in due if _has_pending(extra)]
        done = [mid for mid, extra in due if not _has_pending(extra)]
        if pending:
            await session.execute(
                update(Message)
                .where(Message.id.in_(pending))
                .values(next_attempt_at=now + MEDIA_SWEEP_AFTER)
            )
        if done:
            await session.execute(
                update(Message).where(Message.id.in_(done)).values(next_attempt_at=None)
            )
    for message_id in pending:
        log.info("media of message %s still pending: enqueued again", message_id)
        await enqueue_media(rt, message_id)
    return len(pending)


def _has_pending(extra: dict[str, Any] | None) -> bool:
    return any(
        isinstance(item, dict) and item.get("status") == MEDIA_PENDING
        for item in (extra or {}).get("media") or []
    )


async def enqueue_media(rt: Runtime, message_id: int) -> None:
    """One job per media item still pending, keyed by message id and index."""
    async with rt.db.read() as session:
        extra = await session.scalar(select(Message.extra).where(Message.id == message_id))
    for index, item in enumerate((extra or {}).get("media") or []):
        if isinstance(item, dict) and item.get("status") == MEDIA_PENDING:
            await rt.jobs.enqueue(
                MEDIA_JOB,
                {"message_id": message_id, "index": index},
                key=f"twilio-media:{message_id}:{index}",
            )


@job(MEDIA_JOB)
async def media_job(rt: Runtime, payload: dict[str, Any]) -> None:
    """Download one ``MediaUrlN`` of an inbound message into an attachment.

    Idempotent: an item that is no longer pending is left alone, and the attachment row and the
    item's new status are written together under the message's row lock. Permanent failures
    (host not allowed, 4xx, too large, type refused) are recorded on the item; transient ones
    count an attempt and raise ``RetryJob`` until ``MEDIA_MAX_ATTEMPTS``.
    """
    message_id, index = int(payload["message_id"]), int(payload["index"])
    async with rt.db.read() as session:
        row = (
            await session.execute(
                select(Message.extra, Inbox)
                .join(Inbox, Inbox.id == Message.inbox_id)
                .where(Message.id == message_id)
            )
        ).first()
    if row is None:
        return
    extra, inbox = row
    items = (extra or {}).get("media") or []
    if index >= len(items) or items[index].get("status") != MEDIA_PENDING:
        return
    item = items[index]
    try:
        fetched = await fetch_media(
            str(item["url"]),
            TWILIO_MEDIA_HOSTS.with_own(inbox.api_base_url),
            max_bytes=rt.store.max_bytes,
            auth=(
                str(inbox.credentials.get("account_sid", "")),
                str(inbox.credentials.get("auth_token", "")),
            ),
            auth_hosts=MEDIA_AUTH_HOSTS,
            timeout=MEDIA_TIMEOUT,
        )
        stored = rt.store.save(
            fetched.data, fetched.filename, fetched.content_type or item.get("content_type")
        )
    except AttachmentRejected as exc:
        await _media_failed(rt, message_id, index, str(exc), permanent=True)
        return
    except MediaError as exc:
        if await _media_failed(rt, message_id, index, exc.reason, permanent=exc.permanent):
            raise RetryJob(f"media {index} of message {message_id}: {exc.reason}") from exc
        return
    async with rt.db.write() as session:
        message = await session.get(Message, message_id, with_for_update=True)
        if message is None:
            return
        media = copy.deepcopy((message.extra or {}).get("media") or [])
        if index >= len(media) or media[index].get("status") != MEDIA_PENDING:
            return  # another run stored it (or gave up) meanwhile
        attachment = Attachment(
            message_id=message.id,
            filename=stored.filename,
            content_type=stored.content_type,
            size=stored.size,
            sha256=stored.sha256,
            storage_key=stored.storage_key,
            created_at=rt.clock.now(),
        )
        session.add(attachment)
        await session.flush()
        media[index] |= {"status": MEDIA_STORED, "attachment_id": attachment.id}
        media[index].pop("reason", None)
        message.extra = {**message.extra, "media": media}
        if not _has_pending(message.extra):
            message.next_attempt_at = None  # nothing left for the sweep
        query = select(Attachment).where(Attachment.message_id == message.id)
        attachments = (await session.scalars(query.order_by(Attachment.id))).all()
        events.append(
            session,
            "message.updated",
            {**message_view(message, inbox.kind, list(attachments)), "reason": "attachment_added"},
            clock=rt.clock,
            conversation_id=message.conversation_id,
            customer_id=message.customer_id,
        )
    await rt.committed()


async def _media_failed(
    rt: Runtime, message_id: int, index: int, reason: str, *, permanent: bool
) -> bool:
    """Record a failed download on the item. Returns whether it should be tried again."""
    async with rt.db.write() as session:
        message = await session.get(Message, message_id, with_for_update=True)
        if message is None:
            return False
        media = copy.deepcopy((message.extra or {}).get("media") or [])
        if index >= len(media) or media[index].get("status") != MEDIA_PENDING:
            return False
        item = media[index]
        item["attempts"] = int(item.get("attempts") or 0) + 1
        item["reason"] = reason
        retry = not permanent and item["attempts"] < MEDIA_MAX_ATTEMPTS
        if not retry:
            item["status"] = MEDIA_FAILED
            log.warning("media %s of message %s not downloaded: %s", index, message_id, reason)
        message.extra = {**message.extra, "media": media}
    return retry
