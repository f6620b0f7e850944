"""Pieces every websocket endpoint shares: rate limiting, origin checks."""

from __future__ import annotations

import time
from urllib.parse import urlsplit


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
