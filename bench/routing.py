"""Routing throughput and arrival-to-offer latency on PostgreSQL, beside committed updates.

    .venv/bin/python bench/routing.py            # 1,000 agents, 10,000 waiting (a few minutes)
    .venv/bin/python bench/routing.py --quick    # 100 agents, 1,000 waiting

A dedicated database (``cc_bench_routing``, or ``--database``) is created, migrated and
dropped again; the bus uses Redis database 14 (``--redis-db``). The machine's load average at
the start and the end is recorded beside the figures (the machine may be shared).

1. *Backlog*: N agents are available (chat capacity 10 each, so the backlog fits) and M
   conversations wait (created through the real ingest, from M different numbers, before any
   agent is there); then the engine runs passes until every conversation is assigned. The
   queue auto-accepts, so an assignment is one committed offer + assignment. Reported:
   assignments per second over the drain (task creation timed apart).
2. *Latency*: with the scheduler (relay and engine) running as it is deployed, in its own
   process with the bus on Redis, and agents free, conversations arrive one by one (50 per
   second) in this process; the time from the ingest's commit to the moment the offer event
   reaches this process over the bus is measured, p50 and p99 (after 20 arrivals of warm-up
   that prepare the statements and caches of a freshly started scheduler). The relay and the
   SLA consumer have caught up with the backlog's events first.
3. *Baseline*: single-row ``UPDATE ... ; COMMIT`` on ``agent_status`` with the same driver and
   pool, at concurrency 1 and 8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import run_concurrently  # noqa: E402
from contact_center.db import migrate  # noqa: E402
from contact_center.identities import IdentityRef  # noqa: E402
from contact_center.ingest import InboundMessage  # noqa: E402
from contact_center.models import Agent, Conversation, Inbox  # noqa: E402
from contact_center.relay import EVENTS_CHANNEL  # noqa: E402
from contact_center.runtime import Runtime  # noqa: E402
from contact_center.settings import load_settings  # noqa: E402
from contact_center.wiring import build_runtime, build_scheduler  # noqa: E402
from routing import sla  # noqa: E402
from routing.engine import engine_of, set_presence  # noqa: E402
from routing.models import Presence, Queue, RoutingTask  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_DB = "cc_bench_routing"
REDIS_URL = "redis://127.0.0.1:6379/14"
WARM_UP = 20


def set_targets(database: str, redis_db: int) -> None:
    global PG_DB, REDIS_URL
    PG_DB, REDIS_URL = database, f"redis://127.0.0.1:6379/{redis_db}"


async def recreate(drop_only: bool = False) -> None:
    await common.recreate(PG_DB, drop_only=drop_only)


async def setup(rt: Runtime, agents: int) -> list[int]:
    now = rt.clock.now()
    async with rt.db.write() as session:
        session.add(
            Inbox(
                id="sms",
                name="SMS",
                kind="sms",
                address="+15005550006",
                credentials={},
                settings={},
                is_active=True,
                created_at=now,
            )
        )
        session.add(
            Queue(
                name="Support",
                priority=0,
                skills={"support": 1},
                strategy="longest_idle",
                offer_timeout_seconds=30,
                auto_accept=["chat"],
                overflow=[],
                sticky_seconds=0,
                requeue_on_disconnect=True,
                is_default=True,
                created_at=now,
            )
        )
        rows = [
            Agent(
                email=f"agent{i}@bench.test",
                name=f"Agent {i}",
                role="agent",
                languages=["en"],
                skills={"support": 1 + i % 5},
                capacity={"chat": 10},
                voice_blocks_chat=False,
                is_active=True,
                created_at=now,
            )
            for i in range(agents)
        ]
        session.add_all(rows)
        await session.flush()
        return [a.id for a in rows]


async def arrivals(rt: Runtime, count: int, prefix: str) -> None:
    async def one(i: int) -> None:
        await rt.ingestor.ingest(
            InboundMessage(
                inbox_id="sms",
                provider_message_id=f"{prefix}{i}",
                sender=IdentityRef.of("phone", f"+1415{i:07d}"),
                text="Hello, I need help with my order.",
            )
        )

    await run_concurrently(count, 8, one)


async def backlog(rt: Runtime, agents: list[int], waiting: int) -> dict[str, Any]:
    start = time.perf_counter()
    await arrivals(rt, waiting, "B")
    ingest_s = time.perf_counter() - start
    engine = engine_of(rt)
    start = time.perf_counter()
    while await engine.reconcile():
        pass
    tasks_s = time.perf_counter() - start
    async with rt.db.write() as session:
        for agent_id in agents:
            await set_presence(session, agent_id, Presence.available, clock=rt.clock)
    start = time.perf_counter()
    passes = 0
    while True:
        passes += 1
        if not await engine.run_pass():
            break
    drain_s = time.perf_counter() - start
    async with rt.db.read() as session:
        assigned = int(
            await session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(Conversation.assignee_id.is_not(None))
            )
            or 0
        )
        waiting_left = int(
            await session.scalar(
                select(func.count()).select_from(RoutingTask).where(RoutingTask.status == "waiting")
            )
            or 0
        )
    return {
        "agents": len(agents),
        "waiting": waiting,
        "assigned": assigned,
        "left_waiting": waiting_left,
        "passes": passes,
        "ingest_per_s": round(waiting / ingest_s, 1),
        "task_creation_per_s": round(waiting / tasks_s, 1),
        "assignments_per_s": round(assigned / drain_s, 1),
        "drain_seconds": round(drain_s, 2),
    }


async def latency(rt: Runtime, count: int, url: str) -> dict[str, Any]:
    """Arrival (ingest committed) to offer event on the bus, with the scheduler running as it
    is deployed: its own process (``contact-center scheduler``), the bus and its wake-ups on
    Redis. Arrivals and the clock are in this process."""
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    live = await rt.bus.subscribe(EVENTS_CHANNEL)
    env = {**os.environ, "CC_DATABASE_URL": url, "CC_REDIS_URL": REDIS_URL}
    scheduler = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "contact-center"),
        "scheduler",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )

    async def listen() -> None:
        while True:
            item = await live.get()
            if item is None:
                continue
            _, env = item
            if env.get("type") == "offer.created":
                conv = int(env["conversation_id"])
                seen.setdefault(conv, time.perf_counter())

    listener = asyncio.create_task(listen())
    try:
        await asyncio.sleep(5.0)  # the scheduler starts, takes the lead and settles
        for i in range(-WARM_UP, count):
            result = await rt.ingestor.ingest(
                InboundMessage(
                    inbox_id="sms",
                    provider_message_id=f"L{i}",
                    sender=IdentityRef.of("phone", f"+1650{i + WARM_UP:07d}"),
                    text="Hello, are you there?",
                )
            )
            if i >= 0:  # the first WARM_UP arrivals prepare statements and caches: not counted
                sent[result.conversation_id] = time.perf_counter()
            await rt.committed()
            await asyncio.sleep(0.02)  # 50 arrivals per second
        deadline = time.perf_counter() + 30
        while any(c not in seen for c in sent) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    finally:
        scheduler.terminate()
        await scheduler.wait()
        listener.cancel()
        live.close()
    waits = sorted((seen[c] - t) * 1000 for c, t in sent.items() if c in seen)
    return {
        "arrivals": count,
        "offered": len(waits),
        "p50_ms": round(statistics.median(waits), 2) if waits else None,
        "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 2) if waits else None,
        "max_ms": round(waits[-1], 2) if waits else None,
    }


async def baseline(rt: Runtime, agents: list[int], count: int) -> dict[str, float]:
    stmt = text("UPDATE agent_status SET last_offer_at = :now WHERE agent_id = :id")
    out = {}
    for level in (1, 8):

        async def one(i: int) -> None:
            async with rt.db.engine.begin() as conn:
                await conn.execute(stmt, {"now": datetime.now(UTC), "id": agents[i % len(agents)]})

        start = time.perf_counter()
        await run_concurrently(count, level, one)
        out[f"update_commit_per_s_c{level}"] = round(count / (time.perf_counter() - start), 1)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=10000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--database", default=PG_DB, help="scratch database (dropped after)")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database for the bus")
    args = parser.parse_args()
    set_targets(args.database, args.redis_db)
    load_before = os.getloadavg()
    agents_n, waiting = (100, 1000) if args.quick else (args.agents, args.waiting)
    await recreate()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DB}"
    try:
        await asyncio.to_thread(migrate, url)
        Redis.from_url(REDIS_URL).flushdb()
        settings = load_settings(
            database_url=url, data_dir=Path(tempfile.mkdtemp()), redis_url=REDIS_URL
        )
        rt = await build_runtime(settings)
        try:
            agents = await setup(rt, agents_n)
            result = {"backlog": await backlog(rt, agents, waiting)}
            print(json.dumps(result["backlog"]), flush=True)
            result["baseline"] = await baseline(rt, agents, 3000)
            print(json.dumps(result["baseline"]), flush=True)
            # Free every agent again for the latency run (resolve the backlog at once).
            async with rt.db.write() as session:
                await session.execute(
                    text(
                        "UPDATE conversations SET status = 'resolved', active_key = NULL,"
                        " resolved_at = now()"
                    )
                )
            # Publish the backlog's events first (tens of thousands), so that the latency run
            # measures arrivals, not the relay catching up on the drain.
            relay = build_scheduler(rt).relay
            while await relay.run_once():
                pass
            # Likewise the SLA consumer (the scheduler's periodic `sla`, on the same event loop as
            # the engine): left behind, it works through the drain's events during the run.
            await sla.run_periodic(rt)
            result["latency"] = await latency(rt, 300 if not args.quick else 100, url)
            print(json.dumps(result["latency"]), flush=True)
        finally:
            await rt.close()
    finally:
        await recreate(drop_only=True)
        Redis.from_url(REDIS_URL).flushdb()
    pg_version = await common.pg_version()
    result["machine"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "quick": args.quick,
        "load_average_1m_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps(result, indent=2))
    b, base, lat = result["backlog"], result["baseline"], result["latency"]
    (RESULTS / "routing.md").write_text(
        f"# Routing benchmark ({result['machine']['date']}, {os.cpu_count()} CPUs, "
        f"PostgreSQL {pg_version})\n\n"
        "| figure | value |\n|---|---|\n"
        f"| agents online / conversations waiting | {b['agents']} / {b['waiting']} |\n"
        f"| assignments per second (backlog drain) | {b['assignments_per_s']:.0f} |\n"
        f"| task creation per second | {b['task_creation_per_s']:.0f} |\n"
        f"| committed single-row UPDATE per second (C=1 / C=8) | "
        f"{base['update_commit_per_s_c1']:.0f} / {base['update_commit_per_s_c8']:.0f} |\n"
        f"| arrival-to-offer p50 / p99 / max (ms, agents free) | "
        f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']} |\n"
        f"| machine load average (1 min) at start / end | "
        f"{' / '.join(str(x) for x in result['machine']['load_average_1m_start_end'])} |\n"
    )
    plot(result, RESULTS / "routing.png")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    base = result["baseline"]
    left.bar(
        ["assignments/s", "UPDATE+COMMIT/s\nC=1", "UPDATE+COMMIT/s\nC=8"],
        [
            result["backlog"]["assignments_per_s"],
            base["update_commit_per_s_c1"],
            base["update_commit_per_s_c8"],
        ],
        color=["tab:orange", "tab:blue", "tab:blue"],
    )
    left.axhline(1000, color="red", linestyle="--", label="target 1,000/s")
    left.set_title("Backlog drain vs committed updates")
    left.legend()
    lat = result["latency"]
    right.bar(["p50", "p99"], [lat["p50_ms"] or 0, lat["p99_ms"] or 0], color="tab:green")
    right.axhline(50, color="red", linestyle="--", label="target p99 50 ms")
    right.set_ylabel("ms")
    right.set_title("Arrival to offer (agents free)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    asyncio.run(main())
