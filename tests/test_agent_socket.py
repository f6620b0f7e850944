"""``/ws/agent`` over a real websocket: sign-in and Origin, presence, offers accepted and
declined, replies with client ids, resume with nothing lost or repeated, authorization of
every frame, bad frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from contact_center.models import Conversation, CustomerIdentity, DomainEvent, Message
from contact_center.runtime import Runtime
from routing.models import AgentStatus
from tests.helpers import Org, ingest, make_inbox, make_org, relay, sms
from tests.live import LiveApp, live_app
from tests.routing_helpers import arrive, assignee, engine, make_queue
from tests.wshelpers import drain, recv, send


@pytest.fixture
async def org(rt: Runtime) -> Org:
    org = await make_org(rt)
    await make_inbox(rt)
    await make_queue(rt, is_default=True, offer_timeout_seconds=30)
    return org


@pytest.fixture
async def live(rt: Runtime, org: Org) -> AsyncIterator[LiveApp]:
    async with live_app(rt) as app:
        yield app


def ws_url(live: LiveApp, token: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": token, **params}.items())
    return live.url.replace("http://", "ws://") + f"/ws/agent?{query}"


async def settle(rt: Runtime) -> None:
    """What the scheduler would do next: publish events, route, publish the offers."""
    await relay(rt)
    await engine(rt).run_pass()
    await relay(rt)


async def test_sign_in_and_origin_are_required(rt: Runtime, org: Org, live: LiveApp) -> None:
    base = live.url.replace("http://", "ws://") + "/ws/agent"
    for url, headers, code in (
        (base, {}, 4401),
        (base + "?token=nope", {}, 4401),
        (ws_url(live, org.agent.token), {"Origin": "https://evil.example"}, 4403),
    ):
        async with connect(url, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    async with connect(
        ws_url(live, org.agent.token), additional_headers={"Origin": "http://testserver.local"}
    ) as ws:
        hello = await recv(ws, "hello")
    assert hello["data"]["agent"]["id"] == org.agent.id


async def test_offer_accept_and_reply_over_the_socket(rt: Runtime, org: Org, live: LiveApp) -> None:
    async with connect(ws_url(live, org.agent.token)) as ws:
        await recv(ws, "hello")
        await send(ws, "presence.set", state="available")
        ack = await recv(ws, "ack")
        assert ack["data"]["for"] == "presence.set" and ack["data"]["state"] == "available"
        conv = await arrive(rt, "I was charged twice")
        await settle(rt)
        offer = await recv(ws, "offer")
        data = offer["data"]
        assert data["conversation_id"] == conv
        assert data["channel"] == "sms"
        assert data["preview"] == "I was charged twice"
        assert data["customer"]["id"] and data["expires_at"]
        await send(ws, "offer.accept", offer_id=data["offer_id"])
        accepted = await recv(ws, "ack")
        assert accepted["data"] == {
            "for": "offer.accept",
            "offer_id": data["offer_id"],
            "status": "accepted",
        }
        await relay(rt)
        assigned = await recv(ws, "conversation.assigned")
        assert assigned["data"]["assignee_id"] == org.agent.id
        for _ in range(2):  # a resend (same client id) is the same message
            await send(ws, "message.send", conversation_id=conv, client_id="r1", text="On it!")
        first, second = await recv(ws, "ack"), await recv(ws, "ack")
    assert first["data"]["duplicate"] is False and second["data"]["duplicate"] is True
    assert first["data"]["message_id"] == second["data"]["message_id"]
    assert await assignee(rt, conv) == org.agent.id
    async with rt.db.read() as session:
        replies = await session.scalar(
            select(func.count()).select_from(Message).where(Message.direction == "out")
        )
    assert replies == 1


async def test_hello_carries_the_offers_waiting_for_the_agent(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    async with connect(ws_url(live, org.agent.token)) as ws:
        first_hello = await recv(ws, "hello")
        assert first_hello["data"]["pending_offers"] == []
        await send(ws, "presence.set", state="available")
        await recv(ws, "ack")
        conv = await arrive(rt, "Still waiting on my refund")
        await settle(rt)
        offer = (await recv(ws, "offer"))["data"]
    # The console reloads: the new connection's hello shows the offer as the frame did.
    async with connect(ws_url(live, org.agent.token)) as ws:
        hello = (await recv(ws, "hello"))["data"]
    assert hello["pending_offer_ids"] == [offer["offer_id"]]
    [waiting] = hello["pending_offers"]
    assert waiting == offer
    assert waiting["conversation_id"] == conv and waiting["preview"] == "Still waiting on my refund"


async def test_a_note_that_names_an_agent_reaches_only_them(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    conv = await arrive(rt, "Please call me back")
    async with (
        connect(ws_url(live, org.supervisor.token)) as writer,
        connect(ws_url(live, org.other_agent.token)) as named,
        connect(ws_url(live, org.agent.token)) as bystander,
    ):
        for ws in (writer, named, bystander):
            await recv(ws, "hello")
        text = "@other can you take this? (not @nobody, nor mail@other.example)"
        await send(
            writer, "message.send", conversation_id=conv, client_id="n1", text=text, private=True
        )
        assert (await recv(writer, "ack"))["data"]["duplicate"] is False
        await settle(rt)
        mention = await recv(named, "mention.created")
        assert mention["conversation_id"] == conv
        assert mention["data"]["by_agent_id"] == org.supervisor.id
        assert mention["data"]["preview"] == text
        frames = await drain(bystander)
        assert not [f for f in frames if f["type"] == "mention.created"]
    async with rt.db.read() as session:
        note = await session.scalar(select(Message).where(Message.client_id == "n1"))
    assert note is not None and note.extra["mentions"] == [org.other_agent.id]


async def test_decline_goes_to_the_next_agent(rt: Runtime, org: Org, live: LiveApp) -> None:
    async with (
        connect(ws_url(live, org.agent.token)) as first,
        connect(ws_url(live, org.other_agent.token)) as second,
    ):
        for ws in (first, second):
            await recv(ws, "hello")
            await send(ws, "presence.set", state="available")
            await recv(ws, "ack")
        conv = await arrive(rt)
        await settle(rt)
        async with rt.db.read() as session:
            from routing.models import Offer

            offer = await session.scalar(select(Offer).where(Offer.conversation_id == conv))
        assert offer is not None
        holder, other = (first, second) if offer.agent_id == org.agent.id else (second, first)
        await recv(holder, "offer")
        await send(holder, "offer.decline", offer_id=offer.id)
        assert (await recv(holder, "ack"))["data"]["status"] == "declined"
        await settle(rt)
        again = await recv(other, "offer")
    assert again["data"]["conversation_id"] == conv
    assert again["data"]["agent_id"] != offer.agent_id


async def test_reconnect_resumes_with_nothing_lost_or_repeated(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    async with connect(ws_url(live, org.agent.token)) as ws:
        await recv(ws, "hello")
        await send(ws, "presence.set", state="available")
        await recv(ws, "ack")
        conv = await arrive(rt, "first")
        await settle(rt)
        offer = await recv(ws, "offer")
        await send(ws, "offer.accept", offer_id=offer["data"]["offer_id"])
        await recv(ws, "ack")
        await relay(rt)
        last = (await recv(ws, "conversation.assigned"))["id"]
    # Offline for a moment: the customer writes twice while the socket is gone.
    async with rt.db.read() as session:
        conversation = await session.get(Conversation, conv)
        assert conversation is not None
        phone = await session.scalar(
            select(CustomerIdentity.address).where(
                CustomerIdentity.customer_id == conversation.customer_id
            )
        )
    assert phone is not None
    await ingest(rt, sms("are you there?", sid="SMgone1", phone=phone))
    await ingest(rt, sms("hello??", sid="SMgone2", phone=phone))
    await relay(rt)
    async with connect(ws_url(live, org.agent.token, last_event_id=last)) as ws:
        await recv(ws, "hello")
        frames = await drain(ws)
    ids = [f["id"] for f in frames if "id" in f]
    assert ids == sorted(set(ids)) and all(i > last for i in ids)
    texts = [f["data"]["text"] for f in frames if f["type"] == "message.created"]
    assert texts[-2:] == ["are you there?", "hello??"]
    assert texts.count("are you there?") == 1


async def test_a_resume_frame_replays_the_events_after_its_mark_once(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    """Connected without ?last_event_id, the client sends `resume`: every event after N, in
    order, before new ones; a second resume repeats nothing."""
    async with rt.db.read() as session:
        mark = int(await session.scalar(select(func.max(DomainEvent.position))) or 0)
    phone = "+14155550123"
    await arrive(rt, "first", phone=phone)
    await arrive(rt, "second", phone=phone)
    await relay(rt)
    async with connect(ws_url(live, org.agent.token)) as ws:
        hello = await recv(ws, "hello")
        head = hello["data"]["last_event_id"]
        assert head > mark
        assert [f for f in await drain(ws, 0.5) if "id" in f] == []  # starts at the head
        await send(ws, "resume", last_event_id=mark)
        frames = [f for f in await drain(ws) if "id" in f]
        ids = [f["id"] for f in frames]
        assert ids == sorted(set(ids)) and all(mark < i <= head for i in ids)
        texts = [f["data"]["text"] for f in frames if f["type"] == "message.created"]
        assert texts == ["first", "second"]
        await send(ws, "resume", last_event_id=mark)
        assert [f for f in await drain(ws, 0.5) if "id" in f] == []  # nothing twice
        await arrive(rt, "third", phone=phone)
        await relay(rt)
        live_frames = [f for f in await drain(ws) if f["type"] == "message.created"]
    assert [f["data"]["text"] for f in live_frames] == ["third"]


async def test_every_frame_is_authorized(rt: Runtime, org: Org, live: LiveApp) -> None:
    # A conversation of the Technical team's inbox: the billing agent may not see it.
    await make_inbox(rt, "tech-sms", address="+15005550099", team_id=org.technical_team_id)
    hidden = await arrive(rt, "secret tech issue", inbox_id="tech-sms")
    async with connect(ws_url(live, org.agent.token)) as ws:
        await recv(ws, "hello")
        await send(ws, "message.send", conversation_id=hidden, client_id="x", text="peek")
        error = await recv(ws, "error")
        assert error["data"]["code"] == "forbidden"
        await send(ws, "typing", conversation_id=hidden)
        assert (await recv(ws, "error"))["data"]["code"] == "forbidden"
        # The other agent's offer cannot be answered by this agent.
        async with rt.db.write() as session:
            from routing.engine import set_presence
            from routing.models import Presence

            await set_presence(session, org.other_agent.id, Presence.available, clock=rt.clock)
        await engine(rt).run_pass()
        async with rt.db.read() as session:
            from routing.models import Offer

            offer = await session.scalar(select(Offer).where(Offer.conversation_id == hidden))
        assert offer is not None and offer.agent_id == org.other_agent.id
        await send(ws, "offer.accept", offer_id=offer.id)
        assert (await recv(ws, "error"))["data"]["code"] == "offer_unavailable"
        await relay(rt)
        frames = await drain(ws)
    assert all("secret tech issue" not in json.dumps(f) for f in frames)
    assert await assignee(rt, hidden) is None


async def test_bad_frames_get_errors_and_the_socket_lives_on(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    async with connect(ws_url(live, org.agent.token)) as ws:
        await recv(ws, "hello")
        for raw, code in (
            ("not json", "bad_frame"),
            ("[1, 2]", "bad_frame"),
            (json.dumps({"type": "launch.missiles"}), "unknown_type"),
            (json.dumps({"type": "offer.accept", "data": {"offer_id": "1; drop"}}), "bad_frame"),
            (json.dumps({"type": "presence.set", "data": {"state": "asleep"}}), "bad_frame"),
            ("x" * (70 * 1024), "too_large"),
        ):
            await ws.send(raw)
            error = (await recv(ws, "error"))["data"]
            assert error["code"] == code
            assert error["message"]  # every error says what was wrong
        await send(ws, "ping")
        await recv(ws, "pong")
    async with rt.db.read() as session:
        status = await session.get(AgentStatus, org.agent.id)
    assert status is not None and status.last_seen_at is not None


async def test_sla_breaches_reach_the_assignee_and_supervisors_only(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    from datetime import timedelta

    from routing.models import SlaPolicy
    from routing.sla import service_of

    now = rt.clock.now()
    async with rt.db.write() as session:
        session.add(
            SlaPolicy(
                name="Fast",
                targets={"normal": {"first_response": {"minutes": 5, "business": False}}},
                conditions={},
                escalations=[],
                created_at=now,
                updated_at=now,
            )
        )
    conv = await arrive(rt, "Nobody answers")
    await engine(rt).assign(conv, org.agent.id, by_agent_id=org.supervisor.id)
    await relay(rt)
    await service_of(rt).run_once()
    async with (
        connect(ws_url(live, org.agent.token)) as assignee_ws,
        connect(ws_url(live, org.supervisor.token)) as supervisor_ws,
        connect(ws_url(live, org.other_agent.token)) as other_ws,
    ):
        for ws in (assignee_ws, supervisor_ws, other_ws):
            await recv(ws, "hello")
        rt.clock.advance(seconds=timedelta(minutes=6).total_seconds())  # type: ignore[attr-defined]
        await service_of(rt).run_once()
        await relay(rt)
        for ws in (assignee_ws, supervisor_ws):
            breach = await recv(ws, "sla.breached")
            assert breach["conversation_id"] == conv
            assert breach["data"]["metric"] == "first_response"
            assert breach["data"]["assignee_id"] == org.agent.id
        frames = await drain(other_ws)
        assert not [f for f in frames if f["type"].startswith("sla.")]


async def test_a_flood_of_frames_is_rate_limited_and_the_socket_lives_on(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    """Bursts of 40 frames, 10 a second sustained: a client that sends 120 frames at once
    gets `rate_limited` errors (with a message) for the excess, and the connection stays."""
    async with connect(ws_url(live, org.agent.token)) as ws:
        await recv(ws, "hello")
        for _ in range(120):
            await ws.send(json.dumps({"type": "no.such.frame"}))
        errors = [(await recv(ws, "error"))["data"] for _ in range(120)]
        limited = [e for e in errors if e["code"] == "rate_limited"]
        assert limited and all("too many frames" in e["message"] for e in limited)
        assert [e["code"] for e in errors[:40]] == ["unknown_type"] * 40  # the burst
        await send(ws, "ping")  # still served: a pong, or (bucket still empty) an error
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["type"] == "pong" or answer["data"]["code"] == "rate_limited"


@pytest.mark.parametrize("requeue", [True, False])
async def test_a_closed_socket_past_the_grace_period_sets_the_agent_offline(
    rt: Runtime, org: Org, live: LiveApp, requeue: bool
) -> None:
    """The agent's websocket goes away and stays away past CC_AGENT_GRACE_SECONDS: the engine
    sets them offline ("disconnected") and re-queues or keeps their chats as the queue says."""
    from sqlalchemy import update

    from routing.engine import set_presence
    from routing.models import Presence, Queue

    async with rt.db.write() as session:
        await session.execute(update(Queue).values(requeue_on_disconnect=requeue))
    async with connect(ws_url(live, org.agent.token)) as ws:
        await recv(ws, "hello")
        await send(ws, "presence.set", state="available")
        await recv(ws, "ack")
        conv = await arrive(rt, "are you there?")
        await settle(rt)
        offer = await recv(ws, "offer")
        await send(ws, "offer.accept", offer_id=offer["data"]["offer_id"])
        assert (await recv(ws, "ack"))["data"]["status"] == "accepted"
    assert await assignee(rt, conv) == org.agent.id
    async with rt.db.write() as session:  # a colleague who can take re-queued chats
        await set_presence(session, org.supervisor.id, Presence.available, clock=rt.clock)
    rt.clock.advance(rt.settings.agent_grace_seconds - 1)  # type: ignore[attr-defined]
    await engine(rt).run_pass()
    async with rt.db.read() as session:
        status = await session.get(AgentStatus, org.agent.id)
    assert status is not None and status.state == "available"  # still within the grace
    rt.clock.advance(2)  # type: ignore[attr-defined]
    await engine(rt).run_pass()
    async with rt.db.read() as session:
        status = await session.get(AgentStatus, org.agent.id)
    assert status is not None and (status.state, status.reason) == ("offline", "disconnected")
    if requeue:
        assert await assignee(rt, conv) is None
        await engine(rt).run_pass()
        from tests.routing_helpers import offer_for

        again = await offer_for(rt, conv)
        assert again is not None and again.agent_id == org.supervisor.id
    else:
        assert await assignee(rt, conv) == org.agent.id


async def test_reading_in_one_tab_clears_the_count_in_the_agents_other_tabs(
    rt: Runtime, org: Org, live: LiveApp
) -> None:
    """POST .../read moves the agent's marker: every socket of that agent gets
    `conversation.read` with the new count; nobody else does; a read that moves nothing sends
    nothing."""
    conversation_id = await arrive(rt, "hello?")
    await relay(rt)
    bearer = {"Authorization": f"Bearer {org.agent.token}"}
    async with (
        connect(ws_url(live, org.agent.token)) as tab1,
        connect(ws_url(live, org.agent.token)) as tab2,
        connect(ws_url(live, org.supervisor.token)) as boss,
    ):
        for ws in (tab1, tab2, boss):
            await recv(ws, "hello")
        read = await live.client.post(
            f"/api/v1/conversations/{conversation_id}/read", headers=bearer
        )
        assert read.status_code == 200, read.text
        await relay(rt)
        for ws in (tab1, tab2):
            frame = await recv(ws, "conversation.read")
            assert frame["conversation_id"] == conversation_id
            assert frame["data"]["unread_count"] == 0
            assert frame["data"]["last_read_message_id"] == read.json()["last_read_message_id"]
        assert [f for f in await drain(boss, 0.5) if f["type"] == "conversation.read"] == []
        again = await live.client.post(
            f"/api/v1/conversations/{conversation_id}/read", headers=bearer
        )
        assert again.status_code == 200
        await relay(rt)
        assert [f for f in await drain(tab1, 0.5) if f["type"] == "conversation.read"] == []
