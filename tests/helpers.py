"""Small helpers shared by tests: an organisation with signed-in people, inboxes, jobs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contact_center.auth import hash_password, issue_token
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage, IngestResult
from contact_center.jobs import InProcessJobs, RqJobs
from contact_center.models import Agent, Inbox, Role, Team, TeamMember
from contact_center.runtime import Runtime
from contact_center.settings import get_settings
from contact_center.wiring import build_scheduler

TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "test-twilio-token"


@dataclass
class Person:
    id: int
    email: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Org:
    admin: Person
    supervisor: Person
    agent: Person  # in team "Billing"
    other_agent: Person  # in team "Technical"
    billing_team_id: int
    technical_team_id: int


async def make_person(rt: Runtime, email: str, role: Role, team_id: int | None) -> Person:
    async with rt.db.write() as session:
        agent = Agent(
            email=email,
            name=email.split("@")[0].title(),
            role=role.value,
            password_hash=hash_password("password-123"),
            languages=["en"],
            is_active=True,
            created_at=rt.clock.now(),
        )
        session.add(agent)
        await session.flush()
        if team_id is not None:
            session.add(TeamMember(team_id=team_id, agent_id=agent.id))
        token = await issue_token(session, agent, rt=rt)
        return Person(agent.id, email, role.value, token)


async def make_org(rt: Runtime) -> Org:
    async with rt.db.write() as session:
        billing = Team(name="Billing", description="", created_at=rt.clock.now())
        technical = Team(name="Technical", description="", created_at=rt.clock.now())
        session.add_all([billing, technical])
        await session.flush()
        billing_id, technical_id = billing.id, technical.id
    return Org(
        admin=await make_person(rt, "admin@test.local", Role.admin, None),
        supervisor=await make_person(rt, "super@test.local", Role.supervisor, None),
        agent=await make_person(rt, "agent@test.local", Role.agent, billing_id),
        other_agent=await make_person(rt, "other@test.local", Role.agent, technical_id),
        billing_team_id=billing_id,
        technical_team_id=technical_id,
    )


async def make_inbox(
    rt: Runtime,
    inbox_id: str = "sms",
    kind: str = "sms",
    address: str = "+15005550006",
    *,
    api_base_url: str | None = None,
    team_id: int | None = None,
    credentials: dict[str, Any] | None = None,
) -> str:
    async with rt.db.write() as session:
        session.add(
            Inbox(
                id=inbox_id,
                name=inbox_id.title(),
                kind=kind,
                address=address,
                credentials=credentials
                if credentials is not None
                else {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN},
                api_base_url=api_base_url,
                settings={},
                team_id=team_id,
                is_active=True,
                created_at=rt.clock.now(),
            )
        )
    return inbox_id


def sms(
    text: str, *, sid: str, phone: str = "+14155550100", inbox_id: str = "sms", **kw: Any
) -> InboundMessage:
    return InboundMessage(
        inbox_id=inbox_id,
        provider_message_id=sid,
        sender=IdentityRef.of("phone", phone),
        text=text,
        **kw,
    )


async def ingest(rt: Runtime, msg: InboundMessage) -> IngestResult:
    return await rt.ingestor.ingest(msg)


async def relay(rt: Runtime) -> int:
    """One pass of the outbox relay, as the scheduler runs it."""
    return await build_scheduler(rt).relay.run_once()


def run_rq_worker() -> None:
    """Run a real ``contact-center worker --burst`` with this test's CC_* settings."""
    subprocess.run(
        [sys.executable, "-m", "contact_center.cli", "worker", "--burst"],
        env=os.environ.copy(),
        check=True,
        timeout=120,
        capture_output=True,
    )


def _rq_idle(jobs: RqJobs) -> bool:
    """Nothing queued and nothing scheduled (a retry waiting for its time) on the rq queue."""
    from rq.registry import ScheduledJobRegistry

    queue = jobs.queue
    return queue.count == 0 and ScheduledJobRegistry(queue=queue).count == 0


def run_rq_worker_here(jobs: RqJobs) -> None:
    """A real rq worker in burst mode on this test's queue, in the calling thread: rq takes the
    jobs off Redis and runs ``wiring.run_rq_job`` as a worker process does (a fresh runtime and
    event loop per job), without the seconds a new process costs to start. Not forking and off
    the main thread, it uses a timer for job timeouts and installs no signal handlers."""
    from rq import SimpleWorker
    from rq.timeouts import TimerDeathPenalty

    class ThreadWorker(SimpleWorker):
        death_penalty_class = TimerDeathPenalty

        def _install_signal_handlers(self) -> None:
            pass

    get_settings.cache_clear()  # the job's runtime reads this test's CC_* settings
    queue = jobs.queue
    ThreadWorker([queue], connection=queue.connection).work(burst=True, with_scheduler=True)


async def run_jobs(rt: Runtime) -> None:
    """Run every job queued so far to completion, on whichever runner the backend uses (the rq
    worker only when the queue has work)."""
    if isinstance(rt.jobs, InProcessJobs):
        await rt.jobs.drain()
    elif isinstance(rt.jobs, RqJobs):
        if not await asyncio.to_thread(_rq_idle, rt.jobs):
            await asyncio.to_thread(run_rq_worker_here, rt.jobs)
    else:
        await asyncio.to_thread(run_rq_worker)


async def settle(rt: Runtime, rounds: int = 3) -> None:
    """Relay events and run the jobs they cause, until nothing is left (bounded)."""
    for _ in range(rounds):
        await relay(rt)
        await run_jobs(rt)


def padded_json(build: Callable[[str], Any], size: int) -> bytes:
    """``json.dumps(build(pad))`` of exactly ``size`` bytes (for request body limit tests)."""
    base = len(json.dumps(build("")).encode())
    body = json.dumps(build("x" * (size - base))).encode()
    assert len(body) == size
    return body
