"""SLA clocks as supervisors rely on them: start, pause, resume, fulfil, warn, breach, reopen,
policy and priority changes, restarts, escalations and the routing order (§14).

Time is a ManualClock; the consumer and the tick are driven by hand, as the scheduler runs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from contact_center.app import create_app
from contact_center.clock import ManualClock, as_utc
from contact_center.conversations import change_conversation
from contact_center.models import (
    Agent,
    Conversation,
    ConversationStatus,
    DomainEvent,
    Priority,
)
from contact_center.outbound import reply
from contact_center.runtime import Runtime
from routing.models import BusinessHours, Presence, RoutingTask, SlaClock, SlaPolicy
from routing.sla import service_of
from tests.helpers import Org, make_inbox, make_org, relay, run_jobs
from tests.routing_helpers import arrive, engine, make_agent, make_queue, offer_for, presence
from tests.standins.slack import SlackStandIn

# A Monday, 10:00 in Istanbul (UTC+3 all year).
MONDAY_10_IST = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
OFFICE = {
    "timezone": "Europe/Istanbul",
    "weekly": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
}


def targets(**minutes: int) -> dict[str, Any]:
    """The same calendar-time targets for every priority."""
    per_metric = {m: {"minutes": v, "business": False} for m, v in minutes.items()}
    return {p.name: per_metric for p in Priority}


async def make_policy(
    rt: Runtime,
    name: str = "Standard",
    *,
    targets_: dict[str, Any] | None = None,
    calendar: dict[str, Any] | None = None,
    **kw: Any,
) -> int:
    now = rt.clock.now()
    async with rt.db.write() as session:
        hours_id = None
        if calendar is not None:
            hours = BusinessHours(
                name=f"{name} hours", calendar=calendar, created_at=now, updated_at=now
            )
            session.add(hours)
            await session.flush()
            hours_id = hours.id
        policy = SlaPolicy(
            name=name,
            position=kw.pop("position", 0),
            active=True,
            conditions=kw.pop("conditions", {}),
            targets=targets_ or targets(first_response=30, resolution=240),
            business_hours_id=hours_id,
            warn_at=kw.pop("warn_at", 0.8),
            escalations=kw.pop("escalations", []),
            created_at=now,
            updated_at=now,
        )
        session.add(policy)
        await session.flush()
        return policy.id


async def sla_pass(rt: Runtime) -> None:
    """What the scheduler does every second: relay (positions), then the SLA consumer + tick."""
    await relay(rt)
    await service_of(rt).run_once()


async def clocks(rt: Runtime, conversation_id: int, metric: str | None = None) -> list[SlaClock]:
    async with rt.db.read() as session:
        query = select(SlaClock).where(SlaClock.conversation_id == conversation_id)
        if metric:
            query = query.where(SlaClock.metric == metric)
        return list((await session.scalars(query.order_by(SlaClock.id))).all())


async def one(rt: Runtime, conversation_id: int, metric: str) -> SlaClock:
    found = await clocks(rt, conversation_id, metric)
    assert len(found) == 1, [(c.metric, c.status) for c in found]
    return found[0]


async def agent_reply(
    rt: Runtime, conversation_id: int, agent_id: int, *, private: bool = False
) -> None:
    async with rt.db.write() as session:
        agent = await session.get(Agent, agent_id)
        await reply(
            session,
            conversation_id=conversation_id,
            agent=agent,
            text="note" if private else "On it.",
            clock=rt.clock,
            private=private,
        )


async def set_status(rt: Runtime, conversation_id: int, status: ConversationStatus) -> None:
    async with rt.db.write() as session:
        conv = await session.get(Conversation, conversation_id)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, status=status
        )


async def set_priority(rt: Runtime, conversation_id: int, priority: Priority) -> None:
    async with rt.db.write() as session:
        conv = await session.get(Conversation, conversation_id)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, priority=priority
        )


async def fired(rt: Runtime, kind: str) -> list[dict[str, Any]]:
    async with rt.db.read() as session:
        rows = (
            await session.scalars(
                select(DomainEvent).where(DomainEvent.type == kind).order_by(DomainEvent.id)
            )
        ).all()
        return [r.payload for r in rows]


def at(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


@pytest.fixture
async def org(rt: Runtime) -> Org:
    await make_inbox(rt)
    return await make_org(rt)


# --------------------------------------------------------------------------- the clocks


async def test_first_response_is_met_by_a_public_agent_reply_only(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(rt)
    cid = await arrive(rt)
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert first.status == "running"
    assert at(first.due_at) == MONDAY_10_IST + timedelta(minutes=30)
    assert (await one(rt, cid, "resolution")).status == "running"

    clock.advance(minutes=5)
    await agent_reply(rt, cid, org.agent.id, private=True)  # an internal note
    await sla_pass(rt)
    assert (await one(rt, cid, "first_response")).status == "running"

    clock.advance(minutes=5)
    await agent_reply(rt, cid, org.agent.id)
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert first.status == "fulfilled"
    assert at(first.closed_at) == MONDAY_10_IST + timedelta(minutes=10)
    assert first.breached_at is None
    assert first.consumed_seconds == pytest.approx(600)


async def test_business_hours_target_runs_only_while_open(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    # Friday 16:30 Istanbul; 60 business minutes: 30 on Friday, 30 on Monday from 09:00.
    friday = datetime(2026, 11, 27, 13, 30, tzinfo=UTC)
    clock.set(friday)
    await make_policy(
        rt,
        targets_={p.name: {"first_response": {"minutes": 60, "business": True}} for p in Priority},
        calendar=OFFICE,
    )
    cid = await arrive(rt)
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert at(first.due_at) == datetime(2026, 11, 30, 6, 30, tzinfo=UTC)  # Monday 09:30 local

    # Saturday: nothing is consumed over the weekend; the API tells the time left.
    clock.set(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    await sla_pass(rt)
    assert await fired(rt, "sla.breached") == []


async def test_pending_pauses_and_the_customers_reply_resumes(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(rt, targets_=targets(first_response=60, resolution=600))
    phone = "+14155559001"
    cid = await arrive(rt, phone=phone)
    await sla_pass(rt)

    clock.advance(minutes=20)
    await set_status(rt, cid, ConversationStatus.pending)
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert first.status == "paused" and first.due_at is None
    assert first.consumed_seconds == pytest.approx(20 * 60)

    clock.advance(hours=5)  # waiting on the customer: no breach however long
    await sla_pass(rt)
    assert await fired(rt, "sla.breached") == []

    assert await arrive(rt, "here is the info", phone=phone) == cid  # back to open
    await sla_pass(rt)
    resumed = clock.now()
    first = await one(rt, cid, "first_response")
    assert first.status == "running"
    assert at(first.due_at) == resumed + timedelta(minutes=40)
    resolution = await one(rt, cid, "resolution")
    assert at(resolution.due_at) == resumed + timedelta(minutes=600 - 20)


async def test_warning_and_breach_fire_exactly_once(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(rt, targets_=targets(first_response=10), warn_at=0.5)
    cid = await arrive(rt)
    await sla_pass(rt)

    clock.advance(minutes=4)
    await sla_pass(rt)
    assert await fired(rt, "sla.warning") == []
    clock.advance(minutes=1)
    for _ in range(3):
        await sla_pass(rt)
    warnings = await fired(rt, "sla.warning")
    assert [(w["conversation_id"], w["metric"]) for w in warnings] == [(cid, "first_response")]

    clock.advance(minutes=5)
    for _ in range(3):
        await sla_pass(rt)
    breaches = await fired(rt, "sla.breached")
    assert [(b["conversation_id"], b["metric"]) for b in breaches] == [(cid, "first_response")]
    assert datetime.fromisoformat(breaches[0]["at"]) == MONDAY_10_IST + timedelta(minutes=10)
    first = await one(rt, cid, "first_response")
    assert first.status == "running"  # still owed an answer, and breached

    # Answered late: fulfilled, still breached, no second event.
    await agent_reply(rt, cid, org.agent.id)
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert first.status == "fulfilled" and first.breached_at is not None
    assert len(await fired(rt, "sla.breached")) == 1
    assert len(await fired(rt, "sla.warning")) == 1


async def test_a_scheduler_that_was_down_applies_events_at_their_own_times(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(rt, targets_=targets(first_response=30))
    on_time = await arrive(rt)
    late = await arrive(rt)
    await sla_pass(rt)

    # The scheduler stops; one reply comes at +10 min, the other at +45 min (after its due).
    clock.advance(minutes=10)
    await agent_reply(rt, on_time, org.agent.id)
    clock.advance(minutes=35)
    await agent_reply(rt, late, org.agent.id)
    clock.advance(hours=2)
    await sla_pass(rt)  # back: the events are applied at the times they happened

    good = await one(rt, on_time, "first_response")
    assert good.status == "fulfilled" and good.breached_at is None
    bad = await one(rt, late, "first_response")
    assert bad.status == "fulfilled"
    assert at(bad.breached_at) == MONDAY_10_IST + timedelta(minutes=30)
    assert [b["conversation_id"] for b in await fired(rt, "sla.breached")] == [late]

    # A second consumer (a restart) reads from the stored mark: nothing is applied twice.
    rt.extras.pop("sla")
    await sla_pass(rt)
    assert len(await clocks(rt, on_time)) == 1
    assert len(await fired(rt, "sla.breached")) == 1


async def test_next_response_periodic_update_resolution_and_reopen(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(
        rt,
        targets_=targets(first_response=30, next_response=20, periodic_update=60, resolution=480),
    )
    phone = "+14155559002"
    cid = await arrive(rt, phone=phone)
    await sla_pass(rt)
    assert await clocks(rt, cid, "next_response") == []  # before the first answer

    clock.advance(minutes=5)
    await agent_reply(rt, cid, org.agent.id)
    await sla_pass(rt)
    update = await one(rt, cid, "periodic_update")
    assert update.status == "running"
    assert at(update.due_at) == clock.now() + timedelta(minutes=60)

    clock.advance(minutes=5)
    await arrive(rt, "and another thing", phone=phone)
    await sla_pass(rt)
    nxt = await one(rt, cid, "next_response")
    assert nxt.status == "running"
    assert at(nxt.due_at) == clock.now() + timedelta(minutes=20)

    clock.advance(minutes=3)
    await agent_reply(rt, cid, org.agent.id)
    await sla_pass(rt)
    assert (await one(rt, cid, "next_response")).status == "fulfilled"
    updates = await clocks(rt, cid, "periodic_update")
    assert [u.status for u in updates] == ["fulfilled", "running"]  # a new cycle per answer

    # The customer writes, then the case is resolved: response clocks stop, resolution is met.
    clock.advance(minutes=1)
    await arrive(rt, "thanks", phone=phone)
    clock.advance(minutes=1)
    await set_status(rt, cid, ConversationStatus.resolved)
    await sla_pass(rt)
    statuses = {
        (c.metric, c.status)
        for c in await clocks(rt, cid)
        if c.closed_at == max(x.closed_at for x in await clocks(rt, cid))
    }
    assert ("next_response", "cancelled") in statuses
    assert ("periodic_update", "cancelled") in statuses
    assert ("resolution", "fulfilled") in statuses
    assert all(c.open_key is None for c in await clocks(rt, cid))

    # Reopened, and the customer writes: a new resolution cycle and a next response owed.
    clock.advance(hours=1)
    await set_status(rt, cid, ConversationStatus.open)
    await sla_pass(rt)
    # Answered before: reopening owes no response until the customer writes.
    assert [c.status for c in await clocks(rt, cid, "next_response")] == [
        "fulfilled",
        "cancelled",
    ]
    assert [c.status for c in await clocks(rt, cid, "first_response")] == ["fulfilled"]
    clock.advance(minutes=7)
    assert await arrive(rt, "it broke again", phone=phone) == cid
    await sla_pass(rt)
    resolutions = await clocks(rt, cid, "resolution")
    assert [r.status for r in resolutions] == ["fulfilled", "running"]
    assert at(resolutions[1].due_at) == clock.now() - timedelta(minutes=7) + timedelta(minutes=480)
    nxt = (await clocks(rt, cid, "next_response"))[-1]
    assert nxt.status == "running" and at(nxt.due_at) == clock.now() + timedelta(minutes=20)


async def test_a_case_resolved_unanswered_owes_its_first_response_again_when_reopened(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(rt, targets_=targets(first_response=30, next_response=20, resolution=480))
    phone = "+14155559003"
    cid = await arrive(rt, phone=phone)
    await sla_pass(rt)
    clock.advance(minutes=10)
    await set_status(rt, cid, ConversationStatus.resolved)  # closed without a public answer
    await sla_pass(rt)
    assert [c.status for c in await clocks(rt, cid, "first_response")] == ["cancelled"]

    # Reopened by an agent: the first reply is owed again, with the full target.
    clock.advance(hours=1)
    await set_status(rt, cid, ConversationStatus.open)
    await sla_pass(rt)
    firsts = await clocks(rt, cid, "first_response")
    assert [c.status for c in firsts] == ["cancelled", "running"]
    assert at(firsts[1].due_at) == clock.now() + timedelta(minutes=30)

    # The customer writes meanwhile: still the first response (no next_response before it).
    clock.advance(minutes=5)
    await arrive(rt, "anyone?", phone=phone)
    await sla_pass(rt)
    assert await clocks(rt, cid, "next_response") == []
    assert len(await clocks(rt, cid, "first_response")) == 2

    clock.advance(minutes=3)
    await agent_reply(rt, cid, org.agent.id)
    await sla_pass(rt)
    firsts = await clocks(rt, cid, "first_response")
    assert firsts[1].status == "fulfilled" and firsts[1].breached_at is None
    assert await clocks(rt, cid, "next_response") == []


async def test_a_priority_change_retargets_the_open_clocks(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    per_priority = targets(first_response=60)
    per_priority["urgent"] = {"first_response": {"minutes": 15, "business": False}}
    await make_policy(rt, targets_=per_priority)
    cid = await arrive(rt)
    await sla_pass(rt)
    clock.advance(minutes=10)
    await set_priority(rt, cid, Priority.urgent)
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert first.target_seconds == 15 * 60
    assert at(first.due_at) == MONDAY_10_IST + timedelta(minutes=15)  # 10 used, 5 left


@pytest.mark.parametrize(
    ("conditions", "specific"),
    [
        ({"channels": ["sms"]}, True),
        ({"channels": ["email", "whatsapp"]}, False),
        ({"inbox_ids": ["sms"]}, True),
        ({"inbox_ids": ["another-inbox"]}, False),
        ({"tiers": ["standard"]}, True),
        ({"tiers": ["vip"]}, False),
        ({"channels": ["sms"], "tiers": ["vip"]}, False),  # every condition given must hold
    ],
)
async def test_channel_inbox_and_tier_conditions_choose_the_policy(
    rt: Runtime, clock: ManualClock, org: Org, conditions: dict[str, list[str]], specific: bool
) -> None:
    clock.set(MONDAY_10_IST)
    await make_policy(
        rt, "Specific", position=0, conditions=conditions, targets_=targets(first_response=15)
    )
    fallback = await make_policy(rt, "Fallback", position=1, targets_=targets(first_response=60))
    cid = await arrive(rt)  # SMS inbox "sms", a new customer of tier "standard"
    await sla_pass(rt)
    first = await one(rt, cid, "first_response")
    assert first.target_seconds == (15 if specific else 60) * 60
    assert (first.policy_id == fallback) is not specific


async def test_a_customers_tier_change_rechooses_the_policy_of_their_open_conversations(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    vip = await make_policy(
        rt, "VIP", position=0, conditions={"tiers": ["vip"]}, targets_=targets(first_response=15)
    )
    standard = await make_policy(
        rt, "Standard", position=1, targets_=targets(first_response=60, resolution=600)
    )
    phone = "+14155559004"
    done = await arrive(rt, phone=phone)
    await set_status(rt, done, ConversationStatus.resolved)
    cid = await arrive(rt, "again", phone=phone)
    assert cid != done
    await sla_pass(rt)
    assert (await one(rt, cid, "first_response")).policy_id == standard
    async with rt.db.read() as session:
        customer_id = (await session.get(Conversation, cid)).customer_id  # type: ignore[union-attr]

    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    auth = {"Authorization": f"Bearer {org.supervisor.token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t.local", headers=auth) as c:
        clock.advance(minutes=10)
        changed = await c.patch(f"/api/v1/customers/{customer_id}", json={"tier": "vip"})
        assert changed.status_code == 200, changed.text
        await sla_pass(rt)
        first = await one(rt, cid, "first_response")
        assert (first.policy_id, first.target_seconds) == (vip, 15 * 60)
        assert at(first.due_at) == MONDAY_10_IST + timedelta(minutes=15)  # 10 used, 5 left
        # The VIP policy has no resolution target: that clock stops.
        assert (await one(rt, cid, "resolution")).status == "cancelled"
        # The resolved conversation keeps what it had.
        assert {c.policy_id for c in await clocks(rt, done)} == {standard}

        clock.advance(minutes=2)
        back = await c.patch(f"/api/v1/customers/{customer_id}", json={"tier": "standard"})
        assert back.status_code == 200
        await sla_pass(rt)
        first = await one(rt, cid, "first_response")
        assert (first.policy_id, first.target_seconds) == (standard, 60 * 60)
        assert at(first.due_at) == MONDAY_10_IST + timedelta(minutes=60)
        resolutions = await clocks(rt, cid, "resolution")
        assert [r.status for r in resolutions] == ["cancelled", "running"]

        # Renaming (no tier change) moves nothing.
        await c.patch(f"/api/v1/customers/{customer_id}", json={"name": "Renamed"})
        await sla_pass(rt)
        assert len(await clocks(rt, cid)) == 3


async def test_a_merge_gives_the_moved_conversations_the_targets_tier(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    vip = await make_policy(
        rt, "VIP", position=0, conditions={"tiers": ["vip"]}, targets_=targets(first_response=15)
    )
    await make_policy(rt, "Standard", position=1, targets_=targets(first_response=60))
    moved = await arrive(rt, phone="+14155559005")  # a standard customer
    kept = await arrive(rt, phone="+14155559006")
    await sla_pass(rt)
    async with rt.db.write() as session:
        source = (await session.get(Conversation, moved)).customer_id  # type: ignore[union-attr]
        target_conv = await session.get(Conversation, kept)
        assert target_conv is not None
        target = target_conv.customer_id
        from contact_center.models import Customer

        row = await session.get(Customer, target)
        assert row is not None
        row.tier = "vip"  # set directly: no event, so only the merge can move `moved`

    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    auth = {"Authorization": f"Bearer {org.agent.token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t.local", headers=auth) as c:
        clock.advance(minutes=5)
        merged = await c.post(
            "/api/v1/customers/merge", json={"source_id": source, "target_id": target}
        )
        assert merged.status_code == 200, merged.text
    await sla_pass(rt)
    first = await one(rt, moved, "first_response")
    assert (first.policy_id, first.target_seconds) == (vip, 15 * 60)
    assert at(first.due_at) == MONDAY_10_IST + timedelta(minutes=15)


async def test_policy_changes_through_the_api_recompute_open_clocks(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    admin = {"Authorization": f"Bearer {org.admin.token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t.local", headers=admin
    ) as c:
        bad = await c.post(
            "/api/v1/sla-policies",
            json={"name": "x", "targets": {"normal": {"first_response": {"minutes": 0}}}},
        )
        assert bad.status_code == 400 and "targets.normal.first_response.minutes" in bad.text
        bad = await c.post(
            "/api/v1/business-hours", json={"name": "x", "calendar": {"timezone": "Mars/Base"}}
        )
        assert bad.status_code == 400 and "timezone" in bad.text
        hours = await c.post("/api/v1/business-hours", json={"name": "Office", "calendar": OFFICE})
        assert hours.status_code == 201, hours.text
        created = await c.post(
            "/api/v1/sla-policies",
            json={"name": "Standard", "targets": targets(first_response=30)},
        )
        assert created.status_code == 201, created.text
        policy_id = created.json()["id"]

        cid = await arrive(rt)
        await sla_pass(rt)
        clock.advance(minutes=10)
        # Business hours now, and a longer target: 10 minutes used, 50 business minutes left.
        changed = await c.patch(
            f"/api/v1/sla-policies/{policy_id}",
            json={
                "targets": {
                    p.name: {"first_response": {"minutes": 60, "business": True}} for p in Priority
                },
                "business_hours_id": hours.json()["id"],
            },
        )
        assert changed.status_code == 200, changed.text
        await sla_pass(rt)
        first = await one(rt, cid, "first_response")
        assert first.target_seconds == 3600 and first.business
        assert at(first.due_at) == MONDAY_10_IST + timedelta(minutes=60)

        seen = await c.get(f"/api/v1/conversations/{cid}/sla")
        assert seen.status_code == 200
        view = {v["metric"]: v for v in seen.json()}
        assert view["first_response"]["remaining_seconds"] == pytest.approx(50 * 60)

        # A policy that no longer matches: the clocks stop (cancelled, not breached).
        await c.patch(
            f"/api/v1/sla-policies/{policy_id}", json={"conditions": {"priorities": ["urgent"]}}
        )
        await sla_pass(rt)
        assert (await one(rt, cid, "first_response")).status == "cancelled"


# --------------------------------------------------------------------------- routing order


async def test_the_earliest_deadline_is_offered_first(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    clock.set(MONDAY_10_IST)
    per_priority = targets(first_response=60)
    per_priority["urgent"] = {"first_response": {"minutes": 5, "business": False}}
    await make_policy(rt, targets_=per_priority, conditions={"priorities": ["normal", "urgent"]})
    await make_queue(rt, is_default=True)
    agent = await make_agent(
        rt, "Solo", capacity={"chat": 1, "email": 1, "voice": 1}, available=False
    )

    no_sla = await arrive(rt)
    await set_priority(rt, no_sla, Priority.low)  # no policy covers low: its clocks stop
    clock.advance(seconds=10)
    normal = await arrive(rt)  # due in 60 min
    clock.advance(seconds=10)
    urgent = await arrive(rt)  # due in 5 min: first although it came last
    await set_priority(rt, urgent, Priority.urgent)
    await sla_pass(rt)
    await engine(rt).run_pass()  # tasks, nobody available
    await sla_pass(rt)  # re-ranks the live tasks by their deadlines

    async with rt.db.read() as session:
        ranks = dict(
            (await session.execute(select(RoutingTask.conversation_id, RoutingTask.rank))).all()
        )
    assert ranks[urgent] < ranks[normal] < ranks[no_sla]

    # One agent with room for one chat: the one offer goes to the earliest deadline.
    await presence(rt, agent, Presence.available)
    await engine(rt).run_pass()
    offered = [cid for cid in (no_sla, normal, urgent) if await offer_for(rt, cid) is not None]
    assert offered == [urgent]


# --------------------------------------------------------------------------- escalation


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn("xoxb-sla") as standin:
        yield standin


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 OK"


@pytest.fixture
async def smtp_sink() -> AsyncIterator[tuple[Sink, int]]:
    from aiosmtpd.smtp import SMTP

    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, loop=loop), "127.0.0.1", 0)
    try:
        yield sink, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_breach_escalates_once_priority_queue_email_and_slack(
    rt: Runtime, clock: ManualClock, org: Org, slack: SlackStandIn, smtp_sink: tuple[Sink, int]
) -> None:
    sink, port = smtp_sink
    clock.set(MONDAY_10_IST)
    await make_inbox(
        rt,
        "slack",
        "slack",
        "T0001",
        api_base_url=slack.api_url,
        credentials={"bot_token": "xoxb-sla"},
    )
    await make_inbox(
        rt,
        "email",
        "email",
        "support@example.com",
        credentials={"smtp_host": "127.0.0.1", "smtp_port": str(port)},
    )
    await make_queue(rt, "Front", is_default=True)
    escalations_queue = await make_queue(rt, "Escalations")
    await make_policy(
        rt,
        targets_=targets(first_response=10),
        escalations=[
            {"on": "breach", "action": "raise_priority"},
            {
                "on": "breach",
                "metrics": ["first_response"],
                "action": "queue",
                "queue_id": escalations_queue,
            },
            {"on": "warning", "action": "email", "inbox_id": "email", "to": "lead@example.com"},
            {"on": "breach", "action": "slack", "inbox_id": "slack", "channel": "C-SUPERVISORS"},
        ],
    )
    cid = await arrive(rt)
    await sla_pass(rt)
    await engine(rt).run_pass()

    clock.advance(minutes=8)  # the warning: an email to the team lead
    await sla_pass(rt)
    await relay(rt)
    await run_jobs(rt)
    assert [to for to, _ in sink.received] == [["lead@example.com"]]
    assert b"first response is about to breach" in sink.received[0][1]
    assert slack.posted() == []

    clock.advance(minutes=2)  # the breach
    await sla_pass(rt)
    await relay(rt)
    await run_jobs(rt)
    async with rt.db.read() as session:
        conv = await session.get(Conversation, cid)
        assert conv is not None and conv.priority == Priority.high.value
        task = await session.scalar(
            select(RoutingTask).where(RoutingTask.active_conversation_id == cid)
        )
        assert task is not None and task.queue_id == escalations_queue
    posted = slack.posted()
    assert [p["channel"] for p in posted] == ["C-SUPERVISORS"]
    assert f"conversation #{cid}" in posted[0]["text"]

    # Replays (the relay publishing again, a job run twice) change nothing more.
    from routing.escalation import escalate

    clock_row = await one(rt, cid, "first_response")
    await escalate(rt, {"clock_id": clock_row.id, "kind": "breach"})
    await escalate(rt, {"clock_id": clock_row.id, "kind": "warning"})
    async with rt.db.read() as session:
        conv = await session.get(Conversation, cid)
        assert conv is not None and conv.priority == Priority.high.value
        tasks = await session.scalar(
            select(func.count()).select_from(RoutingTask).where(RoutingTask.conversation_id == cid)
        )
    assert tasks == 2  # the first task and the escalated one
    assert len(slack.posted()) == 1
    assert len(sink.received) == 1


# --------------------------------------------------------------------------- figures


async def test_compliance_and_at_risk_from_a_scripted_hour(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    from routing.sla import at_risk, compliance
    from tests.routing_helpers import make_rule

    clock.set(MONDAY_10_IST)
    t0 = MONDAY_10_IST
    await make_policy(rt, targets_=targets(first_response=10), warn_at=0.5)
    front = await make_queue(rt, "Front", is_default=True)
    billing = await make_queue(rt, "Billing")
    await make_rule(rt, billing, 1, keywords=["invoice"])

    c1 = await arrive(rt, "hello")  # Front: answered at +5 (met)
    c2 = await arrive(rt, "hello again")  # Front: answered at +15 (missed)
    c3 = await arrive(rt, "my invoice")  # Billing: never answered (missed at +10)
    c5 = await arrive(rt, "never mind")  # Front: resolved unanswered at +3 (not counted)
    await sla_pass(rt)
    await engine(rt).run_pass()
    clock.set(t0 + timedelta(minutes=3))
    await set_status(rt, c5, ConversationStatus.resolved)
    clock.set(t0 + timedelta(minutes=5))
    await agent_reply(rt, c1, org.agent.id)
    await sla_pass(rt)
    clock.set(t0 + timedelta(minutes=8))
    c4 = await arrive(rt, "invoice question")  # Billing: warned at +13, due at +18
    await sla_pass(rt)
    await engine(rt).run_pass()
    clock.set(t0 + timedelta(minutes=15))
    await agent_reply(rt, c2, org.agent.id)
    await sla_pass(rt)
    clock.set(t0 + timedelta(minutes=16))
    await sla_pass(rt)

    async with rt.db.read() as session:
        figures = await compliance(session, t0, t0 + timedelta(days=1))
        risky = await at_risk(session)
    # By hand: Front met c1, missed c2 -> 1/2; Billing missed c3 -> 0/1; overall 1/3.
    assert (figures[front].met, figures[front].missed) == (1, 1)
    assert figures[front].share == 0.5
    assert (figures[billing].met, figures[billing].missed) == (0, 1)
    assert figures[billing].share == 0.0
    assert figures[None].share == pytest.approx(1 / 3)
    assert [(r["conversation_id"], r["metric"], r["queue_id"]) for r in risky] == [
        (c4, "first_response", billing)
    ]
    assert c3 not in [r["conversation_id"] for r in risky]  # breached: no longer "at risk"

    # The same targets by channel and by agent (a reply does not assign: give c1 and c2 to
    # the agent), and in the reports API with its CSV.
    async with rt.db.write() as session:
        for cid in (c1, c2):
            conv = await session.get(Conversation, cid)
            assert conv is not None
            conv.assignee_id = org.agent.id
    async with rt.db.read() as session:
        by_channel = await compliance(session, t0, t0 + timedelta(days=1), "channel")
        by_agent = await compliance(session, t0, t0 + timedelta(days=1), "agent")
    assert (by_channel["sms"].met, by_channel["sms"].missed) == (1, 2)
    assert (by_agent[org.agent.id].met, by_agent[org.agent.id].missed) == (1, 1)
    assert None in by_agent and by_agent[None].missed == 2

    app = create_app(runtime=rt, run_scheduler=False)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    boss = {"Authorization": f"Bearer {org.supervisor.token}"}
    params = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat(), "tz": "UTC"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t.local", headers=boss) as c:
        report = await c.get("/api/v1/metrics", params={**params, "group_by": "queue"})
        assert report.status_code == 200, report.text
        rows = {r["key"]: r for r in report.json()["rows"]}
        assert (rows[front]["sla_met"], rows[front]["sla_missed"]) == (1, 1)
        assert rows[front]["sla_compliance"] == 0.5
        assert report.json()["total"]["sla_compliance"] == pytest.approx(1 / 3, abs=1e-4)
        csv_text = (await c.get("/api/v1/metrics.csv", params={**params, "group_by": "agent"})).text
        header, *lines = csv_text.lstrip("\ufeff").splitlines()
        assert header.endswith("sla_met,sla_missed,sla_compliance")
        agent_line = next(line for line in lines if line.split(",")[1] == str(org.agent.id))
        assert agent_line.endswith(",1,1,0.5")


async def test_the_consumer_skips_unrelated_events_without_missing_later_ones(
    rt: Runtime, clock: ManualClock, org: Org
) -> None:
    from contact_center.models import RelayState

    clock.set(MONDAY_10_IST)
    await make_policy(rt)
    agent = await make_agent(rt, "Idle", available=False)
    for state in ("available", "away", "available", "offline"):  # presence events only
        await presence(rt, agent, Presence(state))
    await sla_pass(rt)

    async with rt.db.read() as session:
        mark = await session.scalar(select(RelayState.published).where(RelayState.name == "sla"))
        highest = await session.scalar(select(func.max(DomainEvent.position)))
    assert highest is not None and mark == highest  # moved past what it does not consume

    cid = await arrive(rt)
    await sla_pass(rt)
    assert (await one(rt, cid, "first_response")).status == "running"


async def test_the_consumer_gives_way_to_a_routing_pass_but_never_starves(
    rt: Runtime, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the SLA consumer (on the scheduler's event loop, beside the engine)
    waits between events while a routing pass runs, and goes on when it ends; an engine busy
    without a break holds it back only for GIVE_WAY_SECONDS. SQLite never waits (its open
    write transaction would block the pass)."""
    import routing.sla as sla_module

    await make_inbox(rt)
    await make_policy(rt)
    conv = await arrive(rt, "hello")
    await relay(rt)
    idle = asyncio.Event()  # a pass in progress
    engine(rt).idle = idle
    monkeypatch.setattr(sla_module, "GIVE_WAY_SECONDS", 3600.0)
    consumer = asyncio.create_task(service_of(rt).consume())
    try:
        if backend == "postgres":
            await asyncio.sleep(0.3)
            assert not consumer.done() and await clocks(rt, conv) == []
            idle.set()  # the pass ends
        assert await asyncio.wait_for(consumer, 10) > 0
        assert {c.metric for c in await clocks(rt, conv)} == {"first_response", "resolution"}
        # Busy without a break: the consumer waits its budget, then applies the events.
        monkeypatch.setattr(sla_module, "GIVE_WAY_SECONDS", 0.2)
        idle.clear()
        second = await arrive(rt, "hello again")
        await relay(rt)
        assert await asyncio.wait_for(service_of(rt).consume(), 10) > 0
        assert len(await clocks(rt, second)) == 2
    finally:
        consumer.cancel()
        engine(rt).idle = None
