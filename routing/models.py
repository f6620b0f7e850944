"""Routing tables: queues, rules, agent presence, tasks and offers (docs/architecture.md §12)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from contact_center.models import Base, BigID, JSONType


class Strategy(enum.StrEnum):
    longest_idle = "longest_idle"
    least_occupied = "least_occupied"
    round_robin = "round_robin"
    best_match = "best_match"


class Presence(enum.StrEnum):
    available = "available"
    busy = "busy"
    away = "away"
    offline = "offline"


class TaskStatus(enum.StrEnum):
    waiting = "waiting"
    offered = "offered"
    assigned = "assigned"
    cancelled = "cancelled"


class OfferStatus(enum.StrEnum):
    pending = "pending"
    accepted = "accepted"
    declined = "declined"
    expired = "expired"
    withdrawn = "withdrawn"


class ChannelClass(enum.StrEnum):
    voice = "voice"
    chat = "chat"
    email = "email"


DEFAULT_CAPACITY: dict[str, int] = {"voice": 1, "chat": 3, "email": 8}


def channel_class(kind: str) -> ChannelClass:
    if kind == "voice":
        return ChannelClass.voice
    if kind == "email":
        return ChannelClass.email
    return ChannelClass.chat


class Queue(Base):
    __tablename__ = "queues"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # {"billing": 3}: every skill at least this level.
    skills: Mapped[dict[str, Any]] = mapped_column(default=dict)
    language: Mapped[str | None] = mapped_column(String(16))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    strategy: Mapped[str] = mapped_column(String(20), default=Strategy.longest_idle.value)
    offer_timeout_seconds: Mapped[int] = mapped_column(Integer, default=30)
    # Channel classes whose offers are accepted for the agent ("chat", "email", "voice").
    auto_accept: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # [{"after_seconds": 60, "action": "drop_skills" | "queue" | "team", "queue_id": 2}]
    overflow: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    sticky_seconds: Mapped[int] = mapped_column(Integer, default=0)
    requeue_on_disconnect: Mapped[bool] = mapped_column(Boolean, default=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class RoutingRule(Base):
    """Conditions (all given ones must hold) that send a conversation to a queue."""

    __tablename__ = "routing_rules"
    id: Mapped[int] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(120), default="")
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"))
    # {"inbox_ids": [...], "channels": [...], "languages": [...], "tiers": [...],
    #  "keywords": [...], "min_priority": "high"}
    conditions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class AgentStatus(Base):
    """An agent's presence and routing counters; the row lock serializes capacity decisions."""

    __tablename__ = "agent_status"
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(20), default=Presence.offline.value)
    reason: Mapped[str | None] = mapped_column(String(120))
    since: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    idle_since: Mapped[datetime | None]
    last_offer_at: Mapped[datetime | None]
    missed_offers: Mapped[int] = mapped_column(Integer, default=0)


class AgentStateLog(Base):
    __tablename__ = "agent_state_log"
    __table_args__ = (Index(None, "agent_id", "started_at"),)
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(120))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class RoutingTask(Base):
    __tablename__ = "routing_tasks"
    __table_args__ = (
        Index(None, "status", "rank"),
        Index(None, "conversation_id"),
    )
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # Equal to conversation_id while the task is live (waiting/offered), else NULL: unique.
    active_conversation_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(10))
    language: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(12), default=TaskStatus.waiting.value)
    rank: Mapped[float] = mapped_column(Float)
    enqueued_at: Mapped[datetime]
    # Overflow: how many steps of the queue's overflow list have been applied.
    stage: Mapped[int] = mapped_column(Integer, default=0)
    any_team_agent: Mapped[bool] = mapped_column(Boolean, default=False)
    skills_dropped: Mapped[bool] = mapped_column(Boolean, default=False)
    # Agents held back after a decline, a miss or a transfer away, each until a cool-down ends
    # or they come back to available: [{"agent": 3, "until": epoch, "since": epoch | null}].
    excluded: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    sticky_agent_id: Mapped[int | None] = mapped_column(Integer)
    sticky_until: Mapped[datetime | None]
    agent_id: Mapped[int | None] = mapped_column(Integer)
    assigned_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class Offer(Base):
    __tablename__ = "offers"
    __table_args__ = (
        Index(
            "uq_offers_pending_task",
            "task_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(None, "status", "expires_at"),
        Index(None, "agent_id", "status"),
    )
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("routing_tasks.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(BigInteger)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    queue_id: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(12), default=OfferStatus.pending.value)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]


# --------------------------------------------------------------------------- SLA (§14)


class SlaMetric(enum.StrEnum):
    first_response = "first_response"
    next_response = "next_response"
    periodic_update = "periodic_update"
    resolution = "resolution"


class ClockStatus(enum.StrEnum):
    running = "running"
    paused = "paused"
    fulfilled = "fulfilled"
    cancelled = "cancelled"


class BusinessHours(Base):
    """A named business-hours calendar (the dict of ``contact_center.calendars``)."""

    __tablename__ = "business_hours"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    calendar: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SlaPolicy(Base):
    __tablename__ = "sla_policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # {"priorities": ["urgent"], "channels": [...], "inbox_ids": [...], "tiers": [...],
    #  "ticket_types": [...]}: every given condition must hold.
    conditions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # {"high": {"first_response": {"minutes": 30, "business": true}, ...}, ...}
    targets: Mapped[dict[str, Any]] = mapped_column(default=dict)
    business_hours_id: Mapped[int | None] = mapped_column(
        ForeignKey("business_hours.id", ondelete="SET NULL")
    )
    warn_at: Mapped[float] = mapped_column(Float, default=0.8)
    # [{"on": "breach", "metrics": ["first_response"], "action": "raise_priority"}, ...]
    escalations: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SlaClock(Base):
    """One cycle of one SLA metric on one conversation (docs/architecture.md §14)."""

    __tablename__ = "sla_clocks"
    __table_args__ = (
        Index(None, "conversation_id", "metric"),
        Index(
            "ix_sla_clocks_next_check_at",
            "next_check_at",
            sqlite_where=text("next_check_at IS NOT NULL"),
            postgresql_where=text("next_check_at IS NOT NULL"),
        ),
        Index(None, "closed_at"),
        Index(None, "due_at"),
    )
    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("sla_policies.id", ondelete="SET NULL")
    )
    metric: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(12), default=ClockStatus.running.value)
    # "<conversation>:<metric>" while running or paused, else NULL: one open cycle per metric.
    open_key: Mapped[str | None] = mapped_column(String(60), unique=True)
    target_seconds: Mapped[int] = mapped_column(Integer)
    business: Mapped[bool] = mapped_column(Boolean, default=False)
    consumed_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    run_started_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None]
    warn_at: Mapped[datetime | None]
    next_check_at: Mapped[datetime | None]
    started_at: Mapped[datetime]
    warned_at: Mapped[datetime | None]
    breached_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    # Escalation steps done: "breach:0", "warning:1" (index into the policy's escalations).
    escalated: Mapped[list[str]] = mapped_column(JSONType, default=list)
