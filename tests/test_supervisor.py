"""The wallboard: ``/supervisor`` (supervisors and admins; agents are refused) and
``/ws/supervisor`` over a real websocket: a snapshot, then merge-patch deltas that rebuild the
live figures (a new arrival shows up as waiting), ``agent.state`` events with positions that
resume with nothing lost or repeated, SLA events forwarded unchanged, and the same refusals
as ``/ws/agent``. In Chromium: the page's tiles, agents and charts, updated live, and an
agent's state set from the page."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import expect
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from contact_center.models import Role
from contact_center.relay import EVENTS_CHANNEL
from contact_center.runtime import Runtime
from routing.models import AgentStatus, Presence
from routing.wallboard import apply_patch, feed_of, merge_patch
from tests.browser import ARTIFACTS, NewPage
from tests.helpers import make_inbox, make_person
from tests.live import LiveApp, live_app
from tests.routing_helpers import arrive, make_agent, make_queue
from tests.test_console import PASSWORD, csrf_of, sign_in


@pytest.fixture
async def live(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LiveApp]:
    await make_inbox(rt)
    await make_queue(rt, "Support", is_default=True)
    monkeypatch.setattr(rt.settings, "wallboard_tick_seconds", 0.5)
    async with live_app(rt, run_scheduler=True) as app:
        monkeypatch.setattr(rt.settings, "allowed_origins", [app.url])
        yield app


def ws_url(live: LiveApp, query: str = "") -> str:
    return live.url.replace("http://", "ws://") + "/ws/supervisor" + query


async def frames_until(
    ws: ClientConnection, done: Any, timeout: float = 20
) -> list[dict[str, Any]]:
    """Frames until ``done(frame)`` is true (the last frame is the one that made it true)."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            seen.append(frame)
            if done(frame):
                return seen


def test_merge_patches_rebuild_the_figures() -> None:
    old = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "gone": {"x": 1}, "same": {"y": 1}}
    new = {"a": 1, "b": {"c": 3, "d": [1, 2, 3], "e": "new"}, "same": {"y": 1}}
    patch = merge_patch(old, new)
    assert patch == {"b": {"c": 3, "d": [1, 2, 3], "e": "new"}, "gone": None}
    assert apply_patch(old, patch) == new
    assert merge_patch(new, new) == {}


async def test_the_page_is_for_supervisors_and_sign_in_comes_back_to_it(
    rt: Runtime, live: LiveApp
) -> None:
    await make_person(rt, "agent@test.local", Role.agent, None)
    await make_person(rt, "boss@test.local", Role.supervisor, None)
    first = await live.client.get("/supervisor")
    assert first.status_code == 303
    assert first.headers["location"] == "/agent/login?next=/supervisor"
    form = await live.client.get("/agent/login?next=/supervisor")
    assert 'name="next" value="/supervisor"' in form.text
    # Only listed pages: another value falls back to the console.
    other = await live.client.get("/agent/login?next=https://evil.example/")
    assert 'name="next" value="/agent"' in other.text

    await sign_in(live, "agent@test.local")
    refused = await live.client.get("/supervisor")
    assert refused.status_code == 403
    assert "The wallboard is for supervisors and admins." in refused.text
    live.client.cookies.clear()

    page = await live.client.get("/agent/login")
    done = await live.client.post(
        "/agent/login",
        data={
            "email": "boss@test.local",
            "password": PASSWORD,
            "csrf": csrf_of(page.text),
            "next": "/supervisor",
        },
    )
    assert done.status_code == 303 and done.headers["location"] == "/supervisor"
    board = await live.client.get("/supervisor")
    assert board.status_code == 200
    assert "script-src 'self'" in board.headers["content-security-policy"]
    assert "/agent/static/supervisor.js" in board.text
    script = await live.client.get("/agent/static/supervisor.js")
    assert script.status_code == 200 and "metrics.delta" in script.text
    console = await live.client.get("/agent")
    assert 'href="/supervisor"' in console.text  # supervisors find the wallboard


async def test_the_socket_refuses_agents_strangers_and_foreign_origins(
    rt: Runtime, live: LiveApp
) -> None:
    agent = await make_person(rt, "agent@test.local", Role.agent, None)
    boss = await make_person(rt, "boss@test.local", Role.supervisor, None)
    cases = [
        (ws_url(live), {}, 4401),
        (ws_url(live, "?token=nope"), {}, 4401),
        (ws_url(live, f"?token={agent.token}"), {}, 4403),
        (ws_url(live, f"?token={boss.token}"), {"Origin": "https://evil.example"}, 4403),
    ]
    for url, headers, code in cases:
        async with connect(url, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code, url


async def test_a_snapshot_then_deltas_that_show_a_new_arrival(rt: Runtime, live: LiveApp) -> None:
    boss = await make_person(rt, "boss@test.local", Role.supervisor, None)
    async with rt.db.read() as session:
        from routing.models import Queue

        queue_id = await session.scalar(select(Queue.id))
    key = str(queue_id)
    async with connect(ws_url(live, f"?token={boss.token}")) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "metrics.snapshot" and "id" not in first
        figures = first["data"]["metrics"]
        assert figures["queues"][key]["waiting"] == 0
        assert figures["overall"]["offered"] == 0
        assert len(figures["series"]["labels"]) in (92, 96, 100)

        conversation_id = await arrive(rt, "is anyone there?")
        state = dict(figures)

        def arrived(frame: dict[str, Any]) -> bool:
            nonlocal state
            if frame["type"] == "metrics.delta":
                state = apply_patch(state, frame["data"]["changes"])
            return bool(state["queues"][key]["waiting"] == 1)

        await frames_until(ws, arrived)
        assert state["overall"]["offered"] == 1
        assert state["waiting_list"][0]["conversation_id"] == conversation_id
        # The figures rebuilt from the snapshot and its deltas are the figures now (the
        # manual clock has not moved, so nothing has changed since).
        assert state == await feed_of(rt).snapshot()


async def test_agent_state_events_resume_with_nothing_lost_or_repeated(
    rt: Runtime, live: LiveApp
) -> None:
    boss = await make_person(rt, "boss@test.local", Role.supervisor, None)
    ayla = await make_agent(rt, "Ayla", available=False)
    bearer = boss.headers

    async def set_state(state: str) -> None:
        response = await live.client.put(
            f"/api/v1/agents/{ayla}/presence", json={"state": state}, headers=bearer
        )
        assert response.status_code == 200, response.text

    async with connect(ws_url(live, f"?token={boss.token}")) as ws:
        snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert snapshot["data"]["metrics"]["agents"][str(ayla)]["state"] == "offline"
        await set_state("available")
        frames = await frames_until(ws, lambda f: f["type"] == "agent.state")
        event = frames[-1]
        assert event["data"]["agent_id"] == ayla and event["data"]["state"] == "available"
        assert event["data"]["previous"] == "offline"
        assert event["data"]["by_agent_id"] == boss.id
        last_id = event["id"]
        assert last_id > snapshot["data"]["last_event_id"]

    # While nobody watches: away, then available again.
    await set_state("away")
    await set_state("available")
    async with connect(ws_url(live, f"?token={boss.token}&last_event_id={last_id}")) as ws:
        frames = await frames_until(ws, lambda f: f["type"] == "metrics.snapshot")
        events = [f for f in frames if f["type"] == "agent.state"]
        assert [e["data"]["state"] for e in events] == ["away", "available"]
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and ids[0] > last_id
        # A resume frame on an open connection replays from any point, then a new snapshot.
        await ws.send(json.dumps({"type": "resume", "data": {"last_event_id": last_id}}))
        await ws.send(json.dumps({"type": "ping", "data": {}}))
        again = await frames_until(ws, lambda f: f["type"] == "pong")
        # Already sent on this connection: not repeated; the snapshot comes anyway.
        assert [f["type"] for f in again if f["type"] != "metrics.delta"] == [
            "metrics.snapshot",
            "pong",
        ]
        await ws.send(json.dumps({"type": "resume", "data": {"last_event_id": "x"}}))
        error = await frames_until(ws, lambda f: f["type"] == "error")
        assert error[-1]["data"]["code"] == "bad_frame"


async def test_a_resume_frame_on_a_connection_opened_at_the_head_replays_what_it_missed(
    rt: Runtime, live: LiveApp
) -> None:
    """A wallboard that connects without ?last_event_id (it starts at the head) and then sends
    `resume` from an earlier id gets the events after it, in order, once."""
    boss = await make_person(rt, "boss@test.local", Role.supervisor, None)
    ayla = await make_agent(rt, "Ayla", available=False)
    async with connect(ws_url(live, f"?token={boss.token}")) as ws:
        mark = json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]["last_event_id"]
    for state in ("available", "away"):
        response = await live.client.put(
            f"/api/v1/agents/{ayla}/presence", json={"state": state}, headers=boss.headers
        )
        assert response.status_code == 200, response.text
    async with connect(ws_url(live, f"?token={boss.token}")) as ws:
        first = await frames_until(ws, lambda f: f["type"] == "metrics.snapshot")
        assert [f for f in first if f["type"] == "agent.state"] == []  # starts at the head
        await ws.send(json.dumps({"type": "resume", "data": {"last_event_id": mark}}))
        frames = await frames_until(ws, lambda f: f["type"] == "metrics.snapshot")
        events = [f for f in frames if f["type"] == "agent.state"]
        assert [e["data"]["state"] for e in events] == ["available", "away"]
        assert [e["id"] for e in events] == sorted({e["id"] for e in events})
        await ws.send(json.dumps({"type": "resume", "data": {"last_event_id": mark}}))
        again = await frames_until(ws, lambda f: f["type"] == "metrics.snapshot")
        assert [f for f in again if f["type"] == "agent.state"] == []  # nothing twice


async def test_sla_events_are_forwarded_unchanged(rt: Runtime, live: LiveApp) -> None:
    boss = await make_person(rt, "boss@test.local", Role.supervisor, None)
    async with connect(ws_url(live, f"?token={boss.token}")) as ws:
        snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
        head = snapshot["data"]["last_event_id"]
        for n, kind in enumerate(("sla.warning", "sla.breached"), start=1):
            await rt.bus.publish(
                EVENTS_CHANNEL,
                {
                    "type": kind,
                    "id": head + 1000 + n,
                    "conversation_id": 7,
                    "agent_id": None,
                    "data": {"target": "first_reply", "due_at": "2026-03-10T09:00:00+00:00"},
                },
            )
        frames = await frames_until(ws, lambda f: f["type"] == "sla.breached")
        sla = [f for f in frames if f["type"].startswith("sla.")]
        assert [(f["type"], f["id"], f["conversation_id"]) for f in sla] == [
            ("sla.warning", head + 1001, 7),
            ("sla.breached", head + 1002, 7),
        ]
        assert sla[0]["data"] == {"target": "first_reply", "due_at": "2026-03-10T09:00:00+00:00"}


@pytest.mark.browser
async def test_the_wallboard_updates_live_and_sets_an_agents_state(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    await make_person(rt, "boss@test.local", Role.supervisor, None)
    ayla = await make_agent(rt, "Ayla", available=False)
    page = await new_page(viewport={"width": 1366, "height": 900})
    await page.goto(live.url + "/supervisor")
    await page.get_by_label("Email").fill("boss@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(live.url + "/supervisor")
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")

    overall = page.locator('.tile[data-queue-id="all"]')
    support = page.locator(".tile").filter(has=page.get_by_role("heading", name="Support"))
    await expect(overall.get_by_role("heading", name="All queues")).to_be_visible()
    await expect(support.locator('[data-figure="waiting"] dd')).to_have_text("0")
    row = page.locator(f'#agents tr[data-agent-id="{ayla}"]')
    await expect(row.locator("th")).to_have_text("Ayla")
    await expect(row.locator("td.state")).to_have_text("Offline")

    # A customer writes: the tile, the waiting list and the arrivals chart follow.
    conversation_id = await arrive(rt, "hello, anyone?")
    await expect(support.locator('[data-figure="waiting"] dd')).to_have_text("1")
    await expect(overall.locator('[data-figure="waiting"] dd')).to_have_text("1")
    await expect(page.locator("#waiting-list tbody tr")).to_have_count(1)
    await expect(page.locator("#waiting-list tbody tr td").first).to_have_text(
        f"#{conversation_id}"
    )
    await expect(page.locator("#arrivals-chart")).to_have_attribute("data-total", "1")
    await expect(page.locator("#arrivals-chart rect")).to_have_count(1)

    # Set Ayla available from the page: the API changes her presence, the table follows.
    await page.get_by_label("Set the state of Ayla").select_option("available")
    await expect(page.locator("#action-result")).to_have_text("Ayla is now Available.")
    await expect(row.locator("td.state")).to_have_text("Available")
    async with rt.db.read() as session:
        status = await session.get(AgentStatus, ayla)
    assert status is not None and status.state == Presence.available.value
    await expect(overall.locator('[data-figure="agents"] dd')).to_contain_text("1 available")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "wallboard.png"), full_page=True)


@pytest.mark.browser
async def test_the_wallboard_shows_sla_compliance_at_risk_and_breaches_live(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    from contact_center.clock import ManualClock
    from routing.models import SlaPolicy

    clock = rt.clock
    assert isinstance(clock, ManualClock)
    now = clock.now()
    async with rt.db.write() as session:
        session.add(
            SlaPolicy(
                name="Ten minutes",
                targets={"normal": {"first_response": {"minutes": 10, "business": False}}},
                conditions={},
                warn_at=0.5,
                escalations=[],
                created_at=now,
                updated_at=now,
            )
        )
    await make_person(rt, "boss@test.local", Role.supervisor, None)
    page = await new_page(viewport={"width": 1366, "height": 900})
    await page.goto(live.url + "/supervisor")
    await page.get_by_label("Email").fill("boss@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")
    overall = page.locator('.tile[data-queue-id="all"] [data-figure="sla"] dd')
    await expect(overall).to_contain_text("0 met, 0 missed, 0 at risk")

    first = await arrive(rt, "the first one")
    await arrive(rt, "the second one")
    # The clocks start at the messages' own times, whenever the scheduler's SLA pass runs.
    clock.advance(6 * 60)  # past the warning (5 min): both at risk
    await expect(page.locator("#risk-list tbody tr")).to_have_count(2)
    await expect(page.locator("#sla-alerts .alert").first).to_contain_text("SLA warning")
    await expect(overall).to_contain_text("0 met, 0 missed, 2 at risk")

    clock.advance(5 * 60)  # past the target: breached, no longer "at risk"
    await expect(page.locator("#risk-list tbody tr")).to_have_count(0)
    await expect(page.locator("#sla-alerts .alert.breached")).to_have_count(2)
    await expect(page.locator("#sla-alerts .alert.breached").last).to_have_text(
        f"SLA breached: First response, conversation #{first}"
    )
    await expect(overall).to_contain_text("0%")
    await expect(overall).to_contain_text("0 met, 2 missed, 0 at risk")
    await page.screenshot(path=str(ARTIFACTS / "wallboard-sla.png"), full_page=True)


@pytest.mark.browser
async def test_the_supervisor_reprioritises_and_reassigns_a_waiting_conversation(
    rt: Runtime, live: LiveApp, new_page: NewPage
) -> None:
    """The waiting list's 'Use' fills both action forms; 'Change priority' and 'Reassign' go
    through the API, and the page follows live (the conversation leaves the waiting list)."""
    from contact_center.models import Conversation, Priority
    from routing.engine import set_presence

    await make_person(rt, "boss@test.local", Role.supervisor, None)
    # Away: the engine offers her nothing, so the conversation waits; a supervisor may still
    # hand it to her directly.
    ayla = await make_agent(rt, "Ayla")
    async with rt.db.write() as session:
        await set_presence(session, ayla, Presence.away, clock=rt.clock, reason="training")
    conversation_id = await arrive(rt, "my invoice is wrong")

    page = await new_page(viewport={"width": 1366, "height": 768})
    await page.goto(live.url + "/supervisor")
    await page.get_by_label("Email").fill("boss@test.local")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#link")).to_have_attribute("data-state", "open")
    row = page.locator(f'#waiting-list tbody tr[data-conversation-id="{conversation_id}"]')
    await expect(row).to_contain_text("Normal")

    await row.get_by_role("button", name="Use").click()
    await expect(page.get_by_label("Conversation to reprioritise")).to_have_value(
        str(conversation_id)
    )
    await expect(page.get_by_label("Conversation to reassign")).to_have_value(str(conversation_id))

    await page.get_by_label("New priority").select_option("urgent")
    await page.get_by_role("button", name="Change priority").click()
    await expect(page.locator("#action-result")).to_contain_text(f"#{conversation_id}")
    await expect(page.locator("#action-result")).not_to_have_class("error")
    await expect(row).to_contain_text("Urgent")
    async with rt.db.read() as session:
        conversation = await session.get(Conversation, conversation_id)
    assert conversation is not None and conversation.priority == Priority.urgent

    await page.get_by_label("Reassign to").select_option(f"agent:{ayla}")
    await page.get_by_role("button", name="Reassign").click()
    await expect(page.locator("#action-result")).to_contain_text(f"#{conversation_id}")
    await expect(page.locator("#action-result")).not_to_have_class("error")
    await expect(row).to_have_count(0)
    async with rt.db.read() as session:
        conversation = await session.get(Conversation, conversation_id)
    assert conversation is not None and conversation.assignee_id == ayla

    # A refusal is shown as such, not as success: a conversation that does not exist.
    await page.get_by_label("Conversation to reassign").fill("999999")
    await page.get_by_role("button", name="Reassign").click()
    await expect(page.locator("#action-result")).to_have_class("meta error")
