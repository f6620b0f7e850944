"""The supervisors' wallboard: the page ``/supervisor`` and its websocket ``/ws/supervisor``.

Protocol reference: docs/supervisor-protocol.md. The page signs in like the console (the
session cookie; supervisors and admins only) and acts through the REST API with the console's
CSRF header: assign, transfer to a queue, priority, presence.

The socket streams two kinds of frames:

- **events** with the outbox position as ``id`` (``agent.state`` from ``presence.updated``,
  and ``sla.warning`` / ``sla.breached`` forwarded unchanged): a client that reconnects with
  ``?last_event_id=N`` (or sends ``resume``) gets every one after N, in order, none twice;
- **figures** (``metrics.snapshot``, then ``metrics.delta`` merge patches), which are state, not
  events: they carry no ``id``; on every connect and ``resume`` a fresh snapshot replaces what
  the client holds, which is exactly what replaying the missed deltas would have produced.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.response import Redirect

from agent_ui import i18n
from agent_ui.console import _csrf_cookie, _page, _runtime
from contact_center.auth import (
    REVOKED_CHANNEL,
    SESSION_COOKIE,
    agent_for_token,
    credentials_from,
)
from contact_center.models import Agent, Role
from contact_center.relay import EVENTS_CHANNEL
from contact_center.runtime import Runtime
from contact_center.wsutil import (
    Bucket,
    EventStream,
    FrameError,
    head_position,
    last_event_id,
    origin_allowed,
    serve_frames,
)
from routing.wallboard import Listener, feed_of, merge_patch

MAX_FRAME = 4 * 1024
RATE = 5.0
BURST = 20
BACKLOG_PAGE = 500
# Outbox events a supervisor's stream carries, and their type on the wire.
WIRE_TYPE = {
    "presence.updated": "agent.state",
    "sla.warning": "sla.warning",
    "sla.breached": "sla.breached",
}


def is_supervisor(agent: Agent) -> bool:
    return Role(agent.role).rank >= Role.supervisor.rank


@get("/supervisor", include_in_schema=False)
async def wallboard_page(request: Request[Any, Any, Any]) -> Any:
    rt = _runtime(request)
    token = request.cookies.get(SESSION_COOKIE)
    found = await agent_for_token(rt, token) if token else None
    if found is None:
        return Redirect("/agent/login?next=/supervisor", status_code=303)
    agent = found[0]
    csrf, cookies = _csrf_cookie(request)
    lang = i18n.pick(agent.locale, request.headers.get("accept-language"))
    if not is_supervisor(agent):
        return _page("forbidden.html", 403, cookies, lang=lang, csrf=csrf, agent=agent)
    return _page(
        "supervisor.html",
        cookies=cookies,
        lang=lang,
        csrf=csrf,
        agent=agent,
        timezone=agent.timezone or "UTC",
        strings=i18n.js_strings(lang, i18n.SUPERVISOR_STRINGS),
    )


class SupervisorSession:
    def __init__(
        self, rt: Runtime, socket: WebSocket[Any, Any, Any], agent: Agent, token_id: int
    ) -> None:
        self.rt = rt
        self.socket = socket
        self.agent = agent
        self.token_id = token_id
        self.stream = EventStream(rt.db, types=WIRE_TYPE, emit=self._emit, page=BACKLOG_PAGE)
        self.figures: dict[str, Any] = {}
        self.bucket = Bucket(RATE, BURST)
        self._send_lock = asyncio.Lock()
        self._figures_lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.socket.send_json(frame)

    async def _emit(self, env: dict[str, Any]) -> None:
        kind = WIRE_TYPE.get(str(env.get("type")))
        if kind is not None:
            await self.send(
                {
                    "type": kind,
                    "id": int(env.get("id") or 0),
                    "conversation_id": env.get("conversation_id"),
                    "agent_id": env.get("agent_id"),
                    "data": env.get("data") or {},
                }
            )

    async def snapshot(self) -> None:
        """A fresh ``metrics.snapshot``: it replaces whatever figures the client holds."""
        async with self._figures_lock:
            figures = await feed_of(self.rt).snapshot()
            await self.send(
                {
                    "type": "metrics.snapshot",
                    "data": {"last_event_id": self.stream.sent_upto, "metrics": figures},
                }
            )
            self.figures = figures

    async def delta(self, figures: dict[str, Any]) -> None:
        async with self._figures_lock:
            patch = merge_patch(self.figures, figures)
            if patch:
                await self.send({"type": "metrics.delta", "data": {"changes": patch}})
            self.figures = figures

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        data = frame.get("data") or {}
        if not isinstance(data, dict):
            raise FrameError("bad_frame", "data must be an object")
        if kind == "ping":
            await self.send({"type": "pong", "data": {}})
        elif kind == "resume":
            after = data.get("last_event_id")
            if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**62:
                raise FrameError("bad_frame", "last_event_id must be an integer of at least 0")
            await self.stream.resume(after)
            await self.snapshot()
        else:
            raise FrameError("unknown_type", f"unknown frame type {kind!r}")


@websocket("/ws/supervisor")
async def supervisor_socket(socket: WebSocket[Any, Any, Any]) -> None:
    rt: Runtime = socket.app.state.runtime
    settings = rt.settings
    # Refusals are accepted first and then closed, so that the client sees the close code.
    if not origin_allowed(
        socket.headers.get("origin"), settings.public_url, settings.allowed_origins
    ):
        await socket.accept()
        await socket.close(code=4403, reason="origin not allowed")
        return
    token = credentials_from(socket)
    found = await agent_for_token(rt, token) if token else None
    if found is None:
        await socket.accept()
        await socket.close(code=4401, reason="sign in first (token invalid, expired or revoked)")
        return
    agent, auth = found
    if not is_supervisor(agent):
        await socket.accept()
        await socket.close(code=4403, reason="supervisors and admins only")
        return
    await socket.accept()
    session = SupervisorSession(rt, socket, agent, auth.id)
    live = await rt.bus.subscribe(EVENTS_CHANNEL, REVOKED_CHANNEL)
    feed = feed_of(rt)
    listener = feed.join()
    try:
        await session.stream.start(last_event_id(socket), await head_position(rt.db))
        await session.snapshot()
        await _pump(session, live, listener)
    except WebSocketDisconnect:
        pass
    finally:
        live.close()
        feed.leave(listener)


async def _pump(session: SupervisorSession, live: Any, listener: Listener) -> None:
    socket = session.socket

    async def outgoing() -> None:
        while True:
            item = await live.get()
            if item is None:
                await socket.close(code=4008, reason="lagged; reconnect and resume")
                return
            channel, message = item
            if channel == REVOKED_CHANNEL:
                if message.get("token_id") == session.token_id:
                    await socket.close(code=4401, reason="signed out")
                    return
            else:
                await session.stream.live(message)

    async def figures() -> None:
        while True:
            await session.delta(await listener.next())

    await serve_frames(
        lambda: socket.receive_data("text"),
        session.send,
        session.handle,
        outgoing=outgoing,
        max_frame=MAX_FRAME,
        bucket=session.bucket,
        background=[figures],
    )


route_handlers = [wallboard_page, supervisor_socket]
