"""Prometheus metrics of the core (HTTP metrics come from Litestar's Prometheus middleware)."""

from __future__ import annotations

from prometheus_client import Counter

INGESTED = Counter("cc_messages_ingested_total", "Inbound messages stored, by channel", ["channel"])
DUPLICATES = Counter(
    "cc_messages_duplicate_total", "Inbound messages dropped as provider replays", ["channel"]
)
SENT = Counter(
    "cc_messages_sent_total",
    "Outbound send attempts, by channel and outcome",
    ["channel", "outcome"],
)
