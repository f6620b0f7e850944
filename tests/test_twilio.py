"""Twilio webhooks over real HTTP: inbound SMS/WhatsApp and delivery status callbacks.

Requests are signed as Twilio signs them: over the configured public URL (CC_PUBLIC_URL +
path), never over the address the app happens to listen on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from contact_center.models import (
    Agent,
    Conversation,
    CustomerIdentity,
    DeliveryStatus,
    DomainEvent,
    Message,
    Role,
)
from contact_center.outbound import reply, send_job
from contact_center.runtime import Runtime
from tests.helpers import TWILIO_SID, TWILIO_TOKEN, make_inbox, make_person
from tests.live import LiveApp, live_app
from tests.standins.twilio import TwilioStandIn, running

PUBLIC_URL = "http://testserver.local"
MESSAGES = "/webhooks/twilio/messages"
STATUS = "/webhooks/twilio/status"
SMS_NUMBER = "+15005550006"
WA_NUMBER = "+15005550007"
CUSTOMER = "+14155550100"


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


@pytest.fixture
async def live(rt: Runtime, standin: TwilioStandIn) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    await make_inbox(rt, "whatsapp", "whatsapp", f"whatsapp:{WA_NUMBER}", api_base_url=standin.url)
    async with live_app(rt) as app:
        yield app


def signature(path: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    return RequestValidator(token).compute_signature(PUBLIC_URL + path, params)


async def post(
    live: LiveApp, path: str, params: dict[str, str], *, sign: str | None = "good"
) -> httpx.Response:
    """Post a form like Twilio; ``sign`` is "good", None (no header) or a literal signature."""
    headers = {}
    if sign == "good":
        headers["X-Twilio-Signature"] = signature(path, params)
    elif sign is not None:
        headers["X-Twilio-Signature"] = sign
    return await live.client.post(path, data=params, headers=headers)


def inbound(
    sid: str, body: str = "Hello, my bill is wrong", *, to: str = SMS_NUMBER, sender: str = CUSTOMER
) -> dict[str, str]:
    """An inbound message webhook's parameters, as Twilio sends them."""
    return {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "94105",
        "SmsSid": sid,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "SAN FRANCISCO",
        "Body": body,
        "FromCountry": "US",
        "To": to,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def status_params(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "SmsSid": sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": CUSTOMER,
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": SMS_NUMBER,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def sid_of(n: int) -> str:
    return f"SM{n:032x}"


async def messages(rt: Runtime) -> list[Message]:
    async with rt.db.read() as session:
        return list((await session.scalars(select(Message).order_by(Message.id))).all())


async def count(rt: Runtime, model: Any) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def identities(rt: Runtime) -> list[tuple[int, str, str]]:
    async with rt.db.read() as session:
        rows = await session.execute(
            select(
                CustomerIdentity.customer_id, CustomerIdentity.kind, CustomerIdentity.address
            ).order_by(CustomerIdentity.id)
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


def assert_twiml(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text.strip().endswith("<Response></Response>")


# -- inbound --------------------------------------------------------------------------------------


async def test_inbound_sms_is_stored_with_the_customer_phone(rt: Runtime, live: LiveApp) -> None:
    response = await post(live, MESSAGES, inbound(sid_of(1), "Hello, my bill is wrong"))

    assert_twiml(response)
    [message] = await messages(rt)
    assert message.inbox_id == "sms"
    assert message.direction == "in"
    assert message.text == "Hello, my bill is wrong"
    assert message.provider_message_id == sid_of(1)
    assert message.delivery_status == DeliveryStatus.received
    assert await identities(rt) == [(message.customer_id, "phone", CUSTOMER)]


async def test_replayed_message_sid_is_stored_once(rt: Runtime, live: LiveApp) -> None:
    params = inbound(sid_of(2))
    first = await post(live, MESSAGES, params)
    again = await post(live, MESSAGES, params)

    assert_twiml(first)
    assert_twiml(again)  # Twilio must hear success, or it retries forever
    assert len(await messages(rt)) == 1
    assert await count(rt, Conversation) == 1


async def test_unknown_extra_parameters_are_signed_and_accepted(rt: Runtime, live: LiveApp) -> None:
    params = inbound(sid_of(3), "new params")
    params |= {"AddOns": '{"status":"successful"}', "MessagingServiceSid": "MG" + "0" * 32}

    assert_twiml(await post(live, MESSAGES, params))
    assert [m.text for m in await messages(rt)] == ["new params"]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param("token", id="signed-with-another-token"),
        pytest.param("body", id="body-changed-after-signing"),
        pytest.param("dropped", id="signed-param-left-out"),
        pytest.param("host", id="signed-over-the-listening-address"),
    ],
)
async def test_bad_signature_is_403_and_stores_nothing(
    rt: Runtime, live: LiveApp, tamper: str
) -> None:
    params = inbound(sid_of(4), "original text")
    if tamper == "token":
        sign = signature(MESSAGES, params, token="not-the-token")
    elif tamper == "host":  # what a validator trusting the Host header would accept
        sign = RequestValidator(TWILIO_TOKEN).compute_signature(live.url + MESSAGES, params)
    else:
        sign = signature(MESSAGES, params)
        if tamper == "body":
            params["Body"] = "forged text"
        else:
            del params["FromCity"]

    response = await post(live, MESSAGES, params, sign=sign)

    assert response.status_code == 403, response.text
    assert await messages(rt) == []
    assert await identities(rt) == []


async def test_missing_signature_is_403(rt: Runtime, live: LiveApp) -> None:
    response = await post(live, MESSAGES, inbound(sid_of(5)), sign=None)

    assert response.status_code == 403, response.text
    assert await messages(rt) == []


@pytest.mark.parametrize("missing", ["From", "MessageSid"])
async def test_malformed_request_is_400(rt: Runtime, live: LiveApp, missing: str) -> None:
    params = inbound(sid_of(6))
    del params[missing]

    response = await post(live, MESSAGES, params)

    assert response.status_code == 400, response.text
    assert await messages(rt) == []
    assert await identities(rt) == []


async def test_unknown_to_number_is_404(rt: Runtime, live: LiveApp) -> None:
    response = await post(live, MESSAGES, inbound(sid_of(7), to="+15005550099"))

    assert response.status_code == 404, response.text
    assert await messages(rt) == []


async def test_whatsapp_lands_in_whatsapp_inbox_and_joins_the_sms_customer(
    rt: Runtime, live: LiveApp
) -> None:
    assert_twiml(await post(live, MESSAGES, inbound(sid_of(8), "by sms")))
    wa = inbound(
        sid_of(9), "by whatsapp", to=f"whatsapp:{WA_NUMBER}", sender=f"whatsapp:{CUSTOMER}"
    )
    wa["ProfileName"] = "Ada"
    assert_twiml(await post(live, MESSAGES, wa))

    by_sms, by_wa = await messages(rt)
    assert (by_sms.inbox_id, by_wa.inbox_id) == ("sms", "whatsapp")
    assert by_wa.text == "by whatsapp"
    assert by_wa.customer_id == by_sms.customer_id
    assert by_wa.conversation_id != by_sms.conversation_id  # one conversation per inbox
    customer = by_sms.customer_id
    assert await identities(rt) == [(customer, "phone", CUSTOMER), (customer, "whatsapp", CUSTOMER)]


async def test_sms_to_the_whatsapp_number_is_not_a_whatsapp_message(
    rt: Runtime, live: LiveApp
) -> None:
    """The inbox is chosen by channel too: plain SMS to the WhatsApp sender has no inbox."""
    response = await post(live, MESSAGES, inbound(sid_of(10), to=WA_NUMBER))

    assert response.status_code == 404, response.text
    assert await messages(rt) == []


# -- status callbacks -----------------------------------------------------------------------------


async def sent_reply(rt: Runtime, standin: TwilioStandIn, live: LiveApp) -> Message:
    """A customer writes in, an agent replies, the reply goes out through the stand-in."""
    person = await make_person(rt, "agent@test.local", Role.agent, None)
    assert_twiml(await post(live, MESSAGES, inbound(sid_of(20))))
    [incoming] = await messages(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, person.id)
        assert agent is not None
        message, _ = await reply(
            session,
            conversation_id=incoming.conversation_id,
            agent=agent,
            text="We fixed it",
            clock=rt.clock,
        )
        message_id = message.id
    await send_job(rt, {"message_id": message_id})
    [request] = standin.sent
    assert request.form["StatusCallback"] == PUBLIC_URL + STATUS
    async with rt.db.read() as session:
        sent = await session.get(Message, message_id)
    assert sent is not None and sent.delivery_status == DeliveryStatus.sent
    [resource] = standin.messages.values()
    assert sent.provider_message_id == resource["sid"]
    return sent


async def reload(rt: Runtime, message: Message) -> Message:
    async with rt.db.read() as session:
        fresh = await session.get(Message, message.id)
    assert fresh is not None
    return fresh


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


async def test_status_moves_forward_only(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    message = await sent_reply(rt, standin, live)
    sid = message.provider_message_id
    assert sid is not None

    assert_twiml(await post(live, STATUS, status_params(sid, "delivered")))
    assert (await reload(rt, message)).delivery_status == DeliveryStatus.delivered

    # Twilio's callbacks race: a late "sent" must not move it back.
    assert_twiml(await post(live, STATUS, status_params(sid, "sent")))
    assert (await reload(rt, message)).delivery_status == DeliveryStatus.delivered
    assert await status_events(rt, message.id) == [("sent", None), ("delivered", None)]


async def test_failed_status_records_the_error_code(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    message = await sent_reply(rt, standin, live)
    assert message.provider_message_id is not None

    params = status_params(message.provider_message_id, "failed", ErrorCode="30006")
    assert_twiml(await post(live, STATUS, params))

    fresh = await reload(rt, message)
    assert fresh.delivery_status == DeliveryStatus.failed
    assert fresh.status_reason is not None and "30006" in fresh.status_reason
    assert (await status_events(rt, message.id))[-1] == ("failed", fresh.status_reason)


async def test_status_callback_with_bad_signature_is_403(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    message = await sent_reply(rt, standin, live)
    assert message.provider_message_id is not None
    params = status_params(message.provider_message_id, "delivered")

    forged = await post(live, STATUS, params, sign=signature(STATUS, params, token="wrong"))
    unsigned = await post(live, STATUS, params, sign=None)

    assert (forged.status_code, unsigned.status_code) == (403, 403)
    assert (await reload(rt, message)).delivery_status == DeliveryStatus.sent
    assert await status_events(rt, message.id) == [("sent", None)]


async def test_status_callback_for_unknown_sid_changes_nothing(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    message = await sent_reply(rt, standin, live)
    events_before = await count(rt, DomainEvent)

    assert_twiml(await post(live, STATUS, status_params(sid_of(999), "failed", ErrorCode="1")))

    fresh = await reload(rt, message)
    assert fresh.delivery_status == DeliveryStatus.sent
    assert fresh.status_reason is None
    assert await count(rt, DomainEvent) == events_before


@pytest.mark.parametrize(
    ("first", "late"),
    [
        ("delivered", "failed"),
        ("delivered", "undelivered"),
        ("delivered", "sent"),
        ("read", "delivered"),
        ("read", "failed"),
    ],
)
async def test_a_later_callback_never_takes_a_status_back(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp, first: str, late: str
) -> None:
    """Twilio cannot un-deliver: whatever arrives after "delivered" (or "read") is ignored."""
    message = await sent_reply(rt, standin, live)
    sid = message.provider_message_id
    assert sid is not None
    assert_twiml(await post(live, STATUS, status_params(sid, first)))

    assert_twiml(await post(live, STATUS, status_params(sid, late, ErrorCode="30005")))

    fresh = await reload(rt, message)
    assert fresh.delivery_status == first
    assert fresh.status_reason is None
    assert await status_events(rt, message.id) == [("sent", None), (first, None)]


async def test_delivery_reported_after_a_failure_wins(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    """Callbacks race; a carrier's "delivered" is the last word on an "undelivered"."""
    message = await sent_reply(rt, standin, live)
    sid = message.provider_message_id
    assert sid is not None

    assert_twiml(await post(live, STATUS, status_params(sid, "undelivered", ErrorCode="30003")))
    assert_twiml(await post(live, STATUS, status_params(sid, "delivered")))

    assert (await reload(rt, message)).delivery_status == DeliveryStatus.delivered
    assert [s for s, _ in await status_events(rt, message.id)] == [
        "sent",
        "undelivered",
        "delivered",
    ]


async def test_body_at_the_limit_is_taken_and_over_it_is_413(rt: Runtime, live: LiveApp) -> None:
    from urllib.parse import urlencode

    from channels.webhooks import WEBHOOK_MAX_BODY

    def padded(sid: str, size: int) -> dict[str, str]:
        params = {**inbound(sid), "Pad": ""}  # unknown extra parameters are accepted
        params["Pad"] = "x" * (size - len(urlencode(params)))
        assert len(urlencode(params)) == size
        return params

    refused = await post(live, MESSAGES, padded(sid_of(1), WEBHOOK_MAX_BODY + 1))
    assert refused.status_code == 413
    assert f"at most {WEBHOOK_MAX_BODY} bytes" in refused.json()["detail"]
    assert await count(rt, Message) == 0
    assert (await post(live, MESSAGES, padded(sid_of(2), WEBHOOK_MAX_BODY))).status_code == 200
    assert await count(rt, Message) == 1
