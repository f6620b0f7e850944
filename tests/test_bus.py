"""The bus contract, run against both implementations (InProcessBus and RedisBus)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contact_center import bus as bus_module
from contact_center.bus import Bus, InProcessBus, RedisBus, Subscription
from tests.conftest import REDIS_BASE, REDIS_DB, redis_url, require_services

WAIT = 5.0


def _redis_bus() -> RedisBus:
    # Every test gets its own channel namespace, so parallel runs never hear each other.
    return RedisBus(redis_url(), prefix=f"cc:test-bus:{uuid.uuid4().hex}:")


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "redis":
        require_services()
        instance: Bus = _redis_bus()
    else:
        instance = InProcessBus()
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


async def receive(sub: Subscription, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Exactly ``count`` messages, failing if they do not all arrive within WAIT seconds."""
    got: list[tuple[str, dict[str, Any]]] = []

    async def collect() -> None:
        while len(got) < count:
            item = await sub.get()
            assert item is not None, f"subscription ended after {got}"
            got.append(item)

    await asyncio.wait_for(collect(), WAIT)
    return got


async def until_end(sub: Subscription) -> list[tuple[str, dict[str, Any]]]:
    """Everything the subscription still yields; fails if it does not end within WAIT seconds."""

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        return [item async for item in sub]

    return await asyncio.wait_for(collect(), WAIT)


async def test_subscriber_gets_later_messages_in_order(bus: Bus) -> None:
    await bus.publish("a", {"n": -1})  # before subscribing: not delivered
    sub = await bus.subscribe("a")
    for n in range(50):
        await bus.publish("a", {"n": n, "text": f"m{n}"})
    got = await receive(sub, 50)
    assert got == [("a", {"n": n, "text": f"m{n}"}) for n in range(50)]
    assert await sub.get(timeout=0.2) is None  # nothing else (the early message never came)
    sub.close()


async def test_a_batch_is_published_in_order(bus: Bus) -> None:
    sub = await bus.subscribe("a")
    other = await bus.subscribe("b")
    await bus.publish_many("a", [{"n": n} for n in range(20)])
    await bus.publish_many("a", [])
    await bus.publish("a", {"n": 20})
    assert await receive(sub, 21) == [("a", {"n": n}) for n in range(21)]
    assert await other.get(timeout=0.2) is None
    sub.close()
    other.close()


async def test_every_subscriber_of_a_channel_gets_every_message(bus: Bus) -> None:
    subs = [await bus.subscribe("a") for _ in range(3)]
    for n in range(10):
        await bus.publish("a", {"n": n})
    for sub in subs:
        assert [m["n"] for _, m in await receive(sub, 10)] == list(range(10))
        sub.close()


async def test_subscriber_gets_only_its_channels(bus: Bus) -> None:
    only_a = await bus.subscribe("a")
    a_and_c = await bus.subscribe("a", "c")
    await bus.publish("b", {"n": 0})
    await bus.publish("c", {"n": 1})
    await bus.publish("a", {"n": 2})
    assert await receive(only_a, 1) == [("a", {"n": 2})]
    assert await receive(a_and_c, 2) == [("c", {"n": 1}), ("a", {"n": 2})]
    # "b" had no subscriber, and each subscription saw just the above.
    assert await only_a.get(timeout=0.2) is None
    assert await a_and_c.get(timeout=0.2) is None
    only_a.close()
    a_and_c.close()


async def test_close_stops_delivery_and_ends_iteration(bus: Bus) -> None:
    closed = await bus.subscribe("a")
    witness = await bus.subscribe("a")
    await bus.publish("a", {"n": 0})
    assert await receive(witness, 1) == [("a", {"n": 0})]

    consumer = asyncio.create_task(until_end(closed))
    await asyncio.sleep(0)
    closed.close()
    await bus.publish("a", {"n": 1})
    # The witness getting n=1 means the closed subscription would have had it by now too.
    assert await receive(witness, 1) == [("a", {"n": 1})]
    got = await consumer  # ended on close, instead of waiting forever
    assert ("a", {"n": 1}) not in got
    assert await closed.get(timeout=0.1) is None
    witness.close()


async def test_close_ends_a_consumer_whose_queue_is_full(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "QUEUE_SIZE", 3)
    sub = await bus.subscribe("a")
    witness = await bus.subscribe("a")
    for n in range(3):  # exactly fills the queue: not lagged
        await bus.publish("a", {"n": n})
    await receive(witness, 3)
    assert not sub.lagged
    sub.close()
    got = await until_end(sub)
    assert len(got) <= 3


async def test_slow_subscriber_is_marked_lagged_and_ended(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = await bus.subscribe("a")  # default queue size
    monkeypatch.setattr(bus_module, "QUEUE_SIZE", 3)
    slow = await bus.subscribe("a")
    other = await bus.subscribe("b")

    async def publish_all() -> None:
        for n in range(20):
            await bus.publish("a", {"n": n})
        await bus.publish("b", {"n": "b"})

    await asyncio.wait_for(publish_all(), WAIT)  # the publisher is never held up
    assert [m["n"] for _, m in await receive(fast, 20)] == list(range(20))
    assert await receive(other, 1) == [("b", {"n": "b"})]
    assert slow.lagged
    leftover = await until_end(slow)  # ends instead of blocking its reader
    assert len(leftover) < 20
    for sub in (fast, slow, other):
        sub.close()


async def test_two_redis_buses_see_each_others_publishes() -> None:
    require_services()
    prefix = f"cc:test-bus:{uuid.uuid4().hex}:"
    one, two = RedisBus(redis_url(), prefix=prefix), RedisBus(redis_url(), prefix=prefix)
    try:
        on_one = await one.subscribe("events")
        on_two = await two.subscribe("events")
        await one.publish("events", {"from": "one"})
        await two.publish("events", {"from": "two"})
        for sub in (on_one, on_two):
            assert await receive(sub, 2) == [
                ("events", {"from": "one"}),
                ("events", {"from": "two"}),
            ]
    finally:
        await one.close()
        await two.close()


async def test_redis_buses_on_different_databases_do_not_hear_each_other() -> None:
    """Redis pub/sub ignores database numbers; the bus must not (two deployments, or two test
    runs, sharing a Redis server on different databases)."""
    require_services()
    prefix = f"cc:test-bus:{uuid.uuid4().hex}:"
    other_db = (REDIS_DB + 1) % 16
    mine = RedisBus(redis_url(), prefix=prefix)
    theirs = RedisBus(f"{REDIS_BASE}/{other_db}", prefix=prefix)
    try:
        sub = await mine.subscribe("events")
        await theirs.publish("events", {"from": "other database"})
        await mine.publish("events", {"from": "this database"})
        assert await receive(sub, 1) == [("events", {"from": "this database"})]
        assert await sub.get(timeout=0.3) is None
    finally:
        await mine.close()
        await theirs.close()
