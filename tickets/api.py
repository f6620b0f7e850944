"""``/api/v1/tickets``: raise, list, show and change tickets (§16).

Every agent may call it; what they see follows ``tickets.access`` (a ticket they may not see is
a 404, as an unknown one). Bad fields are 400s naming the field; a closed ticket is read-only
(409).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center.api.common import Page, clamp, current_agent, runtime_of, visible_conversation
from contact_center.customers import MAX_MERGE_CHAIN, follow_merges
from contact_center.models import Agent, Conversation, Customer, Priority, Team
from tickets.access import ticket_visibility
from tickets.models import Ticket, TicketStatus, TicketType
from tickets.service import (
    SUBJECT_MAX,
    TAG_MAX,
    TAGS_MAX,
    TicketError,
    change_ticket,
    create_ticket,
    ticket_view,
)

TypeName = Literal["question", "incident", "problem", "complaint", "task"]
StatusName = Literal["new", "open", "pending", "on_hold", "solved", "closed"]
PriorityName = Literal["low", "normal", "high", "urgent"]
Subject = Annotated[str, msgspec.Meta(max_length=SUBJECT_MAX * 4)]  # cleaned to SUBJECT_MAX
Tag = Annotated[str, msgspec.Meta(max_length=TAG_MAX * 4)]  # cleaned (service.clean_tags)
Tags = Annotated[list[Tag], msgspec.Meta(max_length=TAGS_MAX * 4)]
Id = Annotated[int, msgspec.Meta(ge=1, lt=2**62)]


class TicketCreate(msgspec.Struct, forbid_unknown_fields=True):
    subject: Subject
    # One of the two: the conversation the ticket is raised from (its customer, team and
    # priority unless given), or the customer.
    conversation_id: Id | None = None
    customer_id: Id | None = None
    type: TypeName = "question"
    priority: PriorityName | None = None
    assignee_id: Id | None = None
    team_id: Id | None = None
    tags: Tags = []


class TicketUpdate(msgspec.Struct, forbid_unknown_fields=True):
    subject: Subject | msgspec.UnsetType = msgspec.UNSET
    type: TypeName | msgspec.UnsetType = msgspec.UNSET
    status: StatusName | msgspec.UnsetType = msgspec.UNSET
    priority: PriorityName | msgspec.UnsetType = msgspec.UNSET
    assignee_id: Id | msgspec.UnsetType | None = msgspec.UNSET
    team_id: Id | msgspec.UnsetType | None = msgspec.UNSET
    tags: Tags | msgspec.UnsetType = msgspec.UNSET


def _refused(exc: TicketError) -> ClientException:
    """The service's message starts with the field it is about ("subject: ...")."""
    message = str(exc)
    field = message.split(":", 1)[0] if ":" in message else None
    extra = {"field": field} if field and field.isidentifier() else None
    return ClientException(message, extra=extra)


async def _check_refs(session: AsyncSession, assignee_id: Any, team_id: Any) -> None:
    if isinstance(assignee_id, int):
        agent = await session.get(Agent, assignee_id)
        if agent is None or not agent.is_active:
            raise ClientException(
                f"assignee_id: no active agent {assignee_id}", extra={"field": "assignee_id"}
            )
    if isinstance(team_id, int) and await session.get(Team, team_id) is None:
        raise ClientException(f"team_id: no team {team_id}", extra={"field": "team_id"})


async def merged_family(session: AsyncSession, customer_id: int) -> list[int]:
    """The customer that now stands for ``customer_id`` and every customer merged into it
    (their tickets move to it by a job shortly after the merge: until then they are found)."""
    customer = await session.get(Customer, customer_id)
    if customer is None:
        return [customer_id]
    survivor = await follow_merges(session, customer)
    family, frontier = [survivor.id], [survivor.id]
    for _ in range(MAX_MERGE_CHAIN):
        frontier = list(
            (
                await session.scalars(
                    select(Customer.id).where(Customer.merged_into_id.in_(frontier))
                )
            ).all()
        )
        if not frontier:
            break
        family.extend(frontier)
    return family


async def _views(session: AsyncSession, tickets: list[Ticket]) -> list[dict[str, Any]]:
    """Ticket views with ``assignee_name`` (what a list shows; the console cannot list agents)."""
    ids = {t.assignee_id for t in tickets} - {None}
    names = (
        dict((await session.execute(select(Agent.id, Agent.name).where(Agent.id.in_(ids)))).all())
        if ids
        else {}
    )
    return [{**ticket_view(t), "assignee_name": names.get(t.assignee_id or 0)} for t in tickets]


async def _visible_ticket(session: AsyncSession, agent: Agent, ticket_id: int) -> Ticket:
    query = select(Ticket).where(Ticket.id == ticket_id)
    rule = await ticket_visibility(session, agent)
    if rule is not None:
        query = query.where(rule)
    ticket = await session.scalar(query)
    if ticket is None:
        raise NotFoundException("ticket not found")
    return ticket


class TicketController(Controller):
    path = "/api/v1/tickets"
    tags = ["tickets"]

    @post("/")
    async def raise_ticket(
        self, request: Request[Any, Any, Any], data: JSONBody[TicketCreate]
    ) -> Response[dict[str, Any]]:
        """Raise a ticket from a conversation (``conversation_id``) or for a customer
        (``customer_id``). With an assignee it starts ``open``, else ``new``."""
        rt = runtime_of(request)
        agent = current_agent(request)
        async with rt.db.write() as session:
            if data.conversation_id is not None:
                if await session.get(Conversation, data.conversation_id) is None:
                    raise ClientException(
                        f"conversation_id: no conversation {data.conversation_id}",
                        extra={"field": "conversation_id"},
                    )
                # One the caller may not see: 403, as the conversation itself answers.
                await visible_conversation(session, agent, data.conversation_id)
            await _check_refs(session, data.assignee_id, data.team_id)
            try:
                ticket = await create_ticket(
                    session,
                    clock=rt.clock,
                    subject=data.subject,
                    customer_id=data.customer_id,
                    conversation_id=data.conversation_id,
                    type=TicketType(data.type),
                    priority=Priority[data.priority] if data.priority else None,
                    assignee_id=data.assignee_id,
                    team_id=data.team_id,
                    tags=data.tags,
                    acting_agent_id=agent.id,
                )
            except LookupError as exc:
                field = "conversation_id" if "conversation" in str(exc) else "customer_id"
                raise ClientException(f"{field}: {exc}", extra={"field": field}) from None
            except TicketError as exc:
                raise _refused(exc) from None
            (view,) = await _views(session, [ticket])
        await rt.committed()
        return Response(view, status_code=201)

    @get("/")
    async def list_tickets(
        self,
        request: Request[Any, Any, Any],
        customer_id: FromQuery[int | None] = None,
        conversation_id: FromQuery[int | None] = None,
        status: FromQuery[StatusName | None] = None,
        assignee_id: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
        offset: FromQuery[int] = 0,
    ) -> Page:
        """Tickets the caller may see, newest first. ``customer_id`` includes the customers
        merged into that one; ``assignee_id`` is an agent id, ``me`` or ``none``."""
        rt = runtime_of(request)
        agent = current_agent(request)
        limit, offset = clamp(limit, offset)
        query = select(Ticket)
        if conversation_id is not None:
            query = query.where(Ticket.conversation_id == conversation_id)
        if status:
            query = query.where(Ticket.status == status)
        if assignee_id == "me":
            query = query.where(Ticket.assignee_id == agent.id)
        elif assignee_id == "none":
            query = query.where(Ticket.assignee_id.is_(None))
        elif assignee_id:
            if not (assignee_id.isascii() and assignee_id.isdigit() and len(assignee_id) < 19):
                raise ClientException(
                    "assignee_id: an agent id, 'me' or 'none'", extra={"field": "assignee_id"}
                )
            query = query.where(Ticket.assignee_id == int(assignee_id))
        async with rt.db.read() as session:
            if customer_id is not None:
                query = query.where(
                    Ticket.customer_id.in_(await merged_family(session, customer_id))
                )
            rule = await ticket_visibility(session, agent)
            if rule is not None:
                query = query.where(rule)
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = list(
                (
                    await session.scalars(
                        query.order_by(Ticket.created_at.desc(), Ticket.id.desc())
                        .limit(limit)
                        .offset(offset)
                    )
                ).all()
            )
            items = await _views(session, rows)
        return Page(items, total or 0, limit, offset)

    @get("/{ticket_id:int}")
    async def get_ticket(
        self, request: Request[Any, Any, Any], ticket_id: FromPath[int]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            ticket = await _visible_ticket(session, current_agent(request), ticket_id)
            (view,) = await _views(session, [ticket])
            return view

    @patch("/{ticket_id:int}")
    async def update_ticket(
        self,
        request: Request[Any, Any, Any],
        ticket_id: FromPath[int],
        data: JSONBody[TicketUpdate],
    ) -> dict[str, Any]:
        """Change subject, type, status, priority, assignee, team or tags (one
        ``ticket.updated`` event naming the changes). A closed ticket is read-only: 409."""
        rt = runtime_of(request)
        agent = current_agent(request)

        def given(value: Any) -> Any:
            return None if value is msgspec.UNSET else value

        async with rt.db.write() as session:
            ticket = await _visible_ticket(session, agent, ticket_id)
            if ticket.status == TicketStatus.closed:
                raise ClientException(
                    "the ticket is closed: raise a new ticket to follow it up", status_code=409
                )
            await _check_refs(session, data.assignee_id, data.team_id)
            changes: dict[str, Any] = {}
            if data.assignee_id is not msgspec.UNSET:
                changes["assignee_id"] = data.assignee_id
            if data.team_id is not msgspec.UNSET:
                changes["team_id"] = data.team_id
            try:
                await change_ticket(
                    session,
                    ticket,
                    clock=rt.clock,
                    acting_agent_id=agent.id,
                    status=None if data.status is msgspec.UNSET else TicketStatus(data.status),
                    priority=None if data.priority is msgspec.UNSET else Priority[data.priority],
                    type=None if data.type is msgspec.UNSET else TicketType(data.type),
                    subject=given(data.subject),
                    tags=given(data.tags),
                    **changes,
                )
            except TicketError as exc:
                raise _refused(exc) from None
            (view,) = await _views(session, [ticket])
        await rt.committed()
        return view


route_handlers: list[Any] = [TicketController]
