"""Admin CRUD for inboxes, agents and teams (supervisors may read agents and teams)."""

from __future__ import annotations

import re
import secrets
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, JSONBody
from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from contact_center.api.common import check_locale, check_timezone, current_agent, runtime_of
from contact_center.auth import hash_password, issue_invite, require
from contact_center.calendars import Calendar, CalendarError
from contact_center.inbox_config import InboxConfigError, check_inbox
from contact_center.models import Agent, ChannelKind, Inbox, Role, Team, TeamMember
from contact_center.views import agent_view, inbox_view, team_view, ts

_INBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class InboxCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: ChannelKind
    address: str
    id: str | None = None
    credentials: dict[str, str] = {}
    api_base_url: str | None = None
    settings: dict[str, Any] = {}
    team_id: int | None = None


class InboxUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    address: str | msgspec.UnsetType = msgspec.UNSET
    # Only the keys given change; a key set to null is removed.
    credentials: dict[str, str | None] | msgspec.UnsetType = msgspec.UNSET
    api_base_url: str | msgspec.UnsetType | None = msgspec.UNSET
    settings: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    team_id: int | msgspec.UnsetType | None = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET


def _check_url(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ClientException("api_base_url must be an http(s) URL")


def _check_settings(settings: dict[str, Any]) -> None:
    """Settings the product reads: a web chat's business hours and offline message."""
    if settings.get("business_hours") is not None:
        try:
            Calendar.from_dict(settings["business_hours"])
        except CalendarError as exc:
            raise ClientException(f"settings.business_hours.{exc}") from None
    offline = settings.get("offline_message")
    if offline is not None and (not isinstance(offline, str) or len(offline) > 1000):
        raise ClientException("settings.offline_message: text of at most 1000 characters")


async def _check_team(session: Any, team_id: int | None) -> None:
    if team_id is not None and await session.get(Team, team_id) is None:
        raise ClientException(f"no such team: {team_id}")


def _check_config(kind: str, settings: dict[str, Any], credentials: dict[str, Any]) -> None:
    try:
        check_inbox(kind, settings, credentials)
    except InboxConfigError as exc:
        raise ClientException(str(exc)) from None


class InboxController(Controller):
    path = "/api/v1/inboxes"
    tags = ["admin"]
    guards = [require(Role.admin)]

    @get("/")
    async def list_inboxes(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            return [
                inbox_view(i) for i in (await session.scalars(select(Inbox).order_by(Inbox.id)))
            ]

    @post("/")
    async def create_inbox(
        self, request: Request[Any, Any, Any], data: JSONBody[InboxCreate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        inbox_id = data.id or f"{data.kind.value}-{secrets.token_hex(3)}"
        if not _INBOX_ID.match(inbox_id):
            raise ClientException("id: lowercase letters, digits and dashes, at most 64")
        _check_url(data.api_base_url)
        _check_settings(data.settings)
        _check_config(data.kind.value, data.settings, data.credentials)
        inbox = Inbox(
            id=inbox_id,
            name=data.name.strip()[:200],
            kind=data.kind.value,
            address=data.address.strip(),
            credentials=data.credentials,
            api_base_url=data.api_base_url,
            settings=data.settings,
            team_id=data.team_id,
            is_active=True,
            created_at=rt.clock.now(),
        )
        try:
            async with rt.db.write() as session:
                await _check_team(session, data.team_id)
                session.add(inbox)
        except IntegrityError:
            raise ClientException(
                "an inbox with this id, or this kind and address, exists", status_code=409
            ) from None
        return inbox_view(inbox)

    @get("/{inbox_id:str}")
    async def get_inbox(
        self, request: Request[Any, Any, Any], inbox_id: FromPath[str]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            inbox = await session.get(Inbox, inbox_id)
            if inbox is None:
                raise NotFoundException("inbox not found")
            return inbox_view(inbox)

    @patch("/{inbox_id:str}")
    async def update_inbox(
        self, request: Request[Any, Any, Any], inbox_id: FromPath[str], data: JSONBody[InboxUpdate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        try:
            async with rt.db.write() as session:
                inbox = await session.get(Inbox, inbox_id)
                if inbox is None:
                    raise NotFoundException("inbox not found")
                if data.team_id is not msgspec.UNSET:
                    await _check_team(session, data.team_id)
                if data.settings is not msgspec.UNSET:
                    _check_settings(data.settings)
                for field in ("name", "address", "settings", "team_id", "is_active"):
                    value = getattr(data, field)
                    if value is not msgspec.UNSET:
                        setattr(inbox, field, value)
                if data.api_base_url is not msgspec.UNSET:
                    _check_url(data.api_base_url)
                    inbox.api_base_url = data.api_base_url
                if data.credentials is not msgspec.UNSET:
                    merged = dict(inbox.credentials)
                    for key, value in data.credentials.items():
                        if value is None:
                            merged.pop(key, None)
                        else:
                            merged[key] = value
                    inbox.credentials = merged
                _check_config(inbox.kind, inbox.settings, inbox.credentials)
                return inbox_view(inbox)
        except IntegrityError:
            raise ClientException(
                "an inbox with this kind and address exists", status_code=409
            ) from None

    @delete("/{inbox_id:str}", status_code=200)
    async def deactivate_inbox(
        self, request: Request[Any, Any, Any], inbox_id: FromPath[str]
    ) -> dict[str, Any]:
        """Inboxes hold history, so deleting one deactivates it (it stops receiving)."""
        async with runtime_of(request).db.write() as session:
            inbox = await session.get(Inbox, inbox_id)
            if inbox is None:
                raise NotFoundException("inbox not found")
            inbox.is_active = False
            return inbox_view(inbox)


class AgentCreate(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    name: str
    role: Role = Role.agent
    password: str | None = None
    languages: list[str] = []
    timezone: str = "UTC"
    locale: str = "en"
    team_ids: list[int] = []
    skills: dict[str, int] = {}
    capacity: dict[str, int] = {}
    voice_blocks_chat: bool = True


ROUTING_CLASSES = ("voice", "chat", "email")


def _check_routing(skills: dict[str, int] | None, capacity: dict[str, int] | None) -> None:
    for name, level in (skills or {}).items():
        if not (0 < len(name) <= 64) or not 1 <= level <= 10:
            raise ClientException(f"skills: {name!r} needs a name and a level from 1 to 10")
    for cls, n in (capacity or {}).items():
        if cls not in ROUTING_CLASSES or not 0 <= n <= 100:
            raise ClientException(
                f"capacity: {cls!r} must be one of {', '.join(ROUTING_CLASSES)} with 0 to 100"
            )


class AgentUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    role: Role | msgspec.UnsetType = msgspec.UNSET
    password: str | msgspec.UnsetType = msgspec.UNSET
    languages: list[str] | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET
    locale: str | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET
    team_ids: list[int] | msgspec.UnsetType = msgspec.UNSET
    skills: dict[str, int] | msgspec.UnsetType = msgspec.UNSET
    capacity: dict[str, int] | msgspec.UnsetType = msgspec.UNSET
    voice_blocks_chat: bool | msgspec.UnsetType = msgspec.UNSET


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise ClientException("password: at least 8 characters")


async def _set_teams(session: Any, agent_id: int, team_ids: list[int]) -> None:
    known = set((await session.scalars(select(Team.id).where(Team.id.in_(team_ids)))).all())
    if missing := set(team_ids) - known:
        raise ClientException(f"no such team: {sorted(missing)}")
    await session.execute(sql_delete(TeamMember).where(TeamMember.agent_id == agent_id))
    session.add_all(TeamMember(team_id=t, agent_id=agent_id) for t in sorted(known))
    await session.flush()


class AgentController(Controller):
    path = "/api/v1/agents"
    tags = ["admin"]

    @get("/", guards=[require(Role.supervisor)])
    async def list_agents(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            return [
                agent_view(a) for a in (await session.scalars(select(Agent).order_by(Agent.id)))
            ]

    @post("/", guards=[require(Role.admin)])
    async def create_agent(
        self, request: Request[Any, Any, Any], data: JSONBody[AgentCreate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        if data.password is not None:
            _check_password(data.password)
        email = data.email.strip().lower()
        if "@" not in email:
            raise ClientException("email: not an email address")
        _check_routing(data.skills, data.capacity)
        check_timezone(data.timezone)
        locale = check_locale(data.locale)
        try:
            async with rt.db.write() as session:
                agent = Agent(
                    email=email,
                    name=data.name.strip()[:200],
                    role=data.role.value,
                    password_hash=hash_password(data.password) if data.password else None,
                    languages=data.languages,
                    timezone=data.timezone,
                    locale=locale,
                    skills=data.skills,
                    capacity=data.capacity,
                    voice_blocks_chat=data.voice_blocks_chat,
                    is_active=True,
                    created_at=rt.clock.now(),
                )
                session.add(agent)
                await session.flush()
                await _set_teams(session, agent.id, data.team_ids)
                await session.refresh(agent, ["teams"])
                return agent_view(agent)
        except IntegrityError:
            raise ClientException("an agent with this email exists", status_code=409) from None

    @get("/{agent_id:int}", guards=[require(Role.supervisor)])
    async def get_agent(
        self, request: Request[Any, Any, Any], agent_id: FromPath[int]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            agent = await session.get(Agent, agent_id)
            if agent is None:
                raise NotFoundException("agent not found")
            return agent_view(agent)

    @post("/{agent_id:int}/invite", guards=[require(Role.admin)], status_code=201)
    async def invite_agent(
        self, request: Request[Any, Any, Any], agent_id: FromPath[int]
    ) -> dict[str, Any]:
        """A one-time link (72 hours) for the agent to set their password and sign in; a new
        invite ends the agent's earlier unused ones. Hand it over yourself (it is a secret)."""
        rt = runtime_of(request)
        async with rt.db.write() as session:
            agent = await session.get(Agent, agent_id)
            if agent is None:
                raise NotFoundException("no such agent")
            token, expires = await issue_invite(session, agent, rt=rt)
        return {
            "agent_id": agent_id,
            "url": f"{rt.settings.public_url.rstrip('/')}/agent/invite/{token}",
            "expires_at": ts(expires),
        }

    @patch("/{agent_id:int}", guards=[require(Role.admin)])
    async def update_agent(
        self, request: Request[Any, Any, Any], agent_id: FromPath[int], data: JSONBody[AgentUpdate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        me = current_agent(request)
        async with rt.db.write() as session:
            agent = await session.get(Agent, agent_id)
            if agent is None:
                raise NotFoundException("agent not found")
            if agent.id == me.id and (
                data.role not in (msgspec.UNSET, Role.admin) or data.is_active is False
            ):
                raise ClientException("you cannot demote or deactivate yourself")
            _check_routing(
                data.skills if data.skills is not msgspec.UNSET else None,
                data.capacity if data.capacity is not msgspec.UNSET else None,
            )
            if data.timezone is not msgspec.UNSET:
                check_timezone(data.timezone)
            if data.locale is not msgspec.UNSET:
                data.locale = check_locale(data.locale)
            for field in (
                "name",
                "languages",
                "timezone",
                "locale",
                "is_active",
                "skills",
                "capacity",
                "voice_blocks_chat",
            ):
                value = getattr(data, field)
                if value is not msgspec.UNSET:
                    setattr(agent, field, value)
            if data.role is not msgspec.UNSET:
                agent.role = data.role.value
            if data.password is not msgspec.UNSET:
                _check_password(data.password)
                agent.password_hash = hash_password(data.password)
            if data.team_ids is not msgspec.UNSET:
                await _set_teams(session, agent.id, data.team_ids)
            await session.flush()
            await session.refresh(agent, ["teams"])
            return agent_view(agent)


class TeamBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str = ""
    member_ids: list[int] = []


class TeamUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    member_ids: list[int] | msgspec.UnsetType = msgspec.UNSET


async def _set_members(session: Any, team_id: int, member_ids: list[int]) -> None:
    known = set((await session.scalars(select(Agent.id).where(Agent.id.in_(member_ids)))).all())
    if missing := set(member_ids) - known:
        raise ClientException(f"no such agent: {sorted(missing)}")
    await session.execute(sql_delete(TeamMember).where(TeamMember.team_id == team_id))
    session.add_all(TeamMember(team_id=team_id, agent_id=a) for a in sorted(known))
    await session.flush()


class TeamController(Controller):
    path = "/api/v1/teams"
    tags = ["admin"]

    @get("/", guards=[require(Role.supervisor)])
    async def list_teams(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            return [team_view(t) for t in (await session.scalars(select(Team).order_by(Team.id)))]

    @post("/", guards=[require(Role.admin)])
    async def create_team(
        self, request: Request[Any, Any, Any], data: JSONBody[TeamBody]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        try:
            async with rt.db.write() as session:
                team = Team(
                    name=data.name.strip()[:120],
                    description=data.description,
                    created_at=rt.clock.now(),
                )
                session.add(team)
                await session.flush()
                await _set_members(session, team.id, data.member_ids)
                await session.refresh(team, ["members"])
                return team_view(team)
        except IntegrityError:
            raise ClientException("a team with this name exists", status_code=409) from None

    @get("/{team_id:int}", guards=[require(Role.supervisor)])
    async def get_team(
        self, request: Request[Any, Any, Any], team_id: FromPath[int]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            team = await session.get(Team, team_id)
            if team is None:
                raise NotFoundException("team not found")
            return team_view(team)

    @patch("/{team_id:int}", guards=[require(Role.admin)])
    async def update_team(
        self, request: Request[Any, Any, Any], team_id: FromPath[int], data: JSONBody[TeamUpdate]
    ) -> dict[str, Any]:
        try:
            async with runtime_of(request).db.write() as session:
                team = await session.get(Team, team_id)
                if team is None:
                    raise NotFoundException("team not found")
                if data.name is not msgspec.UNSET:
                    team.name = data.name.strip()[:120]
                if data.description is not msgspec.UNSET:
                    team.description = data.description
                if data.member_ids is not msgspec.UNSET:
                    await _set_members(session, team.id, data.member_ids)
                await session.flush()
                await session.refresh(team, ["members"])
                return team_view(team)
        except IntegrityError:
            raise ClientException("a team with this name exists", status_code=409) from None

    @delete("/{team_id:int}", guards=[require(Role.admin)], status_code=204)
    async def delete_team(self, request: Request[Any, Any, Any], team_id: FromPath[int]) -> None:
        async with runtime_of(request).db.write() as session:
            team = await session.get(Team, team_id)
            if team is None:
                raise NotFoundException("team not found")
            await session.delete(team)
