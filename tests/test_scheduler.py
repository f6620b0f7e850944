"""The scheduler's leadership: one leader at a time through a Redis lease; embedded is the
leader on its own."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from contact_center import scheduler as scheduler_module
from contact_center.clock import ManualClock
from contact_center.relay import EVENTS_CHANNEL
from contact_center.runtime import Runtime
from contact_center.scheduler import LEASE_KEY, Lease, Scheduler
from contact_center.settings import Settings
from contact_center.wiring import build_runtime, build_scheduler
from tests.helpers import ingest, make_inbox, sms

WAIT = 5.0
TTL = 0.5

redis_only = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
embedded_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def hold_for(condition: Callable[[], bool], seconds: float) -> None:
    """Assert ``condition`` on every check for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert condition()
        await asyncio.sleep(0.01)


class Running:
    """Schedulers running as tasks, each with its own stop event."""

    def __init__(self) -> None:
        self.stops: dict[Scheduler, asyncio.Event] = {}
        self.tasks: dict[Scheduler, asyncio.Task[None]] = {}

    def start(self, scheduler: Scheduler) -> Scheduler:
        self.stops[scheduler] = stop = asyncio.Event()
        self.tasks[scheduler] = asyncio.create_task(scheduler.run(stop))
        return scheduler

    async def stop(self, scheduler: Scheduler) -> None:
        self.stops[scheduler].set()
        await asyncio.wait_for(self.tasks.pop(scheduler), WAIT)

    async def stop_all(self) -> None:
        for scheduler in list(self.tasks):
            await self.stop(scheduler)


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "Lease", functools.partial(Lease, ttl=TTL))


@pytest.fixture
async def second_rt(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    """Another process's runtime on the same database and Redis."""
    runtime = await build_runtime(settings, clock=clock)
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    schedulers = Running()
    try:
        yield schedulers
    finally:
        await schedulers.stop_all()


async def holder(redis: aioredis.Redis) -> str | None:
    value: Any = await redis.get(LEASE_KEY)
    return value.decode() if value is not None else None


@redis_only
async def test_one_leader_at_a_time_and_the_standby_takes_over(
    rt: Runtime,
    second_rt: Runtime,
    redis: aioredis.Redis,
    running: Running,
    short_lease: None,
) -> None:
    a = running.start(build_scheduler(rt))
    b = running.start(build_scheduler(second_rt))
    assert a.lease.ttl_ms == b.lease.ttl_ms == int(TTL * 1000)
    await wait_until(lambda: a.is_leader or b.is_leader)
    leader, standby = (a, b) if a.is_leader else (b, a)
    assert await holder(redis) == leader.lease.holder

    # For several lease periods: never two leaders, and the leader keeps renewing its lease.
    await hold_for(lambda: leader.is_leader and not standby.is_leader, 3 * TTL)
    assert await holder(redis) == leader.lease.holder

    await running.stop(leader)
    assert not leader.is_leader
    # It released the lease on the way out (rather than leaving it to expire).
    assert await holder(redis) in (None, standby.lease.holder)
    await wait_until(lambda: standby.is_leader, 6 * TTL)
    assert await holder(redis) == standby.lease.holder


@redis_only
async def test_standby_takes_over_after_a_dead_leaders_lease_expires(
    rt: Runtime, redis: aioredis.Redis, running: Running, short_lease: None
) -> None:
    dead = Lease(rt.settings.redis_url, ttl=1.5)  # a leader that then died: no renew/release
    assert await dead.acquire()
    standby = running.start(build_scheduler(rt))
    await hold_for(lambda: not standby.is_leader, 0.3)
    assert await holder(redis) == dead.holder  # so the lease was live the whole time
    await wait_until(lambda: standby.is_leader)
    assert await holder(redis) == standby.lease.holder
    await dead.release()  # closes its connection; not the holder any more, so deletes nothing
    assert await holder(redis) == standby.lease.holder


@redis_only
async def test_leader_that_loses_its_lease_stands_down(
    rt: Runtime,
    second_rt: Runtime,
    redis: aioredis.Redis,
    running: Running,
    short_lease: None,
) -> None:
    a = running.start(build_scheduler(rt))
    b = running.start(build_scheduler(second_rt))
    await wait_until(lambda: a.is_leader or b.is_leader)
    # Someone else holds the lease now (say the leader stalled past its expiry meanwhile).
    await redis.set(LEASE_KEY, "someone-else", px=60_000)
    await wait_until(lambda: not a.is_leader and not b.is_leader, 6 * TTL)
    await hold_for(lambda: not a.is_leader and not b.is_leader, TTL)
    assert await holder(redis) == "someone-else"  # not renewed by a former holder

    await redis.delete(LEASE_KEY)
    await wait_until(lambda: a.is_leader or b.is_leader)
    await hold_for(lambda: not (a.is_leader and b.is_leader), TTL)


@embedded_only
async def test_embedded_scheduler_is_always_the_leader_and_relays(
    rt: Runtime, running: Running
) -> None:
    assert rt.settings.redis_url is None
    scheduler = running.start(build_scheduler(rt))
    await wait_until(lambda: scheduler.is_leader)
    assert await scheduler.lease.renew()

    await make_inbox(rt)
    sub = await rt.bus.subscribe(EVENTS_CHANNEL)
    await ingest(rt, sms("Hello", sid="SM1"))
    await rt.committed()
    got: list[str] = []

    async def until_message() -> None:
        while "message.created" not in got:
            item = await sub.get()
            assert item is not None
            got.append(item[1]["type"])

    await asyncio.wait_for(until_message(), WAIT)  # the leader runs the relay
    sub.close()
    assert scheduler.is_leader
    await running.stop(scheduler)
    assert not scheduler.is_leader
