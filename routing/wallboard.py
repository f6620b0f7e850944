"""The wallboard's live feed: one per process, shared by its ``/ws/supervisor`` connections.

While at least one supervisor is connected, the feed recomputes the snapshot
(``routing.metrics.live_snapshot``) when bus events change the figures (conversations, offers,
presence, SLA) — at most once per ``MIN_INTERVAL`` and ``SETTLE`` after the first such event,
so that the engine has created the task the event leads to — and every
``CC_WALLBOARD_TICK_SECONDS`` regardless (waits grow without events; routing tasks themselves
are created without one). Each connection turns successive snapshots into JSON merge patches
(RFC 7396) of what it last sent: ``merge_patch``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from routing.metrics import Dialect, MetricsOptions, live_snapshot

if TYPE_CHECKING:
    from contact_center.bus import Subscription
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0  # seconds between two snapshots caused by events
SETTLE = 0.3  # after the first event of a burst, before computing
# Events after which the figures may have changed (messages and customers do not change them).
RELEVANT = frozenset(
    {
        "conversation.created",
        "conversation.updated",
        "conversation.assigned",
        "offer.created",
        "offer.accepted",
        "offer.declined",
        "offer.expired",
        "offer.withdrawn",
        "presence.updated",
        "sla.warning",
        "sla.breached",
    }
)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7396 merge patch that turns ``old`` into ``new`` (neither holds None values:
    ``metrics.prune``): removed keys are null, objects are patched member by member, anything
    else (numbers, strings, lists) is replaced whole when it differs."""
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or before != value:
            patch[key] = value
    return patch


def apply_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 applied to a copy of ``target`` (what a client does; used by the tests)."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            before = out.get(key)
            out[key] = apply_patch(before if isinstance(before, dict) else {}, value)
        else:
            out[key] = value
    return out


class Listener:
    """One connection's mailbox: only the latest snapshot matters."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None
        self._ready = asyncio.Event()

    def put(self, snapshot: dict[str, Any]) -> None:
        self.latest = snapshot
        self._ready.set()

    async def next(self) -> dict[str, Any]:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self.latest is not None:
                return self.latest


class WallboardFeed:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None

    async def snapshot(self) -> dict[str, Any]:
        """The figures now (one read transaction)."""
        async with self.rt.db.read() as session:
            return await live_snapshot(
                session,
                Dialect(self.rt.db.is_sqlite),
                MetricsOptions.from_settings(self.rt.settings),
                now=self.rt.clock.now(),
            )

    def join(self) -> Listener:
        listener = Listener()
        self.listeners.add(listener)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="wallboard")
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        if not self.listeners and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        from contact_center.relay import EVENTS_CHANNEL

        loop = asyncio.get_running_loop()
        sub: Subscription | None = None
        last = loop.time()
        dirty_at: float | None = None
        try:
            while self.listeners:
                try:
                    if sub is None or sub.lagged:  # (re)subscribe; events may have been missed
                        if sub is not None:
                            sub.close()
                            dirty_at = dirty_at or loop.time()
                        sub = await self.rt.bus.subscribe(EVENTS_CHANNEL)
                    tick = self.rt.settings.wallboard_tick_seconds
                    due = last + tick
                    if dirty_at is not None:
                        due = min(due, max(dirty_at + SETTLE, last + MIN_INTERVAL))
                    now = loop.time()
                    if now >= due:
                        last, dirty_at = now, None
                        snapshot = await self.snapshot()
                        for listener in list(self.listeners):
                            listener.put(snapshot)
                        continue
                    item = await sub.get(timeout=due - now)
                    for _, env in ([item] if item is not None else []) + sub.take_queued():
                        if dirty_at is None and env.get("type") in RELEVANT:
                            dirty_at = loop.time()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a failed read or a lost bus: the next tick tries again
                    log.exception("wallboard feed failed; retrying")
                    if sub is not None:
                        sub.close()
                        sub = None
                    await asyncio.sleep(1)
        finally:
            if sub is not None:
                sub.close()


def feed_of(rt: Runtime) -> WallboardFeed:
    """The process's feed (made on first use)."""
    feed = rt.extras.get("wallboard")
    if not isinstance(feed, WallboardFeed):
        feed = rt.extras["wallboard"] = WallboardFeed(rt)
    return feed
