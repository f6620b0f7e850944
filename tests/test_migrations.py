"""Migrations: a fresh database upgrades to head, the models match the migrations, and the
app refuses to start on an unmigrated database, naming the command that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from litestar.testing import AsyncTestClient
from sqlalchemy import Connection

from contact_center.app import create_app
from contact_center.db import Database, NotMigratedError, head_revision, migrate
from contact_center.metadata import target_metadata
from contact_center.settings import load_settings
from contact_center.wiring import build_runtime
from tests.conftest import PG_DB, _recreate_pg, pg_url, require_services


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, target_metadata))


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    require_services()
    name = f"{PG_DB}_migrations"  # this process's own, like PG_DB (parallel runs and workers)
    await _recreate_pg(name)
    return pg_url(name)


async def test_fresh_database_upgrades_to_head_and_matches_models(empty_db: str) -> None:
    import asyncio

    db = Database(empty_db, pool=False)
    try:
        with pytest.raises(NotMigratedError, match="contact-center migrate"):
            await db.check_migrated()
        await asyncio.to_thread(migrate, empty_db)
        assert await db.current_revision() == head_revision()
        await db.check_migrated()
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        # Running it again is harmless.
        await asyncio.to_thread(migrate, empty_db)
        assert await db.current_revision() == head_revision()
    finally:
        await db.dispose()


async def test_app_refuses_to_start_on_unmigrated_database(tmp_path: Path) -> None:
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", data_dir=tmp_path
    )
    rt = await build_runtime(settings)
    try:
        app = create_app(runtime=rt, run_scheduler=False)
        with pytest.raises(BaseException) as info:  # noqa: PT011 - unwrapped below
            async with AsyncTestClient(app=app):
                pass
        error: BaseException = info.value
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        assert isinstance(error, NotMigratedError)
        assert "run `contact-center migrate`" in str(error)
    finally:
        await rt.close()


async def test_web_chats_from_before_visitor_scoping_stay_the_visitors(empty_db: str) -> None:
    """0007: an open web chat started before conversations were scoped to their visitor is
    still the visitor's (thread key and active key), so they continue it and see it."""
    import asyncio
    from datetime import UTC, datetime

    from sqlalchemy import text

    await asyncio.to_thread(migrate, empty_db, "0006")
    db = Database(empty_db, pool=False)
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    try:
        async with db.engine.begin() as conn:
            for sql in (
                "INSERT INTO inboxes (id, name, kind, address, credentials, settings, is_active,"
                " created_at) VALUES ('site', 'Site', 'webchat', 'site', '{}', '{}', true, :now)",
                "INSERT INTO customers (id, name, tier, attributes, created_at, updated_at)"
                " VALUES (7, 'Ada', 'standard', '{}', :now, :now)",
                "INSERT INTO customer_identities (customer_id, kind, address, created_at)"
                " VALUES (7, 'webchat', 'abc123', :now)",
                "INSERT INTO conversations (id, inbox_id, customer_id, status, priority,"
                " active_key, created_at, updated_at, last_message_at)"
                " VALUES (1, 'site', 7, 'open', 2, 'site:7', :now, :now, :now)",
            ):
                await conn.execute(text(sql), {"now": now})
        await asyncio.to_thread(migrate, empty_db)
        async with db.engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT thread_key, active_key FROM conversations"))
            ).one()
            extra = await conn.scalar(text("SELECT extra FROM customer_identities"))
        assert tuple(row) == ("visitor:abc123", "site:visitor:abc123:7")
        assert extra in ({}, "{}")
    finally:
        await db.dispose()
