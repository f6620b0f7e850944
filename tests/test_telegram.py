"""Telegram: webhook with the secret-token header, update parsing, dedupe on update_id,
photos/documents fetched through the Bot API, replies sent with telegram.Bot."""

from __future__ import annotations

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
from tests.standins.telegram import TelegramStandIn

TOKEN = "123456:test-token"
SECRET = "tg-secret"


@pytest.fixture
def telegram() -> Iterator[TelegramStandIn]:
    with TelegramStandIn(TOKEN) as standin:
        yield standin


@pytest.fixture
async def client(rt: Runtime, telegram: TelegramStandIn) -> AsyncIterator[httpx.AsyncClient]:
    await make_inbox(
        rt,
        "telegram",
        "telegram",
        "demo_bot",
        api_base_url=telegram.url,
        credentials={"bot_token": TOKEN, "secret_token": SECRET},
    )
    # The real app served over loopback: the provider's request travels over HTTP.
    async with live_app(rt) as live:
        yield live.client


def update(
    update_id: int, text: str = "Merhaba", *, edited: bool = False, **message: Any
) -> dict[str, Any]:
    body = {
        "message_id": 10 + update_id,
        "date": 1_700_000_000,
        "chat": {"id": 4242, "type": "private", "first_name": "Deniz"},
        "from": {
            "id": 4242,
            "is_bot": False,
            "first_name": "Deniz",
            "last_name": "Aydın",
            "language_code": "tr",
        },
        **({"text": text} if text else {}),
        **message,
    }
    return {"update_id": update_id, ("edited_message" if edited else "message"): body}


async def post(client: httpx.AsyncClient, payload: Any, secret: str = SECRET) -> httpx.Response:
    return await client.post(
        "/webhooks/telegram/telegram",
        json=payload,
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_text_message_is_stored_once(rt: Runtime, client: httpx.AsyncClient) -> None:
    assert (await post(client, update(1))).status_code == 200
    assert (await post(client, update(1))).status_code == 200  # Telegram redelivered
    assert await count(rt, Message) == 1
    async with rt.db.read() as session:
        identity = await session.scalar(select(CustomerIdentity))
        message = await session.scalar(select(Message))
    assert identity is not None
    assert (identity.kind, identity.address, identity.display_name) == (
        "telegram",
        "4242",
        "Deniz Aydın",
    )
    assert message is not None
    assert message.text == "Merhaba"


async def test_wrong_or_missing_secret_is_403(rt: Runtime, client: httpx.AsyncClient) -> None:
    assert (await post(client, update(1), secret="nope")).status_code == 403
    response = await client.post("/webhooks/telegram/telegram", json=update(2))
    assert response.status_code == 403
    assert await count(rt, Message) == 0


async def test_malformed_update_is_400(rt: Runtime, client: httpx.AsyncClient) -> None:
    for payload in ({"hello": 1}, [1, 2], {"update_id": "x"}):
        assert (await post(client, payload)).status_code == 400
    bad = await client.post(
        "/webhooks/telegram/telegram",
        content=b"{not json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )
    assert bad.status_code == 400
    assert (await client.post("/webhooks/telegram/nope", json=update(3))).status_code == 404
    assert await count(rt, Message) == 0


async def test_edited_message_and_non_messages(rt: Runtime, client: httpx.AsyncClient) -> None:
    await post(client, update(1, "helo"))  # Telegram message 11
    await post(client, update(2, "hello", edited=True, message_id=11))
    await post(client, update(4, "hello!", edited=True, message_id=11))  # edited again
    await post(client, update(5, "yeni"))  # message 15, never edited
    ignored = await post(client, {"update_id": 3, "my_chat_member": {}})
    assert ignored.json()["ignored"] is True
    async with rt.db.read() as session:
        rows = (await session.scalars(select(Message).order_by(Message.id))).all()
    assert [m.text for m in rows] == ["helo", "(edited) hello", "(edited) hello!", "yeni"]
    assert len({m.conversation_id for m in rows}) == 1
    # Each edit names the original message, so the timeline can link them.
    assert [m.extra.get("edited_of") for m in rows] == [None, rows[0].id, rows[0].id, None]


async def test_photo_and_document_are_downloaded(
    rt: Runtime, client: httpx.AsyncClient, telegram: TelegramStandIn
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 32
    telegram.files["documents/ph1"] = png
    telegram.files["documents/doc1"] = b"%PDF-1.4 hello"
    payload = update(
        1,
        "",
        caption="see these",
        photo=[
            {"file_id": "ph0", "file_unique_id": "u0", "width": 90, "height": 90},
            {"file_id": "ph1", "file_unique_id": "u1", "width": 800, "height": 800},
        ],
        document={
            "file_id": "doc1",
            "file_unique_id": "ud",
            "file_name": "fatura.pdf",
            "mime_type": "application/pdf",
        },
    )
    assert (await post(client, payload)).status_code == 200
    async with rt.db.read() as session:
        message = await session.scalar(select(Message))
        rows = (await session.scalars(select(Attachment).order_by(Attachment.id))).all()
    assert message is not None
    assert message.text == "see these"
    assert [(a.filename, a.content_type) for a in rows] == [
        ("photo.jpg", "image/png"),
        ("fatura.pdf", "application/pdf"),
    ]
    assert rt.store.path(rows[0].storage_key).read_bytes() == png


async def test_reply_is_sent_with_the_bot(
    rt: Runtime, client: httpx.AsyncClient, telegram: TelegramStandIn
) -> None:
    await post(client, update(1))
    org = await make_org(rt)
    async with rt.db.write() as session:
        conversation_id = (await session.scalars(select(Message.conversation_id))).one()
        agent = await session.get(Agent, org.agent.id)
        assert agent is not None
        message, _ = await reply(
            session,
            conversation_id=conversation_id,
            agent=agent,
            text="Nasıl yardımcı olabilirim?",
            clock=rt.clock,
        )
        message_id = message.id
    await settle(rt)
    assert telegram.sent() == [{"chat_id": "4242", "text": "Nasıl yardımcı olabilirim?"}]
    async with rt.db.read() as session:
        stored = await session.get(Message, message_id)
    assert stored is not None
    assert stored.delivery_status == "sent"
    assert stored.provider_message_id is not None
    assert stored.provider_message_id.startswith("msg:4242:")


async def test_blocked_bot_fails_without_retry(
    rt: Runtime, client: httpx.AsyncClient, telegram: TelegramStandIn
) -> None:
    await post(client, update(1))
    org = await make_org(rt)
    telegram.fail_next.append((403, "Forbidden: bot was blocked by the user"))
    async with rt.db.write() as session:
        conversation_id = (await session.scalars(select(Message.conversation_id))).one()
        agent = await session.get(Agent, org.agent.id)
        assert agent is not None
        message, _ = await reply(
            session, conversation_id=conversation_id, agent=agent, text="hello", clock=rt.clock
        )
        message_id = message.id
    await settle(rt)
    async with rt.db.read() as session:
        stored = await session.get(Message, message_id)
    assert stored is not None
    assert stored.delivery_status == "failed"
    assert "blocked" in (stored.status_reason or "")


async def test_body_at_the_limit_is_taken_and_over_it_is_413(
    rt: Runtime, client: httpx.AsyncClient
) -> None:
    from channels.webhooks import WEBHOOK_MAX_BODY
    from tests.helpers import padded_json

    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    url = "/webhooks/telegram/telegram"
    over = padded_json(lambda pad: update(1, pad=pad), WEBHOOK_MAX_BODY + 1)
    refused = await client.post(url, content=over, headers=headers)
    assert refused.status_code == 413
    assert f"at most {WEBHOOK_MAX_BODY} bytes" in refused.json()["detail"]
    assert await count(rt, Message) == 0
    fits = padded_json(lambda pad: update(2, pad=pad), WEBHOOK_MAX_BODY)
    assert (await client.post(url, content=fits, headers=headers)).status_code == 200
    assert await count(rt, Message) == 1
