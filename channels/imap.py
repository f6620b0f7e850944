"""Email inbound by polling an IMAP mailbox (the standard library's ``imaplib``, in a thread).

An email inbox with ``settings.imap`` (see ``contact_center/inbox_config.py``) is polled: the
scheduler's tick (``schedule_polls``) enqueues ``email.imap_poll`` for each mailbox that is due,
and the job fetches the messages whose UID is above the last one recorded, oldest first, with
``BODY.PEEK[]``. Each goes through the same parse and ingest as mail received over SMTP; only
after it is committed does the recorded UID move (and ``\\Seen`` get set, if ``mark_seen``).

- A crash between ingest and the UID update re-fetches the message: ingest dedupes on
  (inbox, Message-ID), or on the SHA-256 of the raw message when it has none.
- A new UIDVALIDITY (or another folder) starts again from UID 1; dedupe makes it harmless.
- A message that cannot be parsed is skipped and recorded (``mailbox_states.skipped``): it never
  blocks the mailbox. Connection, TLS and login failures are recorded as ``last_error`` and the
  next polls back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import re
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from channels.email import header_recipients, ingest_email, parse_email
from contact_center import mailboxes
from contact_center.inbox_config import ImapConfig, InboxConfigError
from contact_center.jobs import job
from contact_center.models import Inbox
from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

POLL_JOB = "email.imap_poll"
BATCH = 100  # messages per poll; the rest are taken by the next poll, at the next tick
TIMEOUT = 30.0
BROKEN_CONFIG_RETRY = 300.0  # how often a misconfigured mailbox records its error again
_FETCH_UID = re.compile(rb"UID (\d+)")


class ImapError(Exception):
    """The mailbox cannot be read; the message says why, for the admin."""


def _reason(error: Any) -> str:
    """imaplib puts the server's bytes in its errors; make them readable."""
    value = error.args[0] if isinstance(error, Exception) and error.args else error
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value)


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Mailbox:
    """One IMAP session (blocking; each call runs in a worker thread)."""

    def __init__(self, config: ImapConfig) -> None:
        self.config = config
        self.conn: imaplib.IMAP4 | None = None

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def open(self) -> int:
        """Connect, log in and select the folder; returns its UIDVALIDITY."""
        c = self.config
        if c.tls == "ssl":
            self.conn = imaplib.IMAP4_SSL(
                c.host, c.port, ssl_context=ssl.create_default_context(), timeout=TIMEOUT
            )
        else:
            self.conn = imaplib.IMAP4(c.host, c.port, timeout=TIMEOUT)
            if c.tls == "starttls":
                self.conn.starttls(ssl.create_default_context())
        try:
            self.conn.login(c.username, c.password)
        except imaplib.IMAP4.error as exc:
            raise ImapError(
                f"IMAP login as {c.username!r} at {self.where} refused: {_reason(exc)}"
            ) from None
        typ, data = self.conn.select(_quote(c.folder), readonly=not c.mark_seen)
        if typ != "OK":
            raise ImapError(
                f"IMAP folder {c.folder!r} at {self.where} cannot be opened: {_reason(data)}"
            )
        _, values = self.conn.response("UIDVALIDITY")
        try:
            return int(values[0])
        except (TypeError, ValueError, IndexError):
            raise ImapError(f"IMAP server at {self.where} reported no UIDVALIDITY") from None

    def new_uids(self, after: int) -> list[int]:
        assert self.conn is not None
        typ, data = self.conn.uid("SEARCH", "UID", f"{after + 1}:*")
        if typ != "OK":
            raise ImapError(f"IMAP UID SEARCH at {self.where} failed: {_reason(data)}")
        found = b" ".join(d for d in data if isinstance(d, bytes)).split()
        # "n:*" always matches the highest UID, even one below n: keep only the new ones.
        return sorted({int(u) for u in found if u.isdigit() and int(u) > after})

    def fetch(self, uid: int) -> bytes | None:
        """The raw message, or None if it was expunged meanwhile."""
        assert self.conn is not None
        typ, data = self.conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
        if typ != "OK":
            raise ImapError(f"IMAP UID FETCH {uid} at {self.where} failed: {_reason(data)}")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                match = _FETCH_UID.search(item[0])
                if match is None or int(match.group(1)) == uid:
                    return bytes(item[1])
        return None

    def mark_seen(self, uid: int) -> None:
        assert self.conn is not None
        self.conn.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                self.conn.logout()
            self.conn = None


@dataclass(slots=True)
class PollResult:
    ingested: int = 0
    duplicates: int = 0
    skipped: int = 0
    busy: bool = False
    error: str | None = None


async def poll(rt: Runtime, inbox_id: str) -> PollResult:
    """Fetch the mailbox's new messages into the inbox (idempotent; one poll at a time)."""
    result = PollResult()
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, inbox_id)
    if inbox is None or inbox.kind != "email" or not inbox.is_active:
        return result
    try:
        config = ImapConfig.of(inbox.settings, inbox.credentials)
    except InboxConfigError as exc:
        result.error = f"IMAP configuration: {exc}"
        await mailboxes.finish(rt, inbox_id, None, error=result.error)
        return result
    if config is None:
        return result
    holder = uuid.uuid4().hex
    position = await mailboxes.claim(rt, inbox_id, holder)
    if position is None:
        result.busy = True
        return result
    box = _Mailbox(config)
    more = False
    try:
        uidvalidity = await asyncio.to_thread(box.open)
        last = position.last_uid
        if (position.folder, position.uidvalidity) != (config.folder, uidvalidity):
            if position.uidvalidity is not None:
                log.warning("mailbox of %s changed (UIDVALIDITY or folder): refetching", inbox_id)
            last = 0
        uids = await asyncio.to_thread(box.new_uids, last)
        more = len(uids) > BATCH
        for uid in uids[:BATCH]:
            raw = await asyncio.to_thread(box.fetch, uid)
            skipped = None
            if raw is not None:
                try:
                    message = parse_email(raw, inbox_id)
                except Exception as exc:  # any unreadable message is skipped, never retried
                    skipped = f"{type(exc).__name__}: {exc}"
                    log.warning("IMAP %s UID %s skipped: %s", inbox_id, uid, skipped)
                    result.skipped += 1
                else:
                    stored = await ingest_email(rt, message, header_recipients(raw))
                    if stored.duplicate:
                        result.duplicates += 1
                    else:
                        result.ingested += 1
            await mailboxes.advance(
                rt,
                inbox_id,
                folder=config.folder,
                uidvalidity=uidvalidity,
                uid=uid,
                skipped=skipped,
            )
            if config.mark_seen and raw is not None:
                try:
                    await asyncio.to_thread(box.mark_seen, uid)
                except (imaplib.IMAP4.error, OSError) as exc:
                    log.warning("IMAP %s: could not flag UID %s seen: %s", inbox_id, uid, exc)
    except ImapError as exc:
        result.error = str(exc)
    except (imaplib.IMAP4.error, OSError) as exc:
        result.error = f"IMAP {box.where}: {_reason(exc) or type(exc).__name__}"
    except Exception as exc:
        log.exception("IMAP poll of %s failed", inbox_id)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.to_thread(box.close)
        await mailboxes.finish(
            rt,
            inbox_id,
            holder,
            error=result.error,
            more=more and result.error is None,
            interval=config.poll_seconds,
        )
    if result.error:
        log.warning("IMAP poll of %s: %s", inbox_id, result.error)
    return result


@job(POLL_JOB)
async def poll_job(rt: Runtime, payload: dict[str, Any]) -> None:
    await poll(rt, str(payload["inbox_id"]))


async def schedule_polls(rt: Runtime) -> int:
    """The scheduler's tick: enqueue a poll for every IMAP mailbox that is due. Returns how
    many were enqueued."""
    async with rt.db.read() as session:
        inboxes = (
            await session.scalars(
                select(Inbox).where(Inbox.kind == "email", Inbox.is_active.is_(True))
            )
        ).all()
    intervals: dict[str, float] = {}
    for inbox in inboxes:
        if not inbox.settings.get("imap"):
            continue
        try:
            config = ImapConfig.of(inbox.settings, inbox.credentials)
        except InboxConfigError:
            intervals[inbox.id] = BROKEN_CONFIG_RETRY  # the job records the error
            continue
        if config is not None:
            intervals[inbox.id] = config.poll_seconds
    due = await mailboxes.due(rt, intervals)
    for inbox_id, number in due:
        await rt.jobs.enqueue(
            POLL_JOB, {"inbox_id": inbox_id}, key=f"imap-poll-{inbox_id}-{number}"
        )
    return len(due)
