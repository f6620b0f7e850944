"""Tickets in the agent console, in real headless Chromium (docs §16): an agent raises a
complaint from a conversation, sees it in the conversation's Tickets section and in the
customer 360 panel, solves it with the status select, and a change another agent makes through
the REST API shows up without a reload. The panel shows the customer's earlier tickets and
their satisfaction history (score and label, the date in the agent's time zone, the comment);
hostile subjects and comments stay text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from contact_center.models import Agent, Conversation, Role
from contact_center.runtime import Runtime
from tests.browser import ARTIFACTS, NewPage
from tests.helpers import ingest, make_inbox, make_person, run_jobs, sms
from tests.live import LiveApp, live_app
from tests.standins.twilio import TwilioStandIn, running
from tests.test_console import browser_sign_in, fresh_throttle  # noqa: F401 (a fixture)
from tests.test_twilio import SMS_NUMBER
from tickets.models import SatisfactionSurvey, Ticket

HOSTILE = "<img src=x onerror=window.pwned=1>"


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


@pytest.fixture
async def live(
    rt: Runtime, standin: TwilioStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LiveApp]:
    # Replies and survey requests go to the Twilio stand-in.
    await make_inbox(rt, "sms", "sms", SMS_NUMBER, api_base_url=standin.url)
    async with live_app(rt, run_scheduler=True) as app:
        monkeypatch.setattr(rt.settings, "allowed_origins", [app.url])
        yield app


async def add_survey(rt: Runtime, ticket_id: int, customer_id: int, **kw: Any) -> None:
    created = kw.pop("created_at")
    async with rt.db.write() as session:
        session.add(
            SatisfactionSurvey(
                ticket_id=ticket_id,
                customer_id=customer_id,
                token=f"token-{ticket_id}",
                created_at=created,
                expires_at=created + timedelta(days=7),
                **kw,
            )
        )


@pytest.mark.browser
async def test_an_agent_raises_a_complaint_solves_it_and_sees_changes_live(
    rt: Runtime, live: LiveApp, standin: TwilioStandIn, new_page: NewPage
) -> None:
    person = await make_person(rt, "tickets@test.local", Role.agent, None)
    supervisor = await make_person(rt, "boss@test.local", Role.supervisor, None)
    boss = supervisor.headers
    result = await ingest(rt, sms("My bill is  wrong:\n<b>charged twice</b>", sid="SM-tk-1"))
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, result.conversation_id)
        agent = await session.get(Agent, person.id)
        assert conversation is not None and agent is not None
        conversation.assignee_id = person.id
        agent.timezone = "Pacific/Auckland"  # UTC+13 in March: the next day there
    # An earlier case of the customer's, solved and rated (a hostile subject and comment).
    earlier = await live.client.post(
        "/api/v1/tickets",
        json={"customer_id": result.customer_id, "subject": HOSTILE, "assignee_id": person.id},
        headers=boss,
    )
    assert earlier.status_code == 201, earlier.text
    old = earlier.json()["id"]
    march = datetime(2026, 3, 10, 11, 30, tzinfo=UTC)
    # Answered before the solve below, so the survey job finds it and sends nothing: one
    # survey per ticket.
    await add_survey(
        rt,
        old,
        result.customer_id,
        agent_id=person.id,
        status="answered",
        score=2,
        comment="<script>window.pwned=1</script> too slow",  # shown as text
        created_at=march - timedelta(hours=2),
        answered_at=march,
    )
    solved = await live.client.patch(
        f"/api/v1/tickets/{old}", json={"status": "solved"}, headers=boss
    )
    assert solved.status_code == 200

    page = await new_page(viewport={"width": 1366, "height": 768})
    await browser_sign_in(page, live, "tickets@test.local")
    await page.locator(f'#conversations [data-conversation-id="{result.conversation_id}"]').click()
    panel = page.locator("#customer")
    section = page.locator("#conv-tickets")
    await expect(section.locator("#tickets .empty")).to_have_text("No tickets.")
    await expect(panel.locator("#customer-tickets li")).to_have_count(1)
    await expect(panel.locator("#customer-tickets .subject")).to_have_text(HOSTILE)
    await expect(panel.locator("#customer-tickets .ticket-state")).to_have_text("Solved")
    rating = panel.locator("#satisfaction .survey")
    await expect(rating).to_have_count(1)
    await expect(rating.locator(".score")).to_have_text("2/5")
    await expect(rating.locator(".score-label")).to_have_text("Unsatisfied")
    await expect(rating.locator("time")).to_have_text("Mar 11, 2026")  # Auckland's date
    await expect(rating.locator(".meta")).to_have_text(f"ticket #{old} {HOSTILE} · you")
    await expect(rating.locator(".comment")).to_have_text(
        "<script>window.pwned=1</script> too slow"
    )

    # Raise a complaint: the subject starts as the customer's first words.
    await section.get_by_role("button", name="Raise ticket").click()
    subject = page.get_by_label("Subject")
    await expect(subject).to_have_value("My bill is wrong: <b>charged twice</b>")
    await subject.fill("Charged twice in March")
    form = section.locator("#ticket-form")
    await form.get_by_label("Type").select_option("complaint")
    await form.get_by_label("Priority").select_option("high")
    await section.get_by_role("button", name="Create").click()
    row = section.locator("#tickets .ticket")
    await expect(row).to_have_count(1)
    await expect(row.locator(".subject")).to_have_text("Charged twice in March")
    await expect(row.locator(".ticket-type")).to_have_text("Complaint")
    await expect(row.locator(".assignee")).to_have_text("Tickets")  # assigned to me
    async with rt.db.read() as session:
        ticket = await session.scalar(select(Ticket).where(Ticket.subject.like("Charged%")))
    assert ticket is not None
    assert (ticket.type, ticket.status, ticket.priority) == ("complaint", "open", 3)
    assert (ticket.conversation_id, ticket.assignee_id) == (result.conversation_id, person.id)
    status = page.get_by_label(f"Status of ticket #{ticket.id}")
    await expect(status).to_have_value("open")
    listed = panel.locator("#customer-tickets li")
    await expect(listed).to_have_count(2)
    await expect(listed.first.locator(".subject")).to_have_text("Charged twice in March")

    # Solve it with the status select: stored, and the panel follows.
    await page.evaluate("window.notReloaded = true")
    await status.select_option("solved")
    await expect(listed.first.locator(".ticket-state")).to_have_text("Solved")
    async with rt.db.read() as session:
        stored = await session.get(Ticket, ticket.id, populate_existing=True)
    assert stored is not None and stored.status == "solved" and stored.solved_at is not None

    # The survey goes to the customer by SMS (the job runs on rq's worker on PostgreSQL), and
    # the panel shows it awaiting an answer ...
    survey = None
    for _ in range(30):
        await run_jobs(rt)
        async with rt.db.read() as session:
            survey = await session.scalar(
                select(SatisfactionSurvey).where(SatisfactionSurvey.ticket_id == ticket.id)
            )
        if survey is not None:
            break
        await asyncio.sleep(0.2)
    assert survey is not None
    await run_jobs(rt)  # the send
    await expect(rating).to_have_count(2)
    await expect(rating.first.locator(".score-label")).to_have_text("Awaiting an answer")
    await asyncio.to_thread(standin.wait_for_requests, 1)
    [request] = standin.sent
    assert f"/survey/{survey.token}" in request.form["Body"]
    # ... and the customer's answer on the survey page shows up live.
    answered = await live.client.post(
        f"/survey/{survey.token}", data={"score": "5", "comment": "Refunded the same day"}
    )
    assert answered.status_code == 200, answered.text
    await expect(rating.first.locator(".score")).to_have_text("5/5")
    await expect(rating.first.locator(".comment")).to_have_text("Refunded the same day")

    # Another agent reopens it and raises the priority through the API: seen live.
    changed = await live.client.patch(
        f"/api/v1/tickets/{ticket.id}", json={"status": "open", "priority": "urgent"}, headers=boss
    )
    assert changed.status_code == 200, changed.text
    await expect(status).to_have_value("open")
    await expect(page.get_by_label(f"Priority of ticket #{ticket.id}")).to_have_value("urgent")
    await expect(listed.first.locator(".ticket-state")).to_have_text("Open")
    # ... and a ticket they raise from the conversation appears too.
    raised = await live.client.post(
        "/api/v1/tickets",
        json={"conversation_id": result.conversation_id, "subject": HOSTILE, "tags": ["<i>x</i>"]},
        headers=boss,
    )
    assert raised.status_code == 201, raised.text
    await expect(row).to_have_count(2)
    newest = row.first
    await expect(newest.locator(".subject")).to_have_text(HOSTILE)
    await expect(newest.locator(".assignee")).to_have_text("Unassigned")
    await expect(newest.locator(".tag")).to_have_text("<i>x</i>")
    await expect(page.get_by_label(f"Status of ticket #{raised.json()['id']}")).to_have_value("new")
    await expect(listed).to_have_count(3)
    assert await page.evaluate("window.notReloaded === true && window.pwned === undefined")
    injected = "#customer img, #conversation img, #customer script, #conversation script"
    assert await page.locator(injected).count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-tickets.png"))

    # Closing it: final, so its controls are read-only and the API refuses a change.
    await page.get_by_label(f"Status of ticket #{ticket.id}").select_option("closed")
    await expect(page.get_by_label(f"Status of ticket #{ticket.id}")).to_be_disabled()
    await expect(page.get_by_label(f"Priority of ticket #{ticket.id}")).to_be_disabled()
    entry = panel.locator(f'#customer-tickets li[data-ticket-id="{ticket.id}"]')
    await expect(entry.locator(".ticket-state")).to_have_text("Closed")
    refused = await live.client.patch(
        f"/api/v1/tickets/{ticket.id}", json={"status": "open"}, headers=boss
    )
    assert refused.status_code == 409
