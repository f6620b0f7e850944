"""Pieces every websocket endpoint shares: rate limiting, origin checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

Send = Callable[[dict[str, Any]], Awaitable[None]]


class FrameError(ValueError):
    """A client frame refused with a machine-readable code; the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Bucket:
    """A token bucket: ``rate`` frames per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(origin: str | None, public_url: str, allowed: list[str]) -> bool:
    """Browsers send Origin: it must be our own public origin or an allowed one. Clients
    without an Origin header (not browsers) are not subject to cross-site attacks."""
    if origin is None:
        return True
    origin = origin.lower().rstrip("/")
    return origin == origin_of(public_url) or origin in {o.lower().rstrip("/") for o in allowed}


async def serve_frames(
    receive: Callable[[], Awaitable[str]],
    send: Send,
    handle: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    outgoing: Callable[[], Coroutine[Any, Any, None]],
    max_frame: int,
    bucket: Bucket,
    background: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
) -> None:
    """Read client frames until the socket or ``outgoing`` (the server-to-client pump) ends:
    frames over ``max_frame`` or over the rate get an error, the rest go to ``handle``; a
    frame it refuses gets an ``error`` frame (code, message, the frame's type) and the
    connection carries on."""
    tasks = [asyncio.create_task(outgoing())]
    tasks += [asyncio.create_task(job()) for job in background or []]
    try:
        while not tasks[0].done():
            raw = await receive()
            if len(raw) > max_frame:
                message = f"a frame is at most {max_frame} bytes"
                await send({"type": "error", "data": {"code": "too_large", "message": message}})
                continue
            if not bucket.take():
                message = (
                    f"too many frames: at most {bucket.rate:g} a second, in bursts of "
                    f"{bucket.burst:g}; this one was dropped"
                )
                await send({"type": "error", "data": {"code": "rate_limited", "message": message}})
                continue
            kind = None
            try:
                frame = json.loads(raw)
                if not isinstance(frame, dict):
                    raise FrameError("bad_frame", "a frame is a JSON object")
                kind = frame.get("type")
                await handle(frame)
            except FrameError as exc:
                await send(
                    {"type": "error", "data": {"code": exc.code, "message": str(exc), "for": kind}}
                )
            except (ValueError, TypeError) as exc:
                await send(
                    {
                        "type": "error",
                        "data": {"code": "bad_frame", "message": str(exc), "for": kind},
                    }
                )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
