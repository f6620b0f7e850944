"""Ticket lifecycle: create and change tickets, each change an outbox event (§16).

The events are the ticket's audit trail: ``ticket.created`` with the whole ticket, then one
``ticket.updated`` per change naming each changed field ``{"from": ..., "to": ...}`` and the
agent who made it. Reactions (the satisfaction survey after a solve) subscribe to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.clock import Clock
from contact_center.customers import follow_merges
from contact_center.jobs import job
from contact_center.models import Conversation, Customer, Priority
from contact_center.views import ts
from tickets.models import SatisfactionSurvey, Ticket, TicketStatus, TicketType

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

EVENT_TYPES: Final = ("ticket.created", "ticket.updated")
MERGE_JOB: Final = "tickets.follow_merge"

SUBJECT_MAX = 250
TAG_MAX = 50
TAGS_MAX = 20


class TicketError(ValueError):
    """A change the ticket's rules refuse (the API answers 400/409 with the message)."""


def ticket_view(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "subject": ticket.subject,
        "type": ticket.type,
        "status": ticket.status,
        "priority": Priority(ticket.priority).name,
        "customer_id": ticket.customer_id,
        "conversation_id": ticket.conversation_id,
        "assignee_id": ticket.assignee_id,
        "team_id": ticket.team_id,
        "created_by_id": ticket.created_by_id,
        "tags": list(ticket.tags or []),
        "created_at": ts(ticket.created_at),
        "updated_at": ts(ticket.updated_at),
        "solved_at": ts(ticket.solved_at),
        "closed_at": ts(ticket.closed_at),
    }


def clean_subject(subject: str) -> str:
    subject = " ".join((subject or "").split())
    if not subject:
        raise TicketError("subject: a ticket needs a subject")
    if len(subject) > SUBJECT_MAX:
        raise TicketError(f"subject: at most {SUBJECT_MAX} characters")
    return subject


def clean_tags(tags: list[str]) -> list[str]:
    """Tags are lower-case words, deduplicated in order (Zendesk's rule: no spaces)."""
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise TicketError("tags: each tag is a string")
        tag = tag.strip().lower().replace(" ", "_")
        if not tag:
            continue
        if len(tag) > TAG_MAX:
            raise TicketError(f"tags: a tag has at most {TAG_MAX} characters")
        if tag not in out:
            out.append(tag)
    if len(out) > TAGS_MAX:
        raise TicketError(f"tags: at most {TAGS_MAX} tags")
    return out


async def create_ticket(
    session: AsyncSession,
    *,
    clock: Clock,
    subject: str,
    customer_id: int | None = None,
    conversation_id: int | None = None,
    type: TicketType = TicketType.question,
    priority: Priority | None = None,
    assignee_id: int | None = None,
    team_id: int | None = None,
    tags: list[str] | None = None,
    acting_agent_id: int | None = None,
) -> Ticket:
    """Open a ticket for a customer, or from a conversation (its customer, team and priority
    unless given). A ticket with an assignee starts ``open``, without one ``new``."""
    conversation = None
    if conversation_id is not None:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            raise LookupError("conversation not found")
        if customer_id is not None and customer_id != conversation.customer_id:
            raise TicketError("customer_id: not the conversation's customer")
        customer_id = conversation.customer_id
        if team_id is None:
            team_id = conversation.team_id
        if priority is None:
            priority = Priority(conversation.priority)
    if customer_id is None:
        raise TicketError("a ticket needs a customer_id or a conversation_id")
    # FOR KEY SHARE waits for a merge of this customer in flight (it locks the row FOR
    # UPDATE) and then reads the merged row: the ticket lands on the survivor, never on a
    # customer whose tickets the merge job has already moved.
    customer = await session.get(
        Customer, customer_id, with_for_update={"key_share": True}, populate_existing=True
    )
    if customer is None:
        raise LookupError("customer not found")
    customer = await follow_merges(session, customer)
    now = clock.now()
    ticket = Ticket(
        subject=clean_subject(subject),
        type=type.value,
        status=(TicketStatus.open if assignee_id is not None else TicketStatus.new).value,
        priority=(priority or Priority.normal).value,
        customer_id=customer.id,
        conversation_id=conversation.id if conversation is not None else None,
        assignee_id=assignee_id,
        team_id=team_id,
        created_by_id=acting_agent_id,
        tags=clean_tags(tags or []),
        created_at=now,
        updated_at=now,
    )
    session.add(ticket)
    await session.flush()
    events.append(
        session,
        "ticket.created",
        {**ticket_view(ticket), "by_agent_id": acting_agent_id},
        clock=clock,
        conversation_id=ticket.conversation_id,
        customer_id=ticket.customer_id,
        agent_id=acting_agent_id,
    )
    return ticket


_UNSET: Any = object()


async def change_ticket(
    session: AsyncSession,
    ticket: Ticket,
    *,
    clock: Clock,
    acting_agent_id: int | None,
    status: TicketStatus | None = None,
    priority: Priority | None = None,
    type: TicketType | None = None,
    subject: str | None = None,
    assignee_id: int | None = _UNSET,
    team_id: int | None = _UNSET,
    tags: list[str] | None = None,
) -> bool:
    """Apply the given changes and append one ``ticket.updated`` naming them; False if nothing
    changed. A closed ticket is read-only. Solving stamps ``solved_at``; leaving solved clears
    it. Assigning a ``new`` ticket opens it."""
    if ticket.status == TicketStatus.closed:
        raise TicketError("the ticket is closed: it cannot be changed")
    now = clock.now()
    changed: dict[str, dict[str, Any]] = {}

    def note(field: str, before: Any, after: Any) -> None:
        if before != after:
            changed[field] = {"from": before, "to": after}

    if subject is not None:
        new_subject = clean_subject(subject)
        note("subject", ticket.subject, new_subject)
        ticket.subject = new_subject
    if type is not None:
        note("type", ticket.type, type.value)
        ticket.type = type.value
    if priority is not None:
        note("priority", Priority(ticket.priority).name, priority.name)
        ticket.priority = priority.value
    if tags is not None:
        new_tags = clean_tags(tags)
        note("tags", list(ticket.tags or []), new_tags)
        ticket.tags = new_tags
    if team_id is not _UNSET:
        note("team_id", ticket.team_id, team_id)
        ticket.team_id = team_id
    if assignee_id is not _UNSET:
        note("assignee_id", ticket.assignee_id, assignee_id)
        ticket.assignee_id = assignee_id
        if assignee_id is not None and status is None and ticket.status == TicketStatus.new:
            status = TicketStatus.open
    if status is not None and status != ticket.status:
        if status == TicketStatus.new:
            raise TicketError("status: a ticket cannot go back to new")
        note("status", ticket.status, status.value)
        ticket.status = status.value
        if status == TicketStatus.solved:
            ticket.solved_at = now
        elif status == TicketStatus.closed:
            ticket.closed_at = now
            ticket.solved_at = ticket.solved_at or now
        else:
            ticket.solved_at = None
    if not changed:
        return False
    ticket.updated_at = now
    await session.flush()
    events.append(
        session,
        "ticket.updated",
        {**ticket_view(ticket), "changes": changed, "by_agent_id": acting_agent_id},
        clock=clock,
        conversation_id=ticket.conversation_id,
        customer_id=ticket.customer_id,
        agent_id=acting_agent_id,
    )
    return True


def solved_now(event: dict[str, Any]) -> bool:
    """A ``ticket.updated`` event that moved the ticket to solved (what surveys react to)."""
    if event.get("type") != "ticket.updated":
        return False
    status = (event.get("data") or {}).get("changes", {}).get("status")
    return isinstance(status, dict) and status.get("to") == TicketStatus.solved.value


def wants_merge(event: dict[str, Any]) -> bool:
    return event.get("type") == "customer.merged"


@job(MERGE_JOB)
async def follow_customer_merge(rt: Runtime, payload: dict[str, Any]) -> None:
    """After ``customer.merged``: the source's tickets and satisfaction surveys move to the
    survivor (followed further if it was merged on since), each moved ticket with a
    ``ticket.updated`` naming the ``customer_id`` change. Idempotent: a replay finds nothing
    left to move."""
    source_id = int(payload["source_id"])
    async with rt.db.write() as session:
        target = await session.get(Customer, int(payload["target_id"]))
        if target is None:
            return
        target = await follow_merges(session, target)
        if target.id == source_id:
            return
        moved = list(
            (
                await session.scalars(
                    select(Ticket)
                    .where(Ticket.customer_id == source_id)
                    .order_by(Ticket.id)
                    .with_for_update()
                )
            ).all()
        )
        now = rt.clock.now()
        for ticket in moved:
            ticket.customer_id = target.id
            ticket.updated_at = now
        await session.execute(
            update(SatisfactionSurvey)
            .where(SatisfactionSurvey.customer_id == source_id)
            .values(customer_id=target.id)
        )
        await session.flush()
        for ticket in moved:
            events.append(
                session,
                "ticket.updated",
                {
                    **ticket_view(ticket),
                    "changes": {"customer_id": {"from": source_id, "to": target.id}},
                    "by_agent_id": payload.get("by_agent_id"),
                },
                clock=rt.clock,
                conversation_id=ticket.conversation_id,
                customer_id=ticket.customer_id,
                agent_id=payload.get("by_agent_id"),
            )
    if moved:
        await rt.committed()
