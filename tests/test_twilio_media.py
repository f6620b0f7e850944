"""MMS / WhatsApp media: the webhook stores the message with its media pending and answers at
once; a job per media item downloads it from Twilio (Basic auth, following Twilio's redirect to
its CDN) into an attachment. Only Twilio's hosts (or the inbox's API host) are ever contacted.
Runs on both backends; on PostgreSQL the jobs run on a real rq worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from channels.twilio_media import (
    MEDIA_MAX_ATTEMPTS,
    enqueue_media,
    mark_media_due,
    media_job,
    sweep,
)
from contact_center.clock import ManualClock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.jobs import RetryJob
from contact_center.models import Attachment, DomainEvent, Message
from contact_center.runtime import Runtime
from tests.helpers import TWILIO_SID, TWILIO_TOKEN, make_inbox, run_jobs
from tests.live import LiveApp, live_app
from tests.standins.twilio import TwilioStandIn, running

PUBLIC_URL = "http://testserver.local"
MESSAGES = "/webhooks/twilio/messages"
SMS_NUMBER = "+15005550006"
CUSTOMER = "+14155550100"
MMS_SID = "MM" + "c" * 32

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x01" * 64
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x02" * 64
PDF = b"%PDF-1.4\n" + b"%" * 64


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


@pytest.fixture
def elsewhere() -> Iterator[TwilioStandIn]:
    """Another server answering Twilio's paths: not the inbox's API host, so never allowed."""
    with running() as server:
        yield server


@pytest.fixture
async def live(rt: Runtime, standin: TwilioStandIn) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    async with live_app(rt) as app:
        yield app


def mms(
    sid: str, urls: list[tuple[str, str]], body: str = "photos of the damage"
) -> dict[str, str]:
    """An inbound MMS webhook's parameters, as Twilio sends them."""
    params = {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": str(len(urls)),
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": SMS_NUMBER,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": CUSTOMER,
        "ApiVersion": "2010-04-01",
    }
    for i, (url, content_type) in enumerate(urls):
        params[f"MediaUrl{i}"] = url
        params[f"MediaContentType{i}"] = content_type
    return params


async def post(live: LiveApp, params: dict[str, str]) -> httpx.Response:
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + MESSAGES, params)
    response = await live.client.post(
        MESSAGES, data=params, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 200, response.text
    return response


async def the_message(rt: Runtime) -> Message:
    async with rt.db.read() as session:
        [message] = (await session.scalars(select(Message))).all()
    return message


async def attachments(rt: Runtime) -> list[Attachment]:
    async with rt.db.read() as session:
        return list((await session.scalars(select(Attachment).order_by(Attachment.id))).all())


async def updated_events(rt: Runtime) -> list[dict[str, Any]]:
    async with rt.db.read() as session:
        rows = await session.scalars(
            select(DomainEvent)
            .where(DomainEvent.type == "message.updated")
            .order_by(DomainEvent.id)
        )
        return [e.payload for e in rows]


def statuses(message: Message) -> list[str]:
    return [item["status"] for item in message.extra["media"]]


async def test_mms_media_are_stored_as_attachments_after_the_webhook_answers(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn
) -> None:
    urls = [
        (standin.add_media(MMS_SID, PNG, "image/png"), "image/png"),
        (standin.add_media(MMS_SID, JPEG, "image/jpeg"), "image/jpeg"),
    ]
    standin.hold()  # Twilio's media servers stall: the webhook must not wait for them
    try:
        await post(live, mms(MMS_SID, urls))
        message = await the_message(rt)
        assert message.text == "photos of the damage"
        assert await attachments(rt) == []
    finally:
        standin.release()

    await run_jobs(rt)

    stored = await attachments(rt)
    assert sorted((a.content_type, rt.store.path(a.storage_key).read_bytes()) for a in stored) == [
        ("image/jpeg", JPEG),
        ("image/png", PNG),
    ]
    assert all(a.message_id == message.id for a in stored)
    message = await the_message(rt)
    assert statuses(message) == ["stored", "stored"]
    assert {item["attachment_id"] for item in message.extra["media"]} == {a.id for a in stored}
    # Each media URL was fetched with the account's credentials, then its CDN redirect followed.
    api = [r for r in standin.media_requests if "/Media/" in r.path]
    cdn = [r for r in standin.media_requests if r.path.startswith("/cdn/")]
    assert len(api) == len(cdn) == 2
    assert {r.auth for r in api} == {(TWILIO_SID, TWILIO_TOKEN)}
    assert {r.status for r in api} == {307}
    assert {r.status for r in cdn} == {200}
    # Live views hear about each attachment; the last event carries both.
    events = await updated_events(rt)
    assert len(events) == 2
    assert all(e["id"] == message.id and e["reason"] == "attachment_added" for e in events)
    assert sorted(a["content_type"] for a in events[-1]["attachments"]) == [
        "image/jpeg",
        "image/png",
    ]


async def test_media_on_a_host_twilio_does_not_own_is_never_fetched(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn, elsewhere: TwilioStandIn
) -> None:
    urls = [
        (elsewhere.add_media(MMS_SID, PNG, "image/png"), "image/png"),
        ("http://127.0.0.1:9/latest/meta-data/iam", "image/png"),  # (a closed port)
        (standin.add_media(MMS_SID, PDF, "application/pdf"), "application/pdf"),
    ]

    await post(live, mms(MMS_SID, urls))
    await run_jobs(rt)

    assert elsewhere.requests == []
    message = await the_message(rt)
    assert statuses(message) == ["download_failed", "download_failed", "stored"]
    first, second, _ = message.extra["media"]
    assert elsewhere.url.removeprefix("http://") in first["reason"]
    assert "127.0.0.1:9" in second["reason"]
    assert [a.content_type for a in await attachments(rt)] == ["application/pdf"]


async def test_media_twilio_no_longer_has_is_recorded_as_failed(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn
) -> None:
    gone = standin.media_url(MMS_SID, "ME" + "0" * 32)

    await post(live, mms(MMS_SID, [(gone, "image/jpeg")]))
    await run_jobs(rt)

    [item] = (await the_message(rt)).extra["media"]
    assert item["status"] == "download_failed"
    assert "404" in item["reason"]
    assert item["attempts"] == 1  # permanent: not tried again
    assert [r.status for r in standin.media_requests] == [404]
    assert await attachments(rt) == []


async def test_running_the_jobs_again_adds_no_second_attachment(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn
) -> None:
    urls = [(standin.add_media(MMS_SID, PNG, "image/png"), "image/png")]
    await post(live, mms(MMS_SID, urls))
    await run_jobs(rt)
    message = await the_message(rt)
    fetches = len(standin.media_requests)

    await media_job(rt, {"message_id": message.id, "index": 0})
    await enqueue_media(rt, message.id)
    await rt.jobs.enqueue(
        "twilio.media", {"message_id": message.id, "index": 0}, key="twilio-media:again"
    )
    await run_jobs(rt)

    assert len(await attachments(rt)) == 1
    assert len(standin.media_requests) == fetches
    assert len(await updated_events(rt)) == 1


async def test_replayed_webhook_stores_the_media_once(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn
) -> None:
    params = mms(MMS_SID, [(standin.add_media(MMS_SID, PNG, "image/png"), "image/png")])

    await post(live, params)
    await post(live, params)  # Twilio retries a webhook it thinks failed
    await run_jobs(rt)
    await post(live, params)
    await run_jobs(rt)

    message = await the_message(rt)
    assert statuses(message) == ["stored"]
    [attachment] = await attachments(rt)
    assert attachment.message_id == message.id
    assert rt.store.path(attachment.storage_key).read_bytes() == PNG


# -- failures, driven one job run at a time -------------------------------------------------------


async def pending_message(rt: Runtime, urls: list[tuple[str, str]]) -> int:
    """An MMS as the webhook stores it, without the webhook (so no job runs on its own)."""
    result = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id="sms",
            provider_message_id=MMS_SID,
            sender=IdentityRef.of("phone", CUSTOMER),
            text="",
            extra={"media": [{"url": u, "content_type": t, "status": "pending"} for u, t in urls]},
        )
    )
    return result.message_id


async def test_transient_failures_are_retried_then_given_up(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    urls = [
        (standin.add_media(MMS_SID, PNG, "image/png"), "image/png"),
        (standin.add_media(MMS_SID, JPEG, "image/jpeg"), "image/jpeg"),
    ]
    message_id = await pending_message(rt, urls)

    standin.media_fail_next(1, status=503)
    with pytest.raises(RetryJob):
        await media_job(rt, {"message_id": message_id, "index": 0})
    assert (await the_message(rt)).extra["media"][0] | {"url": ""} == {
        "url": "",
        "content_type": "image/png",
        "status": "pending",
        "attempts": 1,
        "reason": f"{standin.url.removeprefix('http://')} answered 503",
    }
    await media_job(rt, {"message_id": message_id, "index": 0})
    assert statuses(await the_message(rt)) == ["stored", "pending"]

    standin.media_fail_next(MEDIA_MAX_ATTEMPTS, status=429)
    for _ in range(MEDIA_MAX_ATTEMPTS - 1):
        with pytest.raises(RetryJob):
            await media_job(rt, {"message_id": message_id, "index": 1})
    await media_job(rt, {"message_id": message_id, "index": 1})  # the last try gives up

    message = await the_message(rt)
    assert statuses(message) == ["stored", "download_failed"]
    assert message.extra["media"][1]["attempts"] == MEDIA_MAX_ATTEMPTS
    assert [a.content_type for a in await attachments(rt)] == ["image/png"]


@pytest.mark.parametrize(
    ("data", "content_type", "why"),
    [
        pytest.param(b"\x00" * 4096, "image/png", "limit", id="too-large"),
        pytest.param(
            b"MZ\x90\x00" + b"\x00" * 60,
            "application/x-msdownload",
            "not accepted",
            id="executable",
        ),
    ],
)
async def test_media_the_store_refuses_is_recorded_as_failed(
    rt: Runtime, standin: TwilioStandIn, data: bytes, content_type: str, why: str
) -> None:
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    rt.store.max_bytes = 2048
    message_id = await pending_message(
        rt, [(standin.add_media(MMS_SID, data, content_type), content_type)]
    )

    await media_job(rt, {"message_id": message_id, "index": 0})

    [item] = (await the_message(rt)).extra["media"]
    assert item["status"] == "download_failed"
    assert why in item["reason"]
    assert await attachments(rt) == []


async def test_media_whose_jobs_were_lost_is_fetched_by_the_sweep(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn, clock: ManualClock
) -> None:
    url = standin.add_media(MMS_SID, PNG, "image/png")
    # What the webhook leaves when the process dies after the commit and its jobs are lost:
    # the message with its media pending and a sweep deadline, and no job anywhere.
    result = await rt.ingestor.ingest(
        InboundMessage(
            inbox_id="sms",
            provider_message_id=MMS_SID,
            sender=IdentityRef.of("phone", CUSTOMER),
            text="photo",
            extra={"media": [{"url": url, "content_type": "image/png", "status": "pending"}]},
        )
    )
    await mark_media_due(rt, result.message_id)
    assert await sweep(rt) == 0  # not due yet: the first jobs may still be running

    clock.advance(minutes=11)
    assert await sweep(rt) == 1
    await run_jobs(rt)
    [attachment] = await attachments(rt)
    assert attachment.message_id == result.message_id
    message = await the_message(rt)
    assert message.extra["media"][0]["status"] == "stored"
    assert message.next_attempt_at is None  # done: the sweep forgets it
    fetches = len(standin.media_requests)
    clock.advance(minutes=30)
    assert await sweep(rt) == 0
    await run_jobs(rt)
    assert len(standin.media_requests) == fetches


async def test_the_webhook_gives_media_a_sweep_deadline_that_the_download_clears(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn
) -> None:
    urls = [(standin.add_media(MMS_SID, PNG, "image/png"), "image/png")]
    await post(live, mms(MMS_SID, urls))
    async with rt.db.read() as session:
        due = await session.scalar(select(Message.next_attempt_at))
    assert due is not None
    await run_jobs(rt)
    assert (await the_message(rt)).next_attempt_at is None
