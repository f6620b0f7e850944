"""Engines and sessions.

On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (so two processes writing the
same file queue on the lock instead of failing when a reader upgrades), and reads use a second
engine with ordinary deferred transactions, so readers never wait for writers (WAL).
On PostgreSQL both are the same engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class NotMigratedError(RuntimeError):
    """The database schema is not at the migrations' head."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy (not the driver) decide where transactions begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _make_engine(
    url: str, *, immediate: bool, pool: bool = True, pre_ping: bool = True
) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if not pool:
        kwargs["poolclass"] = NullPool
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {})["timeout"] = 30
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)

        begin_sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin_sql)

        return engine
    if pool:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=pre_ping)
    return create_async_engine(url, **kwargs)


async def _keep_session(_connection: Any) -> None:
    return None


class Database:
    """The process's database handle: ``write()`` for transactions that change state,
    ``read()`` for queries.

    ``pre_ping`` (PostgreSQL) checks a pooled connection with a round trip before each use,
    so a request never fails on a connection the server dropped. Loops that retry anyway (the
    scheduler's) turn it off: a dropped connection then fails one attempt, SQLAlchemy
    discards the pool's connections, and the next attempt connects afresh."""

    def __init__(self, url: str, *, pool: bool = True, pre_ping: bool = True) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url, immediate=True, pool=pool, pre_ping=pre_ping)
        self.read_engine = (
            _make_engine(url, immediate=False, pool=pool) if self.is_sqlite else self.engine
        )
        self._write = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._pool = pool
        self._driver_pool: Any = None
        self._driver_pool_lock = asyncio.Lock()

    async def driver_pool(self) -> Any:
        """PostgreSQL only: an asyncpg pool of its own for hot single statements.

        A single statement is its own transaction, so it needs none of SQLAlchemy's BEGIN,
        COMMIT and pre-ping round trips: one round trip per call. A connection the server
        dropped raises ``asyncpg.InterfaceError`` or ``ConnectionDoesNotExistError`` once and is
        replaced; callers treat that like any transient database error.
        """
        if self.is_sqlite:
            raise RuntimeError("the driver pool is for PostgreSQL")
        if self._driver_pool is None:
            async with self._driver_pool_lock:
                if self._driver_pool is None:
                    import asyncpg

                    url = make_url(self.url).set(drivername="postgresql")
                    self._driver_pool = await asyncpg.create_pool(
                        url.render_as_string(hide_password=False),
                        min_size=1 if self._pool else 0,
                        max_size=20 if self._pool else 1,
                        max_inactive_connection_lifetime=60,
                        # Released connections keep their session: nothing here sets any
                        # (no SET, LISTEN, cursors or advisory locks), and asyncpg still rolls
                        # back an open transaction itself. The default reset is a second
                        # round trip per statement.
                        reset=_keep_session,
                    )
        return self._driver_pool

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed on success and rolled back on error."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncSession]:
        """PostgreSQL: a session whose statements each commit on their own, without the
        BEGIN and COMMIT (or ROLLBACK) round trips of a transaction: for hot paths of reads
        that need no common snapshot (under READ COMMITTED each statement has its own anyway)
        and single statements that are atomic alone. SQLite: a ``write()`` transaction."""
        if self.is_sqlite:
            async with self.write() as session:
                yield session
            return
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                yield session

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def current_revision(self) -> str | None:
        async with self.read_engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def check_migrated(self) -> None:
        head = head_revision()
        current = await self.current_revision()
        if current != head:
            raise NotMigratedError(
                f"the database is at migration {current or 'none (empty database)'} but the code "
                f"needs {head}: run `contact-center migrate`"
            )

    async def expire_driver_pool(self) -> None:
        """After a database error: the driver pool's connections are replaced on next use
        (they may have been dropped by a server restart)."""
        if self._driver_pool is not None:
            await self._driver_pool.expire_connections()

    async def dispose(self) -> None:
        if self._driver_pool is not None:
            pool, self._driver_pool = self._driver_pool, None
            await pool.close()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (blocking; run outside an event loop)."""
    from alembic import command

    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
