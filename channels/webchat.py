"""Web chat: the customer side of ``/ws/chat`` and file uploads from the widget.

Protocol (JSON frames ``{"type", "id"?, "data"}``; server events carry the event position as
``id``): connect to ``/ws/chat?inbox=<id>[&visitor=<token>][&last_event_id=<n>]``.
Server -> client: ``hello`` (visitor token, last event id), ``history`` (the messages of the
visitor's conversations in this inbox), then ``message.created`` / ``message.status`` events
(after ``last_event_id`` when given, then live), ``message.ack`` (for a client's
``message.send``), ``typing`` (an agent types), ``error``. Client -> server: ``message.send``
``{client_id, text}`` (a resend with the same client id is the same message), ``typing``,
``identify`` ``{name, email, identity_hash?}`` (pre-chat form or a signed-in user),
``resume`` ``{last_event_id}``, ``ping``. Other packages add frames through ``extend`` (the
composition root registers the satisfaction survey's ``survey.request`` and ``survey.answer``).
``hello`` also says whether the inbox is open now (its ``settings.business_hours`` calendar);
when it is closed the widget shows a message form instead, posted to ``/webchat/offline``
(``channels/webchat_offline.py``).

A visitor is identified by a random id carried in an HMAC-signed token (a key derived from
``CC_SECRET_KEY``), kept by the widget in localStorage: the same visitor across page loads and
reconnects. Every conversation belongs to the visitor who started it (thread key
"visitor:<id>", and a visitor-scoped active key), and the widget sees only those. So a pre-chat
email (``identify``) can link the visitor to the existing customer who has it, with one profile
for the agent, without showing the visitor anything another visitor wrote; the link is marked
unverified unless the site signs the email (``identity_hash``, HMAC-SHA256 with the inbox's
``credentials.identity_secret``). docs/architecture.md section 9 has the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
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
from sqlalchemy import ColumnElement, false, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from channels.webhooks import MULTIPART_OVERHEAD, runtime_of
from contact_center.attachments import AttachmentRejected, check_type, safe_filename
from contact_center.calendars import Calendar, CalendarError
from contact_center.customers import find_by_identity, merge_customers, resolve_customer
from contact_center.identities import IdentityRef, InvalidIdentity
from contact_center.inbox_config import InboxConfigError, PreChatConfig, identity_secret
from contact_center.ingest import InboundAttachment, InboundMessage
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import (
    Conversation,
    CustomerIdentity,
    DeliveryStatus,
    DomainEvent,
    Inbox,
    Message,
)
from contact_center.outbound import OutboundMessage, SendResult
from contact_center.relay import EVENTS_CHANNEL
from contact_center.runtime import Runtime
from contact_center.wsutil import Bucket, EventStream, FrameError, last_event_id, serve_frames

log = logging.getLogger(__name__)

TYPING_CHANNEL = "typing"
MAX_FRAME = 16 * 1024
MAX_TEXT = 4000
RATE = 5.0  # frames per second, sustained
BURST = 20
HISTORY = 100
PUBLIC_EVENT_TYPES = frozenset({"message.created", "message.status"})
VISITOR_SCOPE = "visitor:"  # a web chat conversation's thread key: the visitor who started it
OFFLINE_MESSAGE = "We're away right now. Leave a message and we'll get back to you by email."

# Other packages extend the visitor's protocol through the composition root (``extend``):
# an outbox event of the visitor's conversations becomes a frame of its own (the mapper may
# read the database; None sends nothing), and a client frame type gets a handler given the
# conversations the visitor may see (it answers with a frame, or raises FrameError); a history
# hook adds frames sent after ``history`` at connect (what is still pending for the visitor).
VisitorEvent = Callable[[Runtime, dict[str, Any]], Awaitable[dict[str, Any] | None]]
VisitorFrame = Callable[[Runtime, set[int], dict[str, Any]], Awaitable[dict[str, Any]]]
VisitorHistory = Callable[[Runtime, set[int]], Awaitable[list[dict[str, Any]]]]
VISITOR_EVENTS: dict[str, VisitorEvent] = {}
VISITOR_FRAMES: dict[str, VisitorFrame] = {}
VISITOR_HISTORY: list[VisitorHistory] = []


def extend(
    *,
    events: dict[str, VisitorEvent] | None = None,
    frames: dict[str, VisitorFrame] | None = None,
    history: VisitorHistory | None = None,
) -> None:
    VISITOR_EVENTS.update(events or {})
    VISITOR_FRAMES.update(frames or {})
    if history is not None and history not in VISITOR_HISTORY:
        VISITOR_HISTORY.append(history)


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
    """One connected visitor. The visitor's view is scoped to the conversations this visitor
    started (thread key "visitor:<id>"), whoever the customer behind them is: linking the
    visitor to an existing customer by a pre-chat email never shows the visitor that
    customer's other conversations, unless the site vouched for the email (identity_hash)."""

    def __init__(
        self, rt: Runtime, socket: WebSocket[Any, Any, Any], inbox: Inbox, visitor_id: str
    ) -> None:
        self.rt = rt
        self.socket = socket
        self.inbox = inbox
        self.visitor_id = visitor_id
        self.identity = IdentityRef.of("webchat", visitor_id)
        self.scope = f"{VISITOR_SCOPE}{visitor_id}"
        self.customer_id: int | None = None
        # The pre-chat email this visitor gave: {"email", "email_verified"} (identity extra).
        self.claim: dict[str, Any] = {}
        self.own: set[int] = set()  # conversations this visitor started
        self.conversations: set[int] = set()  # what the visitor may see (own, or verified)
        self.stream = EventStream(
            rt.db,
            types=PUBLIC_EVENT_TYPES | frozenset(VISITOR_EVENTS),
            emit=self._emit,
            scope=self._scope,
            page=500,
        )
        self.bucket = Bucket(RATE, BURST)

    async def _identity_row(self, session: AsyncSession) -> CustomerIdentity | None:
        return await session.scalar(
            select(CustomerIdentity).where(
                CustomerIdentity.kind == self.identity.kind,
                CustomerIdentity.address == self.identity.address,
            )
        )

    async def refresh(self) -> None:
        async with self.rt.db.read() as session:
            row = await self._identity_row(session)
            customer = await find_by_identity(session, self.identity) if row else None
            self.customer_id = customer.id if customer else None
            self.claim = dict(row.extra or {}) if row else {}
            self.own = set(
                (
                    await session.scalars(
                        select(Conversation.id).where(
                            Conversation.inbox_id == self.inbox.id,
                            Conversation.thread_key == self.scope,
                        )
                    )
                ).all()
            )
            self.conversations = set(self.own)
            if self.customer_id is not None and self.claim.get("email_verified"):
                self.conversations |= await self._verified_conversations(session)

    async def _verified_conversations(self, session: AsyncSession) -> set[int]:
        """A verified visitor also sees the customer's web chats in this inbox started by
        visitors verified for the same email (the signed-in user's other devices)."""
        rows = (
            await session.execute(
                select(Conversation.id, Conversation.thread_key).where(
                    Conversation.inbox_id == self.inbox.id,
                    Conversation.customer_id == self.customer_id,
                    Conversation.thread_key.like(f"{VISITOR_SCOPE}%"),
                )
            )
        ).all()
        visitors = {str(key)[len(VISITOR_SCOPE) :] for _, key in rows}
        if not visitors:
            return set()
        idents = (
            await session.scalars(
                select(CustomerIdentity).where(
                    CustomerIdentity.kind == "webchat", CustomerIdentity.address.in_(visitors)
                )
            )
        ).all()
        email = self.claim.get("email")
        trusted = {
            f"{VISITOR_SCOPE}{i.address}"
            for i in idents
            if (i.extra or {}).get("email_verified") and (i.extra or {}).get("email") == email
        }
        return {conv_id for conv_id, key in rows if key in trusted}

    def visible(self, env: dict[str, Any]) -> bool:
        if env.get("type") not in PUBLIC_EVENT_TYPES and env.get("type") not in VISITOR_EVENTS:
            return False
        data = env.get("data") or {}
        if data.get("private"):
            return False
        return env.get("conversation_id") in self.conversations

    def _scope(self) -> ColumnElement[bool]:
        """The stored events worth reading for this visitor: those of their conversations."""
        if not self.conversations:
            return false()
        return DomainEvent.conversation_id.in_(self.conversations)

    async def _emit(self, env: dict[str, Any]) -> None:
        if env.get("type") == "message.created" and env.get("conversation_id") not in (
            self.conversations
        ):
            customer = env.get("customer_id") or (env.get("data") or {}).get("customer_id")
            if self.customer_id is None or customer in (None, self.customer_id):
                await self.refresh()  # a conversation of ours we have not seen yet (upload)
        if self.visible(env) and env["type"] in VISITOR_EVENTS:
            frame = await VISITOR_EVENTS[env["type"]](self.rt, env)
            if frame is not None:
                await self.socket.send_json({**frame, "id": int(env["id"])})
        elif self.visible(env):
            data = env["data"]
            if env["type"] == "message.created":
                data = public_message(data)
            await self.socket.send_json({"type": env["type"], "id": int(env["id"]), "data": data})

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
            for conversation_id in self.own:
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
            after = data.get("last_event_id")
            if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**62:
                raise ValueError("last_event_id must be an integer of at least 0")
            await self.stream.resume(after)
        elif isinstance(kind, str) and kind in VISITOR_FRAMES:
            await self.socket.send_json(
                await VISITOR_FRAMES[kind](self.rt, set(self.conversations), data)
            )
        else:
            raise ValueError(f"unknown frame type {kind!r}")

    async def send_message(self, data: dict[str, Any]) -> None:
        client_id = str(data.get("client_id") or "")
        text = str(data.get("text") or "").strip()
        if not (0 < len(client_id) <= 64):
            raise ValueError("message.send needs a client_id of 1 to 64 characters")
        if not text or len(text) > MAX_TEXT:
            raise ValueError(f"message.send needs text of 1 to {MAX_TEXT} characters")
        extra: dict[str, Any] = {"client_id": client_id}
        if self.claim.get("email"):
            extra["identified_email"] = self.claim["email"]
            extra["email_verified"] = bool(self.claim.get("email_verified"))
        result = await self.rt.ingestor.ingest(
            InboundMessage(
                inbox_id=self.inbox.id,
                provider_message_id=f"{self.visitor_id}:{client_id}",
                sender=self.identity,
                text=text,
                thread_key=self.scope,
                scoped=True,
                extra=extra,
            )
        )
        (DUPLICATES if result.duplicate else INGESTED).labels("webchat").inc()
        self.customer_id = result.customer_id
        self.own.add(result.conversation_id)
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
        """The pre-chat form (or the site, for its signed-in user): a name and an email.

        An email that belongs to an existing customer links this visitor to that customer
        (the agent sees one profile), marked unverified unless ``identity_hash`` is
        HMAC-SHA256(inbox identity secret, email) in hex. A wrong hash links nothing."""
        name = str(data.get("name") or "").strip()[:200]
        email = str(data.get("email") or "").strip()
        given_hash = data.get("identity_hash")
        try:
            ref = IdentityRef.of("email", email, name or None) if email else None
        except InvalidIdentity:
            raise ValueError("that email address does not look right") from None
        pre_chat = _pre_chat(self.inbox)
        if ref is None and pre_chat["enabled"] and pre_chat["require_email"]:
            raise ValueError("an email address is required")
        verified = False
        if given_hash is not None:
            secret = identity_secret(self.inbox.credentials or {})
            if secret is None or ref is None or not isinstance(given_hash, str):
                raise FrameError("identity_unverified", "identity verification is not possible")
            expected = hmac.new(secret.encode(), ref.address.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, given_hash.strip().lower()):
                raise FrameError("identity_unverified", "identity_hash does not match the email")
            verified = True
        for attempt in range(3):
            try:
                linked = await self._link(name, ref, verified)
                break
            except IntegrityError:
                # Another tab of this visitor identified at the same moment: look again.
                if attempt == 2:
                    raise
        await self.rt.committed()
        await self.refresh()
        await self.socket.send_json(
            {
                "type": "identified",
                "data": {
                    "name": name,
                    "email_linked": linked,
                    "email_verified": bool(self.claim.get("email_verified")),
                },
            }
        )
        if verified:
            # The signed-in user's earlier web chats in this inbox are now theirs to see.
            await self.socket.send_json(
                {"type": "history", "data": {"messages": await self.history()}}
            )

    async def _link(self, name: str, ref: IdentityRef | None, verified: bool) -> bool:
        """Apply an identify in one transaction; whether the email is now the visitor's."""
        now = self.rt.clock.now()
        async with self.rt.db.write() as session:
            row = await self._identity_row(session)
            own = await find_by_identity(session, self.identity) if row else None
            owner = await find_by_identity(session, ref) if ref is not None else None
            # Fresh: the visitor's customer is only this visitor (no other address), so it
            # may take an email or be folded into the email's customer.
            fresh = own is None or row is None or not await _has_others(session, own.id, row.id)
            if verified and not fresh and (owner is None or own is None or owner.id != own.id):
                # The site vouches for someone else than this visitor already is (a shared
                # browser, another user signed in): the widget starts a new visitor.
                raise FrameError("identity_changed", "start a new visitor for this user")
            linked = False
            if owner is not None and own is not None and own.id == owner.id:
                customer, linked = own, True  # linked before: a replay changes nothing
            elif owner is not None and fresh:
                if own is not None:
                    # The visitor wrote before: their customer and conversations move over.
                    await merge_customers(
                        session,
                        source_id=own.id,
                        target_id=owner.id,
                        clock=self.rt.clock,
                        acting_agent_id=None,
                    )
                customer, linked = owner, True
            elif owner is not None:
                # The visitor already has addresses of their own: an unverified claim does
                # not fold them into someone else's profile; an agent decides.
                assert own is not None and ref is not None
                own.attributes = {
                    **own.attributes,
                    "claimed_email": ref.address,
                    "possible_duplicate_of": owner.id,
                }
                customer = own
            else:
                if own is None:
                    customer, _ = await resolve_customer(
                        session, self.identity, clock=self.rt.clock
                    )
                else:
                    customer = own
                if ref is not None and fresh:
                    # Nobody has this address: it becomes the visitor customer's own.
                    session.add(
                        CustomerIdentity(
                            customer_id=customer.id,
                            kind="email",
                            address=ref.address,
                            display_name=name or None,
                            created_at=now,
                        )
                    )
                    customer.email = customer.email or ref.address
                    linked = True
                elif ref is not None:
                    # Not added to a customer with other addresses on the visitor's word.
                    customer.attributes = {**customer.attributes, "claimed_email": ref.address}
            if row is None:
                row = await self._identity_row(session)
            if row is None:
                row = CustomerIdentity(
                    customer_id=customer.id,
                    kind=self.identity.kind,
                    address=self.identity.address,
                    created_at=now,
                )
                session.add(row)
            if name:
                row.display_name = name
            if ref is not None and linked:
                before = row.extra or {}
                keep = before.get("email") == ref.address and bool(before.get("email_verified"))
                row.extra = {"email": ref.address, "email_verified": verified or keep}
            if name and (not customer.name or (fresh and owner is None)):
                customer.name = name
            customer.updated_at = now
            await session.flush()
        return linked


async def find_inbox(rt: Runtime, inbox_id: str | None) -> Inbox | None:
    if not inbox_id:
        return None
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, inbox_id)
    if inbox is None or inbox.kind != "webchat" or not inbox.is_active:
        return None
    return inbox


async def _has_others(session: AsyncSession, customer_id: int, identity_id: int) -> bool:
    """Whether the customer has an identity besides ``identity_id``."""
    found = await session.scalar(
        select(CustomerIdentity.id)
        .where(CustomerIdentity.customer_id == customer_id, CustomerIdentity.id != identity_id)
        .limit(1)
    )
    return found is not None


def _pre_chat(inbox: Inbox) -> dict[str, Any]:
    try:
        return PreChatConfig.of(inbox.settings).view()
    except InboxConfigError as exc:  # stored before the admin API checked it
        log.warning("inbox %s: pre_chat ignored: %s", inbox.id, exc)
        return PreChatConfig(False, False, "").view()


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
                    "pre_chat": _pre_chat(inbox),
                    "identified": bool(chat.claim.get("email")),
                    **availability(inbox, rt.clock.now()),
                },
            }
        )
        await socket.send_json({"type": "history", "data": {"messages": await chat.history()}})
        for hook in VISITOR_HISTORY:
            if chat.conversations:
                for frame in await hook(rt, set(chat.conversations)):
                    await socket.send_json(frame)
        await chat.stream.start(last_event_id(socket), head)
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
                await chat.stream.live(message)

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
                thread_key=f"{VISITOR_SCOPE}{visitor_id}",  # the visitor's own conversation
                scoped=True,
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
