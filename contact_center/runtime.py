"""The process's services in one place, handed to actions, jobs and request handlers.

Built only by the composition root (``contact_center.wiring.build_runtime``).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contact_center.attachments import AttachmentStore
from contact_center.bus import Bus
from contact_center.clock import Clock
from contact_center.db import Database
from contact_center.ingest import Ingestor
from contact_center.settings import Settings

if TYPE_CHECKING:
    from contact_center.jobs import JobQueue
    from contact_center.outbound import ChannelSender, Notifier

WAKE_CHANNEL = "relay.wake"
# Conversations just committed that may need routing, straight to the routing engine: a hint
# that saves it waiting for the relay to publish their events (which still follow, and the
# engine's sweep stays the safety net when a hint is lost).
ARRIVALS_CHANNEL = "routing.arrivals"


def settle_heap() -> None:
    """Once a long-running process has started: what is alive now (modules, mappers, compiled
    caches, the runtime) lives as long as the process, so it is moved out of the garbage
    collector's reach (``gc.freeze``). Full collections then walk only what was made since,
    and stop freezing the event loop for ~100 ms at a time (measured in the scheduler with
    1,000 agents: the routing latency's p99). Not for tests: they build many runtimes in one
    process, and frozen objects are never collected."""
    gc.collect()
    gc.freeze()


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clock: Clock
    bus: Bus
    store: AttachmentStore
    ingestor: Ingestor
    jobs: JobQueue = field(init=False)
    senders: dict[str, ChannelSender] = field(default_factory=dict)
    # Inbox kind -> how staff are notified through it ("email", "slack").
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    async def committed(self) -> None:
        """Tell the relay (here or in the scheduler process) that new events are committed,
        and the routing engine which conversations this process's ingests just opened."""
        arrivals = self.ingestor.take_arrivals()
        if arrivals:
            await self.bus.publish(ARRIVALS_CHANNEL, {"conversation_ids": arrivals})
        await self.bus.publish(WAKE_CHANNEL, {})

    async def close(self) -> None:
        await self.jobs.close()
        await self.bus.close()
        await self.db.dispose()
