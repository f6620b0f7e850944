"""Email in by polling an IMAP mailbox: the real imaplib against a local IMAP4rev1 stand-in,
through the real poll job on both backends (in-process jobs; rq with a real worker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from channels.imap import poll, schedule_polls
from contact_center.clock import ManualClock
from contact_center.inbox_config import InboxConfigError, check_inbox
from contact_center.models import Conversation, Inbox, MailboxState, Message
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, run_jobs
from tests.standins.imap import ImapStandIn
from tests.test_email import mail

USER, PASSWORD = "support@example.com", "imap-secret"


@pytest.fixture
async def imap() -> AsyncIterator[ImapStandIn]:
    server = await ImapStandIn({USER: PASSWORD}).start()
    try:
        yield server
    finally:
        await server.close()


def imap_settings(port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "imap": {"host": "127.0.0.1", "port": port, "tls": "none", "poll_seconds": 60} | overrides
    }


@pytest.fixture
async def inbox(rt: Runtime, imap: ImapStandIn) -> str:
    await make_inbox(
        rt,
        "email",
        "email",
        "support@example.com",
        credentials={"imap_username": USER, "imap_password": PASSWORD},
    )
    async with rt.db.write() as session:
        row = await session.get(Inbox, "email")
        assert row is not None
        row.settings = imap_settings(imap.port)
    return "email"


async def tick(rt: Runtime, clock: ManualClock, after: float = 61) -> int:
    """One scheduler tick after the poll interval passed, and the jobs it queued."""
    clock.advance(after)
    enqueued = await schedule_polls(rt)
    await run_jobs(rt)
    return enqueued


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def state(rt: Runtime) -> MailboxState:
    async with rt.db.read() as session:
        found = await session.get(MailboxState, "email")
    assert found is not None
    return found


async def test_polled_mail_lands_as_conversations(
    rt: Runtime, clock: ManualClock, imap: ImapStandIn, inbox: str
) -> None:
    imap.deliver(mail(msgid="<a1@example.org>").as_bytes())
    imap.deliver(
        mail(sender="bob@example.org", subject="Other", msgid="<b1@example.org>").as_bytes()
    )
    imap.deliver(
        mail(msgid="<a2@example.org>", In_Reply_To="<a1@example.org>", body="Ek bilgi").as_bytes()
    )
    assert await tick(rt, clock) == 1
    # The same tick again (or a second scheduler) enqueues nothing: the poll is not due.
    assert await schedule_polls(rt) == 0
    assert await count(rt, Message) == 3
    assert await count(rt, Conversation) == 2
    async with rt.db.read() as session:
        by_id = dict(
            (
                await session.execute(select(Message.provider_message_id, Message.conversation_id))
            ).all()
        )
    assert by_id["<a1@example.org>"] == by_id["<a2@example.org>"] != by_id["<b1@example.org>"]
    position = await state(rt)
    assert (position.uidvalidity, position.last_uid, position.last_error) == (1000, 3, None)
    assert all("\\Seen" in imap.flags(uid) for uid in (1, 2, 3))

    # Nothing new: the next poll asks for UIDs from 4 (the server answers with UID 3, which
    # "4:*" always matches) and stores nothing.
    fetches = imap.count("UID FETCH")
    assert await tick(rt, clock) == 1
    assert "UID SEARCH UID 4:*" in imap.commands
    assert imap.count("UID FETCH") == fetches
    assert await count(rt, Message) == 3

    imap.deliver(mail(sender="carol@example.org", msgid="<c1@example.org>").as_bytes())
    await tick(rt, clock)
    assert await count(rt, Message) == 4
    assert (await state(rt)).last_uid == 4


async def test_crash_before_the_uid_advance_and_a_new_uidvalidity_do_not_duplicate(
    rt: Runtime, clock: ManualClock, imap: ImapStandIn, inbox: str
) -> None:
    imap.deliver(mail(msgid="<a1@example.org>").as_bytes())
    imap.deliver(mail(sender="bob@example.org", msgid="<b1@example.org>").as_bytes())
    no_id = b"From: dora@example.org\r\nSubject: no id\r\n\r\nA message without Message-ID\r\n"
    imap.deliver(no_id)
    await tick(rt, clock)
    assert await count(rt, Message) == 3

    # A crash after the messages were committed but before their UIDs were recorded leaves
    # exactly this behind: the messages stored, the mailbox position where it was.
    async with rt.db.write() as session:
        await session.execute(update(MailboxState).values(last_uid=0))
    await tick(rt, clock)
    assert await count(rt, Message) == 3
    assert (await state(rt)).last_uid == 3

    # The server rebuilt the mailbox: new UIDVALIDITY, new UIDs. Everything is fetched again
    # and nothing is stored twice (the message without Message-ID dedupes on its bytes).
    imap.renumber(uidvalidity=2000)
    fetches = imap.count("UID FETCH")
    await tick(rt, clock)
    assert imap.count("UID FETCH") == fetches + 3
    assert await count(rt, Message) == 3
    position = await state(rt)
    assert (position.uidvalidity, position.last_uid) == (2000, 3)


async def test_wrong_password_is_recorded_and_backs_off(
    rt: Runtime, clock: ManualClock, imap: ImapStandIn, inbox: str
) -> None:
    imap.deliver(mail(msgid="<a1@example.org>").as_bytes())
    async with rt.db.write() as session:
        row = await session.get(Inbox, "email")
        assert row is not None
        row.credentials = {"imap_username": USER, "imap_password": "wrong"}
    await tick(rt, clock)
    failed = await state(rt)
    assert failed.last_error is not None
    assert "IMAP login as 'support@example.com'" in failed.last_error
    assert "refused: [AUTHENTICATIONFAILED] Invalid credentials" in failed.last_error
    assert failed.failures == 1
    assert failed.claimed_by is None
    assert await count(rt, Message) == 0
    # Each failure doubles the wait before the next poll (checked here in this process, on
    # the test's clock).
    again = await poll(rt, "email")
    assert again.error == failed.last_error
    backed_off = await state(rt)
    assert backed_off.failures == 2
    assert backed_off.next_poll_at == clock.now() + timedelta(seconds=60 * 4)
    clock.advance(61)
    assert await schedule_polls(rt) == 0
    # Once the password is fixed, the next poll succeeds and clears the error.
    async with rt.db.write() as session:
        row = await session.get(Inbox, "email")
        assert row is not None
        row.credentials = {"imap_username": USER, "imap_password": PASSWORD}
    assert await tick(rt, clock, after=240) == 1
    recovered = await state(rt)
    assert (recovered.last_error, recovered.failures, recovered.last_uid) == (None, 0, 1)
    assert await count(rt, Message) == 1


async def test_unreachable_server_and_missing_folder_are_recorded(
    rt: Runtime, imap: ImapStandIn, inbox: str
) -> None:
    async with rt.db.write() as session:
        row = await session.get(Inbox, "email")
        assert row is not None
        row.settings = imap_settings(imap.port, folder="Support Queue")
    result = await poll(rt, "email")
    assert result.error is not None
    assert "folder 'Support Queue'" in result.error
    assert "NONEXISTENT" in result.error
    port = imap.port
    await imap.close()
    async with rt.db.write() as session:
        row = await session.get(Inbox, "email")
        assert row is not None
        row.settings = imap_settings(port)
    result = await poll(rt, "email")
    assert result.error is not None
    assert result.error.startswith(f"IMAP 127.0.0.1:{port}:")
    assert (await state(rt)).failures == 2


async def test_malformed_message_is_skipped_and_the_rest_ingested(
    rt: Runtime, clock: ManualClock, imap: ImapStandIn, inbox: str
) -> None:
    imap.deliver(mail(msgid="<a1@example.org>").as_bytes())
    imap.deliver(b"Subject: nobody sent this\r\n\r\nThere is no From header.\r\n")
    imap.deliver(mail(sender="bob@example.org", msgid="<b1@example.org>").as_bytes())
    await tick(rt, clock)
    assert await count(rt, Message) == 2
    position = await state(rt)
    assert position.last_uid == 3
    assert [s["uid"] for s in position.skipped] == [2]
    assert position.last_error is not None
    assert position.last_error.startswith("UID 2 skipped: MalformedEmail")
    # It is not retried: later polls move on.
    fetches = imap.count("UID FETCH")
    await tick(rt, clock)
    assert imap.count("UID FETCH") == fetches
    assert len((await state(rt)).skipped) == 1


async def test_a_poll_holding_the_mailbox_keeps_a_second_one_out(
    rt: Runtime, imap: ImapStandIn, inbox: str
) -> None:
    from contact_center import mailboxes

    imap.deliver(mail(msgid="<a1@example.org>").as_bytes())
    assert await mailboxes.claim(rt, "email", "another-worker") is not None
    assert (await poll(rt, "email")).busy
    assert await count(rt, Message) == 0
    await mailboxes.finish(rt, "email", "another-worker")
    assert (await poll(rt, "email")).ingested == 1


@pytest.mark.parametrize(
    ("settings", "credentials", "error"),
    [
        ({"imap": {"port": 993}}, {}, "settings.imap.host: required"),
        ({"imap": {"host": "imap://x"}}, {}, "settings.imap.host: a host name"),
        ({"imap": {"host": "x", "tls": "yes"}}, {}, "settings.imap.tls: one of ssl, starttls"),
        ({"imap": {"host": "x", "port": 0}}, {}, "settings.imap.port: must be a number from 1"),
        ({"imap": {"host": "x", "poll_seconds": 1}}, {}, "settings.imap.poll_seconds"),
        ({"imap": {"host": "x"}}, {}, "credentials.imap_username: required"),
        ({"imap": {"host": "x"}}, {"imap_username": "u"}, "credentials.imap_password"),
        ({"imap": "imap.example.com"}, {}, "settings.imap: must be an object"),
        ({"auto_reply": {"enabled": True}}, {}, "settings.auto_reply.text: required"),
    ],
)
def test_imap_settings_are_validated(
    settings: dict[str, Any], credentials: dict[str, Any], error: str
) -> None:
    with pytest.raises(InboxConfigError, match=error.replace(".", r"\.")):
        check_inbox("email", settings, credentials)


def test_valid_imap_settings_take_defaults() -> None:
    from contact_center.inbox_config import ImapConfig

    config = ImapConfig.of(
        {"imap": {"host": "imap.example.com"}},
        {"imap_username": "u", "imap_password": "p"},
    )
    assert config is not None
    assert (config.port, config.tls, config.folder, config.mark_seen) == (993, "ssl", "INBOX", True)
    assert ImapConfig.of({"imap": {"host": "x", "enabled": False}}, {}) is None
    with pytest.raises(InboxConfigError, match="only email inboxes"):
        check_inbox("sms", {"imap": {"host": "x"}}, {})


async def test_admin_api_refuses_bad_imap_settings(rt: Runtime) -> None:
    import httpx

    from contact_center.app import create_app
    from tests.helpers import make_org

    org = await make_org(rt)
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)
    body = {
        "id": "support",
        "name": "Support",
        "kind": "email",
        "address": "support@example.com",
        "settings": {"imap": {"host": "imap.example.com", "tls": "tls"}},
        "credentials": {"imap_username": USER, "imap_password": PASSWORD},
    }
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        bad = await client.post("/api/v1/inboxes", json=body, headers=org.admin.headers)
        assert bad.status_code == 400
        assert "settings.imap.tls: one of ssl, starttls, none" in bad.text
        body["settings"] = {"imap": {"host": "imap.example.com"}}
        ok = await client.post("/api/v1/inboxes", json=body, headers=org.admin.headers)
        assert ok.status_code == 201, ok.text
        # Removing the password later is refused too: the inbox would stop polling.
        gone = await client.patch(
            "/api/v1/inboxes/support",
            json={"credentials": {"imap_password": None}},
            headers=org.admin.headers,
        )
        assert gone.status_code == 400
        assert "credentials.imap_password" in gone.text
