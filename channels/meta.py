"""Facebook Messenger and Instagram (Meta webhooks and the Graph Send API).

``GET /webhooks/meta`` answers the subscription handshake (``hub.verify_token`` against an
inbox's ``verify_token``); ``POST /webhooks/meta`` checks ``X-Hub-Signature-256`` (HMAC-SHA256
of the raw body with the app secret) and ingests message and postback events; the inbox is the
one whose address is the page (or Instagram account) id of the entry. Our own echoes are
ignored; ``mid`` deduplicates. Replies go through ``POST /{version}/me/messages``.

Receipts move our replies' delivery status forward (never back, so replays are harmless):
``delivery`` (``mids`` and/or a ``watermark``) marks them ``delivered``, ``read`` (a
``watermark``, or Instagram's ``mid``) marks them ``read``. A watermark covers every reply of
the inbox to that person sent at or before it.

Attachment URLs are fetched only from Meta's CDN hosts (or the inbox's own API host, for
stand-ins and the sandbox): a webhook must not make us fetch arbitrary URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Request, Response, get, post
from litestar.exceptions import ClientException, PermissionDeniedException
from sqlalchemy import select

from channels.media import MediaError, MediaHosts, fetch_media
from channels.webhooks import WEBHOOK_MAX_BODY, runtime_of
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundAttachment, InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import DeliveryStatus, Direction, Inbox, Message
from contact_center.outbound import OutboundMessage, SendError, SendResult, set_status
from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

GRAPH = "https://graph.facebook.com"
VERSION = "v19.0"
CDN_HOSTS = MediaHosts(suffixes=(".fbcdn.net", ".cdninstagram.com", ".facebook.com"))
MAX_MEDIA = 25 * 1024 * 1024
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613})
KINDS = {"page": "messenger", "instagram": "instagram"}


@get("/webhooks/meta", tags=["webhooks"], status_code=200)
async def meta_verify(request: Request[Any, Any, Any]) -> Response[str]:
    """Meta's subscription handshake: echo ``hub.challenge`` when ``hub.verify_token`` is one
    of our inboxes' verify tokens."""
    params = request.query_params
    mode, token, challenge = (
        params.get("hub.mode"),
        params.get("hub.verify_token"),
        params.get("hub.challenge"),
    )
    if mode != "subscribe" or not token or challenge is None:
        raise ClientException("expected hub.mode=subscribe, hub.verify_token and hub.challenge")
    rt = runtime_of(request)
    async with rt.db.read() as session:
        inboxes = (
            await session.scalars(select(Inbox).where(Inbox.kind.in_(list(KINDS.values()))))
        ).all()
    if not any(
        hmac.compare_digest(str(i.credentials.get("verify_token", "")).encode(), token.encode())
        for i in inboxes
        if i.credentials.get("verify_token")
    ):
        raise PermissionDeniedException("unknown verify token")
    return Response(challenge, media_type="text/plain")


def _signature_ok(secret: str, body: bytes, header: str) -> bool:
    if not secret or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


@post("/webhooks/meta", tags=["webhooks"], status_code=200, request_max_body_size=WEBHOOK_MAX_BODY)
async def meta_events(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    rt = runtime_of(request)
    body = await request.body()
    try:
        payload = json.loads(body)
        kind = KINDS[payload["object"]]
        entries = [e for e in payload["entry"] if isinstance(e, dict)]
        page_ids = {str(e["id"]) for e in entries}
    except (ValueError, KeyError, TypeError):
        raise ClientException("malformed Meta webhook") from None
    async with rt.db.read() as session:
        inboxes = {
            i.address: i
            for i in (
                await session.scalars(
                    select(Inbox).where(
                        Inbox.kind == kind, Inbox.address.in_(page_ids), Inbox.is_active.is_(True)
                    )
                )
            ).all()
        }
    header = request.headers.get("x-hub-signature-256", "")
    if not inboxes or not all(
        _signature_ok(str(i.credentials.get("app_secret", "")), body, header)
        for i in inboxes.values()
    ):
        raise PermissionDeniedException("invalid X-Hub-Signature-256")
    stored = 0
    changed = False
    for entry in entries:
        inbox = inboxes.get(str(entry["id"]))
        if inbox is None:
            continue
        for item in entry.get("messaging") or []:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("delivery"), dict) or isinstance(item.get("read"), dict):
                changed = await _receipt(rt, inbox, item) or changed
                continue
            msg = await _inbound(rt, inbox, item)
            if msg is None:
                continue
            result = await rt.ingestor.ingest(msg)
            (DUPLICATES if result.duplicate else INGESTED).labels(kind).inc()
            stored += not result.duplicate
    if stored or changed:
        await rt.committed()
    return Response({"ok": True, "stored": stored})


def _watermark(value: Any) -> datetime | None:
    """Meta's watermark (epoch milliseconds) as the last instant of that millisecond (our
    times have microseconds); None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC) + timedelta(microseconds=999)
    except (OverflowError, OSError, ValueError):
        return None


async def _receipt(rt: Runtime, inbox: Inbox, item: dict[str, Any]) -> bool:
    """Apply a ``delivery`` or ``read`` receipt to our replies to the item's sender."""
    try:
        person = str(item["sender"]["id"])
    except (KeyError, TypeError):
        return False
    delivery = item.get("delivery")
    if isinstance(delivery, dict):
        status, receipt = DeliveryStatus.delivered, delivery
    else:
        status, receipt = DeliveryStatus.read, item["read"]
    mids = receipt.get("mids") or ([receipt["mid"]] if receipt.get("mid") else [])
    mids = (
        [str(m) for m in mids if isinstance(m, str | int)][:100] if isinstance(mids, list) else []
    )
    watermark = _watermark(receipt.get("watermark"))
    ours = (
        Message.inbox_id == inbox.id,
        Message.direction == Direction.outbound.value,
        Message.to_address == person,
    )
    changed = False
    async with rt.db.write() as session:
        named = []
        if mids:
            named = list(
                (
                    await session.scalars(
                        select(Message)
                        .where(*ours, Message.provider_message_id.in_(mids))
                        .order_by(Message.id)
                        .with_for_update()
                    )
                ).all()
            )
        if status == DeliveryStatus.read and watermark is None:
            # Instagram names the message read: everything sent up to it was read too.
            sent = [m.sent_at for m in named if m.sent_at is not None]
            watermark = max(sent) if sent else None
        covered = []
        if watermark is not None:
            # A watermark covers replies handed to Meta at or before it; a reply that failed
            # to send is never "delivered" by it.
            covered = list(
                (
                    await session.scalars(
                        select(Message)
                        .where(
                            *ours,
                            Message.sent_at <= watermark,
                            Message.delivery_status.in_(
                                [DeliveryStatus.sent.value, DeliveryStatus.delivered.value]
                            ),
                        )
                        .order_by(Message.id)
                        .with_for_update()
                    )
                ).all()
            )
        for message in {m.id: m for m in [*named, *covered]}.values():
            changed = await set_status(session, message, status, clock=rt.clock) or changed
    return changed


async def _inbound(rt: Runtime, inbox: Inbox, item: dict[str, Any]) -> InboundMessage | None:
    try:
        sender = str(item["sender"]["id"])
    except (KeyError, TypeError):
        return None
    if sender == inbox.address:
        return None
    kind = "instagram" if inbox.kind == "instagram" else "messenger"
    message = item.get("message")
    postback = item.get("postback")
    if isinstance(message, dict):
        if message.get("is_echo") or not message.get("mid"):
            return None
        attachments, failed = await _media(inbox, message.get("attachments") or [])
        extra: dict[str, Any] = {}
        if failed:
            extra["download_failed"] = failed
        if quick := (message.get("quick_reply") or {}).get("payload"):
            extra["quick_reply"] = quick
        return InboundMessage(
            inbox_id=inbox.id,
            provider_message_id=str(message["mid"]),
            sender=IdentityRef.of(kind, sender),
            text=str(message.get("text") or ""),
            attachments=tuple(attachments),
            extra=extra,
        )
    if isinstance(postback, dict):
        mid = postback.get("mid") or f"postback:{sender}:{item.get('timestamp')}"
        return InboundMessage(
            inbox_id=inbox.id,
            provider_message_id=str(mid),
            sender=IdentityRef.of(kind, sender),
            text=str(postback.get("title") or postback.get("payload") or ""),
            extra={"postback": postback.get("payload")},
        )
    return None


async def _media(inbox: Inbox, items: list[Any]) -> tuple[list[InboundAttachment], list[str]]:
    attachments: list[InboundAttachment] = []
    failed: list[str] = []
    wanted = [
        (str(a.get("type")), str((a.get("payload") or {}).get("url") or ""))
        for a in items[:10]
        if isinstance(a, dict)
    ]
    allowed = CDN_HOSTS.with_own(inbox.api_base_url)
    for kind, url in wanted:
        if not url:
            continue
        try:
            fetched = await fetch_media(url, allowed, max_bytes=MAX_MEDIA, timeout=10)
        except MediaError as exc:
            failed.append(f"{kind}: {exc.reason}")
            continue
        attachments.append(InboundAttachment(fetched.filename, fetched.content_type, fetched.data))
    return attachments, failed


class MetaSender:
    async def send(self, message: OutboundMessage) -> SendResult:
        inbox = message.inbox
        token = str(inbox.credentials.get("page_access_token", ""))
        if not token:
            raise SendError("the inbox has no page_access_token", retryable=False)
        base = (inbox.api_base_url or GRAPH).rstrip("/")
        version = inbox.settings.get("graph_version", VERSION)
        body = {
            "recipient": {"id": message.to_address},
            "message": {"text": message.text[:2000]},
            "messaging_type": "RESPONSE",
        }
        try:
            async with httpx.AsyncClient(timeout=20) as client:
                response = await client.post(
                    f"{base}/{version}/me/messages", params={"access_token": token}, json=body
                )
        except httpx.HTTPError as exc:
            raise SendError(f"Meta unreachable: {exc}", retryable=True) from exc
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400 or "error" in data:
            error = data.get("error") or {}
            code = error.get("code")
            reason = f"Meta {response.status_code}: {error.get('message', response.text[:200])}"
            retry = response.status_code >= 500 or code in RATE_LIMIT_CODES
            raise SendError(reason, retryable=retry)
        return SendResult(str(data.get("message_id", "")))


route_handlers = [meta_verify, meta_events]
