"""Helpers for routing tests: agents with skills, queues, rules, conversations, invariants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from contact_center.models import Agent, Conversation, ConversationStatus, Role, TeamMember
from contact_center.runtime import Runtime
from routing.engine import RoutingEngine, agent_loads, capacity_of, engine_of, set_presence
from routing.models import (
    ChannelClass,
    Offer,
    OfferStatus,
    Presence,
    Queue,
    RoutingRule,
    RoutingTask,
)
from tests.helpers import ingest, sms

_phones = Counter[str]()


async def make_agent(
    rt: Runtime,
    name: str,
    *,
    skills: dict[str, int] | None = None,
    languages: list[str] | None = None,
    capacity: dict[str, int] | None = None,
    team_id: int | None = None,
    available: bool = True,
    role: Role = Role.agent,
) -> int:
    async with rt.db.write() as session:
        agent = Agent(
            email=f"{name.lower()}@route.test",
            name=name,
            role=role.value,
            languages=languages or ["en"],
            skills=skills or {},
            capacity=capacity or {"chat": 3, "email": 8, "voice": 1},
            voice_blocks_chat=True,
            is_active=True,
            created_at=rt.clock.now(),
        )
        session.add(agent)
        await session.flush()
        if team_id is not None:
            session.add(TeamMember(team_id=team_id, agent_id=agent.id))
        agent_id = agent.id
    if available:
        await presence(rt, agent_id, Presence.available)
    return agent_id


async def presence(rt: Runtime, agent_id: int, state: Presence, reason: str | None = None) -> None:
    async with rt.db.write() as session:
        await set_presence(session, agent_id, state, clock=rt.clock, reason=reason)


async def make_queue(rt: Runtime, name: str = "Support", **kw: Any) -> int:
    kw.setdefault("is_default", False)
    async with rt.db.write() as session:
        queue = Queue(
            name=name,
            priority=kw.pop("priority", 0),
            skills=kw.pop("skills", {}),
            strategy=kw.pop("strategy", "longest_idle"),
            offer_timeout_seconds=kw.pop("offer_timeout_seconds", 30),
            auto_accept=kw.pop("auto_accept", []),
            overflow=kw.pop("overflow", []),
            sticky_seconds=kw.pop("sticky_seconds", 0),
            requeue_on_disconnect=kw.pop("requeue_on_disconnect", True),
            created_at=rt.clock.now(),
            **kw,
        )
        session.add(queue)
        await session.flush()
        return queue.id


async def make_rule(rt: Runtime, queue_id: int, position: int, **conditions: Any) -> None:
    async with rt.db.write() as session:
        session.add(
            RoutingRule(
                position=position,
                name=f"rule {position}",
                queue_id=queue_id,
                conditions=conditions,
                created_at=rt.clock.now(),
            )
        )


async def arrive(rt: Runtime, text: str = "help", *, phone: str | None = None, **kw: Any) -> int:
    """A customer writes by SMS (a new number each time unless given): the conversation id."""
    if phone is None:
        _phones["n"] += 1
        phone = f"+1415{_phones['n'] % 10_000_000:07d}"
    _phones["sid"] += 1
    result = await ingest(rt, sms(text, sid=f"SMr{_phones['sid']}", phone=phone, **kw))
    return result.conversation_id


def engine(rt: Runtime) -> RoutingEngine:
    return engine_of(rt)


async def pending_offers(rt: Runtime) -> list[Offer]:
    async with rt.db.read() as session:
        return list(
            (
                await session.scalars(
                    select(Offer)
                    .where(Offer.status == OfferStatus.pending.value)
                    .order_by(Offer.id)
                )
            ).all()
        )


async def offer_for(rt: Runtime, conversation_id: int) -> Offer | None:
    async with rt.db.read() as session:
        return await session.scalar(
            select(Offer)
            .where(
                Offer.conversation_id == conversation_id,
                Offer.status == OfferStatus.pending.value,
            )
            .order_by(Offer.id.desc())
        )


async def assignee(rt: Runtime, conversation_id: int) -> int | None:
    async with rt.db.read() as session:
        conv = await session.get(Conversation, conversation_id)
        assert conv is not None
        return conv.assignee_id


async def resolve(rt: Runtime, conversation_id: int) -> None:
    from contact_center.conversations import change_conversation

    async with rt.db.write() as session:
        conv = await session.get(Conversation, conversation_id)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, status=ConversationStatus.resolved
        )


async def check_invariants(
    rt: Runtime, capacities: Mapping[int, Mapping[str, int]] | None = None
) -> dict[int, dict[str, int]]:
    """What must hold whatever happened: no task with two pending offers, no conversation
    with two live tasks, no agent over capacity on any channel class. ``capacities`` (agent ->
    class -> capacity, when the caller knows them) saves loading every agent. Returns the
    loads it checked."""
    async with rt.db.read() as session:
        doubled = (
            await session.execute(
                select(Offer.task_id, func.count())
                .where(Offer.status == OfferStatus.pending.value)
                .group_by(Offer.task_id)
                .having(func.count() > 1)
            )
        ).all()
        assert doubled == []
        live = (
            await session.execute(
                select(RoutingTask.conversation_id, func.count())
                .where(RoutingTask.active_conversation_id.is_not(None))
                .group_by(RoutingTask.conversation_id)
                .having(func.count() > 1)
            )
        ).all()
        assert live == []
        loads = await agent_loads(session)
        if capacities is None:
            agents = (await session.scalars(select(Agent))).all()
            capacities = {a.id: {cls: capacity_of(a, cls) for cls in ChannelClass} for a in agents}
        for agent_id, load in loads.items():
            for cls, used in load.items():
                assert used <= capacities[agent_id][cls], (agent_id, cls, used)
    return loads
