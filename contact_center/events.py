"""Domain events: the outbox.

An action appends its events in the same transaction as its change (``append``); the relay
publishes them after commit, in order, to the bus and to the jobs that react to them. The event
types form a closed set: an unknown type is a programming error, caught at append time.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center.clock import Clock
from contact_center.models import DomainEvent

EVENT_TYPES: Final = frozenset(
    {
        "customer.created",
        "customer.updated",
        "customer.merged",
        "conversation.created",
        "conversation.updated",
        "message.created",
        "message.status",
        # A stored message changed other than by status (an attachment downloaded after
        # ingest): the payload is the whole message view, plus a "reason".
        "message.updated",
        # An internal note names an agent ("@ayse"): to that agent only.
        "mention.created",
        # An agent's read marker moved: to that agent's own sockets (other tabs, devices).
        "conversation.read",
    }
)

_extra_types: set[str] = set()


def register_event_types(*names: str) -> None:
    """Other packages add their event types at start-up (through the composition root)."""
    _extra_types.update(names)


def known(event_type: str) -> bool:
    return event_type in EVENT_TYPES or event_type in _extra_types


def append(
    session: AsyncSession,
    event_type: str,
    payload: dict[str, Any],
    *,
    clock: Clock,
    conversation_id: int | None = None,
    customer_id: int | None = None,
    agent_id: int | None = None,
) -> DomainEvent:
    """Add an event to the current transaction. It becomes visible only if the change commits."""
    event = DomainEvent(
        **row(
            event_type,
            payload,
            clock=clock,
            conversation_id=conversation_id,
            customer_id=customer_id,
            agent_id=agent_id,
        )
    )
    session.add(event)
    return event


def row(
    event_type: str,
    payload: dict[str, Any],
    *,
    clock: Clock,
    conversation_id: int | None = None,
    customer_id: int | None = None,
    agent_id: int | None = None,
) -> dict[str, Any]:
    """``append`` for Core writers: the values of one event row, for ``insert_rows``."""
    if not known(event_type):
        raise ValueError(f"unknown domain event type {event_type!r}")
    return {
        "type": event_type,
        "payload": payload,
        "conversation_id": conversation_id,
        "customer_id": customer_id,
        "agent_id": agent_id,
        "created_at": clock.now(),
    }


async def insert_rows(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Add events built by ``row`` to the current transaction in one batch, in order (ids,
    and so the relay's positions, follow the list)."""
    if rows:
        table: Table = DomainEvent.__table__  # type: ignore[assignment]
        await session.execute(insert(table), rows)


def envelope(event: DomainEvent) -> dict[str, Any]:
    """The wire shape of a published event (websocket frames use the same)."""
    return {
        "type": event.type,
        "id": event.position,
        "data": event.payload,
        "conversation_id": event.conversation_id,
        "customer_id": event.customer_id,
        "agent_id": event.agent_id,
    }
