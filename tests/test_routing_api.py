"""Routing over REST: queue and rule validation, presence, offers, assignment, transfer with a
note; and rule matching on every condition the rules offer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from contact_center.app import create_app
from contact_center.models import Message
from contact_center.runtime import Runtime
from routing.engine import pick_queue, rule_matches
from routing.models import Queue, RoutingRule
from tests.helpers import Org, make_inbox, make_org
from tests.routing_helpers import arrive, assignee, engine, make_queue, offer_for


@pytest.fixture
async def org(rt: Runtime) -> Org:
    org = await make_org(rt)
    await make_inbox(rt)
    return org


@pytest.fixture
async def client(rt: Runtime, org: Org) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        yield c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "Q", "skills": {"billing": 11}}, "skills"),
        ({"name": "Q", "offer_timeout_seconds": 1}, "offer_timeout_seconds"),
        ({"name": "Q", "team_id": 999}, "team_id"),
        ({"name": "Q", "strategy": "random"}, "strategy"),
        ({"name": "Q", "auto_accept": ["fax"]}, "auto_accept"),
        ({"name": "Q", "overflow": [{"after_seconds": 5, "action": "queue"}]}, "overflow"),
        ({"name": "Q", "overflow": [{"after_seconds": 5, "action": "explode"}]}, "overflow"),
        ({"name": "Q", "surprise": 1}, "surprise"),
    ],
)
async def test_bad_queues_are_refused_with_the_field_named(
    client: httpx.AsyncClient, org: Org, rt: Runtime, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/queues", json=body, headers=org.admin.headers)
    assert response.status_code == 400, response.text
    assert field in response.text
    async with rt.db.read() as session:
        assert (await session.scalars(select(Queue))).all() == []


async def test_queue_and_rule_lifecycle(client: httpx.AsyncClient, org: Org, rt: Runtime) -> None:
    h = org.admin.headers
    backup = (await client.post("/api/v1/queues", json={"name": "Backup"}, headers=h)).json()
    created = await client.post(
        "/api/v1/queues",
        json={
            "name": "Billing",
            "skills": {"billing": 2},
            "strategy": "round_robin",
            "auto_accept": ["chat"],
            "overflow": [{"after_seconds": 60, "action": "queue", "queue_id": backup["id"]}],
        },
        headers=h,
    )
    assert created.status_code == 201, created.text
    queue = created.json()
    assert queue["overflow"] == [{"after_seconds": 60, "action": "queue", "queue_id": backup["id"]}]
    again = await client.post("/api/v1/queues", json={"name": "Billing"}, headers=h)
    assert again.status_code == 409
    patched = await client.patch(
        f"/api/v1/queues/{queue['id']}", json={"priority": 3, "language": "tr"}, headers=h
    )
    assert patched.json()["priority"] == 3 and patched.json()["language"] == "tr"
    rule = await client.post(
        "/api/v1/routing-rules",
        json={"queue_id": queue["id"], "keywords": ["fatura"], "min_priority": "high"},
        headers=h,
    )
    assert rule.status_code == 201
    listed = (await client.get("/api/v1/routing-rules", headers=org.supervisor.headers)).json()
    assert listed[0]["keywords"] == ["fatura"] and listed[0]["min_priority"] == "high"
    missing = await client.post("/api/v1/routing-rules", json={"queue_id": 999}, headers=h)
    assert missing.status_code == 400
    assert (await client.delete(f"/api/v1/queues/{queue['id']}", headers=h)).status_code == 204
    async with rt.db.read() as session:
        assert (await session.scalars(select(RoutingRule))).all() == []  # cascaded


async def test_presence_offers_and_transfer_with_a_note(
    client: httpx.AsyncClient, org: Org, rt: Runtime
) -> None:
    front = await make_queue(rt, "Front", is_default=True)
    experts = await make_queue(rt, "Experts")
    me = org.agent
    # An agent sets only their own presence; a supervisor sets anyone's.
    mine = await client.put(
        f"/api/v1/agents/{me.id}/presence", json={"state": "available"}, headers=me.headers
    )
    assert mine.status_code == 200 and mine.json()["state"] == "available"
    other = await client.put(
        f"/api/v1/agents/{org.other_agent.id}/presence",
        json={"state": "available"},
        headers=me.headers,
    )
    assert other.status_code == 403
    bad = await client.put(
        f"/api/v1/agents/{me.id}/presence", json={"state": "asleep"}, headers=me.headers
    )
    assert bad.status_code == 400
    conv = await arrive(rt, "help")
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == me.id and offer.queue_id == front
    # Someone else's offer: 409; one's own: accepted; answering twice: 409.
    stolen = await client.post(f"/api/v1/offers/{offer.id}/accept", headers=org.other_agent.headers)
    assert stolen.status_code == 409
    accepted = await client.post(f"/api/v1/offers/{offer.id}/accept", headers=me.headers)
    assert accepted.json() == {"offer_id": offer.id, "status": "accepted"}
    twice = await client.post(f"/api/v1/offers/{offer.id}/decline", headers=me.headers)
    assert twice.status_code == 409
    assert await assignee(rt, conv) == me.id
    # Transfer to a queue, with a note the customer never sees.
    both = await client.post(
        f"/api/v1/conversations/{conv}/transfer",
        json={"queue_id": experts, "agent_id": me.id},
        headers=me.headers,
    )
    assert both.status_code == 400
    moved = await client.post(
        f"/api/v1/conversations/{conv}/transfer",
        json={"queue_id": experts, "note": "needs an expert on refunds"},
        headers=me.headers,
    )
    assert moved.status_code == 200, moved.text
    assert await assignee(rt, conv) is None
    async with rt.db.read() as session:
        note = await session.scalar(
            select(Message).where(Message.conversation_id == conv, Message.private.is_(True))
        )
    assert note is not None and "needs an expert on refunds" in note.text
    # A supervisor assigns directly; an unknown agent is a clear refusal.
    unknown = await client.post(
        f"/api/v1/conversations/{conv}/assign",
        json={"agent_id": 99999},
        headers=org.supervisor.headers,
    )
    assert unknown.status_code == 409
    direct = await client.post(
        f"/api/v1/conversations/{conv}/assign",
        json={"agent_id": org.other_agent.id},
        headers=org.supervisor.headers,
    )
    assert direct.status_code == 200 and direct.json()["assignee_id"] == org.other_agent.id
    board = (await client.get("/api/v1/presence", headers=org.supervisor.headers)).json()
    states = {row["agent_id"]: row for row in board}
    assert states[me.id]["state"] == "available"
    assert states[org.other_agent.id]["load"]["chat"] == 1


def test_rules_match_every_condition() -> None:
    base: dict[str, Any] = {
        "inbox_id": "sms",
        "channel": "sms",
        "language": "tr",
        "tier": "gold",
        "text": "Faturam iki kez kesildi",
        "priority": 3,
    }
    assert rule_matches({}, **base)
    for conditions, expected in (
        ({"inbox_ids": ["sms"]}, True),
        ({"inbox_ids": ["email"]}, False),
        ({"channels": ["whatsapp"]}, False),
        ({"languages": ["tr", "de"]}, True),
        ({"languages": ["en"]}, False),
        ({"tiers": ["gold"]}, True),
        ({"tiers": ["silver"]}, False),
        ({"keywords": ["FATURAM"]}, True),  # case-insensitive
        ({"keywords": ["iade"]}, False),
        ({"min_priority": "high"}, True),
        ({"min_priority": "urgent"}, False),
        ({"tiers": ["gold"], "keywords": ["iade"]}, False),  # all given conditions must hold
    ):
        assert rule_matches(conditions, **base) is expected, conditions
    assert rule_matches({"languages": ["tr"]}, **{**base, "language": None}) is False


def test_first_matching_rule_wins_then_the_default_queue() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    queues = {
        1: Queue(id=1, name="General", is_default=True, created_at=now),
        2: Queue(id=2, name="VIP", is_default=False, created_at=now),
        3: Queue(id=3, name="Turkish", is_default=False, created_at=now),
    }
    rules = [
        RoutingRule(id=1, position=1, queue_id=2, conditions={"tiers": ["gold"]}),
        RoutingRule(id=2, position=2, queue_id=3, conditions={"languages": ["tr"]}),
    ]
    args: dict[str, Any] = {"inbox_id": "sms", "channel": "sms", "text": "", "priority": 2}
    gold_tr = pick_queue(queues, rules, language="tr", tier="gold", **args)
    plain_tr = pick_queue(queues, rules, language="tr", tier=None, **args)
    nobody = pick_queue(queues, rules, language="en", tier=None, **args)
    assert gold_tr is not None and gold_tr.name == "VIP"
    assert plain_tr is not None and plain_tr.name == "Turkish"
    assert nobody is not None and nobody.name == "General"
    assert pick_queue({}, rules, language="tr", tier="gold", **args) is None


async def test_transfer_rules_offline_target_authority_and_one_transaction(
    client: httpx.AsyncClient, org: Org, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from routing import api as routing_api
    from routing.models import Presence
    from tests.routing_helpers import presence

    front = await make_queue(rt, "Front", is_default=True)
    experts = await make_queue(rt, "Experts")
    me, colleague = org.agent, org.other_agent
    conv = await arrive(rt, "help")
    await engine(rt).assign(conv, me.id, by_agent_id=org.supervisor.id)
    url = f"/api/v1/conversations/{conv}/transfer"

    # To an agent who is offline: refused, clearly; nothing changes.
    offline = await client.post(url, json={"agent_id": colleague.id}, headers=me.headers)
    assert offline.status_code == 409 and "offline" in offline.json()["detail"]
    assert await assignee(rt, conv) == me.id

    # Only the assignee (or a supervisor/admin) may transfer an assigned conversation.
    await presence(rt, colleague.id, Presence.available)
    await presence(rt, org.supervisor.id, Presence.available)
    grab = await client.post(
        url, json={"agent_id": colleague.id, "note": "mine now"}, headers=colleague.headers
    )
    assert grab.status_code == 403, grab.text
    assert await assignee(rt, conv) == me.id

    # The note is written in the transfer's transaction: a note that fails undoes the transfer.
    async def failing_reply(*args: object, **kwargs: object) -> None:
        raise routing_api.ReplyError("the note could not be written")

    with monkeypatch.context() as patch:
        patch.setattr(routing_api, "reply", failing_reply)
        failed = await client.post(
            url, json={"queue_id": experts, "note": "for the experts"}, headers=me.headers
        )
    assert failed.status_code == 400
    assert await assignee(rt, conv) == me.id
    assert await offer_for(rt, conv) is None
    async with rt.db.read() as session:
        from routing.models import RoutingTask

        assert (await session.scalars(select(RoutingTask))).all() == []

    # The assignee transfers to a colleague who is online; a supervisor may move anyone's.
    moved = await client.post(
        url, json={"agent_id": colleague.id, "note": "over to you"}, headers=me.headers
    )
    assert moved.status_code == 200, moved.text
    assert await assignee(rt, conv) == colleague.id
    by_supervisor = await client.post(url, json={"queue_id": front}, headers=org.supervisor.headers)
    assert by_supervisor.status_code == 200, by_supervisor.text
    assert await assignee(rt, conv) is None
    async with rt.db.read() as session:
        notes = (
            await session.scalars(
                select(Message.text).where(
                    Message.conversation_id == conv, Message.private.is_(True)
                )
            )
        ).all()
    assert notes == ["Transfer note: over to you"]


async def test_a_running_engine_follows_queue_and_rule_changes_at_once(
    client: httpx.AsyncClient, org: Org, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running engine keeps queues and rules between changes; a change through the API
    is announced, so the very next arrival is routed by it (not after CONFIG_SECONDS)."""
    import asyncio

    import routing.engine as engine_module
    from tests.routing_helpers import make_agent

    monkeypatch.setattr(engine_module, "CONFIG_SECONDS", 3600.0)
    admin = org.admin.headers
    support = await make_queue(rt, "Support", is_default=True)
    agent = await make_agent(rt, "Agent", capacity={"chat": 5})
    stop = asyncio.Event()
    runner = asyncio.create_task(engine(rt).run(stop))

    async def routed(text: str) -> tuple[int, int | None]:
        conv = await arrive(rt, text)
        await rt.committed()
        async with asyncio.timeout(10):
            while True:
                async with rt.db.read() as session:
                    queue_id = await session.scalar(
                        select(engine_module.RoutingTask.queue_id).where(
                            engine_module.RoutingTask.conversation_id == conv
                        )
                    )
                if queue_id is not None and (
                    await offer_for(rt, conv) is not None or await assignee(rt, conv) is not None
                ):
                    return queue_id, await assignee(rt, conv)
                await asyncio.sleep(0.02)

    try:
        assert await routed("hello") == (support, None)  # offered, not auto-accepted
        response = await client.patch(
            f"/api/v1/queues/{support}", json={"auto_accept": ["chat"]}, headers=admin
        )
        assert response.status_code == 200, response.text
        assert await routed("hello again") == (support, agent)  # auto-accepted now
        created = await client.post("/api/v1/queues", json={"name": "Billing"}, headers=admin)
        assert created.status_code == 201, created.text
        billing = created.json()["id"]
        rule = await client.post(
            "/api/v1/routing-rules",
            json={"queue_id": billing, "keywords": ["invoice"]},
            headers=admin,
        )
        assert rule.status_code == 201, rule.text
        assert (await routed("my invoice is wrong"))[0] == billing
        deleted = await client.delete(f"/api/v1/routing-rules/{rule.json()['id']}", headers=admin)
        assert deleted.status_code == 204
        assert (await routed("another invoice"))[0] == support
    finally:
        stop.set()
        await rt.committed()
        await asyncio.wait_for(runner, 10)
