"""Web chat over a real websocket: visitors, messages, resume with nothing lost or repeated,
agent replies, typing, pre-chat identification, uploads, bad frames."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from contact_center.models import Agent, Attachment, Customer, CustomerIdentity, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org, relay, run_jobs
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


async def test_identify_links_email_only_when_unclaimed(rt: Runtime, live: LiveApp) -> None:
    async with rt.db.write() as session:
        session.add(
            Customer(
                name="Owner", attributes={}, created_at=rt.clock.now(), updated_at=rt.clock.now()
            )
        )
        await session.flush()
        owner = await session.scalar(select(Customer))
        assert owner is not None
        session.add(
            CustomerIdentity(
                customer_id=owner.id,
                kind="email",
                address="owner@example.org",
                created_at=rt.clock.now(),
            )
        )
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        await send(ws, "identify", name="Ada", email="ada@example.org")
        assert (await recv(ws, "identified"))["data"]["email_linked"] is True
    async with connect(ws_url(live)) as ws:
        await recv(ws, "hello")
        await send(ws, "identify", name="Mallory", email="owner@example.org")
        assert (await recv(ws, "identified"))["data"]["email_linked"] is False
    async with rt.db.read() as session:
        owners = (
            await session.execute(
                select(CustomerIdentity.address, CustomerIdentity.customer_id).where(
                    CustomerIdentity.kind == "email"
                )
            )
        ).all()
        mallory = await session.scalar(select(Customer).where(Customer.name == "Mallory"))
    assert dict(owners)["owner@example.org"] == owner.id
    assert mallory is not None
    assert mallory.attributes["possible_duplicate_of"] == owner.id


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
