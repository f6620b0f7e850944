"""SLA policies and clocks on business-hours calendars (docs/architecture.md §14).

The consumer (``consume``) reads the outbox after its own mark and moves the clocks of each
conversation at the events' own times; the tick (``tick``) fires warnings and breaches whose
time has come. Both commit their changes, their events and (for the consumer) the mark in one
transaction, so every transition and every ``sla.warning`` / ``sla.breached`` happens once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from contact_center import events
from contact_center.calendars import Calendar, CalendarError
from contact_center.clock import Clock
from contact_center.models import (
    AuthorType,
    ChannelKind,
    Conversation,
    ConversationStatus,
    Customer,
    Direction,
    DomainEvent,
    Inbox,
    Message,
    Priority,
    RelayState,
)
from routing.models import (
    BusinessHours,
    ClockStatus,
    Queue,
    RoutingTask,
    SlaClock,
    SlaMetric,
    SlaPolicy,
)

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

EVENT_TYPES: Final = ("sla.warning", "sla.breached", "sla.policies_changed")
CONSUMER: Final = "sla"
BATCH: Final = 500
# How long one ``consume`` may wait, in all, for the routing engine's passes (see _give_way).
GIVE_WAY_SECONDS = 0.5
RESPONSE_METRICS: Final = (SlaMetric.first_response, SlaMetric.next_response)
PAUSING: Final = frozenset({ConversationStatus.pending.value, ConversationStatus.snoozed.value})
CONSUMED_TYPES: Final = (
    "conversation.created",
    "conversation.updated",
    "message.created",
    "sla.policies_changed",
    "customer.updated",
    "customer.merged",
)
CUSTOMER_TYPES: Final = frozenset({"customer.updated", "customer.merged"})
MAX_TARGET_MINUTES: Final = 366 * 24 * 60
ESCALATION_ACTIONS: Final = ("raise_priority", "queue", "email", "slack")
CONDITION_KEYS: Final = ("priorities", "channels", "inbox_ids", "tiers", "ticket_types")


# --------------------------------------------------------------------------- validation


class PolicyError(ValueError):
    """A policy field that cannot be used; the message names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


def _str_list(raw: object, name: str, allowed: Iterable[str] | None = None) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise PolicyError(name, "must be a list of non-empty strings")
    if allowed is not None:
        known = set(allowed)
        bad = [v for v in raw if v not in known]
        if bad:
            raise PolicyError(name, f"unknown value {bad[0]!r} (known: {', '.join(sorted(known))})")
    return list(dict.fromkeys(raw))


def check_conditions(raw: object) -> dict[str, list[str]]:
    if not isinstance(raw, Mapping):
        raise PolicyError("conditions", "must be an object")
    unknown = sorted(set(raw) - set(CONDITION_KEYS))
    if unknown:
        raise PolicyError(
            f"conditions.{unknown[0]}", f"unknown (known: {', '.join(CONDITION_KEYS)})"
        )
    allowed: dict[str, Iterable[str] | None] = {
        "priorities": [p.name for p in Priority],
        "channels": [c.value for c in ChannelKind],
    }
    return {
        key: _str_list(value, f"conditions.{key}", allowed.get(key))
        for key, value in raw.items()
        if value
    }


def check_targets(raw: object) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"high": {"first_response": {"minutes": 30, "business": true}}}``."""
    if not isinstance(raw, Mapping) or not raw:
        raise PolicyError("targets", "must be an object with at least one priority")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    priorities = {p.name for p in Priority}
    metrics = {m.value for m in SlaMetric}
    for priority, per_metric in raw.items():
        if priority not in priorities:
            raise PolicyError(
                f"targets.{priority}",
                f"unknown priority (known: {', '.join(p.name for p in Priority)})",
            )
        if not isinstance(per_metric, Mapping):
            raise PolicyError(f"targets.{priority}", "must be an object of metrics")
        out[priority] = {}
        for metric, target in per_metric.items():
            name = f"targets.{priority}.{metric}"
            if metric not in metrics:
                raise PolicyError(
                    name, f"unknown metric (known: {', '.join(m.value for m in SlaMetric)})"
                )
            if not isinstance(target, Mapping) or set(target) - {"minutes", "business"}:
                raise PolicyError(name, 'must be {"minutes": N, "business": true|false}')
            minutes = target.get("minutes")
            if (
                isinstance(minutes, bool)
                or not isinstance(minutes, int)
                or not 1 <= minutes <= MAX_TARGET_MINUTES
            ):
                raise PolicyError(
                    f"{name}.minutes", f"must be a whole number from 1 to {MAX_TARGET_MINUTES}"
                )
            business = target.get("business", True)
            if not isinstance(business, bool):
                raise PolicyError(f"{name}.business", "must be true or false")
            out[priority][metric] = {"minutes": minutes, "business": business}
    return out


def check_escalations(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise PolicyError("escalations", "must be a list")
    out = []
    for i, step in enumerate(raw):
        name = f"escalations[{i}]"
        if not isinstance(step, Mapping):
            raise PolicyError(name, "must be an object")
        on = step.get("on")
        if on not in ("warning", "breach"):
            raise PolicyError(f"{name}.on", 'must be "warning" or "breach"')
        action = step.get("action")
        if action not in ESCALATION_ACTIONS:
            raise PolicyError(f"{name}.action", f"must be one of {', '.join(ESCALATION_ACTIONS)}")
        clean: dict[str, Any] = {"on": on, "action": action}
        if step.get("metrics"):
            clean["metrics"] = _str_list(
                step["metrics"], f"{name}.metrics", [m.value for m in SlaMetric]
            )
        if action == "queue":
            queue_id = step.get("queue_id")
            if isinstance(queue_id, bool) or not isinstance(queue_id, int):
                raise PolicyError(f"{name}.queue_id", "must be a queue id")
            clean["queue_id"] = queue_id
        elif action in ("email", "slack"):
            inbox_id = step.get("inbox_id")
            target_key = "to" if action == "email" else "channel"
            target = step.get(target_key)
            if not isinstance(inbox_id, str) or not inbox_id:
                raise PolicyError(
                    f"{name}.inbox_id", f"must name the {action} inbox to send through"
                )
            if not isinstance(target, str) or not target.strip():
                raise PolicyError(f"{name}.{target_key}", "is required")
            if action == "email" and "@" not in target:
                raise PolicyError(f"{name}.to", "must be an email address")
            clean["inbox_id"] = inbox_id
            clean[target_key] = target.strip()
        out.append(clean)
    return out


def check_warn_at(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 1:
        raise PolicyError("warn_at", "must be a share of the target above 0 and at most 1")
    return float(raw)


def check_calendar(raw: object) -> dict[str, Any]:
    try:
        return Calendar.from_dict(raw).to_dict()
    except CalendarError as exc:
        raise PolicyError(f"calendar.{exc.field}", str(exc).split(": ", 1)[-1]) from exc


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True, slots=True)
class Subject:
    """What policy conditions look at."""

    priority: int
    channel: str
    inbox_id: str
    tier: str | None
    ticket_type: str | None = None


def matches(policy: SlaPolicy, subject: Subject) -> bool:
    cond = policy.conditions or {}
    checks = (
        ("priorities", Priority(subject.priority).name),
        ("channels", subject.channel),
        ("inbox_ids", subject.inbox_id),
        ("tiers", subject.tier),
        ("ticket_types", subject.ticket_type),
    )
    return all(not cond.get(key) or value in cond[key] for key, value in checks)


def choose(policies: Iterable[SlaPolicy], subject: Subject) -> SlaPolicy | None:
    """The first active policy (by position, then id) whose conditions hold."""
    for policy in sorted(policies, key=lambda p: (p.position, p.id)):
        if policy.active and matches(policy, subject):
            return policy
    return None


@dataclass(frozen=True, slots=True)
class Target:
    seconds: int
    business: bool


def target_of(policy: SlaPolicy | None, priority: int, metric: str) -> Target | None:
    if policy is None:
        return None
    raw = (policy.targets or {}).get(Priority(priority).name, {}).get(metric)
    if not raw:
        return None
    return Target(int(raw["minutes"]) * 60, bool(raw.get("business", True)))


def _calendar_of(policy: SlaPolicy | None, calendars: Mapping[int, Calendar]) -> Calendar | None:
    if policy is None or policy.business_hours_id is None:
        return None
    return calendars.get(policy.business_hours_id)


# --------------------------------------------------------------------------- clock arithmetic


def _elapsed(clock: SlaClock, calendar: Calendar | None, a: datetime, b: datetime) -> float:
    if b <= a:
        return 0.0
    if clock.business and calendar is not None:
        return calendar.business_time_between(a, b).total_seconds()
    return (b - a).total_seconds()


def _add(
    clock: SlaClock, calendar: Calendar | None, start: datetime, seconds: float
) -> datetime | None:
    seconds = max(0.0, seconds)
    if clock.business and calendar is not None:
        try:
            return calendar.add_business_time(start, timedelta(seconds=seconds))
        except ValueError:
            return None  # the calendar never opens within its horizon: no deadline
    return start + timedelta(seconds=seconds)


def schedule(clock: SlaClock, calendar: Calendar | None, warn_share: float) -> None:
    """Deadlines of a running clock from its run start, consumed time and target."""
    if clock.status != ClockStatus.running.value or clock.run_started_at is None:
        clock.due_at = clock.warn_at = clock.next_check_at = None
        return
    start, used = clock.run_started_at, clock.consumed_seconds
    clock.due_at = _add(clock, calendar, start, clock.target_seconds - used)
    clock.warn_at = _add(clock, calendar, start, warn_share * clock.target_seconds - used)
    checks = []
    if clock.warned_at is None and clock.breached_at is None and clock.warn_at is not None:
        checks.append(clock.warn_at)
    if clock.breached_at is None and clock.due_at is not None:
        checks.append(clock.due_at)
    clock.next_check_at = min(checks) if checks else None


def remaining_seconds(clock: SlaClock, calendar: Calendar | None, at: datetime) -> float:
    """Target time left at ``at`` (negative once breached), in the clock's own time."""
    used = clock.consumed_seconds
    if clock.status == ClockStatus.running.value and clock.run_started_at is not None:
        used += _elapsed(clock, calendar, clock.run_started_at, at)
    return clock.target_seconds - used


def clock_view(
    clock: SlaClock, at: datetime | None = None, calendar: Calendar | None = None
) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    view = {
        "id": clock.id,
        "conversation_id": clock.conversation_id,
        "policy_id": clock.policy_id,
        "metric": clock.metric,
        "status": clock.status,
        "target_seconds": clock.target_seconds,
        "business_hours": clock.business,
        "consumed_seconds": round(clock.consumed_seconds, 3),
        "started_at": iso(clock.started_at),
        "due_at": iso(clock.due_at),
        "warn_at": iso(clock.warn_at),
        "warned_at": iso(clock.warned_at),
        "breached_at": iso(clock.breached_at),
        "closed_at": iso(clock.closed_at),
        "breached": clock.breached_at is not None,
    }
    if at is not None:
        view["remaining_seconds"] = round(remaining_seconds(clock, calendar, at), 3)
    return view


# --------------------------------------------------------------------------- one conversation


@dataclass
class Case:
    """A conversation's SLA state while a batch of events is applied."""

    conversation: Conversation
    subject: Subject
    policy: SlaPolicy | None
    calendar: Calendar | None
    open: dict[str, SlaClock]
    had: set[str]  # metrics that ever had a clock
    paused: bool
    responded: bool | None = None  # an agent has answered publicly (None: not looked up)
    touched: bool = False
    fired: list[tuple[str, SlaClock, datetime]] = field(default_factory=list)

    @property
    def warn_share(self) -> float:
        return self.policy.warn_at if self.policy is not None else 0.8

    # ---- thresholds --------------------------------------------------------------------

    def catch_up(self, clock: SlaClock, at: datetime) -> None:
        """Fire the thresholds a clock passed before ``at``, each at its own time, once."""
        if clock.status != ClockStatus.running.value:
            return
        if clock.breached_at is None and clock.due_at is not None and clock.due_at <= at:
            clock.breached_at = clock.due_at
            if clock.warned_at is None:
                clock.warned_at = clock.due_at  # past both: only the breach is told
            self.fired.append(("sla.breached", clock, clock.due_at))
        elif clock.warned_at is None and clock.warn_at is not None and clock.warn_at <= at:
            clock.warned_at = clock.warn_at
            self.fired.append(("sla.warning", clock, clock.warn_at))
        schedule(clock, self.calendar, self.warn_share)

    # ---- transitions -------------------------------------------------------------------

    def start(self, session: AsyncSession, metric: SlaMetric, at: datetime) -> None:
        if metric.value in self.open:
            return
        target = target_of(self.policy, self.subject.priority, metric.value)
        if target is None or self.policy is None:
            return
        clock = SlaClock(
            conversation_id=self.conversation.id,
            policy_id=self.policy.id,
            metric=metric.value,
            status=(ClockStatus.paused if self.paused else ClockStatus.running).value,
            open_key=f"{self.conversation.id}:{metric.value}",
            target_seconds=target.seconds,
            business=target.business,
            consumed_seconds=0.0,
            run_started_at=None if self.paused else at,
            started_at=at,
        )
        schedule(clock, self.calendar, self.warn_share)
        session.add(clock)
        self.open[metric.value] = clock
        self.had.add(metric.value)
        self.touched = True

    def close(self, metric: SlaMetric, at: datetime, status: ClockStatus) -> None:
        clock = self.open.pop(metric.value, None)
        if clock is None:
            return
        self.catch_up(clock, at)
        if clock.status == ClockStatus.running.value and clock.run_started_at is not None:
            clock.consumed_seconds += _elapsed(clock, self.calendar, clock.run_started_at, at)
        clock.status = status.value
        clock.open_key = None
        clock.closed_at = at
        clock.run_started_at = None
        clock.next_check_at = None
        self.touched = True

    def pause(self, at: datetime) -> None:
        self.paused = True
        for clock in self.open.values():
            if clock.status != ClockStatus.running.value:
                continue
            self.catch_up(clock, at)
            if clock.run_started_at is not None:
                clock.consumed_seconds += _elapsed(clock, self.calendar, clock.run_started_at, at)
            clock.status = ClockStatus.paused.value
            clock.run_started_at = None
            schedule(clock, self.calendar, self.warn_share)
            self.touched = True

    def resume(self, at: datetime) -> None:
        self.paused = False
        for clock in self.open.values():
            if clock.status != ClockStatus.paused.value:
                continue
            clock.status = ClockStatus.running.value
            clock.run_started_at = at
            schedule(clock, self.calendar, self.warn_share)
            self.touched = True

    def retarget(self, policy: SlaPolicy | None, calendar: Calendar | None, at: datetime) -> None:
        """A new policy or priority: open clocks keep their consumed time, get new targets."""
        for clock in list(self.open.values()):
            self.catch_up(clock, at)
            if clock.status == ClockStatus.running.value and clock.run_started_at is not None:
                # Close the run under the old calendar, start a new one under the new.
                clock.consumed_seconds += _elapsed(clock, self.calendar, clock.run_started_at, at)
                clock.run_started_at = at
        self.policy, self.calendar = policy, calendar
        for metric, clock in list(self.open.items()):
            target = target_of(policy, self.subject.priority, metric)
            if target is None or policy is None:
                self.close(SlaMetric(metric), at, ClockStatus.cancelled)
                continue
            clock.policy_id = policy.id
            clock.target_seconds = target.seconds
            clock.business = target.business
            schedule(clock, calendar, self.warn_share)  # already past: the next tick fires
            self.touched = True


# --------------------------------------------------------------------------- the consumer


class SlaService:
    """The SLA consumer and tick; one instance per scheduler leader (or test)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._calendars: dict[int, tuple[datetime, Calendar]] = {}

    @property
    def clock(self) -> Clock:
        return self.rt.clock

    async def run_once(self, rt: Runtime | None = None) -> None:
        """The scheduler's periodic ``sla``: apply new events, then fire what is due."""
        while await self.consume() >= BATCH:
            pass
        await self.tick()

    # ---- helpers ---------------------------------------------------------------------

    async def _policies(self, session: AsyncSession) -> tuple[list[SlaPolicy], dict[int, Calendar]]:
        policies = list((await session.scalars(select(SlaPolicy))).all())
        ids = {p.business_hours_id for p in policies if p.business_hours_id is not None}
        calendars: dict[int, Calendar] = {}
        if ids:
            for row in (
                await session.scalars(select(BusinessHours).where(BusinessHours.id.in_(ids)))
            ).all():
                cached = self._calendars.get(row.id)
                if cached is None or cached[0] != row.updated_at:
                    try:
                        cached = (row.updated_at, Calendar.from_dict(row.calendar))
                    except CalendarError:
                        log.error("business hours %s is invalid; using 24/7", row.id)
                        cached = (row.updated_at, Calendar.from_dict({"always_open": True}))
                    self._calendars[row.id] = cached
                calendars[row.id] = cached[1]
        return policies, calendars

    async def _load(
        self,
        session: AsyncSession,
        conversation_id: int,
        policies: list[SlaPolicy],
        calendars: dict[int, Calendar],
    ) -> Case | None:
        row = (
            await session.execute(
                select(Conversation, Inbox.kind, Customer.tier)
                .join(Inbox, Inbox.id == Conversation.inbox_id)
                .join(Customer, Customer.id == Conversation.customer_id)
                .where(Conversation.id == conversation_id)
            )
        ).first()
        if row is None:
            return None
        conversation, kind, tier = row
        clocks = (
            await session.scalars(
                select(SlaClock).where(SlaClock.conversation_id == conversation_id)
            )
        ).all()
        open_clocks = {c.metric: c for c in clocks if c.open_key is not None}
        policy = None
        if open_clocks:
            policy_id = next(iter(open_clocks.values())).policy_id
            policy = next((p for p in policies if p.id == policy_id), None)
        subject = Subject(conversation.priority, kind, conversation.inbox_id, tier)
        if policy is None:
            policy = choose(policies, subject)
        calendar = _calendar_of(policy, calendars)
        paused = (
            any(c.status == ClockStatus.paused.value for c in open_clocks.values())
            if open_clocks
            else conversation.status in PAUSING
        )
        return Case(
            conversation=conversation,
            subject=subject,
            policy=policy,
            calendar=calendar,
            open=open_clocks,
            had={c.metric for c in clocks},
            paused=paused,
        )

    async def _responded(self, session: AsyncSession, conversation_id: int, at: datetime) -> bool:
        query = select(
            exists().where(
                Message.conversation_id == conversation_id,
                Message.direction == Direction.outbound.value,
                Message.author_type == AuthorType.agent.value,
                Message.private.is_(False),
                Message.created_at <= at,
            )
        )
        return bool(await session.scalar(query))

    # ---- applying events ---------------------------------------------------------------

    async def consume(self) -> int:
        """Apply the next events after the mark; returns how many events were read.

        Nothing new (the usual case, every second) is found by a read, without taking the
        write lock (SQLite) or a row lock (PostgreSQL). Positions become visible in order (the
        relay numbers them under a lock), so every event up to the highest position seen is
        visible: the mark moves past the events it does not consume, and the next read starts
        there instead of walking them again."""
        top = func.max(DomainEvent.position)
        async with self.rt.db.read() as session:
            mark = await session.scalar(
                select(RelayState.published).where(RelayState.name == CONSUMER)
            )
            highest = await session.scalar(select(top))
        if mark is not None and (highest is None or highest <= mark):
            return 0
        async with self.rt.db.write() as session:
            state = await session.get(RelayState, CONSUMER, with_for_update=True)
            if state is None:
                state = RelayState(name=CONSUMER, sequenced=0, published=0)
                session.add(state)
                await session.flush()
            highest = await session.scalar(select(top)) or 0
            rows = (
                await session.scalars(
                    select(DomainEvent)
                    .where(
                        DomainEvent.position > state.published,
                        DomainEvent.position <= highest,
                        DomainEvent.type.in_(CONSUMED_TYPES),
                    )
                    .order_by(DomainEvent.position)
                    .limit(BATCH)
                )
            ).all()
            if not rows:
                state.published = max(state.published, highest)
                return 0
            policies, calendars = await self._policies(session)
            cases: dict[int, Case | None] = {}
            budget = [GIVE_WAY_SECONDS]
            for event in rows:
                await self._give_way(budget)
                if event.type == "sla.policies_changed":
                    await self._policies_changed(
                        session, event.created_at, cases, policies, calendars
                    )
                    continue
                if event.type in CUSTOMER_TYPES:
                    await self._customer_changed(session, event, cases, policies, calendars)
                    continue
                cid = event.conversation_id
                if cid is None:
                    continue
                if cid not in cases:
                    cases[cid] = await self._load(session, cid, policies, calendars)
                case = cases[cid]
                if case is not None:
                    await self._apply(session, case, event, policies, calendars)
            await session.flush()
            done = [c for c in cases.values() if c is not None and c.touched]
            await self._emit(session, done)
            await self._rerank(session, [c.conversation.id for c in done])
            state.published = (
                int(rows[-1].position or state.published) if len(rows) >= BATCH else highest
            )
            return len(rows)

    async def _give_way(self, budget: list[float]) -> None:
        """Let the routing engine's pass in progress finish first (PostgreSQL).

        The consumer shares the scheduler's event loop with the engine, and with 50 arrivals
        a second it has ~300 events a second to apply: interleaved step by step with a pass,
        it doubled the pass's time (an arrival's offer waited for it). So between events it
        waits while a pass runs, up to ``budget`` seconds per ``consume`` in all (the engine
        busy without a break cannot stall the clocks). Nothing the engine needs is locked
        meanwhile: the consumer's own state row and clock rows; tasks are re-ranked after the
        last event. Not on SQLite, where the open write transaction would block the pass."""
        engine: Any = self.rt.extras.get("routing")
        if self.rt.db.is_sqlite or budget[0] <= 0 or not hasattr(engine, "after_pass"):
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        await engine.after_pass(budget[0])
        budget[0] -= loop.time() - started

    async def _apply(
        self,
        session: AsyncSession,
        case: Case,
        event: DomainEvent,
        policies: list[SlaPolicy],
        calendars: dict[int, Calendar],
    ) -> None:
        at = event.created_at
        data = event.payload or {}
        priority = data.get("priority")
        if event.type.startswith("conversation.") and priority in Priority.__members__:
            # Targets follow the priority as of the event (the row may be newer).
            as_of = Priority[str(priority)].value
            changed = as_of != case.subject.priority
            case.subject = replace(case.subject, priority=as_of)
        else:
            changed = False
        if event.type == "conversation.created":
            if not case.had:
                case.paused = data.get("status") in PAUSING
                if case.policy is None or not matches(case.policy, case.subject):
                    case.policy = choose(policies, case.subject)
                    case.calendar = _calendar_of(case.policy, calendars)
                case.responded = False
                case.start(session, SlaMetric.first_response, at)
                case.start(session, SlaMetric.resolution, at)
            return
        if event.type == "conversation.updated":
            if changed or "priority" in (data.get("changes") or {}):
                policy = choose(policies, case.subject)
                case.retarget(policy, _calendar_of(policy, calendars), at)
                await self._start_missing(session, case, at)
            status = data.get("status")
            if status == ConversationStatus.resolved.value:
                case.close(SlaMetric.resolution, at, ClockStatus.fulfilled)
                for metric in (
                    SlaMetric.first_response,
                    SlaMetric.next_response,
                    SlaMetric.periodic_update,
                ):
                    case.close(metric, at, ClockStatus.cancelled)
                case.paused = False
            elif status in PAUSING:
                case.pause(at)
            elif status == ConversationStatus.open.value:
                if case.paused:
                    case.resume(at)
                if SlaMetric.resolution.value not in case.open:
                    case.start(session, SlaMetric.resolution, at)  # new or reopened
                    await self._owe_response(session, case, at, first_only=True)
            return
        if event.type == "message.created":
            if data.get("private"):
                return
            direction, author = data.get("direction"), data.get("author_type")
            if direction == Direction.inbound.value and author == AuthorType.customer.value:
                if case.policy is None or any(m.value in case.open for m in RESPONSE_METRICS):
                    return
                await self._owe_response(session, case, at)
            elif direction == Direction.outbound.value and author == AuthorType.agent.value:
                for metric in (
                    SlaMetric.first_response,
                    SlaMetric.next_response,
                    SlaMetric.periodic_update,
                ):
                    case.close(metric, at, ClockStatus.fulfilled)
                case.responded = True
                if SlaMetric.resolution.value in case.open:
                    case.start(session, SlaMetric.periodic_update, at)

    async def _owe_response(
        self, session: AsyncSession, case: Case, at: datetime, *, first_only: bool = False
    ) -> None:
        """Start the response clock the case owes, unless one is open: ``next_response`` once
        an agent has answered publicly (only for a customer message: ``first_only`` on a
        reopen), else ``first_response`` again (a conversation resolved unanswered and
        reopened still owes its first reply, with the full target)."""
        if case.policy is None or any(m.value in case.open for m in RESPONSE_METRICS):
            return
        if case.responded is None:
            case.responded = await self._responded(session, case.conversation.id, at)
        if not case.responded:
            case.start(session, SlaMetric.first_response, at)
        elif not first_only:
            case.start(session, SlaMetric.next_response, at)

    async def _start_missing(self, session: AsyncSession, case: Case, at: datetime) -> None:
        """A conversation that a policy now covers gets the clocks it should have running."""
        if case.policy is None or case.conversation.status == ConversationStatus.resolved.value:
            return
        if SlaMetric.resolution.value not in case.open:
            case.start(session, SlaMetric.resolution, at)
        responding = any(m.value in case.open for m in RESPONSE_METRICS)
        if (
            not responding
            and SlaMetric.first_response.value not in case.had
            and not await self._responded(session, case.conversation.id, at)
        ):
            case.start(session, SlaMetric.first_response, at)

    async def _policies_changed(
        self,
        session: AsyncSession,
        at: datetime,
        cases: dict[int, Case | None],
        policies: list[SlaPolicy],
        calendars: dict[int, Calendar],
    ) -> None:
        fresh, fresh_calendars = await self._policies(session)
        policies[:] = fresh
        calendars.clear()
        calendars.update(fresh_calendars)
        ids = (
            await session.scalars(
                select(Conversation.id).where(
                    Conversation.status != ConversationStatus.resolved.value
                )
            )
        ).all()
        for cid in ids:
            if cid not in cases:
                cases[cid] = await self._load(session, cid, policies, calendars)
            case = cases[cid]
            if case is None:
                continue
            policy = choose(policies, case.subject)
            case.retarget(policy, _calendar_of(policy, calendars), at)
            await self._start_missing(session, case, at)

    async def _customer_changed(
        self,
        session: AsyncSession,
        event: DomainEvent,
        cases: dict[int, Case | None],
        policies: list[SlaPolicy],
        calendars: dict[int, Calendar],
    ) -> None:
        """A customer's tier changed (or conversations joined them by a merge): the open
        conversations of that customer get the policy their tier now chooses."""
        customer_id = event.customer_id
        if customer_id is None:
            return
        data = event.payload or {}
        tier = (
            data["tier"]
            if isinstance(data.get("tier"), str)
            else await session.scalar(select(Customer.tier).where(Customer.id == customer_id))
        )
        ids = (
            await session.scalars(
                select(Conversation.id).where(
                    Conversation.customer_id == customer_id,
                    Conversation.status != ConversationStatus.resolved.value,
                )
            )
        ).all()
        at = event.created_at
        for cid in ids:
            if cid not in cases:
                cases[cid] = await self._load(session, cid, policies, calendars)
            case = cases[cid]
            if case is None:
                continue
            case.subject = replace(case.subject, tier=tier)
            policy = choose(policies, case.subject)
            if (policy.id if policy else None) != (case.policy.id if case.policy else None):
                case.retarget(policy, _calendar_of(policy, calendars), at)
            await self._start_missing(session, case, at)

    async def _emit(self, session: AsyncSession, cases: list[Case]) -> None:
        for case in cases:
            for kind, clock, at in case.fired:
                append_fired(session, kind, clock, case.conversation, at, self.clock)
            case.fired.clear()

    async def _rerank(self, session: AsyncSession, conversation_ids: list[int]) -> None:
        if conversation_ids:
            await rerank(session, conversation_ids)

    # ---- the tick ----------------------------------------------------------------------

    async def tick(self) -> int:
        """Fire every warning and breach whose time has come; returns how many fired."""
        now = self.clock.now()
        fired = 0
        async with self.rt.db.read() as session:
            due = await session.scalar(
                select(SlaClock.id)
                .where(SlaClock.next_check_at.is_not(None), SlaClock.next_check_at <= now)
                .limit(1)
            )
        if due is None:
            return 0  # the usual case: no write transaction at all
        async with self.rt.db.write() as session:
            query = (
                select(SlaClock)
                .where(SlaClock.next_check_at.is_not(None), SlaClock.next_check_at <= now)
                .order_by(SlaClock.next_check_at, SlaClock.id)
                .limit(BATCH)
            )
            if not self.rt.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            clocks = (await session.scalars(query)).all()
            if not clocks:
                return 0
            policies, calendars = await self._policies(session)
            by_id = {p.id: p for p in policies}
            conversations = {
                c.id: c
                for c in (
                    await session.scalars(
                        select(Conversation).where(
                            Conversation.id.in_({k.conversation_id for k in clocks})
                        )
                    )
                ).all()
            }
            for clock in clocks:
                policy = by_id.get(clock.policy_id) if clock.policy_id is not None else None
                calendar = _calendar_of(policy, calendars)
                conversation = conversations[clock.conversation_id]
                case = Case(
                    conversation,
                    Subject(conversation.priority, "", "", None),
                    policy,
                    calendar,
                    {},
                    set(),
                    False,
                )
                case.catch_up(clock, now)
                for kind, fired_clock, at in case.fired:
                    append_fired(session, kind, fired_clock, conversation, at, self.clock)
                    fired += 1
        return fired


def append_fired(
    session: AsyncSession,
    kind: str,
    clock: SlaClock,
    conversation: Conversation,
    at: datetime,
    clock_source: Clock,
) -> None:
    events.append(
        session,
        kind,
        {
            "clock_id": clock.id,
            "conversation_id": conversation.id,
            "metric": clock.metric,
            "policy_id": clock.policy_id,
            "due_at": clock.due_at.isoformat() if clock.due_at else None,
            "at": at.isoformat(),
            "target_seconds": clock.target_seconds,
            "priority": Priority(conversation.priority).name,
            "assignee_id": conversation.assignee_id,
            "status": conversation.status,
        },
        clock=clock_source,
        conversation_id=conversation.id,
        customer_id=conversation.customer_id,
        agent_id=conversation.assignee_id,
    )


# --------------------------------------------------------------------------- routing order


async def deadlines(session: AsyncSession, conversation_ids: Iterable[int]) -> dict[int, datetime]:
    """The earliest running response deadline of each conversation that has one."""
    ids = list(conversation_ids)
    if not ids:
        return {}
    rows = (
        await session.execute(
            select(SlaClock.conversation_id, SlaClock.due_at).where(
                SlaClock.conversation_id.in_(ids),
                SlaClock.status == ClockStatus.running.value,
                SlaClock.metric.in_([m.value for m in RESPONSE_METRICS]),
                SlaClock.due_at.is_not(None),
            )
        )
    ).all()
    out: dict[int, datetime] = {}
    for cid, due in rows:
        if due is not None and (cid not in out or due < out[cid]):
            out[cid] = due
    return out


async def rerank(session: AsyncSession, conversation_ids: list[int]) -> None:
    """Give the live tasks of these conversations the rank their deadlines say."""
    from routing.engine import task_rank

    rows = (
        await session.execute(
            select(
                RoutingTask.id,
                RoutingTask.conversation_id,
                RoutingTask.enqueued_at,
                Queue.priority,
                Conversation.priority,
            )
            .join(Queue, Queue.id == RoutingTask.queue_id)
            .join(Conversation, Conversation.id == RoutingTask.conversation_id)
            .where(RoutingTask.active_conversation_id.in_(conversation_ids))
        )
    ).all()
    if not rows:
        return
    due = await deadlines(session, conversation_ids)
    for task_id, cid, enqueued_at, queue_priority, priority in rows:
        rank = task_rank(enqueued_at, queue_priority, priority, due.get(cid))
        if math.isfinite(rank):
            await session.execute(
                update(RoutingTask).where(RoutingTask.id == task_id).values(rank=rank)
            )


def service_of(rt: Runtime) -> SlaService:
    service = rt.extras.get("sla")
    if service is None:
        service = rt.extras["sla"] = SlaService(rt)
    return service


async def run_periodic(rt: Runtime) -> None:
    await service_of(rt).run_once()


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Compliance:
    met: int
    missed: int

    @property
    def share(self) -> float | None:
        decided = self.met + self.missed
        return self.met / decided if decided else None


def _queue_of_conversation() -> Any:
    """conversation id -> the queue of its latest routing task (None if it never queued)."""
    from sqlalchemy import func

    latest = (
        select(RoutingTask.conversation_id, func.max(RoutingTask.id).label("task_id"))
        .group_by(RoutingTask.conversation_id)
        .subquery()
    )
    return (
        select(latest.c.conversation_id, RoutingTask.queue_id)
        .join(RoutingTask, RoutingTask.id == latest.c.task_id)
        .subquery()
    )


async def compliance(
    session: AsyncSession, since: datetime, until: datetime, key: str = "queue"
) -> dict[Any, Compliance]:
    """SLA compliance over targets decided in ``[since, until)``, grouped by ``key`` (``queue``:
    the conversation's latest routing task; ``agent``: its assignee; ``team``: its team, else
    its queue's; ``channel``: its inbox's kind), with the overall figure under ``None``.
    *met* = clocks fulfilled in the range without a breach; *missed* = clocks breached in the
    range (answered late or not at all). Cancelled clocks that never breached do not count."""
    from sqlalchemy import and_, case, func, or_

    met = and_(
        SlaClock.status == ClockStatus.fulfilled.value,
        SlaClock.breached_at.is_(None),
        SlaClock.closed_at >= since,
        SlaClock.closed_at < until,
    )
    missed = and_(SlaClock.breached_at >= since, SlaClock.breached_at < until)
    query = select(
        func.sum(case((met, 1), else_=0)), func.sum(case((missed, 1), else_=0))
    ).select_from(SlaClock)
    queues = _queue_of_conversation()
    if key == "queue":
        group: Any = queues.c.queue_id
        query = query.outerjoin(queues, queues.c.conversation_id == SlaClock.conversation_id)
    elif key in ("agent", "team", "channel"):
        query = query.join(Conversation, Conversation.id == SlaClock.conversation_id)
        if key == "agent":
            group = Conversation.assignee_id
        elif key == "channel":
            query = query.join(Inbox, Inbox.id == Conversation.inbox_id)
            group = Inbox.kind
        else:
            query = query.outerjoin(
                queues, queues.c.conversation_id == SlaClock.conversation_id
            ).outerjoin(Queue, Queue.id == queues.c.queue_id)
            group = func.coalesce(Conversation.team_id, Queue.team_id)
    else:
        raise ValueError(f"unknown grouping {key!r}")
    rows = (
        await session.execute(
            query.add_columns(group.label("key"))
            .where(
                or_(
                    and_(SlaClock.closed_at >= since, SlaClock.closed_at < until),
                    and_(SlaClock.breached_at >= since, SlaClock.breached_at < until),
                )
            )
            .group_by(group)
        )
    ).all()
    out: dict[Any, Compliance] = {}
    total_met = total_missed = 0
    for m, x, group_key in rows:
        m, x = int(m or 0), int(x or 0)
        total_met, total_missed = total_met + m, total_missed + x
        if group_key is not None:
            out[group_key] = Compliance(m, x)
    out[None] = Compliance(total_met, total_missed)
    return out


def compliance_figures(tally: Compliance) -> dict[str, Any]:
    share = tally.share
    return {
        "sla_met": tally.met,
        "sla_missed": tally.missed,
        "sla_compliance": round(share, 4) if share is not None else None,
    }


async def at_risk(session: AsyncSession, limit: int = 50) -> list[dict[str, Any]]:
    """Running clocks past their warning and not yet breached, the nearest deadline first:
    the conversations a supervisor can still save."""
    queues = _queue_of_conversation()
    rows = (
        await session.execute(
            select(SlaClock, Conversation.assignee_id, Conversation.priority, queues.c.queue_id)
            .join(Conversation, Conversation.id == SlaClock.conversation_id)
            .outerjoin(queues, queues.c.conversation_id == SlaClock.conversation_id)
            .where(
                SlaClock.status == ClockStatus.running.value,
                SlaClock.warned_at.is_not(None),
                SlaClock.breached_at.is_(None),
            )
            .order_by(SlaClock.due_at, SlaClock.id)
            .limit(limit)
        )
    ).all()
    return [
        {
            "conversation_id": clock.conversation_id,
            "metric": clock.metric,
            "due_at": clock.due_at.isoformat() if clock.due_at else None,
            "assignee_id": assignee_id,
            "priority": Priority(priority).name,
            "queue_id": queue_id,
        }
        for clock, assignee_id, priority, queue_id in rows
    ]


async def snapshot_extension(
    session: AsyncSession, snapshot: dict[str, Any], now: datetime
) -> None:
    """The wallboard's SLA figures (registered with ``routing.metrics``): today's compliance
    overall and per queue (targets decided since the day's start), how many conversations are
    at risk there, and the at-risk list itself (nearest deadline first)."""
    start = datetime.fromisoformat(snapshot["series"]["start"]) if snapshot.get("series") else now
    figures = await compliance(session, start, now + timedelta(microseconds=1))
    risky = await at_risk(session)
    per_queue: dict[int | None, int] = {}
    for item in risky:
        per_queue[item["queue_id"]] = per_queue.get(item["queue_id"], 0) + 1

    def add(view: dict[str, Any], tally: Compliance, at_risk_count: int) -> None:
        view["sla_met"] = tally.met
        view["sla_missed"] = tally.missed
        if tally.share is not None:
            view["sla_compliance"] = round(tally.share, 4)
        view["sla_at_risk"] = at_risk_count

    add(snapshot.setdefault("overall", {}), figures[None], len(risky))
    for key, view in (snapshot.get("queues") or {}).items():
        queue_id = int(key)
        add(view, figures.get(queue_id, Compliance(0, 0)), per_queue.get(queue_id, 0))
    snapshot["sla_at_risk"] = risky
