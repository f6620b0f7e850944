"""Ingest throughput against raw committed inserts, on the same database in the same run.

    .venv/bin/python bench/ingest.py            # full run (a few minutes on 2 cores)
    .venv/bin/python bench/ingest.py --quick    # smoke run

PostgreSQL: a dedicated database ``cc_bench`` (``BENCH_PG_DB`` names another; dropped and
re-created, then dropped again). For each concurrency level C, N inbound SMS go through the real
``Ingestor.ingest`` (dedupe, customer resolution, threading, message, events: committed before
it returns; concurrent ones share a statement, and the messages per statement are reported) from
1,000 distinct numbers that have written before (each has a customer and an open conversation:
the steady state). Two baselines write N single rows into ``bench_raw_messages``, a copy of the
``messages`` table's columns and indexes: on PostgreSQL one ``INSERT`` statement on the bare
asyncpg driver (its own transaction: the floor, and the ratio reported), and an ``INSERT`` in a
SQLAlchemy transaction on the app's engine (BEGIN, INSERT, COMMIT and the pool's pre-ping).
First contact (new number: new customer, identity and conversation) is measured after, for
information, as is SQLite (the embedded default). Results go to ``bench/results/``
(``--results DIR`` elsewhere; ``--no-sqlite`` for PostgreSQL alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import run_concurrently  # noqa: E402
from contact_center.db import migrate  # noqa: E402
from contact_center.identities import IdentityRef  # noqa: E402
from contact_center.ingest import InboundMessage  # noqa: E402
from contact_center.models import Inbox  # noqa: E402
from contact_center.settings import load_settings  # noqa: E402
from contact_center.wiring import build_runtime  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_DB = os.environ.get("BENCH_PG_DB", "cc_bench")
TEXT = "Hello, I was charged twice for my order and would like a refund, please check. " * 1


async def recreate(drop_only: bool = False) -> None:
    await common.recreate(PG_DB, drop_only=drop_only)


async def measure(url: str, levels: list[int], count: int, label: str) -> list[dict[str, Any]]:
    data_dir = Path(tempfile.mkdtemp(prefix="cc-bench-"))
    settings = load_settings(database_url=url, data_dir=data_dir, redis_url=None)
    rt = await build_runtime(settings)
    statements = 0

    def count_statement(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(rt.db.engine.sync_engine, "before_cursor_execute", count_statement)
    # The PostgreSQL hot path sends its statement to asyncpg directly: count those too.
    real_fetch, real_fetchrow = asyncpg.Connection.fetch, asyncpg.Connection.fetchrow

    async def counted_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        count_statement()
        return await real_fetch(self, *args, **kwargs)

    async def counted_fetchrow(self: Any, *args: Any, **kwargs: Any) -> Any:
        count_statement()
        return await real_fetchrow(self, *args, **kwargs)

    asyncpg.Connection.fetch = counted_fetch  # type: ignore[method-assign]
    asyncpg.Connection.fetchrow = counted_fetchrow  # type: ignore[method-assign]
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
                created_at=rt.clock.now(),
            )
        )
    async with rt.db.engine.begin() as conn:
        if rt.db.is_sqlite:
            # The same columns and indexes as messages (its foreign keys left out).
            rows = (
                await conn.execute(
                    text(
                        "SELECT type, sql FROM sqlite_master WHERE tbl_name = 'messages'"
                        " AND sql IS NOT NULL ORDER BY type DESC"
                    )
                )
            ).all()
            for kind, ddl in rows:
                ddl = re.sub(
                    r'(?:"messages"|\bmessages\b)(\s*\()', r"bench_raw_messages\1", ddl, count=1
                )
                if kind == "index":
                    ddl = re.sub(r"INDEX (\w+)", r"INDEX raw_\1", ddl, count=1)
                else:
                    ddl = "\n".join(
                        line
                        for line in ddl.splitlines()
                        if "FOREIGN KEY" not in line and "REFERENCES" not in line
                    )
                    ddl = re.sub(r",\s*\n\)", "\n)", ddl)
                await conn.execute(text(ddl))
        else:
            await conn.execute(
                text("CREATE TABLE bench_raw_messages (LIKE messages INCLUDING ALL)")
            )
    insert = text(
        "INSERT INTO bench_raw_messages (conversation_id, inbox_id, direction, author_type,"
        " private, text, provider_message_id, delivery_status, send_attempts, extra, created_at)"
        " VALUES (:c, 'sms', 'in', 'customer', false, :t, :p, 'received', 0, '{}', :now)"
    )
    driver_insert = (
        "INSERT INTO bench_raw_messages (conversation_id, inbox_id, direction, author_type,"
        " private, text, provider_message_id, delivery_status, send_attempts, extra, created_at)"
        " VALUES ($1, 'sms', 'in', 'customer', false, $2, $3, 'received', 0, '{}', $4)"
    )
    rows = []
    serial = 0
    try:
        # Warm-up: one message from each of the 1,000 numbers creates their customers and open
        # conversations (the steady state of a contact center: people writing again).
        for i in range(1000):
            await rt.ingestor.ingest(
                InboundMessage(
                    inbox_id="sms",
                    provider_message_id=f"warm{i}",
                    sender=IdentityRef.of("phone", f"+1415555{i % 1000:04d}"),
                    text=TEXT,
                )
            )
        statements = 0
        await rt.ingestor.ingest(
            InboundMessage(
                inbox_id="sms",
                provider_message_id="probe",
                sender=IdentityRef.of("phone", "+14155550001"),
                text=TEXT,
            )
        )
        per_ingest = statements
        for level in levels:
            base = serial
            serial += count

            async def ingest_one(i: int, base: int = base) -> None:
                await rt.ingestor.ingest(
                    InboundMessage(
                        inbox_id="sms",
                        provider_message_id=f"b{base + i}",
                        sender=IdentityRef.of("phone", f"+1415555{(base + i) % 1000:04d}"),
                        text=TEXT,
                    )
                )

            async def raw_one(i: int, base: int = base) -> None:
                async with rt.db.engine.begin() as conn:
                    await conn.execute(
                        insert,
                        {
                            "c": 1,
                            "t": TEXT,
                            "p": f"r{base + i}",
                            "now": datetime.now(UTC).replace(tzinfo=None)
                            if rt.db.is_sqlite
                            else datetime.now(UTC),
                        },
                    )

            async def raw_driver_one(i: int, base: int = base) -> None:
                pool = await rt.db.driver_pool()
                await pool.execute(driver_insert, 1, TEXT, f"d{base + i}", datetime.now(UTC))

            raw_sa = await run_concurrently(count, level, raw_one)
            raw = raw_sa
            if not rt.db.is_sqlite:
                # The floor: one INSERT statement (its own transaction) on the bare driver.
                raw = await run_concurrently(count, level, raw_driver_one)
            sent_before = statements
            ingest = await run_concurrently(count, level, ingest_one)
            # Concurrent hot ingests share statements (group commit): messages per statement.
            batched = count / max(1, statements - sent_before)
            row = {
                "database": label,
                "concurrency": level,
                "count": count,
                "ingest_per_s": round(ingest, 1),
                "raw_insert_per_s": round(raw, 1),
                "ratio": round(ingest / raw, 3),
                "raw_sqlalchemy_per_s": round(raw_sa, 1),
                "ratio_sqlalchemy": round(ingest / raw_sa, 3),
                "statements_per_ingest": per_ingest,
                "messages_per_statement": round(batched, 2),
                "first_contact_per_s": None,
            }
            print(
                f"{label:10} C={level:<3} ingest {ingest:8.1f}/s  raw {raw:8.1f}/s  "
                f"ratio {ingest / raw:5.2f}  raw via SQLAlchemy {raw_sa:8.1f}/s  "
                f"({per_ingest} statements per ingest alone, "
                f"{batched:.1f} messages per statement here)",
                flush=True,
            )
            rows.append(row)
        # First contact (new customer, new conversation: the general path), for information.
        for row in rows:
            base = serial
            serial += count // 3

            async def first_one(i: int, base: int = base) -> None:
                await rt.ingestor.ingest(
                    InboundMessage(
                        inbox_id="sms",
                        provider_message_id=f"f{base + i}",
                        sender=IdentityRef.of("phone", f"+1416{base + i:07d}"),
                        text=TEXT,
                    )
                )

            first = await run_concurrently(count // 3, row["concurrency"], first_one)
            row["first_contact_per_s"] = round(first, 1)
            print(f"{label:10} C={row['concurrency']:<3} first contact {first:8.1f}/s", flush=True)
    finally:
        await rt.close()
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['database']}\nC={r['concurrency']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(
        [x - 0.27 for x in xs],
        [r["raw_insert_per_s"] if r["database"] == "postgresql" else 0 for r in rows],
        0.27,
        label="raw INSERT on the bare driver (autocommit)",
    )
    ax.bar(
        list(xs),
        [r["raw_sqlalchemy_per_s"] for r in rows],
        0.27,
        label="raw INSERT in a SQLAlchemy transaction",
    )
    ax.bar([x + 0.27 for x in xs], [r["ingest_per_s"] for r in rows], 0.27, label="ingest()")
    for x, r in zip(xs, rows, strict=True):
        ax.annotate(
            f"{r['ratio']:.0%}", (x + 0.27, r["ingest_per_s"]), ha="center", va="bottom", fontsize=9
        )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("messages per second")
    ax.set_title("Ingest vs raw committed inserts (same database, same run; 2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where to write (default bench/results)"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    count = 200 if args.quick else args.count
    results: Path = args.results
    rows: list[dict[str, Any]] = []
    await recreate()
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{PG_DB}"
        await asyncio.to_thread(migrate, url)
        rows += await measure(url, [1, 8, 32], count, "postgresql")
    finally:
        await recreate(drop_only=True)
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
            await asyncio.to_thread(migrate, url)
            rows += await measure(url, [1, 8], count, "sqlite")
    pg_version = await common.pg_version()
    results.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "quick": args.quick,
    }
    (results / "ingest.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2))
    lines = [
        "| database | concurrency | ingest/s | raw insert/s (driver) | ratio "
        "| raw insert/s (SQLAlchemy transaction) | ratio | statements/ingest "
        "| messages/statement | first contact/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['database']} | {r['concurrency']} | {r['ingest_per_s']:.0f} | "
        + (
            f"{r['raw_insert_per_s']:.0f} | {r['ratio']:.0%} | "
            if r["database"] == "postgresql"
            else "n/a | | "
        )
        + f"{r['raw_sqlalchemy_per_s']:.0f} | {r['ratio_sqlalchemy']:.0%} | "
        f"{r['statements_per_ingest']} | {r['messages_per_statement']:.1f} "
        f"| {r['first_contact_per_s']:.0f} |"
        for r in rows
    ]
    (results / "ingest.md").write_text(
        f"# Ingest benchmark ({meta['date']}, {meta['cpus']} CPUs, PostgreSQL "
        f"{pg_version}, Python {meta['python']})\n\n" + "\n".join(lines) + "\n"
    )
    plot(rows, results / "ingest.png")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
