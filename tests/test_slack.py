"""Slack: signed Events API requests, URL verification, retries, own messages ignored,
threads, and replies with the slack-sdk WebClient into the same thread."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import func, select

from contact_center.clock import ManualClock
from contact_center.models import Agent, Conversation, CustomerIdentity, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.helpers import make_inbox, make_org, settle
from tests.live import live_app
from tests.standins.slack import SlackStandIn

SECRET = "slack-signing-secret"
TOKEN = "xoxb-test"


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn(TOKEN) as standin:
        yield standin


@pytest.fixture
async def client(rt: Runtime, slack: SlackStandIn) -> AsyncIterator[httpx.AsyncClient]:
    await make_inbox(
        rt,
        "slack",
        "slack",
        "T1",
        api_base_url=slack.api_url,
        credentials={"signing_secret": SECRET, "bot_token": TOKEN, "bot_user_id": "UBOT"},
    )
    # The real app served over loopback: the provider's request travels over HTTP.
    async with live_app(rt) as live:
        yield live.client


def signed(
    payload: Any, clock: ManualClock, secret: str = SECRET, age: float = 0
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    timestamp = str(int(clock.now().timestamp() - age))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return body, {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/json",
    }


def event(event_id: str, text: str = "Hi, our invoices are wrong", **fields: Any) -> dict[str, Any]:
    return {
        "type": "event_callback",
        "team_id": "T1",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": {
            "type": "message",
            "user": "U123",
            "channel": "C77",
            "ts": "1700000000.000100",
            "text": text,
            "channel_type": "channel",
            **fields,
        },
    }


async def send(
    client: httpx.AsyncClient, payload: Any, clock: ManualClock, **kw: Any
) -> httpx.Response:
    body, headers = signed(payload, clock, **kw)
    return await client.post("/webhooks/slack/events", content=body, headers=headers)


async def count(rt: Runtime, model: type) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_url_verification(client: httpx.AsyncClient, clock: ManualClock) -> None:
    response = await send(
        client, {"type": "url_verification", "challenge": "abc123", "token": "x"}, clock
    )
    assert response.status_code == 200
    assert response.json() == {"challenge": "abc123"}


async def test_bad_and_stale_signatures_are_rejected(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    assert (await send(client, event("Ev1"), clock, secret="wrong")).status_code == 403
    assert (await send(client, event("Ev1"), clock, age=301)).status_code == 403
    unsigned = await client.post("/webhooks/slack/events", json=event("Ev1"))
    assert unsigned.status_code == 403
    assert await count(rt, Message) == 0


async def test_message_is_stored_and_retries_are_harmless(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    assert (await send(client, event("Ev1"), clock)).status_code == 200
    retry_body, headers = signed(event("Ev1"), clock)
    again = await client.post(
        "/webhooks/slack/events", content=retry_body, headers={**headers, "X-Slack-Retry-Num": "1"}
    )
    assert again.status_code == 200
    assert await count(rt, Message) == 1
    async with rt.db.read() as session:
        identity = await session.scalar(select(CustomerIdentity))
        conv = await session.scalar(select(Conversation))
    assert identity is not None
    assert (identity.kind, identity.address) == ("slack", "T1:U123")
    assert conv is not None
    assert conv.thread_key == "C77:1700000000.000100"


async def test_own_and_system_messages_are_ignored(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    for i, fields in enumerate(
        [
            {"bot_id": "B1"},
            {"user": "UBOT"},
            {"subtype": "channel_join"},
            {"subtype": "message_changed"},
        ]
    ):
        response = await send(client, event(f"Ev{i}", **fields), clock)
        assert response.status_code == 200
    assert await count(rt, Message) == 0


async def test_malformed_event_is_400(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    for payload in ([1], {"type": "event_callback", "team_id": "T1"}):
        assert (await send(client, payload, clock)).status_code == 400
    assert await count(rt, Message) == 0


async def test_thread_replies_join_and_reply_goes_into_the_thread(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock, slack: SlackStandIn
) -> None:
    await send(client, event("Ev1"), clock)
    await send(
        client,
        event("Ev2", "more detail", ts="1700000050.000200", thread_ts="1700000000.000100"),
        clock,
    )
    await send(client, event("Ev3", "new topic", ts="1700000099.000300"), clock)
    async with rt.db.read() as session:
        convs = dict((await session.execute(select(Message.text, Message.conversation_id))).all())
    assert convs["more detail"] == convs["Hi, our invoices are wrong"]
    assert convs["new topic"] != convs["more detail"]

    org = await make_org(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        assert agent is not None
        message, _ = await reply(
            session,
            conversation_id=convs["more detail"],
            agent=agent,
            text="Looking into it",
            clock=rt.clock,
        )
        message_id = message.id
    await settle(rt)
    posted = slack.posted()
    assert len(posted) == 1
    assert posted[0]["channel"] == "C77"
    assert posted[0]["thread_ts"] == "1700000000.000100"
    assert posted[0]["text"] == "Looking into it"
    async with rt.db.read() as session:
        stored = await session.get(Message, message_id)
    assert stored is not None
    assert stored.delivery_status == "sent"
    assert stored.provider_message_id is not None
    assert stored.provider_message_id.startswith("C77:")


async def test_direct_message_continues_and_reply_opens_the_dm(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock, slack: SlackStandIn
) -> None:
    await send(client, event("Ev1", "dm one", channel="D9", channel_type="im"), clock)
    await send(
        client,
        event("Ev2", "dm two", channel="D9", channel_type="im", ts="1700000001.000100"),
        clock,
    )
    assert await count(rt, Conversation) == 1
    org = await make_org(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        conv_id = (await session.scalars(select(Conversation.id))).one()
        assert agent is not None
        await reply(session, conversation_id=conv_id, agent=agent, text="hello", clock=rt.clock)
    slack.fail_next.append("ratelimited")
    await settle(rt)
    async with rt.db.read() as session:
        stored = await session.scalar(select(Message).where(Message.direction == "out"))
    assert stored is not None
    # Rate limited: kept queued for a retry, with the reason, not failed.
    assert stored.delivery_status == "queued"
    assert "ratelimited" in (stored.status_reason or "")
    assert slack.posted()[0]["channel"] == "U123"


async def test_body_at_the_limit_is_taken_and_over_it_is_413(
    rt: Runtime, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    from channels.webhooks import WEBHOOK_MAX_BODY
    from tests.helpers import padded_json

    url = "/webhooks/slack/events"
    over = padded_json(lambda pad: event("EvBig", pad=pad), WEBHOOK_MAX_BODY + 1)
    _, headers = signed(json.loads(over), clock)
    refused = await client.post(url, content=over, headers=headers)
    assert refused.status_code == 413
    assert f"at most {WEBHOOK_MAX_BODY} bytes" in refused.json()["detail"]
    assert await count(rt, Message) == 0
    fits = padded_json(lambda pad: event("EvFits", pad=pad), WEBHOOK_MAX_BODY)
    body, headers = signed(json.loads(fits), clock)
    assert body == fits
    assert (await client.post(url, content=body, headers=headers)).status_code == 200
    assert await count(rt, Message) == 1
