"""Web chat over a real websocket: visitors, messages, resume with nothing lost or repeated,
agent replies, typing, pre-chat identification (linking to an existing customer without
showing the visitor anything another visitor wrote; verified by an identity hash), uploads, bad
frames."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.models import Agent, Attachment, Customer, CustomerIdentity, Inbox, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import ingest, make_inbox, make_org, relay, run_jobs
from tests.live import LiveApp, live_app
from tests.wshelpers import drain, recv, send


@pytest.fixture
async def live(rt: Runtime) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    async with live_app(rt) as app:
        yield app


def ws_url(live: LiveApp, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"inbox": "webchat", **params}.items())
    return live.url.replace("http://", "ws://") + f"/ws/chat?{query}"


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def agent_reply(rt: Runtime, text: str) -> int:
    org = await make_org(rt) if not hasattr(rt, "_org") else rt._org  # type: ignore[attr-defined]
    rt._org = org  # type: ignore[attr-defined]
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        conv_id = (await session.scalars(select(Message.conversation_id).limit(1))).one()
        assert agent is not None
        message, _ = await reply(
            session, conversation_id=conv_id, agent=agent, text=text, clock=rt.clock
        )
        await reply(
            session,
            conversation_id=conv_id,
            agent=agent,
            text="secret note",
            private=True,
            clock=rt.clock,
        )
        return message.id


async def test_visitor_writes_and_resend_is_one_message(rt: Runtime, live: LiveApp) -> None:
    async with connect(ws_url(live)) as ws:
        hello = await recv(ws, "hello")
        token = hello["data"]["visitor_token"]
        assert (await recv(ws, "history"))["data"]["messages"] == []
        await send(ws, "message.send", client_id="c1", text="Merhaba, yardım lazım")
        ack = await recv(ws, "message.ack")
        await send(ws, "message.send", client_id="c1", text="Merhaba, yardım lazım")
        again = await recv(ws, "message.ack")
    assert ack["data"]["duplicate"] is False
    assert again["data"]["duplicate"] is True
    assert again["data"]["message_id"] == ack["data"]["message_id"]
    assert await count(rt, Message) == 1
    async with rt.db.read() as session:
        identity = await session.scalar(select(CustomerIdentity))
    assert identity is not None
    assert identity.kind == "webchat"
    assert token.startswith(identity.address + ".")


async def test_reload_keeps_the_conversation_and_resume_loses_nothing(
    rt: Runtime, live: LiveApp
) -> None:
    async with connect(ws_url(live)) as ws:
        token = (await recv(ws, "hello"))["data"]["visitor_token"]
        await send(ws, "message.send", client_id="c1", text="first")
        await recv(ws, "message.ack")
        await relay(rt)
        created = await recv(ws, "message.created")
        last_id = created["id"]
    # While the visitor is away, an agent answers (and writes an internal note).
    message_id = await agent_reply(rt, "Hello from support")
    await relay(rt)
    await run_jobs(rt)
    await relay(rt)
    async with connect(ws_url(live, visitor=token, last_event_id=last_id)) as ws:
        hello = await recv(ws, "hello")
        assert hello["data"]["visitor_token"] == token
        history = (await recv(ws, "history"))["data"]["messages"]
        assert [m["text"] for m in history] == ["first", "Hello from support"]
        frames = await drain(ws)
    ids = [f["id"] for f in frames]
    assert ids == sorted(set(ids))
    assert all(i > last_id for i in ids)
    created = [f for f in frames if f["type"] == "message.created"]
    assert [f["data"]["text"] for f in created] == ["Hello from support"]
    assert "to_address" not in created[0]["data"]
    statuses = [f["data"]["delivery_status"] for f in frames if f["type"] == "message.status"]
    assert statuses[-1] == "sent"
    assert all("secret note" not in json.dumps(f) for f in frames)
    assert all(
        f["data"].get("message_id", message_id) == message_id
        for f in frames
        if f["type"] == "message.status"
    )


async def test_a_resume_frame_replays_what_the_visitor_missed_once(
    rt: Runtime, live: LiveApp
) -> None:
    """A widget that reconnects without ?last_event_id (it starts at the head) and then sends
    `resume` from the last id it saw gets the reply it missed, once; a bad mark is an error."""
    async with connect(ws_url(live)) as ws:
        token = (await recv(ws, "hello"))["data"]["visitor_token"]
        await send(ws, "message.send", client_id="c1", text="first")
        await recv(ws, "message.ack")
        await relay(rt)
        last_id = (await recv(ws, "message.created"))["id"]
    await agent_reply(rt, "Hello from support")
    await relay(rt)
    async with connect(ws_url(live, visitor=token)) as ws:
        await recv(ws, "hello")
        await recv(ws, "history")
        assert [f for f in await drain(ws, 0.5) if "id" in f] == []  # starts at the head
        await send(ws, "resume", last_event_id=last_id)
        frames = [f for f in await drain(ws) if "id" in f]
        created = [f["data"]["text"] for f in frames if f["type"] == "message.created"]
        assert created == ["Hello from support"]
        assert [f["id"] for f in frames] == sorted({f["id"] for f in frames})
        await send(ws, "resume", last_event_id=last_id)
        assert [f for f in await drain(ws, 0.5) if "id" in f] == []  # nothing twice
        await send(ws, "resume", last_event_id="soon")
        assert (await recv(ws, "error"))["data"]["code"] == "bad_frame"


async def test_live_reply_and_typing_reach_the_visitor(rt: Runtime, live: LiveApp) -> None:
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        await send(ws, "message.send", client_id="c1", text="hi")
        ack = await recv(ws, "message.ack")
        await agent_reply(rt, "live answer")
        await relay(rt)
        frame = await recv(ws, "message.created")
        while frame["data"]["direction"] != "out":
            frame = await recv(ws, "message.created")
        assert frame["data"]["text"] == "live answer"
        await rt.bus.publish(
            "typing",
            {"conversation_id": ack["data"]["conversation_id"], "from": "agent", "typing": True},
        )
        typing = await recv(ws, "typing")
        assert typing["data"]["typing"] is True


async def test_another_visitor_sees_nothing_and_forged_token_is_new_visitor(
    rt: Runtime, live: LiveApp
) -> None:
    async with connect(ws_url(live)) as ws:
        token = (await recv(ws, "hello"))["data"]["visitor_token"]
        await send(ws, "message.send", client_id="c1", text="private stuff")
        await recv(ws, "message.ack")
    forged = token.split(".")[0] + ".0000000000000000000000000000000f"
    async with connect(ws_url(live, visitor=forged)) as ws:
        hello = await recv(ws, "hello")
        assert hello["data"]["visitor_token"] != token
        assert (await recv(ws, "history"))["data"]["messages"] == []


SECRET = "site-identity-secret-0123456789"


def identity_hash(email: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), email.encode(), hashlib.sha256).hexdigest()


async def email_customer(rt: Runtime, address: str, text: str = "Where is my order?") -> int:
    """A customer who wrote to us by email (their own conversation in the email inbox)."""
    await make_inbox(rt, "email", "email", "support@shop.test", credentials={})
    result = await ingest(
        rt,
        InboundMessage(
            inbox_id="email",
            provider_message_id=f"<{address}-1@mail.test>",
            sender=IdentityRef.of("email", address, "Ada Lovelace"),
            text=text,
            continuous=False,
        ),
    )
    return result.customer_id


async def live_customers(rt: Runtime) -> list[Customer]:
    async with rt.db.read() as session:
        return list(
            (await session.scalars(select(Customer).where(Customer.merged_into_id.is_(None)))).all()
        )


async def visitor_chat(
    live: LiveApp, text: str, *, token: str | None = None, **identify: Any
) -> tuple[str, dict[str, Any]]:
    """Connect as a visitor, identify when asked, write ``text``; the token and the ack."""
    params = {"visitor": token} if token else {}
    async with connect(ws_url(live, **params)) as ws:
        token = (await recv(ws, "hello"))["data"]["visitor_token"]
        if identify:
            await send(ws, "identify", **identify)
            await recv(ws, "identified")
        await send(ws, "message.send", client_id=f"c-{text[:8]}", text=text)
        ack = await recv(ws, "message.ack")
    assert token is not None
    return token, ack


async def test_pre_chat_email_links_the_visitor_to_the_existing_customer(
    rt: Runtime, live: LiveApp
) -> None:
    owner_id = await email_customer(rt, "ada@example.org")
    org = await make_org(rt)
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        await send(ws, "identify", name="Ada", email="Ada@Example.org")
        identified = (await recv(ws, "identified"))["data"]
        assert identified == {"name": "Ada", "email_linked": True, "email_verified": False}
        # Linked, but the visitor's view holds only what this visitor wrote: not the email.
        await send(ws, "message.send", client_id="c1", text="Any news on my order?")
        ack = (await recv(ws, "message.ack"))["data"]
    assert [c.id for c in await live_customers(rt)] == [owner_id]

    # The agent sees one profile with both identities, the chat one marked unverified.
    shown = await live.client.get(f"/api/v1/customers/{owner_id}", headers=org.admin.headers)
    assert shown.status_code == 200, shown.text
    identities = {i["kind"]: i for i in shown.json()["identities"]}
    assert set(identities) == {"email", "webchat"}
    assert identities["webchat"]["extra"] == {
        "email": "ada@example.org",
        "email_verified": False,
    }
    listed = await live.client.get(
        "/api/v1/conversations", params={"customer_id": owner_id}, headers=org.admin.headers
    )
    assert sorted(c["channel"] for c in listed.json()["items"]) == ["email", "webchat"]
    messages = await live.client.get(
        f"/api/v1/conversations/{ack['conversation_id']}/messages", headers=org.admin.headers
    )
    [chat] = messages.json()
    assert chat["channel"] == "webchat"
    assert chat["customer_id"] == owner_id
    assert (chat["identified_email"], chat["email_verified"]) == ("ada@example.org", False)


async def test_visitor_who_wrote_first_keeps_their_conversation_when_linked(
    rt: Runtime, live: LiveApp
) -> None:
    owner_id = await email_customer(rt, "ada@example.org")
    token, first = await visitor_chat(live, "hello before the form")
    token, second = await visitor_chat(
        live, "and after it", token=token, name="Ada", email="ada@example.org"
    )
    assert second["data"]["conversation_id"] == first["data"]["conversation_id"]
    assert [c.id for c in await live_customers(rt)] == [owner_id]
    async with rt.db.read() as session:
        owners = set((await session.scalars(select(Message.customer_id))).all())
    assert owners == {owner_id}
    async with connect(ws_url(live, visitor=token)) as ws:
        await recv(ws, "hello")
        history = (await recv(ws, "history"))["data"]["messages"]
    assert [m["text"] for m in history] == ["hello before the form", "and after it"]


async def test_stranger_with_the_owners_email_cannot_read_or_join_their_chat(
    rt: Runtime, live: LiveApp
) -> None:
    owner_id = await email_customer(rt, "ada@example.org")
    ada_token, ada_ack = await visitor_chat(
        live, "my card ends 4242", name="Ada", email="ada@example.org"
    )
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        assert (await recv(ws, "history"))["data"]["messages"] == []
        await send(ws, "identify", name="Mallory", email="ada@example.org")
        assert (await recv(ws, "identified"))["data"]["email_linked"] is True
        await send(ws, "message.send", client_id="m1", text="what did I order?")
        ack = (await recv(ws, "message.ack"))["data"]
        # A new conversation of the same customer, not Ada's open one.
        assert ack["conversation_id"] != ada_ack["data"]["conversation_id"]
        # Ada writes again and an agent answers her: nothing of it reaches the stranger.
        await visitor_chat(live, "second secret", token=ada_token)
        org = await make_org(rt)
        async with rt.db.write() as session:
            agent = await session.get(Agent, org.agent.id)
            assert agent is not None
            await reply(
                session,
                conversation_id=ada_ack["data"]["conversation_id"],
                agent=agent,
                text="Your order 1234 ships today",
                clock=rt.clock,
            )
        await relay(rt)
        frames = await drain(ws)
    seen = json.dumps(frames)
    assert "4242" not in seen and "second secret" not in seen and "1234" not in seen
    assert [f["data"]["text"] for f in frames if f["type"] == "message.created"] == [
        "what did I order?"
    ]
    async with connect(ws_url(live)) as ws:  # the stranger again, on another device
        await recv(ws, "hello")
        await send(ws, "identify", email="ada@example.org")
        await recv(ws, "identified")
        await send(ws, "resume", last_event_id=0)
        frames = await drain(ws)
    assert "4242" not in json.dumps(frames)
    # Ada's own device still has all of hers; the profile is one customer.
    async with connect(ws_url(live, visitor=ada_token)) as ws:
        await recv(ws, "hello")
        history = (await recv(ws, "history"))["data"]["messages"]
    assert [m["text"] for m in history] == [
        "my card ends 4242",
        "second secret",
        "Your order 1234 ships today",
    ]
    assert [c.id for c in await live_customers(rt)] == [owner_id]


async def test_verified_identity_sees_the_customers_earlier_chats(
    rt: Runtime, live: LiveApp
) -> None:
    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "webchat")
        assert inbox is not None
        inbox.credentials = {"identity_secret": SECRET}
    owner_id = await email_customer(rt, "ada@example.org")
    signed = {"name": "Ada", "email": "ada@example.org"}
    await visitor_chat(
        live, "from my laptop", **signed, identity_hash=identity_hash("ada@example.org")
    )
    await visitor_chat(live, "stranger, unverified", email="ada@example.org")
    async with connect(ws_url(live)) as ws:  # Ada's phone: the site vouches for her again
        await recv(ws, "hello")
        assert (await recv(ws, "history"))["data"]["messages"] == []
        await send(ws, "identify", **signed, identity_hash=identity_hash("ada@example.org").upper())
        identified = (await recv(ws, "identified"))["data"]
        history = (await recv(ws, "history"))["data"]["messages"]
    assert identified["email_verified"] is True
    assert [m["text"] for m in history] == ["from my laptop"]
    assert [c.id for c in await live_customers(rt)] == [owner_id]
    async with rt.db.read() as session:
        marks = (
            await session.scalars(select(Message.extra).where(Message.inbox_id == "webchat"))
        ).all()
    assert sorted(bool(m["email_verified"]) for m in marks) == [False, True]


async def test_another_signed_in_user_on_the_same_browser_is_a_new_visitor(
    rt: Runtime, live: LiveApp
) -> None:
    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "webchat")
        assert inbox is not None
        inbox.credentials = {"identity_secret": SECRET}
    ada = await email_customer(rt, "ada@example.org")
    token, _ = await visitor_chat(
        live,
        "Ada's question",
        email="ada@example.org",
        identity_hash=identity_hash("ada@example.org"),
    )
    # Ada signs out; Bob signs in on the same browser: the site vouches for Bob.
    async with connect(ws_url(live, visitor=token)) as ws:
        await recv(ws, "hello")
        await send(
            ws, "identify", email="bob@example.org", identity_hash=identity_hash("bob@example.org")
        )
        assert (await recv(ws, "error"))["data"]["code"] == "identity_changed"
    async with rt.db.read() as session:
        rows = (
            await session.execute(select(CustomerIdentity.kind, CustomerIdentity.customer_id))
        ).all()
    assert sorted(rows) == [("email", ada), ("webchat", ada)]
    # As a new visitor (what the widget does next) Bob has a profile of his own.
    _, ack = await visitor_chat(
        live, "Bob here", email="bob@example.org", identity_hash=identity_hash("bob@example.org")
    )
    async with rt.db.read() as session:
        bob = await session.scalar(select(Customer).where(Customer.email == "bob@example.org"))
    assert bob is not None and bob.id != ada
    assert await customer_of_message(rt, ack["data"]["message_id"]) == bob.id


async def customer_of_message(rt: Runtime, message_id: int) -> int | None:
    async with rt.db.read() as session:
        message = await session.get(Message, message_id)
        return message.customer_id if message else None


async def test_wrong_identity_hash_links_nothing(rt: Runtime, live: LiveApp) -> None:
    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "webchat")
        assert inbox is not None
        inbox.credentials = {"identity_secret": SECRET}
    owner_id = await email_customer(rt, "ada@example.org")
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        for forged in (identity_hash("ada@example.org", "x" * 30), "", 5):
            await send(ws, "identify", email="ada@example.org", identity_hash=forged)
            error = (await recv(ws, "error"))["data"]
            assert error["code"] == "identity_unverified"
            assert error["for"] == "identify"
        await send(ws, "ping")
        await recv(ws, "pong")
    async with rt.db.read() as session:
        kinds = (await session.scalars(select(CustomerIdentity.kind))).all()
    assert kinds == ["email"]
    assert [c.id for c in await live_customers(rt)] == [owner_id]


async def test_identify_again_and_after_reconnect_changes_nothing(
    rt: Runtime, live: LiveApp
) -> None:
    owner_id = await email_customer(rt, "ada@example.org")
    token, _ = await visitor_chat(live, "hi", name="Ada", email="ada@example.org")
    async with rt.db.read() as session:
        before = (
            await session.execute(
                select(
                    CustomerIdentity.kind, CustomerIdentity.address, CustomerIdentity.customer_id
                )
            )
        ).all()
    for _ in range(2):
        async with connect(ws_url(live, visitor=token)) as ws:
            hello = (await recv(ws, "hello"))["data"]
            assert hello["identified"] is True
            for _ in range(2):
                await send(ws, "identify", name="Ada", email="ada@example.org")
                assert (await recv(ws, "identified"))["data"]["email_linked"] is True
    async with rt.db.read() as session:
        after = (
            await session.execute(
                select(
                    CustomerIdentity.kind, CustomerIdentity.address, CustomerIdentity.customer_id
                )
            )
        ).all()
    assert sorted(after) == sorted(before)
    assert [c.id for c in await live_customers(rt)] == [owner_id]
    assert await count(rt, Message) == 2


async def test_new_email_becomes_the_visitors_own_and_a_claim_with_other_addresses_waits(
    rt: Runtime, live: LiveApp
) -> None:
    owner_id = await email_customer(rt, "owner@example.org")
    token, _ = await visitor_chat(live, "hi", name="Grace", email="grace@example.org")
    [grace] = [c for c in await live_customers(rt) if c.id != owner_id]
    assert grace.email == "grace@example.org"
    # Grace, who has an address of her own, claims another customer's: an agent decides.
    async with connect(ws_url(live, visitor=token)) as ws:
        await recv(ws, "hello")
        await send(ws, "identify", email="owner@example.org")
        assert (await recv(ws, "identified"))["data"]["email_linked"] is False
    async with rt.db.read() as session:
        grace_now = await session.get(Customer, grace.id)
    assert grace_now is not None
    assert grace_now.merged_into_id is None
    assert grace_now.attributes["possible_duplicate_of"] == owner_id
    # A stranger linked to the owner by their email cannot add addresses to the owner's profile.
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        await send(ws, "identify", email="owner@example.org")
        assert (await recv(ws, "identified"))["data"]["email_linked"] is True
        await send(ws, "identify", email="mallory@evil.test")
        assert (await recv(ws, "identified"))["data"]["email_linked"] is False
    async with rt.db.read() as session:
        addresses = (
            await session.scalars(
                select(CustomerIdentity.address).where(CustomerIdentity.customer_id == owner_id)
            )
        ).all()
    assert "mallory@evil.test" not in addresses


async def test_pre_chat_settings_are_checked_and_reach_the_widget(
    rt: Runtime, live: LiveApp
) -> None:
    org = await make_org(rt)
    base = {"name": "Site", "kind": "webchat", "address": "site2"}
    bad = [
        ({"settings": {"pre_chat": {"require_email": "maybe"}}}, "settings.pre_chat.require_email"),
        ({"settings": {"pre_chat": {"message": 5}}}, "settings.pre_chat.message"),
        ({"settings": {"pre_chat": "yes"}}, "settings.pre_chat"),
        ({"credentials": {"identity_secret": "short"}}, "credentials.identity_secret"),
    ]
    for body, field in bad:
        response = await live.client.post(
            "/api/v1/inboxes", json=base | body, headers=org.admin.headers
        )
        assert response.status_code == 400, response.text
        assert field in response.json()["detail"]
    sms = {"name": "SMS", "kind": "sms", "address": "+15005550006"}
    response = await live.client.post(
        "/api/v1/inboxes",
        json=sms | {"settings": {"pre_chat": {"enabled": True}}},
        headers=org.admin.headers,
    )
    assert response.status_code == 400
    assert "settings.pre_chat" in response.json()["detail"]
    pre_chat = {"enabled": True, "require_email": True, "message": "Tell us who you are"}
    response = await live.client.patch(
        "/api/v1/inboxes/webchat",
        json={"settings": {"pre_chat": pre_chat}},
        headers=org.admin.headers,
    )
    assert response.status_code == 200, response.text
    async with connect(ws_url(live)) as ws:
        hello = (await recv(ws, "hello"))["data"]
        assert hello["pre_chat"] == pre_chat
        assert hello["identified"] is False
        await send(ws, "identify", name="No Email")
        assert "email" in (await recv(ws, "error"))["data"]["message"]


async def test_bad_frames_get_errors_and_the_socket_survives(rt: Runtime, live: LiveApp) -> None:
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        for bad in (
            "not json",
            "[1]",
            json.dumps({"type": "nope"}),
            json.dumps({"type": "message.send", "data": {"text": "no client id"}}),
            "x" * 20000,
        ):
            await ws.send(bad)
            error = await recv(ws, "error")
            assert error["data"]["code"] in ("bad_frame", "too_large")
        await send(ws, "ping")
        assert (await recv(ws, "pong"))["type"] == "pong"
    assert await count(rt, Message) == 0


async def test_unknown_inbox_is_refused(live: LiveApp) -> None:
    with pytest.raises(Exception, match="403"):
        async with connect(ws_url(live, inbox="nope").replace("inbox=webchat&", "")) as ws:
            await ws.recv()


async def test_upload_stores_the_file(rt: Runtime, live: LiveApp) -> None:
    async with connect(ws_url(live)) as ws:
        token = (await recv(ws, "hello"))["data"]["visitor_token"]
        await send(ws, "message.send", client_id="c1", text="see the screenshot")
        chat = (await recv(ws, "message.ack"))["data"]
    png = b"\x89PNG\r\n\x1a\n" + b"\x03" * 50
    ok = await live.client.post(
        "/webchat/upload",
        params={"inbox": "webchat", "visitor": token},
        files={"file": ("shot.png", png, "image/png")},
        data={"text": "screenshot", "client_id": "u1"},
    )
    assert ok.status_code == 201, ok.text
    bad = await live.client.post(
        "/webchat/upload",
        params={"inbox": "webchat", "visitor": "x.y"},
        files={"file": ("shot.png", png, "image/png")},
    )
    assert bad.status_code == 401
    async with rt.db.read() as session:
        rows = (await session.scalars(select(Attachment))).all()
    assert [(a.filename, a.content_type, a.size) for a in rows] == [
        ("shot.png", "image/png", len(png))
    ]
    # The file joins the visitor's conversation, and the visitor sees it.
    async with rt.db.read() as session:
        upload = await session.get(Message, ok.json()["message_id"])
    assert upload is not None
    assert upload.conversation_id == chat["conversation_id"]
    async with connect(ws_url(live, visitor=token)) as ws:
        await recv(ws, "hello")
        history = (await recv(ws, "history"))["data"]["messages"]
    assert [m["text"] for m in history] == ["see the screenshot", "screenshot"]


async def test_a_reopened_chat_is_continued_by_its_visitor(rt: Runtime, live: LiveApp) -> None:
    from contact_center.conversations import change_conversation
    from contact_center.models import Conversation, ConversationStatus

    token, first = await visitor_chat(live, "first")
    conversation_id = first["data"]["conversation_id"]
    for status in (ConversationStatus.resolved, ConversationStatus.open):
        async with rt.db.write() as session:
            conversation = await session.get(Conversation, conversation_id)
            assert conversation is not None
            await change_conversation(
                session, conversation, clock=rt.clock, acting_agent_id=None, status=status
            )
    _, again = await visitor_chat(live, "second", token=token)
    assert again["data"]["conversation_id"] == conversation_id
