"""Outbound SMS/WhatsApp: a reply leaves once, through Twilio's REST API (a stand-in here),
with durable retries, a final failure after the attempts run out, and no second send after a
worker died mid-send. Runs on both backends; on PostgreSQL jobs run on real rq workers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from contact_center.clock import ManualClock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.jobs import InProcessJobs, RqJobs
from contact_center.models import Agent, DeliveryStatus, DomainEvent, Inbox, Message, Role
from contact_center.outbound import REDELIVER_AFTER, reply, send_job, sweep
from contact_center.runtime import Runtime
from tests.helpers import (
    TWILIO_SID,
    TWILIO_TOKEN,
    Person,
    ingest,
    make_inbox,
    make_person,
    relay,
    run_jobs,
    run_rq_worker,
    sms,
)
from tests.standins.twilio import SID, TwilioStandIn, running

SMS_NUMBER = "+15005550006"
WA_NUMBER = "+15005550007"
CUSTOMER = "+14155550100"
STATUS_CALLBACK = "http://testserver.local/webhooks/twilio/status"


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


async def conversation(
    rt: Runtime, standin: TwilioStandIn, kind: str = "sms", **inbox: Any
) -> tuple[Person, int]:
    """An agent, and a conversation a customer opened on an inbox sending via the stand-in.
    (One ``make_person`` rather than ``make_org``: password hashing is most of a test's time.)"""
    agent = await make_person(rt, "agent@test.local", Role.agent, None)
    if kind == "sms":
        await make_inbox(rt, api_base_url=standin.url, **inbox)
        result = await ingest(rt, sms("my bill is wrong", sid="SM" + "a" * 32, phone=CUSTOMER))
    else:
        await make_inbox(rt, "whatsapp", "whatsapp", WA_NUMBER, api_base_url=standin.url, **inbox)
        result = await ingest(
            rt,
            InboundMessage(
                inbox_id="whatsapp",
                provider_message_id="SM" + "b" * 32,
                sender=IdentityRef.of("whatsapp", f"whatsapp:{CUSTOMER}"),
                text="my bill is wrong",
            ),
        )
    return agent, result.conversation_id


async def agent_reply(
    rt: Runtime, person: Person, conversation_id: int, text: str = "We fixed it", **kw: Any
) -> tuple[int, bool]:
    async with rt.db.write() as session:
        agent = await session.get(Agent, person.id)
        assert agent is not None
        message, created = await reply(
            session, conversation_id=conversation_id, agent=agent, text=text, clock=rt.clock, **kw
        )
        return message.id, created


async def settle(rt: Runtime) -> None:
    """Relay the events, run the jobs they caused (one rq worker run, if any job is queued),
    relay again."""
    await relay(rt)
    if not isinstance(rt.jobs, RqJobs) or rt.jobs.queue.count:
        await run_jobs(rt)
    await relay(rt)


async def load(rt: Runtime, message_id: int) -> Message:
    async with rt.db.read() as session:
        message = await session.get(Message, message_id)
    assert message is not None
    return message


async def status_events(rt: Runtime, message_id: int) -> list[tuple[str, str | None]]:
    async with rt.db.read() as session:
        rows = await session.scalars(
            select(DomainEvent).where(DomainEvent.type == "message.status").order_by(DomainEvent.id)
        )
        return [
            (e.payload["delivery_status"], e.payload["status_reason"])
            for e in rows
            if e.payload["message_id"] == message_id
        ]


async def outbound_count(rt: Runtime) -> int:
    async with rt.db.read() as session:
        query = select(func.count()).select_from(Message).where(Message.direction == "out")
        return int(await session.scalar(query) or 0)


async def run_swept(rt: Runtime, message_id: int) -> None:
    """Run the send job ``sweep`` just enqueued. On rq it runs here, with the test's clock,
    instead of starting a worker per round (the rq path has tests of its own)."""
    if isinstance(rt.jobs, InProcessJobs):
        await rt.jobs.drain()
    else:
        await send_job(rt, {"message_id": message_id})


# -- the happy path -------------------------------------------------------------------------------


async def test_reply_is_sent_once_to_the_customer(rt: Runtime, standin: TwilioStandIn) -> None:
    agent, conversation_id = await conversation(rt, standin)
    message_id, created = await agent_reply(rt, agent, conversation_id, "We fixed it")
    assert created
    assert (await load(rt, message_id)).delivery_status == DeliveryStatus.queued

    await settle(rt)

    [request] = standin.sent
    assert request.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert request.auth == (TWILIO_SID, TWILIO_TOKEN)
    assert request.form["To"] == CUSTOMER
    assert request.form["From"] == SMS_NUMBER
    assert request.form["Body"] == "We fixed it"
    assert request.form["StatusCallback"] == STATUS_CALLBACK
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.sent
    assert message.provider_message_id is not None and SID.match(message.provider_message_id)
    assert message.provider_message_id in standin.messages
    assert message.sent_at is not None and message.status_reason is None
    assert message.send_attempts == 1
    assert await status_events(rt, message_id) == [("sent", None)]


@pytest.mark.parametrize("address", [WA_NUMBER, f"whatsapp:{WA_NUMBER}"])
async def test_whatsapp_reply_uses_whatsapp_addresses(
    rt: Runtime, standin: TwilioStandIn, address: str
) -> None:
    agent, conversation_id = await conversation(rt, standin, "whatsapp")
    if address != WA_NUMBER:
        async with rt.db.write() as session:
            inbox = await session.get(Inbox, "whatsapp")
            assert inbox is not None
            inbox.address = address
    message_id, _ = await agent_reply(rt, agent, conversation_id, "On WhatsApp too")

    await relay(rt)
    await run_jobs(rt)

    [request] = standin.sent
    assert request.form["To"] == f"whatsapp:{CUSTOMER}"
    assert request.form["From"] == f"whatsapp:{WA_NUMBER}"
    assert request.form["Body"] == "On WhatsApp too"
    assert (await load(rt, message_id)).delivery_status == DeliveryStatus.sent


# -- at most once ---------------------------------------------------------------------------------


async def test_send_job_run_twice_sends_once(rt: Runtime, standin: TwilioStandIn) -> None:
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)

    # Two deliveries of the same job racing, then a late third one.
    await asyncio.gather(*(send_job(rt, {"message_id": message_id}) for _ in range(2)))
    await send_job(rt, {"message_id": message_id})

    assert len(standin.sent) == 1
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.sent
    assert message.provider_message_id in standin.messages
    assert message.send_attempts == 1
    assert await status_events(rt, message_id) == [("sent", None)]


async def test_send_job_enqueued_twice_sends_once(rt: Runtime, standin: TwilioStandIn) -> None:
    """On PostgreSQL: the same message's job twice on rq, run by two real workers at once."""
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)

    for key in (f"send:{message_id}", f"send:{message_id}:again"):
        await rt.jobs.enqueue("outbound.send", {"message_id": message_id}, key=key)
    if isinstance(rt.jobs, InProcessJobs):
        await rt.jobs.drain()
    else:
        assert rt.jobs.queue.count == 2  # type: ignore[attr-defined]
        await asyncio.gather(asyncio.to_thread(run_rq_worker), asyncio.to_thread(run_rq_worker))
        assert rt.jobs.queue.count == 0  # type: ignore[attr-defined]

    assert len(standin.sent) == 1
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.sent
    assert message.send_attempts == 1


async def test_private_note_is_never_sent(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock
) -> None:
    agent, conversation_id = await conversation(rt, standin)
    note_id, _ = await agent_reply(
        rt, agent, conversation_id, "customer sounds upset", private=True
    )

    await settle(rt)
    clock.advance(hours=1)
    assert await sweep(rt) == 0
    await send_job(rt, {"message_id": note_id})  # even asked directly

    assert standin.sent == []
    note = await load(rt, note_id)
    assert note.delivery_status == DeliveryStatus.note
    assert note.send_attempts == 0
    assert await status_events(rt, note_id) == []


async def test_reply_with_known_client_id_is_not_sent_twice(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    agent, conversation_id = await conversation(rt, standin)
    first, created = await agent_reply(rt, agent, conversation_id, "Hello", client_id="c-1")
    await settle(rt)
    again, created_again = await agent_reply(rt, agent, conversation_id, "Hello", client_id="c-1")
    await settle(rt)

    assert created and not created_again
    assert again == first
    assert await outbound_count(rt) == 1
    assert [r.form["Body"] for r in standin.sent] == ["Hello"]


# -- failures and retries -------------------------------------------------------------------------


async def test_transient_failure_is_retried_after_the_backoff(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock
) -> None:
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    standin.fail_next(1, status=500)

    await settle(rt)

    message = await load(rt, message_id)
    assert len(standin.sent) == 1
    assert message.delivery_status == DeliveryStatus.queued
    assert message.status_reason is not None and "500" in message.status_reason
    assert message.next_attempt_at is not None and message.next_attempt_at > clock.now()
    assert message.provider_message_id is None
    reason = message.status_reason
    assert await sweep(rt) == 0  # not due yet

    clock.advance(seconds=60)
    assert await sweep(rt) == 1
    await run_jobs(rt)

    assert len(standin.sent) == 2
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.sent
    assert message.status_reason is None
    assert message.provider_message_id in standin.messages
    assert message.send_attempts == 2
    assert await status_events(rt, message_id) == [("queued", reason), ("sent", None)]


@pytest.mark.parametrize("problem", [False, True], ids=["legacy-error", "problem-details"])
@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        (400, 21211, "The 'To' number +14155550100 is not a valid phone number."),
        (401, 20003, "Authenticate"),
    ],
)
async def test_client_error_fails_at_once(
    rt: Runtime,
    standin: TwilioStandIn,
    clock: ManualClock,
    status: int,
    code: int,
    text: str,
    problem: bool,
) -> None:
    """Either error shape Twilio answers in (the SDK raises TwilioRestException for one and
    TwilioServiceException for the other) ends the message failed, code and text visible."""
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    standin.fail_next(1, status=status, code=code, message=text, problem=problem)

    await settle(rt)
    clock.advance(hours=1)
    assert await sweep(rt) == 0

    assert len(standin.sent) == 1
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.failed
    assert message.status_reason is not None
    assert str(status) in message.status_reason and text in message.status_reason
    assert f"error {code}" in message.status_reason
    assert message.next_attempt_at is None
    assert await status_events(rt, message_id) == [("failed", message.status_reason)]


@pytest.mark.parametrize(
    ("status", "problem"),
    [(503, False), (503, True), (429, False), (429, True)],
    ids=["503", "503-problem-details", "429", "429-problem-details"],
)
async def test_server_errors_and_throttling_are_retried(
    rt: Runtime, standin: TwilioStandIn, status: int, problem: bool
) -> None:
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    standin.fail_next(1, status=status, code=20429 if status == 429 else 20500, problem=problem)

    await send_job(rt, {"message_id": message_id})

    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.queued
    assert message.status_reason is not None and str(status) in message.status_reason
    assert message.next_attempt_at is not None


async def test_unreachable_twilio_is_retried(rt: Runtime, standin: TwilioStandIn) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = closed.getsockname()[1]
    closed.close()
    agent, conversation_id = await conversation(rt, standin)
    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "sms")
        assert inbox is not None
        inbox.api_base_url = f"http://127.0.0.1:{port}"
    message_id, _ = await agent_reply(rt, agent, conversation_id)

    await send_job(rt, {"message_id": message_id})

    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.queued
    assert message.status_reason is not None and "unreachable" in message.status_reason


async def test_a_hung_twilio_request_times_out_and_is_retried(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    """The SDK's async client would wait forever; ours gives up after the inbox's timeout
    (set short here) and the send goes back to the queue instead of outliving its lease."""
    agent, conversation_id = await conversation(rt, standin)
    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "sms")
        assert inbox is not None
        inbox.settings = {"timeout_seconds": 0.5}
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    standin.hold()
    try:
        await send_job(rt, {"message_id": message_id})
    finally:
        standin.release()

    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.queued
    assert message.status_reason is not None and "did not answer" in message.status_reason
    assert len(standin.sent) == 1


async def test_wrong_credentials_fail_at_once(rt: Runtime, standin: TwilioStandIn) -> None:
    agent, conversation_id = await conversation(
        rt, standin, credentials={"account_sid": TWILIO_SID, "auth_token": "stale-token"}
    )
    message_id, _ = await agent_reply(rt, agent, conversation_id)

    await send_job(rt, {"message_id": message_id})

    [request] = standin.requests
    assert request.status == 401 and request.auth == (TWILIO_SID, "stale-token")
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.failed
    assert message.status_reason is not None and "401" in message.status_reason


async def test_repeated_server_errors_fail_after_max_attempts(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock
) -> None:
    attempts = rt.settings.send_max_attempts
    backoff = rt.settings.send_backoff_seconds
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    standin.fail_next(attempts + 5, status=503)
    await send_job(rt, {"message_id": message_id})  # the first attempt, with the test's clock

    for attempt in range(1, attempts):
        message = await load(rt, message_id)
        assert message.delivery_status == DeliveryStatus.queued, attempt
        delay = timedelta(seconds=backoff * 2 ** (attempt - 1))
        assert message.next_attempt_at == clock.now() + delay  # exponential backoff
        clock.advance((delay - timedelta(seconds=0.5)).total_seconds())
        assert await sweep(rt) == 0, "retried before its backoff"
        clock.advance(seconds=0.5)
        assert await sweep(rt) == 1
        await run_swept(rt, message_id)

    assert len(standin.sent) == attempts
    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.failed
    assert message.status_reason is not None and "503" in message.status_reason
    assert message.send_attempts == attempts
    assert message.next_attempt_at is None
    clock.advance(hours=1)
    assert await sweep(rt) == 0
    statuses = [status for status, _ in await status_events(rt, message_id)]
    assert statuses == ["queued"] * (attempts - 1) + ["failed"]


async def test_lost_job_is_enqueued_again_by_the_sweeper(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock
) -> None:
    """A queued message whose job never ran (lost enqueue) is picked up after REDELIVER_AFTER."""
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)

    assert await sweep(rt) == 0
    clock.advance(REDELIVER_AFTER.total_seconds() + 1)
    assert await sweep(rt) == 1
    assert await sweep(rt) == 0  # enqueued once, not on every pass while it waits
    await run_swept(rt, message_id)

    assert len(standin.sent) == 1
    assert (await load(rt, message_id)).delivery_status == DeliveryStatus.sent


# -- a worker dying mid-send ----------------------------------------------------------------------


async def send_in_flight(
    rt: Runtime, standin: TwilioStandIn, message_id: int
) -> asyncio.Task[None]:
    """Start the send job with the stand-in holding its answer; return once Twilio has it."""
    standin.hold()
    task = asyncio.create_task(send_job(rt, {"message_id": message_id}))
    await asyncio.to_thread(standin.wait_for_requests, 1)
    assert (await load(rt, message_id)).delivery_status == DeliveryStatus.sending
    return task


async def test_interrupted_send_is_failed_and_not_sent_again(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock
) -> None:
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    task = await send_in_flight(rt, standin, message_id)
    task.cancel()  # the worker dies: Twilio got the request, nobody records the answer
    with pytest.raises(asyncio.CancelledError):
        await task
    standin.release()

    lease = rt.settings.send_lease_seconds
    clock.advance(seconds=lease - 1)
    assert await sweep(rt) == 0
    assert (await load(rt, message_id)).delivery_status == DeliveryStatus.sending
    clock.advance(seconds=2)
    assert await sweep(rt) == 1

    message = await load(rt, message_id)
    assert message.delivery_status == DeliveryStatus.failed
    assert message.status_reason is not None and "interrupted" in message.status_reason
    assert message.send_claimed_at is None
    # The relay's job for the reply, and later sweeps, must not send it again.
    await settle(rt)
    clock.advance(hours=1)
    assert await sweep(rt) == 0
    assert len(standin.sent) == 1
    assert await status_events(rt, message_id) == [("failed", message.status_reason)]


@pytest.mark.parametrize("late", ["success", "server-error"])
async def test_send_outliving_its_lease_does_not_come_back(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock, late: str
) -> None:
    """A send slower than the lease: the sweeper has told the agent it failed. A late answer
    records the truth (sent, with Twilio's sid) or, on an error, leaves it failed: it is never
    queued again behind the agent's back."""
    agent, conversation_id = await conversation(rt, standin)
    message_id, _ = await agent_reply(rt, agent, conversation_id)
    if late == "server-error":
        standin.fail_next(1, status=500)
    task = await send_in_flight(rt, standin, message_id)
    clock.advance(seconds=rt.settings.send_lease_seconds + 1)
    assert await sweep(rt) == 1
    assert (await load(rt, message_id)).delivery_status == DeliveryStatus.failed

    standin.release()
    await task
    clock.advance(hours=1)
    assert await sweep(rt) == 0
    await settle(rt)

    assert len(standin.sent) == 1
    message = await load(rt, message_id)
    if late == "success":
        assert message.delivery_status == DeliveryStatus.sent
        assert message.provider_message_id in standin.messages
    else:
        assert message.delivery_status == DeliveryStatus.failed
        assert message.status_reason is not None and "interrupted" in message.status_reason
