"""Ingest: the one function every channel adapter hands its normalized message to.

In one transaction it deduplicates on (inbox, provider message id), resolves the customer from
the sender's identity (following merges), threads the message into a conversation, stores the
message with its attachments and appends the domain events. When it returns, the message is
committed: only then may the adapter answer the provider 2xx.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from asyncpg.exceptions import (
    ConnectionDoesNotExistError,
    InterfaceError,
    InternalClientError,
    PostgresError,
    UniqueViolationError,
)
from sqlalchemy import String, Table, and_, bindparam, cast, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.attachments import AttachmentRejected, AttachmentStore, StoredFile
from contact_center.clock import Clock
from contact_center.customers import active_key, resolve_customer
from contact_center.db import Database
from contact_center.group_commit import GroupCommit
from contact_center.identities import IdentityRef
from contact_center.models import (
    Attachment,
    AuthorType,
    Conversation,
    ConversationStatus,
    Customer,
    CustomerIdentity,
    DeliveryStatus,
    Direction,
    DomainEvent,
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
    # A continuous channel where one customer talks from independent places (web chat: each
    # visitor) keeps one active conversation per place: the thread key joins the active key.
    scoped: bool = False
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
    # The conversation was created or (re)opened without an assignee: it may need routing.
    routable: bool = False


class Ingestor:
    def __init__(self, db: Database, store: AttachmentStore, clock: Clock) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self._inbox_kinds: dict[str, str] = {}
        # Conversations committed as routable since ``take_arrivals`` last ran (a hint for
        # the routing engine, published by ``Runtime.committed``).
        self._arrivals: set[int] = set()
        # PostgreSQL: concurrent hot ingests in this process share one statement.
        self.hot_batches: GroupCommit[_HotRow, IngestResult | None] = GroupCommit(self._send_hot)

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
        hot = msg.continuous and not msg.thread_refs and not msg.attachments
        for attempt in range(RETRIES):
            try:
                if hot:
                    found = await self._ingest_hot(msg)
                    if found is not None:
                        return found
                async with self.db.write() as session:
                    result = await self._ingest_once(session, msg, stored, rejected)
                if result.routable:
                    self._arrivals.add(result.conversation_id)
                return result
            except IntegrityError:
                # A concurrent ingest created the same message, identity or active
                # conversation first. Run again: the dedupe check or lookup now sees it.
                if attempt == RETRIES - 1:
                    raise
                log.debug("ingest race on %s, retrying", msg.provider_message_id)
        raise AssertionError("unreachable")

    async def _ingest_hot(self, msg: InboundMessage) -> IngestResult | None:
        """The common case in one statement: a known sender continuing an open conversation.

        On PostgreSQL one statement answers "already stored?", "who is it?" and "which
        conversation?" and, when the answers are the usual ones, stores the message, touches the
        conversation and appends the event. On SQLite the same happens in three statements
        under the write lock. Anything unusual (new sender, merged customer, a conversation
        that is not open, a name to fill in) returns None: the general path handles it.
        """
        channel = self._inbox_kinds.get(msg.inbox_id)
        if channel is None:
            return None  # the general path checks the inbox and caches its kind
        now = self.clock.now()
        html = clean_html(msg.html) if msg.html else None
        text = (msg.text or (html_to_text(html) if html else ""))[:MAX_TEXT]
        values: dict[str, Any] = {
            "conversation_id": None,
            "inbox_id": msg.inbox_id,
            "direction": Direction.inbound.value,
            "author_type": AuthorType.customer.value,
            "customer_id": None,
            "private": False,
            "text": text,
            "html": html,
            "subject": msg.subject,
            "provider_message_id": msg.provider_message_id,
            "delivery_status": DeliveryStatus.received.value,
            "send_attempts": 0,
            "extra": dict(msg.extra),
            "created_at": now,
            "sent_at": msg.sent_at,
        }
        # The event's payload is the message's one JSON shape; the ids are filled in below.
        # (Read off a plain namespace: an ORM instance costs more to build than the rest.)
        unset = {"id": None, "agent_id": None, "status_reason": None, "client_id": None}
        payload = message_view(SimpleNamespace(**unset, to_address=None, **values), channel)  # type: ignore[arg-type]
        keys = {
            "inbox": msg.inbox_id,
            "pid": msg.provider_message_id,
            "kind": msg.sender.kind,
            "addr": msg.sender.address,
            "key_prefix": active_key(msg.inbox_id, 0, _scope(msg))[:-1],
            "needs_name": bool(msg.sender.display_name),
        }
        if not self.db.is_sqlite:
            # Sent with whatever other hot ingests arrive meanwhile, as one statement
            # (`_send_hot`); the outcome is this message's own.
            return await self.hot_batches.submit(
                (
                    msg.inbox_id,
                    msg.provider_message_id,
                    msg.sender.kind,
                    msg.sender.address,
                    str(keys["key_prefix"]),
                    bool(keys["needs_name"]),
                    text,
                    html,
                    msg.subject,
                    json.dumps(values["extra"]) if values["extra"] else "{}",
                    now,
                    msg.sent_at,
                    json.dumps(payload),
                )
            )
        async with self.db.engine.begin() as conn:
            row = (await conn.execute(_HOT_LOOKUP, keys)).one()
            if row.dup_id is not None:
                return IngestResult(
                    row.dup_id, row.dup_conversation_id, row.dup_customer_id or 0, True
                )
            if (
                row.customer_id is None
                or row.merged_into_id is not None
                or (not row.customer_name and keys["needs_name"])
                or row.conversation_id is None
                or row.conversation_status != ConversationStatus.open
            ):
                return None
            # BEGIN IMMEDIATE holds the write lock since the lookup: nothing changed since.
            values.update(conversation_id=row.conversation_id, customer_id=row.customer_id)
            await conn.execute(
                update(_CONVERSATIONS)
                .where(_CONVERSATIONS.c.id == row.conversation_id)
                .values(last_message_at=now, updated_at=now)
            )
            message_id = await conn.scalar(
                insert(_MESSAGES).values(values).returning(_MESSAGES.c.id)
            )
            assert message_id is not None
            await conn.execute(
                insert(_EVENTS).values(
                    type="message.created",
                    payload={
                        **payload,
                        "id": message_id,
                        "conversation_id": row.conversation_id,
                        "customer_id": row.customer_id,
                    },
                    conversation_id=row.conversation_id,
                    customer_id=row.customer_id,
                    created_at=now,
                )
            )
            return IngestResult(message_id, row.conversation_id, row.customer_id, False)

    async def _send_hot(self, rows: list[_HotRow]) -> list[IngestResult | BaseException | None]:
        """PostgreSQL: a batch of hot ingests as one statement, one outcome per row, in order.

        One statement is one transaction: every row of the batch is committed when it returns
        (or none is). Rows with the same (inbox, provider id) are sent once: the first caller
        hears what happened to it, the others that it is a duplicate of that message.
        """
        first: dict[tuple[str, str], int] = {}
        unique: list[_HotRow] = []
        index: list[int] = []
        for row in rows:
            at = first.setdefault((row[0], row[1]), len(unique))
            if at == len(unique):
                unique.append(row)
            index.append(at)
        outcomes = await self._run_hot(unique)
        answered: set[int] = set()
        results: list[IngestResult | BaseException | None] = []
        for at in index:
            outcome = outcomes[at]
            if at in answered and isinstance(outcome, IngestResult):
                outcome = replace(outcome, duplicate=True)
            answered.add(at)
            results.append(outcome)
        return results

    async def _run_hot(self, rows: list[_HotRow]) -> list[IngestResult | BaseException | None]:
        # One statement is its own transaction: sent on the driver's own pool, without the
        # BEGIN, COMMIT and pre-ping round trips of a SQLAlchemy transaction.
        pool = await self.db.driver_pool()
        sql = _hot_pg_sql(len(rows))
        args = [value for row in rows for value in row]
        try:
            try:
                found = await pool.fetch(sql, *args)
            except (InterfaceError, ConnectionDoesNotExistError, InternalClientError):
                # The server dropped a pooled connection (a restart; an idle connection that
                # heard the server's goodbye reports InternalClientError); the pool replaces it.
                # Running again is safe: had the first run committed, the dedupe part of the
                # statement now finds the messages.
                log.info("ingest: database connection lost, running the statement again")
                await pool.expire_connections()  # the others are likely gone too
                found = await pool.fetch(sql, *args)
        except UniqueViolationError as exc:
            if len(rows) > 1:
                return await self._run_hot_alone(rows)
            # A concurrent ingest (another process) stored it first: the caller's retry finds it.
            return [IntegrityError(sql, None, exc)]
        except PostgresError:
            if len(rows) > 1:
                # One row spoiled the batch (nothing of it was written): each row on its own,
                # so the others are stored and only that one's caller hears the error.
                return await self._run_hot_alone(rows)
            raise
        results: list[IngestResult | BaseException | None] = []
        for record in found:
            (
                dup_id,
                dup_conversation_id,
                dup_customer_id,
                message_id,
                conversation_id,
                customer_id,
            ) = record
            if dup_id is not None:
                results.append(
                    IngestResult(dup_id, dup_conversation_id, dup_customer_id or 0, True)
                )
            elif message_id is None:
                results.append(None)
            else:
                results.append(IngestResult(message_id, conversation_id, customer_id, False))
        return results

    async def _run_hot_alone(
        self, rows: list[_HotRow]
    ) -> list[IngestResult | BaseException | None]:
        log.info("ingest: a batch of %d failed as a whole, sending its rows one by one", len(rows))
        results: list[IngestResult | BaseException | None] = []
        for row in rows:
            try:
                results += await self._run_hot([row])
            except Exception as exc:
                results.append(exc)
        return results

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
            routable=(created or changed or reopened) and conversation.assignee_id is None,
        )

    def take_arrivals(self) -> list[int]:
        """The routable conversations committed since the last call (and forget them)."""
        arrivals, self._arrivals = self._arrivals, set()
        return sorted(arrivals)

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
        key = active_key(msg.inbox_id, customer.id, _scope(msg)) if msg.continuous else None
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


def _scope(msg: InboundMessage) -> str | None:
    return msg.thread_key if msg.scoped else None


_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
_EVENTS: Table = DomainEvent.__table__  # type: ignore[assignment]
_IDENTITIES: Table = CustomerIdentity.__table__  # type: ignore[assignment]
_CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]

_dup = _MESSAGES.alias("dup")
_one = select(literal(1).label("one")).subquery("one")
_HOT_LOOKUP = select(
    _dup.c.id.label("dup_id"),
    _dup.c.conversation_id.label("dup_conversation_id"),
    _dup.c.customer_id.label("dup_customer_id"),
    _IDENTITIES.c.customer_id,
    _CUSTOMERS.c.merged_into_id,
    _CUSTOMERS.c.name.label("customer_name"),
    _CONVERSATIONS.c.id.label("conversation_id"),
    _CONVERSATIONS.c.status.label("conversation_status"),
).select_from(
    _one.outerjoin(
        _dup,
        and_(
            _dup.c.inbox_id == bindparam("inbox", type_=String),
            _dup.c.provider_message_id == bindparam("pid", type_=String),
        ),
    )
    .outerjoin(
        _IDENTITIES,
        and_(
            _IDENTITIES.c.kind == bindparam("kind", type_=String),
            _IDENTITIES.c.address == bindparam("addr", type_=String),
        ),
    )
    .outerjoin(_CUSTOMERS, _CUSTOMERS.c.id == _IDENTITIES.c.customer_id)
    .outerjoin(
        _CONVERSATIONS,
        _CONVERSATIONS.c.active_key
        == bindparam("key_prefix", type_=String) + cast(_IDENTITIES.c.customer_id, String),
    )
)

# PostgreSQL, one round trip for a whole batch of hot ingests (a VALUES row per message, in the
# order of `_HotRow`). "look" is the lookup above, row by row (each lookup a LATERAL subquery with
# LIMIT 1, so it stays an index probe whatever the planner estimates); "ok" keeps the new messages
# from known, unmerged senders with an active conversation. "conv" touches those conversations
# only while they are still open (the row lock orders this against a concurrent resolve: under
# READ COMMITTED the status is re-checked on the locked row; `id = ANY(ARRAY(...))` finds them by
# primary key, so they are locked in id order); "msg" and the events follow only for the rows
# whose conversation was touched. The rows that come back, one per input row in order, tell each
# caller what happened (message_id NULL and no duplicate: take the general path). There is one
# statement text per batch size: VALUES tells the planner how many rows come, so each size's
# prepared statement settles on a generic plan (an array parameter would be estimated at 10 rows
# and planned again on every execution).
_HOT_PG_TYPES = (
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "boolean",
    "text",
    "text",
    "varchar",
    "text",
    "timestamptz",
    "timestamptz",
    "text",
)
_HOT_PG = """
WITH input AS (
    SELECT * FROM (VALUES {rows}) AS i(inbox, pid, kind, addr, key_prefix, needs_name, text,
        html, subject, extra, created_at, sent_at, payload, ord)
), look AS (
    SELECT i.*, dup.id AS dup_id, dup.conversation_id AS dup_conversation_id,
        dup.customer_id AS dup_customer_id, who.customer_id, who.merged_into_id,
        who.customer_name, active.id AS conversation_id
    FROM input AS i
    LEFT JOIN LATERAL (
        SELECT m.id, m.conversation_id, m.customer_id FROM messages AS m
        WHERE m.inbox_id = i.inbox AND m.provider_message_id = i.pid LIMIT 1
    ) AS dup ON true
    LEFT JOIN LATERAL (
        SELECT ci.customer_id, cu.merged_into_id, cu.name AS customer_name
        FROM customer_identities AS ci JOIN customers AS cu ON cu.id = ci.customer_id
        WHERE ci.kind = i.kind AND ci.address = i.addr LIMIT 1
    ) AS who ON true
    LEFT JOIN LATERAL (
        SELECT c.id FROM conversations AS c
        WHERE c.active_key = i.key_prefix || CAST(who.customer_id AS VARCHAR) LIMIT 1
    ) AS active ON true
), ok AS (
    SELECT * FROM look
    WHERE dup_id IS NULL AND merged_into_id IS NULL AND conversation_id IS NOT NULL
        AND (customer_name <> '' OR NOT needs_name)
), conv AS (
    UPDATE conversations AS c
    SET (last_message_at, updated_at) = (
        SELECT max(ok.created_at), max(ok.created_at) FROM ok WHERE ok.conversation_id = c.id
    )
    WHERE c.id = ANY(ARRAY(SELECT ok.conversation_id FROM ok))
        -- (|| '': never through the status index, which walks every open conversation)
        AND c.status || '' = 'open'
    RETURNING c.id, c.customer_id
), msg AS (
    INSERT INTO messages (conversation_id, inbox_id, direction, author_type, customer_id,
        private, text, html, subject, provider_message_id, delivery_status, send_attempts,
        extra, created_at, sent_at)
    SELECT conv.id, ok.inbox, 'in', 'customer',
        conv.customer_id, false, ok.text, ok.html, ok.subject, ok.pid,
        'received', 0, CAST(ok.extra AS JSONB), ok.created_at, ok.sent_at
    FROM ok JOIN conv ON conv.id = ok.conversation_id
    ORDER BY ok.ord
    RETURNING id, conversation_id, customer_id, inbox_id, provider_message_id
), ev AS (
    INSERT INTO domain_events (type, conversation_id, customer_id, payload, created_at)
    SELECT 'message.created', msg.conversation_id, msg.customer_id,
        CAST(ok.payload AS JSONB) || jsonb_build_object('id', msg.id,
            'conversation_id', msg.conversation_id, 'customer_id', msg.customer_id),
        ok.created_at
    FROM msg JOIN ok ON ok.inbox = msg.inbox_id AND ok.pid = msg.provider_message_id
    ORDER BY msg.id
)
SELECT look.dup_id, look.dup_conversation_id, look.dup_customer_id, msg.id AS message_id,
    msg.conversation_id, msg.customer_id
FROM look LEFT JOIN msg ON msg.inbox_id = look.inbox AND msg.provider_message_id = look.pid
ORDER BY look.ord
"""
_HOT_PG_SQL: dict[int, str] = {}


def _hot_pg_sql(size: int) -> str:
    """The hot statement for a batch of ``size`` rows (made once per size)."""
    sql = _HOT_PG_SQL.get(size)
    if sql is None:
        width = len(_HOT_PG_TYPES)
        rows = ", ".join(
            "("
            + ", ".join(f"${n * width + i + 1}::{t}" for i, t in enumerate(_HOT_PG_TYPES))
            + f", {n + 1})"
            for n in range(size)
        )
        sql = _HOT_PG_SQL[size] = _HOT_PG.replace("{rows}", rows)
    return sql


# One hot ingest, in the order of the statement's arrays: inbox, provider id, identity kind and
# address, active-key prefix, needs a name, text, html, subject, extra (JSON), created at, sent
# at, event payload (JSON).
_HotRow = tuple[
    str, str, str, str, str, bool, str, str | None, str | None, str, datetime, datetime | None, str
]
