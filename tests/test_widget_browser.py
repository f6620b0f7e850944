"""The chat widget in a real browser (chromium via playwright), embedded in a customer's page on
another origin, against the real app: a visitor writes and the message is stored, an agent's
reply appears, a reload keeps the history without doubles, hostile agent text stays text, and a
closed inbox shows the offline form whose message becomes a conversation, and the pre-chat form
links the visitor's first message to the customer who has that email."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Request, Response, get
from litestar.params import FromQuery
from playwright.async_api import expect
from sqlalchemy import select, update

from contact_center.clock import ManualClock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.models import Agent, Conversation, Customer, CustomerIdentity, Inbox, Message
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from tests.browser import SHOP_HOST, NewPage
from tests.helpers import ingest, make_inbox, make_org
from tests.live import LiveApp, live_app

pytestmark = pytest.mark.browser

ISTANBUL_HOURS = {
    "timezone": "Europe/Istanbul",
    "weekly": {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
}
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@get("/demo/shop", sync_to_thread=False, include_in_schema=False)
def shop_page(request: Request[Any, Any, Any]) -> Response[str]:
    """A customer's web page embedding the widget from the contact center's host."""
    widget = f"http://127.0.0.1:{request.url.port}/widget.js"
    return Response(
        "<!doctype html><meta charset=utf-8><title>Shop</title><h1>Shop</h1>"
        f"<script src='{widget}' data-inbox='webchat' data-title='Chat with us' async></script>",
        media_type="text/html",
    )


IDENTITY_SECRET = "shop-identity-secret-0123456789"


@get("/demo/account", sync_to_thread=False, include_in_schema=False)
def account_page(request: Request[Any, Any, Any], user: FromQuery[str]) -> Response[str]:
    """The shop's page for a signed-in user: the shop's server signs the user's email."""
    widget = f"http://127.0.0.1:{request.url.port}/widget.js"
    email = f"{user}@example.org"
    signed = hmac.new(IDENTITY_SECRET.encode(), email.encode(), hashlib.sha256).hexdigest()
    return Response(
        "<!doctype html><meta charset=utf-8><title>Account</title><h1>Your account</h1>"
        f"<script src='{widget}' data-inbox='webchat' data-title='Chat with us'"
        f" data-user-name='{user.title()}' data-user-email='{email}' data-user-hash='{signed}'"
        " async></script>",
        media_type="text/html",
    )


@pytest.fixture
async def live(rt: Runtime) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    # The scheduler runs in the app, so events reach the widget as in production.
    routes = [shop_page, account_page]
    async with live_app(rt, run_scheduler=True, extra_route_handlers=routes) as app:
        await set_settings(rt, app, {})
        yield app


async def set_settings(rt: Runtime, live: LiveApp, settings: dict[str, Any]) -> None:
    origin = {"allowed_origins": [shop_url(live).rsplit("/demo/", 1)[0]]}
    async with rt.db.write() as session:
        await session.execute(
            update(Inbox).where(Inbox.id == "webchat").values(settings=origin | settings)
        )


def shop_url(live: LiveApp) -> str:
    return live.url.replace("127.0.0.1", SHOP_HOST) + "/demo/shop"


async def open_widget(page: Any, state: str = "open") -> None:
    """Open the chat panel once the widget has heard the server's hello."""
    await expect(page.get_by_test_id("cc-widget")).to_have_attribute("data-state", state)
    await page.get_by_role("button", name="Chat with us").click()


async def agent_reply(rt: Runtime, text: str) -> None:
    org = await make_org(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, org.agent.id)
        conversation_id = await session.scalar(select(Conversation.id))
        assert agent is not None
        assert conversation_id is not None
        await reply(
            session, conversation_id=conversation_id, agent=agent, text=text, clock=rt.clock
        )
    await rt.committed()


async def stored_texts(rt: Runtime) -> list[str]:
    async with rt.db.read() as session:
        return list((await session.scalars(select(Message.text).order_by(Message.id))).all())


async def test_visitor_chats_reply_arrives_and_reload_keeps_history(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    page = await new_page()
    await page.goto(shop_url(live))
    await open_widget(page)
    await page.get_by_label("Message", exact=True).fill("Merhaba, siparişim nerede?")
    await page.get_by_label("Message", exact=True).press("Enter")
    mine = page.locator(".ccw-in[data-id]")  # data-id: acknowledged by the server
    await expect(mine).to_have_count(1)
    assert await stored_texts(rt) == ["Merhaba, siparişim nerede?"]
    message_id = await mine.get_attribute("data-id")

    await agent_reply(rt, "Kargoya verildi, yarın elinizde.")
    await expect(page.locator(".ccw-out .ccw-text")).to_have_text(
        ["Kargoya verildi, yarın elinizde."]
    )

    await page.reload()
    await open_widget(page)
    texts = page.locator(".ccw-msg .ccw-text")
    await expect(texts).to_have_text(
        ["Merhaba, siparişim nerede?", "Kargoya verildi, yarın elinizde."]
    )
    assert await page.locator(".ccw-in").first.get_attribute("data-id") == message_id
    # A new message after the reload: once it is acknowledged, every frame sent before it
    # (history and the resumed backlog) has been handled, and nothing came twice.
    await page.get_by_label("Message", exact=True).fill("Teşekkürler!")
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".ccw-in[data-id]")).to_have_count(2)
    await expect(texts).to_have_text(
        ["Merhaba, siparişim nerede?", "Kargoya verildi, yarın elinizde.", "Teşekkürler!"]
    )
    assert await stored_texts(rt) == [
        "Merhaba, siparişim nerede?",
        "Kargoya verildi, yarın elinizde.",
        "Teşekkürler!",
    ]


async def test_hostile_agent_text_is_shown_as_text(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    page = await new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await page.goto(shop_url(live))
    await open_widget(page)
    await page.get_by_label("Message", exact=True).fill("hi")
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".ccw-in[data-id]")).to_have_count(1)
    await agent_reply(rt, HOSTILE)
    await expect(page.locator(".ccw-out .ccw-text")).to_have_text([HOSTILE])
    # Nothing was parsed as markup, so nothing ran.
    assert (
        await page.locator("[data-testid=cc-widget] img, [data-testid=cc-widget] script").count()
        == 0
    )
    assert await page.evaluate("window.__pwned") is None
    assert dialogs == []


async def test_closed_inbox_shows_the_offline_form_and_its_message_is_stored(
    rt: Runtime, live: LiveApp, new_page: NewPage, clock: ManualClock
) -> None:
    await set_settings(
        rt, live, {"business_hours": ISTANBUL_HOURS, "offline_message": "We are closed now."}
    )
    clock.set(datetime(2026, 6, 1, 17, 0, tzinfo=UTC))  # Monday 20:00 in Istanbul
    # A visitor in Tokyo: Tuesday 09:00 in Istanbul is 15:00 for them.
    page = await new_page(timezone_id="Asia/Tokyo", locale="en-US")
    await page.goto(shop_url(live))
    await open_widget(page, "away")
    offline = page.get_by_test_id("cc-offline")
    await expect(offline).to_be_visible()
    await expect(offline).to_contain_text("We are closed now.")
    await expect(page.get_by_label("Message", exact=True)).to_be_hidden()

    await page.get_by_label("Name").fill("Kenji <b>Sato</b>")
    await page.get_by_label("Email").fill("kenji@b")  # the browser accepts it; we do not
    await page.get_by_label("Your message").fill("Can I change my delivery address?")
    await page.get_by_role("button", name="Send message").click()
    await expect(page.locator(".ccw-status")).to_have_text(
        "email: that email address does not look right"
    )
    assert await stored_texts(rt) == []

    await page.get_by_label("Email").fill("kenji@example.jp")
    await page.get_by_role("button", name="Send message").dblclick()
    done = page.get_by_test_id("cc-offline-done")
    await expect(done).to_contain_text("Thanks, Kenji <b>Sato</b>!")
    back = done.locator("time")
    await expect(back).to_have_attribute("datetime", "2026-06-02T06:00:00+00:00")
    await expect(back).to_contain_text("3:00")
    await expect(back).to_contain_text("PM")
    await expect(back).to_contain_text("Tuesday")
    assert await page.locator("[data-testid=cc-widget] b").count() == 0

    assert await stored_texts(rt) == ["Can I change my delivery address?"]
    async with rt.db.read() as session:
        conversation = await session.scalar(select(Conversation))
        identities = (
            await session.execute(select(CustomerIdentity.kind, CustomerIdentity.address))
        ).all()
    assert conversation is not None
    assert conversation.inbox_id == "webchat"
    assert ("email", "kenji@example.jp") in identities


async def test_pre_chat_form_links_the_first_message_to_the_customer_by_email(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    await make_inbox(rt, "email", "email", "support@shop.test", credentials={})
    owner = await ingest(
        rt,
        InboundMessage(
            inbox_id="email",
            provider_message_id="<ada-1@mail.test>",
            sender=IdentityRef.of("email", "ada@example.org", "Ada Lovelace"),
            text="Where is my order?",
            continuous=False,
        ),
    )
    pre_chat = {"enabled": True, "require_email": True, "message": "Who are we talking to?"}
    await set_settings(rt, live, {"pre_chat": pre_chat})
    page = await new_page()
    await page.goto(shop_url(live))
    await open_widget(page)
    form = page.get_by_test_id("cc-prechat")
    await expect(form).to_be_visible()
    await expect(form).to_contain_text("Who are we talking to?")
    await expect(page.get_by_label("Message", exact=True)).to_be_hidden()

    # The email is required: the browser does not submit the form without it.
    await page.get_by_label("Your name").fill("Ada")
    await page.get_by_role("button", name="Start chat").click()
    email = page.get_by_label("Your email address")
    assert await email.evaluate("e => e.validity.valueMissing") is True
    await expect(form).to_be_visible()

    await email.fill("ada@example.org")
    await page.get_by_role("button", name="Start chat").click()
    await expect(form).to_be_hidden()
    await page.get_by_label("Message", exact=True).fill("Any news on my order?")
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".ccw-in[data-id]")).to_have_count(1)

    async with rt.db.read() as session:
        chat = await session.scalar(select(Message).where(Message.inbox_id == "webchat"))
        visitor = await session.scalar(
            select(CustomerIdentity).where(CustomerIdentity.kind == "webchat")
        )
        customers = (
            await session.scalars(select(Customer.id).where(Customer.merged_into_id.is_(None)))
        ).all()
    assert chat is not None and visitor is not None
    assert chat.text == "Any news on my order?"
    assert chat.customer_id == owner.customer_id
    assert visitor.customer_id == owner.customer_id
    assert visitor.extra == {"email": "ada@example.org", "email_verified": False}
    assert list(customers) == [owner.customer_id]
    # The visitor sees their own chat only, not the customer's email; no form on reload.
    await expect(page.locator(".ccw-msg .ccw-text")).to_have_text(["Any news on my order?"])
    await page.reload()
    await open_widget(page)
    await expect(page.locator(".ccw-msg .ccw-text")).to_have_text(["Any news on my order?"])
    await expect(page.get_by_test_id("cc-prechat")).to_have_count(0)


async def test_signed_in_users_are_verified_and_a_new_user_is_a_new_visitor(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    async with rt.db.write() as session:
        inbox = await session.get(Inbox, "webchat")
        assert inbox is not None
        inbox.credentials = {"identity_secret": IDENTITY_SECRET}
    await set_settings(rt, live, {"pre_chat": {"enabled": True, "require_email": True}})
    page = await new_page()
    account = shop_url(live).replace("/demo/shop", "/demo/account")
    await page.goto(account + "?user=ada")
    await open_widget(page)  # open once the server confirmed Ada: no pre-chat form
    await expect(page.get_by_test_id("cc-prechat")).to_have_count(0)
    await page.get_by_label("Message", exact=True).fill("Ada, signed in")
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".ccw-in[data-id]")).to_have_count(1)

    # Ada signs out and Bob signs in on the same browser: Bob sees nothing of Ada's.
    await page.goto(account + "?user=bob")
    await open_widget(page)
    await expect(page.locator(".ccw-msg")).to_have_count(0)
    await page.get_by_label("Message", exact=True).fill("Bob, signed in")
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".ccw-in[data-id]")).to_have_count(1)
    await expect(page.locator(".ccw-msg .ccw-text")).to_have_text(["Bob, signed in"])

    async with rt.db.read() as session:
        rows = (
            await session.execute(
                select(Message.text, Customer.email, Message.extra)
                .join(Customer, Customer.id == Message.customer_id)
                .order_by(Message.id)
            )
        ).all()
    assert [(text, email, extra["email_verified"]) for text, email, extra in rows] == [
        ("Ada, signed in", "ada@example.org", True),
        ("Bob, signed in", "bob@example.org", True),
    ]
