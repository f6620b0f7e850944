"""The outbox relay: committed events reach the bus (and the jobs subscribed to them) in
position order, at least once, surviving a crash between publishing and moving the mark."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from contact_center import events
from contact_center.bus import Subscription
from contact_center.jobs import RqJobs
from contact_center.models import Agent, DomainEvent, RelayState, Role
from contact_center.outbound import reply
from contact_center.relay import EVENTS_CHANNEL, Relay
from contact_center.runtime import Runtime
from contact_center.wiring import subscriptions
from tests.helpers import ingest, make_inbox, make_person, relay, sms

WAIT = 5.0
SENTINEL = {"sentinel": True}


async def receive(sub: Subscription, count: int) -> list[dict[str, Any]]:
    """The next ``count`` envelopes; fails if they do not arrive within WAIT seconds."""
    got: list[dict[str, Any]] = []

    async def collect() -> None:
        while len(got) < count:
            item = await sub.get()
            assert item is not None, f"subscription ended after {got}"
            got.append(item[1])

    await asyncio.wait_for(collect(), WAIT)
    return got


async def nothing_more(rt: Runtime, sub: Subscription) -> None:
    """Nothing was published since the last receive: a marker published now comes next."""
    await rt.bus.publish(EVENTS_CHANNEL, SENTINEL)
    assert await receive(sub, 1) == [SENTINEL]


async def stored_events(rt: Runtime) -> list[DomainEvent]:
    async with rt.db.read() as session:
        return list((await session.scalars(select(DomainEvent).order_by(DomainEvent.id))).all())


async def relay_state(rt: Runtime) -> tuple[int, int]:
    async with rt.db.read() as session:
        state = await session.get(RelayState, "main")
        assert state is not None
        return state.sequenced, state.published


async def add_event(rt: Runtime, label: str, *, event_id: int | None = None) -> int:
    async with rt.db.write() as session:
        event = events.append(session, "customer.updated", {"label": label}, clock=rt.clock)
        if event_id is not None:
            event.id = event_id
        await session.flush()
        return event.id


async def test_ingested_events_are_published_in_order_once(rt: Runtime) -> None:
    await make_inbox(rt)
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)
    await ingest(rt, sms("one", sid="SM1"))
    await ingest(rt, sms("two", sid="SM2"))
    await ingest(rt, sms("three", sid="SM3", phone="+14155550199"))
    stored = await stored_events(rt)
    assert len(stored) >= 7

    assert await relay(rt) == len(stored)
    got = await receive(sub, len(stored))
    await nothing_more(rt, sub)

    stored = await stored_events(rt)  # now with positions
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    assert [m["id"] for m in got] == [e.position for e in stored]
    assert [(m["type"], m["data"]) for m in got] == [(e.type, e.payload) for e in stored]
    texts = [m["data"]["text"] for m in got if m["type"] == "message.created"]
    assert texts == ["one", "two", "three"]
    assert await relay_state(rt) == (len(stored), len(stored))

    # A second pass has nothing new to publish.
    assert await relay(rt) == 0
    await nothing_more(rt, sub)

    # Later events continue the positions.
    await ingest(rt, sms("four", sid="SM4"))
    assert await relay(rt) >= 1
    later = await receive(sub, 1)
    assert later[0]["id"] == len(stored) + 1
    sub.close()


async def test_crash_before_the_mark_moves_republishes_with_same_positions(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_inbox(rt)
    await ingest(rt, sms("hello", sid="SM1"))
    count = len(await stored_events(rt))
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)

    crashing = Relay(rt, subscriptions())
    assert await crashing.sequence() == count

    async def crash(last: int) -> None:
        raise RuntimeError("process died before the published mark moved")

    with monkeypatch.context() as patch:
        patch.setattr(crashing, "_mark_published", crash)
        with pytest.raises(RuntimeError, match="process died"):
            await crashing.publish()
    before_crash = await receive(sub, count)  # they did go out
    assert await relay_state(rt) == (count, 0)  # but the mark did not move

    # A new relay (the restarted process) publishes them again from the mark: nothing lost.
    assert await Relay(rt, subscriptions()).run_once() == count
    after_restart = await receive(sub, count)
    await nothing_more(rt, sub)
    assert after_restart == before_crash  # same positions: the duplicates can be dropped

    seen: dict[int, dict[str, Any]] = {}
    for envelope in before_crash + after_restart:
        seen.setdefault(envelope["id"], envelope)
    assert sorted(seen) == list(range(1, count + 1))
    assert await relay_state(rt) == (count, count)
    assert await Relay(rt, subscriptions()).run_once() == 0
    sub.close()


async def test_event_committed_late_with_a_lower_id_gets_a_later_position(rt: Runtime) -> None:
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)
    await add_event(rt, "higher id, committed first", event_id=200)
    assert await relay(rt) == 1
    # A transaction that took id 100 earlier commits only now, after 200 was sequenced.
    await add_event(rt, "lower id, committed late", event_id=100)
    assert await relay(rt) == 1

    got = await receive(sub, 2)
    await nothing_more(rt, sub)
    assert [(m["id"], m["data"]["label"]) for m in got] == [
        (1, "higher id, committed first"),
        (2, "lower id, committed late"),
    ]
    positions = {e.id: e.position for e in await stored_events(rt)}
    assert positions == {200: 1, 100: 2}
    sub.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_concurrent_transactions_each_published_once(rt: Runtime) -> None:
    """Real interleaving (PostgreSQL allows concurrent writers): the first transaction to take
    an id commits last, after the relay has passed the later id."""
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)
    async with rt.db.write() as slow:
        early = events.append(slow, "customer.updated", {"label": "early"}, clock=rt.clock)
        await slow.flush()
        late_id = await add_event(rt, "late")
        assert late_id > early.id
        assert await relay(rt) == 1  # "early" is not committed yet: only "late" goes
    assert await relay(rt) == 1
    got = await receive(sub, 2)
    await nothing_more(rt, sub)
    assert [(m["id"], m["data"]["label"]) for m in got] == [(1, "late"), (2, "early")]
    sub.close()


async def test_relay_enqueues_send_for_a_queued_outbound_reply(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No credentials: if the in-process job runs, it fails at once without any network.
    await make_inbox(rt, credentials={})
    person = await make_person(rt, "agent@test.local", Role.agent, None)
    inbound = await ingest(rt, sms("Hi, my order?", sid="SM1"))
    async with rt.db.write() as session:
        agent = await session.get(Agent, person.id)
        assert agent is not None
        message, created = await reply(
            session,
            conversation_id=inbound.conversation_id,
            agent=agent,
            text="On its way",
            clock=rt.clock,
        )
        note, _ = await reply(
            session,
            conversation_id=inbound.conversation_id,
            agent=agent,
            text="internal note",
            clock=rt.clock,
            private=True,
        )
        assert created
        message_id, note_id = message.id, note.id

    calls: list[tuple[str, dict[str, Any], str]] = []
    real_enqueue = rt.jobs.enqueue

    async def spy(name: str, payload: dict[str, Any], *, key: str) -> None:
        calls.append((name, payload, key))
        await real_enqueue(name, payload, key=key)

    monkeypatch.setattr(rt.jobs, "enqueue", spy)
    await relay(rt)
    # Only the queued outbound reply: not the inbound message nor the private note.
    assert calls == [("outbound.send", {"message_id": message_id}, f"send:{message_id}")]
    assert note_id != message_id
    if isinstance(rt.jobs, RqJobs):
        job_ids = await asyncio.to_thread(lambda: rt.jobs.queue.job_ids)  # type: ignore[attr-defined]
        assert job_ids == [f"send_{message_id}"]

    # Published once: a second pass does not enqueue the send again. (It may publish the
    # send's own outcome: the in-process job can already have failed it for lack of
    # credentials, which is a message.status event, not another send.)
    await relay(rt)
    assert [c for c in calls if c[0] == "outbound.send"] == calls[:1]
    assert len(calls) == 1


async def test_run_loop_is_woken_by_committed(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the wake-up the loop would sleep for a minute between passes.
    monkeypatch.setattr(rt.settings, "relay_interval_seconds", 60.0)
    await make_inbox(rt)
    await ingest(rt, sms("first", sid="SM1"))
    count = len(await stored_events(rt))
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)
    stop = asyncio.Event()
    task = asyncio.create_task(Relay(rt, subscriptions()).run(stop))
    try:
        first = await receive(sub, count)  # the loop's first pass
        assert first[-1]["data"]["text"] == "first"
        await ingest(rt, sms("second", sid="SM2"))
        await rt.committed()
        second = await receive(sub, 1)
        assert second[0]["type"] == "message.created"
        assert second[0]["data"]["text"] == "second"
        assert second[0]["id"] == count + 1
    finally:
        stop.set()
        await rt.committed()  # wake it to see the stop
        await asyncio.wait_for(task, WAIT)
    sub.close()


async def test_the_running_relay_outlives_a_database_restart(rt: Runtime) -> None:
    if rt.db.is_sqlite:
        pytest.skip("PostgreSQL's connections (SQLite has none to lose)")
    from sqlalchemy import text

    await make_inbox(rt)
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)
    stop = asyncio.Event()
    runner = asyncio.create_task(Relay(rt, subscriptions()).run(stop))
    try:
        await ingest(rt, sms("before", sid="SM1"))
        await rt.committed()
        first = await receive(sub, 3)
        # What a restart does to every pooled connection (the relay's and the app's).
        async with rt.db.engine.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await ingest(rt, sms("after", sid="SM2"))
        await rt.committed()
        # The connection may have died after the first events were published but before
        # their mark moved: they are published again, and subscribers drop positions they
        # have seen (as the websockets do). What is new follows them, without a gap.
        after = (await receive(sub, 1))[0]
        while after["id"] <= first[-1]["id"]:
            assert after in first  # a repeat, the same envelope
            after = (await receive(sub, 1))[0]
        assert after["type"] == "message.created" and after["data"]["text"] == "after"
        assert after["id"] == first[-1]["id"] + 1  # nothing skipped
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
        sub.close()
