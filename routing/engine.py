"""The routing engine: tasks for conversations that need a human, offers to agents, answers.

See docs/architecture.md §12. The in-memory choice (``plan``) is only a proposal: every offer
and assignment is committed by a short transaction that re-checks presence, capacity and the
task's state under the agent's row lock, so racing engines or actions can fail, never
double-offer, double-assign or overfill an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.models import (
    Agent,
    Conversation,
    ConversationStatus,
    Customer,
    Inbox,
    Message,
    Priority,
    TeamMember,
)
from contact_center.views import conversation_view, ts
from routing.models import (
    DEFAULT_CAPACITY,
    AgentStateLog,
    AgentStatus,
    ChannelClass,
    Offer,
    OfferStatus,
    Presence,
    Queue,
    RoutingRule,
    RoutingTask,
    Strategy,
    TaskStatus,
    channel_class,
)

if TYPE_CHECKING:
    from contact_center.clock import Clock
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

PRIORITY_STEP = 300.0  # seconds of waiting one priority level is worth
PAGE = 500
LOAD_STATUSES = (ConversationStatus.open.value, ConversationStatus.pending.value)
WAKE_CHANNEL = "routing.wake"

EVENT_TYPES = (
    "offer.created",
    "offer.accepted",
    "offer.declined",
    "offer.expired",
    "offer.withdrawn",
    "conversation.assigned",
    "presence.updated",
)


class RoutingError(ValueError):
    """An answer or action that cannot be applied (wrong agent, stale offer, no capacity)."""


# --------------------------------------------------------------------------- views


def offer_view(offer: Offer, task: RoutingTask, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "offer_id": offer.id,
        "task_id": task.id,
        "conversation_id": offer.conversation_id,
        "agent_id": offer.agent_id,
        "queue_id": offer.queue_id,
        "channel_class": offer.channel,
        "status": offer.status,
        "created_at": ts(offer.created_at),
        "expires_at": ts(offer.expires_at),
        "enqueued_at": ts(task.enqueued_at),
        **extra,
    }


def status_view(status: AgentStatus) -> dict[str, Any]:
    return {
        "agent_id": status.agent_id,
        "state": status.state,
        "reason": status.reason,
        "since": ts(status.since),
        "missed_offers": status.missed_offers,
    }


# --------------------------------------------------------------------------- presence


async def agent_status(session: AsyncSession, agent_id: int, clock: Clock) -> AgentStatus:
    """The agent's status row, locked for this transaction (created offline if missing)."""
    status = await session.get(AgentStatus, agent_id, with_for_update=True)
    if status is None:
        try:
            async with session.begin_nested():
                session.add(
                    AgentStatus(
                        agent_id=agent_id,
                        state=Presence.offline.value,
                        since=clock.now(),
                        missed_offers=0,
                    )
                )
        except IntegrityError:
            pass
        status = await session.get(AgentStatus, agent_id, with_for_update=True)
        assert status is not None
    return status


async def set_presence(
    session: AsyncSession,
    agent_id: int,
    state: Presence,
    *,
    clock: Clock,
    reason: str | None = None,
    by_agent_id: int | None = None,
) -> AgentStatus:
    """Change presence (logged for occupancy). Leaving ``available`` withdraws pending offers."""
    status = await agent_status(session, agent_id, clock)
    now = clock.now()
    if status.state == state.value and status.reason == reason:
        return status
    await session.execute(
        update(AgentStateLog)
        .where(AgentStateLog.agent_id == agent_id, AgentStateLog.ended_at.is_(None))
        .values(ended_at=now)
    )
    session.add(AgentStateLog(agent_id=agent_id, state=state.value, reason=reason, started_at=now))
    previous = status.state
    status.state = state.value
    status.reason = reason
    status.since = now
    if state == Presence.available:
        status.missed_offers = 0
        if previous != Presence.available.value:
            status.idle_since = now
    else:
        await withdraw_offers(session, clock, agent_id=agent_id, reason=f"agent {state.value}")
    await session.flush()
    events.append(
        session,
        "presence.updated",
        {**status_view(status), "previous": previous, "by_agent_id": by_agent_id},
        clock=clock,
        agent_id=agent_id,
    )
    return status


async def withdraw_offers(
    session: AsyncSession,
    clock: Clock,
    *,
    agent_id: int | None = None,
    task_id: int | None = None,
    reason: str,
    requeue: bool = True,
) -> int:
    """Withdraw pending offers (of an agent or of a task); their tasks wait again."""
    query = select(Offer).where(Offer.status == OfferStatus.pending.value)
    if agent_id is not None:
        query = query.where(Offer.agent_id == agent_id)
    if task_id is not None:
        query = query.where(Offer.task_id == task_id)
    offers = (await session.scalars(query.with_for_update())).all()
    now = clock.now()
    for offer in offers:
        offer.status = OfferStatus.withdrawn.value
        offer.answered_at = now
        task = await session.get(RoutingTask, offer.task_id)
        if task is not None and requeue and task.status == TaskStatus.offered:
            task.status = TaskStatus.waiting.value
        events.append(
            session,
            "offer.withdrawn",
            {"offer_id": offer.id, "conversation_id": offer.conversation_id, "reason": reason},
            clock=clock,
            agent_id=offer.agent_id,
            conversation_id=offer.conversation_id,
        )
    return len(offers)


# --------------------------------------------------------------------------- loads


async def agent_loads(
    session: AsyncSession, agent_ids: list[int] | None = None
) -> dict[int, dict[str, int]]:
    """Per agent and channel class: open/pending conversations assigned + pending offers."""
    loads: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ChannelClass, 0))
    assigned = (
        select(Conversation.assignee_id, Inbox.kind, func.count())
        .join(Inbox, Inbox.id == Conversation.inbox_id)
        .where(Conversation.assignee_id.is_not(None), Conversation.status.in_(LOAD_STATUSES))
        .group_by(Conversation.assignee_id, Inbox.kind)
    )
    offered = (
        select(Offer.agent_id, Offer.channel, func.count())
        .where(Offer.status == OfferStatus.pending.value)
        .group_by(Offer.agent_id, Offer.channel)
    )
    if agent_ids is not None:
        assigned = assigned.where(Conversation.assignee_id.in_(agent_ids))
        offered = offered.where(Offer.agent_id.in_(agent_ids))
    for assignee_id, kind, n in (await session.execute(assigned)).all():
        if assignee_id is not None:
            loads[assignee_id][channel_class(kind)] += n
    for agent_id, cls, n in (await session.execute(offered)).all():
        loads[agent_id][ChannelClass(cls)] += n
    return loads


def capacity_of(agent: Agent, cls: str) -> int:
    value = (agent.capacity or {}).get(cls, DEFAULT_CAPACITY[cls])
    return max(0, int(value))


def has_room(agent: Agent, load: dict[str, int], cls: str) -> bool:
    if load.get(cls, 0) >= capacity_of(agent, cls):
        return False
    # A call in progress blocks chats (and a chat blocks a new call) when so configured.
    if agent.voice_blocks_chat:
        if cls == ChannelClass.chat and load.get(ChannelClass.voice, 0) > 0:
            return False
        if cls == ChannelClass.voice and load.get(ChannelClass.chat, 0) > 0:
            return False
    return True


# --------------------------------------------------------------------------- queues


def rule_matches(
    conditions: dict[str, Any],
    *,
    inbox_id: str,
    channel: str,
    language: str | None,
    tier: str | None,
    text: str,
    priority: int,
) -> bool:
    def listed(key: str, value: str | None) -> bool:
        wanted = conditions.get(key)
        return not wanted or (value is not None and value in wanted)

    if not (
        listed("inbox_ids", inbox_id)
        and listed("channels", channel)
        and listed("languages", language)
        and listed("tiers", tier)
    ):
        return False
    keywords = conditions.get("keywords")
    if keywords:
        folded = text.casefold()
        if not any(str(k).casefold() in folded for k in keywords):
            return False
    minimum = conditions.get("min_priority")
    return not (minimum and priority < Priority[minimum].value)


async def choose_queue(session: AsyncSession, conversation: Conversation) -> Queue | None:
    queues = {q.id: q for q in (await session.scalars(select(Queue))).all()}
    if not queues:
        return None
    rules = (await session.scalars(select(RoutingRule).order_by(RoutingRule.position))).all()
    inbox = await session.get(Inbox, conversation.inbox_id)
    customer = await session.get(Customer, conversation.customer_id)
    first_text = await session.scalar(
        select(Message.text)
        .where(Message.conversation_id == conversation.id, Message.direction == "in")
        .order_by(Message.id)
        .limit(1)
    )
    text = f"{conversation.subject or ''}\n{first_text or ''}"
    for rule in rules:
        if rule.queue_id in queues and rule_matches(
            rule.conditions or {},
            inbox_id=conversation.inbox_id,
            channel=inbox.kind if inbox else "",
            language=conversation.language or (customer.locale if customer else None),
            tier=customer.tier if customer else None,
            text=text,
            priority=conversation.priority,
        ):
            return queues[rule.queue_id]
    defaults = [q for q in queues.values() if q.is_default]
    return (defaults or sorted(queues.values(), key=lambda q: q.id))[0]


def task_rank(enqueued_at: datetime, queue_priority: int, priority: int) -> float:
    return enqueued_at.timestamp() - (queue_priority + priority) * PRIORITY_STEP


# --------------------------------------------------------------------------- the engine


NEVER = -1e18  # "no timestamp": sorts before every real one


def stamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else NEVER


@dataclass
class Candidate:
    """A snapshot of one available agent for planning (plain values: nothing to flush)."""

    agent: Agent
    teams: set[int]
    load: dict[str, int]
    idle_since: float
    last_offer_at: float
    skills: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Planned:
    task_id: int
    agent_id: int


class RoutingEngine:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.clock = rt.clock
        self.settings = rt.settings

    # ----- tasks

    async def reconcile(self) -> int:
        """Give every open, unassigned conversation a live task; end tasks that are moot."""
        created = 0
        async with self.rt.db.read() as session:
            missing = (
                await session.scalars(
                    select(Conversation.id)
                    .outerjoin(RoutingTask, RoutingTask.active_conversation_id == Conversation.id)
                    .where(
                        Conversation.status == ConversationStatus.open.value,
                        Conversation.assignee_id.is_(None),
                        RoutingTask.id.is_(None),
                    )
                    .order_by(Conversation.id)
                    .limit(PAGE)
                )
            ).all()
            moot = (
                await session.scalars(
                    select(RoutingTask.id)
                    .join(Conversation, Conversation.id == RoutingTask.conversation_id)
                    .where(
                        RoutingTask.active_conversation_id.is_not(None),
                        (Conversation.status != ConversationStatus.open.value)
                        | Conversation.assignee_id.is_not(None),
                    )
                    .limit(PAGE)
                )
            ).all()
        for conversation_id in missing:
            created += await self.enqueue(conversation_id)
        for task_id in moot:
            await self.cancel_task(task_id, reason="conversation assigned or closed")
        return created

    async def enqueue(self, conversation_id: int, *, queue_id: int | None = None) -> int:
        """Create the conversation's live task (idempotent: at most one live task)."""
        try:
            async with self.rt.db.write() as session:
                conversation = await session.get(Conversation, conversation_id)
                if (
                    conversation is None
                    or conversation.status != ConversationStatus.open
                    or conversation.assignee_id is not None
                ):
                    return 0
                live = await session.scalar(
                    select(RoutingTask.id).where(
                        RoutingTask.active_conversation_id == conversation_id
                    )
                )
                if live is not None:
                    return 0
                queue = (
                    await session.get(Queue, queue_id)
                    if queue_id is not None
                    else await choose_queue(session, conversation)
                )
                if queue is None:
                    return 0
                session.add(await self._new_task(session, conversation, queue))
            return 1
        except IntegrityError:
            return 0  # a concurrent enqueue made it first

    async def _new_task(
        self, session: AsyncSession, conversation: Conversation, queue: Queue
    ) -> RoutingTask:
        now = self.clock.now()
        inbox = await session.get(Inbox, conversation.inbox_id)
        sticky_agent = None
        if queue.sticky_seconds > 0:
            sticky_agent = await session.scalar(
                select(Conversation.assignee_id)
                .where(
                    Conversation.customer_id == conversation.customer_id,
                    Conversation.id != conversation.id,
                    Conversation.assignee_id.is_not(None),
                )
                .order_by(Conversation.last_message_at.desc())
                .limit(1)
            )
        return RoutingTask(
            conversation_id=conversation.id,
            active_conversation_id=conversation.id,
            queue_id=queue.id,
            channel=channel_class(inbox.kind if inbox else "").value,
            language=queue.language or conversation.language,
            status=TaskStatus.waiting.value,
            rank=task_rank(now, queue.priority, conversation.priority),
            enqueued_at=now,
            stage=0,
            any_team_agent=False,
            skills_dropped=False,
            excluded=[],
            sticky_agent_id=sticky_agent,
            sticky_until=now + timedelta(seconds=queue.sticky_seconds) if sticky_agent else None,
        )

    async def cancel_task(self, task_id: int, *, reason: str) -> None:
        async with self.rt.db.write() as session:
            task = await session.get(RoutingTask, task_id, with_for_update=True)
            if task is None or task.active_conversation_id is None:
                return
            await withdraw_offers(
                session, self.clock, task_id=task.id, reason=reason, requeue=False
            )
            task.status = TaskStatus.cancelled.value
            task.active_conversation_id = None
            task.ended_at = self.clock.now()

    # ----- time-driven changes

    async def expire_offers(self) -> int:
        now = self.clock.now()
        async with self.rt.db.read() as session:
            due = (
                await session.scalars(
                    select(Offer.id).where(
                        Offer.status == OfferStatus.pending.value, Offer.expires_at <= now
                    )
                )
            ).all()
        for offer_id in due:
            with contextlib.suppress(RoutingError):
                await self.answer(offer_id, None, accept=False, expired=True)
        return len(due)

    async def overflow(self) -> int:
        """Apply the overflow steps whose time has come to waiting tasks."""
        now = self.clock.now()
        changed = 0
        async with self.rt.db.read() as session:
            if not await session.scalar(
                select(func.count()).select_from(Queue).where(Queue.overflow != [])
            ):
                return 0
        async with self.rt.db.write() as session:
            queues = {q.id: q for q in (await session.scalars(select(Queue))).all()}
            overflowing = [q.id for q in queues.values() if q.overflow]
            tasks = (
                await session.scalars(
                    select(RoutingTask).where(
                        RoutingTask.status == TaskStatus.waiting.value,
                        RoutingTask.queue_id.in_(overflowing),
                    )
                )
            ).all()
            for task in tasks:
                steps = queues[task.queue_id].overflow
                waited = (now - task.enqueued_at).total_seconds()
                while task.stage < len(steps) and waited >= float(
                    steps[task.stage].get("after_seconds", 0)
                ):
                    step = steps[task.stage]
                    task.stage += 1
                    changed += 1
                    action = step.get("action")
                    if action == "drop_skills":
                        task.skills_dropped = True
                    elif action == "team":
                        task.any_team_agent = True
                    elif action == "queue" and step.get("queue_id") in queues:
                        target = queues[int(step["queue_id"])]
                        task.queue_id = target.id
                        task.stage = 0
                        task.skills_dropped = False
                        task.any_team_agent = False
                        task.language = target.language or task.language
                        steps = target.overflow
                        waited = 0.0  # the new queue's steps count from the move; rank kept
        return changed

    async def disconnects(self) -> int:
        """Agents whose websockets fell silent past the grace period go offline."""
        limit = self.clock.now() - timedelta(seconds=self.settings.agent_grace_seconds)
        async with self.rt.db.read() as session:
            silent = (
                await session.scalars(
                    select(AgentStatus.agent_id).where(
                        AgentStatus.state != Presence.offline.value,
                        AgentStatus.last_seen_at.is_not(None),
                        AgentStatus.last_seen_at < limit,
                    )
                )
            ).all()
        for agent_id in silent:
            await self.agent_gone(agent_id)
        return len(silent)

    async def agent_gone(self, agent_id: int) -> None:
        """Offline: pending offers withdrawn; open chats re-queued where the queue says so."""
        async with self.rt.db.write() as session:
            await set_presence(
                session, agent_id, Presence.offline, clock=self.clock, reason="disconnected"
            )
            chats = (
                await session.scalars(
                    select(Conversation)
                    .join(Inbox, Inbox.id == Conversation.inbox_id)
                    .where(
                        Conversation.assignee_id == agent_id,
                        Conversation.status == ConversationStatus.open.value,
                        Inbox.kind.not_in(("email", "voice")),
                    )
                )
            ).all()
            for conversation in chats:
                last = await session.scalar(
                    select(RoutingTask)
                    .where(RoutingTask.conversation_id == conversation.id)
                    .order_by(RoutingTask.id.desc())
                    .limit(1)
                )
                queue = await session.get(Queue, last.queue_id) if last is not None else None
                if queue is None or not queue.requeue_on_disconnect:
                    continue
                await self._unassign(session, conversation, reason="agent disconnected")
                session.add(await self._new_task(session, conversation, queue))

    async def _unassign(
        self, session: AsyncSession, conversation: Conversation, *, reason: str
    ) -> None:
        previous = conversation.assignee_id
        conversation.assignee_id = None
        conversation.updated_at = self.clock.now()
        await session.flush()
        events.append(
            session,
            "conversation.assigned",
            {
                **conversation_view(conversation),
                "assignee_id": None,
                "previous_assignee_id": previous,
                "reason": reason,
            },
            clock=self.clock,
            conversation_id=conversation.id,
            customer_id=conversation.customer_id,
            agent_id=previous,
        )

    # ----- matching

    async def _candidates(self, session: AsyncSession) -> dict[int, Candidate]:
        rows = (
            await session.execute(
                select(Agent, AgentStatus)
                .join(AgentStatus, AgentStatus.agent_id == Agent.id)
                .where(AgentStatus.state == Presence.available.value, Agent.is_active.is_(True))
            )
        ).all()
        if not rows:
            return {}
        ids = [agent.id for agent, _ in rows]
        loads = await agent_loads(session, ids)
        teams: dict[int, set[int]] = defaultdict(set)
        for agent_id, team_id in (
            await session.execute(
                select(TeamMember.agent_id, TeamMember.team_id).where(TeamMember.agent_id.in_(ids))
            )
        ).all():
            teams[agent_id].add(team_id)
        # Idle since: the later of the status row's mark (became available, last offer or
        # assignment) and the last time one of the agent's conversations was resolved.
        released = dict(
            (
                await session.execute(
                    select(Conversation.assignee_id, func.max(Conversation.resolved_at))
                    .where(Conversation.assignee_id.in_(ids), Conversation.resolved_at.is_not(None))
                    .group_by(Conversation.assignee_id)
                )
            ).all()
        )
        return {
            agent.id: Candidate(
                agent=agent,
                teams=teams[agent.id],
                load=loads[agent.id],
                idle_since=max(stamp(status.idle_since), stamp(released.get(agent.id))),
                last_offer_at=stamp(status.last_offer_at),
                skills={str(k): int(v) for k, v in (agent.skills or {}).items()},
            )
            for agent, status in rows
        }

    def qualified(self, c: Candidate, task: RoutingTask, queue: Queue) -> bool:
        if c.agent.id in (task.excluded or []):
            return False
        if not has_room(c.agent, c.load, task.channel):
            return False
        if queue.team_id is not None and queue.team_id not in c.teams:
            return False
        if task.any_team_agent:
            return True
        if task.language and task.language not in (c.agent.languages or []):
            return False
        if not task.skills_dropped:
            for skill, level in (queue.skills or {}).items():
                if c.skills.get(skill, 0) < int(level):
                    return False
        return True

    @staticmethod
    def pick(candidates: list[Candidate], queue: Queue, cls: str) -> Candidate:
        """The queue's strategy among qualified agents; every tie ends on agent id."""
        strategy = queue.strategy
        if strategy == Strategy.least_occupied:
            return min(
                candidates,
                key=lambda c: (
                    c.load.get(cls, 0) / max(1, capacity_of(c.agent, cls)),
                    sum(c.load.values()),
                    c.idle_since,
                    c.agent.id,
                ),
            )
        if strategy == Strategy.round_robin:
            return min(candidates, key=lambda c: (c.last_offer_at, c.agent.id))
        if strategy == Strategy.best_match:
            wanted = queue.skills or {}
            return min(
                candidates,
                key=lambda c: (
                    -sum(c.skills.get(s, 0) for s in wanted),
                    c.idle_since,
                    c.agent.id,
                ),
            )
        return min(candidates, key=lambda c: (c.idle_since, c.agent.id))

    async def plan(self) -> list[Planned]:
        """Choose an agent for as many waiting tasks as possible, in rank order (no writes)."""
        now = self.clock.now()
        planned: list[Planned] = []
        async with self.rt.db.read() as session:
            candidates = await self._candidates(session)
            if not candidates:
                return []
            queues = {q.id: q for q in (await session.scalars(select(Queue))).all()}
            offset = 0
            while True:
                tasks = (
                    await session.scalars(
                        select(RoutingTask)
                        .where(RoutingTask.status == TaskStatus.waiting.value)
                        .order_by(RoutingTask.rank, RoutingTask.id)
                        .offset(offset)
                        .limit(PAGE)
                    )
                ).all()
                for task in tasks:
                    queue = queues.get(task.queue_id)
                    if queue is None:
                        continue
                    fits = [c for c in candidates.values() if self.qualified(c, task, queue)]
                    sticky_id = task.sticky_agent_id
                    if sticky_id is not None and task.sticky_until and task.sticky_until > now:
                        sticky = [c for c in fits if c.agent.id == sticky_id]
                        if sticky:
                            fits = sticky
                        elif sticky_id in candidates or await self._online(session, sticky_id):
                            continue  # wait for the agent who helped last time
                    if not fits:
                        continue
                    chosen = self.pick(fits, queue, task.channel)
                    chosen.load[task.channel] = chosen.load.get(task.channel, 0) + 1
                    chosen.last_offer_at = chosen.idle_since = now.timestamp()
                    planned.append(Planned(task.id, chosen.agent.id))
                if len(tasks) < PAGE or not any(
                    any(has_room(c.agent, c.load, cls) for cls in ChannelClass)
                    for c in candidates.values()
                ):
                    break
                offset += PAGE
        return planned

    async def _online(self, session: AsyncSession, agent_id: int) -> bool:
        state = await session.scalar(
            select(AgentStatus.state).where(AgentStatus.agent_id == agent_id)
        )
        return state is not None and state != Presence.offline.value

    async def offer(self, task_id: int, agent_id: int) -> Offer | None:
        """Commit one offer (or, for auto-accept classes, the assignment) after re-checking."""
        now = self.clock.now()
        async with self.rt.db.write() as session:
            status = await agent_status(session, agent_id, self.clock)
            if status.state != Presence.available:
                return None
            agent = await session.get(Agent, agent_id)
            task = await session.get(RoutingTask, task_id)
            if agent is None or task is None or task.status != TaskStatus.waiting:
                return None
            queue = await session.get(Queue, task.queue_id)
            if queue is None:
                return None
            load = (await agent_loads(session, [agent_id]))[agent_id]
            if not has_room(agent, load, task.channel):
                return None
            moved = await session.execute(
                update(RoutingTask)
                .where(RoutingTask.id == task_id, RoutingTask.status == TaskStatus.waiting.value)
                .values(status=TaskStatus.offered.value)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return None
            await session.refresh(task)
            offer = Offer(
                task_id=task.id,
                conversation_id=task.conversation_id,
                agent_id=agent_id,
                queue_id=queue.id,
                channel=task.channel,
                status=OfferStatus.pending.value,
                created_at=now,
                expires_at=now + timedelta(seconds=max(1, queue.offer_timeout_seconds)),
            )
            session.add(offer)
            status.last_offer_at = now
            status.idle_since = now
            await session.flush()
            conversation = await session.get(Conversation, task.conversation_id)
            assert conversation is not None
            summary = await self._summary(session, conversation)
            events.append(
                session,
                "offer.created",
                offer_view(offer, task, summary),
                clock=self.clock,
                agent_id=agent_id,
                conversation_id=conversation.id,
                customer_id=conversation.customer_id,
            )
            if task.channel in (queue.auto_accept or []):
                await self._accept(session, offer, task, conversation, status, auto=True)
            return offer

    async def _summary(self, session: AsyncSession, conversation: Conversation) -> dict[str, Any]:
        customer = await session.get(Customer, conversation.customer_id)
        inbox = await session.get(Inbox, conversation.inbox_id)
        preview = await session.scalar(
            select(Message.text)
            .where(Message.conversation_id == conversation.id, Message.private.is_(False))
            .order_by(Message.id.desc())
            .limit(1)
        )
        return {
            "channel": inbox.kind if inbox else None,
            "inbox_id": conversation.inbox_id,
            "customer": {"id": customer.id, "name": customer.name} if customer else None,
            "priority": Priority(conversation.priority).name,
            "subject": conversation.subject,
            "preview": (preview or "")[:200],
        }

    async def answer(
        self, offer_id: int, agent_id: int | None, *, accept: bool, expired: bool = False
    ) -> Offer:
        """An agent accepts or declines their offer; ``expired`` is the engine's timeout."""
        async with self.rt.db.write() as session:
            offer = await session.get(Offer, offer_id, with_for_update=True)
            if offer is None or (agent_id is not None and offer.agent_id != agent_id):
                raise RoutingError("no such offer")
            status = await agent_status(session, offer.agent_id, self.clock)
            if offer.status != OfferStatus.pending:
                raise RoutingError(f"the offer is already {offer.status}")
            now = self.clock.now()
            task = await session.get(RoutingTask, offer.task_id, with_for_update=True)
            assert task is not None
            if accept and offer.expires_at <= now:
                expired, accept = True, False
            conversation = await session.get(Conversation, offer.conversation_id)
            if accept:
                if (
                    conversation is None
                    or conversation.assignee_id is not None
                    or conversation.status != ConversationStatus.open
                ):
                    offer.status = OfferStatus.withdrawn.value
                    offer.answered_at = now
                    raise RoutingError("the conversation is no longer waiting")
                await self._accept(session, offer, task, conversation, status, auto=False)
                return offer
            offer.status = (OfferStatus.expired if expired else OfferStatus.declined).value
            offer.answered_at = now
            task.status = TaskStatus.waiting.value
            task.excluded = [*(task.excluded or []), offer.agent_id]
            events.append(
                session,
                f"offer.{offer.status}",
                {"offer_id": offer.id, "conversation_id": offer.conversation_id},
                clock=self.clock,
                agent_id=offer.agent_id,
                conversation_id=offer.conversation_id,
            )
            if expired:
                status.missed_offers += 1
                if status.missed_offers >= self.settings.routing_max_missed_offers:
                    await set_presence(
                        session,
                        offer.agent_id,
                        Presence.away,
                        clock=self.clock,
                        reason="missed offers",
                    )
            return offer

    async def _accept(
        self,
        session: AsyncSession,
        offer: Offer,
        task: RoutingTask,
        conversation: Conversation,
        status: AgentStatus,
        *,
        auto: bool,
    ) -> None:
        now = self.clock.now()
        offer.status = OfferStatus.accepted.value
        offer.answered_at = now
        task.status = TaskStatus.assigned.value
        task.agent_id = offer.agent_id
        task.assigned_at = now
        task.ended_at = now
        task.active_conversation_id = None
        status.missed_offers = 0
        conversation.assignee_id = offer.agent_id
        conversation.updated_at = now
        await session.flush()
        events.append(
            session,
            "offer.accepted",
            {"offer_id": offer.id, "conversation_id": offer.conversation_id, "auto": auto},
            clock=self.clock,
            agent_id=offer.agent_id,
            conversation_id=offer.conversation_id,
        )
        events.append(
            session,
            "conversation.assigned",
            {
                **conversation_view(conversation),
                "previous_assignee_id": None,
                "queue_id": task.queue_id,
                "waited_seconds": round((now - task.enqueued_at).total_seconds(), 3),
                "reason": "auto-accepted" if auto else "accepted",
            },
            clock=self.clock,
            agent_id=offer.agent_id,
            conversation_id=conversation.id,
            customer_id=conversation.customer_id,
        )

    # ----- direct assignment and transfer

    async def assign(
        self,
        conversation_id: int,
        agent_id: int,
        *,
        by_agent_id: int | None,
        reason: str = "assigned",
    ) -> Conversation:
        """Assign directly (supervisor, transfer to an agent), capacity-checked."""
        async with self.rt.db.write() as session:
            status = await agent_status(session, agent_id, self.clock)
            agent = await session.get(Agent, agent_id)
            if agent is None or not agent.is_active:
                raise RoutingError("no such agent")
            conversation = await session.get(Conversation, conversation_id, with_for_update=True)
            if conversation is None:
                raise RoutingError("no such conversation")
            if conversation.assignee_id == agent_id:
                return conversation
            inbox = await session.get(Inbox, conversation.inbox_id)
            cls = channel_class(inbox.kind if inbox else "")
            load = (await agent_loads(session, [agent_id]))[agent_id]
            if not has_room(agent, load, cls):
                raise RoutingError(f"{agent.name} has no free {cls.value} capacity")
            live = await session.scalar(
                select(RoutingTask)
                .where(RoutingTask.active_conversation_id == conversation_id)
                .with_for_update()
            )
            if live is not None:
                await withdraw_offers(
                    session, self.clock, task_id=live.id, reason=reason, requeue=False
                )
                live.status = TaskStatus.assigned.value
                live.agent_id = agent_id
                live.assigned_at = live.ended_at = self.clock.now()
                live.active_conversation_id = None
            previous = conversation.assignee_id
            conversation.assignee_id = agent_id
            conversation.updated_at = self.clock.now()
            status.idle_since = self.clock.now()
            await session.flush()
            events.append(
                session,
                "conversation.assigned",
                {
                    **conversation_view(conversation),
                    "previous_assignee_id": previous,
                    "by_agent_id": by_agent_id,
                    "reason": reason,
                },
                clock=self.clock,
                agent_id=agent_id,
                conversation_id=conversation.id,
                customer_id=conversation.customer_id,
            )
            return conversation

    async def transfer_to_queue(
        self, conversation_id: int, queue_id: int, *, by_agent_id: int | None
    ) -> RoutingTask:
        async with self.rt.db.write() as session:
            conversation = await session.get(Conversation, conversation_id, with_for_update=True)
            queue = await session.get(Queue, queue_id)
            if conversation is None or queue is None:
                raise RoutingError("no such conversation or queue")
            if conversation.status != ConversationStatus.open:
                raise RoutingError("only open conversations can be queued")
            live = await session.scalar(
                select(RoutingTask)
                .where(RoutingTask.active_conversation_id == conversation_id)
                .with_for_update()
            )
            if live is not None:
                await withdraw_offers(
                    session, self.clock, task_id=live.id, reason="transferred", requeue=False
                )
                live.status = TaskStatus.cancelled.value
                live.active_conversation_id = None
                live.ended_at = self.clock.now()
                await session.flush()
            if conversation.assignee_id is not None:
                await self._unassign(session, conversation, reason="transferred to a queue")
            task = await self._new_task(session, conversation, queue)
            task.sticky_agent_id = None
            task.sticky_until = None
            if by_agent_id is not None:
                task.excluded = [by_agent_id]
            session.add(task)
            await session.flush()
            return task

    # ----- the loop

    async def run_pass(self) -> int:
        """One routing pass. Returns how many offers were made."""
        await self.reconcile()
        await self.expire_offers()
        await self.overflow()
        await self.disconnects()
        made = 0
        for item in await self.plan():
            if await self.offer(item.task_id, item.agent_id) is not None:
                made += 1
        if made:
            await self.rt.committed()
        return made

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop``: woken by events on the bus, and every tick regardless."""
        from contact_center.relay import EVENTS_CHANNEL

        wake = await self.rt.bus.subscribe(EVENTS_CHANNEL, WAKE_CHANNEL)
        tick = self.settings.routing_tick_seconds
        try:
            while not stop.is_set():
                try:
                    await self.run_pass()
                except Exception:
                    log.exception("routing pass failed; retrying")
                    await asyncio.sleep(1)
                await wake.get(timeout=tick)
                wake.drain()
        finally:
            wake.close()


def engine_of(rt: Runtime) -> RoutingEngine:
    """The process's engine (built by the composition root; stateless over the runtime)."""
    engine = rt.extras.get("routing")
    if not isinstance(engine, RoutingEngine):
        engine = rt.extras["routing"] = RoutingEngine(rt)
    return engine
