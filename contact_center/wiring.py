"""The composition root: the one module (with ``app`` and ``cli``) that imports every package.

It builds the runtime, registers channel adapters, jobs and event subscriptions, and holds no
rules of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import channels
from channels import imap, twilio_media, webchat
from contact_center import autoreply, outbound
from contact_center.attachments import AttachmentStore
from contact_center.bus import make_bus
from contact_center.clock import Clock, SystemClock
from contact_center.db import Database
from contact_center.events import register_event_types
from contact_center.ingest import Ingestor
from contact_center.jobs import InProcessJobs, RqJobs, get_job
from contact_center.relay import JobSubscription, Relay
from contact_center.runtime import Runtime
from contact_center.scheduler import Periodic, Scheduler
from contact_center.settings import Settings, get_settings
from routing import engine as routing_engine
from routing import escalation, metrics, sla
from tickets import service as tickets
from tickets import surveys

register_event_types(*routing_engine.EVENT_TYPES, *sla.EVENT_TYPES, *tickets.EVENT_TYPES)
register_event_types(*surveys.EVENT_TYPES)
# Web chat visitors get their survey as a frame and answer it on the socket (§9, §16).
webchat.extend(
    events={"survey.requested": surveys.visitor_request_frame},
    frames={"survey.answer": surveys.visitor_answer},
    history=surveys.visitor_open_surveys,
)
metrics.register_snapshot_extension(sla.snapshot_extension)


def subscriptions() -> list[JobSubscription]:
    return [
        JobSubscription(
            job="outbound.send",
            matches=outbound.wants_send,
            key=lambda e: f"send:{e['data']['id']}",
            payload=lambda e: {"message_id": e["data"]["id"]},
        ),
        JobSubscription(
            job=autoreply.JOB,
            matches=autoreply.wants_auto_reply,
            key=lambda e: f"auto-reply:{e['data']['id']}",
            payload=lambda e: {"conversation_id": e["data"]["id"]},
        ),
        JobSubscription(
            job=escalation.JOB,
            matches=escalation.wants_escalation,
            key=lambda e: f"sla-escalate:{e['data']['clock_id']}:{e['type']}",
            payload=lambda e: {
                "clock_id": e["data"]["clock_id"],
                "kind": escalation.KIND[e["type"]],
            },
        ),
        JobSubscription(
            job=surveys.JOB,
            matches=tickets.solved_now,
            key=lambda e: f"survey:{e['data']['id']}",
            payload=lambda e: {"ticket_id": e["data"]["id"]},
        ),
        JobSubscription(
            job=tickets.MERGE_JOB,
            matches=tickets.wants_merge,
            key=lambda e: f"tickets-merge:{e['data']['source_id']}",
            payload=lambda e: e["data"],
        ),
    ]


def periodic() -> list[Periodic]:
    return [
        Periodic("outbound-sweep", 1.0, outbound.sweep),
        Periodic("imap-poll", 5.0, imap.schedule_polls),
        Periodic("media-sweep", 30.0, twilio_media.sweep),
        Periodic("sla", 1.0, sla.run_periodic),
    ]


async def build_runtime(
    settings: Settings, *, clock: Clock | None = None, pool: bool = True, pre_ping: bool = True
) -> Runtime:
    clock = clock or SystemClock()
    db = Database(settings.database_url, pool=pool, pre_ping=pre_ping)
    store = AttachmentStore(settings.attachments_dir, settings.attachment_max_bytes)
    bus = make_bus(settings.redis_url)
    await bus.start()
    rt = Runtime(
        settings=settings,
        db=db,
        clock=clock,
        bus=bus,
        store=store,
        ingestor=Ingestor(db, store, clock),
        senders=channels.senders(),
        notifiers=channels.notifiers(),
    )
    rt.jobs = (
        RqJobs(settings.redis_url, settings.rq_queue) if settings.redis_url else InProcessJobs(rt)
    )
    rt.extras["routing"] = routing_engine.RoutingEngine(rt)
    return rt


def build_scheduler(rt: Runtime) -> Scheduler:
    engine = routing_engine.engine_of(rt)
    return Scheduler(rt, Relay(rt, subscriptions()), periodic(), [("routing", engine.run)])


async def worker_runtime(settings: Settings) -> Runtime:
    """A runtime for one rq job (its own event loop, so no pooled connections)."""
    return await build_runtime(settings, pool=False)


def run_rq_job(name: str, payload: dict[str, Any]) -> None:
    """rq's entry point in the worker: a fresh event loop per job, so a fresh runtime."""

    async def main() -> None:
        rt = await worker_runtime(get_settings())
        try:
            await get_job(name)(rt, payload)
        finally:
            await rt.close()

    asyncio.run(main())
