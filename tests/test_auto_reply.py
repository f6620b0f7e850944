"""Automatic acknowledgements over real SMTP (in through our SMTP server, out to an SMTP sink),
on both backends: sent once, marked and threaded; never to automatic mail; capped per sender
per day from the database, so two systems answering each other stop."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import func, select

from channels.email import serve_smtp
from contact_center.autoreply import send_auto_reply
from contact_center.clock import ManualClock
from contact_center.models import Agent, Conversation, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org, settle
from tests.test_email import mail

ACK_TEXT = "We received your request and will answer within a day."
CAP = 3


@dataclass
class Sink:
    """The outside world's mail server: records every message we send."""

    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(parsed)
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 OK"


@dataclass
class Mailroom:
    sink: Sink
    inbound_port: int

    def send(self, msg: EmailMessage | bytes, mail_from: str | None = None) -> None:
        with smtplib.SMTP("127.0.0.1", self.inbound_port, timeout=10) as client:
            if isinstance(msg, bytes):
                client.sendmail(mail_from or "", ["support@example.com"], msg)
            else:
                client.send_message(msg, from_addr=mail_from, to_addrs=["support@example.com"])

    async def deliver(self, msg: EmailMessage | bytes, mail_from: str | None = None) -> None:
        await asyncio.to_thread(self.send, msg, mail_from)


@pytest.fixture
async def mailroom(rt: Runtime) -> AsyncIterator[Mailroom]:
    sink = Sink()
    loop = asyncio.get_running_loop()
    out = await loop.create_server(lambda: SMTP(sink, loop=loop), "127.0.0.1", 0)
    await make_inbox(
        rt,
        "email",
        "email",
        "support@example.com",
        credentials={"smtp_host": "127.0.0.1", "smtp_port": str(out.sockets[0].getsockname()[1])},
    )
    from contact_center.models import Inbox

    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "email")
        assert inbox is not None
        inbox.settings = {
            "auto_reply": {
                "enabled": True,
                "subject": "Re: {subject}",
                "text": ACK_TEXT,
                "max_per_sender_per_day": CAP,
            }
        }
    inbound = await serve_smtp(rt, "127.0.0.1", 0)
    try:
        yield Mailroom(sink, inbound.sockets[0].getsockname()[1])
    finally:
        inbound.close()
        out.close()


async def count(rt: Runtime, model: type, *where: Any) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)))


async def test_new_conversation_gets_one_marked_threaded_acknowledgement(
    rt: Runtime, mailroom: Mailroom
) -> None:
    first = mail(msgid="<h1@example.org>")
    await mailroom.deliver(first)
    await mailroom.deliver(first)  # the sending server retried: still one conversation
    await settle(rt)
    assert len(mailroom.sink.received) == 1
    ack = mailroom.sink.received[0]
    assert mailroom.sink.envelopes[0] == ["ayse@example.org"]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["In-Reply-To"] == "<h1@example.org>"
    assert "<h1@example.org>" in ack["References"]
    assert ack["Subject"] == "Re: Fatura sorunu"
    plain = ack.get_body(("plain",))
    rich = ack.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain.get_content().strip() == ACK_TEXT
    assert ACK_TEXT in rich.get_content()
    async with rt.db.read() as session:
        stored = await session.scalar(select(Message).where(Message.direction == "out"))
    assert stored is not None
    assert (stored.author_type, stored.agent_id, stored.delivery_status) == ("system", None, "sent")
    assert stored.provider_message_id == ack["Message-ID"]

    # The customer answers in the thread: not a new conversation, so no second acknowledgement;
    # and running the job again (a replayed event) records nothing.
    answer = mail(msgid="<h2@example.org>", In_Reply_To=ack["Message-ID"], body="Ek bilgi")
    await mailroom.deliver(answer)
    await settle(rt)
    async with rt.db.read() as session:
        conversation_id = (await session.scalars(select(Conversation.id))).one()
    assert not await send_auto_reply(rt, conversation_id)
    await settle(rt)
    assert len(mailroom.sink.received) == 1
    assert await count(rt, Message) == 3


BOUNCE = (
    b"From: Mail Delivery System <mailer@mx.example.net>\r\n"
    b"To: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
    b"Message-ID: <dsn-1@mx.example.net>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n"
    b"--b--\r\n"
)


async def test_automatic_mail_is_never_answered(rt: Runtime, mailroom: Mailroom) -> None:
    kinds: list[dict[str, str]] = [
        {"Auto_Submitted": "auto-replied"},
        {"Auto_Submitted": "auto-generated"},
        {"Precedence": "bulk"},
        {"Precedence": "junk"},
        {"Precedence": "list"},
        {"X_Autoreply": "yes"},
        {"X_Autorespond": "Out of office"},
        {"List_Id": "<news.example.net>"},
        {"List_Unsubscribe": "<mailto:leave@example.net>"},
        {"Return_Path": "<>"},
        {"X_Auto_Response_Suppress": "All"},
        {"sender": "MAILER-DAEMON@mx.example.net"},
        {"sender": "postmaster@example.net"},
    ]
    for number, headers in enumerate(kinds):
        sender = headers.pop("sender", f"robot{number}@example.net")
        await mailroom.deliver(mail(sender=sender, subject=f"auto {number}", **headers))
    await mailroom.deliver(BOUNCE, mail_from="mailer@mx.example.net")
    # A bounce over SMTP has the null reverse path (MAIL FROM:<>), whatever its headers say.
    await mailroom.deliver(mail(sender="someone@example.net", subject="null sender").as_bytes())
    await settle(rt)
    assert await count(rt, Conversation) == len(kinds) + 2
    assert mailroom.sink.received == []
    # The same set-up does answer a person.
    await mailroom.deliver(mail(sender="person@example.org"))
    await settle(rt)
    assert [m["To"] for m in mailroom.sink.received] == ["person@example.org"]


async def test_cap_per_sender_per_day_holds(
    rt: Runtime, clock: ManualClock, mailroom: Mailroom
) -> None:
    for number in range(CAP + 2):
        await mailroom.deliver(mail(subject=f"Question {number}"))
        await settle(rt)
    await mailroom.deliver(mail(sender="other@example.org", subject="Someone else"))
    await settle(rt)
    assert await count(rt, Conversation) == CAP + 3
    assert [m["To"] for m in mailroom.sink.received] == ["ayse@example.org"] * CAP + [
        "other@example.org"
    ]
    # A day later the sender may be acknowledged again.
    clock.advance(hours=25)
    await mailroom.deliver(mail(subject="Next day"))
    async with rt.db.read() as session:
        newest = await session.scalar(select(func.max(Conversation.id)))
    assert newest is not None
    assert await send_auto_reply(rt, newest)


@dataclass
class AutoResponder:
    """Another system's badly configured auto-responder: it answers every mail it receives
    with a new mail (no Auto-Submitted, no threading headers) to the address that wrote."""

    mailroom: Mailroom
    answered: int = 0

    async def answer_all(self) -> int:
        new = self.mailroom.sink.received[self.answered :]
        for received in new:
            answer = EmailMessage()
            answer["From"] = "robot@example.net"
            answer["To"] = "support@example.com"
            answer["Subject"] = f"Out of office: {received['Subject']}"
            answer["Message-ID"] = make_msgid(domain="example.net")
            answer.set_content("I am away. Your mail will be read when I am back.")
            await self.mailroom.deliver(answer)
        self.answered += len(new)
        return len(new)


async def test_two_auto_responders_stop_after_the_cap(rt: Runtime, mailroom: Mailroom) -> None:
    robot = AutoResponder(mailroom)
    first = mail(sender="robot@example.net", subject="Hello")
    await mailroom.deliver(first)
    for _ in range(2 * CAP + 2):
        await settle(rt)
        if not await robot.answer_all():
            break
    else:
        pytest.fail("the reply loop did not end")
    assert len(mailroom.sink.received) == CAP
    assert await count(rt, Conversation) == CAP + 1
    assert all(m["Auto-Submitted"] == "auto-replied" for m in mailroom.sink.received)


async def test_text_only_agent_reply_goes_out_as_text_and_html(
    rt: Runtime, mailroom: Mailroom
) -> None:
    org = await make_org(rt)
    await mailroom.deliver(mail(msgid="<q1@example.org>"))
    await settle(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        conversation_id = (await session.scalars(select(Conversation.id))).one()
        await reply(
            session,
            conversation_id=conversation_id,
            agent=agent,
            text="Merhaba,\n\niade <hemen> yapıldı.\nİyi günler",
            clock=rt.clock,
        )
    await settle(rt)
    human = mailroom.sink.received[-1]
    assert human["Auto-Submitted"] is None
    assert human["Subject"] == "Re: Fatura sorunu"
    rich = human.get_body(("html",))
    plain = human.get_body(("plain",))
    assert rich is not None
    assert plain is not None
    assert "iade <hemen> yapıldı." in plain.get_content()
    lines = rich.get_content().replace("\r\n", "\n")
    assert "<p>Merhaba,</p>\n<p>iade &lt;hemen&gt; yapıldı.<br>\nİyi günler</p>" in lines


async def test_cap_holds_when_two_processes_decide_at_once(
    rt: Runtime, settings: Any, clock: ManualClock, mailroom: Mailroom
) -> None:
    from contact_center.wiring import build_runtime

    for number in range(CAP + 3):
        await mailroom.deliver(mail(subject=f"Question {number}"))
    async with rt.db.read() as session:
        conversation_ids = list(await session.scalars(select(Conversation.id)))
    other = await build_runtime(settings, clock=clock)
    try:
        decisions = await asyncio.gather(
            *(send_auto_reply(runtime, cid) for cid in conversation_ids for runtime in (rt, other))
        )
    finally:
        await other.close()
    assert sum(decisions) == CAP
    assert await count(rt, Message, Message.client_id.like("auto-reply:%")) == CAP
