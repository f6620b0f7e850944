"""Jobs: the in-process runner's retry policy and key dedupe; rq jobs run by a real
``contact-center worker`` subprocess; a worker killed mid-send does not send twice."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import sys
import threading
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import pytest
from sqlalchemy import select

from contact_center import jobs as jobs_module
from contact_center.clock import ManualClock, as_utc
from contact_center.jobs import InProcessJobs, JobQueue, RqJobs, get_job, job
from contact_center.models import Agent, DomainEvent, Message, Role
from contact_center.outbound import reply, sweep
from contact_center.runtime import Runtime
from tests.conftest import redis_url, require_services
from tests.helpers import TWILIO_SID, ingest, make_inbox, make_person, relay, run_jobs, sms

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0

# Test jobs (in-process only: an rq worker process would not import this module).
_calls: dict[str, list[tuple[float, object]]] = defaultdict(list)
_gates: dict[str, asyncio.Event] = {}


@job("tests.jobs.flaky")
async def _flaky(rt: Runtime, payload: dict[str, Any]) -> None:
    run = payload["run"]
    _calls[run].append((asyncio.get_running_loop().time(), rt))
    if len(_calls[run]) <= payload["failures"]:
        raise RuntimeError(f"transient failure {len(_calls[run])}")


@job("tests.jobs.gated")
async def _gated(rt: Runtime, payload: dict[str, Any]) -> None:
    run = payload["run"]
    _calls[run].append((asyncio.get_running_loop().time(), rt))
    await _gates[run].wait()


RUNTIME = cast(Runtime, object())  # the runner only hands it to the job


@pytest.fixture
async def runner() -> AsyncIterator[InProcessJobs]:
    jobs = InProcessJobs(RUNTIME)
    try:
        yield jobs
    finally:
        await jobs.close()


async def test_in_process_job_is_retried_with_backoff_until_it_succeeds(
    runner: InProcessJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "BACKOFF", (0.05, 0.1, 0.1))
    run = uuid.uuid4().hex
    await runner.enqueue("tests.jobs.flaky", {"run": run, "failures": 2}, key=run)
    await runner.drain(WAIT)
    calls = _calls[run]
    assert len(calls) == 3  # failed, failed, succeeded
    assert all(rt is RUNTIME for _, rt in calls)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.1 * 0.9  # waited the backoff each time


async def test_in_process_job_gives_up_after_max_tries(
    runner: InProcessJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "BACKOFF", (0.01, 0.01, 0.01))
    run = uuid.uuid4().hex
    await runner.enqueue("tests.jobs.flaky", {"run": run, "failures": 100}, key=run)
    await runner.drain(WAIT)
    assert len(_calls[run]) == jobs_module.MAX_TRIES
    await asyncio.sleep(0.05)
    assert len(_calls[run]) == jobs_module.MAX_TRIES  # and nothing after giving up

    # Giving up frees the key: the same key may be enqueued (and run) again later.
    await runner.enqueue("tests.jobs.flaky", {"run": run, "failures": 100}, key=run)
    await runner.drain(WAIT)
    assert len(_calls[run]) == 2 * jobs_module.MAX_TRIES


async def test_same_key_while_pending_runs_once(runner: InProcessJobs) -> None:
    run, other = uuid.uuid4().hex, uuid.uuid4().hex
    _gates[run] = _gates[other] = asyncio.Event()
    await runner.enqueue("tests.jobs.gated", {"run": run}, key="send:1")
    await runner.enqueue("tests.jobs.gated", {"run": run}, key="send:1")
    await runner.enqueue("tests.jobs.gated", {"run": other}, key="send:2")  # another key runs
    await asyncio.sleep(0.05)
    await runner.enqueue("tests.jobs.gated", {"run": run}, key="send:1")  # still running
    _gates[run].set()
    await runner.drain(WAIT)
    assert len(_calls[run]) == 1
    assert len(_calls[other]) == 1

    # Once finished, the key can run again.
    await runner.enqueue("tests.jobs.gated", {"run": run}, key="send:1")
    await runner.drain(WAIT)
    assert len(_calls[run]) == 2


@pytest.fixture(params=["in-process", "rq"])
async def any_runner(request: pytest.FixtureRequest) -> AsyncIterator[JobQueue]:
    queue: JobQueue
    if request.param == "rq":
        require_services()
        queue = RqJobs(redis_url(), f"test-jobs-{uuid.uuid4().hex}")
    else:
        queue = InProcessJobs(RUNTIME)
    try:
        yield queue
    finally:
        await queue.close()


async def test_unknown_job_name_is_refused_at_enqueue(any_runner: JobQueue) -> None:
    with pytest.raises(LookupError, match=r"no job named 'tests\.jobs\.missing'"):
        await any_runner.enqueue("tests.jobs.missing", {}, key="k")
    if isinstance(any_runner, RqJobs):
        queue = any_runner.queue
        assert await asyncio.to_thread(lambda: queue.count) == 0
    else:
        assert isinstance(any_runner, InProcessJobs)
        run = uuid.uuid4().hex  # the refused enqueue did not take the key
        await any_runner.enqueue("tests.jobs.flaky", {"run": run, "failures": 0}, key="k")
        await any_runner.drain(WAIT)
        assert len(_calls[run]) == 1


# --- rq: a real worker process runs the real outbound.send job ---------------------------------


@dataclass
class TwilioStandIn:
    """Answers Twilio's create-message call; ``hold`` keeps requests waiting until released."""

    hold: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    stand_in = TwilioStandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            parts = self.path.split("/")  # /2010-04-01/Accounts/{sid}/Messages.json
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            form = {k: v[0] for k, v in parse_qs(body).items()}
            stand_in.requests.append(
                {"path": self.path, "form": form, "auth": self.headers.get("authorization")}
            )
            stand_in.arrived.set()
            if stand_in.hold:
                stand_in.release.wait(30)
            if parts[1:3] != ["2010-04-01", "Accounts"] or parts[4:] != ["Messages.json"]:
                self.send_error(404)
                return
            sid = f"SM{len(stand_in.requests):032d}"
            answer = {"sid": sid, "account_sid": parts[3], "status": "queued", **form}
            data = json.dumps(answer).encode()
            try:
                self.send_response(201)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the caller was killed meanwhile

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        stand_in.release.set()
        server.shutdown()
        server.server_close()


async def queue_reply(rt: Runtime, inbox_id: str, phone: str, text: str) -> int:
    """A customer writes in on ``inbox_id``; an agent replies. Returns the queued reply's id."""
    inbound = await ingest(
        rt, sms("Hello?", sid=f"SM-in-{uuid.uuid4().hex}", phone=phone, inbox_id=inbox_id)
    )
    async with rt.db.write() as session:
        agent = await session.scalar(select(Agent).limit(1))
        assert agent is not None
        message, _ = await reply(
            session,
            conversation_id=inbound.conversation_id,
            agent=agent,
            text=text,
            clock=rt.clock,
        )
        return message.id


async def load(rt: Runtime, message_id: int) -> Message:
    async with rt.db.read() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        return message


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_rq_worker_runs_outbound_send(rt: Runtime, twilio: TwilioStandIn) -> None:
    assert isinstance(rt.jobs, RqJobs)
    await make_inbox(rt, "sms", address="+15005550006", api_base_url=twilio.url)
    await make_inbox(rt, "nocreds", address="+15005550007", credentials={})
    await make_person(rt, "agent@test.local", Role.agent, None)
    sent_id = await queue_reply(rt, "sms", "+14155550100", "Your order shipped")
    failed_id = await queue_reply(rt, "nocreds", "+14155550111", "Never leaves")

    await relay(rt)  # enqueues both sends on rq
    assert sorted(await asyncio.to_thread(lambda: rt.jobs.queue.job_ids)) == sorted(  # type: ignore[attr-defined]
        [f"send_{sent_id}", f"send_{failed_id}"]
    )
    await run_jobs(rt)  # a real `contact-center worker --burst`

    sent = await load(rt, sent_id)
    assert sent.delivery_status == "sent"
    assert sent.provider_message_id == "SM" + "1".zfill(32)
    assert sent.send_attempts == 1
    assert len(twilio.requests) == 1
    request = twilio.requests[0]
    assert request["path"] == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert request["form"]["To"] == "+14155550100"
    assert request["form"]["From"] == "+15005550006"
    assert request["form"]["Body"] == "Your order shipped"
    user = base64.b64decode(request["auth"].split()[1]).decode().split(":")[0]
    assert user == TWILIO_SID

    failed = await load(rt, failed_id)
    assert failed.delivery_status == "failed"
    assert "account_sid" in (failed.status_reason or "")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_worker_killed_mid_send_never_sends_twice(
    rt: Runtime, twilio: TwilioStandIn, clock: ManualClock
) -> None:
    """Documented rule (outbound.py): a send interrupted by a dead worker stays ``sending``;
    the sweeper fails it ("interrupted") after the send lease instead of risking a second
    send, and a redelivered job does nothing."""
    twilio.hold = True  # the provider call is in flight when the worker dies
    await make_inbox(rt, "sms", api_base_url=twilio.url)
    await make_person(rt, "agent@test.local", Role.agent, None)
    message_id = await queue_reply(rt, "sms", "+14155550100", "Sending when killed")
    await relay(rt)

    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "contact_center.cli", "worker", "--burst",
        cwd=ROOT, env=os.environ.copy(), start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Worker start-up is the slow part; the bound is generous, not a timing claim.
        assert await asyncio.to_thread(twilio.arrived.wait, 60), "the send never started"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its work horse
        await asyncio.wait_for(worker.wait(), WAIT)
    assert len(twilio.requests) == 1

    message = await load(rt, message_id)
    assert message.delivery_status == "sending"
    assert message.send_attempts == 1

    # A redelivered job (rq's retry of the abandoned job) finds it claimed and does nothing.
    await get_job("outbound.send")(rt, {"message_id": message_id})
    assert (await load(rt, message_id)).delivery_status == "sending"

    # Within the send lease (counted from the worker's claim) the sweeper leaves it alone...
    assert message.send_claimed_at is not None
    lease = timedelta(seconds=rt.settings.send_lease_seconds)
    clock.set(as_utc(message.send_claimed_at) + lease - timedelta(seconds=1))
    assert await sweep(rt) == 0
    assert (await load(rt, message_id)).delivery_status == "sending"

    # ...and fails it once the lease is over.
    clock.set(as_utc(message.send_claimed_at) + lease + timedelta(seconds=1))
    assert await sweep(rt) == 1
    message = await load(rt, message_id)
    assert message.delivery_status == "failed"
    assert "interrupted" in (message.status_reason or "")
    async with rt.db.read() as session:
        last = await session.scalar(select(DomainEvent).order_by(DomainEvent.id.desc()).limit(1))
    assert last is not None and last.type == "message.status"
    assert last.payload["delivery_status"] == "failed"

    await get_job("outbound.send")(rt, {"message_id": message_id})
    assert await sweep(rt) == 0
    assert len(twilio.requests) == 1  # sent at most once
