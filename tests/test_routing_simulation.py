"""Routing under load: 200 agents, 5,000 conversations with random needs and handle times.

A seeded simulation drives the real engine over simulated time (the ManualClock): customers
write through ingest (language on the message, keywords in the text choose the queue through
the routing rules), the engine runs a pass every 5-10 simulated seconds, agents accept, decline
or ignore offers, take breaks and are set away for missed offers, and resolve each conversation
when its handle time has passed. After every pass the database invariants are checked (no agent
over capacity, no task with two pending offers) and so is work conservation (no waiting task
that a qualified agent with room could take). At the end the whole history is audited: every
conversation assigned exactly once, through the queue its need calls for, to an agent who was
available, skilled enough and speaks the language; no agent over capacity at any moment; no
conversation offered to two agents at once. Every assertion message carries the seed.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from contact_center.clock import ManualClock
from contact_center.identities import IdentityRef
from contact_center.ingest import InboundMessage
from contact_center.models import Conversation, DomainEvent
from contact_center.runtime import Runtime
from routing.engine import exclusions, held_back
from routing.models import (
    AgentStateLog,
    AgentStatus,
    Offer,
    OfferStatus,
    Presence,
    RoutingTask,
    TaskStatus,
)
from tests.helpers import make_inbox
from tests.routing_helpers import (
    check_invariants,
    engine,
    make_agent,
    make_queue,
    make_rule,
    presence,
    resolve,
)

SEED = 4_2026
AGENTS = 200
CONVERSATIONS = 5_000
# Skill -> the minimum level its queues require; every queue also requires its language.
MIN_LEVEL = {"billing": 2, "technical": 3, "sales": 1, "returns": 2}
LANGUAGES = ("en", "tr", "de")
LANGUAGE_MIX = (0.6, 0.22, 0.18)
SKILL_MIX = (0.35, 0.3, 0.2, 0.15)
# What a customer writes about each need, in each language (the rules' keywords).
KEYWORDS = {
    "billing": {"en": "invoice", "tr": "fatura", "de": "rechnung"},
    "technical": {"en": "error", "tr": "hata", "de": "fehler"},
    "sales": {"en": "price", "tr": "fiyat", "de": "preis"},
    "returns": {"en": "refund", "tr": "iade", "de": "umtausch"},
}
STRATEGY = {
    "billing": "longest_idle",
    "technical": "best_match",
    "sales": "round_robin",
    "returns": "least_occupied",
}
OFFER_TIMEOUT = 20
ARRIVALS_PER_SECOND = 0.8  # against ~450 chat slots free of breaks and 8 min mean handling
DECLINE, IGNORE = 0.08, 0.06  # how an agent answers an offer (at most once per conversation)
SLEEPY, SLEEPY_IGNORE = 0.06, 0.5  # share of agents who often miss offers, and how often
BREAK_PER_STEP = 0.0015  # chance an available agent goes on a break at a step
DRAIN_STEPS = 3_000


def need_text(rng: random.Random, skill: str, language: str) -> str:
    word = KEYWORDS[skill][language]
    return rng.choice(
        [f"{word}?", f"Hi, {word} please", f"{word.title()} - order {rng.randint(1, 99999)}"]
    )


@dataclass
class SimAgent:
    id: int
    skills: dict[str, int]
    languages: list[str]
    chat: int
    anchor: bool  # never goes on a break: every need always has someone on shift
    sleepy: bool  # often lets offers expire: set away by the engine after three in a row

    def qualifies(self, skill: str, language: str) -> bool:
        return self.skills.get(skill, 0) >= MIN_LEVEL[skill] and language in self.languages


@dataclass
class SimConversation:
    id: int
    skill: str
    language: str
    handle_seconds: int
    arrived_at: datetime
    queue_id: int
    refused: bool = False  # declined or ignored once already
    agent_id: int | None = None
    assigned_at: datetime | None = None
    resolve_at: datetime | None = None


@dataclass
class Stats:
    passes: int = 0
    offers_answered: int = 0
    declined: int = 0
    ignored: int = 0
    breaks: int = 0
    missed_away: int = 0
    max_waiting: int = 0
    max_wait_seconds: float = 0.0
    pass_seconds: float = 0.0
    ingest_seconds: float = 0.0
    answer_seconds: float = 0.0
    resolve_seconds: float = 0.0
    check_seconds: float = 0.0
    assigned_by: Counter[int] = field(default_factory=Counter)


class Simulation:
    def __init__(self, rt: Runtime, clock: ManualClock, seed: int) -> None:
        self.rt = rt
        self.clock = clock
        self.seed = seed
        self.rng = random.Random(seed)
        self.agents: dict[int, SimAgent] = {}
        self.capacities: dict[int, dict[str, int]] = {}
        self.queues: dict[tuple[str, str], int] = {}
        self.queue_need: dict[int, tuple[str, str]] = {}
        self.auto_queues: set[int] = set()
        self.conversations: dict[int, SimConversation] = {}
        self.unassigned: set[int] = set()
        self.in_progress: set[int] = set()
        self.on_break: dict[int, datetime] = {}  # agent -> back at
        self.stats = Stats()
        self.next_arrival: datetime = clock.now()
        self.arrivals = 0
        self.draining = False

    def why(self, message: str) -> str:
        return f"seed={self.seed}, t={self.clock.now().isoformat()}: {message}"

    # ----- setup

    async def setup(self) -> None:
        rng = self.rng
        await make_inbox(self.rt)
        # A default queue nobody's rules lead to: a conversation landing there is a rule bug.
        await make_queue(self.rt, "Unmatched", is_default=True)
        position = 0
        for i, skill in enumerate(MIN_LEVEL):
            for j, language in enumerate(LANGUAGES):
                auto = (i + j) % 2 == 0
                queue_id = await make_queue(
                    self.rt,
                    f"{skill}-{language}",
                    skills={skill: MIN_LEVEL[skill]},
                    language=language,
                    strategy=STRATEGY[skill],
                    priority=1 if skill == "technical" else 0,
                    offer_timeout_seconds=OFFER_TIMEOUT,
                    auto_accept=["chat"] if auto else [],
                )
                position += 1
                await make_rule(
                    self.rt,
                    queue_id,
                    position,
                    languages=[language],
                    keywords=[KEYWORDS[skill][language]],
                )
                self.queues[skill, language] = queue_id
                self.queue_need[queue_id] = (skill, language)
                if auto:
                    self.auto_queues.add(queue_id)
        # Two anchors per need (skilled, never on a break), then random agents.
        needs = list(self.queues)
        for n in range(AGENTS):
            if n < 2 * len(needs):
                skill, language = needs[n // 2]
                skills = {skill: rng.randint(MIN_LEVEL[skill], 5)}
                languages = [language]
            else:
                skills, languages = {}, []
            for s in MIN_LEVEL:
                if s not in skills and rng.random() < 0.6:
                    skills[s] = rng.randint(1, 5)
            for language, p in zip(LANGUAGES, (0.8, 0.35, 0.3), strict=True):
                if language not in languages and rng.random() < p:
                    languages.append(language)
            if not languages:
                languages.append(rng.choice(LANGUAGES))
            capacity = {"chat": rng.randint(1, 4), "email": 5, "voice": 1}
            agent_id = await make_agent(
                self.rt, f"Sim{n:03d}", skills=skills, languages=languages, capacity=capacity
            )
            anchor = n < 2 * len(needs)
            sleepy = not anchor and rng.random() < SLEEPY
            self.agents[agent_id] = SimAgent(
                agent_id, skills, languages, capacity["chat"], anchor, sleepy
            )
            self.capacities[agent_id] = capacity
            self.clock.advance(0.25)  # distinct idle times
        for need in needs:
            able = [a for a in self.agents.values() if a.qualifies(*need)]
            assert len(able) >= 2, self.why(f"{need}: only {len(able)} qualified agents")

    # ----- one step of simulated time

    async def step(self) -> None:
        self.clock.advance(self.rng.randint(5, 10))
        now = self.clock.now()
        await self.finish_work(now)
        await self.presence_changes(now)
        await self.arrive(now)
        started = time.perf_counter()
        await engine(self.rt).run_pass()
        self.stats.pass_seconds += time.perf_counter() - started
        self.stats.passes += 1
        started = time.perf_counter()
        loads = await check_invariants(self.rt, self.capacities)
        await self.check_work_conserving(loads)
        self.stats.check_seconds += time.perf_counter() - started
        await self.answer_offers(now)
        await self.record_assignments(now)

    async def finish_work(self, now: datetime) -> None:
        started = time.perf_counter()
        done = [
            conv_id
            for conv_id in sorted(self.in_progress)
            if (self.conversations[conv_id].resolve_at or now) <= now
        ]
        for conv_id in done:
            await resolve(self.rt, conv_id)
        self.in_progress.difference_update(done)
        self.stats.resolve_seconds += time.perf_counter() - started

    async def presence_changes(self, now: datetime) -> None:
        for agent_id, back_at in sorted(self.on_break.items()):
            if back_at <= now or self.draining:
                await presence(self.rt, agent_id, Presence.available)
                del self.on_break[agent_id]
        async with self.rt.db.read() as session:
            states = dict(
                (await session.execute(select(AgentStatus.agent_id, AgentStatus.reason))).all()
            )
        for agent_id, reason in sorted(states.items()):
            if reason == "missed offers" and agent_id not in self.on_break:
                # The engine set them away; they notice and come back a little later.
                self.stats.missed_away += 1
                self.on_break[agent_id] = now + timedelta(seconds=self.rng.randint(30, 180))
        if self.draining:
            return
        for agent_id, agent in self.agents.items():
            if agent.anchor or agent_id in self.on_break:
                continue
            if self.rng.random() < BREAK_PER_STEP:
                state, reason = self.rng.choice(
                    [(Presence.away, "break"), (Presence.busy, "meeting")]
                )
                await presence(self.rt, agent_id, state, reason)
                self.on_break[agent_id] = now + timedelta(seconds=self.rng.randint(300, 1200))
                self.stats.breaks += 1

    async def arrive(self, now: datetime) -> None:
        """The customers whose time has come write, through the real ingest path (one at a
        time: concurrent writers only contend on SQLite's write lock)."""
        started = time.perf_counter()
        batch: list[tuple[InboundMessage, str, str]] = []
        while self.arrivals + len(batch) < CONVERSATIONS and self.next_arrival <= now:
            n = self.arrivals + len(batch) + 1
            skill = self.rng.choices(list(MIN_LEVEL), SKILL_MIX)[0]
            language = self.rng.choices(LANGUAGES, LANGUAGE_MIX)[0]
            message = InboundMessage(
                inbox_id="sms",
                provider_message_id=f"SMsim{n:05d}",
                sender=IdentityRef.of("phone", f"+1555{n:07d}"),
                text=need_text(self.rng, skill, language),
                language=language,
            )
            batch.append((message, skill, language))
            self.next_arrival += timedelta(seconds=self.rng.expovariate(ARRIVALS_PER_SECOND))
        results = [await self.rt.ingestor.ingest(m) for m, _, _ in batch]
        for (message, skill, language), result in zip(batch, results, strict=True):
            self.arrivals += 1
            assert result.conversation_created and not result.duplicate, self.why(
                f"{message.provider_message_id} did not open a conversation"
            )
            self.conversations[result.conversation_id] = SimConversation(
                id=result.conversation_id,
                skill=skill,
                language=language,
                handle_seconds=self.rng.randint(60, 900),
                arrived_at=now,
                queue_id=self.queues[skill, language],
            )
            self.unassigned.add(result.conversation_id)
        self.stats.ingest_seconds += time.perf_counter() - started

    async def answer_offers(self, now: datetime) -> None:
        started = time.perf_counter()
        async with self.rt.db.read() as session:
            offers = (
                await session.execute(
                    select(Offer.id, Offer.agent_id, Offer.conversation_id)
                    .where(Offer.status == OfferStatus.pending.value, Offer.created_at >= now)
                    .order_by(Offer.id)
                )
            ).all()
        for offer_id, agent_id, conv_id in offers:
            conv = self.conversations[conv_id]
            answer = "accept"
            if not self.draining and not conv.refused:
                roll = self.rng.random()
                if self.agents[agent_id].sleepy and roll < SLEEPY_IGNORE:
                    answer = "ignore"
                elif roll < DECLINE:
                    answer = "decline"
                elif roll < DECLINE + IGNORE:
                    answer = "ignore"
            if answer == "decline":
                conv.refused = True
                await engine(self.rt).answer(offer_id, agent_id, accept=False)
                self.stats.declined += 1
                continue
            if answer == "ignore":
                conv.refused = True
                self.stats.ignored += 1  # the engine expires it after the timeout
                continue
            await engine(self.rt).answer(offer_id, agent_id, accept=True)
            self.stats.offers_answered += 1
        self.stats.answer_seconds += time.perf_counter() - started

    async def record_assignments(self, now: datetime) -> None:
        async with self.rt.db.read() as session:
            rows = (
                await session.execute(
                    select(RoutingTask.conversation_id, RoutingTask.agent_id).where(
                        RoutingTask.status == TaskStatus.assigned.value,
                        RoutingTask.assigned_at >= now,
                    )
                )
            ).all()
        for conv_id, agent_id in rows:
            conv = self.conversations[conv_id]
            assert conv.agent_id is None, self.why(f"conversation {conv_id} assigned twice")
            assert agent_id is not None
            conv.agent_id, conv.assigned_at = agent_id, now
            conv.resolve_at = now + timedelta(seconds=conv.handle_seconds)
            self.stats.max_wait_seconds = max(
                self.stats.max_wait_seconds, (now - conv.arrived_at).total_seconds()
            )
            self.stats.assigned_by[agent_id] += 1
            self.unassigned.discard(conv_id)
            self.in_progress.add(conv_id)

    # ----- checks during the run

    async def check_work_conserving(self, loads: dict[int, dict[str, int]]) -> None:
        """After a pass no waiting task may be left that an available, qualified agent with
        room (who has not refused it) could take: the engine used every free slot it could."""
        async with self.rt.db.read() as session:
            waiting = (
                await session.execute(
                    select(
                        RoutingTask.conversation_id, RoutingTask.queue_id, RoutingTask.excluded
                    ).where(RoutingTask.status == TaskStatus.waiting.value)
                )
            ).all()
            if not waiting:
                return
            available = dict(
                (
                    await session.execute(
                        select(AgentStatus.agent_id, AgentStatus.since).where(
                            AgentStatus.state == Presence.available.value
                        )
                    )
                ).all()
            )
        self.stats.max_waiting = max(self.stats.max_waiting, len(waiting))
        free = [
            a for a in self.agents.values() if a.id in available and loads[a.id]["chat"] < a.chat
        ]
        for conv_id, queue_id, excluded in waiting:
            need = self.queue_need.get(queue_id)
            assert need is not None, self.why(f"conversation {conv_id} in an unexpected queue")
            # Who refused it is held back for the cool-down (unless they came back since).
            refused = exclusions(excluded)
            now = self.clock.now().timestamp()
            able = [
                a.id
                for a in free
                if a.qualifies(*need)
                and not (
                    a.id in refused and held_back(refused[a.id], now, available[a.id].timestamp())
                )
            ]
            assert not able, self.why(
                f"conversation {conv_id} ({need}) waits while agents {able} have room"
            )

    # ----- the run

    async def run(self) -> None:
        await self.setup()
        while self.arrivals < CONVERSATIONS:
            await self.step()
        self.draining = True
        for _ in range(DRAIN_STEPS):
            if not self.unassigned and not self.in_progress:
                break
            await self.step()
        assert not self.unassigned, self.why(
            f"{len(self.unassigned)} conversations never assigned, e.g. "
            + ", ".join(
                f"{c} ({self.conversations[c].skill}, {self.conversations[c].language})"
                for c in sorted(self.unassigned)[:10]
            )
        )
        assert not self.in_progress, self.why(f"{len(self.in_progress)} never resolved")

    # ----- the audit of the whole history

    async def audit(self) -> None:
        why = self.why
        async with self.rt.db.read() as session:
            tasks = (await session.scalars(select(RoutingTask))).all()
            offers = (await session.scalars(select(Offer).order_by(Offer.id))).all()
            convs = {c.id: c for c in (await session.scalars(select(Conversation))).all()}
            assigned_events = (
                await session.execute(
                    select(DomainEvent.conversation_id, DomainEvent.agent_id).where(
                        DomainEvent.type == "conversation.assigned"
                    )
                )
            ).all()
            logs = (
                await session.scalars(
                    select(AgentStateLog).order_by(AgentStateLog.started_at, AgentStateLog.id)
                )
            ).all()
            pending = await session.scalar(
                select(func.count())
                .select_from(Offer)
                .where(Offer.status == OfferStatus.pending.value)
            )
        assert len(self.conversations) == CONVERSATIONS == len(convs), why("conversation count")
        assert pending == 0, why(f"{pending} offers still pending")

        # Exactly one task per conversation, assigned, in the queue the need calls for.
        by_conv: dict[int, list[RoutingTask]] = defaultdict(list)
        for task in tasks:
            by_conv[task.conversation_id].append(task)
        for conv_id, sim in self.conversations.items():
            (task,) = by_conv[conv_id]
            assert task.status == TaskStatus.assigned, why(f"{conv_id}: task {task.status}")
            assert task.queue_id == sim.queue_id, why(
                f"{conv_id} ({sim.skill}, {sim.language}) routed to queue {task.queue_id}"
            )
            assert task.agent_id == sim.agent_id == convs[conv_id].assignee_id, why(
                f"{conv_id}: task says {task.agent_id}, conversation {convs[conv_id].assignee_id}"
            )
            agent = self.agents[task.agent_id]
            assert agent.qualifies(sim.skill, sim.language), why(
                f"{conv_id} ({sim.skill}, {sim.language}) went to unqualified agent {agent}"
            )
            assert convs[conv_id].status == "resolved", why(f"{conv_id} not resolved")

        # One conversation.assigned event per conversation, naming the agent.
        events = Counter(assigned_events)
        assert len(assigned_events) == CONVERSATIONS, why(f"{len(assigned_events)} assigned events")
        for conv_id, sim in self.conversations.items():
            assert events[conv_id, sim.agent_id] == 1, why(f"{conv_id}: assigned events")

        # Offers: one accepted per conversation; never two live at once for a conversation;
        # declines and misses as the agents gave them; each made to an available agent.
        accepted = Counter(o.conversation_id for o in offers if o.status == OfferStatus.accepted)
        assert all(accepted[c] == 1 for c in self.conversations), why("accepted offers")
        statuses = Counter(o.status for o in offers)
        assert statuses[OfferStatus.declined] == self.stats.declined, why(f"declines {statuses}")
        assert (
            statuses[OfferStatus.expired] + statuses[OfferStatus.withdrawn] == self.stats.ignored
        ), why(f"ignored offers {self.stats.ignored} vs {statuses}")
        per_conv: dict[int, list[Offer]] = defaultdict(list)
        for offer in offers:
            per_conv[offer.conversation_id].append(offer)
        for conv_id, conv_offers in per_conv.items():
            for before, after in itertools.pairwise(conv_offers):
                assert before.answered_at is not None, why(f"offer {before.id} never ended")
                assert before.answered_at <= after.created_at, why(
                    f"conversation {conv_id} offered to {before.agent_id} and {after.agent_id}"
                    " at once"
                )
        timeline: dict[int, list[AgentStateLog]] = defaultdict(list)
        for row in logs:
            timeline[row.agent_id].append(row)
        starts = {a: [row.started_at for row in rows] for a, rows in timeline.items()}
        for offer in offers:
            rows = timeline[offer.agent_id]
            at = bisect.bisect_right(starts[offer.agent_id], offer.created_at) - 1
            assert at >= 0 and rows[at].state == Presence.available, why(
                f"offer {offer.id} made to agent {offer.agent_id} while"
                f" {rows[at].state if at >= 0 else 'unknown'}"
            )

        # Capacity over the whole history: pending offers and open assignments per agent.
        changes: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
        for offer in offers:
            assert offer.answered_at is not None
            changes[offer.agent_id] += [(offer.created_at, 1), (offer.answered_at, -1)]
        for conv_id, sim in self.conversations.items():
            conv = convs[conv_id]
            assert sim.agent_id is not None and conv.resolved_at is not None
            assert sim.assigned_at is not None
            changes[sim.agent_id] += [(sim.assigned_at, 1), (conv.resolved_at, -1)]
        for agent_id, deltas in changes.items():
            load, peak = 0, 0
            deltas.sort()
            for i, (at, delta) in enumerate(deltas):
                load += delta
                if i + 1 == len(deltas) or deltas[i + 1][0] != at:
                    peak = max(peak, load)  # the load once everything at this instant is done
            assert load == 0, why(f"agent {agent_id} load ends at {load}")
            assert peak <= self.agents[agent_id].chat, why(
                f"agent {agent_id} peaked at {peak} chats, capacity {self.agents[agent_id].chat}"
            )


@pytest.mark.long
async def test_simulated_day_answers_everyone_with_qualified_agents_within_capacity(
    rt: Runtime, clock: ManualClock
) -> None:
    sim = Simulation(rt, clock, SEED)
    started = time.perf_counter()
    await sim.run()
    await sim.audit()
    s = sim.stats
    elapsed = time.perf_counter() - started
    print(
        f"\nseed={SEED}: {CONVERSATIONS} conversations, {AGENTS} agents, {s.passes} passes in"
        f" {elapsed:.1f} s (passes {s.pass_seconds:.1f} s, ingest {s.ingest_seconds:.1f} s,"
        f" answers {s.answer_seconds:.1f} s, resolves {s.resolve_seconds:.1f} s,"
        f" checks {s.check_seconds:.1f} s); {s.declined} declined, {s.ignored} ignored,"
        f" {s.breaks} breaks, {s.missed_away} set away for missed offers; up to"
        f" {s.max_waiting} waiting, longest wait {s.max_wait_seconds:.0f} s;"
        f" {len(s.assigned_by)} agents served"
    )
    # The simulation exercised what it claims to: load, refusals, breaks, every agent busy.
    assert s.declined and s.ignored and s.breaks and s.missed_away, sim.why(f"{s}")
    assert s.max_waiting > 0, sim.why("never any queueing: the load is too light to test")
    useful = {a.id for a in sim.agents.values() if any(a.qualifies(*n) for n in sim.queues)}
    assert set(s.assigned_by) == useful, sim.why(f"idle agents: {useful - set(s.assigned_by)}")
