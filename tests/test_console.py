"""The agent console: sign-in (argon2, throttling, CSRF, session cookie), sign-out that ends the
session and its websockets, and, in real headless Chromium, an agent's shift: sign in, go
available, take an offer for an SMS that came in through the Twilio webhook, reply, and the
reply reaches the Twilio stand-in; a dropped websocket resumes with nothing lost or doubled;
hostile customer text stays text; another team's conversation does not open (by frame or by
link). Also: pending and on hold with the status and channel filters, unread counts that survive
a reload, a bad time zone, the agent's own language and zone, the escalation link, the
customer's profile fields, and Turkish names of statuses, channels and SLA durations."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.async_api import expect
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from contact_center.api.auth import throttle
from contact_center.clock import ManualClock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.models import (
    Agent,
    Conversation,
    CustomerIdentity,
    Message,
    Role,
    Team,
    TeamMember,
)
from contact_center.runtime import Runtime
from tests.browser import ARTIFACTS, NewPage
from tests.helpers import ingest, make_inbox, make_person, run_jobs, sms
from tests.live import LiveApp, live_app
from tests.routing_helpers import make_queue
from tests.standins.twilio import TwilioStandIn, running
from tests.test_twilio import MESSAGES, SMS_NUMBER, inbound, post

PASSWORD = "password-123"  # tests.helpers.make_person's


@pytest.fixture(autouse=True)
def fresh_throttle() -> Iterator[None]:
    """The sign-in throttle counts in memory embedded (and in Redis, flushed per test, with
    the postgres backend): each test starts with a clean slate."""
    throttle._failures.clear()
    yield
    throttle._failures.clear()


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


@pytest.fixture
async def live(
    rt: Runtime, standin: TwilioStandIn, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    await make_queue(rt, is_default=True)
    async with live_app(rt, run_scheduler=True) as app:
        # The browser's Origin is the address served here, not CC_PUBLIC_URL.
        monkeypatch.setattr(rt.settings, "allowed_origins", [app.url])
        yield app


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the form carries a CSRF field"
    return match.group(1)


async def sign_in(live: LiveApp, email: str, password: str = PASSWORD) -> httpx.Response:
    page = await live.client.get("/agent/login")
    assert page.status_code == 200
    return await live.client.post(
        "/agent/login",
        data={"email": email, "password": password, "csrf": csrf_of(page.text)},
    )


async def test_sign_in_sets_a_safe_session_cookie_and_opens_the_console(
    rt: Runtime, live: LiveApp
) -> None:
    await make_person(rt, "ayse@test.local", Role.agent, None)
    assert (await live.client.get("/agent")).headers["location"] == "/agent/login"
    response = await sign_in(live, "Ayse@Test.local")
    assert response.status_code == 303 and response.headers["location"] == "/agent"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("cc_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=" in cookie
    console = await live.client.get("/agent")
    assert console.status_code == 200
    assert 'data-agent-name="Ayse"' in console.text
    assert "script-src 'self'" in console.headers["content-security-policy"]


async def test_wrong_password_forged_form_and_throttling(rt: Runtime, live: LiveApp) -> None:
    await make_person(rt, "throttled@test.local", Role.agent, None)
    wrong = await sign_in(live, "throttled@test.local", "not-it")
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
    assert "cc_session" not in wrong.headers.get("set-cookie", "")
    # A form posted from another site has no matching CSRF value.
    forged = await live.client.post(
        "/agent/login",
        data={"email": "throttled@test.local", "password": PASSWORD, "csrf": "x" * 43},
    )
    assert forged.status_code == 403 and "cc_session" not in forged.headers.get("set-cookie", "")
    for _ in range(9):
        await sign_in(live, "throttled@test.local", "guess")
    blocked = await sign_in(live, "throttled@test.local")  # the right password, too late
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text


async def test_cookie_sessions_need_the_csrf_header_to_change_anything(
    rt: Runtime, live: LiveApp
) -> None:
    await make_person(rt, "csrf@test.local", Role.agent, None)
    await sign_in(live, "csrf@test.local")
    assert (await live.client.get("/api/v1/auth/me")).json()["email"] == "csrf@test.local"
    refused = await live.client.post("/api/v1/auth/logout")
    assert refused.status_code == 403
    token = csrf_of((await live.client.get("/agent")).text)
    done = await live.client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": token})
    assert done.status_code == 200
    assert (await live.client.get("/api/v1/auth/me")).status_code == 401


async def test_sign_out_ends_the_session_and_closes_its_websockets(
    rt: Runtime, live: LiveApp
) -> None:
    await make_person(rt, "out@test.local", Role.agent, None)
    await sign_in(live, "out@test.local")
    session = live.client.cookies["cc_session"]
    ws_url = live.url.replace("http", "ws") + "/ws/agent"
    async with connect(ws_url, additional_headers={"Cookie": f"cc_session={session}"}) as ws:
        hello = await asyncio.wait_for(ws.recv(), 5)
        assert '"hello"' in str(hello)
        token = csrf_of((await live.client.get("/agent")).text)
        out = await live.client.post("/agent/logout", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/agent/login"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(drain_until_closed(ws), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert (await live.client.get("/agent")).headers["location"] == "/agent/login"
    live.client.cookies.set("cc_session", session)  # the old cookie, kept by an attacker
    assert (await live.client.get("/api/v1/auth/me")).status_code == 401


async def test_an_invited_agent_sets_a_password_once_and_is_signed_in(
    rt: Runtime, live: LiveApp, clock: ManualClock
) -> None:
    admin = await make_person(rt, "admin@test.local", Role.admin, None)
    newcomer = await make_person(rt, "new@test.local", Role.agent, None)
    bearer = {"Authorization": f"Bearer {admin.token}"}
    made = await live.client.post(f"/api/v1/agents/{newcomer.id}/invite", headers=bearer)
    assert made.status_code == 201
    path = made.json()["url"].removeprefix(rt.settings.public_url)
    secret = path.rsplit("/", 1)[1]
    # The link's secret is no API token.
    me = await live.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 401

    page = await live.client.get(path)
    assert page.status_code == 200 and "new@test.local" in page.text
    form = {"csrf": csrf_of(page.text), "password": "short", "confirm": "short"}
    assert (await live.client.post(path, data=form)).status_code == 400
    form |= {"password": "a-long-new-password", "confirm": "a-long-new-passwor"}
    differ = await live.client.post(path, data=form)
    assert differ.status_code == 400 and "differ" in differ.text
    form |= {"confirm": "a-long-new-password"}
    done = await live.client.post(path, data=form)
    assert done.status_code == 303 and done.headers["location"] == "/agent"
    assert (await live.client.get("/agent")).status_code == 200  # signed in
    assert (await live.client.post(path, data=form)).status_code == 404  # once only
    live.client.cookies.clear()
    assert (await sign_in(live, "new@test.local", "a-long-new-password")).status_code == 303

    # A newer invite ends the older one; an invite expires after 72 hours.
    older = (await live.client.post(f"/api/v1/agents/{newcomer.id}/invite", headers=bearer)).json()
    newer = (await live.client.post(f"/api/v1/agents/{newcomer.id}/invite", headers=bearer)).json()
    older_path = older["url"].removeprefix(rt.settings.public_url)
    assert (await live.client.get(older_path)).status_code == 404
    newer_path = newer["url"].removeprefix(rt.settings.public_url)
    assert (await live.client.get(newer_path)).status_code == 200
    clock.advance(seconds=72 * 3600 + 1)
    assert (await live.client.get(newer_path)).status_code == 404


async def drain_until_closed(ws: Any) -> None:
    while True:
        await ws.recv()


HOSTILE = '<img src=x onerror="window.__pwned=1">Merhaba, faturam yanlış'


async def sent_texts(rt: Runtime, standin: TwilioStandIn) -> list[str]:
    for _ in range(20):
        await run_jobs(rt)
        if standin.sent:
            break
        await asyncio.sleep(0.2)
    return [request.form["Body"] for request in standin.sent]


@pytest.mark.browser
async def test_an_agent_takes_an_sms_offer_and_the_reply_reaches_twilio(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn, new_page: NewPage
) -> None:
    person = await make_person(rt, "shift@test.local", Role.agent, None)
    page = await new_page(viewport={"width": 1366, "height": 768})
    await page.goto(live.url + "/agent")
    await page.get_by_label("Email").fill("shift@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")
    await page.get_by_label("Presence").select_option("available")
    await expect(page.get_by_label("Presence")).to_have_value("available")

    # A customer texts in; the webhook is signed as Twilio signs it.
    response = await post(live, MESSAGES, inbound("SM" + "1" * 32, HOSTILE))
    assert response.status_code == 200
    offer = page.locator(".offer")
    await expect(offer).to_have_count(1)
    await page.reload()  # a reload still shows what waits for the agent
    await expect(offer).to_have_count(1)
    await expect(offer.locator(".preview")).to_have_text(HOSTILE)  # shown as text
    await expect(offer.locator(".countdown")).to_have_text(re.compile(r"^\d+s$"))
    await offer.get_by_role("button", name="Accept").click()
    await expect(offer).to_have_count(0)
    item = page.locator(".conversation-item")
    await expect(item).to_have_count(1)
    timeline = page.locator("#timeline .msg")
    await expect(timeline).to_have_count(1)
    await expect(timeline.first.locator(".text")).to_have_text(HOSTILE)
    assert await page.evaluate("window.__pwned") is None

    await page.get_by_label("Reply").fill("Merhaba! Faturanıza hemen bakıyorum.")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#timeline .msg.out .text")).to_have_text(
        ["Merhaba! Faturanıza hemen bakıyorum."]
    )
    assert await sent_texts(rt, standin) == ["Merhaba! Faturanıza hemen bakıyorum."]

    # An internal note stays inside and looks different.
    await page.get_by_label("Internal note").check()
    await page.get_by_label("Reply").fill("Customer was double-charged, see invoice 42")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#timeline .msg.note .text")).to_have_text(
        ["Customer was double-charged, see invoice 42"]
    )

    # The websocket drops; while it is down the customer writes twice. After the resume
    # both arrive once, in order.
    await page.evaluate("window.ccConsole.socket.close(4000)")
    await expect(page.locator("#link")).not_to_have_attribute("data-state", "open")
    for n, text in enumerate(["Are you there?", "Hello?"]):
        await post(live, MESSAGES, inbound(f"SM{n:032d}", text))
    await expect(page.locator("#link")).to_have_attribute("data-state", "open", timeout=15000)
    await expect(page.locator("#timeline .msg.in .text")).to_have_text(
        [HOSTILE, "Are you there?", "Hello?"]
    )
    await page.wait_for_timeout(500)
    await expect(page.locator("#timeline .msg.in .text")).to_have_count(3)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console.png"))
    async with rt.db.read() as session:
        texts = (
            await session.scalars(
                select(Message.text).where(Message.agent_id == person.id).order_by(Message.id)
            )
        ).all()
    assert texts == [
        "Merhaba! Faturanıza hemen bakıyorum.",
        "Customer was double-charged, see invoice 42",
    ]
    assert len(standin.sent) == 1  # the note never left


@pytest.mark.browser
async def test_an_agent_cannot_open_another_teams_conversation(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    async with rt.db.write() as session:
        billing = Team(name="Billing", description="", created_at=rt.clock.now())
        technical = Team(name="Technical", description="", created_at=rt.clock.now())
        session.add_all([billing, technical])
        await session.flush()
        team_ids = billing.id, technical.id
    person = await make_person(rt, "billing@test.local", Role.agent, team_ids[0])
    await post(live, MESSAGES, inbound("SM" + "7" * 32, "secret technical matter"))
    async with rt.db.write() as session:
        conversation = await session.scalar(select(Conversation))
        assert conversation is not None
        conversation.team_id = team_ids[1]
        conversation_id = conversation.id
        assert await session.scalar(select(TeamMember).where(TeamMember.agent_id == person.id))

    page = await new_page()
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("billing@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")
    status: Any = await page.evaluate(
        f"fetch('/api/v1/conversations/{conversation_id}').then(r => r.status)"
    )
    assert status in (403, 404)
    # A forged frame is answered with an error (awaited: the server has decided) and stores
    # nothing.
    error: Any = await page.evaluate(
        """([id]) => new Promise((resolve) => {
            const ws = window.ccConsole.socket;
            ws.addEventListener("message", (e) => {
              const frame = JSON.parse(e.data);
              if (frame.type === "error" && frame.data.for === "message.send") resolve(frame.data);
            });
            ws.send(JSON.stringify({type: "message.send",
              data: {conversation_id: id, client_id: "x1", text: "hi"}}));
          })""",
        [conversation_id],
    )
    assert error["code"] == "forbidden"
    async with rt.db.read() as session:
        stored = (await session.scalars(select(Message.text))).all()
    assert "hi" not in stored

    # Opened by its link (/agent#conversation-N), the page refuses: no timeline, no reply box.
    await page.goto(f"{live.url}/agent#conversation-{conversation_id}")
    await expect(page.locator("#conv-title")).to_have_text("This conversation cannot be opened.")
    await expect(page.locator("#conversation")).to_have_attribute("data-refused", "true")
    await expect(page.get_by_label("Reply", exact=True)).to_be_hidden()
    await expect(page.locator("#timeline .msg")).to_have_count(0)
    assert "secret technical matter" not in await page.content()


@pytest.mark.browser
async def test_a_turkish_agent_sees_turkish_and_times_in_their_time_zone(
    rt: Runtime, live: LiveApp, clock: ManualClock, new_page: NewPage
) -> None:
    from routing.models import SlaPolicy
    from tests.test_sla import sla_pass

    person = await make_person(rt, "elif@test.local", Role.agent, None)
    # An earlier conversation, late on the 22nd in UTC: the 23rd in Istanbul.
    clock.set(datetime(2026, 11, 22, 22, 30, tzinfo=UTC))
    earlier = await ingest(rt, sms("Eski sorun", sid="SM-tr-0"))
    async with rt.db.write() as session:
        old = await session.get(Conversation, earlier.conversation_id)
        assert old is not None
        old.status, old.active_key = "resolved", None
        session.add(
            SlaPolicy(
                name="Chat",
                targets={"normal": {"first_response": {"minutes": 90, "business": False}}},
                conditions={},
                escalations=[],
                created_at=clock.now(),
                updated_at=clock.now(),
            )
        )
    clock.set(datetime(2026, 11, 23, 9, 5, tzinfo=UTC))  # 12:05 in Istanbul (UTC+3)
    result = await ingest(rt, sms("Merhaba", sid="SM-tr-1"))
    await sla_pass(rt)
    async with rt.db.write() as session:
        agent = await session.get(Agent, person.id)
        conversation = await session.get(Conversation, result.conversation_id)
        assert agent is not None and conversation is not None
        agent.locale, agent.timezone = "tr", "Europe/Istanbul"
        conversation.assignee_id = person.id

    page = await new_page(locale="en-US")
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("elif@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("html")).to_have_attribute("lang", "tr")
    await expect(page.locator("#link")).to_have_text("canlı")
    await expect(page.get_by_role("heading", name="Konuşmalarım")).to_be_visible()
    await expect(page.locator("#presence option[value=available]")).to_have_text("Müsait")
    await page.locator(".conversation-item").click()
    await expect(page.locator("#timeline .msg time")).to_have_text("12:05")
    await expect(page.get_by_role("button", name="Gönder")).to_be_visible()
    # Statuses, channels, SLA durations and dates in Turkish and in the agent's zone.
    await expect(page.locator("#conv-status")).to_have_text("Açık")
    await expect(page.locator("#conv-sla .due")).to_have_text(
        "İlk yanıt için kalan süre 1 sa 30 dk"
    )
    await expect(page.locator("#history li")).to_have_text(
        [
            f"SMS #{result.conversation_id} · Açık · 23 Kas 2026",
            f"SMS #{earlier.conversation_id} · Çözüldü · 23 Kas 2026",
        ]
    )
    await page.get_by_label("Yanıt", exact=True).fill("Hemen bakıyorum.")
    await page.get_by_role("button", name="Gönder").click()
    sent = page.locator("#timeline .msg.out .status")
    await expect(sent).to_have_text(re.compile("^(sırada|gönderiliyor|gönderildi|teslim edildi)$"))


@pytest.mark.browser
async def test_resolve_reopen_and_transfer_to_a_queue_with_a_note(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    person = await make_person(rt, "actions@test.local", Role.agent, None)
    escalations = await make_queue(rt, "Escalations")
    result = await ingest(rt, sms("My order never came", sid="SM-act-1"))
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, result.conversation_id)
        assert conversation is not None
        conversation.assignee_id = person.id

    async def status() -> tuple[str, int | None]:
        async with rt.db.read() as session:
            row = await session.get(Conversation, result.conversation_id, populate_existing=True)
            assert row is not None
            return row.status, row.assignee_id

    page = await new_page()
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("actions@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    mine = page.locator("#conversations .conversation-item")
    await mine.click()
    await expect(page.locator("#timeline .msg .text")).to_have_text(["My order never came"])

    await page.keyboard.press("Alt+r")  # the shortcut for Resolve
    await expect(page.get_by_role("button", name="Reopen")).to_be_visible()
    await expect(mine).to_have_count(0)
    assert (await status())[0] == "resolved"
    await page.get_by_role("button", name="Reopen").click()
    await expect(page.get_by_role("button", name="Resolve")).to_be_visible()
    await expect(mine).to_have_count(1)
    assert await status() == ("open", person.id)

    await page.get_by_role("button", name="Transfer").click()
    await page.get_by_label("Queue", exact=True).select_option(label="Escalations")
    await page.get_by_label("Note for the next agent (optional)").fill("Courier lost it, refund?")
    await page.locator("#transfer").get_by_role("button", name="Transfer").click()
    # Off the agent's own list; unassigned and open, it now waits in the queue (which this
    # agent may see: the conversation has no team).
    await expect(mine).to_have_count(0)
    await expect(page.locator("#waiting .conversation-item")).to_have_count(1)
    # Named by its customer, as everywhere in the lists (the event names only the id).
    await expect(page.locator("#waiting .conversation-item .name")).to_have_text("+14155550100")
    await expect(page.locator("#conversation")).to_be_hidden()
    assert (await status())[1] is None
    async with rt.db.read() as session:
        notes = (
            await session.scalars(
                select(Message.text).where(
                    Message.conversation_id == result.conversation_id, Message.private.is_(True)
                )
            )
        ).all()
        from routing.models import RoutingTask

        task = await session.scalar(
            select(RoutingTask).where(RoutingTask.active_conversation_id == result.conversation_id)
        )
    assert any("Courier lost it, refund?" in note for note in notes)
    assert task is not None and task.queue_id == escalations


@pytest.mark.browser
async def test_the_customer_panel_shows_every_channel_and_past_conversations_and_saves_edits(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    person = await make_person(rt, "panel@test.local", Role.agent, None)
    await make_inbox(rt, "email", "email", "support@test.local")
    earlier = await ingest(rt, sms("First problem", sid="SM-panel-1"))
    async with rt.db.write() as session:
        old = await session.get(Conversation, earlier.conversation_id)
        assert old is not None
        old.status, old.active_key = "resolved", None
    now = await ingest(rt, sms("Second problem", sid="SM-panel-2"))
    assert now.conversation_id != earlier.conversation_id
    admin = await make_person(rt, "panel-admin@test.local", Role.admin, None)
    bearer = {"Authorization": f"Bearer {admin.token}"}
    added = await live.client.post(
        f"/api/v1/customers/{now.customer_id}/identities",
        json={"kind": "email", "address": "Deniz@Example.com"},
        headers=bearer,
    )
    assert added.status_code in (200, 201), added.text
    async with rt.db.write() as session:
        # A web chat visitor linked to the customer by an unverified pre-chat email.
        session.add(
            CustomerIdentity(
                customer_id=now.customer_id,
                kind="webchat",
                address="v1",
                extra={"email": "deniz@example.com", "email_verified": False},
                created_at=rt.clock.now(),
            )
        )
        from contact_center.models import Customer

        current = await session.get(Conversation, now.conversation_id)
        assert current is not None
        current.assignee_id = person.id
        profile = await session.get(Customer, now.customer_id)
        assert profile is not None
        profile.attributes = {"plan": "Pro", "seats": 5, "since": "2020", "tags": ["a", "b"]}

    page = await new_page(viewport={"width": 1366, "height": 768})
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("panel@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator(".conversation-item").click()
    panel = page.locator("#customer")
    await expect(panel).to_be_visible()
    await expect(panel.locator("#identities li")).to_have_text(
        [
            "Phone +14155550100",
            "Email deniz@example.com",
            "Web chat v1 unverified email deniz@example.com",
        ],
        ignore_case=True,
    )
    await expect(panel.locator("#history li")).to_have_count(2)
    await panel.locator(f'#history li[data-conversation-id="{earlier.conversation_id}"]').click()
    await expect(page.locator("#timeline .msg .text")).to_have_text(["First problem"])

    # Profile fields: text and numbers edit in place, an emptied one goes, a new one is added;
    # a list from an integration is shown and kept.
    await expect(panel.get_by_label("plan", exact=True)).to_have_value("Pro")
    await expect(panel.locator("#attributes .fixed")).to_have_text('["a","b"]')
    await panel.get_by_label("plan", exact=True).fill("Enterprise")
    await panel.get_by_label("seats", exact=True).fill("7")
    await panel.get_by_label("since", exact=True).fill("")
    await panel.get_by_label("New field: key").fill("company")
    await panel.get_by_label("New field: value").fill("<b>Acme</b>")
    await panel.get_by_label("Name").fill("Deniz <b>Kaya</b>")
    await panel.get_by_role("button", name="Save").click()
    await expect(panel.locator("#profile-saved")).to_be_visible()
    await expect(page.locator("#conv-title")).to_have_text("Deniz <b>Kaya</b>")
    await expect(panel.get_by_label("company", exact=True)).to_have_value("<b>Acme</b>")
    async with rt.db.read() as session:
        customer = await session.get(Customer, now.customer_id, populate_existing=True)
    assert customer is not None and customer.name == "Deniz <b>Kaya</b>"
    assert customer.attributes == {
        "plan": "Enterprise",
        "seats": 7,
        "tags": ["a", "b"],
        "company": "<b>Acme</b>",
    }
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-customer.png"))
    # On a tablet held upright the columns stack: nothing is cut off sideways.
    await page.set_viewport_size({"width": 820, "height": 1180})
    await expect(page.get_by_label("Reply")).to_be_visible()
    await expect(panel).to_be_visible()
    overflow = await page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    await page.screenshot(path=str(ARTIFACTS / "console-tablet.png"), full_page=True)


@pytest.mark.browser
async def test_the_queue_view_filters_and_a_visitor_typing_shows_live(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    from tests.wshelpers import recv, send

    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    await make_person(rt, "queue@test.local", Role.agent, None)
    page = await new_page()
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("queue@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")

    chat_url = live.url.replace("http://", "ws://") + "/ws/chat?inbox=webchat"
    async with connect(chat_url) as visitor:
        await recv(visitor, "hello")
        await send(visitor, "message.send", client_id="v1", text="Is anyone there?")
        conversation_id = (await recv(visitor, "message.ack"))["data"]["conversation_id"]
        waiting = page.locator("#waiting .conversation-item")
        await expect(waiting).to_have_count(1)  # arrived live, unassigned
        await page.get_by_label("Channel").select_option("sms")
        await expect(waiting).to_be_hidden()
        await page.get_by_label("Channel").select_option("")
        await expect(waiting).to_be_visible()
        await waiting.click()
        await expect(page.locator("#timeline .msg .text")).to_have_text(["Is anyone there?"])

        await send(visitor, "typing", typing=True)
        await expect(page.get_by_text("The customer is typing…")).to_be_visible()
        await page.get_by_label("Reply").press_sequentially("Hi")
        typing = await recv(visitor, "typing")
        assert typing["data"]["typing"] is True and typing["data"]["from"] == "agent"
        assert typing["data"]["conversation_id"] == conversation_id


@pytest.mark.browser
async def test_a_canned_response_is_filled_in_and_reaches_the_customer(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn, new_page: NewPage
) -> None:
    from contact_center.models import CannedResponse, Customer

    person = await make_person(rt, "canned@test.local", Role.agent, None)
    result = await ingest(rt, sms("Hi", sid="SM-canned-1"))
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, result.conversation_id)
        customer = await session.get(Customer, result.customer_id)
        assert conversation is not None and customer is not None
        conversation.assignee_id = person.id
        customer.name = "Deniz"
        now = rt.clock.now()
        session.add_all(
            [
                CannedResponse(
                    title="Greeting",
                    shortcut="hello",
                    body="Hello {{customer.name}}, this is {{agent.name}} (#{{conversation.id}}).",
                    created_at=now,
                    updated_at=now,
                ),
                CannedResponse(
                    title="Bye",
                    shortcut="bye",
                    body="Bye {{ customer.name }}!",
                    created_at=now,
                    updated_at=now,
                ),
            ]
        )

    page = await new_page()
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("canned@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator(".conversation-item").click()
    await expect(page.locator("#customer")).to_be_visible()
    reply = page.get_by_label("Reply")
    await page.get_by_label("Canned response", exact=True).select_option("hello")
    expected = f"Hello Deniz, this is Canned (#{result.conversation_id})."
    await expect(reply).to_have_value(expected)
    await reply.fill("")
    await reply.press_sequentially("Thanks. /bye")
    await reply.press("Tab")
    await expect(reply).to_have_value("Thanks. Bye Deniz!")
    await reply.fill(expected)
    await page.get_by_role("button", name="Send").click()
    assert await sent_texts(rt, standin) == [expected]


@pytest.mark.browser
async def test_merging_the_customer_into_another_brings_their_channels_together(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    person = await make_person(rt, "merge@test.local", Role.agent, None)
    other = await ingest(rt, sms("From my work phone", sid="SM-m-1", phone="+14155550199"))
    mine = await ingest(rt, sms("From my own phone", sid="SM-m-2"))
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, mine.conversation_id)
        assert conversation is not None
        conversation.assignee_id = person.id

    page = await new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("merge@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#conversations .conversation-item").click()
    identities = page.locator("#identities li")
    await expect(identities).to_have_text(["Phone +14155550100"])  # the kind by its name
    await page.get_by_label("Merge into customer #").fill(str(other.customer_id))
    await page.get_by_role("button", name="Merge", exact=True).click()
    await expect(identities).to_have_count(2)
    await expect(page.locator("#history li")).to_have_count(2)
    async with rt.db.read() as session:
        moved = await session.get(Conversation, mine.conversation_id, populate_existing=True)
    assert moved is not None and moved.customer_id == other.customer_id


@pytest.mark.browser
async def test_the_sla_countdown_shows_and_a_breach_alerts_the_agent_live(
    rt: Runtime, live: LiveApp, new_page: NewPage, clock: ManualClock
) -> None:
    from routing.models import SlaPolicy

    person = await make_person(rt, "sla@test.local", Role.agent, None)
    now = clock.now()
    async with rt.db.write() as session:
        session.add(
            SlaPolicy(
                name="Chat",
                targets={"normal": {"first_response": {"minutes": 30, "business": False}}},
                conditions={},
                escalations=[],
                created_at=now,
                updated_at=now,
            )
        )
    result = await ingest(rt, sms("Is anyone there?", sid="SM-sla-1"))
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, result.conversation_id)
        assert conversation is not None
        conversation.assignee_id = person.id

    page = await new_page()
    await page.goto(live.url + "/agent/login")
    await page.get_by_label("Email").fill("sla@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator(".conversation-item").click()
    # The scheduler in the live app starts the clock within a second; reopening re-reads it.
    due = page.locator("#conv-sla .due")
    for _ in range(20):
        if await due.count():
            break
        await asyncio.sleep(0.25)
        await page.locator(".conversation-item").click()
    await expect(due).to_have_text(re.compile(r"First response due in (30|29) min"))

    clock.advance(31 * 60)  # the scheduler's tick sees the deadline pass
    alert = page.locator("#alerts .alert")
    await expect(alert).to_have_text(
        f"SLA breached: First response, conversation #{result.conversation_id}"
    )
    await expect(page.locator(".conversation-item .sla-flag")).to_have_text("SLA")
    await expect(due).to_have_text("First response overdue by 1 min")
    await page.screenshot(path=str(ARTIFACTS / "console-sla.png"))


@pytest.mark.browser
async def test_an_agent_answers_an_sms_by_email_when_the_customer_has_an_address(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    from aiosmtpd.smtp import SMTP

    from contact_center.models import CustomerIdentity

    received: list[tuple[list[str], bytes]] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
            return "250 OK"

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink(), loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await make_inbox(
            rt,
            "email",
            "email",
            "support@example.com",
            credentials={"smtp_host": "127.0.0.1", "smtp_port": str(port)},
        )
        person = await make_person(rt, "via@test.local", Role.agent, None)
        result = await ingest(rt, sms("Send me the invoice by mail please", sid="SM-via-1"))
        async with rt.db.write() as session:
            conversation = await session.get(Conversation, result.conversation_id)
            assert conversation is not None
            conversation.assignee_id = person.id
            session.add(
                CustomerIdentity(
                    customer_id=result.customer_id,
                    kind="email",
                    address="can@example.org",
                    created_at=rt.clock.now(),
                )
            )

        page = await new_page()
        await page.goto(live.url + "/agent/login")
        await page.get_by_label("Email").fill("via@test.local")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.locator("#conversations .conversation-item").click()
        via = page.get_by_label("Send via")
        await expect(via).to_be_visible()
        await via.select_option(label="Email (Email: can@example.org)")
        await page.get_by_label("Reply", exact=True).fill("The invoice is attached to this mail.")
        await page.get_by_role("button", name="Send").click()
        sent = page.locator("#timeline .msg").filter(has_text="The invoice is attached")
        await expect(sent.locator(".channel")).to_have_text("Email")  # its channel, by name
        for _ in range(25):
            await run_jobs(rt)
            if received:
                break
            await asyncio.sleep(0.2)
        assert [to for to, _ in received] == [["can@example.org"]]
        assert b"The invoice is attached to this mail." in received[0][1]
        async with rt.db.read() as session:
            message = await session.scalar(
                select(Message).where(
                    Message.conversation_id == result.conversation_id,
                    Message.direction == "out",
                )
            )
        assert message is not None and message.inbox_id == "email"
        assert message.to_address == "can@example.org"
    finally:
        server.close()


async def browser_sign_in(page: Any, live: LiveApp, email: str, path: str = "/agent") -> None:
    await page.goto(live.url + path)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")


async def assigned(rt: Runtime, agent_id: int, text: str, sid: str, **kw: Any) -> int:
    result = await ingest(rt, sms(text, sid=sid, **kw))
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, result.conversation_id)
        assert conversation is not None
        conversation.assignee_id = agent_id
    return result.conversation_id


@pytest.mark.browser
async def test_an_agent_puts_a_case_on_hold_and_finds_it_under_its_status_filter(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    from routing.models import SlaPolicy
    from tests.test_sla import sla_pass

    person = await make_person(rt, "hold@test.local", Role.agent, None)
    now = rt.clock.now()
    async with rt.db.write() as session:
        session.add(
            SlaPolicy(
                name="Chat",
                targets={"normal": {"first_response": {"minutes": 30, "business": False}}},
                conditions={},
                escalations=[],
                created_at=now,
                updated_at=now,
            )
        )
    waiting = await assigned(rt, person.id, "Which size do I need?", "SM-hold-1")
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    chat = await ingest(
        rt,
        InboundMessage(
            inbox_id="webchat",
            provider_message_id="wc-hold-1",
            sender=IdentityRef.of("webchat", "visitor-hold"),
            text="hi from the site",
        ),
    )
    async with rt.db.write() as session:
        row = await session.get(Conversation, chat.conversation_id)
        assert row is not None
        row.assignee_id = person.id
    await sla_pass(rt)

    page = await new_page(viewport={"width": 1366, "height": 768})
    await browser_sign_in(page, live, "hold@test.local")
    mine = page.locator("#conversations .conversation-item:visible")
    await expect(mine).to_have_count(2)
    # The channel filter of My conversations.
    await page.get_by_label("Show conversations on").select_option("webchat")
    await expect(mine).to_have_count(1)
    await expect(mine.locator(".channel")).to_have_text("Web chat")
    await page.get_by_label("Show conversations on").select_option("")
    await expect(mine).to_have_count(2)

    await page.locator(f'#conversations [data-conversation-id="{waiting}"]').click()
    await expect(page.locator("#conv-sla .due")).to_have_text(re.compile("First response due in"))
    await page.get_by_role("button", name="Pending", exact=True).click()
    await expect(page.locator("#conv-status")).to_have_text("Pending")
    await expect(page.get_by_role("button", name="Reopen")).to_be_visible()
    item = page.locator(f'#conversations [data-conversation-id="{waiting}"]')
    await expect(item.locator(".status-tag")).to_have_text("Pending")  # still listed
    async with rt.db.read() as session:
        row = await session.get(Conversation, waiting, populate_existing=True)
        assert row is not None and row.status == "pending"
    await sla_pass(rt)  # what the scheduler does within a second
    await item.click()
    await expect(page.locator("#conv-sla .due")).to_have_text("First response paused")

    status = page.get_by_label("Show conversations that are")
    await status.select_option("open")
    await expect(mine).to_have_count(1)
    await expect(item).to_have_count(0)
    await status.select_option("pending")
    await expect(mine).to_have_count(1)
    await expect(item).to_be_visible()
    await page.reload()  # the filter reads the server, not the page's memory
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")
    await expect(mine).to_have_count(2)  # "Not resolved" again after a reload
    await expect(item.locator(".status-tag")).to_have_text("Pending")

    await item.click()
    await page.get_by_role("button", name="Reopen").click()
    await expect(page.locator("#conv-status")).to_have_text("Open")
    await expect(item.locator(".status-tag")).to_have_text("")
    await sla_pass(rt)
    await item.click()
    await expect(page.locator("#conv-sla .due")).to_have_text(re.compile("First response due in"))

    # On hold (snoozed) likewise; resolved ones are under "Resolved".
    await page.get_by_role("button", name="On hold", exact=True).click()
    await expect(item.locator(".status-tag")).to_have_text("On hold")
    await page.get_by_role("button", name="Resolve", exact=True).click()
    await expect(item).to_have_count(0)
    await page.get_by_label("Show conversations that are").select_option("resolved")
    await expect(mine).to_have_count(1)
    await expect(item.locator(".status-tag")).to_have_text("Resolved")


@pytest.mark.browser
async def test_unread_counts_come_from_the_server_and_survive_a_reload(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    person = await make_person(rt, "unread@test.local", Role.agent, None)
    first = await assigned(rt, person.id, "one", "SM-unread-1", phone="+14155552001")
    second = await assigned(rt, person.id, "two", "SM-unread-2", phone="+14155552002")
    page = await new_page()
    await browser_sign_in(page, live, "unread@test.local")
    count = page.locator(f'#conversations [data-conversation-id="{first}"] .unread')
    other = page.locator(f'#conversations [data-conversation-id="{second}"] .unread')
    await expect(count).to_have_attribute("data-count", "1")
    await expect(other).to_have_attribute("data-count", "1")

    # Live: two more from the first customer while the agent reads the second conversation.
    await page.locator(f'#conversations [data-conversation-id="{second}"]').click()
    await expect(other).to_have_attribute("data-count", "0")
    await ingest(rt, sms("two", sid="SM-unread-3", phone="+14155552001"))
    await ingest(rt, sms("three", sid="SM-unread-4", phone="+14155552001"))
    await expect(count).to_have_attribute("data-count", "3")

    await page.reload()
    await expect(count).to_have_attribute("data-count", "3")
    await expect(other).to_have_attribute("data-count", "0")  # read before the reload
    await page.locator(f'#conversations [data-conversation-id="{first}"]').click()
    await expect(page.locator("#timeline .msg.in")).to_have_count(3)
    await expect(count).to_have_attribute("data-count", "0")
    # Reading while it is open keeps it read.
    await ingest(rt, sms("four", sid="SM-unread-5", phone="+14155552001"))
    await expect(page.locator("#timeline .msg.in")).to_have_count(4)
    for _ in range(20):
        async with rt.db.read() as session:
            from contact_center.models import ConversationRead

            marker = await session.get(ConversationRead, (person.id, first), populate_existing=True)
            latest = await session.scalar(
                select(func.max(Message.id)).where(Message.conversation_id == first)
            )
        if marker is not None and marker.last_read_message_id == latest:
            break
        await asyncio.sleep(0.1)
    await page.reload()
    await expect(count).to_have_attribute("data-count", "0")

    # A second tab of the same agent: reading in one clears the count in the other, live.
    tab = await page.context.new_page()
    await tab.goto(live.url + "/agent")
    other_in_tab = tab.locator(f'#conversations [data-conversation-id="{second}"] .unread')
    await expect(other_in_tab).to_have_attribute("data-count", "0")
    await ingest(rt, sms("five", sid="SM-unread-6", phone="+14155552002"))
    await expect(other).to_have_attribute("data-count", "1")
    await expect(other_in_tab).to_have_attribute("data-count", "1")
    await page.locator(f'#conversations [data-conversation-id="{second}"]').click()
    await expect(other).to_have_attribute("data-count", "0")
    await expect(other_in_tab).to_have_attribute("data-count", "0")


@pytest.mark.browser
async def test_a_bad_time_zone_leaves_the_console_working_and_an_agent_sets_their_own(
    rt: Runtime, live: LiveApp, clock: ManualClock, new_page: NewPage
) -> None:
    person = await make_person(rt, "zone@test.local", Role.agent, None)
    clock.set(datetime(2026, 11, 23, 9, 5, tzinfo=UTC))
    await assigned(rt, person.id, "Merhaba", "SM-zone-1")
    async with rt.db.write() as session:
        agent = await session.get(Agent, person.id)
        assert agent is not None
        agent.timezone = "Mars/Olympus_Mons"  # stored before zones were checked
    errors: list[str] = []
    page = await new_page(locale="en-US")
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await browser_sign_in(page, live, "zone@test.local")
    await page.locator(".conversation-item").click()
    await expect(page.locator("#timeline .msg time")).to_have_text(re.compile("^09:05"))  # UTC
    assert errors == []

    await page.locator("#prefs summary").click()
    await page.get_by_label("Time zone").fill("Europe/Nowhere")
    await page.locator("#prefs-form").get_by_role("button", name="Save").click()
    await expect(page.locator("#prefs-error")).to_have_text(re.compile("Unknown time zone"))
    await page.get_by_label("Interface language").select_option("tr")
    await page.get_by_label("Time zone").fill("Europe/Istanbul")
    await page.locator("#prefs-form").get_by_role("button", name="Save").click()
    await expect(page.locator("html")).to_have_attribute("lang", "tr")  # reloaded in Turkish
    await expect(page.locator("#link")).to_have_text("canlı")
    await page.locator(".conversation-item").click()
    await expect(page.locator("#timeline .msg time")).to_have_text("12:05")  # Istanbul
    async with rt.db.read() as session:
        agent = await session.get(Agent, person.id, populate_existing=True)
    assert agent is not None and (agent.locale, agent.timezone) == ("tr", "Europe/Istanbul")


@pytest.mark.browser
async def test_the_escalation_link_opens_the_conversation(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    from routing.escalation import describe

    person = await make_person(rt, "link@test.local", Role.agent, None)
    first = await assigned(rt, person.id, "first", "SM-link-1", phone="+14155553001")
    target = await assigned(
        rt, person.id, "the one in the email", "SM-link-2", phone="+14155553002"
    )
    async with rt.db.read() as session:
        conversation = await session.get(Conversation, target)
    assert conversation is not None
    _, text = describe("breach", "first_response", conversation, live.url)
    link = text.splitlines()[-1]
    assert link == f"{live.url}/agent#conversation-{target}"
    page = await new_page()
    # Signed out: the link leads through the sign-in page, which keeps where it pointed
    # (a wrong password first does not lose it).
    await page.goto(link)
    await page.get_by_label("Email").fill("link@test.local")
    await page.get_by_label("Password").fill("wrong-password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(link)
    await expect(page.locator("#timeline .msg .text")).to_have_text(["the one in the email"])
    await page.evaluate(f"location.hash = 'conversation-{first}'")  # another link, same page
    await expect(page.locator("#timeline .msg .text")).to_have_text(["first"])
