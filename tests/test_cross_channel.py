"""One customer across channels, over the real transports: SMS and WhatsApp (signed Twilio
webhooks to the served app) from one number are one customer; an email over SMTP and a web chat
whose pre-chat form gives the same address are one customer; the agent sees every message's
channel; once an agent merges the two, the next SMS and the next chat land on the survivor, in
the conversations they were already in."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select, update
from websockets.asyncio.client import connect

from channels.email import serve_smtp
from contact_center.models import Customer, Inbox
from contact_center.runtime import Runtime
from tests.helpers import Org, make_inbox, make_org
from tests.live import LiveApp, live_app
from tests.standins.twilio import TwilioStandIn, running
from tests.test_twilio import SMS_NUMBER, WA_NUMBER, inbound, post, sid_of
from tests.wshelpers import recv, send

PHONE = "+14155550100"
ADDRESS = "ada@example.org"
MESSAGES = "/webhooks/twilio/messages"


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


@pytest.fixture
async def live(rt: Runtime, standin: TwilioStandIn) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    await make_inbox(rt, "whatsapp", "whatsapp", f"whatsapp:{WA_NUMBER}", api_base_url=standin.url)
    await make_inbox(rt, "email", "email", "support@example.com", credentials={})
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    async with rt.db.write() as session:
        await session.execute(
            update(Inbox)
            .where(Inbox.id == "webchat")
            .values(settings={"pre_chat": {"enabled": True, "require_email": True}})
        )
    async with live_app(rt) as app:
        yield app


@pytest.fixture
async def smtp_port(rt: Runtime) -> AsyncIterator[int]:
    server = await serve_smtp(rt, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def smtp_send(port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(msg, to_addrs=["support@example.com"])


def chat_url(live: LiveApp, token: str | None = None) -> str:
    url = live.url.replace("http://", "ws://") + "/ws/chat?inbox=webchat"
    return url + (f"&visitor={token}" if token else "")


async def chat(live: LiveApp, client_id: str, text: str, token: str | None = None) -> Any:
    """A visitor writes; a new visitor fills in the pre-chat form first (as the widget does)."""
    async with connect(chat_url(live, token)) as ws:
        hello = (await recv(ws, "hello"))["data"]
        if not hello["identified"]:
            assert hello["pre_chat"]["enabled"] is True
            await send(ws, "identify", name="Ada Lovelace", email=ADDRESS)
            assert (await recv(ws, "identified"))["data"]["email_linked"] is True
        await send(ws, "message.send", client_id=client_id, text=text)
        ack = (await recv(ws, "message.ack"))["data"]
    return hello["visitor_token"], ack


async def timeline(live: LiveApp, org: Org, customer_id: int) -> list[tuple[str, str]]:
    """(channel, text) of every message of the customer, as the agent's API shows them."""
    headers = org.admin.headers
    listed = await live.client.get(
        "/api/v1/conversations", params={"customer_id": customer_id}, headers=headers
    )
    assert listed.status_code == 200, listed.text
    seen = []
    for conversation in listed.json()["items"]:
        response = await live.client.get(
            f"/api/v1/conversations/{conversation['id']}/messages", headers=headers
        )
        seen += [(m["channel"], m["text"].strip()) for m in response.json()]
    return sorted(seen)


async def customer_of(rt: Runtime, message_id: int) -> int:
    from contact_center.models import Message

    async with rt.db.read() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        return message.customer_id or 0


async def test_sms_whatsapp_email_and_chat_are_two_customers_until_merged(
    rt: Runtime, live: LiveApp, smtp_port: int
) -> None:
    org = await make_org(rt)
    sms = await post(live, MESSAGES, inbound(sid_of(1), "SMS: my bill is wrong"))
    assert sms.status_code == 200, sms.text
    whatsapp = inbound(
        sid_of(2), "WhatsApp: any news?", to=f"whatsapp:{WA_NUMBER}", sender=f"whatsapp:{PHONE}"
    )
    assert (await post(live, MESSAGES, whatsapp)).status_code == 200
    mail = EmailMessage()
    mail["From"] = f"Ada Lovelace <{ADDRESS}>"
    mail["To"] = "support@example.com"
    mail["Subject"] = "Invoice"
    mail["Message-ID"] = "<ada-1@example.org>"
    mail.set_content("Email: see the attached invoice number 77")
    await asyncio.to_thread(smtp_send, smtp_port, mail)
    token, first_chat = await chat(live, "c1", "Chat: hello again")

    async with rt.db.read() as session:
        customers = (
            await session.scalars(
                select(Customer).where(Customer.merged_into_id.is_(None)).order_by(Customer.id)
            )
        ).all()
    assert len(customers) == 2
    phone, email = customers
    assert (phone.phone, email.email) == (PHONE, ADDRESS)
    assert await timeline(live, org, phone.id) == [
        ("sms", "SMS: my bill is wrong"),
        ("whatsapp", "WhatsApp: any news?"),
    ]
    assert await timeline(live, org, email.id) == [
        ("email", "Email: see the attached invoice number 77"),
        ("webchat", "Chat: hello again"),
    ]

    # The agent sees it is the same person and merges the phone customer into the email one.
    merged = await live.client.post(
        "/api/v1/customers/merge",
        json={"source_id": phone.id, "target_id": email.id},
        headers=org.agent.headers,
    )
    assert merged.status_code == 200, merged.text
    kinds = sorted(i["kind"] for i in merged.json()["identities"])
    assert kinds == ["email", "phone", "webchat", "whatsapp"]

    assert (await post(live, MESSAGES, inbound(sid_of(3), "SMS: still wrong"))).status_code == 200
    _, next_chat = await chat(live, "c2", "Chat: and one more thing", token)
    assert next_chat["conversation_id"] == first_chat["conversation_id"]
    assert await customer_of(rt, next_chat["message_id"]) == email.id
    assert await timeline(live, org, email.id) == [
        ("email", "Email: see the attached invoice number 77"),
        ("sms", "SMS: my bill is wrong"),
        ("sms", "SMS: still wrong"),
        ("webchat", "Chat: and one more thing"),
        ("webchat", "Chat: hello again"),
        ("whatsapp", "WhatsApp: any news?"),
    ]
    headers = org.admin.headers
    listed = await live.client.get(
        "/api/v1/conversations", params={"customer_id": email.id}, headers=headers
    )
    # The later SMS continued the SMS conversation (its active key moved with the merge).
    assert sorted(c["channel"] for c in listed.json()["items"]) == [
        "email",
        "sms",
        "webchat",
        "whatsapp",
    ]
