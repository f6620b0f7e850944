"""SMS and WhatsApp through Twilio: inbound and status webhooks, and sending.

Inbound: ``POST /webhooks/twilio/messages`` (form), the inbox chosen by ``To``, the request
validated with the twilio package's ``RequestValidator`` over every parameter received, against
``CC_PUBLIC_URL`` + path. Status: ``POST /webhooks/twilio/status`` moves delivery status
forward only. Sending: the twilio REST client (async), pointed at the inbox's API base URL.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from litestar import Request, Response, post
from litestar.exceptions import ClientException, PermissionDeniedException
from sqlalchemy import select
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.webhooks import public_url, runtime_of
from contact_center.identities import IdentityRef, InvalidIdentity, normalize_phone
from contact_center.ingest import InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import DeliveryStatus, Inbox, Message
from contact_center.outbound import OutboundMessage, SendError, SendResult, set_status

log = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
STATUS_MAP = {
    "accepted": DeliveryStatus.queued,
    "queued": DeliveryStatus.queued,
    "scheduled": DeliveryStatus.queued,
    "sending": DeliveryStatus.sending,
    "sent": DeliveryStatus.sent,
    "delivered": DeliveryStatus.delivered,
    "undelivered": DeliveryStatus.undelivered,
    "failed": DeliveryStatus.failed,
    "read": DeliveryStatus.read,
    "canceled": DeliveryStatus.failed,
}


class RedirectingHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Sends the SDK's requests to another scheme+host (a regional proxy, a stand-in)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(pool_connections=False)
        parts = urlsplit(base_url)
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._prefix = parts.path.rstrip("/")

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> TwilioResponse:
        parts = urlsplit(url)
        url = urlunsplit(
            (self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment)
        )
        return await super().request(method, url, *args, **kwargs)


def _whatsapp(address: str) -> bool:
    return address.lower().startswith("whatsapp:")


class TwilioSender:
    async def send(self, message: OutboundMessage) -> SendResult:
        inbox = message.inbox
        sid = inbox.credentials.get("account_sid", "")
        token = inbox.credentials.get("auth_token", "")
        if not sid or not token:
            raise SendError("the inbox has no Twilio account_sid/auth_token", retryable=False)
        http = (
            RedirectingHttpClient(inbox.api_base_url)
            if inbox.api_base_url
            else (AsyncTwilioHttpClient(pool_connections=False))
        )
        client = Client(sid, token, http_client=http)
        to = message.to_address
        sender = inbox.address
        if inbox.kind == "whatsapp":
            to = to if _whatsapp(to) else f"whatsapp:{to}"
            sender = sender if _whatsapp(sender) else f"whatsapp:{sender}"
        callback = inbox.settings.get("status_callback_url")
        if not callback and message.extra.get("public_url"):
            callback = f"{message.extra['public_url']}/webhooks/twilio/status"
        kwargs: dict[str, Any] = {"to": to, "from_": sender, "body": message.text[:1600]}
        if callback:
            kwargs["status_callback"] = callback
        try:
            created = await client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            retry = exc.status >= 500 or exc.status == 429
            raise SendError(f"Twilio {exc.status}: {exc.msg}", retryable=retry) from exc
        except OSError as exc:
            raise SendError(f"Twilio unreachable: {exc}", retryable=True) from exc
        status = STATUS_MAP.get(str(created.status or ""), DeliveryStatus.sent)
        return SendResult(str(created.sid), max(status, DeliveryStatus.sent, key=lambda s: s.rank))


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    params: dict[str, str] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            raise ClientException("file uploads are not part of Twilio webhooks")
        params[key] = value
    return params


def _validate(request: Request[Any, Any, Any], params: dict[str, str], auth_token: str) -> None:
    signature = request.headers.get("x-twilio-signature", "")
    if not signature or not auth_token:
        raise PermissionDeniedException("missing Twilio signature")
    if not RequestValidator(auth_token).validate(public_url(request), params, signature):
        raise PermissionDeniedException("invalid Twilio signature")


def _twiml() -> Response[str]:
    return Response(EMPTY_TWIML, media_type="text/xml")


@post("/webhooks/twilio/messages", tags=["webhooks"], status_code=200)
async def twilio_messages(request: Request[Any, Any, Any]) -> Response[str]:
    """Inbound SMS/WhatsApp. 403 on a bad signature, 400 on a malformed request, 404 for an
    unknown ``To``: Twilio does not retry those. 2xx only once the message is committed."""
    rt = runtime_of(request)
    params = await _form(request)
    to, sender, sid = params.get("To", ""), params.get("From", ""), params.get("MessageSid", "")
    if not to or not sender or not sid:
        raise ClientException("To, From and MessageSid are required")
    kind = "whatsapp" if _whatsapp(to) else "sms"
    try:
        to_number = normalize_phone(to)
    except InvalidIdentity as exc:
        raise ClientException(f"To: {exc}") from None
    async with rt.db.read() as session:
        inbox = await session.scalar(
            select(Inbox).where(
                Inbox.kind == kind,
                Inbox.address.in_([to_number, f"whatsapp:{to_number}", to]),
                Inbox.is_active.is_(True),
            )
        )
    if inbox is None:
        raise ClientException(f"no active {kind} inbox for {to}", status_code=404)
    _validate(request, params, str(inbox.credentials.get("auth_token", "")))
    try:
        identity = IdentityRef.of(
            "whatsapp" if kind == "whatsapp" else "phone", sender, params.get("ProfileName") or None
        )
    except InvalidIdentity as exc:
        raise ClientException(f"From: {exc}") from None
    media = []
    for i in range(min(int(params.get("NumMedia", "0") or 0), 10)):
        if url := params.get(f"MediaUrl{i}"):
            media.append({"url": url, "content_type": params.get(f"MediaContentType{i}")})
    result = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id=inbox.id,
            provider_message_id=sid,
            sender=identity,
            text=params.get("Body", ""),
            extra={"media": media} if media else {},
        )
    )
    (DUPLICATES if result.duplicate else INGESTED).labels(kind).inc()
    if not result.duplicate:
        await rt.committed()
    return _twiml()


@post("/webhooks/twilio/status", tags=["webhooks"], status_code=200)
async def twilio_status(request: Request[Any, Any, Any]) -> Response[str]:
    """Delivery status callbacks; out-of-order callbacks never move a status backwards."""
    rt = runtime_of(request)
    params = await _form(request)
    sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
    if not sid or not status:
        raise ClientException("MessageSid and MessageStatus are required")
    mapped = STATUS_MAP.get(status.lower())
    async with rt.db.write() as session:
        row = (
            await session.execute(
                select(Message, Inbox)
                .join(Inbox, Inbox.id == Message.inbox_id)
                .where(Message.provider_message_id == sid, Inbox.kind.in_(["sms", "whatsapp"]))
            )
        ).first()
        if row is None:
            return _twiml()  # not ours (or not yet recorded); nothing to update
        message, inbox = row
        _validate(request, params, str(inbox.credentials.get("auth_token", "")))
        changed = False
        if mapped is not None:
            reason = None
            if params.get("ErrorCode"):
                reason = f"Twilio error {params['ErrorCode']}"
            changed = await set_status(session, message, mapped, clock=rt.clock, reason=reason)
    if changed:
        await rt.committed()
    return _twiml()


route_handlers = [twilio_messages, twilio_status]
