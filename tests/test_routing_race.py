"""Routing engines racing over one database never double-offer, double-assign or overfill."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from contact_center.models import Conversation
from contact_center.runtime import Runtime
from contact_center.wiring import build_runtime
from routing.engine import RoutingEngine
from routing.models import Offer, OfferStatus
from tests.helpers import make_inbox
from tests.routing_helpers import arrive, check_invariants, make_agent, make_queue

ROOT = Path(__file__).resolve().parent.parent


async def _setup(rt: Runtime, agents: int, conversations: int, auto: bool) -> None:
    await make_inbox(rt)
    await make_queue(rt, is_default=True, auto_accept=["chat"] if auto else [])
    for i in range(agents):
        await make_agent(rt, f"Agent{i:03d}", capacity={"chat": 2})
    for _ in range(conversations):
        await arrive(rt)


async def test_two_engines_in_one_process_race_safely(rt: Runtime) -> None:
    await _setup(rt, agents=6, conversations=30, auto=False)
    other = await build_runtime(rt.settings, clock=rt.clock)
    try:
        a, b = RoutingEngine(rt), RoutingEngine(other)
        await asyncio.gather(a.reconcile(), b.reconcile())  # both try to create every task
        # Both plan from the same snapshot, so their plans collide; the database decides.
        plan_a, plan_b = await asyncio.gather(a.plan(), b.plan())
        assert plan_a and plan_b
        await asyncio.gather(
            *(a.offer(p.task_id, p.agent_id) for p in plan_a),
            *(b.offer(p.task_id, p.agent_id) for p in plan_b),
        )
    finally:
        await other.close()
    await check_invariants(rt)
    async with rt.db.read() as session:
        pending = await session.scalar(
            select(func.count()).select_from(Offer).where(Offer.status == OfferStatus.pending)
        )
    assert pending == 12  # six agents, two chats each, every one of them filled once


async def test_two_routing_processes_never_double_assign(rt: Runtime) -> None:
    await _setup(rt, agents=20, conversations=80, auto=True)
    start_at = time.time() + 3
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.routing_proc",
            str(start_at),
            "3",
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await asyncio.wait_for(p.communicate(), 180) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    made = [int(out.decode().strip()) for out, _ in outputs]
    await check_invariants(rt)
    async with rt.db.read() as session:
        assigned = await session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.assignee_id.is_not(None))
        )
    assert assigned == 40  # 20 agents x 2 chats: full, and not one more
    assert sum(made) == 40  # every assignment made by exactly one of the two processes


async def test_concurrent_offers_to_one_agent_stop_at_capacity(rt: Runtime) -> None:
    await make_inbox(rt)
    await make_queue(rt, is_default=True)
    agent = await make_agent(rt, "Busy", capacity={"chat": 2})
    for _ in range(10):
        await arrive(rt)
    other = await build_runtime(rt.settings, clock=rt.clock)
    try:
        a, b = RoutingEngine(rt), RoutingEngine(other)
        await a.reconcile()
        async with rt.db.read() as session:
            from routing.models import RoutingTask

            tasks = (await session.scalars(select(RoutingTask.id))).all()
        assert len(tasks) == 10
        # Ten different tasks offered to the same agent at once, from two connection pools.
        results = await asyncio.gather(
            *((a if i % 2 else b).offer(task_id, agent) for i, task_id in enumerate(tasks))
        )
    finally:
        await other.close()
    assert sum(r is not None for r in results) == 2
    await check_invariants(rt)


async def test_a_killed_routing_process_loses_nothing(rt: Runtime) -> None:
    """SIGKILL a routing process in the middle of its work: what it committed stands, what
    it had not committed never happened, and another engine finishes the job."""
    import signal

    await _setup(rt, agents=20, conversations=80, auto=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.routing_proc",
        str(time.time()),
        "-1",
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 60)  # one pass is done
    assert first.strip(), (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await check_invariants(rt)
    # Free everyone (the customers were served) and bring more work: a new engine carries on.
    async with rt.db.write() as session:
        conversations = (
            await session.scalars(select(Conversation).where(Conversation.assignee_id.is_not(None)))
        ).all()
    from tests.routing_helpers import resolve

    for conv in conversations:
        await resolve(rt, conv.id)
    survivor = RoutingEngine(rt)
    for _ in range(3):
        await survivor.run_pass()
    await check_invariants(rt)
    async with rt.db.read() as session:
        open_unassigned = await session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.status == "open", Conversation.assignee_id.is_(None))
        )
        assigned = await session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.status == "open", Conversation.assignee_id.is_not(None))
        )
    assert assigned == 40 and open_unassigned == 0


async def test_an_assignment_and_an_offer_commit_lock_in_one_order(
    rt: Runtime, backend: str
) -> None:
    """A direct assignment (conversation, then task) racing the engine's offer commit: both
    take the conversation before the task, so one waits for the other instead of the two
    deadlocking (PostgreSQL would abort one). SQLite has one writer: they simply queue."""
    from sqlalchemy import text

    from contact_center.models import Conversation as Conv
    from routing.models import RoutingTask, TaskStatus

    await make_inbox(rt)
    await make_queue(rt, is_default=True)
    agent = await make_agent(rt, "Agent")
    rival = await make_agent(rt, "Rival", available=False)
    conv = await arrive(rt)
    engine = RoutingEngine(rt)
    await engine.reconcile()
    plan = await engine.plan()
    assert len(plan) == 1 and plan[0].agent_id == agent
    other = await build_runtime(rt.settings, clock=rt.clock)
    try:
        async with other.db.write() as session:
            # The assignment's first step: the conversation, locked.
            await session.get(Conv, conv, with_for_update=True)
            commit = asyncio.create_task(engine.commit_offers(plan))
            if backend == "postgres":
                async with asyncio.timeout(10):  # until the commit waits on a row lock
                    while True:
                        async with rt.db.read() as probe:
                            waiting = await probe.scalar(
                                text(
                                    "SELECT count(*) FROM pg_stat_activity WHERE "
                                    "datname = current_database() AND wait_event_type = 'Lock'"
                                )
                            )
                        if waiting:
                            break
                        await asyncio.sleep(0.01)
            # Its second step: the task, locked and ended; then the conversation assigned.
            task = await session.scalar(
                select(RoutingTask).where(RoutingTask.conversation_id == conv).with_for_update()
            )
            assert task is not None
            task.status = TaskStatus.assigned.value
            task.active_conversation_id = None
            conversation = await session.get(Conv, conv)
            assert conversation is not None
            conversation.assignee_id = rival
        made = await asyncio.wait_for(commit, 20)
    finally:
        await other.close()
    assert made == []  # the task was no longer waiting once the commit could go on
    async with rt.db.read() as session:
        conversation = await session.get(Conv, conv)
        assert conversation is not None and conversation.assignee_id == rival
    await check_invariants(rt)
