"""``contact-center``: the processes of the Procfile, migrations and the demo.

Part of the composition root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from contact_center.settings import Settings, SettingsError, load_settings


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        click.echo(f"contact-center: {exc}", err=True)
        sys.exit(2)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic narrates every plugin and step at INFO; its warnings and errors still show.
    if logging.getLogger("alembic").getEffectiveLevel() < logging.WARNING:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@click.group()
def main() -> None:
    """Omnichannel contact center."""


@main.command()
def migrate() -> None:
    """Upgrade the database to the latest schema."""
    from contact_center.db import head_revision
    from contact_center.db import migrate as run_migrations

    settings = _settings()
    run_migrations(settings.database_url)
    click.echo(f"database migrated to {head_revision()}")


@main.command()
@click.option("--host", default=None, help="Listen address (CC_HOST).")
@click.option("--port", default=None, type=int, help="Listen port (CC_PORT).")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the web process: API, webhooks, websockets, pages."""
    import uvicorn

    settings = _settings()
    _logging(settings)
    if workers > 1 and settings.embedded:
        click.echo("contact-center: several web workers need CC_REDIS_URL (a shared bus)", err=True)
        sys.exit(2)
    uvicorn.run(
        "contact_center.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        proxy_headers=True,
        log_level=settings.log_level.lower(),
    )


@main.command()
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
def worker(burst: bool) -> None:
    """Run an rq worker for outbound sends and other jobs (needs CC_REDIS_URL)."""
    settings = _settings()
    _logging(settings)
    if settings.redis_url is None:
        click.echo(
            "contact-center: the worker needs CC_REDIS_URL; without it jobs run inside "
            "`contact-center serve`",
            err=True,
        )
        sys.exit(2)
    from redis import Redis
    from rq import Queue, Worker

    import contact_center.wiring  # noqa: F401  (registers the jobs)

    conn = Redis.from_url(settings.redis_url)
    Worker([Queue(settings.rq_queue, connection=conn)], connection=conn).work(
        with_scheduler=True, burst=burst
    )


@main.command()
def scheduler() -> None:
    """Run the outbox relay and periodic sweeps (one leader at a time)."""
    settings = _settings()
    _logging(settings)

    async def run() -> None:
        from contact_center.runtime import settle_heap
        from contact_center.wiring import build_runtime, build_scheduler

        # Every loop of the scheduler retries a failed step: no pre-ping round trip on its
        # path (see Database).
        rt = await build_runtime(settings, pre_ping=False)
        try:
            await rt.db.check_migrated()
            settle_heap()
            await build_scheduler(rt).run(_stop_event())
        finally:
            await rt.close()

    asyncio.run(run())


@main.command()
def smtp() -> None:
    """Run the inbound SMTP server for email inboxes (CC_SMTP_HOST:CC_SMTP_PORT)."""
    settings = _settings()
    _logging(settings)

    async def run() -> None:
        from channels.email import serve_smtp
        from contact_center.wiring import build_runtime

        rt = await build_runtime(settings)
        try:
            await rt.db.check_migrated()
            server = await serve_smtp(rt, settings.smtp_host, settings.smtp_port)
            logging.getLogger(__name__).info(
                "SMTP listening on %s:%s", settings.smtp_host, settings.smtp_port
            )
            async with server:
                await _stop_event().wait()
        finally:
            await rt.close()

    asyncio.run(run())


@main.command()
@click.option("--port", default=None, type=int, help="Web port (default CC_PORT or 8000).")
@click.option("--reset", is_flag=True, help="Delete the demo database and start over.")
@click.option(
    "--simulate/--no-simulate",
    default=True,
    show_default=True,
    help="Have simulated customers write in by SMS every 30 seconds.",
)
def demo(port: int | None, reset: bool, simulate: bool) -> None:
    """Everything in one process on the embedded defaults, with the demo organisation."""
    overrides: dict[str, Any] = {}
    if port:
        overrides["port"] = port
    base = _settings(**overrides)
    if "CC_PUBLIC_URL" not in os.environ:
        overrides["public_url"] = f"http://{base.host}:{base.port}"
    settings = _settings(**overrides)
    _logging(settings)
    if not settings.is_sqlite or not settings.embedded:
        click.echo(
            "contact-center: the demo runs on the embedded defaults; unset "
            "CC_DATABASE_URL and CC_REDIS_URL",
            err=True,
        )
        sys.exit(2)
    if reset:
        path = Path(settings.database_url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    from contact_center.db import migrate as run_migrations

    run_migrations(settings.database_url)
    asyncio.run(_demo(settings, simulate))


async def _demo(settings: Settings, simulate: bool) -> None:
    import uvicorn

    from channels import sandbox
    from channels.email import serve_smtp
    from contact_center import demo as demo_org
    from contact_center.app import create_app
    from contact_center.runtime import settle_heap
    from contact_center.wiring import build_runtime

    rt = await build_runtime(settings)
    sandbox.TWILIO_TOKENS[demo_org.TWILIO_ACCOUNT] = demo_org.TWILIO_TOKEN
    smtp_server = await serve_smtp(rt, settings.smtp_host, settings.smtp_port)
    # The sandbox's SMTP relay listens on the port after ours (2526 by default).
    sink = await sandbox.serve_smtp_sink("127.0.0.1", settings.smtp_port + 1)
    created = await demo_org.seed(rt)
    app = create_app(runtime=rt, run_scheduler=True, extra_route_handlers=sandbox.route_handlers)
    settle_heap()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning", lifespan="on"
        )
    )
    url = settings.public_url
    ws_url = url.replace("http", "ws", 1)
    click.echo(
        f"""
Contact center demo ({"seeded a new" if created else "using the existing"} demo organisation)

  Agent console          {url}/agent   (sign in as an agent below)
  Supervisor wallboard   {url}/supervisor   (sign in as the supervisor below)
  API docs (OpenAPI)     {url}/schema
  Provider sandbox       {url}/demo/outbox   (what the demo's inboxes sent)
  Web chat widget        {url}/demo/widget   (a customer's page with the widget)
  Agent websocket        {ws_url}/ws/agent?token=...   (offers, live events: docs/agent-protocol.md)
  Wallboard websocket    {ws_url}/ws/supervisor?token=...   (docs/supervisor-protocol.md)
  Health / metrics       {url}/readyz   {url}/metrics
  Email (SMTP)           {settings.smtp_host}:{settings.smtp_port}   to support@example.com

  Sign in:  admin@example.com / demo-admin, supervisor@example.com / demo-supervisor,
            ayse@example.com, john@example.com, elif@example.com / demo-agent
  Try:      curl -s -X POST {url}/api/v1/auth/login -H 'content-type: application/json' \\
              -d '{{"email":"ayse@example.com","password":"demo-agent"}}'

Press Ctrl+C to stop.
"""
    )
    stop = asyncio.Event()
    tasks = []
    if simulate:
        tasks.append(asyncio.create_task(demo_org.simulate_customers(url, stop)))
    try:
        await server.serve()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for srv in (smtp_server, sink):
            srv.close()
        await rt.close()


if __name__ == "__main__":
    main()
