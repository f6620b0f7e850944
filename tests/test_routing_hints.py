"""Arrival hints: a process that ingests a routable conversation tells the routing engine
directly after its commit, so the engine need not wait for the relay to publish the events."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from contact_center.conversations import change_conversation
from contact_center.models import Conversation, ConversationStatus
from contact_center.runtime import ARRIVALS_CHANNEL, Runtime
from contact_center.wiring import build_runtime
from routing.engine import HINT_SECONDS, ArrivalHints, RoutingEngine
from tests.helpers import ingest, make_inbox, sms
from tests.routing_helpers import arrive, make_agent, make_queue, offer_for

WAIT = 10


async def test_ingests_report_the_conversations_they_opened_once(rt: Runtime) -> None:
    await make_inbox(rt)
    first = await ingest(rt, sms("hello", sid="SMh1", phone="+14155550101"))
    assert first.routable
    # A message continuing the open conversation opens nothing; a replay neither.
    more = await ingest(rt, sms("still there?", sid="SMh2", phone="+14155550101"))
    again = await ingest(rt, sms("hello", sid="SMh1", phone="+14155550101"))
    assert not more.routable and not again.routable and again.duplicate
    assert rt.ingestor.take_arrivals() == [first.conversation_id]
    assert rt.ingestor.take_arrivals() == []
    # Waiting on the customer (pending), unassigned: their reply opens it again.
    async with rt.db.write() as session:
        conv = await session.get(Conversation, first.conversation_id)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, status=ConversationStatus.pending
        )
    reply = await ingest(rt, sms("any news?", sid="SMh3", phone="+14155550101"))
    assert reply.routable and reply.conversation_id == first.conversation_id
    assert rt.ingestor.take_arrivals() == [first.conversation_id]


async def test_committed_publishes_the_arrivals_to_the_engine(rt: Runtime) -> None:
    await make_inbox(rt)
    sub = await rt.bus.subscribe(ARRIVALS_CHANNEL)
    try:
        a = await arrive(rt, "one")
        b = await arrive(rt, "two")
        await rt.committed()
        item = await sub.get(timeout=WAIT)
        assert item == (ARRIVALS_CHANNEL, {"conversation_ids": sorted([a, b])})
        await rt.committed()  # nothing new: no hint
        assert await sub.get(timeout=0.3) is None
    finally:
        sub.close()


def test_events_that_repeat_a_recent_hint_wake_nothing_more() -> None:
    hints = ArrivalHints()

    def event(kind: str, conv: int, **data: object) -> tuple[str, dict[str, object]]:
        return ("events", {"type": kind, "conversation_id": conv, "data": data})

    hint = (ARRIVALS_CHANNEL, {"conversation_ids": [7, 8]})
    assert hints.conversations([hint], 100.0) == [7, 8]
    # The same commit's events, relayed later: already handled.
    assert (
        hints.conversations(
            [
                event("conversation.created", 7),
                event("conversation.updated", 8, reason="customer_replied"),
            ],
            100.5,
        )
        == []
    )
    # What the hint did not announce still counts: another conversation, a status change,
    # an unassignment; and a hint too old to trust.
    assert hints.conversations([event("conversation.created", 9)], 101.0) == [9]
    assert hints.conversations(
        [event("conversation.updated", 7, changes={"status": ["pending", "open"]})], 101.0
    ) == [7]
    assert hints.conversations([event("conversation.assigned", 8, assignee_id=None)], 101.0) == [8]
    assert hints.conversations([event("conversation.created", 7)], 100.0 + HINT_SECONDS) == [7]
    # Malformed hints name nothing (they come over the bus, never from outside, but still).
    for payload in ({}, {"conversation_ids": "7"}, {"conversation_ids": [True, "8", None, 1.5]}):
        assert hints.conversations([(ARRIVALS_CHANNEL, payload)], 200.0) == []


async def test_the_engine_routes_a_hinted_arrival_without_the_relay(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the engine runs (no relay, the reconcile sweep far away): the conversation is
    offered on the strength of the hint alone."""
    import routing.engine as engine_module

    monkeypatch.setattr(engine_module, "SWEEP_SECONDS", 3600.0)
    await make_inbox(rt)
    await make_queue(rt, is_default=True)
    agent = await make_agent(rt, "Agent")
    stop = asyncio.Event()
    runner = asyncio.create_task(engine_module.engine_of(rt).run(stop))
    try:
        await asyncio.sleep(0.3)  # its first pass and sweep are done
        conv = await arrive(rt, "hello")
        await rt.committed()
        async with asyncio.timeout(WAIT):
            while (offer := await offer_for(rt, conv)) is None:
                await asyncio.sleep(0.02)
        assert offer.agent_id == agent
        async with rt.db.read() as session:
            unrelayed = await session.scalar(
                text("SELECT count(*) FROM domain_events WHERE position IS NOT NULL")
            )
        assert unrelayed == 0  # nothing was relayed: the hint did it
    finally:
        stop.set()
        await rt.committed()
        await asyncio.wait_for(runner, WAIT)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite has no connections
async def test_the_engine_without_pre_ping_outlives_dropped_connections(rt: Runtime) -> None:
    """The scheduler's runtime has no pre-ping: after the server dropped every connection
    (a restart), one pass fails, the pool starts afresh and routing goes on."""
    await make_inbox(rt)
    await make_queue(rt, is_default=True)
    await make_agent(rt, "Agent", capacity={"chat": 5})
    scheduler_rt = await build_runtime(rt.settings, clock=rt.clock, pre_ping=False)
    stop = asyncio.Event()
    runner = asyncio.create_task(RoutingEngine(scheduler_rt).run(stop))

    async def offered(conv: int) -> None:
        await rt.committed()  # the hint, over Redis to the engine's runtime
        async with asyncio.timeout(WAIT):
            while await offer_for(rt, conv) is None:
                await asyncio.sleep(0.05)

    try:
        await offered(await arrive(rt, "before"))
        async with rt.db.engine.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await offered(await arrive(rt, "after"))
    finally:
        stop.set()
        await asyncio.wait_for(runner, WAIT)
        await scheduler_rt.close()


async def test_background_work_starts_between_passes(rt: Runtime) -> None:
    """Housekeeping, timed snapshot reloads and the scheduler's periodic jobs share the
    engine's event loop: they start when the pass in progress has ended (or after a limit)."""
    from contact_center.relay import Relay
    from contact_center.scheduler import Periodic, Scheduler
    from contact_center.wiring import subscriptions
    from routing.engine import engine_of

    eng = engine_of(rt)
    idle = asyncio.Event()  # a pass in progress
    eng.idle = idle
    ran = asyncio.Event()

    async def job(_: Runtime) -> None:
        ran.set()

    stop = asyncio.Event()
    scheduler = Scheduler(rt, Relay(rt, subscriptions()), [Periodic("probe", 60.0, job)])
    runner = asyncio.create_task(scheduler.run(stop))
    try:
        waiter = asyncio.create_task(eng.after_pass(limit=3600))
        await asyncio.sleep(0.3)
        assert not waiter.done() and not ran.is_set()
        idle.set()  # the pass ends
        await asyncio.wait_for(waiter, WAIT)
        await asyncio.wait_for(ran.wait(), WAIT)
        idle.clear()  # a pass that never ends holds nothing back for long
        await asyncio.wait_for(eng.after_pass(limit=0.05), WAIT)
        eng.idle = None  # no running loop: nothing to wait for
        await asyncio.wait_for(eng.after_pass(limit=3600), WAIT)
    finally:
        eng.idle = None
        stop.set()
        await asyncio.wait_for(runner, WAIT + 5)
