"""Routing engine: tasks, matching, offers and answers, capacity, ordering, overflow, sticky,
disconnects, transfers (docs/architecture.md §12). Time moves only with the ManualClock."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from contact_center.clock import ManualClock
from contact_center.models import Conversation, DomainEvent, Priority
from contact_center.runtime import Runtime
from routing.engine import RoutingError
from routing.models import AgentStateLog, AgentStatus, OfferStatus, Presence, RoutingTask
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
    pending_offers,
    presence,
    resolve,
)


@pytest.fixture
async def sms_inbox(rt: Runtime) -> str:
    return await make_inbox(rt)


async def test_a_new_conversation_is_offered_and_accepted(rt: Runtime, sms_inbox: str) -> None:
    await make_queue(rt, is_default=True)
    ayse = await make_agent(rt, "Ayse")
    conv = await arrive(rt, "my invoice is wrong")
    assert await engine(rt).run_pass() == 1
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == ayse
    await engine(rt).answer(offer.id, ayse, accept=True)
    assert await assignee(rt, conv) == ayse
    async with rt.db.read() as session:
        events = (
            await session.execute(
                select(DomainEvent.type, DomainEvent.agent_id).where(
                    DomainEvent.conversation_id == conv
                )
            )
        ).all()
        task = await session.scalar(select(RoutingTask).where(RoutingTask.conversation_id == conv))
    assert ("offer.created", ayse) in events
    assert ("conversation.assigned", ayse) in events
    assert task is not None and task.status == "assigned" and task.active_conversation_id is None
    # Nothing more to do: a second pass offers nothing and the assignment stands.
    assert await engine(rt).run_pass() == 0
    await check_invariants(rt)


async def test_an_offer_cannot_be_answered_twice_or_by_another_agent(
    rt: Runtime, sms_inbox: str
) -> None:
    await make_queue(rt, is_default=True)
    ayse = await make_agent(rt, "Ayse")
    john = await make_agent(rt, "John", available=False)
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None
    with pytest.raises(RoutingError):
        await engine(rt).answer(offer.id, john, accept=True)
    await engine(rt).answer(offer.id, ayse, accept=True)
    with pytest.raises(RoutingError):
        await engine(rt).answer(offer.id, ayse, accept=False)
    assert await assignee(rt, conv) == ayse


async def test_skills_and_language_choose_the_agent(rt: Runtime, sms_inbox: str) -> None:
    billing = await make_queue(rt, "Billing", skills={"billing": 3}, is_default=True)
    turkish = await make_queue(rt, "Turkce", language="tr")
    await make_rule(rt, turkish, 1, keywords=["fatura", "merhaba"])
    await make_rule(rt, billing, 2)
    await make_agent(rt, "Novice", skills={"billing": 2}, languages=["en"])
    expert = await make_agent(rt, "Expert", skills={"billing": 5}, languages=["en"])
    elif_ = await make_agent(rt, "Elif", skills={}, languages=["tr"])
    english = await arrive(rt, "I was charged twice")
    turkce = await arrive(rt, "Merhaba, faturam yanlış")
    await engine(rt).run_pass()
    offer_en = await offer_for(rt, english)
    offer_tr = await offer_for(rt, turkce)
    assert offer_en is not None and offer_en.agent_id == expert
    assert offer_tr is not None and offer_tr.agent_id == elif_
    assert offer_tr.queue_id == turkish


async def test_nobody_qualified_means_the_task_waits(rt: Runtime, sms_inbox: str) -> None:
    await make_queue(rt, skills={"technical": 4}, is_default=True)
    await make_agent(rt, "Novice", skills={"technical": 1})
    conv = await arrive(rt)
    assert await engine(rt).run_pass() == 0
    async with rt.db.read() as session:
        task = await session.scalar(select(RoutingTask).where(RoutingTask.conversation_id == conv))
    assert task is not None and task.status == "waiting"


async def test_decline_reroutes_to_the_next_agent(rt: Runtime, sms_inbox: str) -> None:
    await make_queue(rt, is_default=True)
    first = await make_agent(rt, "First")
    rt.clock.advance(1)  # type: ignore[attr-defined]
    second = await make_agent(rt, "Second")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == first  # idle longest
    await engine(rt).answer(offer.id, first, accept=False)
    await engine(rt).run_pass()
    again = await offer_for(rt, conv)
    assert again is not None and again.agent_id == second
    # Declined by everyone: nobody is offered it again until something changes.
    await engine(rt).answer(again.id, second, accept=False)
    assert await engine(rt).run_pass() == 0


async def test_a_sole_agent_who_declined_is_offered_again_after_the_cool_down(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    """One missed chance never strands a conversation: the decliner is held back for
    CC_ROUTING_REOFFER_SECONDS (others could take it meanwhile), then offered it again."""
    await make_queue(rt, is_default=True, offer_timeout_seconds=30)
    solo = await make_agent(rt, "Solo")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == solo
    await engine(rt).answer(offer.id, solo, accept=False)
    cool_down = rt.settings.routing_reoffer_seconds
    assert cool_down == 60
    clock.advance(cool_down - 1)
    assert await engine(rt).run_pass() == 0
    assert await offer_for(rt, conv) is None
    clock.advance(1)
    assert await engine(rt).run_pass() == 1
    again = await offer_for(rt, conv)
    assert again is not None and again.agent_id == solo
    await engine(rt).answer(again.id, solo, accept=True)
    assert await assignee(rt, conv) == solo


async def test_a_sole_agent_who_missed_it_gets_it_when_they_come_back(
    rt: Runtime, clock: ManualClock, sms_inbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rt.settings, "routing_max_missed_offers", 1)
    await make_queue(rt, is_default=True, offer_timeout_seconds=20)
    solo = await make_agent(rt, "Solo")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    assert await offer_for(rt, conv) is not None
    clock.advance(21)
    await engine(rt).run_pass()  # the offer expires: one miss is the maximum here
    async with rt.db.read() as session:
        status = await session.get(AgentStatus, solo)
    assert status is not None and (status.state, status.reason) == ("away", "missed offers")
    assert await offer_for(rt, conv) is None
    clock.advance(5)  # well inside the cool-down
    await presence(rt, solo, Presence.available)
    assert await engine(rt).run_pass() == 1
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == solo


async def test_offer_timeout_reroutes_and_repeated_misses_set_the_agent_away(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    await make_queue(rt, offer_timeout_seconds=20, is_default=True)
    sleepy = await make_agent(rt, "Sleepy", capacity={"chat": 1})
    clock.advance(1)
    awake = await make_agent(rt, "Awake", capacity={"chat": 0})
    convs = [await arrive(rt) for _ in range(3)]
    await engine(rt).run_pass()
    for n, conv in enumerate(convs, start=1):
        offer = await offer_for(rt, conv)
        assert offer is not None and offer.agent_id == sleepy
        clock.advance(19)
        await engine(rt).run_pass()
        assert (await offer_for(rt, conv)) is not None  # not yet
        clock.advance(2)
        await engine(rt).run_pass()
        async with rt.db.read() as session:
            status = await session.get(AgentStatus, sleepy)
        assert status is not None
        assert status.missed_offers == n or (n == 3 and status.state == "away")
    assert status.state == "away" and status.reason == "missed offers"
    # The missed conversations go to the other agent once they have room.
    async with rt.db.write() as session:
        from contact_center.models import Agent

        agent = await session.get(Agent, awake)
        assert agent is not None
        agent.capacity = {"chat": 5}
    await engine(rt).run_pass()
    offers = await pending_offers(rt)
    assert {o.conversation_id for o in offers} == set(convs)
    assert {o.agent_id for o in offers} == {awake}


async def test_capacity_is_never_exceeded(rt: Runtime, sms_inbox: str) -> None:
    await make_queue(rt, is_default=True, auto_accept=["chat"])
    solo = await make_agent(rt, "Solo", capacity={"chat": 2})
    convs = [await arrive(rt) for _ in range(5)]
    await engine(rt).run_pass()
    assigned = [c for c in convs if await assignee(rt, c) == solo]
    assert len(assigned) == 2
    await check_invariants(rt)
    await resolve(rt, assigned[0])
    await engine(rt).run_pass()
    now_assigned = [c for c in convs if await assignee(rt, c) == solo]
    assert len(now_assigned) == 3
    await check_invariants(rt)


async def test_a_call_blocks_chats_when_configured(rt: Runtime) -> None:
    await make_inbox(rt, "voice", "voice", "+15005550008")
    await make_inbox(rt, "sms")
    await make_queue(rt, is_default=True, auto_accept=["chat", "voice"])
    agent = await make_agent(rt, "Agent")
    call = await arrive(rt, "(call)", inbox_id="voice")
    await engine(rt).run_pass()
    assert await assignee(rt, call) == agent
    chat = await arrive(rt, "hello")
    await engine(rt).run_pass()
    assert await assignee(rt, chat) is None
    await resolve(rt, call)
    await engine(rt).run_pass()
    assert await assignee(rt, chat) == agent


async def test_priority_first_then_age_and_waiting_beats_starvation(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    from contact_center.conversations import change_conversation

    await make_queue(rt, is_default=True, auto_accept=["chat"])
    old_low = await arrive(rt, "low and old")
    clock.advance(10)
    normal = await arrive(rt, "normal")
    clock.advance(10)
    urgent = await arrive(rt, "urgent and new")
    async with rt.db.write() as session:
        conv = await session.get(Conversation, urgent)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, priority=Priority.urgent
        )
        conv = await session.get(Conversation, old_low)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, priority=Priority.low
        )
    await engine(rt).reconcile()  # tasks take the priority they have now
    order = []
    agent = await make_agent(rt, "One", capacity={"chat": 1})
    for _ in range(3):
        await engine(rt).run_pass()
        served = [c for c in (old_low, normal, urgent) if c not in order and await assignee(rt, c)]
        assert len(served) == 1
        order.append(served[0])
        await resolve(rt, served[0])
    assert order == [urgent, normal, old_low]
    assert agent

    # Starvation: a low-priority task that has waited long enough goes before a new urgent one.
    ancient = await arrive(rt, "ancient low")
    async with rt.db.write() as session:
        conv = await session.get(Conversation, ancient)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, priority=Priority.low
        )
    await engine(rt).reconcile()
    clock.advance(3 * 300 + 1)  # more than the three priority levels between low and urgent
    fresh_urgent = await arrive(rt, "urgent")
    async with rt.db.write() as session:
        conv = await session.get(Conversation, fresh_urgent)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, priority=Priority.urgent
        )
    await engine(rt).run_pass()
    assert await assignee(rt, ancient) is not None
    assert await assignee(rt, fresh_urgent) is None


async def test_work_without_an_sla_is_not_starved_by_newer_sla_work(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    """SLA deadlines and plain waiting share one time scale: a conversation without a promise
    that has waited most of DEFAULT_TARGET_SECONDS (an hour) goes before a new one due in 5
    minutes; one that has waited less does not."""
    from contact_center.conversations import change_conversation
    from routing.engine import DEFAULT_TARGET_SECONDS
    from routing.models import SlaPolicy
    from routing.sla import service_of
    from tests.helpers import relay

    assert DEFAULT_TARGET_SECONDS == 3600
    now = clock.now()
    async with rt.db.write() as session:
        session.add(
            SlaPolicy(
                name="Urgent in 5",
                conditions={"priorities": ["urgent"]},
                targets={"urgent": {"first_response": {"minutes": 5, "business": False}}},
                escalations=[],
                created_at=now,
                updated_at=now,
            )
        )
    await make_queue(rt, is_default=True, auto_accept=["chat"])
    old_plain = await arrive(rt, "waiting for an hour, no promise")
    await engine(rt).run_pass()  # queued now (nobody is available)
    clock.advance(10 * 60)
    newer_plain = await arrive(rt, "waiting 46 minutes, no promise")
    await engine(rt).run_pass()
    clock.advance(46 * 60)
    urgent = await arrive(rt, "urgent, due in 5 minutes")
    async with rt.db.write() as session:
        conv = await session.get(Conversation, urgent)
        assert conv is not None
        await change_conversation(
            session, conv, clock=rt.clock, acting_agent_id=None, priority=Priority.urgent
        )
    for _ in range(2):  # clocks, tasks, then the tasks re-ranked by their deadlines
        await relay(rt)
        await service_of(rt).run_once()
        await engine(rt).run_pass()
    await make_agent(rt, "One", capacity={"chat": 1})
    order: list[int] = []
    for _ in range(3):
        await engine(rt).run_pass()
        served = [
            c for c in (old_plain, newer_plain, urgent) if c not in order and await assignee(rt, c)
        ]
        assert len(served) == 1
        order.append(served[0])
        await resolve(rt, served[0])
    # old: due (virtually) 4 min from now; urgent: 5 min; newer: 14 min.
    assert order == [old_plain, urgent, newer_plain]


@pytest.mark.parametrize("strategy", ["round_robin", "longest_idle", "least_occupied"])
async def test_strategies_share_work_fairly(
    rt: Runtime, clock: ManualClock, sms_inbox: str, strategy: str
) -> None:
    await make_queue(rt, is_default=True, strategy=strategy, auto_accept=["chat"])
    agents = [await make_agent(rt, f"A{i}", capacity={"chat": 3}) for i in range(4)]
    served: Counter[int] = Counter()
    for _ in range(40):
        conv = await arrive(rt)
        clock.advance(5)
        await engine(rt).run_pass()
        who = await assignee(rt, conv)
        assert who is not None
        served[who] += 1
        await resolve(rt, conv)  # handled at once: every agent is free again
    assert set(served) == set(agents)
    assert max(served.values()) - min(served.values()) <= 1, served


async def test_longest_idle_prefers_the_agent_who_waited_longest(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    """The known ACD bug: the agent who just finished must not be picked over one who waited."""
    await make_queue(rt, is_default=True, strategy="longest_idle", auto_accept=["chat"])
    a = await make_agent(rt, "A", capacity={"chat": 1})
    clock.advance(60)
    b = await make_agent(rt, "B", capacity={"chat": 1})
    first = await arrive(rt)
    await engine(rt).run_pass()
    assert await assignee(rt, first) == a
    clock.advance(120)
    await resolve(rt, first)  # A just finished; B has been idle for two minutes
    second = await arrive(rt)
    await engine(rt).run_pass()
    assert await assignee(rt, second) == b


async def test_best_match_prefers_the_most_skilled(rt: Runtime, sms_inbox: str) -> None:
    await make_queue(
        rt, is_default=True, strategy="best_match", skills={"billing": 1, "refunds": 1}
    )
    await make_agent(rt, "Some", skills={"billing": 3, "refunds": 1})
    best = await make_agent(rt, "Best", skills={"billing": 5, "refunds": 4})
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == best


async def test_overflow_drops_skills_after_waiting(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    await make_queue(
        rt,
        is_default=True,
        skills={"technical": 5},
        overflow=[{"after_seconds": 60, "action": "drop_skills"}],
    )
    generalist = await make_agent(rt, "Generalist", skills={"technical": 1})
    conv = await arrive(rt)
    await engine(rt).run_pass()
    assert await offer_for(rt, conv) is None
    clock.advance(59)
    await engine(rt).run_pass()
    assert await offer_for(rt, conv) is None
    clock.advance(2)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == generalist


async def test_overflow_moves_to_another_queue(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    backup = await make_queue(rt, "Backup", skills={"general": 1})
    await make_queue(
        rt,
        "Specialists",
        is_default=True,
        skills={"rare": 9},
        overflow=[{"after_seconds": 30, "action": "queue", "queue_id": backup}],
    )
    helper = await make_agent(rt, "Helper", skills={"general": 2})
    conv = await arrive(rt)
    await engine(rt).run_pass()
    assert await offer_for(rt, conv) is None
    clock.advance(31)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == helper and offer.queue_id == backup


async def test_sticky_routing_returns_the_customer_to_their_agent(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    await make_queue(rt, is_default=True, sticky_seconds=120, auto_accept=["chat"])
    a = await make_agent(rt, "A", capacity={"chat": 1})
    b = await make_agent(rt, "B", capacity={"chat": 1})
    first = await arrive(rt, phone="+14155550111")
    await engine(rt).run_pass()
    helper = await assignee(rt, first)
    other = b if helper == a else a
    await resolve(rt, first)
    # The helper is busy with someone else when the customer comes back...
    busy_with = await arrive(rt, phone="+14155550999")
    await engine(rt).run_pass()
    if await assignee(rt, busy_with) != helper:
        await resolve(rt, busy_with)
        busy_with = await arrive(rt, phone="+14155550998")
        async with rt.db.write() as session:
            conv = await session.get(Conversation, busy_with)
            assert conv is not None
        await engine(rt).assign(busy_with, helper, by_agent_id=None)  # type: ignore[arg-type]
    back = await arrive(rt, "it broke again", phone="+14155550111")
    await engine(rt).run_pass()
    assert await assignee(rt, back) is None  # waits for the agent who helped last time
    await resolve(rt, busy_with)
    await engine(rt).run_pass()
    assert await assignee(rt, back) == helper
    # After the window, anyone: a returning customer whose agent stays busy goes to the other.
    await resolve(rt, back)
    blocker = await arrive(rt, phone="+14155550997")
    await engine(rt).assign(blocker, helper, by_agent_id=None)  # type: ignore[arg-type]
    again = await arrive(rt, "one more thing", phone="+14155550111")
    await engine(rt).run_pass()
    assert await assignee(rt, again) is None
    clock.advance(121)
    await engine(rt).run_pass()
    assert await assignee(rt, again) == other


async def test_sticky_routing_waits_only_for_an_agent_who_could_take_it_soon(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    """Inside the sticky window the task waits for the last agent only while they are
    qualified and busy or full; declined, away or not qualified: the next agent at once."""
    from contact_center.models import Agent

    await make_queue(rt, is_default=True, sticky_seconds=600, skills={"general": 1})
    helper = await make_agent(rt, "Helper", skills={"general": 1})
    clock.advance(1)
    other = await make_agent(rt, "Other", skills={"general": 1})

    async def returning(phone: str) -> int:
        """A customer the helper served before writes again."""
        before = await arrive(rt, "first time", phone=phone)
        await engine(rt).assign(before, helper, by_agent_id=None)
        await resolve(rt, before)
        clock.advance(1)
        return await arrive(rt, "I am back", phone=phone)

    # Declined: the other agent gets it now, not when the window ends.
    declined = await returning("+14155550701")
    await engine(rt).run_pass()
    offer = await offer_for(rt, declined)
    assert offer is not None and offer.agent_id == helper
    await engine(rt).answer(offer.id, helper, accept=False)
    await engine(rt).run_pass()
    offer = await offer_for(rt, declined)
    assert offer is not None and offer.agent_id == other
    await engine(rt).answer(offer.id, other, accept=True)
    await resolve(rt, declined)

    # Busy (and qualified): worth waiting for; available again: it is theirs.
    await presence(rt, helper, Presence.busy)
    waits = await returning("+14155550702")
    await engine(rt).run_pass()
    assert await offer_for(rt, waits) is None
    await presence(rt, helper, Presence.available)
    await engine(rt).run_pass()
    offer = await offer_for(rt, waits)
    assert offer is not None and offer.agent_id == helper
    await engine(rt).answer(offer.id, helper, accept=True)
    await resolve(rt, waits)

    # Away: the other agent at once.
    await presence(rt, helper, Presence.away, "lunch")
    away = await returning("+14155550703")
    await engine(rt).run_pass()
    offer = await offer_for(rt, away)
    assert offer is not None and offer.agent_id == other

    # Available but no longer qualified (lost the skill): the other agent at once.
    await presence(rt, helper, Presence.available)
    unqualified = await returning("+14155550704")
    async with rt.db.write() as session:
        agent = await session.get(Agent, helper)
        assert agent is not None
        agent.skills = {}
    await engine(rt).run_pass()
    offer = await offer_for(rt, unqualified)
    assert offer is not None and offer.agent_id == other


async def test_agent_going_away_withdraws_offers_and_they_reroute(
    rt: Runtime, sms_inbox: str
) -> None:
    await make_queue(rt, is_default=True)
    a = await make_agent(rt, "A")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == a
    await presence(rt, a, Presence.away, "lunch")
    assert await offer_for(rt, conv) is None
    b = await make_agent(rt, "B")
    await engine(rt).run_pass()
    again = await offer_for(rt, conv)
    assert again is not None and again.agent_id == b
    async with rt.db.read() as session:
        log = (
            await session.scalars(
                select(AgentStateLog).where(AgentStateLog.agent_id == a).order_by(AgentStateLog.id)
            )
        ).all()
    assert [(row.state, row.reason) for row in log] == [("available", None), ("away", "lunch")]
    assert log[0].ended_at == log[1].started_at


async def test_silent_agent_goes_offline_and_their_chats_are_requeued(
    rt: Runtime, clock: ManualClock, sms_inbox: str
) -> None:
    await make_queue(rt, is_default=True, auto_accept=["chat"])
    gone = await make_agent(rt, "Gone")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    assert await assignee(rt, conv) == gone
    async with rt.db.write() as session:
        status = await session.get(AgentStatus, gone)
        assert status is not None
        status.last_seen_at = clock.now()
    clock.advance(rt.settings.agent_grace_seconds + 1)
    stay = await make_agent(rt, "Stay")
    async with rt.db.write() as session:
        status = await session.get(AgentStatus, stay)
        assert status is not None
        status.last_seen_at = clock.now()
    await engine(rt).run_pass()
    async with rt.db.read() as session:
        status = await session.get(AgentStatus, gone)
    assert status is not None and (status.state, status.reason) == ("offline", "disconnected")
    await engine(rt).run_pass()
    assert await assignee(rt, conv) == stay
    await check_invariants(rt)


@pytest.mark.parametrize("requeue", [True, False])
async def test_going_offline_by_choice_requeues_or_keeps_chats_as_the_queue_says(
    rt: Runtime, clock: ManualClock, sms_inbox: str, requeue: bool
) -> None:
    await make_queue(rt, is_default=True, auto_accept=["chat"], requeue_on_disconnect=requeue)
    leaving = await make_agent(rt, "Leaving")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    assert await assignee(rt, conv) == leaving
    clock.advance(1)
    staying = await make_agent(rt, "Staying")
    await presence(rt, leaving, Presence.offline)  # explicitly, not a silent socket
    await engine(rt).run_pass()
    assert await assignee(rt, conv) == (staying if requeue else leaving)
    async with rt.db.read() as session:
        reasons = (
            await session.scalars(
                select(DomainEvent.payload).where(
                    DomainEvent.type == "conversation.assigned",
                    DomainEvent.conversation_id == conv,
                )
            )
        ).all()
    assert [r["reason"] for r in reasons] == (
        ["auto-accepted", "agent offline", "auto-accepted"] if requeue else ["auto-accepted"]
    )
    await check_invariants(rt)


async def test_transfer_to_agent_and_to_queue(rt: Runtime, sms_inbox: str) -> None:
    await make_queue(rt, "Front", is_default=True, auto_accept=["chat"])
    second_line = await make_queue(rt, "Second line", skills={"expert": 1})
    front = await make_agent(rt, "Front", capacity={"chat": 1})
    expert = await make_agent(rt, "Expert", skills={"expert": 3}, capacity={"chat": 1})
    conv = await arrive(rt)
    await engine(rt).run_pass()
    first = await assignee(rt, conv)
    assert first in (front, expert)
    await engine(rt).transfer_to_queue(conv, second_line, by_agent_id=first)
    assert await assignee(rt, conv) is None
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None and offer.agent_id == expert
    await engine(rt).answer(offer.id, expert, accept=True)
    # Direct transfer to an agent with no room is refused; with room it is immediate.
    other = await arrive(rt)
    await engine(rt).run_pass()
    with pytest.raises(RoutingError, match="no free chat capacity"):
        await engine(rt).assign(other, expert, by_agent_id=None)
    await resolve(rt, conv)
    await engine(rt).assign(other, expert, by_agent_id=None)
    assert await assignee(rt, other) == expert
    await check_invariants(rt)


async def test_closed_or_assigned_conversations_leave_the_queue(
    rt: Runtime, sms_inbox: str
) -> None:
    await make_queue(rt, is_default=True)
    a = await make_agent(rt, "A")
    conv = await arrive(rt)
    await engine(rt).run_pass()
    offer = await offer_for(rt, conv)
    assert offer is not None
    await resolve(rt, conv)
    await engine(rt).run_pass()
    async with rt.db.read() as session:
        task = await session.scalar(select(RoutingTask).where(RoutingTask.conversation_id == conv))
        from routing.models import Offer

        stale = await session.get(Offer, offer.id)
    assert task is not None and task.status == "cancelled"
    assert stale is not None and stale.status == OfferStatus.withdrawn
    with pytest.raises(RoutingError):
        await engine(rt).answer(offer.id, a, accept=True)


async def test_arrivals_during_full_passes_are_offered_without_the_sweep(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass a full one (tick 0) and the reconcile sweep only at the start: the events
    that wake a full pass still get their conversations routed (not left for the sweep)."""
    import asyncio

    import routing.engine as engine_module
    from contact_center.wiring import build_scheduler

    monkeypatch.setattr(rt.settings, "routing_tick_seconds", 0.0)
    monkeypatch.setattr(engine_module, "SWEEP_SECONDS", 3600.0)
    await make_inbox(rt)
    await make_queue(rt, is_default=True)
    agent = await make_agent(rt, "Agent", capacity={"chat": 5})
    stop = asyncio.Event()
    runner = asyncio.create_task(build_scheduler(rt).run(stop))
    try:
        await asyncio.sleep(0.3)  # the first pass (and its sweep) is done
        conversations = []
        for n in range(3):
            conversations.append(await arrive(rt, f"hello {n}"))
            await rt.committed()
        async with asyncio.timeout(10):
            while None in [await offer_for(rt, c) for c in conversations]:
                await asyncio.sleep(0.02)
        offers = [await offer_for(rt, c) for c in conversations]
        assert {o.agent_id for o in offers if o is not None} == {agent}
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


async def test_the_running_engine_reacts_to_arrivals_and_presence(rt: Runtime) -> None:
    """The scheduler's loop (relay + engine woken by the bus), not hand-driven passes: a
    conversation that arrives is offered, and an agent who becomes available gets the one
    waiting for them."""
    import asyncio

    from contact_center.wiring import build_scheduler

    await make_inbox(rt)
    await make_queue(rt, is_default=True)
    first = await make_agent(rt, "First", capacity={"chat": 1})
    stop = asyncio.Event()
    runner = asyncio.create_task(build_scheduler(rt).run(stop))

    async def offered(conv: int) -> int:
        async with asyncio.timeout(10):
            while (offer := await offer_for(rt, conv)) is None:
                await asyncio.sleep(0.02)
        return offer.agent_id

    try:
        a = await arrive(rt, "hello")
        await rt.committed()
        assert await offered(a) == first
        b = await arrive(rt, "anyone?")
        await rt.committed()
        await asyncio.sleep(0.3)
        assert await offer_for(rt, b) is None  # First is full; nobody else is there
        second = await make_agent(rt, "Second")  # goes available: presence.updated
        await rt.committed()
        assert await offered(b) == second
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


async def test_only_events_that_may_need_a_task_name_conversations_for_a_quick_pass(
    rt: Runtime,
) -> None:
    """The running engine routes the conversations its events name. An arrival and an
    unassignment (going offline re-queues the chat) name theirs; the engine's own offer and
    auto-accepted assignment do not, so they wake no extra pass over every agent that would
    hold up the next arrival (and an agent-changing event still reloads the snapshot)."""
    from contact_center.events import envelope
    from routing.engine import frees_or_changes_agents, may_need_task

    await make_inbox(rt)
    await make_queue(rt, is_default=True, auto_accept=["chat"])
    agent = await make_agent(rt, "Agent")
    conv = await arrive(rt, "hello")
    assert await engine(rt).run_pass() == 1
    assert await assignee(rt, conv) == agent
    await presence(rt, agent, Presence.offline)  # the chat is re-queued (unassigned)
    assert await assignee(rt, conv) is None
    async with rt.db.read() as session:
        rows = (
            await session.scalars(
                select(DomainEvent)
                .where(DomainEvent.conversation_id == conv)
                .order_by(DomainEvent.id)
            )
        ).all()
    named = [
        (e.type, e.payload.get("reason"))
        for e in rows
        if may_need_task(envelope(e)) and not frees_or_changes_agents(envelope(e))
    ]
    assert named == [("conversation.created", None)]
    unassigned = [
        e for e in rows if e.type == "conversation.assigned" and e.payload["assignee_id"] is None
    ]
    assert unassigned and all(may_need_task(envelope(e)) for e in unassigned)
    own = [
        e
        for e in rows
        if e.type in ("offer.created", "offer.accepted")
        or (e.type == "conversation.assigned" and e.payload.get("reason") == "auto-accepted")
    ]
    assert len(own) == 3
    assert not any(may_need_task(envelope(e)) for e in own)


async def test_a_queue_edited_between_quick_passes_is_planned_with_its_new_skills(
    rt: Runtime,
) -> None:
    """Quick passes keep the plan's heaps while the agents' snapshot stands; a queue whose
    required skills were raised meanwhile must not be offered to an agent who no longer
    qualifies (its heap is built anew)."""
    from routing.models import Queue

    await make_inbox(rt)
    queue = await make_queue(rt, is_default=True)
    agent = await make_agent(rt, "Agent", skills={"support": 1}, capacity={"chat": 5})
    first = await arrive(rt, "hello")
    assert await engine(rt).run_pass(full=False, conversations=[first]) == 1
    async with rt.db.write() as session:
        row = await session.get(Queue, queue)
        assert row is not None
        row.skills = {"support": 3}
    second = await arrive(rt, "anyone?")
    made = await engine(rt).run_pass(full=False, conversations=[second], agents_changed=False)
    assert made == 0 and await offer_for(rt, second) is None
    async with rt.db.write() as session:
        row = await session.get(Queue, queue)
        assert row is not None
        row.skills = {"support": 1}
    made = await engine(rt).run_pass(full=False, conversations=[second], agents_changed=False)
    offer = await offer_for(rt, second)
    assert made == 1 and offer is not None and offer.agent_id == agent
