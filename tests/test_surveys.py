"""Satisfaction surveys (§16): solving a ticket sends one survey on the customer's own channel
(through the Twilio stand-in here), the public page records and changes answers over real
HTTP, the list API filters, and a web chat visitor answers on the socket. Both backends; on
PostgreSQL the jobs run on real rq workers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from contact_center.clock import ManualClock
from contact_center.conversations import change_conversation
from contact_center.customers import merge_customers
from contact_center.models import (
    Conversation,
    ConversationStatus,
    Customer,
    DomainEvent,
    Inbox,
    Message,
    Role,
)
from contact_center.runtime import Runtime
from routing.engine import may_need_task
from tests.helpers import Person, ingest, make_inbox, make_person, relay, settle, sms
from tests.live import LiveApp, live_app
from tests.standins.twilio import TwilioStandIn, running
from tests.wshelpers import drain, recv, send
from tickets import surveys
from tickets.models import SatisfactionSurvey, Ticket, TicketStatus
from tickets.service import change_ticket, create_ticket

CUSTOMER = "+14155550100"
LINK = re.compile(r"http://testserver\.local/survey/([A-Za-z0-9_-]{40,64})")


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with running() as server:
        yield server


@pytest.fixture
async def agent(rt: Runtime) -> Person:
    return await make_person(rt, "agent@test.local", Role.agent, None)


async def sms_conversation(
    rt: Runtime, standin: TwilioStandIn, *, phone: str = CUSTOMER, sid: str = "1"
) -> int:
    """A conversation the customer opened by SMS (the inbox sends through the stand-in)."""
    async with rt.db.read() as session:
        inbox = await session.get(Inbox, "sms")
    if inbox is None:
        await make_inbox(rt, api_base_url=standin.url)
    result = await ingest(rt, sms("my bill is wrong", sid="SM" + sid.rjust(32, "0"), phone=phone))
    return result.conversation_id


async def open_ticket(
    rt: Runtime,
    *,
    conversation_id: int | None = None,
    customer_id: int | None = None,
    assignee_id: int | None = None,
) -> int:
    async with rt.db.write() as session:
        ticket = await create_ticket(
            session,
            clock=rt.clock,
            subject="Wrong bill",
            conversation_id=conversation_id,
            customer_id=customer_id,
            assignee_id=assignee_id,
            acting_agent_id=assignee_id,
        )
        return ticket.id


async def set_status(rt: Runtime, ticket_id: int, status: TicketStatus) -> None:
    async with rt.db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        assert await change_ticket(
            session, ticket, clock=rt.clock, acting_agent_id=None, status=status
        )


async def all_surveys(rt: Runtime) -> list[SatisfactionSurvey]:
    async with rt.db.read() as session:
        return list(
            await session.scalars(select(SatisfactionSurvey).order_by(SatisfactionSurvey.id))
        )


async def the_survey(rt: Runtime) -> SatisfactionSurvey:
    [survey] = await all_surveys(rt)
    return survey


async def events_of(rt: Runtime, kind: str) -> list[dict[str, Any]]:
    async with rt.db.read() as session:
        rows = await session.scalars(
            select(DomainEvent).where(DomainEvent.type == kind).order_by(DomainEvent.id)
        )
        return [dict(e.payload) for e in rows]


async def survey_messages(rt: Runtime) -> list[Message]:
    async with rt.db.read() as session:
        return list(
            await session.scalars(
                select(Message).where(Message.client_id.like("survey:%")).order_by(Message.id)
            )
        )


async def solved_sms_survey(
    rt: Runtime, standin: TwilioStandIn, agent: Person | None = None
) -> SatisfactionSurvey:
    conversation_id = await sms_conversation(rt, standin)
    ticket_id = await open_ticket(
        rt, conversation_id=conversation_id, assignee_id=agent.id if agent else None
    )
    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)
    return await the_survey(rt)


# -- sending ------------------------------------------------------------------------------------


async def test_solving_a_ticket_sends_the_survey_by_sms_with_the_link(
    rt: Runtime, standin: TwilioStandIn, agent: Person
) -> None:
    conversation_id = await sms_conversation(rt, standin)
    ticket_id = await open_ticket(rt, conversation_id=conversation_id, assignee_id=agent.id)
    await settle(rt)
    assert standin.sent == [] and await all_surveys(rt) == []  # open: nothing yet

    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)

    [request] = standin.sent
    assert request.form["To"] == CUSTOMER
    assert request.form["From"] == "+15005550006"
    survey = await the_survey(rt)
    body = request.form["Body"]
    assert LINK.search(body) and LINK.search(body).group(1) == survey.token  # type: ignore[union-attr]
    assert f"#{ticket_id}" in body and "How satisfied" in body
    assert survey.ticket_id == ticket_id
    assert survey.status == "sent" and survey.reason is None
    assert survey.agent_id == agent.id
    assert survey.conversation_id == conversation_id and survey.inbox_id == "sms"
    assert survey.language == "en"
    assert survey.expires_at - survey.created_at == timedelta(days=7)
    [message] = await survey_messages(rt)
    assert survey.message_id == message.id
    assert message.author_type == "system" and message.agent_id is None
    assert message.extra.get("automatic") is True
    assert message.delivery_status == "sent"
    [requested] = await events_of(rt, "survey.requested")
    assert requested == surveys.survey_view(survey)
    assert "token" not in requested
    assert set(requested) >= {
        "id",
        "ticket_id",
        "customer_id",
        "agent_id",
        "conversation_id",
        "inbox_id",
        "status",
        "score",
        "comment",
        "language",
        "created_at",
        "answered_at",
        "expires_at",
    }


async def test_replays_and_a_second_solve_send_one_survey(
    rt: Runtime, standin: TwilioStandIn, agent: Person
) -> None:
    survey = await solved_sms_survey(rt, standin, agent)
    assert len(standin.sent) == 1

    # The job delivered again (a replayed event), twice at once.
    await asyncio.gather(
        *(surveys.send_survey_job(rt, {"ticket_id": survey.ticket_id}) for _ in range(2))
    )
    # Reopened and solved again: a second ticket.updated to solved.
    await set_status(rt, survey.ticket_id, TicketStatus.open)
    await set_status(rt, survey.ticket_id, TicketStatus.solved)
    await settle(rt)

    assert len(await events_of(rt, "ticket.updated")) == 3
    assert [s.id for s in await all_surveys(rt)] == [survey.id]
    assert len(await survey_messages(rt)) == 1
    assert len(standin.sent) == 1
    assert len(await events_of(rt, "survey.requested")) == 1


async def test_concurrent_runs_for_a_new_ticket_send_once(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    """Without the relay: three runs of the job race for a ticket that has no survey yet."""
    conversation_id = await sms_conversation(rt, standin)
    ticket_id = await open_ticket(rt, conversation_id=conversation_id)
    await set_status(rt, ticket_id, TicketStatus.solved)

    results = await asyncio.gather(*(surveys.send_survey(rt, ticket_id) for _ in range(3)))

    assert sum(r is not None for r in results) == 1
    assert len(await all_surveys(rt)) == 1
    assert len(await survey_messages(rt)) == 1
    assert len(await events_of(rt, "survey.requested")) == 1


async def test_a_ticket_reopened_before_the_job_ran_gets_its_survey_at_the_next_solve(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    conversation_id = await sms_conversation(rt, standin)
    ticket_id = await open_ticket(rt, conversation_id=conversation_id)
    await set_status(rt, ticket_id, TicketStatus.solved)
    await set_status(rt, ticket_id, TicketStatus.open)
    await settle(rt)
    assert await all_surveys(rt) == [] and standin.sent == []

    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)
    assert len(await all_surveys(rt)) == 1 and len(standin.sent) == 1


async def test_a_resolved_conversation_stays_resolved_and_makes_no_routing_work(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    conversation_id = await sms_conversation(rt, standin)
    ticket_id = await open_ticket(rt, conversation_id=conversation_id)
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        await change_conversation(
            session,
            conversation,
            clock=rt.clock,
            acting_agent_id=None,
            status=ConversationStatus.resolved,
        )
    await settle(rt)
    async with rt.db.read() as session:
        mark = int(await session.scalar(select(func.max(DomainEvent.id))) or 0)

    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)

    assert len(standin.sent) == 1
    async with rt.db.read() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        assert conversation.status == ConversationStatus.resolved
        assert conversation.active_key is None
        after = (
            await session.scalars(
                select(DomainEvent).where(DomainEvent.id > mark).order_by(DomainEvent.id)
            )
        ).all()
    kinds = [e.type for e in after]
    assert kinds[:3] == ["ticket.updated", "message.created", "survey.requested"]
    assert not [k for k in kinds if k.startswith("conversation.")]
    envelopes = [{"type": e.type, "conversation_id": e.conversation_id} for e in after]
    assert not any(may_need_task(env) for env in envelopes)


async def test_a_ticket_without_a_conversation_uses_the_customers_latest(
    rt: Runtime, standin: TwilioStandIn, clock: ManualClock
) -> None:
    first = await sms_conversation(rt, standin)
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, first)
        assert conversation is not None
        customer_id = conversation.customer_id
        await change_conversation(
            session,
            conversation,
            clock=rt.clock,
            acting_agent_id=None,
            status=ConversationStatus.resolved,
        )
    clock.advance(60)
    latest = await sms_conversation(rt, standin, sid="2")
    assert latest != first
    ticket_id = await open_ticket(rt, customer_id=customer_id)

    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)

    survey = await the_survey(rt)
    assert survey.conversation_id == latest and survey.status == "sent"
    [request] = standin.sent
    assert request.form["To"] == CUSTOMER and survey.token in request.form["Body"]


async def test_a_customer_without_any_conversation_gets_an_unsendable_survey(
    rt: Runtime, standin: TwilioStandIn
) -> None:
    async with rt.db.write() as session:
        customer = Customer(name="Nobody", created_at=rt.clock.now(), updated_at=rt.clock.now())
        session.add(customer)
        await session.flush()
        customer_id = customer.id
    ticket_id = await open_ticket(rt, customer_id=customer_id)

    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)

    survey = await the_survey(rt)
    assert survey.status == "unsendable"
    assert survey.reason == "the customer has no conversation to send the survey in"
    assert survey.conversation_id is None and survey.message_id is None
    assert await survey_messages(rt) == [] and standin.sent == []
    [requested] = await events_of(rt, "survey.requested")
    assert requested["status"] == "unsendable"
    async with live_app(rt) as live:
        page = await live.client.get(f"/survey/{survey.token}")
        assert page.status_code == 404  # its link never went out


# -- the page -----------------------------------------------------------------------------------


@pytest.fixture
async def live(rt: Runtime) -> AsyncIterator[LiveApp]:
    async with live_app(rt) as app:
        yield app


def radios(html: str) -> list[tuple[str, bool]]:
    found = re.findall(r'<input type="radio" name="score" value="(\d)"[^>]*?(checked)?>', html)
    return [(value, bool(checked)) for value, checked in found]


async def test_the_page_shows_the_form_and_a_get_records_nothing(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    survey = await solved_sms_survey(rt, standin)

    page = await live.client.get(f"/survey/{survey.token}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<html lang="en">' in page.text
    assert "How satisfied are you" in page.text and "Very satisfied" in page.text
    assert f'action="/survey/{survey.token}"' in page.text
    assert "<script" not in page.text
    assert radios(page.text) == [(str(n), False) for n in range(1, 6)]

    chosen = await live.client.get(f"/survey/{survey.token}", params={"score": "4"})
    assert radios(chosen.text) == [(str(n), n == 4) for n in range(1, 6)]
    odd = await live.client.get(f"/survey/{survey.token}", params={"score": "9"})
    assert odd.status_code == 200 and not any(c for _, c in radios(odd.text))

    assert (await the_survey(rt)).score is None
    assert await events_of(rt, "survey.answered") == []


async def test_post_records_and_a_second_post_changes_the_answer(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp, clock: ManualClock
) -> None:
    survey = await solved_sms_survey(rt, standin)
    url = f"/survey/{survey.token}"

    first = await live.client.post(
        url, data={"score": "5", "comment": "<script>alert(1)</script> quick & kind"}
    )
    assert first.status_code == 200
    assert "Thank you for your feedback" in first.text
    assert "<script>alert(1)</script>" not in first.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; quick &amp; kind" in first.text
    answered = await the_survey(rt)
    assert answered.status == "answered" and answered.score == 5
    assert answered.comment == "<script>alert(1)</script> quick & kind"
    assert answered.answered_at == clock.now()

    # The page now shows the answer given; a changed answer replaces it.
    again = await live.client.get(url)
    assert radios(again.text) == [(str(n), n == 5) for n in range(1, 6)]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in again.text
    clock.advance(3600)
    second = await live.client.post(url, data={"score": "2", "comment": ""})
    assert second.status_code == 200
    changed = await the_survey(rt)
    assert (changed.score, changed.comment) == (2, None)
    assert changed.answered_at == clock.now()
    answers = await events_of(rt, "survey.answered")
    assert [(a["score"], a["status"]) for a in answers] == [(5, "answered"), (2, "answered")]
    assert answers[-1] == surveys.survey_view(changed)


async def test_bad_answers_are_400_and_change_nothing(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    survey = await solved_sms_survey(rt, standin)
    url = f"/survey/{survey.token}"
    assert (await live.client.post(url, data={"score": "4"})).status_code == 200

    for data in ({"score": "6"}, {"score": "0"}, {"score": "abc"}, {"comment": "no score"}, {}):
        refused = await live.client.post(url, data=data)
        assert refused.status_code == 400, data
        assert "Please choose one of the five answers." in refused.text
    long = await live.client.post(url, data={"score": "1", "comment": "x" * 2001})
    assert long.status_code == 400
    assert "at most 2000 characters" in long.text
    assert "<form" in long.text  # the form again, with what was typed
    just = await live.client.post(url, data={"score": "1", "comment": "y" * 2000})
    assert just.status_code == 200
    assert (await the_survey(rt)).score == 1

    huge = await live.client.post(url, data={"score": "3", "comment": "z" * (1024 * 1024)})
    assert huge.status_code == 413
    assert "The form was too large." in huge.text
    assert (await the_survey(rt)).score == 1
    assert len(await events_of(rt, "survey.answered")) == 2


async def test_unknown_and_expired_surveys(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp, clock: ManualClock
) -> None:
    survey = await solved_sms_survey(rt, standin)
    url = f"/survey/{survey.token}"

    for path in ("/survey/not-a-token", "/survey/" + "a" * 43, "/survey/" + "b" * 500):
        assert (await live.client.get(path)).status_code == 404
        assert (await live.client.post(path, data={"score": "5"})).status_code == 404

    clock.set(survey.expires_at - timedelta(seconds=1))
    assert (await live.client.post(url, data={"score": "4"})).status_code == 200
    clock.set(survey.expires_at)
    closed = await live.client.get(url)
    assert closed.status_code == 410
    assert "This survey is closed" in closed.text and "<form" not in closed.text
    late = await live.client.post(url, data={"score": "1"})
    assert late.status_code == 410
    assert (await the_survey(rt)).score == 4
    assert len(await events_of(rt, "survey.answered")) == 1


async def test_a_turkish_customer_gets_a_turkish_message_and_page(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp
) -> None:
    conversation_id = await sms_conversation(rt, standin)
    async with rt.db.write() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        customer = await session.get(Customer, conversation.customer_id)
        assert customer is not None
        customer.locale = "tr-TR"
    ticket_id = await open_ticket(rt, conversation_id=conversation_id)
    await set_status(rt, ticket_id, TicketStatus.solved)
    await settle(rt)

    survey = await the_survey(rt)
    assert survey.language == "tr"
    [request] = standin.sent
    assert "talebiniz çözüldü" in request.form["Body"] and survey.token in request.form["Body"]
    page = await live.client.get(f"/survey/{survey.token}")
    assert '<html lang="tr">' in page.text
    assert "Aldığınız destekten ne kadar memnun kaldınız?" in page.text
    assert "Çok memnunum" in page.text
    thanks = await live.client.post(f"/survey/{survey.token}", data={"score": "5"})
    assert "Geri bildiriminiz için teşekkür ederiz!" in thanks.text
    assert "Yanıtınız: Çok memnunum." in thanks.text
    bad = await live.client.post(f"/survey/{survey.token}", data={"score": "x"})
    assert bad.status_code == 400 and "Lütfen beş yanıttan birini seçin." in bad.text


# -- the list API -------------------------------------------------------------------------------


async def test_the_list_api_filters_and_includes_merged_customers(
    rt: Runtime, standin: TwilioStandIn, live: LiveApp, agent: Person, clock: ManualClock
) -> None:
    other = await make_person(rt, "other@test.local", Role.agent, None)
    first = await sms_conversation(rt, standin)
    second = await sms_conversation(rt, standin, phone="+14155550111", sid="2")
    third = await sms_conversation(rt, standin, phone="+14155550122", sid="3")
    tickets = [
        await open_ticket(rt, conversation_id=first, assignee_id=agent.id),
        await open_ticket(rt, conversation_id=second, assignee_id=other.id),
        await open_ticket(rt, conversation_id=third, assignee_id=agent.id),
    ]
    made = []
    for ticket_id in tickets:
        await set_status(rt, ticket_id, TicketStatus.solved)
        made.append(await surveys.send_survey(rt, ticket_id))
        clock.advance(1)
    assert all(made)
    by_ticket = {s.ticket_id: s for s in await all_surveys(rt)}
    customers = [by_ticket[t].customer_id for t in tickets]
    # The second customer turns out to be the first: merged into them.
    async with rt.db.write() as session:
        await merge_customers(
            session,
            source_id=customers[1],
            target_id=customers[0],
            clock=rt.clock,
            acting_agent_id=None,
        )

    async def listed(**params: Any) -> list[int]:
        response = await live.client.get("/api/v1/surveys", params=params, headers=agent.headers)
        assert response.status_code == 200, response.text
        return [item["ticket_id"] for item in response.json()]

    assert await listed() == tickets[::-1]  # newest first
    assert await listed(customer_id=customers[0]) == [tickets[1], tickets[0]]
    assert await listed(customer_id=customers[2]) == [tickets[2]]
    assert await listed(ticket_id=tickets[1]) == [tickets[1]]
    assert await listed(agent_id=agent.id) == [tickets[2], tickets[0]]
    assert await listed(agent_id=other.id, customer_id=customers[0]) == [tickets[1]]
    assert await listed(limit=1, offset=1) == [tickets[1]]
    assert await listed(status="answered") == []
    response = await live.client.get(
        "/api/v1/surveys", params={"ticket_id": tickets[0]}, headers=agent.headers
    )
    [item] = response.json()
    assert item == surveys.survey_view(by_ticket[tickets[0]]) and "token" not in item

    for params, field in (
        ({"customer_id": "abc"}, "customer_id"),
        ({"agent_id": "-1"}, "agent_id"),
        ({"ticket_id": "1.5"}, "ticket_id"),
        ({"limit": "1000"}, "limit"),
        ({"status": "lost"}, "status"),
        ({"colour": "red"}, "colour"),
    ):
        refused = await live.client.get("/api/v1/surveys", params=params, headers=agent.headers)
        assert refused.status_code == 400, params
        assert refused.json()["detail"].startswith(f"{field}:")
        assert refused.json()["extra"]["field"] == field
    assert (await live.client.get("/api/v1/surveys")).status_code == 401

    # The summary: answered ones only, CSAT = share of 4 and 5.
    for ticket_id, score in zip(tickets, ("5", "2", "4"), strict=True):
        token = by_ticket[ticket_id].token
        assert (await live.client.post(f"/survey/{token}", data={"score": score})).is_success
    summary = await live.client.get("/api/v1/surveys/summary", headers=agent.headers)
    assert summary.status_code == 200
    body = summary.json()
    assert (body["answered"], body["satisfied"], body["csat_percent"]) == (3, 2, 66.7)
    assert body["scores"] == {"1": 0, "2": 1, "3": 0, "4": 1, "5": 1}
    today = clock.now().date()
    empty = await live.client.get(
        "/api/v1/surveys/summary",
        params={"to": today.isoformat()},
        headers=agent.headers,
    )
    assert empty.json()["answered"] == 0 and empty.json()["csat_percent"] is None
    bad = await live.client.get(
        "/api/v1/surveys/summary", params={"from": "yesterday"}, headers=agent.headers
    )
    assert bad.status_code == 400 and bad.json()["extra"]["field"] == "from"


# -- web chat -----------------------------------------------------------------------------------


def chat_url(live: LiveApp, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"inbox": "webchat", **params}.items())
    return live.url.replace("http://", "ws://") + f"/ws/chat?{query}"


async def test_a_web_chat_visitor_gets_the_survey_and_answers_it_on_the_socket(
    rt: Runtime, agent: Person
) -> None:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    async with (
        live_app(rt) as live,
        connect(chat_url(live)) as visitor,
        connect(chat_url(live)) as stranger,
    ):
        await recv(visitor, "hello")
        await send(visitor, "message.send", client_id="c1", text="My order never came")
        conversation_id = (await recv(visitor, "message.ack"))["data"]["conversation_id"]
        token = (await recv(stranger, "hello"))["data"]["visitor_token"]
        await send(stranger, "message.send", client_id="c1", text="Hello?")
        await recv(stranger, "message.ack")
        await relay(rt)
        ticket_id = await open_ticket(rt, conversation_id=conversation_id, assignee_id=agent.id)
        await set_status(rt, ticket_id, TicketStatus.solved)
        await settle(rt)

        survey = await the_survey(rt)
        request = await recv(visitor, "survey.request")
        assert request["id"] > 0
        data = request["data"]
        assert data["survey_id"] == survey.id and data["token"] == survey.token
        assert data["conversation_id"] == conversation_id
        assert data["expires_at"] == surveys.survey_view(survey)["expires_at"]
        assert data["language"] == "en" and len(data["text"]["choices"]) == 5
        # The request message itself is in the chat too, with the link.
        async with rt.db.read() as session:
            message = await session.get(Message, survey.message_id)
        assert message is not None and message.conversation_id == conversation_id
        assert survey.token in message.text

        # Another visitor sees nothing of it and cannot answer it, by token or by id.
        seen = await drain(stranger, quiet=1.0)
        assert not [f for f in seen if f["type"] == "survey.request"]
        assert all(survey.token not in json.dumps(f) for f in seen)
        await send(stranger, "survey.answer", token=survey.token, score=1)
        refused = await recv(stranger, "error")
        assert refused["data"]["code"] == "not_found" and refused["data"]["for"] == "survey.answer"
        await send(stranger, "survey.answer", survey_id=survey.id, score=1)
        assert (await recv(stranger, "error"))["data"]["code"] == "not_found"
        assert (await the_survey(rt)).score is None

        # The visitor: a bad score is refused with a message, then the answer, then a change.
        await send(visitor, "survey.answer", token=survey.token, score=9)
        bad = await recv(visitor, "error")
        assert bad["data"]["code"] == "bad_answer" and "score" in bad["data"]["message"]
        await send(visitor, "survey.answer", token=survey.token, score=5, comment="Fast!")
        answered = await recv(visitor, "survey.answered")
        assert answered["data"]["survey_id"] == survey.id
        assert (answered["data"]["score"], answered["data"]["comment"]) == (5, "Fast!")
        await send(visitor, "survey.answer", survey_id=survey.id, score=4)
        assert (await recv(visitor, "survey.answered"))["data"]["score"] == 4

    done = await the_survey(rt)
    assert (done.status, done.score, done.comment) == ("answered", 4, None)
    assert [a["score"] for a in await events_of(rt, "survey.answered")] == [5, 4]
    assert token  # the stranger was a visitor of their own all along


async def test_a_returning_visitor_gets_the_request_again_with_the_answer(
    rt: Runtime, agent: Person, clock: ManualClock
) -> None:
    await make_inbox(rt, "webchat", "webchat", "site", credentials={})
    async with live_app(rt) as live:
        async with connect(chat_url(live)) as visitor:
            hello = await recv(visitor, "hello")
            token, last = hello["data"]["visitor_token"], hello["data"]["last_event_id"]
            await send(visitor, "message.send", client_id="c1", text="Hi")
            conversation_id = (await recv(visitor, "message.ack"))["data"]["conversation_id"]
        ticket_id = await open_ticket(rt, conversation_id=conversation_id, assignee_id=agent.id)
        await set_status(rt, ticket_id, TicketStatus.solved)
        await settle(rt)
        survey = await the_survey(rt)
        await surveys.record_answer(rt, token=survey.token, score=3, comment="ok")
        await relay(rt)

        # Back after the request went out (a reload: the widget resumes after the last event
        # it saw): the open survey follows the history, with the answer given meanwhile.
        async with connect(chat_url(live, visitor=token)) as visitor:
            await recv(visitor, "history")
            frames = await drain(visitor, quiet=1.0)
        [request] = [f for f in frames if f["type"] == "survey.request"]
        assert request["data"]["survey_id"] == survey.id
        assert (request["data"]["score"], request["data"]["comment"]) == (3, "ok")
        # From before the request: the backlog brings the event too (the widget keys cards by
        # survey id, so it shows one).
        async with connect(chat_url(live, visitor=token, last_event_id=last)) as visitor:
            frames = await drain(visitor, quiet=1.0)
        requests = [f for f in frames if f["type"] == "survey.request"]
        assert {f["data"]["survey_id"] for f in requests} == {survey.id}
        assert any("id" in f for f in requests)
        # Once it closed, nothing is offered any more.
        clock.set(survey.expires_at)
        async with connect(chat_url(live, visitor=token, last_event_id=last)) as visitor:
            frames = await drain(visitor, quiet=1.0)
        assert not [f for f in frames if f["type"] == "survey.request"]
        assert [f["type"] for f in frames].count("history") == 1
