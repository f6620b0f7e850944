"""Routing variants a queue or agent can be configured with (docs/architecture.md §12): the
`team` overflow step, calls that do not block chats, auto-accept for listed classes only,
strategies told apart by loads and idle times (ties on agent id), and routing rules through
the real enqueue path. Time moves only with the ManualClock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from contact_center.clock import ManualClock
from contact_center.conversations import change_conversation
from contact_center.models import Agent, Conversation, Customer, Priority, Team
from contact_center.runtime import Runtime
from routing.models import AgentStatus, RoutingTask
from tests.helpers import make_inbox
from tests.routing_helpers import (
    arrive,
    assignee,
    check_invariants,
    engine,
    make_agent,
    make_queue,
    make_rule,
    offer_for,
)


@pytest.fixture
async def sms_inbox(rt: Runtime) -> str:
    return await make_inbox(rt)


async def make_team(rt: Runtime, name: str) -> int:
    async with rt.db.write() as session:
        team = Team(name=name, created_at=rt.clock.now())
        session.add(team)
        await session.flush()
        return team.id


async def test_overflow_to_any_agent_of_the_team(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    """After M seconds the `team` step offers the task to any agent of the queue's team,
    whatever their skills or language; agents outside the team never get it."""
    billing = await make_team(rt, "Billing")
    await make_queue(
        rt,
        is_default=True,
        team_id=billing,
        skills={"refunds": 7},
        language="tr",
        overflow=[{"after_seconds": 45, "action": "team"}],
    )
    await make_agent(rt, "Outsider", skills={"refunds": 9}, languages=["tr"])  # no team
    teammate = await make_agent(rt, "Teammate", skills={"refunds": 1}, team_id=billing)
    conv = await arrive(rt)
    await engine(rt).run_pass()
    assert await offer_for(rt, conv) is None
    clock.advance(44)
    await engine(rt).run_pass()
    assert await offer_for(rt, conv) is None
    clock.advance(2)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == teammate


async def test_a_call_does_not_block_chats_when_so_configured(rt: Runtime) -> None:
    await make_inbox(rt, "voice", "voice", "+15005550008")
    await make_inbox(rt, "sms")
    await make_queue(rt, is_default=True, auto_accept=["chat", "voice"])
    agent = await make_agent(rt, "Agent")
    async with rt.db.write() as session:
        await session.execute(
            update(Agent).where(Agent.id == agent).values(voice_blocks_chat=False)
        )
    call = await arrive(rt, "(call)", inbox_id="voice")
    await engine(rt).run_pass()
    assert await assignee(rt, call) == agent
    chats = [await arrive(rt, f"hello {n}") for n in range(4)]
    await engine(rt).run_pass()
    # The call takes no chat capacity: three chats (the chat capacity) alongside it.
    assert [await assignee(rt, c) for c in chats].count(agent) == 3
    await check_invariants(rt)


async def test_auto_accept_applies_only_to_the_listed_classes(rt: Runtime) -> None:
    await make_inbox(rt, "voice", "voice", "+15005550008")
    await make_inbox(rt, "sms")
    await make_queue(rt, is_default=True, auto_accept=["voice"])
    agent = await make_agent(rt, "Agent", capacity={"chat": 3, "voice": 1, "email": 8})
    async with rt.db.write() as session:
        await session.execute(
            update(Agent).where(Agent.id == agent).values(voice_blocks_chat=False)
        )
    chat = await arrive(rt, "a chat")
    call = await arrive(rt, "(call)", inbox_id="voice")
    await engine(rt).run_pass()
    assert await assignee(rt, call) == agent  # voice: assigned at once
    assert await assignee(rt, chat) is None  # chat: a normal offer, waiting for an answer
    offer = await offer_for(rt, chat)
    assert offer is not None and offer.agent_id == agent


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("least_occupied", "Light"),  # the lowest load / capacity
        ("longest_idle", "Rested"),  # the earliest idle_since
        ("round_robin", "Skipped"),  # the earliest last offer
    ],
)
async def test_strategies_pick_differently_by_load_and_time(
    rt: Runtime, clock: ManualClock, sms_inbox: str, strategy: str, expected: str
) -> None:
    """Three agents, each the choice of one strategy: Rested (idle longest, two chats),
    Skipped (offered to longest ago, one chat), Light (no chats, busiest recently)."""
    await make_queue(rt, is_default=True, strategy=strategy)
    ids = {
        name: await make_agent(rt, name, capacity={"chat": 4})
        for name in ("Rested", "Skipped", "Light")
    }
    for name, chats in (("Rested", 2), ("Skipped", 1)):
        for _ in range(chats):
            await engine(rt).assign(await arrive(rt), ids[name], by_agent_id=None)
    base = clock.now()
    marks = {  # (idle_since, last_offer_at), minutes ago
        "Rested": (50, 20),
        "Skipped": (30, 40),
        "Light": (10, 10),
    }
    async with rt.db.write() as session:
        for name, (idle, offered) in marks.items():
            await session.execute(
                update(AgentStatus)
                .where(AgentStatus.agent_id == ids[name])
                .values(
                    idle_since=base - timedelta(minutes=idle),
                    last_offer_at=base - timedelta(minutes=offered),
                )
            )
    conv = await arrive(rt, "who gets me?")
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == ids[expected]


@pytest.mark.parametrize("strategy", ["least_occupied", "longest_idle", "round_robin"])
async def test_strategy_ties_go_to_the_lowest_agent_id(
    rt: Runtime, sms_inbox: str, strategy: str
) -> None:
    await make_queue(rt, is_default=True, strategy=strategy)
    ids = [await make_agent(rt, name) for name in ("Zed", "Amy", "Kim")]  # created in this order
    async with rt.db.write() as session:
        now = rt.clock.now()
        await session.execute(
            update(AgentStatus)
            .where(AgentStatus.agent_id.in_(ids))
            .values(idle_since=now, last_offer_at=now)
        )
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == min(ids)


async def test_routing_rules_choose_the_queue_through_the_real_enqueue_path(
    rt: Runtime, sms_inbox: str
) -> None:
    """Ingested conversations get their task in the queue the first matching rule names:
    by inbox, by channel, by customer tier, by minimum priority; else the default queue."""
    await make_inbox(rt, "sms-vip", "sms", "+15005550077")
    await make_inbox(rt, "wa", "whatsapp", "+15005550088")
    default = await make_queue(rt, "General", is_default=True)
    by_inbox = await make_queue(rt, "VIP line")
    by_channel = await make_queue(rt, "WhatsApp")
    by_tier = await make_queue(rt, "Gold")
    by_priority = await make_queue(rt, "Escalations")
    await make_rule(rt, by_inbox, 1, inbox_ids=["sms-vip"])
    await make_rule(rt, by_channel, 2, channels=["whatsapp"])
    await make_rule(rt, by_tier, 3, tiers=["gold"])
    await make_rule(rt, by_priority, 4, min_priority="high")

    vip = await arrive(rt, "hello", inbox_id="sms-vip")
    whatsapp = await arrive(rt, "hello", inbox_id="wa")
    gold = await arrive(rt, "hello")
    high = await arrive(rt, "hello")
    urgent = await arrive(rt, "hello")
    normal = await arrive(rt, "hello")
    async with rt.db.write() as session:
        conv = await session.get(Conversation, gold)
        assert conv is not None
        await session.execute(
            update(Customer).where(Customer.id == conv.customer_id).values(tier="gold")
        )
        for cid, priority in ((high, Priority.high), (urgent, Priority.urgent)):
            conv = await session.get(Conversation, cid)
            assert conv is not None
            await change_conversation(
                session, conv, clock=rt.clock, acting_agent_id=None, priority=priority
            )
    await engine(rt).run_pass()  # nobody available: the tasks are created and wait
    async with rt.db.read() as session:
        queues = dict(
            (await session.execute(select(RoutingTask.conversation_id, RoutingTask.queue_id))).all()
        )
    assert queues == {
        vip: by_inbox,
        whatsapp: by_channel,
        gold: by_tier,
        high: by_priority,
        urgent: by_priority,
        normal: default,
    }
