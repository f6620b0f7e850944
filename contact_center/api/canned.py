"""Canned responses: replies agents insert by shortcut (supervisors and admins manage them)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, JSONBody
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from contact_center.api.common import current_agent, runtime_of, team_ids
from contact_center.auth import require
from contact_center.models import CannedResponse, Role, Team
from contact_center.views import ts

SHORTCUT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class CannedBody(msgspec.Struct, forbid_unknown_fields=True):
    title: str
    shortcut: str
    body: str
    team_id: int | None = None


class CannedUpdate(msgspec.Struct, forbid_unknown_fields=True):
    title: str | msgspec.UnsetType = msgspec.UNSET
    shortcut: str | msgspec.UnsetType = msgspec.UNSET
    body: str | msgspec.UnsetType = msgspec.UNSET
    team_id: int | msgspec.UnsetType | None = msgspec.UNSET


def canned_view(c: CannedResponse) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "shortcut": c.shortcut,
        "body": c.body,
        "team_id": c.team_id,
        "created_at": ts(c.created_at),
        "updated_at": ts(c.updated_at),
    }


def _checked(title: str, shortcut: str, body: str) -> tuple[str, str, str]:
    title, shortcut, body = title.strip(), shortcut.strip().lower(), body.strip()
    if not 0 < len(title) <= 120:
        raise ClientException("title: 1 to 120 characters")
    if not SHORTCUT.match(shortcut):
        raise ClientException(
            "shortcut: 1 to 40 of a-z, 0-9, - and _, starting with a letter or digit"
        )
    if not 0 < len(body) <= 4000:
        raise ClientException("body: 1 to 4000 characters")
    return title, shortcut, body


class CannedResponseController(Controller):
    path = "/api/v1/canned-responses"
    tags = ["canned responses"]

    @get("/", guards=[require(Role.agent)])
    async def list_canned(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        """The ones the caller may use: everyone's and their teams' (all, for supervisors)."""
        agent = current_agent(request)
        async with runtime_of(request).db.read() as session:
            query = select(CannedResponse).order_by(CannedResponse.shortcut)
            if Role(agent.role).rank < Role.supervisor.rank:
                query = query.where(
                    or_(
                        CannedResponse.team_id.is_(None),
                        CannedResponse.team_id.in_(await team_ids(session, agent)),
                    )
                )
            return [canned_view(c) for c in await session.scalars(query)]

    @post("/", guards=[require(Role.supervisor)])
    async def create_canned(
        self, request: Request[Any, Any, Any], data: JSONBody[CannedBody]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        title, shortcut, body = _checked(data.title, data.shortcut, data.body)
        try:
            async with rt.db.write() as session:
                if data.team_id is not None and await session.get(Team, data.team_id) is None:
                    raise ClientException("no such team")
                canned = CannedResponse(
                    title=title,
                    shortcut=shortcut,
                    body=body,
                    team_id=data.team_id,
                    created_at=rt.clock.now(),
                    updated_at=rt.clock.now(),
                )
                session.add(canned)
                await session.flush()
                return canned_view(canned)
        except IntegrityError:
            raise ClientException("this shortcut is taken", status_code=409) from None

    @patch("/{canned_id:int}", guards=[require(Role.supervisor)])
    async def update_canned(
        self,
        request: Request[Any, Any, Any],
        canned_id: FromPath[int],
        data: JSONBody[CannedUpdate],
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        try:
            async with rt.db.write() as session:
                canned = await session.get(CannedResponse, canned_id)
                if canned is None:
                    raise NotFoundException("no such canned response")
                title, shortcut, body = _checked(
                    canned.title if data.title is msgspec.UNSET else data.title,
                    canned.shortcut if data.shortcut is msgspec.UNSET else data.shortcut,
                    canned.body if data.body is msgspec.UNSET else data.body,
                )
                if data.team_id is not msgspec.UNSET:
                    if data.team_id is not None and await session.get(Team, data.team_id) is None:
                        raise ClientException("no such team")
                    canned.team_id = data.team_id
                canned.title, canned.shortcut, canned.body = title, shortcut, body
                canned.updated_at = rt.clock.now()
                await session.flush()
                return canned_view(canned)
        except IntegrityError:
            raise ClientException("this shortcut is taken", status_code=409) from None

    @delete("/{canned_id:int}", guards=[require(Role.supervisor)], status_code=204)
    async def delete_canned(
        self, request: Request[Any, Any, Any], canned_id: FromPath[int]
    ) -> None:
        async with runtime_of(request).db.write() as session:
            canned = await session.get(CannedResponse, canned_id)
            if canned is None:
                raise NotFoundException("no such canned response")
            await session.delete(canned)
