"""Who sees a ticket (§16), as an SQL condition (the REST API) and as a check of a ticket's view
(the agent websocket's ``ticket.*`` events): the same rule in both shapes.

Supervisors and admins see every ticket. An agent sees a ticket that is assigned to them or to
one of their teams, whose conversation they can see (the conversations' rule,
``contact_center.api.common.visibility``), or that has neither a team nor a conversation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center.api.common import team_ids, visibility
from contact_center.models import Agent, Conversation, Role
from tickets.models import Ticket


def sees_everything(agent: Agent) -> bool:
    return Role(agent.role).rank >= Role.supervisor.rank


async def ticket_visibility(session: AsyncSession, agent: Agent) -> ColumnElement[bool] | None:
    """None when the agent sees every ticket; else the condition on ``Ticket``."""
    conversations = await visibility(session, agent)
    if conversations is None:
        return None
    teams = await team_ids(session, agent)
    return or_(
        Ticket.assignee_id == agent.id,
        Ticket.team_id.in_(teams) if teams else false(),
        Ticket.conversation_id.in_(select(Conversation.id).where(conversations)),
        Ticket.team_id.is_(None) & Ticket.conversation_id.is_(None),
    )


async def sees_ticket(
    agent: Agent,
    view: dict[str, Any],
    *,
    teams: Collection[int],
    sees_conversation: Callable[[int], Awaitable[bool]],
) -> bool:
    """The rule on a ticket's view (an event's data). A ``ticket.updated`` that took the
    ticket away from the agent (its assignee or team was theirs) is theirs to see too: their
    lists drop it."""
    if sees_everything(agent):
        return True
    changes = view.get("changes") or {}
    before = {field: (changes.get(field) or {}).get("from") for field in ("assignee_id", "team_id")}
    if agent.id in (view.get("assignee_id"), before["assignee_id"]):
        return True
    if any(team is not None and team in teams for team in (view.get("team_id"), before["team_id"])):
        return True
    conversation_id = view.get("conversation_id")
    if conversation_id is None:
        return view.get("team_id") is None
    return await sees_conversation(int(conversation_id))
