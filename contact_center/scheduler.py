"""The scheduler: outbox relay, periodic sweeps and the routing engine, with one leader.

Leadership is a lease in Redis (``SET NX PX`` renewed by compare-and-extend); a standby takes
over within one lease period after the leader dies. Without Redis (embedded) the one process
is the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from contact_center.relay import Relay
from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

LEASE_KEY = "cc:scheduler:leader"
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Periodic:
    name: str
    interval: float
    run: Callable[[Runtime], Awaitable[object]]


class Lease:
    def __init__(self, redis_url: str | None, ttl: float = 10.0) -> None:
        self.redis_url = redis_url
        self.ttl_ms = int(ttl * 1000)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(redis_url)

    async def acquire(self) -> bool:
        if self._redis is None:
            return True
        return bool(await self._redis.set(LEASE_KEY, self.holder, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        if self._redis is None:
            return True
        return bool(await self._redis.eval(_RENEW, 1, LEASE_KEY, self.holder, self.ttl_ms))

    async def release(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                if await self._redis.get(LEASE_KEY) == self.holder.encode():
                    await self._redis.delete(LEASE_KEY)
            await self._redis.aclose()


Service = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Scheduler:
    def __init__(
        self,
        rt: Runtime,
        relay: Relay,
        periodic: list[Periodic],
        services: list[tuple[str, Service]] | None = None,
    ) -> None:
        self.rt = rt
        self.relay = relay
        self.periodic = periodic
        # Long-running loops that only the leader runs (the routing engine).
        self.services = services or []
        self.lease = Lease(rt.settings.redis_url)
        self.is_leader = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if await self.lease.acquire():
                    log.info("scheduler %s is the leader", self.lease.holder)
                    self.is_leader = True
                    await self._lead(stop)
                    self.is_leader = False
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.lease.ttl_ms / 3000)
        finally:
            await self.lease.release()

    async def _lead(self, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        inner_stop = asyncio.Event()
        tasks = [asyncio.create_task(self.relay.run(inner_stop), name="relay")]
        tasks += [
            asyncio.create_task(self._every(p, inner_stop), name=p.name) for p in self.periodic
        ]
        tasks += [asyncio.create_task(run(inner_stop), name=name) for name, run in self.services]
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease.ttl_ms / 3000)
                if not stop.is_set() and not await self.lease.renew():
                    log.warning("scheduler lease lost; standing by")
                    lost.set()
                    break
        finally:
            inner_stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(self, job: Periodic, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                # A routing pass in progress (same event loop) finishes first.
                engine = self.rt.extras.get("routing")
                if engine is not None and hasattr(engine, "after_pass"):
                    await engine.after_pass()
                await job.run(self.rt)
            except Exception:
                log.exception("periodic %s failed", job.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), job.interval)
