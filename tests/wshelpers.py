"""Websocket test helpers: the next frame of a type, every frame until quiet, send a frame."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection


async def recv(ws: ClientConnection, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame of ``kind`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]


async def drain(ws: ClientConnection, quiet: float = 1.5) -> list[dict[str, Any]]:
    """Every frame until the socket has been quiet for ``quiet`` seconds."""
    frames = []
    while True:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
        except TimeoutError:
            return frames


async def send(ws: ClientConnection, kind: str, **data: Any) -> None:
    await ws.send(json.dumps({"type": kind, "data": data}))
