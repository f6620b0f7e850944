"""Pieces every websocket endpoint shares: rate limiting, origin checks, the resumable
stream of outbox events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, func, select

from contact_center.db import Database
from contact_center.models import DomainEvent

Send = Callable[[dict[str, Any]], Awaitable[None]]


class FrameError(ValueError):
    """A client frame refused with a machine-readable code; the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Bucket:
    """A token bucket: ``rate`` frames per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(origin: str | None, public_url: str, allowed: list[str]) -> bool:
    """Browsers send Origin: it must be our own public origin or an allowed one. Clients
    without an Origin header (not browsers) are not subject to cross-site attacks."""
    if origin is None:
        return True
    origin = origin.lower().rstrip("/")
    return origin == origin_of(public_url) or origin in {o.lower().rstrip("/") for o in allowed}


async def serve_frames(
    receive: Callable[[], Awaitable[str]],
    send: Send,
    handle: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    outgoing: Callable[[], Coroutine[Any, Any, None]],
    max_frame: int,
    bucket: Bucket,
    background: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
) -> None:
    """Read client frames until the socket or ``outgoing`` (the server-to-client pump) ends:
    frames over ``max_frame`` or over the rate get an error, the rest go to ``handle``; a
    frame it refuses gets an ``error`` frame (code, message, the frame's type) and the
    connection carries on."""
    tasks = [asyncio.create_task(outgoing())]
    tasks += [asyncio.create_task(job()) for job in background or []]
    try:
        while not tasks[0].done():
            raw = await receive()
            if len(raw) > max_frame:
                message = f"a frame is at most {max_frame} bytes"
                await send({"type": "error", "data": {"code": "too_large", "message": message}})
                continue
            if not bucket.take():
                message = (
                    f"too many frames: at most {bucket.rate:g} a second, in bursts of "
                    f"{bucket.burst:g}; this one was dropped"
                )
                await send({"type": "error", "data": {"code": "rate_limited", "message": message}})
                continue
            kind = None
            try:
                frame = json.loads(raw)
                if not isinstance(frame, dict):
                    raise FrameError("bad_frame", "a frame is a JSON object")
                kind = frame.get("type")
                await handle(frame)
            except FrameError as exc:
                await send(
                    {"type": "error", "data": {"code": exc.code, "message": str(exc), "for": kind}}
                )
            except (ValueError, TypeError) as exc:
                await send(
                    {
                        "type": "error",
                        "data": {"code": "bad_frame", "message": str(exc), "for": kind},
                    }
                )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


Env = dict[str, Any]


async def head_position(db: Database) -> int:
    """The highest event position given so far (0 for an empty outbox)."""
    async with db.read() as session:
        return int(await session.scalar(select(func.max(DomainEvent.position))) or 0)


class EventStream:
    """The outbox events one websocket connection sends: each at most once, in position
    order, from the backlog and then live from the bus, and resumable from any position.

    The connection has dealt with the events in ``(floor, sent_upto]`` (sent them, or found
    them not for this client). A live event at or below ``sent_upto`` is a repeat (the relay
    may publish twice; the backlog overlaps live events) and is dropped. A ``resume`` from N
    below the floor replays ``(N, floor]``, which this connection never sent, and lowers the
    floor; a resume from above what was sent skips up to it (never past the head). A lock
    keeps a replay from interleaving with live events.

    ``emit(env)`` gets every event of ``types`` in range and decides itself whether the client
    wants it (and sends it). ``scope()`` may narrow the stored events read for the backlog
    with an SQL condition on ``DomainEvent`` (None: no narrowing).
    """

    def __init__(
        self,
        db: Database,
        *,
        types: Collection[str],
        emit: Callable[[Env], Awaitable[None]],
        scope: Callable[[], ColumnElement[bool] | None] | None = None,
        page: int = 500,
    ) -> None:
        self.db = db
        self.types = list(types)
        self.emit = emit
        self.scope = scope
        self.page = page
        self.floor = 0
        self.sent_upto = 0
        self._lock = asyncio.Lock()

    async def start(self, after: int | None, head: int) -> None:
        """At connect: the events after ``after`` (default and at most: the head), then the
        stream is live from the head on."""
        after = head if after is None else max(0, min(after, head))
        self.floor = self.sent_upto = after
        await self.backlog(after)
        self.sent_upto = max(self.sent_upto, head)

    async def live(self, env: Env) -> None:
        """An event from the bus (or the backlog after the mark): sent once, in order."""
        async with self._lock:
            await self._take(env)

    async def _take(self, env: Env) -> None:
        position = int(env.get("id") or 0)
        if position <= self.sent_upto:
            return
        await self.emit(env)
        self.sent_upto = position

    async def backlog(self, after: int) -> None:
        """Every stored event after ``after`` not dealt with yet, in order."""
        async with self._lock:
            await self._replay(after, None, self._take)

    async def resume(self, after: int) -> None:
        """The client's ``resume`` frame (see the class docstring)."""
        async with self._lock:
            if after < self.floor:
                await self._replay(after, self.floor, self.emit)
                self.floor = after
            elif after > self.sent_upto:
                self.sent_upto = max(self.sent_upto, min(after, await head_position(self.db)))
            await self._replay(self.sent_upto, None, self._take)  # committed meanwhile

    async def _replay(
        self, after: int, upto: int | None, take: Callable[[Env], Awaitable[None]]
    ) -> None:
        """Hand the stored events in ``(after, upto]`` (no upper bound: None) to ``take``."""
        narrow = self.scope() if self.scope is not None else None
        while True:
            query = (
                select(DomainEvent)
                .where(DomainEvent.position > after, DomainEvent.type.in_(self.types))
                .order_by(DomainEvent.position)
                .limit(self.page)
            )
            if upto is not None:
                query = query.where(DomainEvent.position <= upto)
            if narrow is not None:
                query = query.where(narrow)
            async with self.db.read() as session:
                rows = (await session.scalars(query)).all()
            for event in rows:
                await take(
                    {
                        "type": event.type,
                        "id": event.position,
                        "conversation_id": event.conversation_id,
                        "agent_id": event.agent_id,
                        "customer_id": event.customer_id,
                        "data": event.payload,
                    }
                )
            if len(rows) < self.page:
                return
            after = int(rows[-1].position or after)


def last_event_id(socket: Any) -> int | None:
    """``?last_event_id=N`` of a connecting client (None when absent or not a number)."""
    raw = socket.query_params.get("last_event_id")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
