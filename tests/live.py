"""The real app under uvicorn on 127.0.0.1, inside the test's event loop.

Requests then travel over real HTTP (headers, form encoding, Host) exactly as a provider's
would, while the app shares the test's runtime (its database, bus, jobs and ManualClock).

    async with live_app(rt) as live:
        response = await live.client.post("/webhooks/...", data={...})
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from contact_center.app import create_app
from contact_center.runtime import Runtime

START_TIMEOUT = 10.0


@dataclass(frozen=True)
class LiveApp:
    url: str  # http://127.0.0.1:<port>, the address the app actually listens on
    client: httpx.AsyncClient  # base_url=url


@asynccontextmanager
async def live_app(
    rt: Runtime, *, run_scheduler: bool = False, extra_route_handlers: list[Any] | None = None
) -> AsyncIterator[LiveApp]:
    """Serve ``create_app(runtime=rt)`` on a free loopback port until the block ends."""
    app = create_app(
        runtime=rt, run_scheduler=run_scheduler, extra_route_handlers=extra_route_handlers
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn:{port}")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("uvicorn stopped during start-up (see its log)")
            if loop.time() > deadline:
                raise TimeoutError("uvicorn did not start")
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
            yield LiveApp(url, client)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=10)
        finally:
            sock.close()
