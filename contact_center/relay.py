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
import json
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


# Number the next events without a position, in id order, after ``$1``; returns the last
# position given (NULL when there was nothing to number).
_SEQUENCE_PG = """
WITH pending AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n
    FROM domain_events WHERE position IS NULL ORDER BY id LIMIT $2
), numbered AS (
    UPDATE domain_events AS d SET position = $1 + pending.n
    FROM pending WHERE d.id = pending.id AND d.position IS NULL
    RETURNING d.position
)
SELECT max(position) FROM numbered
"""

# The mark as a scalar subquery, so the planner walks the position index from it (a join
# with relay_state sorted the whole table).
_PENDING_PG = """
SELECT position, type, payload, conversation_id, customer_id, agent_id
FROM domain_events
WHERE position > (SELECT published FROM relay_state WHERE name = $1)
ORDER BY position LIMIT $2
"""


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
        if not self.rt.db.is_sqlite:
            return await self._sequence_pg()
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

    async def _sequence_pg(self) -> int:
        """``sequence`` on PostgreSQL: the same steps as statements on the driver's pool (no
        ORM, no pre-ping), in one transaction. The state row is locked first; the UPDATE that
        numbers the events is a later statement, so (READ COMMITTED) it sees every event a
        relay that held the lock before us has numbered."""
        pool = await self.rt.db.driver_pool()
        async with pool.acquire() as conn, conn.transaction():
            sequenced = await conn.fetchval(
                "SELECT sequenced FROM relay_state WHERE name = $1 FOR UPDATE", STATE
            )
            if sequenced is None:
                await conn.execute(
                    "INSERT INTO relay_state (name, sequenced, published) VALUES ($1, 0, 0)"
                    " ON CONFLICT (name) DO NOTHING",
                    STATE,
                )
                sequenced = await conn.fetchval(
                    "SELECT sequenced FROM relay_state WHERE name = $1 FOR UPDATE", STATE
                )
            last = await conn.fetchval(_SEQUENCE_PG, sequenced, BATCH)
            if last is None:
                return 0
            await conn.execute("UPDATE relay_state SET sequenced = $2 WHERE name = $1", STATE, last)
            return int(last - sequenced)

    async def _pending(self) -> list[dict[str, Any]]:
        """Envelopes of the sequenced events after the published mark, in position order."""
        if not self.rt.db.is_sqlite:
            pool = await self.rt.db.driver_pool()
            rows = await pool.fetch(_PENDING_PG, STATE, BATCH)
            return [
                {
                    "type": r["type"],
                    "id": r["position"],
                    "data": json.loads(r["payload"]),
                    "conversation_id": r["conversation_id"],
                    "customer_id": r["customer_id"],
                    "agent_id": r["agent_id"],
                }
                for r in rows
            ]
        async with self.rt.db.read() as session:
            state = await session.get(RelayState, STATE)
            if state is None:
                return []
            batch = (
                await session.scalars(
                    select(DomainEvent)
                    .where(DomainEvent.position > state.published)
                    .order_by(DomainEvent.position)
                    .limit(BATCH)
                )
            ).all()
        return [envelope(event) for event in batch]

    async def publish(self) -> int:
        batch = await self._pending()
        if not batch:
            return 0
        # Everything to the bus first (agents and wallboards wait on it), then the jobs.
        await self.rt.bus.publish_many(EVENTS_CHANNEL, batch)
        for env in batch:
            for sub in self.subscriptions:
                if sub.matches(env):
                    await self.rt.jobs.enqueue(sub.job, sub.payload(env), key=sub.key(env))
        await self._mark_published(batch[-1]["id"])
        return len(batch)

    async def _mark_published(self, last: int) -> None:
        if not self.rt.db.is_sqlite:
            pool = await self.rt.db.driver_pool()
            await pool.execute(
                "UPDATE relay_state SET published = GREATEST(published, $2) WHERE name = $1",
                STATE,
                last,
            )
            return
        async with self.rt.db.write() as session:
            state = await session.get(RelayState, STATE, with_for_update=True)
            assert state is not None
            state.published = max(state.published, last)

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
                    await self.rt.db.expire_driver_pool()
                    await asyncio.sleep(1)
                await wake.get(timeout=interval)
                wake.drain()
        finally:
            wake.close()
