"""The routing engine: tasks for conversations that need a human, offers to agents, answers.

See docs/architecture.md §12. The in-memory choice (``plan``) is only a proposal: every offer
and assignment is committed by a short transaction that re-checks presence, capacity and the
task's state under the agent's row lock, so racing engines or actions can fail, never
double-offer, double-assign or overfill an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, lazyload

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
from contact_center.runtime import ARRIVALS_CHANNEL
from contact_center.views import conversation_view, ts
from routing import sla
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
# A task without a running response clock is ranked as if promised an answer within this long
# (for a normal-priority conversation): one time scale with the SLA deadlines, so neither kind
# of work can starve the other.
DEFAULT_TARGET_SECONDS = 3600.0
PAGE = 500
OFFER_BATCH = 200  # offers committed per transaction
# The longest the engine plans on an unreloaded picture of the agents. Changes to agents reload
# it at once (events); the timer is a safety net, and a reload of 1,000 agents (~40 ms) slows
# the passes that overlap it, so it is not frequent.
SNAPSHOT_SECONDS = 30.0
SWEEP_SECONDS = 10.0  # the reconcile sweep (a safety net for missed events) in the run loop
LOAD_STATUSES = (ConversationStatus.open.value, ConversationStatus.pending.value)
WAKE_CHANNEL = "routing.wake"
CONFIG_CHANNEL = "routing.config"  # queues or rules changed: a running engine reloads them
CONFIG_SECONDS = 5.0  # a running engine's queues and rules are reloaded at least this often
AFTER_PASS_SECONDS = 0.5  # background work waits at most this long for a pass to end
HINT_SECONDS = 60.0  # an event repeating an arrival hint this recent is skipped
HINTS_KEPT = 10_000  # hinted conversations remembered before the old ones are dropped
SNAPSHOT_CHANNEL = "routing.snapshot"  # local only: a reloaded picture of the agents is ready
HOUSEKEEPING_CHANNEL = "routing.housekeeping"  # local only: expiry, overflow... changed things
# Events after which a conversation may need a task (its own quick pass); any event at all
# may free an agent or change presence, so every wake-up also plans.
ROUTABLE = frozenset({"conversation.created", "conversation.updated", "conversation.assigned"})

EVENT_TYPES = (
    "offer.created",
    "offer.accepted",
    "offer.declined",
    "offer.expired",
    "offer.withdrawn",
    "conversation.assigned",
    "presence.updated",
)


_STATUS: Table = AgentStatus.__table__  # type: ignore[assignment]
_AGENTS: Table = Agent.__table__  # type: ignore[assignment]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
_CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
_INBOXES: Table = Inbox.__table__  # type: ignore[assignment]
_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_TASKS: Table = RoutingTask.__table__  # type: ignore[assignment]
_OFFERS: Table = Offer.__table__  # type: ignore[assignment]


class RoutingError(ValueError):
    """An answer or action that cannot be applied (wrong agent, stale offer, no capacity)."""


class RoutingForbidden(RoutingError):
    """An action this agent may not take (e.g. transferring someone else's conversation)."""


# --------------------------------------------------------------------------- views


def offer_view(offer: Offer, enqueued_at: datetime, extra: dict[str, Any]) -> dict[str, Any]:
    """An offer as agents see it; ``enqueued_at`` is its task's."""
    return {
        "offer_id": offer.id,
        "task_id": offer.task_id,
        "conversation_id": offer.conversation_id,
        "agent_id": offer.agent_id,
        "queue_id": offer.queue_id,
        "channel_class": offer.channel,
        "status": offer.status,
        "created_at": ts(offer.created_at),
        "expires_at": ts(offer.expires_at),
        "enqueued_at": ts(enqueued_at),
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
    """Change presence (logged for occupancy). Leaving ``available`` withdraws pending offers;
    going ``offline`` also re-queues (or keeps) the agent's live chats, as their queue says."""
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
        if state == Presence.offline:
            # Offline, by choice or by a silent socket: the per-queue rule for live chats.
            # (Conversations before tasks and offers: the lock order, see commit_offers.)
            gone = "agent disconnected" if reason == "disconnected" else "agent offline"
            await requeue_chats(session, agent_id, clock=clock, reason=gone)
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


M = TypeVar("M")


async def lock_in_id_order(
    session: AsyncSession,
    model: type[M],
    key: InstrumentedAttribute[int],
    ids: Collection[int],
    *,
    fresh: bool = False,
) -> dict[int, M]:
    """Lock the rows whose ``key`` is in ``ids``, in key order (so two transactions locking
    overlapping sets cannot deadlock on them), by key; ``fresh`` reloads rows this session
    already holds."""
    query = select(model).where(key.in_(ids)).order_by(key).with_for_update()
    if fresh:
        query = query.execution_options(populate_existing=True)
    rows = (await session.scalars(query)).all()
    return {int(getattr(row, key.key)): row for row in rows}


async def lock_rows_in_id_order(
    session: AsyncSession,
    query: Select[Any],
    key: ColumnElement[int],
    ids: Collection[int] | Select[Any],
    *,
    of: Table,
) -> list[Row[Any]]:
    """``lock_in_id_order`` for Core reads: the rows of ``query`` (columns of ``of`` and of
    tables joined to it) whose ``key`` is in ``ids`` (a list or a subquery), with ``of``'s
    rows locked in key order; only ``of`` is locked."""
    query = query.where(key.in_(ids)).order_by(key).with_for_update(of=of)
    return list((await session.execute(query)).all())


async def withdraw_offers(
    session: AsyncSession,
    clock: Clock,
    *,
    agent_id: int | None = None,
    task_id: int | None = None,
    reason: str,
    requeue: bool = True,
) -> int:
    """Withdraw pending offers (of an agent or of a task); their tasks wait again. Tasks are
    locked before their offers (the lock order: agent status, conversation, task, offer)."""
    query = select(Offer.task_id).where(Offer.status == OfferStatus.pending.value)
    if agent_id is not None:
        query = query.where(Offer.agent_id == agent_id)
    if task_id is not None:
        query = query.where(Offer.task_id == task_id)
    task_ids = sorted(set((await session.scalars(query)).all()))
    if not task_ids:
        return 0
    tasks = await lock_in_id_order(session, RoutingTask, RoutingTask.id, task_ids)
    offers = (
        await session.scalars(
            select(Offer)
            .where(Offer.task_id.in_(task_ids), Offer.status == OfferStatus.pending.value)
            .order_by(Offer.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).all()
    if agent_id is not None:
        offers = [o for o in offers if o.agent_id == agent_id]
    now = clock.now()
    for offer in offers:
        offer.status = OfferStatus.withdrawn.value
        offer.answered_at = now
        task = tasks.get(offer.task_id)
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


# --------------------------------------------------------------------------- tasks and assignees


async def last_agents(session: AsyncSession, conversations: list[Conversation]) -> dict[int, int]:
    """For sticky routing: the agent of each customer's latest other conversation."""
    if not conversations:
        return {}
    by_customer = {c.customer_id: c.id for c in conversations}
    rows = (
        await session.execute(
            select(Conversation.customer_id, Conversation.assignee_id, Conversation.id)
            .where(
                Conversation.customer_id.in_(by_customer),
                Conversation.assignee_id.is_not(None),
                Conversation.id.not_in(by_customer.values()),
            )
            .order_by(Conversation.last_message_at, Conversation.id)
        )
    ).all()
    latest = {customer: agent for customer, agent, _ in rows if agent is not None}
    return {by_customer[c]: a for c, a in latest.items()}


def task_values(
    conversation: Conversation,
    kind: str,
    queue: Queue,
    sticky_agent: int | None,
    now: datetime,
    deadline: datetime | None = None,
) -> dict[str, Any]:
    return {
        "conversation_id": conversation.id,
        "active_conversation_id": conversation.id,
        "queue_id": queue.id,
        "channel": channel_class(kind).value,
        "language": queue.language or conversation.language,
        "status": TaskStatus.waiting.value,
        "rank": task_rank(now, queue.priority, conversation.priority, deadline),
        "enqueued_at": now,
        "stage": 0,
        "any_team_agent": False,
        "skills_dropped": False,
        "excluded": [],
        "sticky_agent_id": sticky_agent,
        "sticky_until": now + timedelta(seconds=queue.sticky_seconds) if sticky_agent else None,
    }


async def new_task(
    session: AsyncSession, conversation: Conversation, queue: Queue, clock: Clock
) -> RoutingTask:
    """A task built inside the caller's transaction (transfers, re-queues)."""
    inbox = await session.get(Inbox, conversation.inbox_id)
    sticky = await last_agents(session, [conversation]) if queue.sticky_seconds else {}
    due = await sla.deadlines(session, [conversation.id])
    return RoutingTask(
        **task_values(
            conversation,
            inbox.kind if inbox else "",
            queue,
            sticky.get(conversation.id),
            clock.now(),
            due.get(conversation.id),
        )
    )


def assigned_payload(
    conversation: Conversation, previous: int | None, reason: str, **extra: Any
) -> dict[str, Any]:
    """The ``conversation.assigned`` event's payload (the conversation as assigned)."""
    return {
        **conversation_view(conversation),
        "previous_assignee_id": previous,
        "reason": reason,
        **extra,
    }


def set_assignee(
    session: AsyncSession,
    conversation: Conversation,
    agent_id: int | None,
    *,
    clock: Clock,
    reason: str,
    **extra: Any,
) -> None:
    """Change the assignee and append ``conversation.assigned`` (also for unassigning:
    then the event goes to the previous agent's stream)."""
    previous = conversation.assignee_id
    conversation.assignee_id = agent_id
    conversation.updated_at = clock.now()
    events.append(
        session,
        "conversation.assigned",
        assigned_payload(conversation, previous, reason, **extra),
        clock=clock,
        agent_id=agent_id if agent_id is not None else previous,
        conversation_id=conversation.id,
        customer_id=conversation.customer_id,
    )


async def requeue_chats(session: AsyncSession, agent_id: int, *, clock: Clock, reason: str) -> int:
    """The agent's open live chats (not email, not calls) go back to their queue, for queues
    with ``requeue_on_disconnect``; the others stay with the agent. Returns how many went."""
    chats = (
        await session.scalars(
            select(Conversation)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .where(
                Conversation.assignee_id == agent_id,
                Conversation.status == ConversationStatus.open.value,
                Inbox.kind.not_in(("email", "voice")),
            )
            .order_by(Conversation.id)
            .with_for_update(of=Conversation)
        )
    ).all()
    moved = 0
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
        set_assignee(session, conversation, None, clock=clock, reason=reason)
        session.add(await new_task(session, conversation, queue, clock))
        moved += 1
    return moved


# --------------------------------------------------------------------------- loads


def _zero_load() -> dict[str, int]:
    return {"voice": 0, "chat": 0, "email": 0}


async def agent_loads(
    session: AsyncSession, agent_ids: list[int] | None = None, *, available_only: bool = False
) -> dict[int, dict[str, int]]:
    """Per agent and channel class: open/pending conversations assigned + pending offers
    (of the agents given, of the available ones, or of all)."""
    loads: dict[int, dict[str, int]] = defaultdict(_zero_load)
    assigned = (
        select(literal(False).label("is_offer"), Conversation.assignee_id, Inbox.kind, func.count())
        .join(Inbox, Inbox.id == Conversation.inbox_id)
        .where(Conversation.assignee_id.is_not(None), Conversation.status.in_(LOAD_STATUSES))
        .group_by(Conversation.assignee_id, Inbox.kind)
    )
    offered = (
        select(literal(True).label("is_offer"), Offer.agent_id, Offer.channel, func.count())
        .where(Offer.status == OfferStatus.pending.value)
        .group_by(Offer.agent_id, Offer.channel)
    )
    if agent_ids is not None:
        assigned = assigned.where(Conversation.assignee_id.in_(agent_ids))
        offered = offered.where(Offer.agent_id.in_(agent_ids))
    if available_only:
        available = AgentStatus.state == Presence.available.value
        assigned = assigned.join(AgentStatus, AgentStatus.agent_id == Conversation.assignee_id)
        assigned = assigned.where(available)
        offered = offered.join(AgentStatus, AgentStatus.agent_id == Offer.agent_id)
        offered = offered.where(available)
    # One round trip: the assigned rows name an inbox kind, the offered rows a class.
    rows: Any = (await session.execute(union_all(assigned, offered))).all()
    for is_offer, agent_id, name, n in rows:
        if agent_id is not None:
            loads[agent_id][name if is_offer else channel_class(name).value] += n
    return loads


class HasCapacity(Protocol):
    @property
    def capacity(self) -> dict[str, Any]: ...
    @property
    def voice_blocks_chat(self) -> bool: ...


def capacity_of(agent: HasCapacity, cls: str) -> int:
    value = (agent.capacity or {}).get(cls, DEFAULT_CAPACITY[cls])
    return max(0, int(value))


def has_room(agent: HasCapacity, load: dict[str, int], cls: str) -> bool:
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


def pick_queue(
    queues: dict[int, Queue],
    rules: list[RoutingRule],
    *,
    inbox_id: str,
    channel: str,
    language: str | None,
    tier: str | None,
    text: str,
    priority: int,
) -> Queue | None:
    """The first rule that matches names the queue; else the default queue (or the oldest)."""
    if not queues:
        return None
    for rule in rules:
        if rule.queue_id in queues and rule_matches(
            rule.conditions or {},
            inbox_id=inbox_id,
            channel=channel,
            language=language,
            tier=tier,
            text=text,
            priority=priority,
        ):
            return queues[rule.queue_id]
    defaults = [q for q in queues.values() if q.is_default]
    return (defaults or sorted(queues.values(), key=lambda q: q.id))[0]


async def routing_config(session: AsyncSession) -> tuple[dict[int, Queue], list[RoutingRule]]:
    queues = {q.id: q for q in (await session.scalars(select(Queue))).all()}
    rules = list(
        (
            await session.scalars(
                select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)
            )
        ).all()
    )
    return queues, rules


def task_rank(
    enqueued_at: datetime, queue_priority: int, priority: int, deadline: datetime | None = None
) -> float:
    """Lower goes first: a deadline in epoch seconds, less the queue's priority bonus. With an
    SLA response clock running, its deadline (the policy's target already depends on the
    conversation's priority); without, a virtual one: ``DEFAULT_TARGET_SECONDS`` after the task
    was queued, less a bonus per priority level above normal (a malus below). Both kinds share
    one time scale, so an old task without a promise eventually goes before new ones with a
    promise (docs/architecture.md §12, §14)."""
    if deadline is not None:
        return deadline.timestamp() - queue_priority * PRIORITY_STEP
    bonus = queue_priority + (priority - Priority.normal.value)
    return enqueued_at.timestamp() + DEFAULT_TARGET_SECONDS - bonus * PRIORITY_STEP


def frees_or_changes_agents(env: dict[str, Any]) -> bool:
    """Events after which the engine's picture of the agents must be reloaded (presence,
    freed capacity, released offers); the engine's own offers and assignments are not."""
    kind = env.get("type")
    if kind in ("presence.updated", "offer.declined", "offer.expired", "offer.withdrawn"):
        return True
    data = env.get("data") or {}
    if kind == "conversation.updated":
        return "status" in (data.get("changes") or {})
    if kind == "conversation.assigned":
        return data.get("reason") not in ("accepted", "auto-accepted")
    return False


class ArrivalHints:
    """Which conversations a batch of bus messages asks the engine to give tasks to.

    An arrival hint names conversations an ingest just committed as routable; the events of
    the same commit (``conversation.created``, or ``conversation.updated`` because the customer
    replied) follow through the relay a few milliseconds later and would only repeat it, so
    they are skipped for conversations hinted within HINT_SECONDS. Any other event that may
    need a task (a status change, an unassignment) still counts. A lost hint costs nothing
    but latency: the events then count, or at worst the sweep finds the conversation."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}

    def conversations(self, pending: list[tuple[str, dict[str, Any]]], now: float) -> list[int]:
        if len(self._seen) > HINTS_KEPT:
            self._seen = {c: t for c, t in self._seen.items() if now - t < HINT_SECONDS}
        ids: list[int] = []
        for channel, env in pending:
            if channel == ARRIVALS_CHANNEL:
                raw = env.get("conversation_ids")
                for cid in raw if isinstance(raw, list) else []:
                    if isinstance(cid, int) and not isinstance(cid, bool):
                        self._seen[cid] = now
                        ids.append(cid)
            elif may_need_task(env):
                cid = int(env["conversation_id"])
                hinted = self._seen.get(cid)
                if hinted is not None and now - hinted < HINT_SECONDS and repeats_hint(env):
                    continue
                ids.append(cid)
        return list(dict.fromkeys(ids))


def repeats_hint(env: dict[str, Any]) -> bool:
    """An event an arrival hint announced: a new conversation, or one the customer reopened."""
    kind = env.get("type")
    if kind == "conversation.created":
        return True
    return (
        kind == "conversation.updated"
        and (env.get("data") or {}).get("reason") == "customer_replied"
    )


def may_need_task(env: dict[str, Any]) -> bool:
    """Events naming a conversation that may need a live task: created, updated, or
    assigned to nobody (unassigned). An assignment to an agent (the engine's own among them)
    ends the need, so it wakes no pass for that conversation."""
    if env.get("type") not in ROUTABLE or not env.get("conversation_id"):
        return False
    if env.get("type") == "conversation.assigned":
        return (env.get("data") or {}).get("assignee_id") is None
    return True


# --------------------------------------------------------------------------- exclusions


def add_exclusion(
    entries: list[Any] | None, agent_id: int, *, until: datetime, since: datetime | None
) -> list[Any]:
    """``entries`` with ``agent_id`` held back from the task until ``until`` (or until they
    start a new stint of availability after ``since``): a decline, a miss, a transfer away."""
    kept = [e for e in entries or [] if _excluded_agent(e) != agent_id]
    return [
        *kept,
        {
            "agent": agent_id,
            "until": until.timestamp(),
            "since": since.timestamp() if since is not None else None,
        },
    ]


def _excluded_agent(entry: Any) -> int:
    return int(entry["agent"]) if isinstance(entry, dict) else int(entry)


def exclusions(entries: list[Any] | None) -> dict[int, tuple[float, float | None]]:
    """Agent -> (held back until, the availability stint it was recorded in). Bare ids (rows
    written before exclusions expired) count as expired: their agents are a fallback only."""
    out: dict[int, tuple[float, float | None]] = {}
    for entry in entries or []:
        if isinstance(entry, dict):
            out[int(entry["agent"])] = (float(entry.get("until") or 0.0), entry.get("since"))
        else:
            out[int(entry)] = (0.0, None)
    return out


def held_back(exclusion: tuple[float, float | None], now: float, available_since: float) -> bool:
    """Still inside the cool-down, and the agent has not come back to available since."""
    until, since = exclusion
    return now < until and (since is None or available_since <= since)


# --------------------------------------------------------------------------- the engine


NEVER = -1e18  # "no timestamp": sorts before every real one


def stamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else NEVER


@dataclass(frozen=True, slots=True)
class AgentProfile:
    id: int
    capacity: dict[str, Any]
    voice_blocks_chat: bool


@dataclass
class Candidate:
    """A snapshot of one available agent for planning (plain values: nothing to flush)."""

    agent: AgentProfile
    teams: set[int]
    load: dict[str, int]
    idle_since: float
    last_offer_at: float
    available_since: float = NEVER  # the start of the current stint of availability
    skills: dict[str, int] = field(default_factory=dict)
    languages: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Planned:
    task_id: int
    agent_id: int


class RoutingEngine:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.clock = rt.clock
        self.settings = rt.settings
        # The agents as the last plan left them (loads include what it planned). Quick
        # passes reuse it; full passes and agent-side events reload it. Only a proposal:
        # commit_offers re-checks everything in the database.
        self._snapshot: dict[int, Candidate] | None = None
        # The plan's heaps per group, kept across passes while the snapshot is the same
        # (within one snapshot every strategy key only grows and a full agent stays full, so
        # the lazy refresh stays right); building them walked every agent on every arrival.
        self._heaps: dict[tuple[Any, ...], list[tuple[tuple[float, ...], int]]] = {}
        self._heaps_of: dict[int, Candidate] | None = None
        # Queues and rules, kept by the running loop (``run``) between changes: every arrival
        # read them, two or three statements on its path. Changes through the API are
        # announced on CONFIG_CHANNEL; anything else is seen within CONFIG_SECONDS. Outside
        # the loop (tests, the bench's drain) every use reads them afresh.
        self._keep_config = False
        self._config: tuple[float, dict[int, Queue], list[RoutingRule]] | None = None
        # Set while the running loop (``run``) is between passes; the SLA consumer on the same
        # event loop waits for it between events (``SlaService._give_way``). None when no
        # loop runs.
        self.idle: asyncio.Event | None = None

    async def config(self, session: AsyncSession) -> tuple[dict[int, Queue], list[RoutingRule]]:
        """The queues by id and the rules in order (see ``_config``)."""
        now = asyncio.get_running_loop().time()
        if self._keep_config and self._config is not None and now < self._config[0]:
            return self._config[1], self._config[2]
        queues, rules = await routing_config(session)
        self._config = (now + CONFIG_SECONDS, queues, rules)
        return queues, rules

    def config_changed(self) -> None:
        self._config = None

    async def after_pass(self, limit: float = AFTER_PASS_SECONDS) -> None:
        """Wait (up to ``limit``) for the running loop's pass in progress to end: background
        work on the same event loop (housekeeping, a timed snapshot reload, the scheduler's
        periodic jobs) starts between passes instead of slowing an arrival's pass."""
        idle = self.idle
        if idle is not None and not idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), limit)

    # ----- tasks

    async def reconcile(self) -> int:
        """Give every open, unassigned conversation a live task; end tasks that are moot."""
        created = 0
        while True:
            made = await self.enqueue_many(None)
            created += made
            if made < PAGE:
                break
        async with self.rt.db.read() as session:
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
        for task_id in moot:
            await self.cancel_task(task_id, reason="conversation assigned or closed")
        return created

    async def enqueue(self, conversation_id: int) -> int:
        """Create the conversation's live task if it needs one (idempotent)."""
        return await self.enqueue_many([conversation_id])

    async def enqueue_many(self, conversation_ids: list[int] | None) -> int:
        """Live tasks for open, unassigned conversations without one: those given, or (None)
        the first PAGE of any. One read and one insert; at most one live task per
        conversation (a unique key), so racing engines cannot double them."""
        now = self.clock.now()
        insert_fn = sqlite_insert if self.rt.db.is_sqlite else pg_insert
        # No transaction on PostgreSQL: the reads need no common snapshot and the insert is
        # atomic alone (an arrival's first step: two transactions were four more round trips).
        async with self.rt.db.autocommit() as session:
            query = (
                select(Conversation, Inbox.kind, Customer.tier, Customer.locale)
                .join(Inbox, Inbox.id == Conversation.inbox_id)
                .join(Customer, Customer.id == Conversation.customer_id)
                .outerjoin(RoutingTask, RoutingTask.active_conversation_id == Conversation.id)
                .where(
                    Conversation.status == ConversationStatus.open.value,
                    Conversation.assignee_id.is_(None),
                    RoutingTask.id.is_(None),
                )
                .order_by(Conversation.id)
                .limit(PAGE)
            )
            if conversation_ids is not None:
                if not conversation_ids:
                    return 0
                query = query.where(Conversation.id.in_(conversation_ids))
            rows = (await session.execute(query)).all()
            if not rows:
                return 0
            queues, rules = await self.config(session)
            if not queues:
                return 0
            ids = [conv.id for conv, *_ in rows]
            first_ids = (
                select(func.min(Message.id))
                .where(Message.conversation_id.in_(ids), Message.direction == "in")
                .group_by(Message.conversation_id)
            )
            # The first message's text is only read when some rule matches keywords.
            first_text: dict[int, str | None] = {}
            if any((rule.conditions or {}).get("keywords") for rule in rules):
                first_text = dict(
                    (
                        await session.execute(
                            select(Message.conversation_id, Message.text).where(
                                Message.id.in_(first_ids)
                            )
                        )
                    ).all()
                )
            chosen = {
                conv.id: pick_queue(
                    queues,
                    rules,
                    inbox_id=conv.inbox_id,
                    channel=kind,
                    language=conv.language or locale,
                    tier=tier,
                    text=f"{conv.subject or ''}\n{first_text.get(conv.id) or ''}",
                    priority=conv.priority,
                )
                for conv, kind, tier, locale in rows
            }
            due = await sla.deadlines(session, ids)
            sticky = await self._last_agents(
                session,
                [conv for conv, *_ in rows if (q := chosen[conv.id]) and q.sticky_seconds > 0],
            )
            values = []
            for conv, kind, _, _ in rows:
                queue = chosen[conv.id]
                if queue is None:
                    continue
                values.append(
                    self._task_values(conv, kind, queue, sticky.get(conv.id), now, due.get(conv.id))
                )
            if not values:
                return 0
            await session.execute(
                insert_fn(RoutingTask.__table__)  # type: ignore[arg-type]
                .values(values)
                .on_conflict_do_nothing(index_elements=["active_conversation_id"])
            )
        return len(values)

    async def _last_agents(
        self, session: AsyncSession, conversations: list[Conversation]
    ) -> dict[int, int]:
        return await last_agents(session, conversations)

    def _task_values(
        self,
        conversation: Conversation,
        kind: str,
        queue: Queue,
        sticky_agent: int | None,
        now: datetime,
        deadline: datetime | None = None,
    ) -> dict[str, Any]:
        return task_values(conversation, kind, queue, sticky_agent, now, deadline)

    async def _new_task(
        self, session: AsyncSession, conversation: Conversation, queue: Queue
    ) -> RoutingTask:
        return await new_task(session, conversation, queue, self.clock)

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
                    select(RoutingTask)
                    .where(
                        RoutingTask.status == TaskStatus.waiting.value,
                        RoutingTask.queue_id.in_(overflowing),
                    )
                    .order_by(RoutingTask.id)
                    .with_for_update()
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
        """Offline ("disconnected"): pending offers withdrawn; open chats re-queued or kept as
        their queue says (``set_presence``)."""
        async with self.rt.db.write() as session:
            await set_presence(
                session, agent_id, Presence.offline, clock=self.clock, reason="disconnected"
            )

    def _set_assignee(
        self,
        session: AsyncSession,
        conversation: Conversation,
        agent_id: int | None,
        *,
        reason: str,
        **extra: Any,
    ) -> None:
        set_assignee(session, conversation, agent_id, clock=self.clock, reason=reason, **extra)

    async def _unassign(
        self, session: AsyncSession, conversation: Conversation, *, reason: str
    ) -> None:
        self._set_assignee(session, conversation, None, reason=reason)

    # ----- matching

    async def _candidates(self, session: AsyncSession) -> dict[int, Candidate]:
        # Idle since: the later of the status row's mark (became available, last offer or
        # assignment) and the last time one of the agent's conversations was resolved (a
        # max() on the (assignee_id, resolved_at) index per agent).
        released = (
            select(func.max(Conversation.resolved_at))
            .where(Conversation.assignee_id == Agent.id)
            .scalar_subquery()
        )
        rows = (
            await session.execute(
                select(
                    Agent.id,
                    Agent.capacity,
                    Agent.voice_blocks_chat,
                    Agent.skills,
                    Agent.languages,
                    AgentStatus.idle_since,
                    AgentStatus.last_offer_at,
                    AgentStatus.since,
                    released,
                )
                .join(AgentStatus, AgentStatus.agent_id == Agent.id)
                .where(AgentStatus.state == Presence.available.value, Agent.is_active.is_(True))
            )
        ).all()
        if not rows:
            return {}
        ids = [row[0] for row in rows]
        loads = await agent_loads(session, ids)
        teams: dict[int, set[int]] = defaultdict(set)
        for agent_id, team_id in (
            await session.execute(
                select(TeamMember.agent_id, TeamMember.team_id).where(TeamMember.agent_id.in_(ids))
            )
        ).all():
            teams[agent_id].add(team_id)
        out = {}
        # Typed columns (and max() of one) come back as aware datetimes on both databases.
        for (
            agent_id,
            capacity,
            blocks,
            skills,
            languages,
            idle,
            offered,
            since,
            last_release,
        ) in rows:
            out[agent_id] = Candidate(
                agent=AgentProfile(agent_id, capacity or {}, bool(blocks)),
                teams=teams[agent_id],
                load=loads[agent_id],
                idle_since=max(stamp(idle), stamp(last_release)),
                last_offer_at=stamp(offered),
                available_since=stamp(since),
                skills={str(k): int(v) for k, v in (skills or {}).items()},
                languages=set(languages or []),
            )
        return out

    @staticmethod
    def fits_group(
        c: Candidate, queue: Queue, language: str | None, stage: tuple[bool, bool]
    ) -> bool:
        """The part of qualification that is the same for every task of a group: team,
        language and skills (at the task's overflow stage)."""
        skills_dropped, any_team_agent = stage
        if queue.team_id is not None and queue.team_id not in c.teams:
            return False
        if any_team_agent:
            return True
        if language and language not in c.languages:
            return False
        if not skills_dropped:
            for skill, level in (queue.skills or {}).items():
                if c.skills.get(skill, 0) < int(level):
                    return False
        return True

    @staticmethod
    def strategy_key(c: Candidate, queue: Queue, cls: str) -> tuple[float, ...]:
        """Lower is chosen first; every key ends on the agent id, so ties are reproducible."""
        strategy = queue.strategy
        if strategy == Strategy.least_occupied:
            return (
                c.load.get(cls, 0) / max(1, capacity_of(c.agent, cls)),
                float(sum(c.load.values())),
                c.idle_since,
                c.agent.id,
            )
        if strategy == Strategy.round_robin:
            return (c.last_offer_at, c.agent.id)
        if strategy == Strategy.best_match:
            wanted = queue.skills or {}
            return (-float(sum(c.skills.get(s, 0) for s in wanted)), c.idle_since, c.agent.id)
        return (c.idle_since, c.agent.id)

    async def plan(self, *, refresh: bool = True) -> list[Planned]:
        """Choose an agent for as many waiting tasks as possible, in rank order (no writes).

        Tasks that share queue, channel class, language and overflow stage share one heap of
        the agents who fit them, ordered by the queue's strategy; keys go stale as agents are
        chosen and are refreshed lazily when they come to the top. Each task then costs a few
        heap operations instead of a walk over every agent.
        """
        now = self.clock.now()
        planned: list[Planned] = []
        reads = self.rt.db.read() if self.rt.db.is_sqlite else self.rt.db.autocommit()
        async with reads as session:
            if refresh or self._snapshot is None:
                self._snapshot = await self._candidates(session)
            candidates = self._snapshot
            if not candidates:
                return []
            queues, _ = await self.config(session)
            if self._heaps_of is not candidates:
                self._heaps, self._heaps_of = {}, candidates
            heaps = self._heaps
            last_rank: tuple[float, int] | None = None
            while True:
                query = (
                    select(RoutingTask)
                    .where(RoutingTask.status == TaskStatus.waiting.value)
                    .order_by(RoutingTask.rank, RoutingTask.id)
                    .limit(PAGE)
                )
                if last_rank is not None:
                    query = query.where(
                        (RoutingTask.rank > last_rank[0])
                        | ((RoutingTask.rank == last_rank[0]) & (RoutingTask.id > last_rank[1]))
                    )
                tasks = (await session.scalars(query)).all()
                for task in tasks:
                    queue = queues.get(task.queue_id)
                    if queue is None:
                        continue
                    chosen = await self._choose(session, task, queue, candidates, heaps, now)
                    if chosen is None:
                        continue
                    chosen.load[task.channel] = chosen.load.get(task.channel, 0) + 1
                    chosen.last_offer_at = chosen.idle_since = now.timestamp()
                    planned.append(Planned(task.id, chosen.agent.id))
                if len(tasks) < PAGE or not any(
                    any(has_room(c.agent, c.load, cls) for cls in ChannelClass)
                    for c in candidates.values()
                ):
                    break
                last_rank = (tasks[-1].rank, tasks[-1].id)
        return planned

    async def _choose(
        self,
        session: AsyncSession,
        task: RoutingTask,
        queue: Queue,
        candidates: dict[int, Candidate],
        heaps: dict[tuple[Any, ...], list[tuple[tuple[float, ...], int]]],
        now: datetime,
    ) -> Candidate | None:
        stage = (task.skills_dropped, task.any_team_agent)
        sticky_id = task.sticky_agent_id
        if (
            sticky_id is not None
            and task.sticky_until
            and task.sticky_until > now
            and sticky_id not in exclusions(task.excluded)
        ):
            # Wait for the agent who helped last time only while they could take it soon:
            # available but full, or busy, and qualified. Declined or missed it (excluded
            # above), not qualified, away or offline: the task routes to anyone at once.
            # (One who refused it is, after the cool-down, only a fallback of the normal pick.)
            sticky = candidates.get(sticky_id)
            if sticky is not None and self.fits_group(sticky, queue, task.language, stage):
                return sticky if has_room(sticky.agent, sticky.load, task.channel) else None
            if sticky is None and await self._sticky_busy(session, sticky_id, task, queue):
                return None
        # The queue's settings are part of the group: heaps outlive a pass, an edit does not.
        settings = (queue.strategy, queue.team_id, tuple(sorted((queue.skills or {}).items())))
        group = (queue.id, settings, task.channel, task.language, stage)
        heap = heaps.get(group)
        if heap is None:
            heap = [
                (self.strategy_key(c, queue, task.channel), c.agent.id)
                for c in candidates.values()
                if self.fits_group(c, queue, task.language, stage)
            ]
            heapq.heapify(heap)
            heaps[group] = heap
        # Agents who declined or missed this task: held back during their cool-down, then
        # chosen only when nobody else who fits has room (a fallback, so it is never stranded).
        excluded = exclusions(task.excluded)
        at = now.timestamp()
        skipped: list[tuple[tuple[float, ...], int]] = []
        chosen = fallback = None
        while heap:
            key, agent_id = heap[0]
            c = candidates[agent_id]
            if not has_room(c.agent, c.load, task.channel):
                heapq.heappop(heap)  # full for this class: out of this group for the pass
                continue
            current = self.strategy_key(c, queue, task.channel)
            if current != key:
                heapq.heapreplace(heap, (current, agent_id))  # stale: re-sort and look again
                continue
            if agent_id in excluded:
                if fallback is None and not held_back(excluded[agent_id], at, c.available_since):
                    fallback = c
                skipped.append(heapq.heappop(heap))
                continue
            chosen = c
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return chosen or fallback

    async def _sticky_busy(
        self, session: AsyncSession, agent_id: int, task: RoutingTask, queue: Queue
    ) -> bool:
        """The sticky agent (not available) is ``busy`` and qualified for the task: worth
        waiting for."""
        row = (
            await session.execute(
                select(Agent, AgentStatus)
                .join(AgentStatus, AgentStatus.agent_id == Agent.id)
                .where(Agent.id == agent_id, Agent.is_active.is_(True))
                .options(lazyload(Agent.teams))
            )
        ).first()
        if row is None or row[1].state != Presence.busy.value:
            return False
        agent, _ = row
        teams = set(
            (
                await session.scalars(
                    select(TeamMember.team_id).where(TeamMember.agent_id == agent_id)
                )
            ).all()
        )
        profile = Candidate(
            agent=AgentProfile(agent.id, agent.capacity or {}, bool(agent.voice_blocks_chat)),
            teams=teams,
            load=_zero_load(),
            idle_since=NEVER,
            last_offer_at=NEVER,
            skills={str(k): int(v) for k, v in (agent.skills or {}).items()},
            languages=set(agent.languages or []),
        )
        stage = (task.skills_dropped, task.any_team_agent)
        return self.fits_group(profile, queue, task.language, stage)

    async def offer(self, task_id: int, agent_id: int) -> Offer | None:
        """Commit one offer (see ``commit_offers``)."""
        made = await self.commit_offers([Planned(task_id, agent_id)])
        return made[0] if made else None

    async def commit_offers(self, planned: list[Planned]) -> list[Offer]:
        """Commit planned offers in one transaction, each re-checked: the agents' status rows
        are locked (in id order, so racing engines cannot deadlock on them), loads recounted,
        the conversations locked (in id order), tasks claimed with a conditional update; a
        plan that no longer holds is skipped. Auto-accept classes are assigned in the same
        transaction. Core statements, about ten round trips for the whole batch (the ORM's
        unit of work took a dozen statements and most of the time of an arrival's pass)."""
        if not planned:
            return []
        now = self.clock.now()
        task_ids = sorted({p.task_id for p in planned})
        agent_ids = sorted({p.agent_id for p in planned})
        async with self.rt.db.write() as session:
            agents = {
                r.agent_id: r
                for r in await lock_rows_in_id_order(
                    session,
                    select(
                        _STATUS.c.agent_id,
                        _STATUS.c.state,
                        _AGENTS.c.capacity,
                        _AGENTS.c.voice_blocks_chat,
                        _AGENTS.c.is_active,
                    ).join(_AGENTS, _AGENTS.c.id == _STATUS.c.agent_id),
                    _STATUS.c.agent_id,
                    agent_ids,
                    of=_STATUS,
                )
            }
            loads = await agent_loads(session, agent_ids)
            # Conversations before tasks (the lock order everywhere: agent status,
            # conversation, task, offer), so a direct assignment or transfer racing this
            # commit waits instead of deadlocking. A task's conversation never changes. The
            # same read brings what the offer shows the agent (``summaries``).
            preview = (
                select(_MESSAGES.c.text)
                .where(
                    _MESSAGES.c.conversation_id == _CONVERSATIONS.c.id,
                    _MESSAGES.c.private.is_(False),
                )
                .order_by(_MESSAGES.c.id.desc())
                .limit(1)
                .scalar_subquery()
            )
            conversations = {
                r.id: r
                for r in await lock_rows_in_id_order(
                    session,
                    select(
                        *_CONVERSATIONS.c,
                        _CUSTOMERS.c.name.label("customer_name"),
                        _INBOXES.c.kind.label("inbox_kind"),
                        preview.label("preview"),
                    )
                    .join(_CUSTOMERS, _CUSTOMERS.c.id == _CONVERSATIONS.c.customer_id)
                    .join(_INBOXES, _INBOXES.c.id == _CONVERSATIONS.c.inbox_id),
                    _CONVERSATIONS.c.id,
                    select(_TASKS.c.conversation_id).where(_TASKS.c.id.in_(task_ids)),
                    of=_CONVERSATIONS,
                )
            }
            claimed = {
                r.id: r
                for r in (
                    await session.execute(
                        update(_TASKS)
                        .where(
                            _TASKS.c.id.in_(task_ids),
                            _TASKS.c.status == TaskStatus.waiting.value,
                        )
                        .values(status=TaskStatus.offered.value)
                        .returning(
                            _TASKS.c.id,
                            _TASKS.c.conversation_id,
                            _TASKS.c.queue_id,
                            _TASKS.c.channel,
                            _TASKS.c.enqueued_at,
                        )
                    )
                ).all()
            }
            if not claimed:
                return []
            queues, _ = await self.config(session)
            made: list[tuple[Offer, Row[Any], Row[Any], bool]] = []
            released: list[int] = []  # the plan no longer holds: the task waits again
            moot: list[int] = []  # assigned or closed since it was queued: the task ends
            for item in planned:
                task = claimed.pop(item.task_id, None)
                if task is None:
                    continue
                conversation = conversations.get(task.conversation_id)
                if (
                    conversation is None
                    or conversation.assignee_id is not None
                    or conversation.status != ConversationStatus.open.value
                ):
                    moot.append(task.id)
                    continue
                agent = agents.get(item.agent_id)
                queue = queues.get(task.queue_id)
                if (
                    agent is None
                    or agent.state != Presence.available.value
                    or not agent.is_active
                    or queue is None
                    or not has_room(
                        AgentProfile(agent.agent_id, agent.capacity or {}, agent.voice_blocks_chat),
                        loads[item.agent_id],
                        task.channel,
                    )
                ):
                    released.append(task.id)
                    continue
                loads[item.agent_id][task.channel] += 1
                offer = Offer(
                    task_id=task.id,
                    conversation_id=task.conversation_id,
                    agent_id=item.agent_id,
                    queue_id=queue.id,
                    channel=task.channel,
                    status=OfferStatus.pending.value,
                    created_at=now,
                    expires_at=now + timedelta(seconds=max(1, queue.offer_timeout_seconds)),
                    answered_at=None,
                )
                made.append((offer, task, conversation, task.channel in (queue.auto_accept or [])))
            released += claimed  # claimed twice in one plan (never planned so): not offered
            if released:
                await session.execute(
                    update(_TASKS)
                    .where(_TASKS.c.id.in_(released))
                    .values(status=TaskStatus.waiting.value)
                )
            if moot:
                await session.execute(
                    update(_TASKS)
                    .where(_TASKS.c.id.in_(moot))
                    .values(
                        status=TaskStatus.cancelled.value, active_conversation_id=None, ended_at=now
                    )
                )
            if not made:
                return []
            await self._write_offers(session, made, now)
            return [offer for offer, *_ in made]

    async def _write_offers(
        self,
        session: AsyncSession,
        made: list[tuple[Offer, Row[Any], Row[Any], bool]],
        now: datetime,
    ) -> None:
        """``commit_offers``' writes: the offers (auto-accepted ones as accepted), the agents'
        marks, the auto-accepted tasks and conversations, and the events, each one batch."""
        columns = ("task_id", "conversation_id", "agent_id", "queue_id", "channel")
        rows = [
            {
                **{name: getattr(offer, name) for name in columns},
                "status": (OfferStatus.accepted if auto else OfferStatus.pending).value,
                "created_at": offer.created_at,
                "expires_at": offer.expires_at,
                "answered_at": now if auto else None,
            }
            for offer, _, _, auto in made
        ]
        ids: dict[int, int] = dict(
            (
                await session.execute(
                    insert(_OFFERS).returning(_OFFERS.c.task_id, _OFFERS.c.id), rows
                )
            ).all()
        )
        auto_agents = {offer.agent_id for offer, _, _, auto in made if auto}
        await session.execute(
            update(_STATUS)
            .where(_STATUS.c.agent_id.in_({offer.agent_id for offer, *_ in made}))
            .values(
                last_offer_at=now,
                idle_since=now,
                missed_offers=case(
                    (_STATUS.c.agent_id.in_(auto_agents), 0), else_=_STATUS.c.missed_offers
                ),
            )
        )
        log_rows: list[dict[str, Any]] = []
        assigned: list[dict[str, Any]] = []
        for offer, task, conversation, auto in made:
            offer.id = ids[task.id]
            summary = {
                "channel": conversation.inbox_kind,
                "inbox_id": conversation.inbox_id,
                "customer": {"id": conversation.customer_id, "name": conversation.customer_name},
                "priority": Priority(conversation.priority).name,
                "subject": conversation.subject,
                "preview": (conversation.preview or "")[:200],
            }
            context = {
                "clock": self.clock,
                "agent_id": offer.agent_id,
                "conversation_id": conversation.id,
            }
            log_rows.append(
                events.row(
                    "offer.created",
                    offer_view(offer, task.enqueued_at, summary),
                    customer_id=conversation.customer_id,
                    **context,
                )
            )
            if not auto:
                continue
            offer.status = OfferStatus.accepted.value
            offer.answered_at = now
            view = Conversation(
                **{c.key: conversation._mapping[c] for c in _CONVERSATIONS.c},
            )
            view.assignee_id = offer.agent_id
            view.updated_at = now
            assigned.append({"b_id": conversation.id, "b_agent": offer.agent_id})
            log_rows.append(
                events.row(
                    "offer.accepted",
                    {"offer_id": offer.id, "conversation_id": conversation.id, "auto": True},
                    **context,
                )
            )
            log_rows.append(
                events.row(
                    "conversation.assigned",
                    assigned_payload(
                        view,
                        None,
                        "auto-accepted",
                        queue_id=task.queue_id,
                        waited_seconds=round((now - task.enqueued_at).total_seconds(), 3),
                    ),
                    customer_id=conversation.customer_id,
                    **context,
                )
            )
        if assigned:
            await session.execute(
                update(_TASKS)
                .where(_TASKS.c.id == bindparam("b_task"))
                .values(
                    status=TaskStatus.assigned.value,
                    agent_id=bindparam("b_agent"),
                    assigned_at=now,
                    ended_at=now,
                    active_conversation_id=None,
                ),
                [
                    {"b_task": task.id, "b_agent": offer.agent_id}
                    for offer, task, _, auto in made
                    if auto
                ],
            )
            await session.execute(
                update(_CONVERSATIONS)
                .where(_CONVERSATIONS.c.id == bindparam("b_id"))
                .values(assignee_id=bindparam("b_agent"), updated_at=now),
                assigned,
            )
        await events.insert_rows(session, log_rows)

    async def summaries(
        self, session: AsyncSession, conversations: list[Conversation]
    ) -> dict[int, dict[str, Any]]:
        """What an offer shows the agent: channel, customer, priority, subject, preview."""
        ids = [c.id for c in conversations]
        customers = dict(
            (
                await session.execute(
                    select(Customer.id, Customer.name).where(
                        Customer.id.in_({c.customer_id for c in conversations})
                    )
                )
            ).all()
        )
        kinds = dict((await session.execute(select(Inbox.id, Inbox.kind))).all())
        last_ids = (
            select(func.max(Message.id))
            .where(Message.conversation_id.in_(ids), Message.private.is_(False))
            .group_by(Message.conversation_id)
        )
        previews = dict(
            (
                await session.execute(
                    select(Message.conversation_id, Message.text).where(Message.id.in_(last_ids))
                )
            ).all()
        )
        return {
            c.id: {
                "channel": kinds.get(c.inbox_id),
                "inbox_id": c.inbox_id,
                "customer": {"id": c.customer_id, "name": customers.get(c.customer_id, "")},
                "priority": Priority(c.priority).name,
                "subject": c.subject,
                "preview": (previews.get(c.id) or "")[:200],
            }
            for c in conversations
        }

    async def answer(
        self, offer_id: int, agent_id: int | None, *, accept: bool, expired: bool = False
    ) -> Offer:
        """An agent accepts or declines their offer; ``expired`` is the engine's timeout."""
        async with self.rt.db.write() as session:
            # The lock order (agent status, conversation, task, offer): the offer is read
            # first without a lock (its agent, task and conversation never change).
            offer = await session.get(Offer, offer_id)
            if offer is None or (agent_id is not None and offer.agent_id != agent_id):
                raise RoutingError("no such offer")
            status = await agent_status(session, offer.agent_id, self.clock)
            conversation = await session.get(
                Conversation, offer.conversation_id, with_for_update=True
            )
            task = await session.get(RoutingTask, offer.task_id, with_for_update=True)
            assert task is not None
            offer = await session.get(Offer, offer_id, with_for_update=True, populate_existing=True)
            assert offer is not None
            if offer.status != OfferStatus.pending:
                raise RoutingError(f"the offer is already {offer.status}")
            now = self.clock.now()
            if accept and offer.expires_at <= now:
                expired, accept = True, False
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
            task.excluded = add_exclusion(
                task.excluded,
                offer.agent_id,
                until=now + timedelta(seconds=self.settings.routing_reoffer_seconds),
                since=status.since,
            )
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
        # No flush here: a batch of offers is flushed once, at commit (executemany).
        events.append(
            session,
            "offer.accepted",
            {"offer_id": offer.id, "conversation_id": offer.conversation_id, "auto": auto},
            clock=self.clock,
            agent_id=offer.agent_id,
            conversation_id=offer.conversation_id,
        )
        self._set_assignee(
            session,
            conversation,
            offer.agent_id,
            reason="auto-accepted" if auto else "accepted",
            queue_id=task.queue_id,
            waited_seconds=round((now - task.enqueued_at).total_seconds(), 3),
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
            return await self.assign_in(
                session, conversation_id, agent_id, by_agent_id=by_agent_id, reason=reason
            )

    async def assign_in(
        self,
        session: AsyncSession,
        conversation_id: int,
        agent_id: int,
        *,
        by_agent_id: int | None,
        reason: str = "assigned",
        online_only: bool = False,
        check: Callable[[Conversation], None] | None = None,
    ) -> Conversation:
        """``assign`` inside the caller's transaction. ``online_only`` refuses an agent who is
        offline (transfers); ``check`` may refuse the conversation once it is locked."""
        agent = await session.get(Agent, agent_id)
        if agent is None or not agent.is_active:
            raise RoutingError("no such agent")
        status = await agent_status(session, agent_id, self.clock)
        conversation = await session.get(Conversation, conversation_id, with_for_update=True)
        if conversation is None:
            raise RoutingError("no such conversation")
        if check is not None:
            check(conversation)
        if conversation.assignee_id == agent_id:
            return conversation
        if online_only and status.state == Presence.offline.value:
            raise RoutingError(f"{agent.name} is offline: transfer to an online agent or a queue")
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
        status.idle_since = self.clock.now()
        self._set_assignee(session, conversation, agent_id, reason=reason, by_agent_id=by_agent_id)
        return conversation

    async def transfer_to_queue(
        self, conversation_id: int, queue_id: int, *, by_agent_id: int | None
    ) -> RoutingTask:
        async with self.rt.db.write() as session:
            return await self.transfer_to_queue_in(
                session, conversation_id, queue_id, by_agent_id=by_agent_id
            )

    async def transfer_to_queue_in(
        self,
        session: AsyncSession,
        conversation_id: int,
        queue_id: int,
        *,
        by_agent_id: int | None,
        reason: str = "transferred to a queue",
        check: Callable[[Conversation], None] | None = None,
    ) -> RoutingTask:
        """``transfer_to_queue`` inside the caller's transaction (SLA escalations, transfers
        with a note); ``check`` may refuse the conversation once it is locked."""
        conversation = await session.get(Conversation, conversation_id, with_for_update=True)
        queue = await session.get(Queue, queue_id)
        if conversation is None or queue is None:
            raise RoutingError("no such conversation or queue")
        if check is not None:
            check(conversation)
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
            await self._unassign(session, conversation, reason=reason)
        task = await self._new_task(session, conversation, queue)
        task.sticky_agent_id = None
        task.sticky_until = None
        if by_agent_id is not None:
            task.excluded = add_exclusion(
                [],
                by_agent_id,
                until=self.clock.now() + timedelta(seconds=self.settings.routing_reoffer_seconds),
                since=None,
            )
        session.add(task)
        await session.flush()
        return task

    # ----- the loop

    async def run_pass(
        self,
        *,
        full: bool = True,
        conversations: list[int] | None = None,
        agents_changed: bool = True,
        sweep: bool = True,
    ) -> int:
        """One routing pass. ``full`` runs the time-driven work (offer expiry, overflow,
        disconnects) and, with ``sweep``, the reconcile sweep; the conversations named get
        tasks either way. Then every waiting task that can be matched is offered. Returns
        offers made."""
        if full:
            await self.housekeeping(sweep=sweep)
        if conversations:
            await self.enqueue_many(conversations)
        made = 0
        planned = await self.plan(refresh=agents_changed)
        for start in range(0, len(planned), OFFER_BATCH):
            made += len(await self.commit_offers(planned[start : start + OFFER_BATCH]))
        if made:
            await self.rt.committed()
        return made

    async def housekeeping(self, *, sweep: bool) -> int:
        """The time-driven part of a full pass, without planning: offer expiry, overflow,
        silent agents and, with ``sweep``, the reconcile sweep. Returns how many things it
        changed (a pass should plan after it when any)."""
        changed = await self.reconcile() if sweep else 0
        changed += await self.expire_offers()
        changed += await self.overflow()
        changed += await self.disconnects()
        return changed

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop``. Arrival hints (``routing.arrivals``, published by the process
        that ingested the message, right after its commit) and events on the bus wake a quick
        pass for the conversations they name (new, reopened, unassigned); an event that only
        repeats a recent hint is skipped. Every tick a quick pass runs regardless, and the
        housekeeping (offer expiry, overflow, disconnects; the reconcile sweep every
        SWEEP_SECONDS, and first) runs beside the passes in a task of its own, waking a pass
        when it changed anything: arrivals never queue behind it. The picture of the agents
        is reloaded in the background too (passes go on with the old one meanwhile) after
        events that change agents and at least every SNAPSHOT_SECONDS; a finished reload
        wakes a pass of its own."""
        from contact_center.relay import EVENTS_CHANNEL

        channels = (EVENTS_CHANNEL, WAKE_CHANNEL, ARRIVALS_CHANNEL, CONFIG_CHANNEL)
        tick = self.settings.routing_tick_seconds
        loop = asyncio.get_running_loop()
        sub = await self.rt.bus.subscribe(*channels)
        next_full = next_snapshot = next_sweep = 0.0
        reload: asyncio.Task[None] | None = None
        chores: asyncio.Task[None] | None = None
        pending: list[tuple[str, dict[str, Any]]] = []
        hints = ArrivalHints()
        self._keep_config, self._config = True, None
        self.idle = idle = asyncio.Event()
        idle.set()

        async def reload_snapshot(into: Any, timed: bool) -> None:
            if timed:  # nothing changed: not worth slowing the pass in progress
                await self.after_pass()
            async with self.rt.db.read() as session:
                self._snapshot = await self._candidates(session)
            into.notify(SNAPSHOT_CHANNEL, {})

        async def housekeep(into: Any, sweep: bool) -> None:
            nonlocal next_sweep
            try:
                await self.after_pass()
                if await self.housekeeping(sweep=sweep):
                    into.notify(HOUSEKEEPING_CHANNEL, {})
            except Exception:
                log.exception("routing housekeeping failed; retrying")
                next_sweep = 0.0  # whatever it missed, the next sweep finds

        try:
            while not stop.is_set():
                try:
                    now = loop.time()
                    if sub.lagged:  # we missed events: resubscribe; sweep, fresh picture
                        sub.close()
                        sub = await self.rt.bus.subscribe(*channels)
                        next_full = next_snapshot = next_sweep = now
                        self.config_changed()
                    if any(channel == CONFIG_CHANNEL for channel, _ in pending):
                        self.config_changed()
                    changed = any(
                        channel == WAKE_CHANNEL or frees_or_changes_agents(env)
                        for channel, env in pending
                    )
                    if self._snapshot is None:
                        self._snapshot = await self._load_candidates()
                        next_snapshot = now + SNAPSHOT_SECONDS
                    elif (changed or now >= next_snapshot) and (reload is None or reload.done()):
                        next_snapshot = now + SNAPSHOT_SECONDS
                        reload = asyncio.create_task(reload_snapshot(sub, not changed))
                    # The conversations the hints and events name get their tasks in this
                    # pass (the sweep is only a safety net, every SWEEP_SECONDS).
                    ids = hints.conversations(pending, now)
                    tick_due = now >= next_full
                    if tick_due:
                        next_full = now + tick
                        if chores is None or chores.done():
                            sweep = now >= next_sweep
                            if sweep:
                                next_sweep = now + SWEEP_SECONDS
                            chores = asyncio.create_task(housekeep(sub, sweep))
                    if tick_due or ids or changed or any(ch != EVENTS_CHANNEL for ch, _ in pending):
                        # Only what can make an offer possible wakes a pass: a conversation
                        # that may need a task, a change to the agents, a wake-up, finished
                        # housekeeping or a reloaded snapshot. The engine's own offers and
                        # assignments, messages and the like do not (a pass for each of them
                        # queued the next arrival behind a plan over every agent).
                        idle.clear()
                        try:
                            await self.run_pass(full=False, conversations=ids, agents_changed=False)
                        finally:
                            idle.set()
                except Exception:
                    log.exception("routing pass failed; retrying")
                    self._snapshot = None
                    self.config_changed()
                    next_sweep = 0.0  # the events of the failed pass: the sweep finds them
                    await asyncio.sleep(1)
                item = await sub.get(timeout=max(0.0, next_full - loop.time()))
                pending = ([item] if item is not None else []) + sub.take_queued()
        finally:
            self._keep_config, self._config, self.idle = False, None, None
            for task in (reload, chores):
                if task is not None:
                    task.cancel()
            sub.close()

    async def _load_candidates(self) -> dict[int, Candidate]:
        async with self.rt.db.read() as session:
            return await self._candidates(session)


async def announce_config_change(rt: Runtime) -> None:
    """After a committed change to queues or routing rules: running engines reload them."""
    await rt.bus.publish(CONFIG_CHANNEL, {})


def engine_of(rt: Runtime) -> RoutingEngine:
    """The process's engine (built by the composition root; stateless over the runtime)."""
    engine = rt.extras.get("routing")
    if not isinstance(engine, RoutingEngine):
        engine = rt.extras["routing"] = RoutingEngine(rt)
    return engine
