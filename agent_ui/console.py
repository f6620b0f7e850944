"""The agent console at ``/agent``: sign-in, sign-out and the console page.

Server-rendered Jinja2 pages (autoescaped) with small static ES modules, no build step. The
session is an ``AuthToken`` of kind ``session`` in the ``cc_session`` cookie (HttpOnly,
SameSite=Lax, Secure when CC_PUBLIC_URL is https); the console's websocket and API calls carry
it. Every state-changing request authenticated by that cookie must also carry the
``cc_csrf`` cookie's value (a form field here, the ``X-CSRF-Token`` header on the API: see
``auth.py``).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

import msgspec
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath
from litestar.response import Redirect

from agent_ui import i18n
from contact_center.api.auth import throttle
from contact_center.api.common import zones
from contact_center.auth import (
    CSRF_COOKIE,
    MIN_PASSWORD,
    SESSION_COOKIE,
    agent_for_token,
    authenticate_password,
    csrf_ok,
    hash_password,
    invite_for,
    issue_token,
    revoke,
)
from contact_center.models import Agent, Role
from contact_center.runtime import Runtime

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
# What the console's pages may load: only this origin (no inline script at all).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginForm(msgspec.Struct):
    email: str = ""
    password: str = ""
    csrf: str = ""
    next: str = ""
    conversation: str = ""  # from a /agent#conversation-N link (login.js)


# Where a sign-in may continue (a fixed list: never an address taken from the request).
LANDING_PAGES = ("/agent", "/supervisor")


def _landing(value: str | None) -> str:
    return value if value in LANDING_PAGES else "/agent"


def _conversation_link(value: str) -> str:
    """A conversation id to open after sign-in (digits only), else nothing."""
    return value if value.isascii() and value.isdigit() and len(value) <= 12 else ""


class PasswordForm(msgspec.Struct):
    password: str = ""
    confirm: str = ""
    csrf: str = ""


class CsrfForm(msgspec.Struct):
    csrf: str = ""


def _browser_language(request: Request[Any, Any, Any]) -> str:
    return i18n.pick(request.query_params.get("lang"), request.headers.get("accept-language"))


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _secure(request: Request[Any, Any, Any]) -> bool:
    """Cookies are ``Secure`` when the public address (``CC_PUBLIC_URL``) is https: behind a
    TLS-terminating proxy the request itself arrives over plain http."""
    public = _runtime(request).settings.public_url
    return public.lower().startswith("https://") or request.url.scheme == "https"


def _csrf_cookie(request: Request[Any, Any, Any]) -> tuple[str, list[Cookie]]:
    """The request's CSRF value, or a new one with the cookie that sets it."""
    value = request.cookies.get(CSRF_COOKIE)
    if value and 20 <= len(value) <= 100:
        return value, []
    value = secrets.token_urlsafe(32)
    cookie = Cookie(
        key=CSRF_COOKIE,
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return value, [cookie]


def _page(
    name: str,
    status: int = 200,
    cookies: list[Cookie] | None = None,
    *,
    lang: str = i18n.DEFAULT,
    **ctx: Any,
) -> Any:
    gettext = i18n.translations(lang).gettext
    return Response(
        templates.get_template(name).render(_=gettext, lang=lang, **ctx),
        media_type="text/html; charset=utf-8",
        status_code=status,
        headers=PAGE_HEADERS,
        cookies=cookies or [],
    )


@get("/agent/login", include_in_schema=False)
async def login_page(request: Request[Any, Any, Any]) -> Response[str]:
    csrf, cookies = _csrf_cookie(request)
    return _page(  # type: ignore[no-any-return]
        "login.html",
        cookies=cookies,
        lang=_browser_language(request),
        csrf=csrf,
        error=None,
        email="",
        next=_landing(request.query_params.get("next")),
    )


@post("/agent/login", include_in_schema=False, status_code=303)
async def login(
    request: Request[Any, Any, Any],
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Any:
    rt = _runtime(request)
    csrf, cookies = _csrf_cookie(request)
    email = data.email.strip().lower()[:254]
    if not csrf_ok(request, data.csrf):
        return _page(
            "login.html",
            403,
            cookies,
            lang=_browser_language(request),
            csrf=csrf,
            email=email,
            next=_landing(data.next),
            conversation=_conversation_link(data.conversation),
            error="Your sign-in form expired. Please try again.",
        )
    client = request.client.host if request.client else "?"
    keys = (f"email:{email}", f"ip:{client}")
    if await throttle.blocked(rt.settings.redis_url, *keys):
        return _page(
            "login.html",
            429,
            cookies,
            lang=_browser_language(request),
            csrf=csrf,
            email=email,
            next=_landing(data.next),
            conversation=_conversation_link(data.conversation),
            error="Too many failed sign-ins. Wait a few minutes and try again.",
        )
    async with rt.db.write() as session:
        agent = await authenticate_password(session, email, data.password[:1024])
        if agent is None:
            await throttle.failed(rt.settings.redis_url, *keys)
            return _page(
                "login.html",
                401,
                cookies,
                lang=_browser_language(request),
                csrf=csrf,
                email=email,
                next=_landing(data.next),
                conversation=_conversation_link(data.conversation),
                error="Wrong email or password.",
            )
        token = await issue_token(session, agent, rt=rt, kind="session")
    await throttle.succeeded(rt.settings.redis_url, keys[0])
    landing = _landing(data.next)
    conversation = _conversation_link(data.conversation)
    if landing == "/agent" and conversation:
        landing = f"/agent#conversation-{conversation}"
    return Redirect(
        landing,
        status_code=303,
        cookies=[_session_cookie(request, rt, token), *cookies],
    )


def _session_cookie(request: Request[Any, Any, Any], rt: Runtime, token: str) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=token,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        max_age=rt.settings.token_ttl_hours * 3600,
    )


INVALID_INVITE = "This invitation link is used, expired or unknown. Ask an admin for a new one."
SHORT_PASSWORD = f"Choose a password of at least {MIN_PASSWORD} characters."
# Messages the pages show (translated in the templates; listed for the catalogue check).
MESSAGES = (
    "Your sign-in form expired. Please try again.",
    "Too many failed sign-ins. Wait a few minutes and try again.",
    "Wrong email or password.",
    INVALID_INVITE,
    SHORT_PASSWORD,
    "The form expired. Please try again.",
    "The two passwords differ.",
)


@get("/agent/invite/{token:str}", include_in_schema=False)
async def invite_page(request: Request[Any, Any, Any], token: FromPath[str]) -> Any:
    rt = _runtime(request)
    csrf, cookies = _csrf_cookie(request)
    async with rt.db.read() as session:
        invite = await invite_for(session, token, rt)
        agent = await session.get(Agent, invite.agent_id) if invite else None
    if agent is None:
        lang = _browser_language(request)
        return _page(
            "invite.html", 404, cookies, lang=lang, csrf=csrf, agent=None, error=INVALID_INVITE
        )
    lang = i18n.pick(agent.locale, request.headers.get("accept-language"))
    return _page("invite.html", cookies=cookies, lang=lang, csrf=csrf, agent=agent, error=None)


@post("/agent/invite/{token:str}", include_in_schema=False, status_code=303)
async def accept_invite(
    request: Request[Any, Any, Any],
    token: FromPath[str],
    data: Annotated[PasswordForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Any:
    """Set the password from an invitation (once) and sign in."""
    rt = _runtime(request)
    csrf, cookies = _csrf_cookie(request)
    async with rt.db.write() as session:
        invite = await invite_for(session, token, rt)
        agent = await session.get(Agent, invite.agent_id) if invite else None
        problem = None
        if invite is None or agent is None:
            lang = _browser_language(request)
            return _page(
                "invite.html", 404, cookies, lang=lang, csrf=csrf, agent=None, error=INVALID_INVITE
            )
        if not csrf_ok(request, data.csrf):
            problem = "The form expired. Please try again."
        elif not MIN_PASSWORD <= len(data.password) <= 1024:
            problem = SHORT_PASSWORD
        elif data.password != data.confirm:
            problem = "The two passwords differ."
        if problem:
            lang = i18n.pick(agent.locale, request.headers.get("accept-language"))
            return _page(
                "invite.html", 400, cookies, lang=lang, csrf=csrf, agent=agent, error=problem
            )
        agent.password_hash = hash_password(data.password)
        invite.revoked_at = rt.clock.now()  # used: the link works once
        session_token = await issue_token(session, agent, rt=rt, kind="session")
    return Redirect(
        "/agent", status_code=303, cookies=[_session_cookie(request, rt, session_token), *cookies]
    )


@post("/agent/logout", include_in_schema=False, status_code=303)
async def logout(
    request: Request[Any, Any, Any],
    data: Annotated[CsrfForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Any:
    rt = _runtime(request)
    if not csrf_ok(request, data.csrf):
        return Response("the form expired; reload the page", status_code=403)
    token = request.cookies.get(SESSION_COOKIE)
    found = await agent_for_token(rt, token) if token else None
    if found is not None:
        await revoke(rt, found[1].id)
    return Redirect(
        "/agent/login",
        status_code=303,
        cookies=[Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True)],
    )


@get("/agent", include_in_schema=False)
async def console_page(request: Request[Any, Any, Any]) -> Any:
    rt = _runtime(request)
    token = request.cookies.get(SESSION_COOKIE)
    found = await agent_for_token(rt, token) if token else None
    if found is None:
        return Redirect("/agent/login", status_code=303)
    agent = found[0]
    csrf, cookies = _csrf_cookie(request)
    lang = i18n.pick(agent.locale, request.headers.get("accept-language"))
    zone = agent.timezone if agent.timezone in zones() else "UTC"  # a bad zone never breaks it
    return _page(
        "console.html",
        cookies=cookies,
        lang=lang,
        csrf=csrf,
        agent=agent,
        timezone=zone,
        languages=[(code, i18n.language_name(code)) for code in i18n.LANGUAGES],
        strings=i18n.js_strings(lang),
        wallboard=Role(agent.role).rank >= Role.supervisor.rank,
    )


ASSETS = {
    "console.js": "text/javascript",
    "login.js": "text/javascript",
    "console.css": "text/css",
    "supervisor.js": "text/javascript",
    "supervisor.css": "text/css",
}


@get("/agent/static/{name:str}", include_in_schema=False, sync_to_thread=False)
def static_file(name: FromPath[str]) -> Response[bytes]:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundException("no such file")
    return Response(
        (STATIC / name).read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


route_handlers = [
    login_page,
    login,
    invite_page,
    accept_invite,
    logout,
    console_page,
    static_file,
]
