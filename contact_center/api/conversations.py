"""Conversations: list/filter/paginate, show with messages, change status, reply."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import File
from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from contact_center import events
from contact_center.api.common import (
    Page,
    clamp,
    current_agent,
    runtime_of,
    visibility,
    visible_conversation,
)
from contact_center.attachments import INLINE_TYPES
from contact_center.conversations import ConversationError, change_conversation
from contact_center.models import (
    Attachment,
    AuthorType,
    Conversation,
    ConversationRead,
    ConversationStatus,
    Customer,
    CustomerIdentity,
    Direction,
    Inbox,
    Message,
    Priority,
)
from contact_center.outbound import ReplyError, reply, reply_channels
from contact_center.views import conversation_view, customer_view, message_view

StatusName = Literal["open", "pending", "snoozed", "resolved"]
PriorityName = Literal["low", "normal", "high", "urgent"]


class ReplyBody(msgspec.Struct, forbid_unknown_fields=True):
    text: str = ""
    html: str | None = None
    private: bool = False
    client_id: str | None = msgspec.field(default=None)
    # Another of the customer's channels to send it on (GET .../reply-channels lists them).
    inbox_id: str | None = None


class ReadBody(msgspec.Struct, forbid_unknown_fields=True):
    # Read up to this message (default: the conversation's latest).
    message_id: int | None = None


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def unread_counts(session: Any, agent_id: int, conversation_ids: list[int]) -> dict[int, int]:
    """The customer's messages after the agent's read marker, per conversation (one query)."""
    if not conversation_ids:
        return {}
    marker = func.coalesce(ConversationRead.last_read_message_id, 0)
    rows = await session.execute(
        select(Message.conversation_id, func.count(Message.id))
        .outerjoin(
            ConversationRead,
            and_(
                ConversationRead.conversation_id == Message.conversation_id,
                ConversationRead.agent_id == agent_id,
            ),
        )
        .where(
            Message.conversation_id.in_(conversation_ids),
            Message.direction == Direction.inbound.value,
            Message.author_type == AuthorType.customer.value,
            Message.id > marker,
        )
        .group_by(Message.conversation_id)
    )
    return {cid: int(n) for cid, n in rows.all()}


class ConversationUpdate(msgspec.Struct, forbid_unknown_fields=True):
    status: StatusName | msgspec.UnsetType = msgspec.UNSET
    priority: PriorityName | msgspec.UnsetType = msgspec.UNSET


async def _messages(
    session: Any,
    conversation_id: int,
    limit: int,
    before_id: int | None,
    channel: str,
) -> list[dict[str, Any]]:
    query = select(Message).where(Message.conversation_id == conversation_id)
    if before_id is not None:
        query = query.where(Message.id < before_id)
    rows = list((await session.scalars(query.order_by(Message.id.desc()).limit(limit))).all())
    rows.reverse()
    # A message sent on another of the customer's channels shows that channel.
    other = {m.inbox_id for m in rows} - {None}
    kinds = dict(
        (await session.execute(select(Inbox.id, Inbox.kind).where(Inbox.id.in_(other)))).all()
    )
    return [message_view(m, kinds.get(m.inbox_id, channel), list(m.attachments)) for m in rows]


class ConversationController(Controller):
    path = "/api/v1/conversations"
    tags = ["conversations"]

    @get("/")
    async def list_conversations(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[StatusName | None] = None,
        inbox_id: FromQuery[str | None] = None,
        assignee: FromQuery[str | None] = None,
        customer_id: FromQuery[int | None] = None,
        team_id: FromQuery[int | None] = None,
        limit: FromQuery[int] = 50,
        offset: FromQuery[int] = 0,
    ) -> Page:
        """Conversations the caller may see, most recently active first. ``assignee`` is an
        agent id, ``me`` or ``none``. Each carries ``unread_count``: the customer's messages
        after the caller's read marker (``POST .../read``), and ``customer_label``: the customer's
        name, else their first address."""
        rt = runtime_of(request)
        agent = current_agent(request)
        limit, offset = clamp(limit, offset)
        query = select(Conversation, Inbox.kind).join(Inbox, Inbox.id == Conversation.inbox_id)
        if status:
            query = query.where(Conversation.status == status)
        if inbox_id:
            query = query.where(Conversation.inbox_id == inbox_id)
        if customer_id is not None:
            query = query.where(Conversation.customer_id == customer_id)
        if team_id is not None:
            query = query.where(Conversation.team_id == team_id)
        if assignee == "me":
            query = query.where(Conversation.assignee_id == agent.id)
        elif assignee == "none":
            query = query.where(Conversation.assignee_id.is_(None))
        elif assignee:
            if not assignee.isdigit():
                raise ClientException("assignee is an agent id, 'me' or 'none'")
            query = query.where(Conversation.assignee_id == int(assignee))
        async with rt.db.read() as session:
            rule = await visibility(session, agent)
            if rule is not None:
                query = query.where(rule)
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            # The customer's name, else their first address: what a list shows (no second
            # request per row).
            address = (
                select(CustomerIdentity.address)
                .where(CustomerIdentity.customer_id == Conversation.customer_id)
                .order_by(CustomerIdentity.id)
                .limit(1)
                .scalar_subquery()
            )
            rows = (
                await session.execute(
                    query.join(Customer, Customer.id == Conversation.customer_id)
                    .add_columns(Customer.name, address)
                    .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
            unread = await unread_counts(session, agent.id, [row[0].id for row in rows])
        return Page(
            [
                {
                    **conversation_view(c, kind),
                    "unread_count": unread.get(c.id, 0),
                    "customer_label": name or first_address or None,
                }
                for c, kind, name, first_address in rows
            ],
            total or 0,
            limit,
            offset,
        )

    @get("/{conversation_id:int}")
    async def get_conversation(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[int]
    ) -> dict[str, Any]:
        """One conversation with its customer, its latest 100 messages (oldest first) and the
        caller's ``unread_count``."""
        rt = runtime_of(request)
        async with rt.db.read() as session:
            conv = await visible_conversation(session, current_agent(request), conversation_id)
            inbox = await session.get(Inbox, conv.inbox_id)
            customer = await session.get(Customer, conv.customer_id)
            assert inbox is not None and customer is not None
            agent = current_agent(request)
            unread = await unread_counts(session, agent.id, [conv.id])
            return {
                **conversation_view(conv, inbox.kind),
                "unread_count": unread.get(conv.id, 0),
                "customer": customer_view(customer, list(customer.identities)),
                "messages": await _messages(session, conv.id, 100, None, inbox.kind),
            }

    @get("/{conversation_id:int}/reply-channels")
    async def list_reply_channels(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[int]
    ) -> list[dict[str, Any]]:
        """Where a reply can go: the conversation's inbox first, then the customer's other
        channels (an active inbox of a kind the customer has an address for)."""
        async with runtime_of(request).db.read() as session:
            conv = await visible_conversation(session, current_agent(request), conversation_id)
            return await reply_channels(session, conv)

    @get("/{conversation_id:int}/messages")
    async def list_messages(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[int],
        before_id: FromQuery[int | None] = None,
        limit: FromQuery[int] = 100,
    ) -> list[dict[str, Any]]:
        """Messages oldest first; page backwards with ``before_id``."""
        rt = runtime_of(request)
        limit, _ = clamp(limit, 0)
        async with rt.db.read() as session:
            conv = await visible_conversation(session, current_agent(request), conversation_id)
            inbox = await session.get(Inbox, conv.inbox_id)
            assert inbox is not None
            return await _messages(session, conv.id, limit, before_id, inbox.kind)

    @post("/{conversation_id:int}/messages")
    async def reply_to(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[int],
        data: JSONBody[ReplyBody],
    ) -> Response[dict[str, Any]]:
        """Reply on the conversation's channel (or add an internal note with ``private``).
        Sending is asynchronous: the message starts ``queued``. A repeated ``client_id``
        returns the first message with 200 instead of 201."""
        rt = runtime_of(request)
        agent = current_agent(request)
        if data.client_id is not None and not (0 < len(data.client_id) <= 64):
            raise ClientException("client_id is 1 to 64 characters")
        async with rt.db.write() as session:
            conv = await visible_conversation(session, agent, conversation_id)
            try:
                message, created = await reply(
                    session,
                    conversation_id=conv.id,
                    agent=agent,
                    text=data.text,
                    html=data.html,
                    private=data.private,
                    client_id=data.client_id,
                    clock=rt.clock,
                    via_inbox_id=data.inbox_id,
                )
            except ReplyError as exc:
                raise ClientException(str(exc), status_code=422) from None
            inbox = await session.get(Inbox, message.inbox_id)
            assert inbox is not None
            view = message_view(
                message, inbox.kind, list(message.attachments) if not created else []
            )
        if created:
            await rt.committed()
        return Response(view, status_code=201 if created else 200)

    @post("/{conversation_id:int}/read", status_code=200)
    async def mark_read(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[int],
        data: JSONBody[ReadBody | None] = None,
    ) -> dict[str, Any]:
        """The caller has read the conversation (up to ``message_id``, default its latest
        message). The marker only moves forward: a late or repeated call changes nothing."""
        rt = runtime_of(request)
        agent = current_agent(request)
        async with rt.db.write() as session:
            conv = await visible_conversation(session, agent, conversation_id)
            latest = await session.scalar(
                select(func.max(Message.id)).where(Message.conversation_id == conv.id)
            )
            upto = latest or 0
            if data is not None and data.message_id is not None:
                if data.message_id < 0 or data.message_id > upto:
                    raise ClientException("message_id: not a message of this conversation")
                upto = data.message_id
            now = rt.clock.now()
            insert = sqlite_insert if rt.db.is_sqlite else pg_insert
            inserted = await session.execute(
                insert(ConversationRead)
                .values(
                    agent_id=agent.id,
                    conversation_id=conv.id,
                    last_read_message_id=upto,
                    read_at=now,
                )
                .on_conflict_do_nothing(index_elements=["agent_id", "conversation_id"])
            )
            moved = await session.execute(
                update(ConversationRead)
                .where(
                    ConversationRead.agent_id == agent.id,
                    ConversationRead.conversation_id == conv.id,
                    ConversationRead.last_read_message_id < upto,
                )
                .values(last_read_message_id=upto, read_at=now)
            )
            marker = await session.scalar(
                select(ConversationRead.last_read_message_id).where(
                    ConversationRead.agent_id == agent.id,
                    ConversationRead.conversation_id == conv.id,
                )
            )
            await session.flush()
            unread = await unread_counts(session, agent.id, [conv.id])
            view = {
                "conversation_id": conv.id,
                "last_read_message_id": marker,
                "unread_count": unread.get(conv.id, 0),
            }
            if _rowcount(inserted) or _rowcount(moved):
                # The agent's other tabs and devices clear the count live (their own sockets
                # only: the socket's PERSONAL events).
                events.append(
                    session,
                    "conversation.read",
                    view,
                    clock=rt.clock,
                    conversation_id=conv.id,
                    agent_id=agent.id,
                )
        await rt.committed()
        return view

    @patch("/{conversation_id:int}")
    async def update_conversation(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[int],
        data: JSONBody[ConversationUpdate],
    ) -> dict[str, Any]:
        """Change status (resolve, reopen, pending, snooze) or priority."""
        rt = runtime_of(request)
        agent = current_agent(request)
        async with rt.db.write() as session:
            conv = await visible_conversation(session, agent, conversation_id)
            try:
                await change_conversation(
                    session,
                    conv,
                    clock=rt.clock,
                    acting_agent_id=agent.id,
                    status=None
                    if data.status is msgspec.UNSET
                    else ConversationStatus(data.status),
                    priority=None if data.priority is msgspec.UNSET else Priority[data.priority],
                )
            except ConversationError as exc:
                raise ClientException(str(exc), status_code=409) from None
            inbox = await session.get(Inbox, conv.inbox_id)
            assert inbox is not None
            view = conversation_view(conv, inbox.kind)
        await rt.committed()
        return view


class AttachmentController(Controller):
    path = "/api/v1/attachments"
    tags = ["conversations"]

    @get("/{attachment_id:int}")
    async def download(self, request: Request[Any, Any, Any], attachment_id: FromPath[int]) -> File:
        """The file, if the caller may see its conversation. Only types that cannot run
        script are shown inline; everything else downloads."""
        rt = runtime_of(request)
        async with rt.db.read() as session:
            att = await session.get(Attachment, attachment_id)
            if att is None:
                raise NotFoundException("attachment not found")
            message = await session.get(Message, att.message_id)
            assert message is not None
            await visible_conversation(session, current_agent(request), message.conversation_id)
        inline = att.content_type in INLINE_TYPES
        return File(
            path=rt.store.path(att.storage_key),
            filename=att.filename,
            media_type=att.content_type if inline else "application/octet-stream",
            content_disposition_type="inline" if inline else "attachment",
            headers={
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )
