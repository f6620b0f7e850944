"""Email: inbound over our own SMTP server (`contact-center smtp`, aiosmtpd) and as a raw
RFC 822 POST to ``/webhooks/email/inbound``; outbound over SMTP with threading headers.

Parsing uses the standard library's modern policy. The recipient address chooses the inbox;
the SMTP server answers 250 only after the message is committed (4xx on our own failure, so
the sending server retries; 5xx for an unknown mailbox, so it bounces at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import hashlib
import hmac
import logging
import re
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from litestar import Request, Response, post
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.params import FromQuery
from sqlalchemy import func, select

from channels.webhooks import runtime_of
from contact_center.identities import IdentityRef, InvalidIdentity, normalize_email
from contact_center.ingest import (
    CONVERSATION_REF,
    InboundAttachment,
    InboundMessage,
    IngestResult,
)
from contact_center.metrics import DUPLICATES, INGESTED
from contact_center.models import Inbox
from contact_center.outbound import OutboundMessage, SendError, SendResult
from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

MAX_EMAIL_BYTES = 40 * 1024 * 1024
_MSGID = re.compile(r"<[^<>\s]+>")


class MalformedEmail(ValueError):
    pass


def _header(msg: EmailMessage, name: str) -> str:
    """A header's value; malformed headers fall back to the raw text instead of failing."""
    try:
        value = msg.get(name)
        return "" if value is None else str(value)
    except (IndexError, ValueError, TypeError, AttributeError):
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                return str(raw)
        return ""


def _content(part: Any) -> str:
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError, AssertionError, ValueError):
        payload = part.get_payload(decode=True) or b""
        return bytes(payload).decode("utf-8", errors="replace")


def _refs(msg: EmailMessage) -> tuple[str, ...]:
    refs = _MSGID.findall(_header(msg, "References")) + _MSGID.findall(_header(msg, "In-Reply-To"))
    return tuple(dict.fromkeys(refs))


def is_automatic(msg: EmailMessage) -> bool:
    """RFC 3834 and common practice: mail we must never answer automatically."""
    auto = _header(msg, "Auto-Submitted").strip().lower()
    precedence = _header(msg, "Precedence").strip().lower()
    sender = parseaddr(_header(msg, "From"))[1].lower()
    return bool(
        (auto and auto != "no")
        or precedence in ("bulk", "junk", "list")
        or _header(msg, "X-Autoreply")
        or _header(msg, "X-Autorespond")
        or _header(msg, "List-Id")
        or _header(msg, "Return-Path").strip() == "<>"
        or sender.split("@")[0] in ("mailer-daemon", "postmaster")
        or msg.get_content_type() == "multipart/report"
    )


def parse_email(raw: bytes, inbox_id: str) -> InboundMessage:
    if len(raw) > MAX_EMAIL_BYTES:
        raise MalformedEmail("message too large")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    name, address = parseaddr(_header(msg, "From"))
    try:
        sender = IdentityRef.of("email", address, name or None)
    except InvalidIdentity as exc:
        raise MalformedEmail(f"From: {exc}") from None
    message_id = (_MSGID.findall(_header(msg, "Message-ID")) or [""])[0]
    if not message_id:
        # No Message-ID: the content itself identifies a replay.
        message_id = f"<sha256-{hashlib.sha256(raw).hexdigest()}@no-message-id>"
    text_part = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    text = _content(text_part) if text_part is not None else ""
    html = _content(html_part) if html_part is not None else None
    attachments = []
    for part in msg.walk():
        if part.is_multipart() or part in (text_part, html_part):
            continue
        disposition = part.get_content_disposition()
        if disposition is None and part.get_content_maintype() == "text":
            continue
        data = part.get_payload(decode=True)
        if not data:
            continue
        attachments.append(
            InboundAttachment(part.get_filename(), part.get_content_type(), bytes(data))
        )
    return InboundMessage(
        inbox_id=inbox_id,
        provider_message_id=message_id[:255],
        sender=sender,
        text=text,
        html=html,
        subject=_header(msg, "Subject")[:500] or None,
        thread_refs=_refs(msg),
        thread_key=message_id[:500],
        continuous=False,
        attachments=tuple(attachments),
        extra={"automatic": is_automatic(msg)},
    )


async def inbox_for(rt: Runtime, recipients: list[str]) -> Inbox | None:
    """The email inbox for the first recipient we serve (``support+tag@`` counts as
    ``support@``)."""
    candidates = []
    for rcpt in recipients:
        try:
            address = normalize_email(rcpt)
        except InvalidIdentity:
            continue
        local, _, domain = address.partition("@")
        candidates += [address, f"{local.split('+', 1)[0]}@{domain}"]
    if not candidates:
        return None
    async with rt.db.read() as session:
        inbox: Inbox | None = await session.scalar(
            select(Inbox).where(
                Inbox.kind == "email",
                func.lower(Inbox.address).in_(candidates),
                Inbox.is_active.is_(True),
            )
        )
        return inbox


def reply_token(secret: str, conversation_id: int) -> str:
    mac = hmac.new(secret.encode(), f"reply:{conversation_id}".encode(), hashlib.sha256)
    return f"c{conversation_id}-{mac.hexdigest()[:10]}"


def reply_address(inbox_address: str, secret: str, conversation_id: int) -> str:
    """``support+c42-1a2b3c4d5e@example.com``: replies reach the inbox and name their
    conversation even when the mail client drops In-Reply-To and References."""
    local, _, domain = inbox_address.partition("@")
    return f"{local}+{reply_token(secret, conversation_id)}@{domain}"


def conversation_from(secret: str, recipients: list[str]) -> int | None:
    """The conversation a verified reply token among the recipients names."""
    for rcpt in recipients:
        local = rcpt.partition("@")[0]
        tag = local.partition("+")[2].lower()
        if tag.startswith("c") and "-" in tag:
            digits = tag[1:].split("-", 1)[0]
            if digits.isdigit() and hmac.compare_digest(reply_token(secret, int(digits)), tag):
                return int(digits)
    return None


async def deliver(
    rt: Runtime,
    raw: bytes,
    inbox_id: str,
    recipients: list[str] | tuple[str, ...] = (),
    *,
    mail_from: str | None = None,
) -> IngestResult:
    """Parse and ingest one raw message (SMTP, the relay webhook and the IMAP poller)."""
    return await ingest_email(rt, parse_email(raw, inbox_id), recipients, mail_from=mail_from)


async def ingest_email(
    rt: Runtime,
    message: InboundMessage,
    recipients: list[str] | tuple[str, ...] = (),
    *,
    mail_from: str | None = None,
) -> IngestResult:
    """Ingest a parsed message. ``recipients`` may carry a reply token; an empty envelope
    sender (``MAIL FROM:<>``, a bounce) marks the message automatic (never auto-answered)."""
    if mail_from is not None and not mail_from.strip("<> "):
        message = dataclasses.replace(message, extra={**message.extra, "automatic": True})
    conversation_id = conversation_from(rt.settings.derive_key("reply-token"), list(recipients))
    if conversation_id is not None:
        message = dataclasses.replace(
            message, thread_refs=(*message.thread_refs, f"{CONVERSATION_REF}{conversation_id}")
        )
    result = await rt.ingestor.ingest(message)
    (DUPLICATES if result.duplicate else INGESTED).labels("email").inc()
    if not result.duplicate:
        await rt.committed()
    return result


class InboundMailHandler:
    """aiosmtpd handler: unknown mailboxes are refused at RCPT; DATA is acknowledged only
    after the message is committed."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if await inbox_for(self.rt, [address]) is None:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        inbox = await inbox_for(self.rt, list(envelope.rcpt_tos))
        if inbox is None:
            return "550 5.1.1 No such mailbox here"
        try:
            await deliver(
                self.rt,
                bytes(raw or b""),
                inbox.id,
                list(envelope.rcpt_tos),
                mail_from=envelope.mail_from,
            )
        except MalformedEmail as exc:
            return f"554 5.6.0 Malformed message: {exc}"
        except Exception:
            log.exception("could not store inbound email")
            return "451 4.3.0 Temporary failure, try again later"
        return "250 2.0.0 Message accepted"


async def serve_smtp(rt: Runtime, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    handler = InboundMailHandler(rt)
    return await loop.create_server(
        lambda: SMTP(
            handler,
            data_size_limit=MAX_EMAIL_BYTES,
            enable_SMTPUTF8=True,
            hostname="contact-center",
            loop=loop,
        ),
        host=host,
        port=port,
    )


@post("/webhooks/email/inbound", tags=["webhooks"], status_code=200)
async def email_inbound(
    request: Request[Any, Any, Any], inbox: FromQuery[str]
) -> Response[dict[str, Any]]:
    """A raw RFC 822 message from a relay, for the inbox named by ``?inbox=``, authenticated
    with ``Authorization: Bearer <the inbox's webhook_token>``."""
    rt = runtime_of(request)
    async with rt.db.read() as session:
        row = await session.get(Inbox, inbox)
    if row is None or row.kind != "email" or not row.is_active:
        raise ClientException("no such email inbox", status_code=404)
    expected = str(row.credentials.get("webhook_token", ""))
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise NotAuthorizedException("bad webhook token")
    raw = await request.body()
    if not raw.strip():
        raise ClientException("empty body: POST the raw RFC 822 message")
    try:
        result = await deliver(rt, raw, row.id)
    except MalformedEmail as exc:
        raise ClientException(f"malformed message: {exc}") from None
    return Response({"message_id": result.message_id, "duplicate": result.duplicate})


class SmtpSender:
    """Sends over the inbox's SMTP relay (credentials: smtp_host, smtp_port, username,
    password, starttls)."""

    async def send(self, message: OutboundMessage) -> SendResult:
        inbox = message.inbox
        creds = inbox.credentials
        host = creds.get("smtp_host")
        if not host:
            raise SendError("the inbox has no smtp_host", retryable=False)
        mail = EmailMessage()
        domain = inbox.address.split("@")[-1]
        message_id = make_msgid(idstring=f"cc{message.message_id}", domain=domain)
        sender_name = message.agent_name or inbox.settings.get("display_name") or ""
        mail["From"] = f"{sender_name} <{inbox.address}>" if sender_name else inbox.address
        mail["To"] = message.to_address
        subject = message.subject or inbox.settings.get("default_subject") or "Your request"
        mail["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
        mail["Message-ID"] = message_id
        if message.extra.get("reply_key"):
            mail["Reply-To"] = reply_address(
                inbox.address, str(message.extra["reply_key"]), message.conversation_id
            )
        refs = [r for r in message.thread_refs if r.startswith("<")][-20:]
        if refs:
            mail["In-Reply-To"] = refs[-1]
            mail["References"] = " ".join(refs)
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        for att in message.attachments:
            maintype, _, subtype = att.content_type.partition("/")
            mail.add_attachment(
                att.path.read_bytes(),
                maintype=maintype,
                subtype=subtype or "octet-stream",
                filename=att.filename,
            )

        def transmit() -> None:
            port = int(creds.get("smtp_port", 587))
            with smtplib.SMTP(host, port, timeout=30) as client:
                if str(creds.get("starttls", "")).lower() in ("1", "true", "yes"):
                    client.starttls()
                if creds.get("username"):
                    client.login(str(creds["username"]), str(creds.get("password", "")))
                client.send_message(mail)

        try:
            await asyncio.to_thread(transmit)
        except smtplib.SMTPResponseException as exc:
            raise SendError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable=400 <= exc.smtp_code < 500
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise SendError(f"SMTP unreachable: {exc}", retryable=True) from exc
        return SendResult(message_id)


route_handlers = [email_inbound]
__all__ = ["InboundMailHandler", "SmtpSender", "parse_email", "serve_smtp"]
