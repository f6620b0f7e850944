"""The outbox relay: committed events -> bus (websocket fan-out) and -> jobs (side effects).

Two steps, each its own transaction, so a crash anywhere loses nothing:

1. *sequence*: events without a position get the next positions, in id order, under a lock on
   the relay's state row. Positions are the order of publication and the ids clients resume
   from; an event whose transaction commits late simply gets a later position.
2. *publish*: events after the ``published`` mark go to the bus and to the jobs subscribed to
   their type, in position order; then the mark moves. A crash between publishing and moving
   the mark publishes those events again: subscribers drop positions they have seen, and jobs
   are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from contact_center.events import envelope
from contact_center.models import DomainEvent, RelayState

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "events"
BATCH = 500
STATE = "main"


@dataclass(frozen=True, slots=True)
class JobSubscription:
    job: str
    matches: Callable[[dict[str, Any]], bool]
    key: Callable[[dict[str, Any]], str]
    payload: Callable[[dict[str, Any]], dict[str, Any]]


class Relay:
    def __init__(self, runtime: Runtime, subscriptions: list[JobSubscription]) -> None:
        self.rt = runtime
        self.subscriptions = subscriptions

    async def sequence(self) -> int:
        async with self.rt.db.write() as session:
            state = await session.get(RelayState, STATE, with_for_update=True)
            if state is None:
                state = RelayState(name=STATE, sequenced=0, published=0)
                session.add(state)
                await session.flush()
            pending = (
                await session.scalars(
                    select(DomainEvent)
                    .where(DomainEvent.position.is_(None))
                    .order_by(DomainEvent.id)
                    .limit(BATCH)
                )
            ).all()
            for event in pending:
                state.sequenced += 1
                event.position = state.sequenced
            return len(pending)

    async def publish(self) -> int:
        async with self.rt.db.read() as session:
            state = await session.get(RelayState, STATE)
            if state is None:
                return 0
            published = state.published
            batch = (
                await session.scalars(
                    select(DomainEvent)
                    .where(DomainEvent.position > published)
                    .order_by(DomainEvent.position)
                    .limit(BATCH)
                )
            ).all()
        if not batch:
            return 0
        for event in batch:
            env = envelope(event)
            await self.rt.bus.publish(EVENTS_CHANNEL, env)
            for sub in self.subscriptions:
                if sub.matches(env):
                    await self.rt.jobs.enqueue(sub.job, sub.payload(env), key=sub.key(env))
        last = batch[-1].position
        assert last is not None
        async with self.rt.db.write() as session:
            state = await session.get(RelayState, STATE, with_for_update=True)
            assert state is not None
            state.published = max(state.published, last)
        return len(batch)

    async def run_once(self) -> int:
        """Sequence and publish everything committed so far. Returns events published."""
        total = 0
        while True:
            await self.sequence()
            published = await self.publish()
            total += published
            if published < BATCH:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set: woken by commits, and every interval regardless."""
        wake = await self.rt.bus.subscribe("relay.wake")
        interval = self.rt.settings.relay_interval_seconds
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                except Exception:
                    log.exception("outbox relay pass failed; retrying")
                    await asyncio.sleep(1)
                await wake.get(timeout=interval)
                wake.drain()
        finally:
            wake.close()
