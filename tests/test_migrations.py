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
from tests.conftest import _recreate_pg, pg_url, require_services


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, target_metadata))


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    require_services()
    await _recreate_pg("cc_test_migrations")
    return pg_url("cc_test_migrations")


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
