"""SMS and WhatsApp through Twilio: inbound and status webhooks, and sending.

Inbound: ``POST /webhooks/twilio/messages`` (form), the inbox chosen by ``To``, the request
validated with the twilio package's ``RequestValidator`` over every parameter received, against
``CC_PUBLIC_URL`` + path; media (``MediaUrlN``) are recorded as pending and downloaded after
the ack by ``channels.twilio_media``. Status: ``POST /webhooks/twilio/status`` moves delivery status
forward only. Sending: the twilio REST client (async), pointed at the inbox's API base URL.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from litestar import Request, Response, post
from litestar.exceptions import ClientException, PermissionDeniedException
from sqlalchemy import select
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.twilio_media import MAX_MEDIA_ITEMS, MEDIA_PENDING, enqueue_media, mark_media_due
from channels.webhooks import WEBHOOK_MAX_BODY, public_url, runtime_of
from contact_center.identities import IdentityRef, InvalidIdentity, normalize_phone
from contact_center.ingest import InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import DeliveryStatus, Inbox, Message
from contact_center.outbound import OutboundMessage, SendError, SendResult, set_status

log = logging.getLogger(__name__)

# Seconds a request to Twilio may take (the inbox's ``timeout_seconds`` setting overrides it);
# well under the send lease, so a hung request ends as a retry, never as "interrupted".
SEND_TIMEOUT = 20.0
MAX_TIMEOUT = 60.0
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


class TwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's async HTTP client with a request timeout, optionally sending its requests to
    another scheme+host (a regional proxy, a stand-in).

    The SDK's own client takes a ``timeout`` but its ``request`` never uses it, so aiohttp would
    wait without limit (longer than the send's lease): every request here gets ours.
    """

    def __init__(self, base_url: str | None = None, timeout: float = SEND_TIMEOUT) -> None:
        # One session per client (so per send), closed by ``close()`` even when a request
        # fails: the SDK's per-request session is never closed when the request raises.
        super().__init__(pool_connections=True, timeout=timeout)
        parts = urlsplit(base_url or "")
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._prefix = parts.path.rstrip("/")

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> TwilioResponse:
        if self._netloc:
            parts = urlsplit(url)
            url = urlunsplit(
                (self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment)
            )
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        if auth := kwargs.pop("auth", None):
            # As a header: aiohttp deprecates its ``auth`` argument (gone in aiohttp 4).
            basic = aiohttp.encode_basic_auth(str(auth[0]), str(auth[1]))
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": basic}
        return await super().request(method, url, *args, **kwargs)


def _whatsapp(address: str) -> bool:
    return address.lower().startswith("whatsapp:")


def _timeout(settings: dict[str, Any]) -> float:
    """The inbox's ``timeout_seconds`` setting, within (0, MAX_TIMEOUT]; SEND_TIMEOUT if unset."""
    try:
        value = float(settings.get("timeout_seconds") or SEND_TIMEOUT)
    except (TypeError, ValueError):
        return SEND_TIMEOUT
    return min(value, MAX_TIMEOUT) if value > 0 else SEND_TIMEOUT


def send_error(exc: TwilioRestException | TwilioServiceException) -> SendError:
    """Twilio's answer as the agent sees it (status, Twilio error code, message). 5xx and 429
    are worth another try; any other 4xx (21211 invalid 'To', 20003 credentials) is final."""
    text = (exc.detail or exc.title) if isinstance(exc, TwilioServiceException) else exc.msg
    code = f" (error {exc.code})" if exc.code not in (None, exc.status) else ""
    retry = exc.status >= 500 or exc.status == 429
    return SendError(f"Twilio {exc.status}{code}: {text}", retryable=retry)


class TwilioSender:
    async def send(self, message: OutboundMessage) -> SendResult:
        inbox = message.inbox
        sid = inbox.credentials.get("account_sid", "")
        token = inbox.credentials.get("auth_token", "")
        if not sid or not token:
            raise SendError("the inbox has no Twilio account_sid/auth_token", retryable=False)
        http = TwilioHttpClient(inbox.api_base_url, timeout=_timeout(inbox.settings))
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
            async with http:
                created = await client.messages.create_async(**kwargs)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise send_error(exc) from exc
        except TimeoutError as exc:
            raise SendError(
                f"Twilio did not answer within {http.timeout:g} s", retryable=True
            ) from exc
        except (OSError, aiohttp.ClientError) as exc:
            raise SendError(
                f"Twilio unreachable: {type(exc).__name__}: {exc}", retryable=True
            ) from exc
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


@post(
    "/webhooks/twilio/messages",
    tags=["webhooks"],
    status_code=200,
    request_max_body_size=WEBHOOK_MAX_BODY,
)
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
    media = _media_params(params)
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
    if media:
        # After the commit and before the 2xx: if we die in between, Twilio posts again and
        # the replay (a duplicate) enqueues whatever is still pending.
        await mark_media_due(rt, result.message_id)
        await enqueue_media(rt, result.message_id)
    return _twiml()


def _media_params(params: dict[str, str]) -> list[dict[str, Any]]:
    """``MediaUrlN`` / ``MediaContentTypeN`` as pending downloads (Twilio sends at most 10)."""
    try:
        count = max(0, min(int(params.get("NumMedia") or 0), MAX_MEDIA_ITEMS))
    except ValueError:
        raise ClientException("NumMedia must be a number") from None
    media: list[dict[str, Any]] = []
    for i in range(count):
        if url := params.get(f"MediaUrl{i}"):
            media.append(
                {
                    "url": url,
                    "content_type": params.get(f"MediaContentType{i}"),
                    "status": MEDIA_PENDING,
                }
            )
    return media


@post(
    "/webhooks/twilio/status",
    tags=["webhooks"],
    status_code=200,
    request_max_body_size=WEBHOOK_MAX_BODY,
)
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
