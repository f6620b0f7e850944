"""Messenger and Instagram: verification handshake, X-Hub-Signature-256, messages, postbacks,
echoes ignored, media from allowed hosts only, replies through the Send API."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from contact_center.models import Agent, Attachment, CustomerIdentity, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org, settle
from tests.live import live_app
from tests.standins.meta import MetaStandIn

SECRET = "meta-app-secret"
TOKEN = "page-token"
PAGE = "1001"
IG = "2002"


@pytest.fixture
def graph() -> Iterator[MetaStandIn]:
    with MetaStandIn(TOKEN) as standin:
        yield standin


@pytest.fixture
async def client(rt: Runtime, graph: MetaStandIn) -> AsyncIterator[httpx.AsyncClient]:
    creds = {"app_secret": SECRET, "verify_token": "verify-me", "page_access_token": TOKEN}
    await make_inbox(rt, "fb", "messenger", PAGE, api_base_url=graph.url, credentials=creds)
    await make_inbox(rt, "ig", "instagram", IG, api_base_url=graph.url, credentials=creds)
    # The real app served over loopback: the provider's request travels over HTTP.
    async with live_app(rt) as live:
        yield live.client


def webhook(obj: str, page: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"object": obj, "entry": [{"id": page, "time": 1700000000000, "messaging": list(items)}]}


def text_item(mid: str, text: str, sender: str = "psid-1", **message: Any) -> dict[str, Any]:
    return {
        "sender": {"id": sender},
        "recipient": {"id": PAGE},
        "timestamp": 1700000000000,
        "message": {"mid": mid, "text": text, **message},
    }


async def post(client: httpx.AsyncClient, payload: Any, secret: str = SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return await client.post(
        "/webhooks/meta",
        content=body,
        headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
    )


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_verification_handshake(client: httpx.AsyncClient) -> None:
    ok = await client.get(
        "/webhooks/meta",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": "verify-me",
            "hub.challenge": "1158201444",
        },
    )
    assert ok.status_code == 200
    assert ok.text == "1158201444"
    bad = await client.get(
        "/webhooks/meta",
        params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
    )
    assert bad.status_code == 403
    assert (await client.get("/webhooks/meta")).status_code == 400


async def test_message_signature_and_dedupe(rt: Runtime, client: httpx.AsyncClient) -> None:
    payload = webhook("page", PAGE, text_item("m_1", "Siparişim nerede?"))
    assert (await post(client, payload, secret="wrong")).status_code == 403
    unsigned = await client.post("/webhooks/meta", json=payload)
    assert unsigned.status_code == 403
    assert await count(rt, Message) == 0
    assert (await post(client, payload)).status_code == 200
    assert (await post(client, payload)).status_code == 200
    assert await count(rt, Message) == 1
    async with rt.db.read() as session:
        identity = await session.scalar(select(CustomerIdentity))
    assert identity is not None
    assert (identity.kind, identity.address) == ("messenger", "psid-1")


async def test_malformed_is_400(rt: Runtime, client: httpx.AsyncClient) -> None:
    for payload in ({"object": "page"}, {"object": "whatsapp_business_account", "entry": []}, [1]):
        assert (await post(client, payload)).status_code == 400
    assert await count(rt, Message) == 0


async def test_echo_postback_and_instagram(rt: Runtime, client: httpx.AsyncClient) -> None:
    echo = text_item("m_echo", "our own", sender=PAGE, is_echo=True)
    postback = {
        "sender": {"id": "psid-1"},
        "recipient": {"id": PAGE},
        "timestamp": 1700000000001,
        "postback": {"mid": "m_pb", "title": "Talk to support", "payload": "SUPPORT"},
    }
    await post(client, webhook("page", PAGE, echo, postback))
    ig = webhook(
        "instagram",
        IG,
        {
            "sender": {"id": "igsid-9"},
            "recipient": {"id": IG},
            "timestamp": 1,
            "message": {"mid": "ig_1", "text": "hi"},
        },
    )
    await post(client, ig)
    async with rt.db.read() as session:
        rows = (
            await session.execute(
                select(Message.inbox_id, Message.text, Message.extra).order_by(Message.id)
            )
        ).all()
    assert [(r[0], r[1]) for r in rows] == [("fb", "Talk to support"), ("ig", "hi")]
    assert rows[0][2]["postback"] == "SUPPORT"


async def test_media_only_from_allowed_hosts(
    rt: Runtime, client: httpx.AsyncClient, graph: MetaStandIn
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x02" * 40
    graph.media["/cdn/photo.png"] = (png, "image/png")
    item = text_item(
        "m_1",
        "",
        attachments=[
            {"type": "image", "payload": {"url": f"{graph.url}/cdn/photo.png"}},
            {"type": "image", "payload": {"url": "http://169.254.169.254/latest/meta-data"}},
        ],
    )
    await post(client, webhook("page", PAGE, item))
    async with rt.db.read() as session:
        rows = (await session.scalars(select(Attachment))).all()
        message = await session.scalar(select(Message))
    assert [(a.filename, a.content_type) for a in rows] == [("photo.png", "image/png")]
    assert message is not None
    assert "169.254.169.254" in message.extra["download_failed"][0]


async def test_reply_through_send_api(
    rt: Runtime, client: httpx.AsyncClient, graph: MetaStandIn
) -> None:
    await post(client, webhook("page", PAGE, text_item("m_1", "hello")))
    org = await make_org(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        conv_id = (await session.scalars(select(Message.conversation_id))).one()
        assert agent is not None
        first, _ = await reply(
            session, conversation_id=conv_id, agent=agent, text="Merhaba!", clock=rt.clock
        )
        second, _ = await reply(
            session, conversation_id=conv_id, agent=agent, text="Again", clock=rt.clock
        )
        ids = (first.id, second.id)
    graph.fail_next.append(
        (
            400,
            {
                "message": "(#551) This person isn't available right now.",
                "type": "OAuthException",
                "code": 551,
            },
        )
    )
    await settle(rt)
    sent = graph.sent()
    assert {s["message"]["text"] for s in sent} == {"Merhaba!", "Again"}
    assert all(s["recipient"] == {"id": "psid-1"} for s in sent)
    async with rt.db.read() as session:
        statuses = sorted(
            [(await session.get(Message, i)).delivery_status for i in ids]  # type: ignore[union-attr]
        )
    assert statuses == ["failed", "sent"]


async def test_body_at_the_limit_is_taken_and_over_it_is_413(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    from channels.webhooks import WEBHOOK_MAX_BODY
    from tests.helpers import padded_json

    def signed(body: bytes) -> dict[str, str]:
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": sig, "Content-Type": "application/json"}

    over = padded_json(
        lambda pad: webhook("page", PAGE, text_item("m.big", "hi", pad=pad)), WEBHOOK_MAX_BODY + 1
    )
    refused = await client.post("/webhooks/meta", content=over, headers=signed(over))
    assert refused.status_code == 413
    assert f"at most {WEBHOOK_MAX_BODY} bytes" in refused.json()["detail"]
    assert await count(rt, Message) == 0
    fits = padded_json(
        lambda pad: webhook("page", PAGE, text_item("m.fits", "hi", pad=pad)), WEBHOOK_MAX_BODY
    )
    assert (
        await client.post("/webhooks/meta", content=fits, headers=signed(fits))
    ).status_code == 200
    assert await count(rt, Message) == 1


def receipt(kind: str, body: dict[str, Any], sender: str = "psid-1") -> dict[str, Any]:
    return {"sender": {"id": sender}, "recipient": {"id": PAGE}, "timestamp": 1, kind: body}


def ms(when: Any) -> int:
    return int(when.timestamp() * 1000)


async def test_delivery_and_read_receipts_move_reply_status_forward(
    rt: Runtime, client: httpx.AsyncClient, graph: MetaStandIn, clock: Any
) -> None:
    from contact_center.models import DomainEvent

    await post(client, webhook("page", PAGE, text_item("m_1", "hello")))
    org = await make_org(rt)
    ids = []
    async with rt.db.read() as session:
        conv_id = (await session.scalars(select(Message.conversation_id))).one()
    for text in ("Merhaba!", "Again"):
        async with rt.db.write() as session:
            agent = await session.get(Agent, org.agent.id)
            assert agent is not None
            message, _ = await reply(
                session, conversation_id=conv_id, agent=agent, text=text, clock=rt.clock
            )
            ids.append(message.id)
        await settle(rt)
        clock.advance(60)
    async with rt.db.read() as session:
        rows = [await session.get(Message, i) for i in ids]
    assert all(r is not None and r.delivery_status == "sent" for r in rows)
    first, second = rows
    assert first is not None and second is not None and first.sent_at and second.sent_at
    first_sent, second_sent = first.sent_at, second.sent_at

    async def statuses() -> list[str]:
        async with rt.db.read() as session:
            return [(await session.get(Message, i)).delivery_status for i in ids]  # type: ignore[union-attr]

    # Delivery naming the first reply's mid.
    delivered = receipt("delivery", {"mids": [first.provider_message_id], "watermark": 1})
    assert (await post(client, webhook("page", PAGE, delivered))).status_code == 200
    assert await statuses() == ["delivered", "sent"]
    # A read watermark between the two replies: the first is read, the second is not.
    read = receipt("read", {"watermark": ms(first_sent)})
    assert (await post(client, webhook("page", PAGE, read))).status_code == 200
    assert await statuses() == ["read", "sent"]
    # A forged receipt changes nothing.
    late = receipt("delivery", {"watermark": ms(second_sent)})
    assert (await post(client, webhook("page", PAGE, late), secret="wrong")).status_code == 403
    assert await statuses() == ["read", "sent"]
    # A delivery watermark covering both: the second is delivered, the first stays read.
    assert (await post(client, webhook("page", PAGE, late))).status_code == 200
    assert await statuses() == ["read", "delivered"]
    # Replays, and another person's receipt, change nothing and record no event.
    async with rt.db.read() as session:
        events_before = await session.scalar(select(func.count()).select_from(DomainEvent))
    for payload in (delivered, read, late, receipt("read", {"watermark": ms(second_sent)}, "x")):
        assert (await post(client, webhook("page", PAGE, payload))).status_code == 200
    assert await statuses() == ["read", "delivered"]
    async with rt.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(DomainEvent)) == events_before
    assert await count(rt, Message) == 3  # a receipt is never a message


async def test_instagram_read_receipt_names_the_message(
    rt: Runtime, client: httpx.AsyncClient, graph: MetaStandIn, clock: Any
) -> None:
    item = {**text_item("ig_1", "selam", sender="igsid-1"), "recipient": {"id": IG}}
    await post(client, webhook("instagram", IG, item))
    org = await make_org(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        conv_id = (await session.scalars(select(Message.conversation_id))).one()
        assert agent is not None
        message, _ = await reply(
            session, conversation_id=conv_id, agent=agent, text="Merhaba", clock=rt.clock
        )
        message_id = message.id
    await settle(rt)
    async with rt.db.read() as session:
        sent = await session.get(Message, message_id)
    assert sent is not None and sent.delivery_status == "sent"
    seen = {**receipt("read", {"mid": sent.provider_message_id}, "igsid-1")}
    seen["recipient"] = {"id": IG}
    assert (await post(client, webhook("instagram", IG, seen))).status_code == 200
    async with rt.db.read() as session:
        after = await session.get(Message, message_id)
    assert after is not None and after.delivery_status == "read"
