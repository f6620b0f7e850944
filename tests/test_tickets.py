"""The ticket lifecycle (tickets/service.py, docs §16): raised from a conversation or for a
customer (a merged customer's ticket lands on the survivor), the status rules (new becomes
open on assignment, nothing goes back to new, solved stamps and clears ``solved_at``, closed is
read-only), tags cleaned, and one ``ticket.updated`` naming every change (none when nothing
changed): the outbox is the ticket's audit trail."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from contact_center.clock import ManualClock
from contact_center.customers import merge_customers
from contact_center.models import Conversation, DomainEvent, Priority
from contact_center.runtime import Runtime
from tests.helpers import Org, ingest, make_inbox, make_org, sms
from tickets.models import Ticket, TicketStatus, TicketType
from tickets.service import (
    TicketError,
    change_ticket,
    clean_tags,
    create_ticket,
    solved_now,
)


@pytest.fixture
async def org(rt: Runtime) -> Org:
    await make_inbox(rt)
    return await make_org(rt)


async def ticket_events(rt: Runtime, ticket_id: int) -> list[tuple[str, dict[str, Any]]]:
    async with rt.db.read() as session:
        rows = (
            await session.execute(
                select(DomainEvent.type, DomainEvent.payload)
                .where(DomainEvent.type.like("ticket.%"))
                .order_by(DomainEvent.id)
            )
        ).all()
    return [(kind, payload) for kind, payload in rows if payload["id"] == ticket_id]


async def change(rt: Runtime, ticket_id: int, **kw: Any) -> bool:
    async with rt.db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        return await change_ticket(
            session, ticket, clock=rt.clock, acting_agent_id=kw.pop("by", None), **kw
        )


async def load(rt: Runtime, ticket_id: int) -> Ticket:
    async with rt.db.read() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        return ticket


async def test_a_ticket_raised_from_a_conversation_takes_its_customer_team_and_priority(
    rt: Runtime, org: Org
) -> None:
    result = await ingest(rt, sms("I was charged twice", sid="SMt1"))
    async with rt.db.write() as session:
        conv = await session.get(Conversation, result.conversation_id)
        assert conv is not None
        conv.team_id, conv.priority = org.billing_team_id, Priority.high.value
    async with rt.db.write() as session:
        ticket = await create_ticket(
            session,
            clock=rt.clock,
            subject="  Charged   twice\nin March ",
            conversation_id=result.conversation_id,
            type=TicketType.complaint,
            tags=["Billing", "refund request", "billing", " "],
            acting_agent_id=org.agent.id,
        )
        ticket_id = ticket.id
    ticket = await load(rt, ticket_id)
    assert (ticket.customer_id, ticket.conversation_id) == (
        result.customer_id,
        result.conversation_id,
    )
    assert ticket.team_id == org.billing_team_id and ticket.priority == Priority.high
    assert ticket.subject == "Charged twice in March" and ticket.type == "complaint"
    assert ticket.status == TicketStatus.new  # nobody has it yet
    assert ticket.tags == ["billing", "refund_request"]
    assert ticket.created_by_id == org.agent.id
    ((kind, payload),) = await ticket_events(rt, ticket_id)
    assert kind == "ticket.created"
    assert payload["subject"] == "Charged twice in March" and payload["priority"] == "high"
    assert payload["by_agent_id"] == org.agent.id


async def test_a_ticket_for_a_merged_customer_lands_on_the_survivor(rt: Runtime, org: Org) -> None:
    first = await ingest(rt, sms("hello", sid="SMt2", phone="+14155550111"))
    second = await ingest(rt, sms("me again", sid="SMt3", phone="+14155550112"))
    async with rt.db.write() as session:
        await merge_customers(
            session,
            source_id=first.customer_id,
            target_id=second.customer_id,
            clock=rt.clock,
            acting_agent_id=None,
        )
    async with rt.db.write() as session:
        ticket = await create_ticket(
            session,
            clock=rt.clock,
            subject="Follow up",
            customer_id=first.customer_id,
            assignee_id=org.agent.id,
        )
        assert ticket.customer_id == second.customer_id
        assert ticket.conversation_id is None
        assert ticket.status == TicketStatus.open  # assigned from the start
    async with rt.db.write() as session:
        with pytest.raises(TicketError, match="customer_id"):
            await create_ticket(
                session,
                clock=rt.clock,
                subject="Wrong pair",
                customer_id=second.customer_id + 1000,
                conversation_id=second.conversation_id,
            )
        with pytest.raises(LookupError):
            await create_ticket(session, clock=rt.clock, subject="x", customer_id=10**6)
        with pytest.raises(TicketError, match="subject"):
            await create_ticket(
                session, clock=rt.clock, subject=" \n ", customer_id=second.customer_id
            )
        with pytest.raises(TicketError, match="needs a customer_id or a conversation_id"):
            await create_ticket(session, clock=rt.clock, subject="Orphan")


async def test_status_rules_and_one_event_naming_each_change(
    rt: Runtime, org: Org, clock: ManualClock
) -> None:
    result = await ingest(rt, sms("Router drops", sid="SMt4"))
    async with rt.db.write() as session:
        ticket = await create_ticket(
            session, clock=rt.clock, subject="Router", conversation_id=result.conversation_id
        )
        ticket_id = ticket.id
    # Assigning a new ticket opens it; the event names both changes and who made them.
    clock.advance(seconds=60)
    assert await change(rt, ticket_id, assignee_id=org.agent.id, by=org.supervisor.id)
    ticket = await load(rt, ticket_id)
    assert ticket.status == TicketStatus.open and ticket.updated_at == clock.now()
    kind, payload = (await ticket_events(rt, ticket_id))[-1]
    assert kind == "ticket.updated" and payload["by_agent_id"] == org.supervisor.id
    assert payload["changes"] == {
        "assignee_id": {"from": None, "to": org.agent.id},
        "status": {"from": "new", "to": "open"},
    }
    # Nothing goes back to new.
    with pytest.raises(TicketError, match=r"^status:"):
        await change(rt, ticket_id, status=TicketStatus.new)
    # Solving stamps solved_at; the event is what the survey reacts to.
    clock.advance(seconds=60)
    solved_at = clock.now()
    assert await change(
        rt, ticket_id, status=TicketStatus.solved, priority=Priority.urgent, by=org.agent.id
    )
    assert (await load(rt, ticket_id)).solved_at == solved_at
    events = await ticket_events(rt, ticket_id)
    kind, payload = events[-1]
    assert payload["changes"] == {
        "priority": {"from": "normal", "to": "urgent"},
        "status": {"from": "open", "to": "solved"},
    }
    assert solved_now({"type": kind, "data": payload})
    assert not solved_now({"type": "ticket.created", "data": events[0][1]})
    # Nothing changed: no event, no new updated_at.
    count = len(events)
    clock.advance(seconds=60)
    assert not await change(rt, ticket_id, status=TicketStatus.solved, tags=[])
    assert len(await ticket_events(rt, ticket_id)) == count
    assert (await load(rt, ticket_id)).updated_at == solved_at
    # Reopening clears solved_at; pending and on hold are ordinary statuses.
    assert await change(rt, ticket_id, status=TicketStatus.pending)
    assert (await load(rt, ticket_id)).solved_at is None
    assert await change(rt, ticket_id, status=TicketStatus.on_hold, subject="Router, again")
    kind, payload = (await ticket_events(rt, ticket_id))[-1]
    assert not solved_now({"type": kind, "data": payload})
    assert set(payload["changes"]) == {"status", "subject"}
    # Closed is final: it keeps a solved time, and nothing changes it afterwards.
    assert await change(rt, ticket_id, status=TicketStatus.closed)
    closed = await load(rt, ticket_id)
    assert closed.closed_at is not None and closed.solved_at is not None
    with pytest.raises(TicketError, match="closed"):
        await change(rt, ticket_id, priority=Priority.low)
    with pytest.raises(TicketError, match="closed"):
        await change(rt, ticket_id, status=TicketStatus.open)
    assert (await load(rt, ticket_id)).priority == Priority.urgent


async def test_type_team_and_unassignment_are_changes_too(rt: Runtime, org: Org) -> None:
    result = await ingest(rt, sms("Where is my order", sid="SMt5"))
    async with rt.db.write() as session:
        ticket = await create_ticket(
            session,
            clock=rt.clock,
            subject="Order",
            conversation_id=result.conversation_id,
            assignee_id=org.agent.id,
        )
        ticket_id = ticket.id
    assert await change(
        rt,
        ticket_id,
        type=TicketType.incident,
        team_id=org.technical_team_id,
        assignee_id=None,
        tags=["Late", "late"],
    )
    ticket = await load(rt, ticket_id)
    assert (ticket.type, ticket.team_id, ticket.assignee_id) == (
        "incident",
        org.technical_team_id,
        None,
    )
    assert ticket.status == TicketStatus.open  # unassigning does not make it new again
    _, payload = (await ticket_events(rt, ticket_id))[-1]
    assert payload["changes"] == {
        "type": {"from": "question", "to": "incident"},
        "tags": {"from": [], "to": ["late"]},
        "team_id": {"from": None, "to": org.technical_team_id},
        "assignee_id": {"from": org.agent.id, "to": None},
    }


def test_tags_are_lower_case_words_deduplicated_and_bounded() -> None:
    assert clean_tags([" VIP ", "vip", "late delivery", ""]) == ["vip", "late_delivery"]
    with pytest.raises(TicketError, match=r"^tags:"):
        clean_tags(["x" * 51])
    with pytest.raises(TicketError, match=r"^tags:"):
        clean_tags([f"t{i}" for i in range(21)])
    with pytest.raises(TicketError, match=r"^tags:"):
        clean_tags([3])  # type: ignore[list-item]
    assert len(clean_tags([f"t{i}" for i in range(20)] + ["T1"])) == 20


async def test_the_demo_seeds_a_solved_complaint_and_an_open_incident_once(rt: Runtime) -> None:
    from contact_center import demo
    from tickets.models import SatisfactionSurvey

    assert await demo.seed(rt)

    async def seeded() -> list[tuple[str, str, str, int | None]]:
        async with rt.db.read() as session:
            rows = (
                await session.execute(
                    select(Ticket.subject, Ticket.type, Ticket.status, SatisfactionSurvey.score)
                    .outerjoin(SatisfactionSurvey, SatisfactionSurvey.ticket_id == Ticket.id)
                    .order_by(Ticket.id)
                )
            ).all()
        return [tuple(row) for row in rows]  # type: ignore[misc]

    expected = [
        ("Charged twice for the March invoice", "complaint", "solved", 4),
        ("Router drops the connection every hour", "incident", "open", None),
    ]
    assert await seeded() == expected
    assert not await demo.seed(rt)  # the existing demo: nothing twice
    assert await seeded() == expected
    # A demo database from before tickets gets them on its next start.
    async with rt.db.write() as session:
        for ticket in (await session.scalars(select(Ticket))).all():
            await session.delete(ticket)
    assert await demo.seed_tickets(rt) == 2
    assert await demo.seed_tickets(rt) == 0
    assert [row[:3] for row in await seeded()] == [row[:3] for row in expected]
