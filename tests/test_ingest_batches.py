"""Group commit of the hot path: messages that arrive together are stored as one statement on
PostgreSQL, and every guarantee of one-at-a-time ingest still holds for each of them.

To put messages in one batch for certain, a first message (from the "holder") is sent while
another transaction holds its conversation's row lock: it stays in flight, the messages under
test queue behind it, and they go together as the next statement when the lock is released.
SQLite has no batches (writes queue on its write lock): the same messages go concurrently, and
the same outcomes are asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from contact_center.conversations import change_conversation
from contact_center.ingest import InboundMessage, IngestResult
from contact_center.models import Conversation, ConversationStatus, DomainEvent, Message
from contact_center.runtime import Runtime
from tests.helpers import ingest, make_inbox, sms

HOLDER = "+14155550199"
A = "+14155550100"
B = "+14155550101"
NEW = "+14155550102"


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for something another connection or task does (bounded)."""
    for _ in range(2000):
        if await condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def lock_waiters(rt: Runtime) -> int:
    async with rt.db.engine.connect() as conn:
        return int(
            await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            )
            or 0
        )


@asynccontextmanager
async def held_open(rt: Runtime) -> AsyncIterator[AsyncConnection]:
    """PostgreSQL: a transaction holding the holder's conversation, with a hot ingest from the
    holder in flight behind it. Leaving commits it, and the holder's ingest completes."""
    holder = await ingest(rt, sms("first", sid="SM-hold-0", phone=HOLDER))
    async with rt.db.engine.connect() as conn:
        await conn.execute(
            text("SELECT id FROM conversations WHERE id = :id FOR UPDATE"),
            {"id": holder.conversation_id},
        )
        held = asyncio.ensure_future(ingest(rt, sms("held", sid="SM-hold-1", phone=HOLDER)))

        async def waiting() -> bool:
            return await lock_waiters(rt) >= 1

        await until(waiting)
        yield conn
        await conn.commit()
    result = await held
    assert not result.duplicate and result.conversation_id == holder.conversation_id


async def in_one_batch(
    rt: Runtime,
    messages: list[InboundMessage],
    *,
    then: Callable[[], Awaitable[None]] | None = None,
) -> list[IngestResult | BaseException]:
    """Ingest ``messages`` as one batch (PostgreSQL) or concurrently (SQLite)."""
    if rt.db.is_sqlite:
        return await asyncio.gather(*(ingest(rt, m) for m in messages), return_exceptions=True)
    async with held_open(rt):
        tasks = [asyncio.ensure_future(ingest(rt, m)) for m in messages]

        async def queued() -> bool:
            return rt.ingestor.hot_batches.waiting == len(messages)

        await until(queued)
    if then is not None:
        await then()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def count(rt: Runtime, model: type, *where: ColumnElement[bool]) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_two_duplicates_in_one_batch_store_one_message(rt: Runtime) -> None:
    await make_inbox(rt)
    known = await ingest(rt, sms("hello", sid="SM-a0", phone=A))
    results = await in_one_batch(
        rt,
        [
            sms("twice", sid="SM-dup", phone=A),
            sms("other", sid="SM-a1", phone=A),
            sms("twice", sid="SM-dup", phone=A),
        ],
    )
    assert all(isinstance(r, IngestResult) for r in results)
    first, other, second = (r for r in results if isinstance(r, IngestResult))
    assert [first.duplicate, second.duplicate].count(False) == 1
    assert first.message_id == second.message_id
    assert {first.conversation_id, second.conversation_id, other.conversation_id} == {
        known.conversation_id
    }
    assert not other.duplicate and other.message_id != first.message_id
    assert await count(rt, Message, Message.provider_message_id == "SM-dup") == 1
    async with rt.db.read() as session:
        events = (
            await session.scalars(
                select(DomainEvent)
                .where(
                    DomainEvent.type == "message.created",
                    DomainEvent.conversation_id == known.conversation_id,
                )
                .order_by(DomainEvent.id)
            )
        ).all()
    # One event per stored message, each describing its own message, in the messages' order.
    ids = [e.payload["id"] for e in events]
    assert ids == sorted({known.message_id, first.message_id, other.message_id})
    texts = {e.payload["id"]: e.payload["text"] for e in events}
    assert texts[first.message_id] == "twice" and texts[other.message_id] == "other"


async def test_a_batch_row_that_needs_the_general_path_takes_it(rt: Runtime) -> None:
    await make_inbox(rt)
    a = await ingest(rt, sms("hello", sid="SM-a0", phone=A))
    b = await ingest(rt, sms("hello", sid="SM-b0", phone=B))
    async with rt.db.write() as session:
        conv = await session.get(Conversation, b.conversation_id)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, status=ConversationStatus.pending
        )
    results = await in_one_batch(
        rt,
        [
            sms("known, open", sid="SM-a1", phone=A),
            sms("first contact", sid="SM-n0", phone=NEW),
            sms("pending: reopens", sid="SM-b1", phone=B),
            sms("known, open again", sid="SM-a2", phone=A),
        ],
    )
    a1, n0, b1, a2 = results
    assert isinstance(a1, IngestResult) and isinstance(a2, IngestResult)
    assert isinstance(n0, IngestResult) and isinstance(b1, IngestResult)
    assert (a1.conversation_id, a2.conversation_id) == (a.conversation_id, a.conversation_id)
    assert a1.message_id < a2.message_id  # arrival order kept within the batch
    assert n0.conversation_created and n0.customer_id not in (a.customer_id, b.customer_id)
    assert b1.conversation_id == b.conversation_id and not b1.duplicate
    async with rt.db.read() as session:
        reopened = await session.get(Conversation, b.conversation_id)
        assert reopened is not None and reopened.status == ConversationStatus.open
        touched = await session.get(Conversation, a.conversation_id)
        stored = await session.get(Message, a2.message_id)
        assert touched is not None and stored is not None
        assert touched.last_message_at == stored.created_at
    held = 0 if rt.db.is_sqlite else 2  # the holder's two messages
    assert await count(rt, Message) == 6 + held


async def test_a_failed_batch_does_not_lose_the_others(rt: Runtime) -> None:
    """Another process commits one of the batch's provider ids while the batch is in flight: the
    statement fails as a whole on the unique index; each row is then stored (or found) alone."""
    if rt.db.is_sqlite:
        pytest.skip("batches are PostgreSQL's (SQLite queues writers on its lock)")
    await make_inbox(rt)
    a = await ingest(rt, sms("hello", sid="SM-a0", phone=A))
    b = await ingest(rt, sms("hello", sid="SM-b0", phone=B))
    async with rt.db.engine.connect() as other:
        # The other process's ingest of SM-x, not committed yet.
        theirs = await other.scalar(
            text(
                "INSERT INTO messages (conversation_id, inbox_id, direction, author_type,"
                " customer_id, private, text, provider_message_id, delivery_status,"
                " send_attempts, extra, created_at)"
                " VALUES (:c, 'sms', 'in', 'customer', :cu, false, 'x', 'SM-x', 'received', 0,"
                " '{}', now()) RETURNING id"
            ),
            {"c": b.conversation_id, "cu": b.customer_id},
        )

        async def commit_theirs() -> None:
            async def blocked() -> bool:
                return await lock_waiters(rt) >= 1  # the batch waits on SM-x's index entry

            await until(blocked)
            await other.commit()

        results = await in_one_batch(
            rt,
            [
                sms("mine", sid="SM-a1", phone=A),
                sms("x", sid="SM-x", phone=B),
                sms("also mine", sid="SM-b1", phone=B),
            ],
            then=commit_theirs,
        )
    a1, x, b1 = results
    assert isinstance(a1, IngestResult) and isinstance(x, IngestResult)
    assert isinstance(b1, IngestResult)
    assert x.duplicate and x.message_id == theirs
    assert not a1.duplicate and a1.conversation_id == a.conversation_id
    assert not b1.duplicate and b1.conversation_id == b.conversation_id
    assert await count(rt, Message, Message.provider_message_id.in_(["SM-a1", "SM-b1"])) == 2
    assert await count(rt, Message, Message.provider_message_id == "SM-x") == 1
    async with rt.db.read() as session:
        payloads = (
            await session.scalars(
                select(DomainEvent.payload).where(DomainEvent.type == "message.created")
            )
        ).all()
    described = [p["id"] for p in payloads]
    assert described.count(a1.message_id) == 1 and described.count(b1.message_id) == 1
    assert described.count(theirs) == 0  # the other process appends its own
