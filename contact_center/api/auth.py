"""Sign-in with email and password for an API token; sign-out revokes it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.params import JSONBody

from contact_center.api.common import check_locale, check_timezone, current_agent, runtime_of
from contact_center.auth import (
    LoginThrottle,
    authenticate_password,
    issue_token,
    revoke,
)
from contact_center.models import Agent, AuthToken
from contact_center.views import agent_view


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: str = msgspec.field()
    password: str = msgspec.field()


class MeUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """What every agent may change about themselves (the rest is an admin's)."""

    locale: str | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET


throttle = LoginThrottle()


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post("/login", exclude_from_auth=True, status_code=200)
    async def login(
        self, request: Request[Any, Any, Any], data: JSONBody[LoginBody]
    ) -> dict[str, Any]:
        """Exchange email and password for a bearer token."""
        rt = runtime_of(request)
        email = data.email.strip().lower()[:254]
        client = request.client.host if request.client else "?"
        keys = (f"email:{email}", f"ip:{client}")
        if await throttle.blocked(rt.settings.redis_url, *keys):
            raise TooManyRequestsException("too many failed sign-ins; wait a few minutes")
        async with rt.db.write() as session:
            agent = await authenticate_password(session, email, data.password[:1024])
            if agent is None:
                await throttle.failed(rt.settings.redis_url, *keys)
                raise NotAuthorizedException("wrong email or password")
            token = await issue_token(session, agent, rt=rt)
            view = agent_view(agent)
        await throttle.succeeded(rt.settings.redis_url, keys[0])
        return {"token": token, "agent": view}

    @post("/logout", status_code=200)
    async def logout(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Revoke the token used for this request (its websockets close)."""
        rt = runtime_of(request)
        auth = request.auth
        assert isinstance(auth, AuthToken)
        await revoke(rt, auth.id)
        return {"ok": True}

    @get("/me")
    async def me(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rt = runtime_of(request)
        async with rt.db.read() as session:
            from contact_center.api.common import team_ids

            agent = current_agent(request)
            return agent_view(agent, await team_ids(session, agent))

    @patch("/me")
    async def update_me(
        self, request: Request[Any, Any, Any], data: JSONBody[MeUpdate]
    ) -> dict[str, Any]:
        """Change your own interface language and time zone (400 names a bad field)."""
        rt = runtime_of(request)
        from contact_center.api.common import team_ids

        locale = None if data.locale is msgspec.UNSET else check_locale(data.locale)
        zone = None if data.timezone is msgspec.UNSET else check_timezone(data.timezone)
        async with rt.db.write() as session:
            agent = await session.get(Agent, current_agent(request).id)
            assert agent is not None
            if locale is not None:
                agent.locale = locale
            if zone is not None:
                agent.timezone = zone
            await session.flush()
            return agent_view(agent, await team_ids(session, agent))
