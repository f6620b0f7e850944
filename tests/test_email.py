"""Email in over a real SMTP session and the relay webhook; out over SMTP with threading."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
from sqlalchemy import func, select

from channels.email import parse_email, serve_smtp
from contact_center.models import Agent, Conversation, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org, settle


def mail(
    *,
    sender: str = "Ayşe Yılmaz <ayse@example.org>",
    subject: str = "Fatura sorunu",
    body: str = "Merhaba, faturamda iki kez ücret alınmış.",
    msgid: str | None = None,
    **headers: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = msgid or make_msgid(domain="example.org")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


@pytest.fixture
async def smtp_port(rt: Runtime) -> AsyncIterator[int]:
    await make_inbox(
        rt, "email", "email", "support@example.com", credentials={"webhook_token": "hook-secret"}
    )
    server = await serve_smtp(rt, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()


def smtp_send(port: int, msg: EmailMessage, rcpt: str = "support@example.com") -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.send_message(msg, to_addrs=[rcpt])


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_smtp_session_stores_the_mail_once(rt: Runtime, smtp_port: int) -> None:
    msg = mail()
    await asyncio.to_thread(smtp_send, smtp_port, msg)
    await asyncio.to_thread(smtp_send, smtp_port, msg)  # the sending server retried
    assert await count(rt, Message) == 1
    async with rt.db.read() as session:
        message = await session.scalar(select(Message))
        conv = await session.scalar(select(Conversation))
    assert message is not None
    assert conv is not None
    assert message.text.strip() == "Merhaba, faturamda iki kez ücret alınmış."
    assert conv.subject == "Fatura sorunu"


async def test_unknown_mailbox_is_refused_at_rcpt(rt: Runtime, smtp_port: int) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(smtp_send, smtp_port, mail(), "nobody@example.com")
    assert await count(rt, Message) == 0


async def test_plus_address_reaches_the_inbox(rt: Runtime, smtp_port: int) -> None:
    await asyncio.to_thread(smtp_send, smtp_port, mail(), "support+billing@example.com")
    assert await count(rt, Message) == 1


async def test_reply_threads_into_the_conversation(rt: Runtime, smtp_port: int) -> None:
    first = mail(msgid="<first@example.org>")
    await asyncio.to_thread(smtp_send, smtp_port, first)
    answer = mail(
        subject="Re: Fatura sorunu",
        body="Ek bilgi",
        msgid="<second@example.org>",
        In_Reply_To="<first@example.org>",
        References="<first@example.org>",
    )
    await asyncio.to_thread(smtp_send, smtp_port, answer)
    other = mail(subject="Yeni konu", msgid="<third@example.org>")
    await asyncio.to_thread(smtp_send, smtp_port, other)
    async with rt.db.read() as session:
        rows = (
            await session.execute(select(Message.provider_message_id, Message.conversation_id))
        ).all()
    by_id = dict(rows)
    assert by_id["<first@example.org>"] == by_id["<second@example.org>"]
    assert by_id["<third@example.org>"] != by_id["<first@example.org>"]


async def test_webhook_takes_raw_rfc822(rt: Runtime, smtp_port: int) -> None:
    from tests.live import live_app

    raw = mail(msgid="<hook@example.org>").as_bytes()
    async with live_app(rt) as live:
        client = live.client
        url = "/webhooks/email/inbound?inbox=email"
        bad = await client.post(url, content=raw, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        ok = await client.post(url, content=raw, headers={"Authorization": "Bearer hook-secret"})
        assert ok.status_code == 200, ok.text
        again = await client.post(url, content=raw, headers={"Authorization": "Bearer hook-secret"})
        assert again.json()["duplicate"] is True
        junk = await client.post(
            url, content=b"not an email at all", headers={"Authorization": "Bearer hook-secret"}
        )
        assert junk.status_code == 400
    assert await count(rt, Message) == 1


def test_parse_charsets_attachments_and_html() -> None:
    msg = EmailMessage()
    msg["From"] = "=?iso-8859-9?q?=DEule_=C7elik?= <sule@example.org>"
    msg["Subject"] = "=?utf-8?b?xZ5pa2F5ZXQ=?="
    msg["Message-ID"] = "<m1@example.org>"
    msg.set_content("Düz metin ğüşıöç", charset="iso-8859-9")
    msg.add_alternative("<p>Merhaba <b>dünya</b><script>x()</script></p>", subtype="html")
    msg.add_attachment(
        b"%PDF-1.4\n...", maintype="application", subtype="pdf", filename="fatura.pdf"
    )
    parsed = parse_email(msg.as_bytes(), "email")
    assert parsed.sender.address == "sule@example.org"
    assert parsed.sender.display_name == "Şule Çelik"
    assert parsed.subject == "Şikayet"
    assert parsed.text.strip() == "Düz metin ğüşıöç"
    assert parsed.html is not None
    assert "dünya" in parsed.html
    assert [a.filename for a in parsed.attachments] == ["fatura.pdf"]
    assert parsed.continuous is False


def test_parse_unknown_charset_falls_back() -> None:
    raw = (
        b"From: a@example.org\r\nMessage-ID: <x@y>\r\nSubject: hi\r\n"
        b"Content-Type: text/plain; charset=x-unknown-42\r\n\r\nhello \xff there\r\n"
    )
    parsed = parse_email(raw, "email")
    assert "hello" in parsed.text
    assert "there" in parsed.text


def test_parse_marks_automatic_mail() -> None:
    auto = parse_email(mail(Auto_Submitted="auto-replied").as_bytes(), "email")
    bulk = parse_email(mail(Precedence="bulk").as_bytes(), "email")
    human = parse_email(mail().as_bytes(), "email")
    assert auto.extra["automatic"] is True
    assert bulk.extra["automatic"] is True
    assert human.extra["automatic"] is False


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 OK"


async def test_reply_goes_out_over_smtp_with_threading_headers(rt: Runtime) -> None:
    import email
    import email.policy

    from aiosmtpd.smtp import SMTP

    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await make_inbox(
            rt,
            "email",
            "email",
            "support@example.com",
            credentials={"smtp_host": "127.0.0.1", "smtp_port": str(port)},
        )
        org = await make_org(rt)
        from tests.helpers import ingest

        first = parse_email(mail(msgid="<c1@example.org>").as_bytes(), "email")
        result = await ingest(rt, first)
        async with rt.db.write() as session:
            agent = await session.get(Agent, org.agent.id)
            assert agent is not None
            message, _ = await reply(
                session,
                conversation_id=result.conversation_id,
                agent=agent,
                text="Hemen bakıyoruz.",
                clock=rt.clock,
                html="<p>Hemen <b>bakıyoruz</b>.</p>",
            )
            message_id = message.id
        await settle(rt)
        assert len(sink.received) == 1
        rcpts, raw = sink.received[0]
        assert rcpts == ["ayse@example.org"]
        sent = email.message_from_bytes(raw, policy=email.policy.default)
        assert sent["In-Reply-To"] == "<c1@example.org>"
        assert sent["Reply-To"].startswith(f"support+c{result.conversation_id}-")
        assert sent["Subject"] == "Re: Fatura sorunu"
        assert sent.get_body(("plain",)).get_content().strip() == "Hemen bakıyoruz."
        assert "<b>bakıyoruz</b>" in sent.get_body(("html",)).get_content()
        async with rt.db.read() as session:
            stored = await session.get(Message, message_id)
        assert stored is not None
        assert stored.delivery_status == "sent"
        assert stored.provider_message_id == sent["Message-ID"]
        # The customer's answer to our reply threads back into the same conversation.
        back = parse_email(
            mail(msgid="<c2@example.org>", In_Reply_To=sent["Message-ID"]).as_bytes(), "email"
        )
        assert (await ingest(rt, back)).conversation_id == result.conversation_id
    finally:
        server.close()


async def test_reply_token_threads_a_reply_without_headers(rt: Runtime, smtp_port: int) -> None:
    from channels.email import reply_address

    await asyncio.to_thread(smtp_send, smtp_port, mail(msgid="<t1@example.org>"))
    async with rt.db.read() as session:
        conversation_id = (await session.scalars(select(Conversation.id))).one()
    key = rt.settings.derive_key("reply-token")
    token_address = reply_address("support@example.com", key, conversation_id)
    # The customer's client dropped In-Reply-To/References, but the address carries the token.
    await asyncio.to_thread(
        smtp_send, smtp_port, mail(subject="Yeni", msgid="<t2@example.org>"), token_address
    )
    forged = token_address.replace(token_address.split("-")[-1].split("@")[0], "0000000000")
    await asyncio.to_thread(
        smtp_send, smtp_port, mail(subject="Yeni", msgid="<t3@example.org>"), forged
    )
    # A stranger who knows the token still never joins someone else's conversation.
    await asyncio.to_thread(
        smtp_send,
        smtp_port,
        mail(sender="eve@example.org", msgid="<t4@example.org>"),
        token_address,
    )
    async with rt.db.read() as session:
        rows = dict(
            (
                await session.execute(select(Message.provider_message_id, Message.conversation_id))
            ).all()
        )
    assert rows["<t2@example.org>"] == conversation_id
    assert rows["<t3@example.org>"] != conversation_id
    assert rows["<t4@example.org>"] != conversation_id


async def test_reply_token_threads_a_webhook_reply_without_headers(
    rt: Runtime, smtp_port: int
) -> None:
    """The relay webhook has no SMTP envelope: the token is read from Delivered-To/To."""
    from channels.email import reply_address
    from tests.live import live_app

    auth = {"Authorization": "Bearer hook-secret"}
    url = "/webhooks/email/inbound?inbox=email"
    async with live_app(rt) as live:
        first = await live.client.post(
            url, content=mail(msgid="<w1@example.org>").as_bytes(), headers=auth
        )
        assert first.status_code == 200, first.text
        conversation_id = await _conversation_of(rt, "<w1@example.org>")
        key = rt.settings.derive_key("reply-token")
        token_address = reply_address("support@example.com", key, conversation_id)
        forged = token_address.replace(token_address.split("-")[-1].split("@")[0], "0000000000")
        sent = {
            # The client dropped In-Reply-To/References; the token is in To ...
            "<w2@example.org>": mail(subject="Yeni", msgid="<w2@example.org>"),
            # ... or only in the relay's Delivered-To (To names the plain address).
            "<w3@example.org>": mail(
                subject="Yeni", msgid="<w3@example.org>", Delivered_To=token_address
            ),
            "<w4@example.org>": mail(subject="Yeni", msgid="<w4@example.org>"),
            "<w5@example.org>": mail(sender="eve@example.org", msgid="<w5@example.org>"),
        }
        sent["<w2@example.org>"].replace_header("To", token_address)
        sent["<w4@example.org>"].replace_header("To", forged)
        sent["<w5@example.org>"].replace_header("To", token_address)
        for msg in sent.values():
            response = await live.client.post(url, content=msg.as_bytes(), headers=auth)
            assert response.status_code == 200, response.text
    assert await _conversation_of(rt, "<w2@example.org>") == conversation_id
    assert await _conversation_of(rt, "<w3@example.org>") == conversation_id
    # A forged token, and a stranger who knows the token, never join the conversation.
    assert await _conversation_of(rt, "<w4@example.org>") != conversation_id
    assert await _conversation_of(rt, "<w5@example.org>") != conversation_id


async def _conversation_of(rt: Runtime, provider_message_id: str) -> int:
    async with rt.db.read() as session:
        found = await session.scalar(
            select(Message.conversation_id).where(
                Message.provider_message_id == provider_message_id
            )
        )
    assert found is not None
    return int(found)


def sized_mail(msgid: str, size: int) -> bytes:
    """A multipart mail of exactly ``size`` bytes: a short text part and a long epilogue."""
    head = (
        "From: Ayşe Yılmaz <ayse@example.org>\r\nTo: support@example.com\r\n"
        f"Subject: Büyük ek\r\nMessage-ID: {msgid}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nEkte tarama var.\r\n--b--\r\n"
    ).encode()
    line = b"x" * 998 + b"\r\n"
    fill = size - len(head)
    raw = head + line * (fill // len(line)) + b"y" * (fill % len(line))
    assert len(raw) == size
    return raw


async def test_webhook_takes_mail_up_to_the_email_limit_and_refuses_more(
    rt: Runtime, smtp_port: int
) -> None:
    from channels.email import MAX_EMAIL_BYTES
    from tests.live import live_app

    auth = {"Authorization": "Bearer hook-secret"}
    url = "/webhooks/email/inbound?inbox=email"
    async with live_app(rt) as live:
        over = await live.client.post(
            url, content=sized_mail("<big@example.org>", MAX_EMAIL_BYTES + 1), headers=auth
        )
        assert over.status_code == 413
        assert f"at most {MAX_EMAIL_BYTES} bytes" in over.json()["detail"]
        assert await count(rt, Message) == 0
        # 40 MiB, far over the web framework's default 10 MB: a relay's large mail goes in.
        fits = await live.client.post(
            url, content=sized_mail("<fits@example.org>", MAX_EMAIL_BYTES), headers=auth
        )
        assert fits.status_code == 200, fits.text
    assert await _conversation_of(rt, "<fits@example.org>")


def dsn(original_id: str, *, action: str = "failed", headers_only: bool = True) -> bytes:
    """A bounce as Postfix writes it (RFC 3464), about the message ``original_id``."""
    returned = (
        f"From: Support <support@example.com>\r\nTo: ayse@example.org\r\n"
        f"Subject: Re: Fatura sorunu\r\nMessage-ID: {original_id}\r\n"
    )
    if headers_only:
        returned_part = f"Content-Type: text/rfc822-headers\r\n\r\n{returned}"
    else:
        returned_part = f"Content-Type: message/rfc822\r\n\r\n{returned}\r\nHemen bakıyoruz.\r\n"
    return (
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        "To: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.org')}\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your "
        "message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\nArrival-Date: Mon, 30 Nov 2026 21:00:00 +0000\r\n"
        "\r\nFinal-Recipient: rfc822; ayse@example.org\r\n"
        f"Action: {action}\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <ayse@example.org>:\r\n"
        "    Recipient address rejected: User unknown\r\n"
        f"--B\r\n{returned_part}--B--\r\n"
    ).encode()


async def test_bounce_marks_our_reply_undelivered_and_opens_nothing(rt: Runtime) -> None:
    import email
    import email.policy

    from aiosmtpd.smtp import SMTP

    from contact_center.models import Customer, DomainEvent

    sink = Sink()
    loop = asyncio.get_running_loop()
    outgoing = await loop.create_server(lambda: SMTP(sink, loop=loop), "127.0.0.1", 0)
    creds = {"smtp_host": "127.0.0.1", "smtp_port": str(outgoing.sockets[0].getsockname()[1])}
    await make_inbox(rt, "email", "email", "support@example.com", credentials=creds)
    incoming = await serve_smtp(rt, "127.0.0.1", 0)
    port = incoming.sockets[0].getsockname()[1]

    def bounce(raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("", ["support@example.com"], raw)  # MAIL FROM:<>, as MTAs bounce

    try:
        await asyncio.to_thread(smtp_send, port, mail(msgid="<b1@example.org>"))
        org = await make_org(rt)
        async with rt.db.write() as session:
            agent = await session.get(Agent, org.agent.id)
            conversation_id = (await session.scalars(select(Conversation.id))).one()
            assert agent is not None
            message, _ = await reply(
                session,
                conversation_id=conversation_id,
                agent=agent,
                text="Hemen bakıyoruz.",
                clock=rt.clock,
            )
            reply_id = message.id
        await settle(rt)
        sent = email.message_from_bytes(sink.received[0][1], policy=email.policy.default)
        await asyncio.to_thread(bounce, dsn(sent["Message-ID"]))
        async with rt.db.read() as session:
            ours = await session.get(Message, reply_id)
            events = await session.scalar(select(func.count()).select_from(DomainEvent))
        assert ours is not None
        assert ours.delivery_status == "undelivered"
        assert ours.status_reason is not None
        assert "5.1.1" in ours.status_reason
        assert "Recipient address rejected: User unknown" in ours.status_reason
        # No conversation, message or customer for the bounce; a replay changes nothing.
        await asyncio.to_thread(bounce, dsn(sent["Message-ID"]))
        assert await count(rt, Conversation) == 1
        assert await count(rt, Message) == 2
        assert await count(rt, Customer) == 1
        async with rt.db.read() as session:
            assert await session.scalar(select(func.count()).select_from(DomainEvent)) == events
        # A bounce about mail that is not ours goes in as before: automatic, never answered.
        await asyncio.to_thread(bounce, dsn("<someone-else@example.net>"))
        assert await count(rt, Conversation) == 2
        async with rt.db.read() as session:
            stranger = await session.scalar(select(Message).order_by(Message.id.desc()).limit(1))
        assert stranger is not None
        assert stranger.extra["automatic"] is True
    finally:
        incoming.close()
        outgoing.close()


def test_delivery_report_finds_the_returned_message_id() -> None:
    whole = parse_email(dsn("<ours@example.com>", headers_only=False), "email")
    report = whole.extra["delivery_report"]
    assert report["refs"] == ["<ours@example.com>"]
    assert (report["action"], report["status"]) == ("failed", "5.1.1")
    assert report["diagnostic"].startswith("smtp; 550 5.1.1")
    delayed = parse_email(dsn("<ours@example.com>", action="delayed"), "email")
    assert delayed.extra["delivery_report"]["action"] == "delayed"
    assert "delivery_report" not in parse_email(mail().as_bytes(), "email").extra
