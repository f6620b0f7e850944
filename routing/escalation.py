"""SLA escalations: what a policy does when one of its clocks warns or breaches (§14).

The job ``sla.escalate`` runs once per fired event (its key is the clock and the kind) and is
idempotent beyond that: each step is recorded on the clock (``escalated``) when it is done.
Steps inside our database (``raise_priority``, ``queue``) commit together with their record,
so they happen exactly once; notifications (``email``, ``slack``) leave the machine before
their record commits, so a worker dying between the two repeats that one notification
(at least once: a duplicate warning beats a lost one).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from contact_center.conversations import change_conversation
from contact_center.jobs import RetryJob, job
from contact_center.models import Conversation, ConversationStatus, Inbox, Priority
from contact_center.outbound import SendError
from routing.models import SlaClock, SlaPolicy

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

JOB = "sla.escalate"
KIND = {"sla.warning": "warning", "sla.breached": "breach"}
LOCAL = ("raise_priority", "queue")


def wants_escalation(event: dict[str, Any]) -> bool:
    return event["type"] in KIND


def _steps(policy: SlaPolicy | None, kind: str, metric: str) -> list[tuple[str, dict[str, Any]]]:
    if policy is None:
        return []
    return [
        (f"{kind}:{i}", step)
        for i, step in enumerate(policy.escalations or [])
        if step.get("on") == kind and (not step.get("metrics") or metric in step["metrics"])
    ]


def describe(
    kind: str, metric: str, conversation: Conversation, public_url: str
) -> tuple[str, str]:
    what = "breached" if kind == "breach" else "is about to breach"
    label = metric.replace("_", " ")
    subject = f"SLA {label} {what}: conversation #{conversation.id}"
    text = (
        f"The {label} target of conversation #{conversation.id} "
        f"({Priority(conversation.priority).name} priority) {what}.\n"
        f"{public_url}/agent#conversation-{conversation.id}"
    )
    return subject, text


@job(JOB)
async def escalate(rt: Runtime, payload: dict[str, Any]) -> None:
    from routing.engine import RoutingError, engine_of

    clock_id, kind = int(payload["clock_id"]), str(payload["kind"])
    changed = False
    async with rt.db.write() as session:
        query = select(SlaClock).where(SlaClock.id == clock_id)
        if not rt.db.is_sqlite:
            query = query.with_for_update()
        clock = await session.scalar(query)
        if clock is None:
            return
        policy = await session.get(SlaPolicy, clock.policy_id) if clock.policy_id else None
        conversation = await session.get(Conversation, clock.conversation_id)
        if conversation is None:
            return
        done = set(clock.escalated or [])
        for key, step in _steps(policy, kind, clock.metric):
            if key in done or step["action"] not in LOCAL:
                continue
            if step["action"] == "raise_priority":
                if conversation.priority < Priority.urgent:
                    changed |= await change_conversation(
                        session,
                        conversation,
                        clock=rt.clock,
                        acting_agent_id=None,
                        priority=Priority(conversation.priority + 1),
                    )
            elif conversation.status == ConversationStatus.open.value:
                try:
                    await engine_of(rt).transfer_to_queue_in(
                        session,
                        conversation.id,
                        int(step["queue_id"]),
                        by_agent_id=None,
                        reason=f"SLA {clock.metric} {kind}",
                    )
                    changed = True
                except RoutingError as exc:
                    log.warning("SLA escalation of clock %s to a queue: %s", clock_id, exc)
            done.add(key)
        clock.escalated = sorted(done)
        notify = [
            (key, step)
            for key, step in _steps(policy, kind, clock.metric)
            if key not in done and step["action"] not in LOCAL
        ]
        subject, text = describe(kind, clock.metric, conversation, rt.settings.public_url)
    if changed:
        await rt.committed()
    failed = False
    for key, step in notify:
        async with rt.db.read() as session:
            inbox = await session.get(Inbox, step["inbox_id"])
        sender = rt.notifiers.get(inbox.kind) if inbox is not None else None
        if inbox is None or sender is None or inbox.kind != step["action"]:
            log.error("SLA escalation %s: no %s inbox %r", key, step["action"], step["inbox_id"])
        else:
            target = step["to"] if step["action"] == "email" else step["channel"]
            try:
                await sender.notify(inbox, target, subject, text)
            except SendError as exc:
                log.warning("SLA escalation %s of clock %s failed: %s", key, clock_id, exc)
                if exc.retryable:
                    failed = True
                    continue
        async with rt.db.write() as session:
            clock = await session.get(SlaClock, clock_id)
            if clock is not None:
                clock.escalated = sorted({*(clock.escalated or []), key})
    if failed:
        raise RetryJob(f"an SLA notification of clock {clock_id} failed")
