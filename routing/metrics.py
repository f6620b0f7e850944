"""Contact-center figures from the database: reports over a range and the live wallboard.

Every figure is defined in docs/metrics.md; this module is that definition in SQL. In short:
a **contact** is one routing task (one visit of a conversation to a queue). It arrived at
``enqueued_at`` and ended in one of four ways, known from the task and its conversation:

- *answered*: the task is ``assigned`` (an agent accepted the offer, it was auto-accepted or a
  supervisor assigned it); its wait is ``assigned_at - enqueued_at``;
- *transferred*: the task is ``cancelled`` and the same conversation's next task was opened in
  the same transaction (a transfer to a queue ends the live task and opens the next one; we
  match a next task enqueued within ``TRANSFER_GAP_SECONDS`` of the end);
- *abandoned*: any other ``cancelled`` task: the conversation was resolved, set pending or
  snoozed while it waited and nobody had it; its wait is ``ended_at - enqueued_at``; a *short*
  abandon waited at most the short-abandon threshold;
- *waiting*: still ``waiting`` or ``offered`` (its wait grows until now).

A contact is *handled* when it was answered and the same agent resolved the conversation (no
later task of it); its handle time is ``resolved_at - assigned_at``.

Figures over a range describe the contacts that **arrived** in it, with their outcome as
known now. Aggregation runs in the database (one grouped statement per figure set); only
occupancy needs interval arithmetic, done here over compact rows (agent, start, end).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Float,
    Integer,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from contact_center.models import (
    Agent,
    Conversation,
    ConversationStatus,
    Inbox,
    Priority,
    Role,
    Team,
    TeamMember,
    UTCDateTime,
)
from routing.engine import LOAD_STATUSES, capacity_of
from routing.erlang import staffing
from routing.models import (
    AgentStateLog,
    AgentStatus,
    ChannelClass,
    Offer,
    OfferStatus,
    Presence,
    Queue,
    RoutingTask,
    TaskStatus,
    channel_class,
)

if TYPE_CHECKING:
    from contact_center.settings import Settings

SLOT_SECONDS = 900  # the wallboard's intervals: 15 minutes
# A transfer ends the live task and opens the next one in one transaction: their times differ
# by the milliseconds between two reads of the clock.
TRANSFER_GAP_SECONDS = 2.0
WAITING_LIST = 20  # the oldest waiting contacts listed on the wallboard
GROUPS = ("queue", "team", "agent", "channel")
Treatment = Literal["count", "ignore", "short"]
STAFFED = (Presence.available.value, Presence.busy.value)
LIVE = (TaskStatus.waiting.value, TaskStatus.offered.value)


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    """How the figures are computed (from ``CC_*`` settings; docs/metrics.md)."""

    threshold_seconds: float = 20.0
    target: float = 0.8
    abandoned: Treatment = "short"
    short_abandon_seconds: float = 5.0
    timezone: str = "UTC"
    staffing_window_minutes: int = 60
    max_occupancy: float | None = 0.85

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsOptions:
        return cls(
            threshold_seconds=settings.service_level_seconds,
            target=settings.service_level_target,
            abandoned=settings.service_level_abandoned,
            short_abandon_seconds=settings.short_abandon_seconds,
            timezone=settings.metrics_timezone,
            staffing_window_minutes=settings.staffing_window_minutes,
            max_occupancy=settings.staffing_max_occupancy,
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def missed_after(self) -> float | None:
        """The wait after which a contact still waiting already counts against the service
        level: once every outcome it can still have would count as missed (never when
        abandoned contacts are ignored: it may yet abandon)."""
        if self.abandoned == "ignore":
            return None
        if self.abandoned == "short":
            return max(self.threshold_seconds, self.short_abandon_seconds)
        return self.threshold_seconds

    def view(self) -> dict[str, Any]:
        return {
            "service_level_seconds": self.threshold_seconds,
            "service_level_target": self.target,
            "abandoned": self.abandoned,
            "short_abandon_seconds": self.short_abandon_seconds,
            "timezone": self.timezone,
            "staffing_window_minutes": self.staffing_window_minutes,
            "staffing_max_occupancy": self.max_occupancy,
        }


# --------------------------------------------------------------------------- SQL pieces


class Dialect:
    """The two expressions that differ between SQLite and PostgreSQL: seconds between two
    times, and the interval a time falls in."""

    def __init__(self, is_sqlite: bool) -> None:
        self.is_sqlite = is_sqlite

    def seconds(self, later: Any, earlier: Any) -> ColumnElement[Any]:
        if self.is_sqlite:
            # julianday is a double: rounded to the millisecond, a wait of exactly 20 s is 20.
            return func.round((func.julianday(later) - func.julianday(earlier)) * 86400.0, 3)
        return extract("epoch", later - earlier)

    def epoch(self, when: Any) -> ColumnElement[Any]:
        """Seconds since 1970 as a float (NULL stays NULL)."""
        if self.is_sqlite:
            return (func.julianday(when) - 2440587.5) * 86400.0
        return cast(extract("epoch", when), Float)

    def slot(self, when: Any, origin: datetime, step: int) -> ColumnElement[Any]:
        offset = self.seconds(when, at(origin))
        if self.is_sqlite:
            return cast(offset / step, Integer)  # offsets are >= 0: truncation is floor
        return cast(func.floor(offset / step), Integer)


def at(value: datetime) -> ColumnElement[Any]:
    """A time as a SQL value stored like the columns (naive UTC text on SQLite)."""
    return literal(value, UTCDateTime())


@dataclass
class Tally:
    """Sums over contacts; every ratio is computed from these, so tallies add up."""

    offered: int = 0
    answered: int = 0
    within: int = 0
    wait_sum: float = 0.0
    abandoned: int = 0
    short_abandoned: int = 0
    transferred: int = 0
    waiting: int = 0
    waiting_missed: int = 0
    longest_wait: float | None = None
    handled: int = 0
    handle_sum: float = 0.0

    def add(self, other: Tally) -> None:
        for name in (
            "offered",
            "answered",
            "within",
            "wait_sum",
            "abandoned",
            "short_abandoned",
            "transferred",
            "waiting",
            "waiting_missed",
            "handled",
            "handle_sum",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.longest_wait is not None:
            self.longest_wait = max(self.longest_wait or 0.0, other.longest_wait)

    def service_level(self, opts: MetricsOptions) -> float | None:
        counted = {
            "count": self.abandoned,
            "short": self.abandoned - self.short_abandoned,
            "ignore": 0,
        }[opts.abandoned]
        decided = self.answered + counted + self.waiting_missed
        return _ratio(self.within, decided)

    def figures(self, opts: MetricsOptions) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "answered": self.answered,
            "answered_within_threshold": self.within,
            "abandoned": self.abandoned,
            "short_abandoned": self.short_abandoned,
            "transferred": self.transferred,
            "handled": self.handled,
            "service_level": self.service_level(opts),
            "asa_seconds": _mean(self.wait_sum, self.answered),
            "aht_seconds": _mean(self.handle_sum, self.handled),
            "abandonment_rate": _ratio(self.abandoned, self.offered),
        }

    @property
    def aht(self) -> float | None:
        return _mean(self.handle_sum, self.handled)


def _num(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, Decimal):
        return float(value)
    return float(value)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 3) if count else None


def _ones(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def contact_outcomes(
    d: Dialect,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    key: str | None,
    slots_from: datetime | None = None,
) -> Any:
    """One row per contact that arrived in [start, end): its group key (queue, team, agent,
    channel or none), its interval (with ``slots_from``), outcome, wait and handle time.

    The conversation's next task (``lead`` over the conversation's tasks in id order) says
    whether a cancelled task was transferred and whether an answered one was the last: a
    window over the tasks since ``start`` (a next task is never older than its task), not a
    correlated subquery per contact."""
    visits = (
        select(
            RoutingTask.id,
            RoutingTask.conversation_id,
            RoutingTask.queue_id,
            RoutingTask.agent_id,
            RoutingTask.status,
            RoutingTask.enqueued_at,
            RoutingTask.assigned_at,
            RoutingTask.ended_at,
            func.lead(RoutingTask.enqueued_at)
            .over(partition_by=RoutingTask.conversation_id, order_by=RoutingTask.id)
            .label("next_enqueued_at"),
        )
        .where(RoutingTask.enqueued_at >= start)
        .subquery("visit")
    )
    task = visits.c
    conv = Conversation
    transferred = and_(
        task.next_enqueued_at.is_not(None),
        d.seconds(task.next_enqueued_at, task.ended_at).between(-0.001, TRANSFER_GAP_SECONDS),
    )
    outcome = case(
        (task.status == TaskStatus.assigned.value, literal("answered")),
        (
            task.status == TaskStatus.cancelled.value,
            case((transferred, literal("transferred")), else_=literal("abandoned")),
        ),
        else_=literal("waiting"),
    )
    wait = case(
        (
            task.status == TaskStatus.assigned.value,
            d.seconds(func.coalesce(task.assigned_at, task.ended_at), task.enqueued_at),
        ),
        (task.status == TaskStatus.cancelled.value, d.seconds(task.ended_at, task.enqueued_at)),
        else_=d.seconds(at(now), task.enqueued_at),
    )
    handle = case(
        (
            and_(
                task.status == TaskStatus.assigned.value,
                conv.status == ConversationStatus.resolved.value,
                conv.assignee_id == task.agent_id,
                conv.resolved_at >= task.assigned_at,
                task.next_enqueued_at.is_(None),
            ),
            d.seconds(conv.resolved_at, task.assigned_at),
        ),
        else_=null(),
    )
    columns: list[Any] = []
    query = select().select_from(visits).join(conv, conv.id == task.conversation_id)
    if key == "queue":
        columns.append(task.queue_id.label("key"))
    elif key == "agent":
        columns.append(task.agent_id.label("key"))
        query = query.where(task.agent_id.is_not(None))
    elif key == "team":
        query = query.outerjoin(Queue, Queue.id == task.queue_id)
        columns.append(func.coalesce(conv.team_id, Queue.team_id).label("key"))
    elif key == "channel":
        query = query.join(Inbox, Inbox.id == conv.inbox_id)
        columns.append(Inbox.kind.label("key"))
    else:
        columns.append(literal(None).label("key"))
    if slots_from is not None:
        columns.append(d.slot(task.enqueued_at, slots_from, SLOT_SECONDS).label("slot"))
    columns += [outcome.label("outcome"), wait.label("wait"), handle.label("handle")]
    return query.add_columns(*columns).where(task.enqueued_at < end)


async def tallies(
    session: AsyncSession,
    d: Dialect,
    opts: MetricsOptions,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    key: str | None,
    slots_from: datetime | None = None,
) -> dict[tuple[Any, int | None], Tally]:
    """Tallies of the contacts that arrived in [start, end), by (key, interval)."""
    rows = contact_outcomes(
        d, start=start, end=end, now=now, key=key, slots_from=slots_from
    ).subquery()
    answered = rows.c.outcome == "answered"
    abandoned = rows.c.outcome == "abandoned"
    waiting = rows.c.outcome == "waiting"
    missed_after = opts.missed_after
    group = [rows.c.key] + ([rows.c.slot] if slots_from is not None else [])
    query = select(
        *group,
        func.count(),
        _ones(answered),
        _ones(and_(answered, rows.c.wait <= opts.threshold_seconds)),
        func.coalesce(func.sum(case((answered, rows.c.wait), else_=0)), 0),
        _ones(abandoned),
        _ones(and_(abandoned, rows.c.wait <= opts.short_abandon_seconds)),
        _ones(rows.c.outcome == "transferred"),
        _ones(waiting),
        _ones(and_(waiting, rows.c.wait > missed_after))
        if missed_after is not None
        else literal(0),
        func.max(case((waiting, rows.c.wait), else_=null())),
        func.count(rows.c.handle),
        func.coalesce(func.sum(rows.c.handle), 0),
    ).group_by(*group)
    out: dict[tuple[Any, int | None], Tally] = {}
    width = len(group)
    for row in (await session.execute(query)).all():
        values = list(row)
        ident = (values[0], int(values[1]) if width == 2 else None)
        (
            offered,
            answered_n,
            within,
            wait_sum,
            abandoned_n,
            short,
            transferred_n,
            waiting_n,
            missed,
            longest,
            handled,
            handle_sum,
        ) = values[width:]
        out[ident] = Tally(
            offered=int(offered),
            answered=int(answered_n),
            within=int(within),
            wait_sum=_num(wait_sum),
            abandoned=int(abandoned_n),
            short_abandoned=int(short),
            transferred=int(transferred_n),
            waiting=int(waiting_n),
            waiting_missed=int(missed),
            longest_wait=None if longest is None else _num(longest),
            handled=int(handled),
            handle_sum=_num(handle_sum),
        )
    return out


# --------------------------------------------------------------------------- agents' time


@dataclass
class AgentTime:
    """Seconds of one agent in [start, end): staffed (available or busy), available, handling
    while staffed, and idle (available without handling anything)."""

    staffed: float = 0.0
    available: float = 0.0
    handling: float = 0.0
    idle: float = 0.0
    offers: dict[str, int] = field(default_factory=dict)

    def add(self, other: AgentTime) -> None:
        self.staffed += other.staffed
        self.available += other.available
        self.handling += other.handling
        self.idle += other.idle
        for status, n in other.offers.items():
            self.offers[status] = self.offers.get(status, 0) + n

    def figures(self) -> dict[str, Any]:
        return {
            "staffed_seconds": round(self.staffed, 3),
            "handling_seconds": round(self.handling, 3),
            "available_idle_seconds": round(self.idle, 3),
            "occupancy": _ratio(self.handling, self.handling + self.idle),
            "offers": sum(self.offers.values()),
            "offers_accepted": self.offers.get(OfferStatus.accepted.value, 0),
            "offers_declined": self.offers.get(OfferStatus.declined.value, 0),
            "offers_expired": self.offers.get(OfferStatus.expired.value, 0),
        }


Span = tuple[float, float]


def _union(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for lo, hi in sorted(spans):
        if hi <= lo:
            continue
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _length(spans: list[Span]) -> float:
    return sum(hi - lo for lo, hi in spans)


def _overlap(a: list[Span], b: list[Span]) -> float:
    """Total length of the intersection of two sorted, disjoint span lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


async def agent_times(
    session: AsyncSession, d: Dialect, *, start: datetime, end: datetime, now: datetime
) -> dict[int, AgentTime]:
    """Occupancy inputs per agent over [start, min(end, now)) (docs/metrics.md). Times come
    back as epoch seconds (floats): cheaper to fetch and clip than datetimes."""
    stop = min(end, now)
    lo_s, hi_s = start.timestamp(), stop.timestamp()
    out: dict[int, AgentTime] = defaultdict(AgentTime)
    if hi_s <= lo_s:
        return out

    def clip(begin: Any, finish: Any) -> Span:
        b = float(begin) if begin is not None else lo_s
        f = float(finish) if finish is not None else hi_s
        return max(b, lo_s), min(f, hi_s)

    staffed: dict[int, list[Span]] = defaultdict(list)
    available: dict[int, list[Span]] = defaultdict(list)
    log = AgentStateLog
    for agent_id, state, started, ended in (
        await session.execute(
            select(log.agent_id, log.state, d.epoch(log.started_at), d.epoch(log.ended_at)).where(
                log.state.in_(STAFFED),
                log.started_at < stop,
                or_(log.ended_at.is_(None), log.ended_at > start),
            )
        )
    ).all():
        span = clip(started, ended)
        staffed[agent_id].append(span)
        if state == Presence.available.value:
            available[agent_id].append(span)

    # Handling: from the answer until the conversation went back to a queue (its next task),
    # was resolved by the agent, or (reassigned directly to someone else) its last change;
    # open with the agent: until now. Only conversations that are not resolved, or changed
    # since ``start``, can have been held in the range (resolving, assigning and queueing
    # each set updated_at): the closed history is skipped before the window runs.
    conv = Conversation
    candidates = select(conv.id).where(
        or_(conv.status != ConversationStatus.resolved.value, conv.updated_at > start)
    )
    visits = (
        select(
            RoutingTask.conversation_id,
            RoutingTask.agent_id,
            RoutingTask.status,
            RoutingTask.assigned_at,
            func.lead(RoutingTask.enqueued_at)
            .over(partition_by=RoutingTask.conversation_id, order_by=RoutingTask.id)
            .label("next_enqueued_at"),
        )
        .where(RoutingTask.conversation_id.in_(candidates))
        .subquery("visit")
    )
    task = visits.c
    held_until = func.coalesce(
        task.next_enqueued_at,
        case(
            (
                conv.assignee_id == task.agent_id,
                case(
                    (conv.status == ConversationStatus.resolved.value, conv.resolved_at),
                    else_=null(),
                ),
            ),
            else_=conv.updated_at,
        ),
    )
    handling: dict[int, list[Span]] = defaultdict(list)
    for agent_id, begin, until in (
        await session.execute(
            select(task.agent_id, d.epoch(task.assigned_at), d.epoch(held_until))
            .join(conv, conv.id == task.conversation_id)
            .where(
                task.status == TaskStatus.assigned.value,
                task.agent_id.is_not(None),
                task.assigned_at < stop,
            )
        )
    ).all():
        if until is None or float(until) > lo_s:
            handling[agent_id].append(clip(begin, until))

    for agent_id in set(staffed) | set(handling):
        on = _union(staffed.get(agent_id, []))
        free = _union(available.get(agent_id, []))
        busy = _union(handling.get(agent_id, []))
        figures = out[agent_id]
        figures.staffed = _length(on)
        figures.available = _length(free)
        figures.handling = _overlap(busy, on)
        figures.idle = figures.available - _overlap(busy, free)

    for agent_id, status, n in (
        await session.execute(
            select(Offer.agent_id, Offer.status, func.count())
            .where(Offer.created_at >= start, Offer.created_at < end)
            .group_by(Offer.agent_id, Offer.status)
        )
    ).all():
        out[agent_id].offers[status] = int(n)
    return out


# --------------------------------------------------------------------------- reports


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


async def report(
    session: AsyncSession,
    d: Dialect,
    opts: MetricsOptions,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    group_by: str,
) -> dict[str, Any]:
    """The figures of the contacts that arrived in [start, end), by queue, team, agent or
    channel, with a total row (docs/metrics.md). Time figures (occupancy) are for agents and
    teams (their members) and the total."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    grouped = await tallies(session, d, opts, start=start, end=end, now=now, key=group_by)
    overall = await tallies(session, d, opts, start=start, end=end, now=now, key=None)
    times = await agent_times(session, d, start=start, end=end, now=now)
    names: dict[Any, str] = {}
    keys: set[Any] = {k for k, _ in grouped}
    row_times: dict[Any, AgentTime] = {}
    if group_by == "queue":
        for qid, name in (await session.execute(select(Queue.id, Queue.name))).all():
            names[qid] = name
            keys.add(qid)
    elif group_by == "agent":
        people = (
            await session.execute(select(Agent.id, Agent.name, Agent.role, Agent.is_active))
        ).all()
        for aid, name, role, active in people:
            names[aid] = name
            if active and role == Role.agent.value:
                keys.add(aid)
        keys |= set(times)
        row_times = {aid: times.get(aid, AgentTime()) for aid in keys}
    elif group_by == "team":
        for tid, name in (await session.execute(select(Team.id, Team.name))).all():
            names[tid] = name
            keys.add(tid)
        for tid, aid in (
            await session.execute(select(TeamMember.team_id, TeamMember.agent_id))
        ).all():
            if aid in times:
                row_times.setdefault(tid, AgentTime()).add(times[aid])
    total_time = AgentTime()
    for figures in times.values():
        total_time.add(figures)

    from routing.sla import Compliance, compliance, compliance_figures

    sla = await compliance(session, start, end, group_by)
    keys |= {k for k in sla if k is not None}
    rows = []
    for key in keys:
        tally = grouped.get((key, None), Tally())
        row: dict[str, Any] = {
            "key": key,
            "name": names.get(key, str(key) if key is not None else ""),
            **tally.figures(opts),
            "still_waiting": tally.waiting,
            **compliance_figures(sla.get(key, Compliance(0, 0))),
        }
        if group_by in ("agent", "team"):
            row.update(row_times.get(key, AgentTime()).figures())
        rows.append(row)
    rows.sort(key=lambda r: (r["key"] is None, str(r["name"]).casefold(), str(r["key"])))
    total_tally = overall.get((None, None), Tally())
    return {
        "from": start.astimezone(opts.zone).isoformat(),
        "to": end.astimezone(opts.zone).isoformat(),
        "as_of": now.isoformat(),
        "timezone": opts.timezone,
        "group_by": group_by,
        "settings": opts.view(),
        "rows": rows,
        "total": {
            **total_tally.figures(opts),
            "still_waiting": total_tally.waiting,
            **total_time.figures(),
            **compliance_figures(sla[None]),
        },
    }


# --------------------------------------------------------------------------- the wallboard

SnapshotExtension = Callable[[AsyncSession, dict[str, Any], datetime], Awaitable[None]]
_extensions: list[SnapshotExtension] = []


def register_snapshot_extension(extension: SnapshotExtension) -> None:
    """Add figures to every live snapshot: ``extension(session, snapshot, now)`` may add keys to
    ``snapshot["overall"]`` and ``snapshot["queues"][str(queue_id)]`` (SLA compliance and
    at-risk conversations come this way from routing.sla)."""
    if extension not in _extensions:
        _extensions.append(extension)


@dataclass
class _AgentRow:
    id: int
    name: str
    role: str
    state: str
    reason: str | None
    since: datetime | None
    skills: dict[str, Any]
    languages: list[str]
    capacity: dict[str, Any]
    voice_blocks_chat: bool
    teams: set[int] = field(default_factory=set)
    assigned: dict[str, int] = field(default_factory=dict)
    offered: dict[str, int] = field(default_factory=dict)

    @property
    def handling(self) -> bool:
        return self.state in STAFFED and sum(self.assigned.values()) > 0

    @property
    def idle(self) -> bool:
        return self.state == Presence.available.value and not sum(self.assigned.values())


def serves(agent: _AgentRow, queue: Queue) -> bool:
    """Whether the agent belongs to the queue's pool: its team (if any), language and skill
    minimums (the routing qualification before overflow, without capacity)."""
    if queue.team_id is not None and queue.team_id not in agent.teams:
        return False
    if queue.language and queue.language not in (agent.languages or []):
        return False
    for skill, level in (queue.skills or {}).items():
        if int((agent.skills or {}).get(skill, 0)) < int(level):
            return False
    return True


def _agents_figures(agents: list[_AgentRow]) -> dict[str, Any]:
    by_state = {p.value: 0 for p in Presence}
    for agent in agents:
        by_state[agent.state] = by_state.get(agent.state, 0) + 1
    handling = sum(1 for a in agents if a.handling)
    idle = sum(1 for a in agents if a.idle)
    return {
        "agents_by_state": by_state,
        "agents_handling": handling,
        "agents_idle": idle,
        "occupancy": _ratio(handling, handling + idle),
    }


def _estimate(
    arrivals: int, opts: MetricsOptions, aht: float | None, interval_start: datetime
) -> dict[str, Any] | None:
    """Erlang C for the next interval from the arrivals over the last window and today's AHT."""
    if aht is None or aht <= 0:
        return None
    window = opts.staffing_window_minutes * 60
    rate = arrivals / window
    try:
        found = staffing(
            rate,
            aht,
            target=opts.target,
            threshold_seconds=opts.threshold_seconds,
            max_occupancy=opts.max_occupancy,
        )
    except ValueError:
        return None
    return {
        "interval_start": interval_start.isoformat(),
        "arrivals_per_hour": round(rate * 3600, 6),
        "aht_seconds": round(aht, 3),
        "traffic_erlangs": round(found.traffic, 6),
        "agents": found.agents,
        "service_level": round(found.service_level, 6),
        "probability_wait": round(found.probability_wait, 6),
        "asa_seconds": round(found.asa_seconds, 3) if math.isfinite(found.asa_seconds) else None,
        "occupancy": round(found.occupancy, 6),
    }


def day_bounds(now: datetime, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """Today in ``zone``: its date and its start and end as UTC instants (23 to 25 hours)."""
    today = now.astimezone(zone).date()
    return today, local_midnight(today, zone), local_midnight(today + timedelta(days=1), zone)


def prune(value: Any) -> Any:
    """Drop keys whose value is None (recursively): on the wire a missing figure is null, so
    a snapshot and a merge patch (where null deletes) say the same thing."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


async def live_snapshot(
    session: AsyncSession, d: Dialect, opts: MetricsOptions, *, now: datetime
) -> dict[str, Any]:
    """The wallboard: per queue and overall, the contacts waiting now and today's figures;
    the agents; today's arrivals and service level per 15 minutes; the Erlang C estimate for
    the next interval; the oldest waiting contacts."""
    zone = opts.zone
    today, day_start, day_end = day_bounds(now, zone)
    slots = int((day_end - day_start).total_seconds() // SLOT_SECONDS)
    current_slot = int((now - day_start).total_seconds() // SLOT_SECONDS)
    queues = list((await session.scalars(select(Queue).order_by(Queue.id))).all())

    by_slot = await tallies(
        session, d, opts, start=day_start, end=day_end, now=now, key="queue", slots_from=day_start
    )
    per_queue: dict[int, Tally] = defaultdict(Tally)
    per_slot: dict[int, Tally] = defaultdict(Tally)
    overall = Tally()
    for (queue_id, slot), tally in by_slot.items():
        per_queue[queue_id].add(tally)
        if slot is not None:
            per_slot[slot].add(tally)
        overall.add(tally)

    # Waiting now (whenever it arrived), and the arrivals of the staffing window.
    live = {
        queue_id: (int(n), oldest)
        for queue_id, n, oldest in (
            await session.execute(
                select(RoutingTask.queue_id, func.count(), func.min(RoutingTask.enqueued_at))
                .where(RoutingTask.status.in_(LIVE))
                .group_by(RoutingTask.queue_id)
            )
        ).all()
    }
    window_start = now - timedelta(minutes=opts.staffing_window_minutes)
    recent = {
        queue_id: int(n)
        for queue_id, n in (
            await session.execute(
                select(RoutingTask.queue_id, func.count())
                .where(RoutingTask.enqueued_at >= window_start, RoutingTask.enqueued_at < now)
                .group_by(RoutingTask.queue_id)
            )
        ).all()
    }
    agents = await _agents(session)
    next_slot = day_start + timedelta(seconds=SLOT_SECONDS * (current_slot + 1))

    def waiting_figures(entries: list[tuple[int, datetime | None]]) -> dict[str, Any]:
        count = sum(n for n, _ in entries)
        oldest = min((o for _, o in entries if o is not None), default=None)
        return {
            "waiting": count,
            "longest_wait_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
            "oldest_waiting_since": oldest.isoformat() if oldest else None,
        }

    queue_views: dict[str, Any] = {}
    for queue in queues:
        tally = per_queue.get(queue.id, Tally())
        pool = [a for a in agents if serves(a, queue)]
        queue_views[str(queue.id)] = {
            "id": queue.id,
            "name": queue.name,
            **waiting_figures([live[queue.id]] if queue.id in live else []),
            **tally.figures(opts),
            **_agents_figures(pool),
            "staffing": _estimate(recent.get(queue.id, 0), opts, tally.aht, next_slot),
        }
    overall_view = {
        **waiting_figures(list(live.values())),
        **overall.figures(opts),
        **_agents_figures(agents),
        "staffing": _estimate(sum(recent.values()), opts, overall.aht, next_slot),
    }

    labels: list[str] = []
    arrivals: list[int | None] = []
    levels: list[float | None] = []
    for slot in range(slots):
        begins = day_start + timedelta(seconds=SLOT_SECONDS * slot)
        labels.append(begins.astimezone(zone).strftime("%H:%M"))
        if slot > current_slot:
            arrivals.append(None)
            levels.append(None)
            continue
        tally = per_slot.get(slot, Tally())
        arrivals.append(tally.offered)
        levels.append(tally.service_level(opts))

    snapshot: dict[str, Any] = {
        "as_of": now.isoformat(),
        "day": today.isoformat(),
        "settings": opts.view(),
        "overall": overall_view,
        "queues": queue_views,
        "agents": {
            str(a.id): {
                "id": a.id,
                "name": a.name,
                "state": a.state,
                "reason": a.reason,
                "since": a.since.isoformat() if a.since else None,
                "load": {
                    c.value: a.assigned.get(c.value, 0) + a.offered.get(c.value, 0)
                    for c in ChannelClass
                },
                "capacity": {c.value: capacity_of(a, c.value) for c in ChannelClass},
                "conversations": sum(a.assigned.values()),
                "offers": sum(a.offered.values()),
                "queues": [q.id for q in queues if serves(a, q)],
            }
            for a in agents
        },
        "waiting_list": await _waiting_list(session),
        "series": {
            "start": day_start.isoformat(),
            "step_seconds": SLOT_SECONDS,
            "current": current_slot,
            "labels": labels,
            "arrivals": arrivals,
            "service_level": levels,
        },
    }
    for extension in _extensions:
        await extension(session, snapshot, now)
    return prune(snapshot)  # type: ignore[no-any-return]


async def _agents(session: AsyncSession) -> list[_AgentRow]:
    """The people on the floor: active agents, and anyone else (supervisors, admins) who has
    a presence other than offline or holds work."""
    rows = (
        await session.execute(
            select(
                Agent.id,
                Agent.name,
                Agent.role,
                Agent.skills,
                Agent.languages,
                Agent.capacity,
                Agent.voice_blocks_chat,
                AgentStatus.state,
                AgentStatus.reason,
                AgentStatus.since,
            )
            .outerjoin(AgentStatus, AgentStatus.agent_id == Agent.id)
            .where(Agent.is_active.is_(True))
            .order_by(Agent.name, Agent.id)
        )
    ).all()
    agents = {
        row[0]: _AgentRow(
            id=row[0],
            name=row[1],
            role=row[2],
            skills=row[3] or {},
            languages=list(row[4] or []),
            capacity=row[5] or {},
            voice_blocks_chat=bool(row[6]),
            state=row[7] or Presence.offline.value,
            reason=row[8],
            since=row[9],
        )
        for row in rows
    }
    for team_id, agent_id in (
        await session.execute(select(TeamMember.team_id, TeamMember.agent_id))
    ).all():
        if agent_id in agents:
            agents[agent_id].teams.add(team_id)
    for assignee_id, kind, n in (
        await session.execute(
            select(Conversation.assignee_id, Inbox.kind, func.count())
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .where(Conversation.assignee_id.is_not(None), Conversation.status.in_(LOAD_STATUSES))
            .group_by(Conversation.assignee_id, Inbox.kind)
        )
    ).all():
        if assignee_id in agents:
            cls = channel_class(kind).value
            held = agents[assignee_id].assigned
            held[cls] = held.get(cls, 0) + int(n)
    for agent_id, cls, n in (
        await session.execute(
            select(Offer.agent_id, Offer.channel, func.count())
            .where(Offer.status == OfferStatus.pending.value)
            .group_by(Offer.agent_id, Offer.channel)
        )
    ).all():
        if agent_id in agents:
            agents[agent_id].offered[cls] = int(n)
    return [
        a
        for a in agents.values()
        if a.role == Role.agent.value
        or a.state != Presence.offline.value
        or a.assigned
        or a.offered
    ]


async def _waiting_list(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (
        await session.execute(
            select(
                RoutingTask.conversation_id,
                RoutingTask.queue_id,
                RoutingTask.status,
                RoutingTask.enqueued_at,
                Conversation.priority,
                Inbox.kind,
            )
            .join(Conversation, Conversation.id == RoutingTask.conversation_id)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .where(RoutingTask.status.in_(LIVE))
            .order_by(RoutingTask.enqueued_at, RoutingTask.id)
            .limit(WAITING_LIST)
        )
    ).all()
    return [
        {
            "conversation_id": conversation_id,
            "queue_id": queue_id,
            "status": status,
            "waiting_since": enqueued.isoformat(),
            "priority": Priority(priority).name,
            "channel": kind,
        }
        for conversation_id, queue_id, status, enqueued, priority, kind in rows
    ]
