"""Web chat: the customer side of ``/ws/chat`` and file uploads from the widget.

Protocol (JSON frames ``{"type", "id"?, "data"}``; server events carry the event position as
``id``): connect to ``/ws/chat?inbox=<id>[&visitor=<token>][&last_event_id=<n>]``.
Server -> client: ``hello`` (visitor token, last event id), ``history`` (the messages of the
visitor's conversations in this inbox), then ``message.created`` / ``message.status`` events
(after ``last_event_id`` when given, then live), ``message.ack`` (for a client's
``message.send``), ``typing`` (an agent types), ``error``. Client -> server: ``message.send``
``{client_id, text}`` (a resend with the same client id is the same message), ``typing``,
``identify`` ``{name, email}`` (pre-chat form), ``resume`` ``{last_event_id}``, ``ping``.
``hello`` also says whether the inbox is open now (its ``settings.business_hours`` calendar);
when it is closed the widget shows a message form instead, posted to ``/webchat/offline``
(``channels/webchat_offline.py``).

A visitor is identified by a random id carried in an HMAC-signed token (a key derived from
``CC_SECRET_KEY``), kept by the widget in localStorage: the same visitor across page loads and
reconnects. A pre-chat email is unverified, so it never joins an existing customer on its own:
it is added as the visitor customer's identity only if no one else has it, else recorded as a
possible duplicate for an agent to merge. The widget only ever sees conversations of this
inbox.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import datetime
from typing import Annotated, Any

from litestar import Request, WebSocket, post, websocket
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    PermissionDeniedException,
    WebSocketDisconnect,
)
from litestar.handlers import HTTPRouteHandler
from litestar.params import Body, FromQuery
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from channels.webhooks import MULTIPART_OVERHEAD, runtime_of
from contact_center.attachments import AttachmentRejected, check_type, safe_filename
from contact_center.calendars import Calendar, CalendarError
from contact_center.customers import find_by_identity
from contact_center.identities import IdentityRef, InvalidIdentity
from contact_center.ingest import InboundAttachment, InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import (
    Conversation,
    Customer,
    CustomerIdentity,
    DeliveryStatus,
    DomainEvent,
    Inbox,
    Message,
)
from contact_center.outbound import OutboundMessage, SendResult
from contact_center.relay import EVENTS_CHANNEL
from contact_center.runtime import Runtime
from contact_center.wsutil import Bucket, serve_frames

log = logging.getLogger(__name__)

TYPING_CHANNEL = "typing"
MAX_FRAME = 16 * 1024
MAX_TEXT = 4000
RATE = 5.0  # frames per second, sustained
BURST = 20
HISTORY = 100
PUBLIC_EVENT_TYPES = frozenset({"message.created", "message.status"})
OFFLINE_MESSAGE = "We're away right now. Leave a message and we'll get back to you by email."


def availability(inbox: Inbox, now: datetime) -> dict[str, Any]:
    """Whether the inbox takes live chats now, by its ``settings.business_hours`` calendar
    (none: always), and when it opens next (``None`` while open, or if never within a search
    horizon). A stored calendar that no longer parses counts as open: visitors can always
    write, and the problem is logged for the admin."""
    offline_message = str(inbox.settings.get("offline_message") or OFFLINE_MESSAGE)
    raw = inbox.settings.get("business_hours")
    is_open, next_open = True, None
    if raw:
        try:
            calendar = Calendar.from_dict(raw)
        except CalendarError as exc:
            log.warning("inbox %s: business_hours ignored: %s", inbox.id, exc)
        else:
            is_open = calendar.is_open(now)
            next_open = None if is_open else calendar.next_open(now)
    return {
        "open": is_open,
        "next_open": next_open.isoformat() if next_open else None,
        "offline_message": offline_message,
    }


def visitor_token(secret: str, inbox_id: str, visitor_id: str) -> str:
    mac = hmac.new(secret.encode(), f"webchat:{inbox_id}:{visitor_id}".encode(), hashlib.sha256)
    return f"{visitor_id}.{mac.hexdigest()[:32]}"


def visitor_from(secret: str, inbox_id: str, token: str | None) -> str | None:
    if not token or "." not in token:
        return None
    visitor_id = token.split(".", 1)[0]
    expected = visitor_token(secret, inbox_id, visitor_id)
    return visitor_id if hmac.compare_digest(expected, token) else None


def public_message(data: dict[str, Any]) -> dict[str, Any]:
    """What a customer may see of a message (no provider ids, addresses or internal state)."""
    return {
        key: data.get(key)
        for key in (
            "id",
            "conversation_id",
            "direction",
            "author_type",
            "text",
            "html",
            "attachments",
            "delivery_status",
            "client_id",
            "created_at",
        )
    } | {"author_name": data.get("author_name")}


class ChatSession:
    def __init__(
        self, rt: Runtime, socket: WebSocket[Any, Any, Any], inbox: Inbox, visitor_id: str
    ) -> None:
        self.rt = rt
        self.socket = socket
        self.inbox = inbox
        self.visitor_id = visitor_id
        self.identity = IdentityRef.of("webchat", visitor_id)
        self.customer_id: int | None = None
        self.conversations: set[int] = set()
        self.sent_upto = 0
        self.bucket = Bucket(RATE, BURST)

    async def refresh(self) -> None:
        async with self.rt.db.read() as session:
            customer = await find_by_identity(session, self.identity)
            self.customer_id = customer.id if customer else None
            if self.customer_id is not None:
                self.conversations = set(
                    (
                        await session.scalars(
                            select(Conversation.id).where(
                                Conversation.customer_id == self.customer_id,
                                Conversation.inbox_id == self.inbox.id,
                            )
                        )
                    ).all()
                )

    def visible(self, env: dict[str, Any]) -> bool:
        if env.get("type") not in PUBLIC_EVENT_TYPES:
            return False
        data = env.get("data") or {}
        if data.get("private"):
            return False
        return env.get("conversation_id") in self.conversations

    async def send_event(self, env: dict[str, Any]) -> None:
        position = int(env.get("id") or 0)
        if position <= self.sent_upto:
            return  # seen already (the relay may publish twice; the backlog overlaps live)
        if env.get("type") == "message.created" and env.get("conversation_id") not in (
            self.conversations
        ):
            await self.refresh()
        if self.visible(env):
            data = env["data"]
            if env["type"] == "message.created":
                data = public_message(data)
            await self.socket.send_json({"type": env["type"], "id": position, "data": data})
        self.sent_upto = position

    async def backlog(self, after: int) -> None:
        if self.customer_id is None:
            return
        async with self.rt.db.read() as session:
            rows = (
                await session.scalars(
                    select(DomainEvent)
                    .where(
                        DomainEvent.position > after,
                        DomainEvent.customer_id == self.customer_id,
                        DomainEvent.type.in_(PUBLIC_EVENT_TYPES),
                    )
                    .order_by(DomainEvent.position)
                    .limit(1000)
                )
            ).all()
        for event in rows:
            await self.send_event(
                {
                    "type": event.type,
                    "id": event.position,
                    "conversation_id": event.conversation_id,
                    "data": event.payload,
                }
            )

    async def history(self) -> list[dict[str, Any]]:
        if not self.conversations:
            return []
        async with self.rt.db.read() as session:
            rows = list(
                (
                    await session.scalars(
                        select(Message)
                        .where(
                            Message.conversation_id.in_(self.conversations),
                            Message.private.is_(False),
                        )
                        .order_by(Message.id.desc())
                        .limit(HISTORY)
                    )
                ).all()
            )
        rows.reverse()
        from contact_center.views import message_view

        return [public_message(message_view(m, "webchat", list(m.attachments))) for m in rows]

    async def handle(self, frame: dict[str, Any]) -> None:
        kind, data = frame.get("type"), frame.get("data") or {}
        if not isinstance(data, dict):
            raise ValueError("data must be an object")
        if kind == "ping":
            await self.socket.send_json({"type": "pong", "data": {}})
        elif kind == "message.send":
            await self.send_message(data)
        elif kind == "typing":
            for conversation_id in self.conversations:
                await self.rt.bus.publish(
                    TYPING_CHANNEL,
                    {
                        "conversation_id": conversation_id,
                        "from": "customer",
                        "customer_id": self.customer_id,
                        "typing": bool(data.get("typing", True)),
                    },
                )
        elif kind == "identify":
            await self.identify(data)
        elif kind == "resume":
            await self.backlog(int(data.get("last_event_id") or 0))
        else:
            raise ValueError(f"unknown frame type {kind!r}")

    async def send_message(self, data: dict[str, Any]) -> None:
        client_id = str(data.get("client_id") or "")
        text = str(data.get("text") or "").strip()
        if not (0 < len(client_id) <= 64):
            raise ValueError("message.send needs a client_id of 1 to 64 characters")
        if not text or len(text) > MAX_TEXT:
            raise ValueError(f"message.send needs text of 1 to {MAX_TEXT} characters")
        result = await self.rt.ingestor.ingest(
            InboundMessage(
                inbox_id=self.inbox.id,
                provider_message_id=f"{self.visitor_id}:{client_id}",
                sender=self.identity,
                text=text,
                extra={"client_id": client_id},
            )
        )
        (DUPLICATES if result.duplicate else INGESTED).labels("webchat").inc()
        self.customer_id = result.customer_id
        self.conversations.add(result.conversation_id)
        if not result.duplicate:
            await self.rt.committed()
        await self.socket.send_json(
            {
                "type": "message.ack",
                "data": {
                    "client_id": client_id,
                    "message_id": result.message_id,
                    "conversation_id": result.conversation_id,
                    "duplicate": result.duplicate,
                },
            }
        )

    async def identify(self, data: dict[str, Any]) -> None:
        name = str(data.get("name") or "").strip()[:200]
        email = str(data.get("email") or "").strip()
        if self.customer_id is None:
            # Create the customer now so the profile exists before the first message.
            async with self.rt.db.write() as session:
                from contact_center.customers import resolve_customer

                created, _ = await resolve_customer(session, self.identity, clock=self.rt.clock)
                self.customer_id = created.id
        linked = False
        try:
            ref = IdentityRef.of("email", email, name or None) if email else None
        except InvalidIdentity:
            raise ValueError("that email address does not look right") from None
        async with self.rt.db.write() as session:
            customer = await session.get(Customer, self.customer_id)
            assert customer is not None
            if name:
                customer.name = name
            if ref is not None:
                owner = await find_by_identity(session, ref)
                if owner is None:
                    session.add(
                        CustomerIdentity(
                            customer_id=customer.id,
                            kind="email",
                            address=ref.address,
                            display_name=name or None,
                            created_at=self.rt.clock.now(),
                        )
                    )
                    customer.email = customer.email or ref.address
                    linked = True
                elif owner.id != customer.id:
                    customer.attributes = {
                        **customer.attributes,
                        "claimed_email": ref.address,
                        "possible_duplicate_of": owner.id,
                    }
            customer.updated_at = self.rt.clock.now()
        await self.socket.send_json(
            {"type": "identified", "data": {"name": name, "email_linked": linked}}
        )


async def find_inbox(rt: Runtime, inbox_id: str | None) -> Inbox | None:
    if not inbox_id:
        return None
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, inbox_id)
    if inbox is None or inbox.kind != "webchat" or not inbox.is_active:
        return None
    return inbox


def origin_allowed(inbox: Inbox, origin: str | None) -> bool:
    allowed = inbox.settings.get("allowed_origins") or []
    return not allowed or origin in allowed


@websocket("/ws/chat")
async def chat_socket(socket: WebSocket[Any, Any, Any]) -> None:
    rt = runtime_of(socket)  # type: ignore[arg-type]
    params = socket.query_params
    inbox = await find_inbox(rt, params.get("inbox"))
    if inbox is None or not origin_allowed(inbox, socket.headers.get("origin")):
        await socket.close(code=4403, reason="unknown inbox or origin not allowed")
        return
    await socket.accept()
    secret = rt.settings.derive_key("visitor-token")
    visitor_id = visitor_from(secret, inbox.id, params.get("visitor")) or secrets.token_hex(16)
    chat = ChatSession(rt, socket, inbox, visitor_id)
    live = await rt.bus.subscribe(EVENTS_CHANNEL, TYPING_CHANNEL)
    try:
        await chat.refresh()
        async with rt.db.read() as session:
            head = int(await session.scalar(select(func.max(DomainEvent.position))) or 0)
        await socket.send_json(
            {
                "type": "hello",
                "data": {
                    "visitor_token": visitor_token(secret, inbox.id, visitor_id),
                    "last_event_id": head,
                    "inbox": {"id": inbox.id, "name": inbox.name},
                    "greeting": inbox.settings.get("greeting", ""),
                    **availability(inbox, rt.clock.now()),
                },
            }
        )
        await socket.send_json({"type": "history", "data": {"messages": await chat.history()}})
        try:
            after = int(params.get("last_event_id") or head)
        except ValueError:
            after = head
        chat.sent_upto = min(after, head)
        await chat.backlog(chat.sent_upto)
        chat.sent_upto = max(chat.sent_upto, head)
        await _pump(chat, live)
    except WebSocketDisconnect:
        pass
    finally:
        live.close()


async def _pump(chat: ChatSession, live: Any) -> None:
    socket = chat.socket

    async def outgoing() -> None:
        while True:
            item = await live.get()
            if item is None:
                # We fell behind the bus: close so the widget reconnects and resumes.
                await socket.close(code=4008, reason="lagged; reconnect and resume")
                return
            channel, message = item
            if channel == TYPING_CHANNEL:
                if (
                    message.get("from") == "agent"
                    and message.get("conversation_id") in chat.conversations
                ):
                    await socket.send_json({"type": "typing", "data": message})
            else:
                await chat.send_event(message)

    await serve_frames(
        lambda: socket.receive_data("text"),
        socket.send_json,
        chat.handle,
        outgoing=outgoing,
        max_frame=MAX_FRAME,
        bucket=chat.bucket,
    )


async def chat_upload(
    request: Request[Any, Any, Any],
    inbox: FromQuery[str],
    visitor: FromQuery[str],
    data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)],
) -> dict[str, Any]:
    """A file from the widget (multipart ``file``, optional ``text`` and ``client_id``):
    403 for an origin outside the inbox's ``allowed_origins`` (as the socket), 413 over the
    attachment limit, 415 for a type we never accept; nothing is stored then. The same
    ``client_id`` again is the same message."""
    rt = runtime_of(request)
    row = await find_inbox(rt, inbox)
    if row is None:
        raise ClientException("unknown web chat inbox", status_code=404)
    origin = request.headers.get("origin")
    if origin is not None and not origin_allowed(row, origin):
        raise PermissionDeniedException("origin not allowed for this inbox")
    visitor_id = visitor_from(rt.settings.derive_key("visitor-token"), row.id, visitor)
    if visitor_id is None:
        raise NotAuthorizedException("bad visitor token")
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        raise ClientException("send the file as multipart field 'file'")
    content = await upload.read(rt.settings.attachment_max_bytes + 1)
    if len(content) > rt.settings.attachment_max_bytes:
        raise ClientException(
            f"file too large: at most {rt.settings.attachment_max_bytes} bytes", status_code=413
        )
    if not content:
        raise ClientException("the file is empty")
    try:
        check_type(
            content, safe_filename(upload.filename, upload.content_type), upload.content_type
        )
    except AttachmentRejected as exc:
        raise ClientException(str(exc), status_code=415) from None
    client_id = str(data.get("client_id") or secrets.token_hex(8))[:64]
    try:
        result = await rt.ingestor.ingest(
            InboundMessage(
                inbox_id=row.id,
                provider_message_id=f"{visitor_id}:{client_id}",
                sender=IdentityRef.of("webchat", visitor_id),
                text=str(data.get("text") or "")[:MAX_TEXT],
                attachments=(InboundAttachment(upload.filename, upload.content_type, content),),
            )
        )
    except IntegrityError:
        raise ClientException("try again", status_code=409) from None
    if not result.duplicate:
        await rt.committed()
    return {"message_id": result.message_id, "rejected": list(result.rejected_attachments)}


class WebchatSender:
    """Web chat replies reach the visitor through the event stream; sending marks them sent."""

    async def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(f"webchat:{message.message_id}", DeliveryStatus.sent)


def upload_route(attachment_max_bytes: int) -> HTTPRouteHandler:
    """``POST /webchat/upload``, accepting bodies up to the attachment limit plus the
    multipart framing (the limit is a setting, so the route is built per app)."""
    return post(
        "/webchat/upload",
        tags=["webhooks"],
        status_code=201,
        request_max_body_size=attachment_max_bytes + MULTIPART_OVERHEAD,
    )(chat_upload)


route_handlers = [chat_socket]
