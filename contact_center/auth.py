"""Authentication (bearer tokens and session cookies, both stored hashed) and role guards."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center.models import Agent, AuthToken, Role

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

SESSION_COOKIE = "cc_session"
CSRF_COOKIE = "cc_csrf"
CSRF_HEADER = "x-csrf-token"
REVOKED_CHANNEL = "auth.revoked"  # bus: {"token_id": N} when a session or token is revoked
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_KINDS = ("api", "session")  # tokens that authenticate requests ("invite" does not)
INVITE_HOURS = 72
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verifying against a real hash when the email is unknown keeps response times alike.
_DUMMY_HASH = _hasher.hash("not-a-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def authenticate_password(session: AsyncSession, email: str, password: str) -> Agent | None:
    agent = await session.scalar(select(Agent).where(Agent.email == email.strip().lower()))
    ok = verify_password(agent.password_hash if agent else None, password)
    if agent is None or not ok or not agent.is_active:
        return None
    return agent


async def issue_token(
    session: AsyncSession, agent: Agent, *, rt: Runtime, kind: str = "api"
) -> str:
    token = secrets.token_urlsafe(32)
    now = rt.clock.now()
    session.add(
        AuthToken(
            agent_id=agent.id,
            token_hash=token_digest(token),
            kind=kind,
            created_at=now,
            expires_at=now + timedelta(hours=rt.settings.token_ttl_hours),
        )
    )
    agent.last_login_at = now
    await session.flush()
    return token


async def agent_for_token(rt: Runtime, token: str) -> tuple[Agent, AuthToken] | None:
    async with rt.db.read() as session:
        row = (
            await session.execute(
                select(Agent, AuthToken)
                .join(AuthToken, AuthToken.agent_id == Agent.id)
                .where(
                    AuthToken.token_hash == token_digest(token),
                    AuthToken.kind.in_(LOGIN_KINDS),
                )
            )
        ).first()
    if row is None:
        return None
    agent, auth = row
    if auth.revoked_at is not None or auth.expires_at <= rt.clock.now() or not agent.is_active:
        return None
    return agent, auth


async def issue_invite(session: AsyncSession, agent: Agent, *, rt: Runtime) -> tuple[str, Any]:
    """A one-time link secret for ``agent`` to set their password (earlier unused invites of
    theirs end). Returns the secret and when it expires."""
    now = rt.clock.now()
    for old in await session.scalars(
        select(AuthToken).where(
            AuthToken.agent_id == agent.id,
            AuthToken.kind == "invite",
            AuthToken.revoked_at.is_(None),
        )
    ):
        old.revoked_at = now
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(hours=INVITE_HOURS)
    session.add(
        AuthToken(
            agent_id=agent.id,
            token_hash=token_digest(token),
            kind="invite",
            created_at=now,
            expires_at=expires,
        )
    )
    await session.flush()
    return token, expires


async def invite_for(session: AsyncSession, token: str, rt: Runtime) -> AuthToken | None:
    """The invite behind a link secret, if it is unused, unexpired and its agent active."""
    invite = await session.scalar(
        select(AuthToken)
        .where(AuthToken.token_hash == token_digest(token[:200]), AuthToken.kind == "invite")
        .with_for_update()
    )
    if invite is None or invite.revoked_at is not None or invite.expires_at <= rt.clock.now():
        return None
    agent = await session.get(Agent, invite.agent_id)
    return invite if agent is not None and agent.is_active else None


async def revoke(rt: Runtime, token_id: int) -> None:
    """End a token or session: it no longer authenticates, and its open websockets close."""
    async with rt.db.write() as session:
        row = await session.get(AuthToken, token_id, with_for_update=True)
        if row is not None and row.revoked_at is None:
            row.revoked_at = rt.clock.now()
    await rt.bus.publish(REVOKED_CHANNEL, {"token_id": token_id})


def credentials_from(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = (
        connection.query_params.get("token")
        if connection.scope["type"] == ScopeType.WEBSOCKET
        else None
    )
    return token or connection.cookies.get(SESSION_COOKIE)


def csrf_ok(connection: ASGIConnection[Any, Any, Any, Any], submitted: str | None) -> bool:
    """Double submit: the value sent with the form or header equals the ``cc_csrf`` cookie
    (which another site can neither read nor set)."""
    cookie = connection.cookies.get(CSRF_COOKIE)
    return bool(cookie and submitted and secrets.compare_digest(cookie, submitted))


def by_cookie(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the request's credentials are the session cookie (a browser sends it by itself)."""
    header = connection.headers.get("authorization", "")
    return not header.lower().startswith("bearer ") and bool(connection.cookies.get(SESSION_COOKIE))


class TokenAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = credentials_from(connection)
        if not token:
            raise NotAuthorizedException("sign in first: send Authorization: Bearer <token>")
        if (
            connection.scope["type"] == ScopeType.HTTP
            and connection.scope.get("method", "GET") not in SAFE_METHODS
            and by_cookie(connection)
            and not csrf_ok(connection, connection.headers.get(CSRF_HEADER))
        ):
            # The browser sent the session cookie by itself: the request must also prove it
            # comes from our page (cross-site request forgery otherwise).
            raise PermissionDeniedException("missing or wrong X-CSRF-Token header")
        rt: Runtime = connection.app.state.runtime
        found = await agent_for_token(rt, token)
        if found is None:
            raise NotAuthorizedException("the token is invalid, expired or revoked")
        return AuthenticationResult(user=found[0], auth=found[1])


def require(role: Role) -> Any:
    """A guard admitting agents whose role is ``role`` or above (admin > supervisor > agent)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        user = connection.scope.get("user")
        if not isinstance(user, Agent):
            raise NotAuthorizedException("sign in first")
        if Role(user.role).rank < role.rank:
            raise PermissionDeniedException(f"this needs the {role.value} role")

    guard.__name__ = f"require_{role.value}"
    return guard


class LoginThrottle:
    """At most ``limit`` failed sign-ins per key (email, client address) in ``window`` seconds.

    With Redis configured the failures are counted there (a sorted set per key, expiring with
    the window), so every web process behind a load balancer counts the same ones and a
    guesser gains nothing by spreading attempts over processes; embedded (one process) they
    are counted in memory."""

    PREFIX = "cc:login-failures:"

    def __init__(self, limit: int = 10, window: float = 900.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = time.monotonic()
        bucket = self._failures.setdefault(key, deque())
        while bucket and bucket[0] < now - self.window:
            bucket.popleft()
        return bucket

    @staticmethod
    def _redis(redis_url: str) -> Any:
        import redis.asyncio as aioredis

        # A client per call: sign-ins are rare, and a client is bound to its event loop.
        return aioredis.Redis.from_url(redis_url, socket_timeout=2)

    async def blocked(self, redis_url: str | None, *keys: str) -> bool:
        if not redis_url:
            return any(len(self._recent(k)) >= self.limit for k in keys)
        since = time.time() - self.window
        client = self._redis(redis_url)
        try:
            for key in keys:
                if await client.zcount(self.PREFIX + key, since, "+inf") >= self.limit:
                    return True
            return False
        finally:
            await client.aclose()

    async def failed(self, redis_url: str | None, *keys: str) -> None:
        if not redis_url:
            for key in keys:
                self._recent(key).append(time.monotonic())
            if len(self._failures) > 100_000:
                self._failures.clear()
            return
        now = time.time()
        client = self._redis(redis_url)
        try:
            async with client.pipeline(transaction=True) as pipe:
                for key in keys:
                    name = self.PREFIX + key
                    pipe.zadd(name, {secrets.token_hex(8): now})
                    pipe.zremrangebyscore(name, "-inf", now - self.window)
                    pipe.expire(name, int(self.window) + 1)
                await pipe.execute()
        finally:
            await client.aclose()

    async def succeeded(self, redis_url: str | None, key: str) -> None:
        if not redis_url:
            self._failures.pop(key, None)
            return
        client = self._redis(redis_url)
        try:
            await client.delete(self.PREFIX + key)
        finally:
            await client.aclose()
