"""``/ws/agent``: the agent's live connection (protocol reference: docs/agent-protocol.md).

One connection per browser tab (or client). It authenticates with ``?token=``, an
``Authorization: Bearer`` header or the session cookie, checks the Origin, then streams the
events this agent may see (offers and presence for them, the events of conversations they can
see) with the event position as ``id``: a client that reconnects with ``?last_event_id=N`` (or
sends ``resume``) receives every event after N, in order, then live ones, and none twice.
Frames from the client are authorized one by one (an agent answers only their own offers and
writes only in conversations they may see).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from sqlalchemy import select

from contact_center.api.common import team_ids, visibility
from contact_center.auth import REVOKED_CHANNEL, agent_for_token, credentials_from
from contact_center.models import Agent, Conversation, Role
from contact_center.outbound import ReplyError, reply
from contact_center.relay import EVENTS_CHANNEL
from contact_center.runtime import Runtime
from contact_center.views import message_view
from contact_center.wsutil import (
    Bucket,
    EventStream,
    FrameError,
    head_position,
    last_event_id,
    origin_allowed,
    serve_frames,
)
from routing.engine import (
    RoutingError,
    agent_status,
    engine_of,
    offer_view,
    set_presence,
    status_view,
)
from routing.models import AgentStatus, Offer, OfferStatus, Presence, RoutingTask
from tickets.access import sees_ticket

log = logging.getLogger(__name__)

TYPING_CHANNEL = "typing"
MAX_FRAME = 64 * 1024
RATE = 10.0
BURST = 40
HEARTBEAT_SECONDS = 15.0
BACKLOG_PAGE = 500
# Events about the agent themself (agent_id is theirs), whatever the conversation.
PERSONAL = frozenset(
    {
        "offer.created",
        "offer.accepted",
        "offer.declined",
        "offer.expired",
        "offer.withdrawn",
        "presence.updated",
        "mention.created",
        "conversation.read",
    }
)
# Events about a conversation, sent when the agent may see the conversation.
CONVERSATION = frozenset(
    {
        "conversation.created",
        "conversation.updated",
        "conversation.assigned",
        "message.created",
        "message.status",
    }
)
# SLA warnings and breaches: to the conversation's assignee and to supervisors.
SLA = frozenset({"sla.warning", "sla.breached"})
# Tickets (§16): to the agents who may see the ticket (tickets.access), and to the one it was
# taken from.
TICKET = frozenset({"ticket.created", "ticket.updated"})
# Satisfaction surveys (§16): to every agent, as the surveys API answers any agent (the view
# carries no token); the console shows them in the customer panel.
SURVEY = frozenset({"survey.requested", "survey.answered"})
WIRE_TYPE = {"offer.created": "offer"}


class AgentSession:
    def __init__(self, rt: Runtime, socket: WebSocket[Any, Any, Any], agent: Agent) -> None:
        self.rt = rt
        self.socket = socket
        self.agent = agent
        # The outbox events of this connection: once each, in order, resumable (wsutil).
        self.stream = EventStream(
            rt.db,
            types=PERSONAL | CONVERSATION | SLA | TICKET | SURVEY,
            emit=self._emit,
            page=BACKLOG_PAGE,
        )
        self.token_id = 0
        self.bucket = Bucket(RATE, BURST)
        self._visible: dict[int, bool] = {}
        self._send_lock = asyncio.Lock()

    @property
    def sees_everything(self) -> bool:
        return Role(self.agent.role).rank >= Role.supervisor.rank

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.socket.send_json(frame)

    async def may_see(self, conversation_id: int | None, *, fresh: bool = False) -> bool:
        if conversation_id is None:
            return False
        if self.sees_everything:
            return True
        if fresh or conversation_id not in self._visible:
            async with self.rt.db.read() as session:
                rule = await visibility(session, self.agent)
                query = select(Conversation.id).where(Conversation.id == conversation_id)
                if rule is not None:
                    query = query.where(rule)
                self._visible[conversation_id] = (await session.scalar(query)) is not None
        return self._visible[conversation_id]

    async def wants(self, env: dict[str, Any]) -> bool:
        kind = env.get("type")
        if kind in PERSONAL:
            return env.get("agent_id") == self.agent.id
        if kind in SLA:
            return self.sees_everything or env.get("agent_id") == self.agent.id
        if kind in CONVERSATION:
            # Assignment and team changes can change what the agent may see: look again.
            fresh = kind in ("conversation.assigned", "conversation.updated")
            return await self.may_see(env.get("conversation_id"), fresh=fresh)
        if kind in TICKET:
            if self.sees_everything:
                return True
            async with self.rt.db.read() as session:
                teams = await team_ids(session, self.agent)
            return await sees_ticket(
                self.agent, env.get("data") or {}, teams=teams, sees_conversation=self.may_see
            )
        return kind in SURVEY

    async def _emit(self, env: dict[str, Any]) -> None:
        if await self.wants(env):
            kind = str(env["type"])
            await self.send(
                {
                    "type": WIRE_TYPE.get(kind, kind),
                    "id": int(env.get("id") or 0),
                    "conversation_id": env.get("conversation_id"),
                    "data": env.get("data") or {},
                }
            )

    async def heartbeat(self) -> None:
        async with self.rt.db.write() as session:
            status = await agent_status(session, self.agent.id, self.rt.clock)
            status.last_seen_at = self.rt.clock.now()

    async def hello(self, head: int) -> None:
        async with self.rt.db.read() as session:
            status = await session.get(AgentStatus, self.agent.id)
            offers = (
                await session.scalars(
                    select(Offer)
                    .where(Offer.agent_id == self.agent.id, Offer.status == OfferStatus.pending)
                    .order_by(Offer.id)
                )
            ).all()
            # The offers in full, as the `offer` frames showed them: a console that loads
            # (or reloads) shows what is waiting for the agent.
            pending = []
            if offers:
                tasks = {
                    t.id: t
                    for t in await session.scalars(
                        select(RoutingTask).where(RoutingTask.id.in_([o.task_id for o in offers]))
                    )
                }
                conversations = list(
                    await session.scalars(
                        select(Conversation).where(
                            Conversation.id.in_({o.conversation_id for o in offers})
                        )
                    )
                )
                summaries = await engine_of(self.rt).summaries(session, conversations)
                pending = [
                    offer_view(o, tasks[o.task_id].enqueued_at, summaries[o.conversation_id])
                    for o in offers
                    if o.task_id in tasks and o.conversation_id in summaries
                ]
        await self.send(
            {
                "type": "hello",
                "data": {
                    "agent": {
                        "id": self.agent.id,
                        "name": self.agent.name,
                        "role": self.agent.role,
                    },
                    "presence": status_view(status) if status else None,
                    "pending_offer_ids": [o.id for o in offers],
                    "pending_offers": pending,
                    "last_event_id": head,
                    "heartbeat_seconds": HEARTBEAT_SECONDS,
                    "server_time": self.rt.clock.now().isoformat(),
                },
            }
        )

    # ----- frames from the client

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        data = frame.get("data") or {}
        if not isinstance(data, dict):
            raise FrameError("bad_frame", "data must be an object")
        if kind == "ping":
            await self.heartbeat()
            await self.send({"type": "pong", "data": {}})
        elif kind == "resume":
            await self.stream.resume(_int(data, "last_event_id", minimum=0))
        elif kind == "presence.set":
            await self.presence(data)
        elif kind in ("offer.accept", "offer.decline"):
            offer_id = _int(data, "offer_id", minimum=1)
            try:
                offer = await engine_of(self.rt).answer(
                    offer_id, self.agent.id, accept=kind == "offer.accept"
                )
            except RoutingError as exc:
                raise FrameError("offer_unavailable", str(exc)) from None
            await self.rt.committed()
            await self.ack(kind, {"offer_id": offer_id, "status": offer.status})
        elif kind == "message.send":
            await self.message(data)
        elif kind == "typing":
            conversation_id = _int(data, "conversation_id", minimum=1)
            if not await self.may_see(conversation_id):
                raise FrameError("forbidden", "you cannot see this conversation")
            await self.rt.bus.publish(
                TYPING_CHANNEL,
                {
                    "conversation_id": conversation_id,
                    "from": "agent",
                    "agent_id": self.agent.id,
                    "typing": bool(data.get("typing", True)),
                },
            )
        else:
            raise FrameError("unknown_type", f"unknown frame type {kind!r}")

    async def ack(self, kind: str, data: dict[str, Any]) -> None:
        await self.send({"type": "ack", "data": {"for": kind, **data}})

    async def presence(self, data: dict[str, Any]) -> None:
        try:
            state = Presence(str(data.get("state")))
        except ValueError:
            raise FrameError(
                "bad_frame", f"state must be one of {', '.join(p.value for p in Presence)}"
            ) from None
        reason = data.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 120):
            raise FrameError("bad_frame", "reason must be text of at most 120 characters")
        async with self.rt.db.write() as session:
            status = await set_presence(
                session,
                self.agent.id,
                state,
                clock=self.rt.clock,
                reason=reason or None,
                by_agent_id=self.agent.id,
            )
            status.last_seen_at = self.rt.clock.now()
            view = status_view(status)
        await self.rt.committed()
        await self.ack("presence.set", view)

    async def message(self, data: dict[str, Any]) -> None:
        conversation_id = _int(data, "conversation_id", minimum=1)
        client_id = data.get("client_id")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 64:
            raise FrameError("bad_frame", "message.send needs a client_id of 1 to 64 characters")
        text = data.get("text")
        if not isinstance(text, str):
            raise FrameError("bad_frame", "message.send needs text")
        via = data.get("inbox_id")
        if via is not None and (not isinstance(via, str) or not 0 < len(via) <= 64):
            raise FrameError("bad_frame", "inbox_id must be an inbox id")
        if not await self.may_see(conversation_id, fresh=True):
            raise FrameError("forbidden", "you cannot see this conversation")
        async with self.rt.db.write() as session:
            try:
                message, created = await reply(
                    session,
                    conversation_id=conversation_id,
                    agent=self.agent,
                    text=text,
                    private=bool(data.get("private", False)),
                    client_id=client_id,
                    clock=self.rt.clock,
                    via_inbox_id=via,
                )
            except (ReplyError, LookupError) as exc:
                raise FrameError("rejected", str(exc)) from None
            view = message_view(message, "")
        if created:
            await self.rt.committed()
        await self.ack(
            "message.send",
            {"client_id": client_id, "message_id": view["id"], "duplicate": not created},
        )


def _int(data: dict[str, Any], key: str, *, minimum: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**62:
        raise FrameError("bad_frame", f"{key} must be an integer of at least {minimum}")
    return value


@websocket("/ws/agent")
async def agent_socket(socket: WebSocket[Any, Any, Any]) -> None:
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
    await socket.accept()
    session = AgentSession(rt, socket, agent)
    session.token_id = auth.id
    live = await rt.bus.subscribe(EVENTS_CHANNEL, TYPING_CHANNEL, REVOKED_CHANNEL)
    try:
        await session.heartbeat()
        head = await head_position(rt.db)
        await session.hello(head)
        await session.stream.start(last_event_id(socket), head)
        await _pump(session, live)
    except WebSocketDisconnect:
        pass
    finally:
        live.close()


async def _pump(session: AgentSession, live: Any) -> None:
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
            elif channel == TYPING_CHANNEL:
                if message.get("from") == "customer" and await session.may_see(
                    message.get("conversation_id")
                ):
                    await session.send({"type": "typing", "data": message})
            else:
                await session.stream.live(message)

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await session.heartbeat()

    await serve_frames(
        lambda: socket.receive_data("text"),
        session.send,
        session.handle,
        outgoing=outgoing,
        max_frame=MAX_FRAME,
        bucket=session.bucket,
        background=[beat],
    )


route_handlers = [agent_socket]
