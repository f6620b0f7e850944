"""``/api/v1/tickets`` (docs §16): raise from a conversation or for a customer, list with its
filters and pages, show, change; 400s naming the field, 404 for a ticket unknown or not the
caller's to see, 409 for a closed one; a customer merge moves tickets and satisfaction surveys
to the survivor through the real job path (rq workers on PostgreSQL), once; and ``ticket.*``
events reach, over a real websocket, exactly the agents who may see the ticket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from contact_center.app import create_app
from contact_center.jobs import get_job
from contact_center.models import Conversation, DomainEvent
from contact_center.runtime import Runtime
from tests.helpers import Org, Person, ingest, make_inbox, make_org, relay, settle, sms
from tests.live import live_app
from tests.wshelpers import drain, recv
from tickets.models import SatisfactionSurvey, Ticket
from tickets.service import MERGE_JOB


@pytest.fixture
async def org(rt: Runtime) -> Org:
    await make_inbox(rt)
    return await make_org(rt)


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t.local") as c:
        yield c


async def conversation(rt: Runtime, text: str, sid: str, phone: str, team_id: int | None) -> Any:
    result = await ingest(rt, sms(text, sid=sid, phone=phone))
    async with rt.db.write() as session:
        conv = await session.get(Conversation, result.conversation_id)
        assert conv is not None
        conv.team_id = team_id
        conv.subject = text
    return result


async def raise_ticket(
    client: httpx.AsyncClient, who: Person, expect: int = 201, **body: Any
) -> dict[str, Any]:
    response = await client.post("/api/v1/tickets", json=body, headers=who.headers)
    assert response.status_code == expect, response.text
    return response.json()  # type: ignore[no-any-return]


async def listed(client: httpx.AsyncClient, who: Person, **params: Any) -> list[int]:
    response = await client.get("/api/v1/tickets", params=params, headers=who.headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_raise_list_filter_show_and_change(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    first = await conversation(rt, "Charged twice", "SMa1", "+14155550001", None)
    other = await conversation(rt, "Router", "SMa2", "+14155550002", None)
    complaint = await raise_ticket(
        client,
        org.agent,
        conversation_id=first.conversation_id,
        subject="Charged twice in March",
        type="complaint",
        priority="high",
        tags=["Billing", "refund request"],
    )
    assert complaint["status"] == "new" and complaint["customer_id"] == first.customer_id
    assert (complaint["type"], complaint["priority"]) == ("complaint", "high")
    assert complaint["tags"] == ["billing", "refund_request"]
    assert complaint["created_by_id"] == org.agent.id and complaint["assignee_name"] is None
    mine = await raise_ticket(
        client,
        org.agent,
        customer_id=first.customer_id,
        subject="Call back on Monday",
        type="task",
        assignee_id=org.agent.id,
    )
    assert mine["status"] == "open" and mine["conversation_id"] is None
    assert mine["assignee_name"] == "Agent" and mine["priority"] == "normal"
    router = await raise_ticket(
        client, org.supervisor, conversation_id=other.conversation_id, subject="Router"
    )

    # Newest first; each filter narrows; pages carry the total.
    assert await listed(client, org.agent) == [router["id"], mine["id"], complaint["id"]]
    assert await listed(client, org.agent, customer_id=first.customer_id) == [
        mine["id"],
        complaint["id"],
    ]
    assert await listed(client, org.agent, conversation_id=first.conversation_id) == [
        complaint["id"]
    ]
    assert await listed(client, org.agent, status="open") == [mine["id"]]
    assert await listed(client, org.agent, assignee_id="me") == [mine["id"]]
    assert await listed(client, org.agent, assignee_id=str(org.agent.id)) == [mine["id"]]
    assert await listed(client, org.agent, assignee_id="none") == [router["id"], complaint["id"]]
    assert await listed(client, org.agent, customer_id=10**6) == []
    page = await client.get(
        "/api/v1/tickets", params={"limit": 1, "offset": 1}, headers=org.agent.headers
    )
    assert page.json()["total"] == 3 and [i["id"] for i in page.json()["items"]] == [mine["id"]]

    url = f"/api/v1/tickets/{complaint['id']}"
    shown = await client.get(url, headers=org.agent.headers)
    assert shown.status_code == 200 and shown.json()["subject"] == "Charged twice in March"

    # Taking it opens it; solving stamps the time; the answer is the changed ticket.
    took = await client.patch(url, json={"assignee_id": org.agent.id}, headers=org.agent.headers)
    assert took.status_code == 200, took.text
    assert took.json()["status"] == "open" and took.json()["assignee_name"] == "Agent"
    solved = await client.patch(
        url, json={"status": "solved", "priority": "urgent"}, headers=org.agent.headers
    )
    assert solved.json()["status"] == "solved" and solved.json()["solved_at"] is not None
    assert solved.json()["priority"] == "urgent"
    again = await client.patch(url, json={"status": "solved"}, headers=org.agent.headers)
    assert again.status_code == 200
    reopened = await client.patch(
        url,
        json={"status": "open", "tags": [], "subject": "Charged twice"},
        headers=org.agent.headers,
    )
    body = reopened.json()
    assert (body["status"], body["solved_at"], body["tags"], body["subject"]) == (
        "open",
        None,
        [],
        "Charged twice",
    )
    async with rt.db.read() as session:
        updates = (
            await session.scalars(
                select(DomainEvent.payload)
                .where(DomainEvent.type == "ticket.updated")
                .order_by(DomainEvent.id)
            )
        ).all()
    # One event per change that changed something (the repeated solve changed nothing).
    assert [sorted(p["changes"]) for p in updates] == [
        ["assignee_id", "status"],
        ["priority", "status"],
        ["status", "subject", "tags"],
    ]
    assert {p["by_agent_id"] for p in updates} == {org.agent.id}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "x", "type": "bug"}, "type"),
        ({"subject": "x", "priority": "critical"}, "priority"),
        ({"subject": " "}, "subject"),
        ({"subject": "x" * 251}, "subject"),
        ({"subject": 5}, "subject"),
        ({"subject": "x", "tags": "vip"}, "tags"),
        ({"subject": "x", "tags": ["x" * 51]}, "tags"),
        ({"subject": "x", "tags": [f"t{i}" for i in range(21)]}, "tags"),
        ({"subject": "x", "assignee_id": 999999}, "assignee_id"),
        ({"subject": "x", "team_id": 999999}, "team_id"),
        ({"subject": "x", "conversation_id": None, "customer_id": 999999}, "customer_id"),
        ({"subject": "x", "conversation_id": 999999}, "conversation_id"),
        ({"subject": "x", "colour": "red"}, "colour"),
    ],
)
async def test_a_bad_ticket_is_a_400_naming_the_field(
    rt: Runtime, org: Org, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    first = await conversation(rt, "hello", "SMb1", "+14155550003", None)
    if "conversation_id" not in body and "customer_id" not in body:
        body = {**body, "customer_id": first.customer_id}
    response = await client.post("/api/v1/tickets", json=body, headers=org.agent.headers)
    assert response.status_code == 400, response.text
    assert field in response.text, response.text
    async with rt.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Ticket)) == 0


async def test_bad_changes_and_filters_are_400s_unknown_is_404_closed_is_409(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    first = await conversation(rt, "hello", "SMc1", "+14155550004", None)
    ticket = await raise_ticket(
        client,
        org.agent,
        conversation_id=first.conversation_id,
        subject="Hello",
        assignee_id=org.agent.id,
    )
    url = f"/api/v1/tickets/{ticket['id']}"
    for body, field in (
        ({"status": "reopened"}, "status"),
        ({"status": "new"}, "status"),  # nothing goes back to new
        ({"type": "bug"}, "type"),
        ({"priority": 3}, "priority"),
        ({"subject": ""}, "subject"),
        ({"tags": [1]}, "tags"),
        ({"assignee_id": 999999}, "assignee_id"),
        ({"team_id": "billing"}, "team_id"),
    ):
        response = await client.patch(url, json=body, headers=org.agent.headers)
        assert response.status_code == 400, (body, response.text)
        assert field in response.text, (body, response.text)
    for params in ({"status": "done"}, {"assignee_id": "ayse"}, {"customer_id": "x"}):
        response = await client.get("/api/v1/tickets", params=params, headers=org.agent.headers)
        assert response.status_code == 400, (params, response.text)
        assert next(iter(params)) in response.text
    assert (await client.get(url, headers=org.agent.headers)).json()["status"] == "open"

    for method in ("GET", "PATCH"):
        missing = await client.request(
            method, "/api/v1/tickets/999999", json={"status": "open"}, headers=org.agent.headers
        )
        assert missing.status_code == 404, missing.text
    closed = await client.patch(url, json={"status": "closed"}, headers=org.agent.headers)
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    for body in ({"status": "open"}, {"priority": "low"}, {"tags": ["late"]}):
        refused = await client.patch(url, json=body, headers=org.agent.headers)
        assert refused.status_code == 409 and "closed" in refused.text, refused.text
    assert (await client.get(url, headers=org.agent.headers)).json()["status"] == "closed"


async def test_agents_see_their_own_their_teams_and_their_conversations_tickets(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    technical = await conversation(rt, "Crash", "SMd1", "+14155550005", org.technical_team_id)
    shared = await conversation(rt, "Hello", "SMd2", "+14155550006", None)
    # Raised by the technical agent from their team's conversation: the billing agent
    # cannot see that conversation, so not its ticket either (404, as if unknown).
    hidden = await raise_ticket(
        client, org.other_agent, conversation_id=technical.conversation_id, subject="Crash"
    )
    assert hidden["team_id"] == org.technical_team_id
    open_to_all = await raise_ticket(
        client, org.other_agent, customer_id=technical.customer_id, subject="Call back"
    )
    billing = await raise_ticket(
        client,
        org.supervisor,
        customer_id=shared.customer_id,
        subject="Refund",
        team_id=org.billing_team_id,
    )
    on_shared = await raise_ticket(
        client,
        org.other_agent,
        conversation_id=shared.conversation_id,
        subject="Hello",
        team_id=org.technical_team_id,
    )
    url = f"/api/v1/tickets/{hidden['id']}"
    assert (await client.get(url, headers=org.agent.headers)).status_code == 404
    patch = await client.patch(url, json={"priority": "low"}, headers=org.agent.headers)
    assert patch.status_code == 404
    assert await listed(client, org.agent) == [on_shared["id"], billing["id"], open_to_all["id"]]
    assert await listed(client, org.agent, customer_id=technical.customer_id) == [open_to_all["id"]]
    assert await listed(client, org.other_agent) == [
        on_shared["id"],
        open_to_all["id"],
        hidden["id"],
    ]
    everything = [on_shared["id"], billing["id"], open_to_all["id"], hidden["id"]]
    assert await listed(client, org.supervisor) == everything
    assert await listed(client, org.admin) == everything
    # Raising one from a conversation the agent cannot see is refused like the conversation.
    refused = await client.post(
        "/api/v1/tickets",
        json={"conversation_id": technical.conversation_id, "subject": "Mine now"},
        headers=org.agent.headers,
    )
    assert refused.status_code == 403
    # Assigned to the billing agent: now theirs to see and change.
    given = await client.patch(
        url, json={"assignee_id": org.agent.id}, headers=org.other_agent.headers
    )
    assert given.status_code == 200
    assert (await client.get(url, headers=org.agent.headers)).status_code == 200
    assert hidden["id"] in await listed(client, org.agent, assignee_id="me")


async def survey(rt: Runtime, ticket_id: int, customer_id: int) -> int:
    now = rt.clock.now()
    async with rt.db.write() as session:
        row = SatisfactionSurvey(
            ticket_id=ticket_id,
            customer_id=customer_id,
            token=f"token-{ticket_id}",
            status="answered",
            score=4,
            created_at=now,
            answered_at=now,
            expires_at=now + timedelta(days=7),
        )
        session.add(row)
        await session.flush()
        return row.id


async def test_a_merge_moves_tickets_and_surveys_to_the_survivor_once(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    source = await conversation(rt, "From my old phone", "SMe1", "+14155550007", None)
    target = await conversation(rt, "From my new phone", "SMe2", "+14155550008", None)
    old = await raise_ticket(
        client, org.agent, conversation_id=source.conversation_id, subject="Old phone"
    )
    loose = await raise_ticket(client, org.agent, customer_id=source.customer_id, subject="Loose")
    kept = await raise_ticket(client, org.agent, customer_id=target.customer_id, subject="New")
    rated = await survey(rt, old["id"], source.customer_id)
    await relay(rt)  # the tickets' own events are out of the way

    merged = await client.post(
        "/api/v1/customers/merge",
        json={"source_id": source.customer_id, "target_id": target.customer_id},
        headers=org.agent.headers,
    )
    assert merged.status_code == 200, merged.text
    # Before the job has run the survivor's list finds them already (merged customers count).
    family = [loose["id"], old["id"]]
    assert await listed(client, org.agent, customer_id=target.customer_id) == [kept["id"], *family]
    await settle(rt)  # relay customer.merged, run tickets.follow_merge (rq on PostgreSQL)
    async with rt.db.read() as session:
        owners = dict((await session.execute(select(Ticket.id, Ticket.customer_id))).all())
        rating = await session.get(SatisfactionSurvey, rated)
        moves = (
            await session.scalars(
                select(DomainEvent.payload).where(DomainEvent.type == "ticket.updated")
            )
        ).all()
    assert owners == {t: target.customer_id for t in (old["id"], loose["id"], kept["id"])}
    assert rating is not None and rating.customer_id == target.customer_id
    assert sorted(p["id"] for p in moves) == sorted(family)
    assert all(
        p["changes"] == {"customer_id": {"from": source.customer_id, "to": target.customer_id}}
        and p["by_agent_id"] == org.agent.id
        for p in moves
    )
    # The old id finds the survivor's tickets; a replayed event moves nothing and says nothing.
    assert await listed(client, org.agent, customer_id=source.customer_id) == [
        kept["id"],
        *family,
    ]
    await get_job(MERGE_JOB)(
        rt,
        {"source_id": source.customer_id, "target_id": target.customer_id, "by_agent_id": None},
    )
    async with rt.db.read() as session:
        count = await session.scalar(
            select(func.count()).where(DomainEvent.type == "ticket.updated")
        )
    assert count == len(family)


async def test_ticket_events_reach_the_agents_who_may_see_the_ticket(
    rt: Runtime, org: Org, client: httpx.AsyncClient
) -> None:
    technical = await conversation(rt, "Crash", "SMf1", "+14155550009", org.technical_team_id)
    shared = await conversation(rt, "Hello", "SMf2", "+14155550010", None)
    async with live_app(rt) as live:
        base = live.url.replace("http://", "ws://") + "/ws/agent?token="
        async with (
            connect(base + org.agent.token) as billing_ws,
            connect(base + org.other_agent.token) as technical_ws,
            connect(base + org.supervisor.token) as supervisor_ws,
        ):
            for ws in (billing_ws, technical_ws, supervisor_ws):
                await recv(ws, "hello")
            crash = await raise_ticket(
                client,
                org.other_agent,
                conversation_id=technical.conversation_id,
                subject="<img src=x onerror=alert(1)>",
            )
            hello = await raise_ticket(
                client, org.agent, conversation_id=shared.conversation_id, subject="Hello"
            )
            await relay(rt)
            frame = await recv(technical_ws, "ticket.created")
            assert frame["conversation_id"] == technical.conversation_id
            assert frame["data"]["subject"] == "<img src=x onerror=alert(1)>"
            assert (await recv(technical_ws, "ticket.created"))["data"]["id"] == hello["id"]
            billing = [f for f in await drain(billing_ws, 1.0) if f["type"].startswith("ticket.")]
            assert [(f["type"], f["data"]["id"]) for f in billing] == [
                ("ticket.created", hello["id"])
            ]
            seen = [(await recv(supervisor_ws, "ticket.created"))["data"]["id"] for _ in range(2)]
            assert seen == [crash["id"], hello["id"]]

            # Given to the billing agent: they hear of it; taken back: they hear that too.
            url = f"/api/v1/tickets/{crash['id']}"
            for assignee in (org.agent.id, org.other_agent.id):
                changed = await client.patch(
                    url, json={"assignee_id": assignee}, headers=org.other_agent.headers
                )
                assert changed.status_code == 200
            await client.patch(url, json={"status": "solved"}, headers=org.other_agent.headers)
            await relay(rt)
            updates = [
                f["data"]["changes"]
                for f in await drain(billing_ws, 1.0)
                if f["type"] == "ticket.updated"
            ]
            assert [sorted(c) for c in updates] == [["assignee_id", "status"], ["assignee_id"]]
            solved = await recv(technical_ws, "ticket.updated")
            while "status" not in solved["data"]["changes"] or solved["data"]["status"] != "solved":
                solved = await recv(technical_ws, "ticket.updated")
