"""Shared pieces of the REST controllers: dependencies, pagination, visibility."""

from __future__ import annotations

import functools
import zoneinfo
from typing import Any

import msgspec
from babel import Locale, UnknownLocaleError
from litestar import Request
from litestar.exceptions import ClientException, NotFoundException, PermissionDeniedException
from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center.models import Agent, Conversation, Inbox, Role, TeamMember
from contact_center.runtime import Runtime

MAX_LIMIT = 200


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def current_agent(request: Request[Any, Any, Any]) -> Agent:
    user = request.user
    assert isinstance(user, Agent)
    return user


class Page(msgspec.Struct):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


@functools.cache
def zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: str, field: str = "timezone") -> str:
    """An IANA time zone name (``Europe/Istanbul``, ``UTC``), else a 400 naming the field."""
    if value not in zones():
        raise ClientException(f"{field}: not an IANA time zone (e.g. Europe/Istanbul or UTC)")
    return value


def check_locale(value: str, field: str = "locale") -> str:
    """A language tag babel knows (``tr``, ``en_US``; a hyphen is taken as ``_``)."""
    tag = value.strip().replace("-", "_")
    try:
        if not 0 < len(tag) <= 16:
            raise ValueError(tag)
        Locale.parse(tag)
    except (ValueError, TypeError, UnknownLocaleError):
        raise ClientException(f"{field}: not a language tag (e.g. en or tr)") from None
    return tag


def clamp(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(limit, MAX_LIMIT)), max(0, offset)


async def team_ids(session: AsyncSession, agent: Agent) -> list[int]:
    return list(
        (
            await session.scalars(select(TeamMember.team_id).where(TeamMember.agent_id == agent.id))
        ).all()
    )


async def visibility(session: AsyncSession, agent: Agent) -> ColumnElement[bool] | None:
    """None when the agent sees every conversation (supervisors and admins); else the filter:
    assigned to them, in one of their teams, or in an inbox open to all or to their teams."""
    if Role(agent.role).rank >= Role.supervisor.rank:
        return None
    teams = await team_ids(session, agent)
    open_inboxes = select(Inbox.id).where(
        or_(Inbox.team_id.is_(None), Inbox.team_id.in_(teams) if teams else false())
    )
    return or_(
        Conversation.assignee_id == agent.id,
        Conversation.team_id.in_(teams) if teams else false(),
        (Conversation.team_id.is_(None) & Conversation.inbox_id.in_(open_inboxes)),
    )


async def visible_conversation(
    session: AsyncSession, agent: Agent, conversation_id: int
) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFoundException("conversation not found")
    rule = await visibility(session, agent)
    if rule is not None:
        allowed = await session.scalar(
            select(Conversation.id).where(Conversation.id == conversation_id, rule)
        )
        if allowed is None:
            raise PermissionDeniedException("this conversation belongs to another team")
    return conversation
