"""The bus: fan-out of published events to every subscriber, in this process or all of them.

One port, two implementations (contract-tested together): ``InProcessBus`` for the embedded
set-up and ``RedisBus`` (Redis pub/sub) so any web process reaches any agent. Each process holds
one Redis subscription and fans out locally. Delivery is at-most-once and may drop messages for
a slow subscriber (its subscription is marked ``lagged`` and closed): clients recover from the
durable event table by resuming from their last event id, never from the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

log = logging.getLogger(__name__)

QUEUE_SIZE = 2000
_CLOSED = object()


class Subscription:
    def __init__(self, fanout: LocalFanout, channels: tuple[str, ...]) -> None:
        self._fanout = fanout
        self.channels = channels
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        self.lagged = False

    def _offer(self, channel: str, message: dict[str, Any]) -> None:
        if self.lagged:
            return
        try:
            self._queue.put_nowait((channel, message))
        except asyncio.QueueFull:
            self.lagged = True
            self._queue = asyncio.Queue(1)
            self._queue.put_nowait(_CLOSED)

    async def get(self, timeout: float | None = None) -> tuple[str, dict[str, Any]] | None:
        """The next (channel, message); None on timeout or when closed/lagged."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if item is _CLOSED:
            return None
        channel, message = item
        return channel, message

    def notify(self, channel: str, message: dict[str, Any]) -> None:
        """Queue a message for this subscriber only (a local wake-up, not published)."""
        self._offer(channel, message)

    def take_queued(self) -> list[tuple[str, dict[str, Any]]]:
        """Everything queued now, without waiting."""
        items = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _CLOSED:
                items.append(item)
        return items

    def drain(self) -> int:
        """Drop everything queued; returns how many messages were dropped."""
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        return dropped

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            item = await self.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self._fanout.remove(self)
        if self._queue.full():  # make room for the end marker, or a reader would wait forever
            self.drain()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_CLOSED)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class LocalFanout:
    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}

    def add(self, sub: Subscription) -> None:
        for channel in sub.channels:
            self._subs.setdefault(channel, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        for channel in sub.channels:
            subs = self._subs.get(channel)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[channel]

    def deliver(self, channel: str, message: dict[str, Any]) -> None:
        for sub in list(self._subs.get(channel, ())):
            sub._offer(channel, message)

    @property
    def channels(self) -> set[str]:
        return set(self._subs)


class Bus(Protocol):
    async def start(self) -> None: ...
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    async def publish_many(self, channel: str, messages: list[dict[str, Any]]) -> None:
        """``publish`` each, in order (on Redis in one round trip)."""
        ...

    async def subscribe(self, *channels: str) -> Subscription: ...
    async def close(self) -> None: ...


class InProcessBus:
    def __init__(self) -> None:
        self._fanout = LocalFanout()

    async def start(self) -> None:
        return None

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        self._fanout.deliver(channel, message)

    async def publish_many(self, channel: str, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self._fanout.deliver(channel, message)

    async def subscribe(self, *channels: str) -> Subscription:
        sub = Subscription(self._fanout, channels)
        self._fanout.add(sub)
        return sub

    async def close(self) -> None:
        return None


class RedisBus:
    """Redis pub/sub with one connection per process for all of its subscribers."""

    def __init__(self, url: str, prefix: str = "cc:bus:") -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        # Pub/sub channels are server-wide, not per database: scope them by the database so
        # deployments sharing a Redis server on different databases do not hear each other.
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        self._prefix = f"{prefix}{db}:"
        self._fanout = LocalFanout()
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._subscribed: set[str] = set()

    async def start(self) -> None:
        return None

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.publish(self._prefix + channel, json.dumps(message, default=str))

    async def publish_many(self, channel: str, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.publish(self._prefix + channel, json.dumps(message, default=str))
            await pipe.execute()

    async def subscribe(self, *channels: str) -> Subscription:
        sub = Subscription(self._fanout, channels)
        self._fanout.add(sub)
        async with self._lock:
            missing = [c for c in channels if c not in self._subscribed]
            if missing:
                await self._pubsub.subscribe(*(self._prefix + c for c in missing))
                self._subscribed.update(missing)
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")
        return sub

    async def _read(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis bus read failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"].decode().removeprefix(self._prefix)
            try:
                payload = json.loads(msg["data"])
            except ValueError:
                log.warning("dropping undecodable bus message on %s", channel)
                continue
            self._fanout.deliver(channel, payload)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()


def make_bus(redis_url: str | None) -> Bus:
    return RedisBus(redis_url) if redis_url else InProcessBus()
