"""REST for routing: queues and rules (admin), presence, offers, assignment and transfer."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.exceptions import ClientException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from contact_center.api.common import current_agent, runtime_of, visible_conversation
from contact_center.auth import require
from contact_center.models import Agent, Conversation, Role, Team
from contact_center.outbound import ReplyError, reply
from contact_center.views import conversation_view, ts
from routing.engine import (
    RoutingError,
    RoutingForbidden,
    agent_loads,
    announce_config_change,
    engine_of,
    set_presence,
    status_view,
)
from routing.models import AgentStatus, ChannelClass, Presence, Queue, RoutingRule

StrategyName = Literal["longest_idle", "least_occupied", "round_robin", "best_match"]
StateName = Literal["available", "busy", "away", "offline"]
ClassName = Literal["voice", "chat", "email"]


class OverflowStep(msgspec.Struct, forbid_unknown_fields=True):
    after_seconds: int = msgspec.field()
    action: Literal["drop_skills", "queue", "team"]
    queue_id: int | None = None


class QueueBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    priority: int = 0
    skills: dict[str, int] = {}
    language: str | None = None
    team_id: int | None = None
    strategy: StrategyName = "longest_idle"
    offer_timeout_seconds: int = 30
    auto_accept: list[ClassName] = []
    overflow: list[OverflowStep] = []
    sticky_seconds: int = 0
    requeue_on_disconnect: bool = True
    is_default: bool = False


class QueueUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    priority: int | msgspec.UnsetType = msgspec.UNSET
    skills: dict[str, int] | msgspec.UnsetType = msgspec.UNSET
    language: str | msgspec.UnsetType | None = msgspec.UNSET
    team_id: int | msgspec.UnsetType | None = msgspec.UNSET
    strategy: StrategyName | msgspec.UnsetType = msgspec.UNSET
    offer_timeout_seconds: int | msgspec.UnsetType = msgspec.UNSET
    auto_accept: list[ClassName] | msgspec.UnsetType = msgspec.UNSET
    overflow: list[OverflowStep] | msgspec.UnsetType = msgspec.UNSET
    sticky_seconds: int | msgspec.UnsetType = msgspec.UNSET
    requeue_on_disconnect: bool | msgspec.UnsetType = msgspec.UNSET
    is_default: bool | msgspec.UnsetType = msgspec.UNSET


def queue_view(queue: Queue) -> dict[str, Any]:
    return {
        "id": queue.id,
        "name": queue.name,
        "priority": queue.priority,
        "skills": queue.skills,
        "language": queue.language,
        "team_id": queue.team_id,
        "strategy": queue.strategy,
        "offer_timeout_seconds": queue.offer_timeout_seconds,
        "auto_accept": queue.auto_accept,
        "overflow": queue.overflow,
        "sticky_seconds": queue.sticky_seconds,
        "requeue_on_disconnect": queue.requeue_on_disconnect,
        "is_default": queue.is_default,
    }


async def _check_queue(session: Any, values: dict[str, Any]) -> None:
    if "name" in values and not 0 < len(values["name"].strip()) <= 120:
        raise ClientException("name: 1 to 120 characters")
    if "priority" in values and not -10 <= values["priority"] <= 10:
        raise ClientException("priority: from -10 to 10")
    if "offer_timeout_seconds" in values and not 5 <= values["offer_timeout_seconds"] <= 600:
        raise ClientException("offer_timeout_seconds: from 5 to 600")
    if "sticky_seconds" in values and not 0 <= values["sticky_seconds"] <= 86400:
        raise ClientException("sticky_seconds: from 0 to 86400")
    for name, level in (values.get("skills") or {}).items():
        if not (0 < len(name) <= 64) or not 1 <= level <= 10:
            raise ClientException(f"skills: {name!r} needs a name and a level from 1 to 10")
    if values.get("team_id") is not None and await session.get(Team, values["team_id"]) is None:
        raise ClientException("team_id: no such team")
    for step in values.get("overflow") or []:
        if not 0 <= step["after_seconds"] <= 86400:
            raise ClientException("overflow: after_seconds from 0 to 86400")
        if step["action"] == "queue" and (
            step.get("queue_id") is None or await session.get(Queue, step["queue_id"]) is None
        ):
            raise ClientException("overflow: a 'queue' step needs an existing queue_id")


def _values(data: msgspec.Struct) -> dict[str, Any]:
    """The fields a body sets, as plain values for the model."""
    values = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    if "overflow" in values:
        values["overflow"] = [msgspec.structs.asdict(step) for step in values["overflow"]]
    return values


class QueueController(Controller):
    path = "/api/v1/queues"
    tags = ["routing"]

    @get("/", guards=[require(Role.agent)])
    async def list_queues(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            return [queue_view(q) for q in await session.scalars(select(Queue).order_by(Queue.id))]

    @post("/", guards=[require(Role.admin)])
    async def create_queue(
        self, request: Request[Any, Any, Any], data: JSONBody[QueueBody]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        values = _values(data)
        try:
            async with rt.db.write() as session:
                await _check_queue(session, values)
                queue = Queue(**values, created_at=rt.clock.now())
                session.add(queue)
                await session.flush()
                view = queue_view(queue)
        except IntegrityError:
            raise ClientException("a queue with this name exists", status_code=409) from None
        await announce_config_change(rt)
        return view

    @get("/{queue_id:int}", guards=[require(Role.agent)])
    async def get_queue(
        self, request: Request[Any, Any, Any], queue_id: FromPath[int]
    ) -> dict[str, Any]:
        async with runtime_of(request).db.read() as session:
            queue = await session.get(Queue, queue_id)
            if queue is None:
                raise NotFoundException("queue not found")
            return queue_view(queue)

    @patch("/{queue_id:int}", guards=[require(Role.admin)])
    async def update_queue(
        self, request: Request[Any, Any, Any], queue_id: FromPath[int], data: JSONBody[QueueUpdate]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        values = _values(data)
        try:
            async with rt.db.write() as session:
                queue = await session.get(Queue, queue_id)
                if queue is None:
                    raise NotFoundException("queue not found")
                await _check_queue(session, values)
                for key, value in values.items():
                    setattr(queue, key, value)
                await session.flush()
                view = queue_view(queue)
        except IntegrityError:
            raise ClientException("a queue with this name exists", status_code=409) from None
        await announce_config_change(rt)
        return view

    @delete("/{queue_id:int}", guards=[require(Role.admin)], status_code=204)
    async def delete_queue(self, request: Request[Any, Any, Any], queue_id: FromPath[int]) -> None:
        rt = runtime_of(request)
        async with rt.db.write() as session:
            queue = await session.get(Queue, queue_id)
            if queue is None:
                raise NotFoundException("queue not found")
            await session.delete(queue)
        await announce_config_change(rt)


class RuleBody(msgspec.Struct, forbid_unknown_fields=True):
    queue_id: int
    position: int = 0
    name: str = ""
    inbox_ids: list[str] = []
    channels: list[str] = []
    languages: list[str] = []
    tiers: list[str] = []
    keywords: list[str] = []
    min_priority: Literal["low", "normal", "high", "urgent"] | None = None


CONDITION_KEYS = ("inbox_ids", "channels", "languages", "tiers", "keywords", "min_priority")


def rule_view(rule: RoutingRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "queue_id": rule.queue_id,
        "position": rule.position,
        "name": rule.name,
        **{key: (rule.conditions or {}).get(key) for key in CONDITION_KEYS},
    }


class RoutingRuleController(Controller):
    path = "/api/v1/routing-rules"
    tags = ["routing"]

    @get("/", guards=[require(Role.supervisor)])
    async def list_rules(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        async with runtime_of(request).db.read() as session:
            rules = await session.scalars(
                select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)
            )
            return [rule_view(r) for r in rules]

    @post("/", guards=[require(Role.admin)])
    async def create_rule(
        self, request: Request[Any, Any, Any], data: JSONBody[RuleBody]
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        if any(len(k) > 100 for k in data.keywords) or len(data.keywords) > 100:
            raise ClientException("keywords: at most 100, each at most 100 characters")
        async with rt.db.write() as session:
            if await session.get(Queue, data.queue_id) is None:
                raise ClientException("queue_id: no such queue")
            values = msgspec.structs.asdict(data)
            rule = RoutingRule(
                queue_id=data.queue_id,
                position=data.position,
                name=data.name[:120],
                conditions={k: values[k] for k in CONDITION_KEYS if values[k]},
                created_at=rt.clock.now(),
            )
            session.add(rule)
            await session.flush()
            view = rule_view(rule)
        await announce_config_change(rt)
        return view

    @delete("/{rule_id:int}", guards=[require(Role.admin)], status_code=204)
    async def delete_rule(self, request: Request[Any, Any, Any], rule_id: FromPath[int]) -> None:
        rt = runtime_of(request)
        async with rt.db.write() as session:
            rule = await session.get(RoutingRule, rule_id)
            if rule is None:
                raise NotFoundException("rule not found")
            await session.delete(rule)
        await announce_config_change(rt)


class PresenceBody(msgspec.Struct, forbid_unknown_fields=True):
    state: StateName
    reason: str | None = None


class AssignBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: int


class TransferBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: int | None = None
    queue_id: int | None = None
    note: str | None = None


class RoutingController(Controller):
    path = "/api/v1"
    tags = ["routing"]

    @get("/presence", guards=[require(Role.supervisor)])
    async def list_presence(self, request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
        """Every active agent's presence and load per channel class."""
        async with runtime_of(request).db.read() as session:
            rows = (
                await session.execute(
                    select(Agent, AgentStatus)
                    .outerjoin(AgentStatus, AgentStatus.agent_id == Agent.id)
                    .where(Agent.is_active.is_(True))
                    .order_by(Agent.id)
                )
            ).all()
            loads = await agent_loads(session)
        return [
            {
                "agent_id": agent.id,
                "name": agent.name,
                "state": status.state if status else Presence.offline.value,
                "reason": status.reason if status else None,
                "since": ts(status.since) if status else None,
                "load": {c.value: loads[agent.id][c] for c in ChannelClass}
                if agent.id in loads
                else dict.fromkeys([c.value for c in ChannelClass], 0),
            }
            for agent, status in rows
        ]

    @put("/agents/{agent_id:int}/presence", guards=[require(Role.agent)])
    async def set_agent_presence(
        self,
        request: Request[Any, Any, Any],
        agent_id: FromPath[int],
        data: JSONBody[PresenceBody],
    ) -> dict[str, Any]:
        """Agents set their own presence; supervisors set anyone's."""
        rt = runtime_of(request)
        me = current_agent(request)
        if agent_id != me.id and Role(me.role).rank < Role.supervisor.rank:
            raise PermissionDeniedException("only supervisors set another agent's presence")
        if data.reason is not None and len(data.reason) > 120:
            raise ClientException("reason: at most 120 characters")
        async with rt.db.write() as session:
            if await session.get(Agent, agent_id) is None:
                raise NotFoundException("agent not found")
            status = await set_presence(
                session,
                agent_id,
                Presence(data.state),
                clock=rt.clock,
                reason=data.reason or None,
                by_agent_id=me.id,
            )
            view = status_view(status)
        await rt.committed()
        return view

    @post("/offers/{offer_id:int}/accept", guards=[require(Role.agent)], status_code=200)
    async def accept_offer(
        self, request: Request[Any, Any, Any], offer_id: FromPath[int]
    ) -> dict[str, Any]:
        return await self._answer(request, offer_id, accept=True)

    @post("/offers/{offer_id:int}/decline", guards=[require(Role.agent)], status_code=200)
    async def decline_offer(
        self, request: Request[Any, Any, Any], offer_id: FromPath[int]
    ) -> dict[str, Any]:
        return await self._answer(request, offer_id, accept=False)

    async def _answer(
        self, request: Request[Any, Any, Any], offer_id: int, *, accept: bool
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        try:
            offer = await engine_of(rt).answer(offer_id, current_agent(request).id, accept=accept)
        except RoutingError as exc:
            raise ClientException(str(exc), status_code=409) from None
        await rt.committed()
        return {"offer_id": offer.id, "status": offer.status}

    @post(
        "/conversations/{conversation_id:int}/assign",
        guards=[require(Role.supervisor)],
        status_code=200,
    )
    async def assign(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[int],
        data: JSONBody[AssignBody],
    ) -> dict[str, Any]:
        rt = runtime_of(request)
        try:
            conversation = await engine_of(rt).assign(
                conversation_id, data.agent_id, by_agent_id=current_agent(request).id
            )
        except RoutingError as exc:
            raise ClientException(str(exc), status_code=409) from None
        await rt.committed()
        return conversation_view(conversation)

    @post(
        "/conversations/{conversation_id:int}/transfer",
        guards=[require(Role.agent)],
        status_code=200,
    )
    async def transfer(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[int],
        data: JSONBody[TransferBody],
    ) -> dict[str, Any]:
        """To an agent (assigned at once, capacity permitting) or a queue, with a note."""
        rt = runtime_of(request)
        me = current_agent(request)
        if (data.agent_id is None) == (data.queue_id is None):
            raise ClientException("transfer to exactly one of agent_id or queue_id")
        if data.note is not None and len(data.note) > 4000:
            raise ClientException("note: at most 4000 characters")
        async with rt.db.read() as session:
            await visible_conversation(session, me, conversation_id)
        engine = engine_of(rt)
        override = Role(me.role).rank >= Role.supervisor.rank

        def may_transfer(conversation: Conversation) -> None:
            if conversation.assignee_id not in (None, me.id) and not override:
                raise RoutingForbidden(
                    "only the assignee, a supervisor or an admin may transfer this conversation"
                )

        # One transaction: the transfer and its note are applied together or not at all.
        try:
            async with rt.db.write() as session:
                if data.agent_id is not None:
                    await engine.assign_in(
                        session,
                        conversation_id,
                        data.agent_id,
                        by_agent_id=me.id,
                        reason="transferred",
                        online_only=True,
                        check=may_transfer,
                    )
                    result: dict[str, Any] = {"agent_id": data.agent_id}
                else:
                    assert data.queue_id is not None
                    task = await engine.transfer_to_queue_in(
                        session,
                        conversation_id,
                        data.queue_id,
                        by_agent_id=me.id,
                        check=may_transfer,
                    )
                    result = {"queue_id": task.queue_id, "task_id": task.id}
                if data.note and data.note.strip():
                    await reply(
                        session,
                        conversation_id=conversation_id,
                        agent=me,
                        text=f"Transfer note: {data.note.strip()}",
                        private=True,
                        clock=rt.clock,
                    )
        except RoutingForbidden as exc:
            raise PermissionDeniedException(str(exc)) from None
        except RoutingError as exc:
            raise ClientException(str(exc), status_code=409) from None
        except ReplyError as exc:
            raise ClientException(str(exc)) from None
        await rt.committed()
        return {"conversation_id": conversation_id, **result}


route_handlers = [QueueController, RoutingRuleController, RoutingController]
