"""The chat widget shows a solved ticket's satisfaction survey in a real browser (chromium via
playwright) on a customer's page of another origin, against the real app: five buttons and a
comment, the answer stored, a thank-you, a changed answer; the comment stays text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from contact_center.models import Conversation
from contact_center.runtime import Runtime
from tests.browser import NewPage
from tests.helpers import make_inbox, settle
from tests.live import LiveApp, live_app
from tests.test_widget_browser import open_widget, set_settings, shop_page, shop_url
from tickets.models import SatisfactionSurvey, Ticket, TicketStatus
from tickets.service import change_ticket, create_ticket

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture
async def live(rt: Runtime) -> AsyncIterator[LiveApp]:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    async with live_app(rt, run_scheduler=True, extra_route_handlers=[shop_page]) as app:
        await set_settings(rt, app, {})
        yield app


async def solve_the_ticket(rt: Runtime) -> None:
    """An agent raises a ticket from the visitor's conversation and solves it."""
    async with rt.db.write() as session:
        conversation_id = await session.scalar(select(Conversation.id))
        ticket = await create_ticket(
            session, clock=rt.clock, subject="Order missing", conversation_id=conversation_id
        )
    async with rt.db.write() as session:
        found = await session.get(Ticket, ticket.id)
        assert found is not None
        await change_ticket(
            session, found, clock=rt.clock, acting_agent_id=None, status=TicketStatus.solved
        )
    await settle(rt)  # the survey job (on PostgreSQL: an rq worker)


async def answers(rt: Runtime, count: int) -> SatisfactionSurvey:
    """The survey once it has been answered ``count`` times (each answer is an event)."""
    from contact_center.models import DomainEvent

    async with asyncio.timeout(10):
        while True:
            async with rt.db.read() as session:
                seen = (
                    await session.scalars(
                        select(DomainEvent.id).where(DomainEvent.type == "survey.answered")
                    )
                ).all()
                survey = await session.scalar(select(SatisfactionSurvey))
            if len(seen) >= count and survey is not None:
                return survey
            await asyncio.sleep(0.05)


async def test_the_widget_shows_the_survey_and_the_visitor_answers(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    page: Any = await new_page()
    await page.goto(shop_url(live))
    await open_widget(page)
    await page.get_by_label("Message", exact=True).fill("My order never arrived")
    await page.get_by_label("Message", exact=True).press("Enter")
    await expect(page.locator(".ccw-in[data-id]")).to_have_count(1)

    await solve_the_ticket(rt)

    card = page.get_by_test_id("cc-survey")
    await expect(card).to_be_visible()
    await expect(card).to_contain_text("How satisfied are you with the support you received?")
    await expect(card.locator(".ccw-scores button")).to_have_count(5)
    # The request message with the link is in the chat too.
    await expect(page.locator(".ccw-out .ccw-text")).to_contain_text(["/survey/"])
    send = card.get_by_role("button", name="Send")
    await expect(send).to_be_disabled()

    await card.get_by_role("button", name="5 Very satisfied").click()
    await card.get_by_label("Anything you would like to add? (optional)").fill(HOSTILE)
    await send.click()
    await expect(card.get_by_test_id("cc-survey-done")).to_have_text("Thank you for your feedback!")
    first = await answers(rt, 1)
    assert (first.score, first.comment) == (5, HOSTILE)

    await card.get_by_role("button", name="4 Satisfied").click()
    await expect(card.get_by_role("button", name="4 Satisfied")).to_have_attribute(
        "aria-pressed", "true"
    )
    await send.click()
    changed = await answers(rt, 2)
    assert changed.score == 4
    assert await page.locator("[data-testid=cc-widget] img").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # After a reload the card is there again, once, with the answer given.
    await page.reload()
    await open_widget(page)
    await expect(card).to_have_count(1)
    await expect(card.get_by_role("button", name="4 Satisfied")).to_have_attribute(
        "aria-pressed", "true"
    )
    await expect(card.get_by_test_id("cc-survey-done")).to_be_visible()
    await expect(card.get_by_label("Anything you would like to add? (optional)")).to_have_value(
        HOSTILE
    )
