"""Ticket tables: tickets (cases) and satisfaction surveys (docs/architecture.md §16)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from contact_center.models import Base, JSONType, Priority


class TicketStatus(enum.StrEnum):
    new = "new"  # nobody has taken it yet
    open = "open"
    pending = "pending"  # waiting on the customer
    on_hold = "on_hold"  # waiting on a third party
    solved = "solved"
    closed = "closed"  # final: read-only


class TicketType(enum.StrEnum):
    question = "question"
    incident = "incident"
    problem = "problem"
    complaint = "complaint"
    task = "task"


class SurveyStatus(enum.StrEnum):
    sent = "sent"  # the request is on its way to the customer
    answered = "answered"
    unsendable = "unsendable"  # no channel reaches the customer (reason says why)


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index(None, "customer_id", "created_at"),
        Index(None, "status", "updated_at"),
        Index(None, "assignee_id", "status"),
        Index(None, "conversation_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(250))
    type: Mapped[str] = mapped_column(String(20), default=TicketType.question.value)
    status: Mapped[str] = mapped_column(String(20), default=TicketStatus.new.value)
    priority: Mapped[int] = mapped_column(Integer, default=Priority.normal.value)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    # The conversation it was raised from, if any: the survey goes out on its channel.
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL")
    )
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    solved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class SatisfactionSurvey(Base):
    """One CSAT survey per ticket, sent when the ticket is first solved."""

    __tablename__ = "satisfaction_surveys"
    __table_args__ = (
        Index(None, "customer_id", "created_at"),
        Index(None, "agent_id", "answered_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), unique=True
    )
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    # Whom the rating is about: the ticket's assignee when it was solved.
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL")
    )
    inbox_id: Mapped[str | None] = mapped_column(ForeignKey("inboxes.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    # The secret of the public answer link /survey/{token}.
    token: Mapped[str] = mapped_column(String(64), unique=True)
    language: Mapped[str] = mapped_column(String(16), default="en")
    status: Mapped[str] = mapped_column(String(20), default=SurveyStatus.sent.value)
    reason: Mapped[str | None] = mapped_column(Text)
    score: Mapped[int | None]  # 1 (very unsatisfied) .. 5 (very satisfied)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
