"""Fixtures: every test that touches state runs against both backends.

- ``sqlite``: the embedded default (SQLite file, in-process bus, in-process jobs).
- ``postgres``: PostgreSQL + Redis bus + rq (jobs run by a real rq worker, ``tests.helpers``).

Each pytest process migrates one PostgreSQL database (``CC_TEST_PG_DB``, default ``cc_test``)
and one SQLite template once, then gives every test a clean copy (SQLite) or truncated tables
(PostgreSQL) and an empty Redis database (``CC_TEST_REDIS_DB``, default 9). Under ``CI=true`` a
missing PostgreSQL or Redis fails the run instead of skipping.

Under pytest-xdist (``./dev test`` runs ``-n 2``) every worker is such a process with its own
databases, derived from its id (``PYTEST_XDIST_WORKER``, ``gw0``, ``gw1``, ...): PostgreSQL
``<CC_TEST_PG_DB>_gw<i>`` and Redis database ``CC_TEST_REDIS_DB - 1 - i``, taken downward from
the base so they never reach the databases above it (13 and 14 belong to the benchmarks); with
the default base 9 the workers use 8, 7, .... A run without xdist, or with ``-n 0``, uses the
base databases themselves, so a serial run and a parallel one with the same settings do not
meet. Everything else a test holds is per process already: ``tmp_path`` (xdist gives each
worker its own base directory, hence its own SQLite template), loopback ports (bound to port
0), and Redis keys such as the scheduler's leader lease (in the worker's own database).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from contact_center.clock import ManualClock
from contact_center.db import migrate
from contact_center.metadata import target_metadata
from contact_center.runtime import Runtime
from contact_center.settings import Settings, get_settings, load_settings
from contact_center.wiring import build_runtime
from tests import browser as browser_support

PG_ADMIN_URL = os.environ.get("CC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("CC_TEST_REDIS", "redis://127.0.0.1:6379")
# pytest-xdist's worker id ("gw0", "gw1", ...); empty in a run without workers.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

BACKENDS = ["sqlite", "postgres"]


def _test_databases() -> tuple[str, int]:
    """This process's PostgreSQL database and Redis database number (see the docstring)."""
    pg_db = os.environ.get("CC_TEST_PG_DB", "cc_test")
    redis_db = int(os.environ.get("CC_TEST_REDIS_DB", "9"))
    if not XDIST_WORKER:
        return pg_db, redis_db
    index = int(XDIST_WORKER.removeprefix("gw"))
    worker_db = redis_db - 1 - index
    if worker_db < 0:
        raise pytest.UsageError(
            f"xdist worker {XDIST_WORKER} would use Redis database {worker_db}: workers take "
            f"CC_TEST_REDIS_DB - 1 - i (CC_TEST_REDIS_DB={redis_db}); use fewer workers (-n) or "
            "a higher CC_TEST_REDIS_DB"
        )
    return f"{pg_db}_{XDIST_WORKER}", worker_db


PG_DB, REDIS_DB = _test_databases()


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, before starting any, more xdist workers than there are Redis databases below
    the base (a worker refuses too, but only once it has started; see _test_databases)."""
    workers = len(getattr(config.option, "tx", None) or [])
    if not XDIST_WORKER and workers > REDIS_DB:
        raise pytest.UsageError(
            f"{workers} xdist workers need Redis databases {REDIS_DB - 1} down to "
            f"{REDIS_DB - workers} (CC_TEST_REDIS_DB - 1 - i); use fewer workers (-n) or a "
            "higher CC_TEST_REDIS_DB"
        )


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def pg_url(db: str = PG_DB) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + (
        f"/{db}"
    )


def redis_url() -> str:
    return f"{REDIS_BASE}/{REDIS_DB}"


def require_services() -> None:
    missing = [
        name
        for name, port in (("PostgreSQL", 5432), ("Redis", 6379))
        if not _port_open("127.0.0.1", port)
    ]
    if missing:
        message = f"{' and '.join(missing)} not answering on 127.0.0.1"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing service is a failure)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg_database() -> str:
    """Create and migrate this run's PostgreSQL database once."""
    require_services()
    asyncio.run(_recreate_pg(PG_DB))
    migrate(pg_url())
    return pg_url()


async def _recreate_pg(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


TABLES = ", ".join(t.name for t in reversed(target_metadata.sorted_tables))


def _reset_postgres(url: str) -> None:
    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    asyncio.run(run())


def _reset_redis() -> None:
    from redis import Redis

    client = Redis.from_url(redis_url())
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres":
        require_services()
    return name


@pytest.fixture
def settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for the backend; also exported as ``CC_*`` so worker processes see them."""
    env: dict[str, str] = {
        "CC_DATA_DIR": str(tmp_path / "data"),
        "CC_PUBLIC_URL": "http://testserver.local",
        "CC_ENVIRONMENT": "test",
        "CC_SEND_BACKOFF_SECONDS": "1",
    }
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        db = tmp_path / "cc.db"
        shutil.copy(template, db)
        env["CC_DATABASE_URL"] = f"sqlite+aiosqlite:///{db}"
    else:
        url: str = request.getfixturevalue("pg_database")
        _reset_postgres(url)
        _reset_redis()
        env["CC_DATABASE_URL"] = url
        env["CC_REDIS_URL"] = redis_url()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if backend == "sqlite":
        monkeypatch.delenv("CC_REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield load_settings()
    get_settings.cache_clear()


@pytest.fixture
def clock() -> ManualClock:
    from datetime import UTC, datetime

    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def rt(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    runtime = await build_runtime(settings, clock=clock)
    try:
        yield runtime
    finally:
        await runtime.close()


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "postgres":
            item.add_marker(pytest.mark.postgres)
    if XDIST_WORKER:
        # The minutes-long tests (the routing simulation) go first, while the other workers run
        # the rest; started late, one of them would finish the run alone. Every worker sorts
        # the same collection the same way (stable sort), as xdist requires.
        items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call":
        item.call_failed = report.failed  # read by the browser fixture's screenshots
    return report


@pytest.fixture
async def new_page(request: pytest.FixtureRequest) -> AsyncIterator[browser_support.NewPage]:
    """``await new_page(**context_options)``: a page in a fresh browser context (its own
    storage, time zone, locale) of a headless chromium; screenshots land in tests/artifacts."""
    browser_support.require_chromium()
    pages: list[Any] = []
    async with browser_support.launch() as browser:

        async def make(**options: Any) -> Any:
            context = await browser.new_context(**options)
            page = await context.new_page()
            pages.append(page)
            return page

        try:
            yield make
        finally:
            failed = getattr(request.node, "call_failed", True)
            browser_support.ARTIFACTS.mkdir(exist_ok=True)
            for i, page in enumerate(pages):
                path = browser_support.artifact_name(request.node.nodeid, i, failed)
                browser_support.artifact_name(request.node.nodeid, i, not failed).unlink(
                    missing_ok=True
                )
                try:
                    await page.screenshot(path=str(path), full_page=True)
                except Exception as exc:  # a closed page: nothing to show
                    print(f"no screenshot of page {i}: {exc}")
