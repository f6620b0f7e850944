"""Ingest: dedupe, identity resolution, threading, attachments, sanitizing, concurrency."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text

from contact_center.identities import IdentityRef
from contact_center.ingest import InboundAttachment, InboundMessage, UnknownInbox
from contact_center.models import (
    Attachment,
    Conversation,
    ConversationStatus,
    Customer,
    CustomerIdentity,
    DomainEvent,
    Message,
)
from contact_center.runtime import Runtime
from tests.helpers import ingest, make_inbox, sms


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_first_message_creates_customer_conversation_and_events(rt: Runtime) -> None:
    await make_inbox(rt)
    result = await ingest(rt, sms("Hello", sid="SM1"))
    assert not result.duplicate
    assert result.conversation_created
    async with rt.db.read() as session:
        message = await session.get(Message, result.message_id)
        assert message is not None
        assert message.text == "Hello"
        assert message.direction == "in"
        identity = await session.scalar(select(CustomerIdentity))
        assert identity is not None
        assert (identity.kind, identity.address) == ("phone", "+14155550100")
        types = (await session.scalars(select(DomainEvent.type).order_by(DomainEvent.id))).all()
    assert types == ["customer.created", "conversation.created", "message.created"]


async def test_replayed_provider_id_is_stored_once(rt: Runtime) -> None:
    await make_inbox(rt)
    first = await ingest(rt, sms("Hello", sid="SM1"))
    again = await ingest(rt, sms("Hello", sid="SM1"))
    assert again.duplicate
    assert again.message_id == first.message_id
    assert await count(rt, Message) == 1
    assert await count(rt, DomainEvent) == 3


async def test_same_provider_id_in_two_inboxes_is_two_messages(rt: Runtime) -> None:
    await make_inbox(rt, "sms")
    await make_inbox(rt, "sms2", address="+15005550009")
    await ingest(rt, sms("a", sid="SM1"))
    await ingest(rt, sms("b", sid="SM1", inbox_id="sms2"))
    assert await count(rt, Message) == 2


async def test_concurrent_duplicates_store_exactly_one(rt: Runtime) -> None:
    await make_inbox(rt)
    results = await asyncio.gather(*(ingest(rt, sms("Hi", sid="SM-dup")) for _ in range(8)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.message_id for r in results}) == 1
    assert await count(rt, Message) == 1
    assert await count(rt, Customer) == 1


async def test_concurrent_duplicates_from_a_known_sender_store_exactly_one(rt: Runtime) -> None:
    await make_inbox(rt)
    first = await ingest(rt, sms("Hi", sid="SM-first"))
    results = await asyncio.gather(*(ingest(rt, sms("again", sid="SM-dup")) for _ in range(8)))
    assert sum(not r.duplicate for r in results) == 1
    assert {r.conversation_id for r in results} == {first.conversation_id}
    assert await count(rt, Message) == 2
    async with rt.db.read() as session:
        created = (
            await session.scalars(select(DomainEvent).where(DomainEvent.type == "message.created"))
        ).all()
    assert len(created) == 2


async def test_hot_path_survives_the_server_dropping_its_connections(rt: Runtime) -> None:
    if rt.db.is_sqlite:
        pytest.skip("PostgreSQL's connections (SQLite has none to lose)")
    await make_inbox(rt)
    await ingest(rt, sms("one", sid="SM1"))
    await ingest(rt, sms("two", sid="SM2"))  # the known-sender path: the driver's pool
    pool = await rt.db.driver_pool()
    # What a database restart does to every pooled connection.
    async with rt.db.engine.connect() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert killed and killed >= pool.get_size()
    third = await ingest(rt, sms("three", sid="SM3"))
    assert not third.duplicate
    again = await ingest(rt, sms("three", sid="SM3"))
    assert again.duplicate and again.message_id == third.message_id
    async with rt.db.read() as session:
        texts = (await session.scalars(select(Message.text).order_by(Message.id))).all()
    assert texts == ["one", "two", "three"]


async def test_message_event_describes_the_stored_message(rt: Runtime) -> None:
    await make_inbox(rt)
    await ingest(rt, sms("one", sid="SM1"))
    second = await ingest(rt, sms("two <b>bold</b>", sid="SM2", extra={"k": "v"}))
    async with rt.db.read() as session:
        event = (
            await session.scalars(
                select(DomainEvent)
                .where(DomainEvent.type == "message.created")
                .order_by(DomainEvent.id.desc())
            )
        ).first()
        conv = await session.get(Conversation, second.conversation_id)
    assert event is not None and conv is not None
    assert event.conversation_id == second.conversation_id
    assert event.customer_id == second.customer_id
    data = event.payload
    assert data["id"] == second.message_id
    assert data["conversation_id"] == second.conversation_id
    assert data["customer_id"] == second.customer_id
    assert (data["text"], data["channel"], data["direction"]) == ("two <b>bold</b>", "sms", "in")
    assert data["delivery_status"] == "received"
    assert conv.last_message_at.isoformat().replace("+00:00", "Z") == data["created_at"]


async def test_known_sender_without_a_name_gets_the_one_they_send(rt: Runtime) -> None:
    await make_inbox(rt)
    first = await ingest(rt, sms("one", sid="SM1"))
    named = IdentityRef.of("phone", "+14155550100", display_name="Ayşe Yılmaz")
    again = await ingest(
        rt, InboundMessage(inbox_id="sms", provider_message_id="SM2", sender=named, text="two")
    )
    assert again.conversation_id == first.conversation_id
    async with rt.db.read() as session:
        customer = await session.get(Customer, first.customer_id)
    assert customer is not None and customer.name == "Ayşe Yılmaz"


async def test_messages_from_a_merged_customer_reach_the_survivor(rt: Runtime) -> None:
    from contact_center.customers import merge_customers

    await make_inbox(rt)
    a = await ingest(rt, sms("from a", sid="SM1", phone="+14155550100"))
    b = await ingest(rt, sms("from b", sid="SM2", phone="+14155550101"))
    async with rt.db.write() as session:
        await merge_customers(
            session,
            source_id=b.customer_id,
            target_id=a.customer_id,
            clock=rt.clock,
            acting_agent_id=0,
        )
    later = await ingest(rt, sms("b again", sid="SM3", phone="+14155550101"))
    assert later.customer_id == a.customer_id


async def test_concurrent_first_messages_from_new_customer_share_one_conversation(
    rt: Runtime,
) -> None:
    await make_inbox(rt)
    results = await asyncio.gather(*(ingest(rt, sms(f"m{i}", sid=f"SM{i}")) for i in range(6)))
    assert len({r.customer_id for r in results}) == 1
    assert len({r.conversation_id for r in results}) == 1
    assert await count(rt, Message) == 6


async def test_messages_thread_into_the_active_conversation(rt: Runtime) -> None:
    await make_inbox(rt)
    a = await ingest(rt, sms("one", sid="SM1"))
    b = await ingest(rt, sms("two", sid="SM2"))
    other = await ingest(rt, sms("hi", sid="SM3", phone="+14155550199"))
    assert a.conversation_id == b.conversation_id
    assert other.conversation_id != a.conversation_id
    assert other.customer_id != a.customer_id


async def test_resolved_conversation_is_not_reused_by_chat_channels(rt: Runtime) -> None:
    from contact_center.conversations import change_conversation

    await make_inbox(rt)
    first = await ingest(rt, sms("one", sid="SM1"))
    async with rt.db.write() as session:
        conv = await session.get(Conversation, first.conversation_id)
        assert conv is not None
        await change_conversation(
            session,
            conv,
            clock=rt.clock,
            acting_agent_id=None,
            status=ConversationStatus.resolved,
        )
    second = await ingest(rt, sms("back again", sid="SM2"))
    assert second.conversation_id != first.conversation_id
    assert second.conversation_created


async def test_pending_conversation_reopens_when_customer_writes(rt: Runtime) -> None:
    from contact_center.conversations import change_conversation

    await make_inbox(rt)
    first = await ingest(rt, sms("one", sid="SM1"))
    async with rt.db.write() as session:
        conv = await session.get(Conversation, first.conversation_id)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, status=ConversationStatus.pending
        )
    again = await ingest(rt, sms("still broken", sid="SM2"))
    assert again.conversation_id == first.conversation_id
    async with rt.db.read() as session:
        conv = await session.get(Conversation, first.conversation_id)
        assert conv is not None
        assert conv.status == "open"


async def test_email_threads_by_reference_and_otherwise_opens_new(rt: Runtime) -> None:
    await make_inbox(rt, "email", "email", "support@example.com", credentials={})

    def mail(
        sid: str, refs: tuple[str, ...] = (), sender: str = "ann@example.org"
    ) -> InboundMessage:
        return InboundMessage(
            inbox_id="email",
            provider_message_id=sid,
            sender=IdentityRef.of("email", sender),
            subject="Invoice",
            text="text",
            continuous=False,
            thread_refs=refs,
            thread_key=sid,
        )

    first = await ingest(rt, mail("<a@x>"))
    reply = await ingest(rt, mail("<b@x>", refs=("<a@x>",)))
    fresh = await ingest(rt, mail("<c@x>"))
    stranger = await ingest(rt, mail("<d@x>", refs=("<a@x>",), sender="eve@example.org"))
    assert reply.conversation_id == first.conversation_id
    assert fresh.conversation_id != first.conversation_id
    # A different sender quoting the same thread never joins someone else's conversation.
    assert stranger.conversation_id != first.conversation_id


async def test_sms_and_whatsapp_from_one_number_are_one_customer(rt: Runtime) -> None:
    await make_inbox(rt, "sms")
    await make_inbox(rt, "wa", "whatsapp", "whatsapp:+15005550007")
    a = await ingest(rt, sms("by sms", sid="SM1", phone="+905321112233"))
    b = await ingest(
        rt,
        InboundMessage(
            inbox_id="wa",
            provider_message_id="WA1",
            sender=IdentityRef.of("whatsapp", "whatsapp:+90 532 111 22 33"),
            text="by whatsapp",
        ),
    )
    assert a.customer_id == b.customer_id
    assert a.conversation_id != b.conversation_id
    async with rt.db.read() as session:
        kinds = sorted((await session.scalars(select(CustomerIdentity.kind))).all())
    assert kinds == ["phone", "whatsapp"]


async def test_unknown_inbox_is_refused(rt: Runtime) -> None:
    with pytest.raises(UnknownInbox):
        await ingest(rt, sms("x", sid="SM1", inbox_id="nope"))
    assert await count(rt, Customer) == 0


async def test_html_is_sanitized_and_text_derived(rt: Runtime) -> None:
    await make_inbox(rt)
    result = await ingest(
        rt,
        sms(
            "",
            sid="SM1",
            html='<p onclick="steal()">Hi <b>there</b></p><script>alert(1)</script>'
            '<a href="javascript:alert(1)">x</a><img src="https://t.example/p.gif">',
        ),
    )
    async with rt.db.read() as session:
        message = await session.get(Message, result.message_id)
    assert message is not None
    assert message.html is not None
    for bad in ("script", "onclick", "javascript:"):
        assert bad not in message.html
    assert "<b>there</b>" in message.html
    assert message.text.startswith("Hi there")


async def test_attachments_are_stored_checked_and_limited(rt: Runtime) -> None:
    await make_inbox(rt)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    result = await ingest(
        rt,
        sms(
            "see photo",
            sid="SM1",
            attachments=(
                InboundAttachment("photo.png", "image/png", png),
                InboundAttachment("fake.pdf", "application/pdf", png),  # really a PNG
                InboundAttachment("run.exe", "application/octet-stream", b"MZ" + b"\0" * 100),
                InboundAttachment("big.bin", None, b"x" * (rt.settings.attachment_max_bytes + 1)),
            ),
        ),
    )
    assert len(result.rejected_attachments) == 2
    async with rt.db.read() as session:
        rows = (await session.scalars(select(Attachment).order_by(Attachment.id))).all()
        message = await session.get(Message, result.message_id)
    assert [(a.filename, a.content_type) for a in rows] == [
        ("photo.png", "image/png"),
        ("fake.pdf", "image/png"),
    ]
    assert rt.store.path(rows[0].storage_key).read_bytes() == png
    assert message is not None
    assert len(message.extra["rejected_attachments"]) == 2
