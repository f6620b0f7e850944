"""Web chat outside business hours: hello says the inbox is closed and when it opens, the offline
form's message becomes a conversation of the customer with that email (once, however often it is
submitted), bad fields are 400s naming the field, and admins cannot store a broken calendar."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from websockets.asyncio.client import ClientConnection, connect

from contact_center.app import create_app
from contact_center.clock import ManualClock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.models import Agent, Conversation, Customer, CustomerIdentity, Inbox, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org, relay
from tests.live import LiveApp, live_app

HOURS = {
    "timezone": "Europe/Istanbul",
    "weekly": {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
    "holidays": {"country": "TR"},
}
MONDAY_EVENING = datetime(2026, 6, 1, 17, 0, tzinfo=UTC)  # 20:00 in Istanbul: closed
TUESDAY_NINE = "2026-06-02T06:00:00+00:00"  # 09:00 in Istanbul
MONDAY_NOON = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)  # 12:00 in Istanbul: open


async def set_settings(rt: Runtime, inbox_id: str, settings: dict[str, Any]) -> None:
    async with rt.db.write() as session:
        await session.execute(update(Inbox).where(Inbox.id == inbox_id).values(settings=settings))


@pytest.fixture
async def live(rt: Runtime, clock: ManualClock) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    await set_settings(
        rt, "webchat", {"business_hours": HOURS, "offline_message": "Back tomorrow at nine."}
    )
    clock.set(MONDAY_EVENING)
    async with live_app(rt) as app:
        yield app


def ws_url(live: LiveApp, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"inbox": "webchat", **params}.items())
    return live.url.replace("http://", "ws://") + f"/ws/chat?{query}"


async def recv(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]


async def hello(live: LiveApp, **params: str) -> dict[str, Any]:
    async with connect(ws_url(live, **params)) as ws:
        return (await recv(ws, "hello"))["data"]  # type: ignore[no-any-return]


def form(**fields: str) -> dict[str, str]:
    return {
        "client_id": "f1",
        "name": "Zeynep Demir",
        "email": "Zeynep@Example.org",
        "message": "Faturam hakkında bir sorum var.",
    } | fields


async def post(live: LiveApp, data: dict[str, str], **kw: Any) -> httpx.Response:
    return await live.client.post("/webchat/offline", params={"inbox": "webchat"}, data=data, **kw)


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_hello_says_closed_and_when_it_opens(
    rt: Runtime, live: LiveApp, clock: ManualClock
) -> None:
    closed = await hello(live)
    assert closed["open"] is False
    assert closed["next_open"] == TUESDAY_NINE
    assert closed["offline_message"] == "Back tomorrow at nine."
    clock.set(MONDAY_NOON)
    opened = await hello(live)
    assert opened["open"] is True
    assert opened["next_open"] is None
    # Republic Day (a Thursday) is closed all day; the next opening is Friday 09:00.
    clock.set(datetime(2026, 10, 29, 9, 0, tzinfo=UTC))
    holiday = await hello(live)
    assert (holiday["open"], holiday["next_open"]) == (False, "2026-10-30T06:00:00+00:00")
    # No calendar, or one that no longer parses: always open (visitors can always write).
    for settings in ({}, {"business_hours": {"weekly": "never"}}):
        await set_settings(rt, "webchat", settings)
        clock.set(MONDAY_EVENING)
        assert (await hello(live))["open"] is True


async def test_offline_message_is_one_conversation_of_the_email_customer(
    rt: Runtime, live: LiveApp
) -> None:
    first = await post(live, form())
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["duplicate"] is False
    assert body["next_open"] == TUESDAY_NINE
    assert first.headers["access-control-allow-origin"] == "*"
    again = await post(live, form())  # a double submit
    assert again.status_code == 201
    assert again.json()["duplicate"] is True
    assert again.json()["message_id"] == body["message_id"]
    assert await count(rt, Message) == 1
    async with rt.db.read() as session:
        message = await session.get(Message, body["message_id"])
        assert message is not None
        conversation = await session.get(Conversation, message.conversation_id)
        customer = await session.get(Customer, message.customer_id)
        identities = (await session.scalars(select(CustomerIdentity))).all()
    assert message.text == "Faturam hakkında bir sorum var."
    assert conversation is not None
    assert conversation.inbox_id == "webchat"
    assert customer is not None
    assert (customer.name, customer.email) == ("Zeynep Demir", "zeynep@example.org")
    assert [(i.kind, i.address) for i in identities] == [("email", "zeynep@example.org")]
    # A later email from the same address is the same customer.
    await make_inbox(rt, "email", "email", "support@example.com", credentials={})
    later = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id="email",
            provider_message_id="<later@example.org>",
            sender=IdentityRef.of("email", "zeynep@example.org"),
            text="Any news?",
            continuous=False,
        )
    )
    assert later.customer_id == customer.id
    # A new message (another client id) from the same person joins the open conversation.
    other = await post(live, form(client_id="f2", message="Bir de şu var."))
    assert other.json()["conversation_id"] == conversation.id
    assert await count(rt, Message) == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "  "}, "name"),
        ({"email": ""}, "email"),
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"message": ""}, "message"),
        ({"message": "x" * 4001}, "message"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": "c" * 65}, "client_id"),
        ({"name": "n" * 201}, "name"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(
    rt: Runtime, live: LiveApp, fields: dict[str, str], field: str
) -> None:
    response = await post(live, form(**fields))
    assert response.status_code == 400, response.text
    assert response.json()["extra"]["field"] == field
    assert response.json()["detail"].startswith(field + ":")
    # The widget runs on the customer's site: it can read the error only with CORS headers.
    assert response.headers["access-control-allow-origin"] == "*"
    assert await count(rt, Message) == 0


async def test_json_bodies_unknown_inboxes_and_foreign_origins(rt: Runtime, live: LiveApp) -> None:
    url = "/webchat/offline"
    ok = await live.client.post(url, params={"inbox": "webchat"}, json=form(client_id="j1"))
    assert ok.status_code == 201, ok.text
    not_object = await live.client.post(url, params={"inbox": "webchat"}, json=["x"])
    assert not_object.status_code == 400
    broken = await live.client.post(
        url,
        params={"inbox": "webchat"},
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400
    wrong_type = await live.client.post(
        url, params={"inbox": "webchat"}, json=form() | {"name": ["a"]}
    )
    assert wrong_type.json()["extra"]["field"] == "name"
    assert (await post_to(live, "nope")).status_code == 404
    await set_settings(rt, "webchat", {"allowed_origins": ["https://shop.example"]})
    foreign = await post(live, form(client_id="o1"), headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403
    own = await post(live, form(client_id="o2"), headers={"origin": "https://shop.example"})
    assert own.status_code == 201
    assert own.headers["access-control-allow-origin"] == "https://shop.example"
    assert await count(rt, Message) == 2


async def test_a_body_over_the_limit_is_413_and_stores_nothing(rt: Runtime, live: LiveApp) -> None:
    from channels.webhooks import WEBHOOK_MAX_BODY

    huge = form(client_id="big") | {"message": "x" * WEBHOOK_MAX_BODY}
    refused = await post(live, huge)
    assert refused.status_code == 413
    assert f"at most {WEBHOOK_MAX_BODY} bytes" in refused.json()["detail"]
    assert await count(rt, Message) == 0


async def post_to(live: LiveApp, inbox: str) -> httpx.Response:
    return await live.client.post("/webchat/offline", params={"inbox": inbox}, data=form())


async def test_new_visitor_sees_their_message_and_the_reply_when_back(
    rt: Runtime, live: LiveApp, clock: ManualClock
) -> None:
    token = (await hello(live))["visitor_token"]
    sent = await post(live, form(visitor=token))
    assert sent.status_code == 201
    # An agent answers the next morning; the visitor opens the widget again.
    clock.set(MONDAY_NOON.replace(day=2))
    org = await make_org(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        assert agent is not None
        await reply(
            session,
            conversation_id=sent.json()["conversation_id"],
            agent=agent,
            text="Merhaba Zeynep, bakıyoruz.",
            clock=rt.clock,
        )
    await relay(rt)
    async with connect(ws_url(live, visitor=token)) as ws:
        assert (await recv(ws, "hello"))["data"]["open"] is True
        history = (await recv(ws, "history"))["data"]["messages"]
    assert [m["text"] for m in history] == [
        "Faturam hakkında bir sorum var.",
        "Merhaba Zeynep, bakıyoruz.",
    ]


async def test_a_visitor_claiming_someone_elses_email_sees_nothing_of_theirs(
    rt: Runtime, live: LiveApp
) -> None:
    # The owner of the address wrote before (their first message starts their customer).
    assert (await post(live, form(client_id="owner"))).status_code == 201
    token = (await hello(live))["visitor_token"]
    claimed = await post(live, form(client_id="x1", visitor=token, message="It's me, honest"))
    assert claimed.status_code == 201
    async with connect(ws_url(live, visitor=token)) as ws:
        await recv(ws, "hello")
        history = (await recv(ws, "history"))["data"]["messages"]
    # Only what this visitor wrote (in a conversation of its own), nothing of the owner's.
    assert [m["text"] for m in history] == ["It's me, honest"]
    async with rt.db.read() as session:
        conversations = set((await session.scalars(select(Message.conversation_id))).all())
        kinds = (await session.scalars(select(CustomerIdentity.kind))).all()
    assert len(conversations) == 2
    assert sorted(kinds) == ["email"]


async def test_a_returning_visitor_keeps_one_customer(rt: Runtime, live: LiveApp) -> None:
    """A visitor who chatted before (while open) and writes offline stays one customer."""
    await set_settings(rt, "webchat", {})
    async with connect(ws_url(live)) as ws:
        token = (await recv(ws, "hello"))["data"]["visitor_token"]
        await ws.send(
            json.dumps({"type": "message.send", "data": {"client_id": "c1", "text": "hi"}})
        )
        chat_customer = (await recv(ws, "message.ack"))["data"]
    sent = await post(live, form(visitor=token))
    async with rt.db.read() as session:
        message = await session.get(Message, sent.json()["message_id"])
        first = await session.get(Message, chat_customer["message_id"])
    assert message is not None
    assert first is not None
    assert message.customer_id == first.customer_id
    assert message.conversation_id == first.conversation_id
    assert await count(rt, Customer) == 1


async def test_admins_cannot_store_a_broken_calendar(rt: Runtime) -> None:
    org = await make_org(rt)
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        headers = org.admin.headers
        bad = {"business_hours": {"timezone": "Europe/Istanbul", "weekly": {"mon": [["9", "18"]]}}}
        patched = await c.patch("/api/v1/inboxes/webchat", json={"settings": bad}, headers=headers)
        assert patched.status_code == 400
        assert "settings.business_hours.weekly.mon[0].start" in patched.json()["detail"]
        created = await c.post(
            "/api/v1/inboxes",
            json={"name": "Chat 2", "kind": "webchat", "address": "s2", "settings": bad},
            headers=headers,
        )
        assert created.status_code == 400
        good = {"business_hours": HOURS, "offline_message": "Leave a note"}
        ok = await c.patch("/api/v1/inboxes/webchat", json={"settings": good}, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["settings"]["business_hours"] == HOURS
