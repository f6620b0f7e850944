"""Polled mailboxes: when each is due, one poll at a time, and how far it got.

The IMAP adapter (``channels/imap.py``) speaks the protocol; this module keeps its state in
``mailbox_states`` so that every process agrees on it:

- ``due`` (the scheduler's tick) picks the mailboxes whose ``next_poll_at`` passed and moves it
  forward in the same transaction, so ticks never pile up polls;
- ``claim`` takes a lease, so two workers never poll one mailbox at once;
- ``advance`` records a UID after its message was committed (a crash before it re-fetches the
  message, which ingest dedupes);
- ``finish`` releases the lease and records the outcome (the last error stays visible until a
  poll succeeds; failures back off, up to ``MAX_BACKOFF`` times the interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center.models import MailboxState
from contact_center.views import ts

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

LEASE = timedelta(minutes=10)
MAX_BACKOFF = 32
KEEP_SKIPPED = 20


@dataclass(frozen=True, slots=True)
class Position:
    folder: str | None
    uidvalidity: int | None
    last_uid: int


async def _state(session: AsyncSession, inbox_id: str) -> MailboxState:
    state = await session.get(MailboxState, inbox_id, with_for_update=True)
    if state is None:
        state = MailboxState(inbox_id=inbox_id, last_uid=0, failures=0, skipped=[])
        session.add(state)
        await session.flush()
    return state


async def due(rt: Runtime, intervals: dict[str, float]) -> list[tuple[str, int]]:
    """Of the mailboxes given (inbox id -> poll interval), those due now, each with a number
    that names this poll (for the job key). Their next poll is moved forward at once."""
    now = rt.clock.now()
    picked: list[tuple[str, int]] = []
    if not intervals:
        return picked
    async with rt.db.write() as session:
        for inbox_id, seconds in sorted(intervals.items()):
            state = await _state(session, inbox_id)
            if state.next_poll_at is not None and state.next_poll_at > now:
                continue
            state.next_poll_at = now + timedelta(seconds=seconds)
            picked.append((inbox_id, int(now.timestamp())))
    return picked


async def claim(rt: Runtime, inbox_id: str, holder: str) -> Position | None:
    """Take the mailbox's poll lease; None while another poll holds it."""
    now = rt.clock.now()
    async with rt.db.write() as session:
        state = await _state(session, inbox_id)
        if (
            state.claimed_by not in (None, holder)
            and state.claimed_at is not None
            and state.claimed_at > now - LEASE
        ):
            return None
        state.claimed_by = holder
        state.claimed_at = now
        return Position(state.folder, state.uidvalidity, state.last_uid)


async def advance(
    rt: Runtime,
    inbox_id: str,
    *,
    folder: str,
    uidvalidity: int,
    uid: int,
    skipped: str | None = None,
) -> None:
    """Record that the message ``uid`` is done with (stored, or skipped for ``skipped``)."""
    now = rt.clock.now()
    async with rt.db.write() as session:
        state = await _state(session, inbox_id)
        if state.folder != folder or state.uidvalidity != uidvalidity:
            state.folder, state.uidvalidity, state.last_uid = folder, uidvalidity, 0
        state.last_uid = max(state.last_uid, uid)
        if skipped is not None:
            entry = {"uid": uid, "reason": skipped[:500], "at": ts(now)}
            state.skipped = [*state.skipped, entry][-KEEP_SKIPPED:]
            state.last_error = f"UID {uid} skipped: {skipped}"[:2000]
            state.last_error_at = now


async def finish(
    rt: Runtime,
    inbox_id: str,
    holder: str | None,
    *,
    error: str | None = None,
    more: bool = False,
    interval: float | None = None,
) -> None:
    """Release the lease and record how the poll ended. ``more``: messages are left over, so
    poll again at the next tick. After a failure the next poll waits ``interval`` times
    2, 4, 8, ... up to ``MAX_BACKOFF``."""
    now = rt.clock.now()
    async with rt.db.write() as session:
        state = await _state(session, inbox_id)
        if holder is not None and state.claimed_by == holder:
            state.claimed_by = None
            state.claimed_at = None
        state.last_polled_at = now
        if error is not None:
            state.failures += 1
            state.last_error = error[:2000]
            state.last_error_at = now
            if interval is not None:
                backoff = min(2 ** min(state.failures, 10), MAX_BACKOFF)
                state.next_poll_at = now + timedelta(seconds=interval * backoff)
        else:
            state.failures = 0
            if not (state.last_error or "").startswith("UID "):
                state.last_error = None  # keep a skipped message visible; clear the rest
        if more:
            state.next_poll_at = now


async def status(rt: Runtime, inbox_id: str) -> MailboxState | None:
    async with rt.db.read() as session:
        return await session.scalar(select(MailboxState).where(MailboxState.inbox_id == inbox_id))
