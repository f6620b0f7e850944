"""Jobs: side effects run after commit, in the process (embedded) or on rq workers.

A job is an async function ``fn(runtime, payload)`` registered under a name. The same functions
run under both runners, which share the retry policy: a job raising ``RetryJob`` (or any other
exception) runs again after a backoff, up to ``MAX_TRIES``. Every job must be idempotent: the
runners deliver at least once (the relay and the sweepers re-enqueue after crashes), and rq may
run a job twice. Durable retries of sends live in the database, not in the runner.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contact_center.runtime import Runtime

log = logging.getLogger(__name__)

JobFunc = Callable[["Runtime", dict[str, Any]], Awaitable[None]]
MAX_TRIES = 3
BACKOFF = (1.0, 5.0, 15.0)

_registry: dict[str, JobFunc] = {}


class RetryJob(Exception):
    """Raise from a job to have it run again later."""


def job(name: str) -> Callable[[JobFunc], JobFunc]:
    def register(fn: JobFunc) -> JobFunc:
        if name in _registry and _registry[name] is not fn:
            raise ValueError(f"job {name!r} registered twice")
        _registry[name] = fn
        return fn

    return register


def get_job(name: str) -> JobFunc:
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(f"no job named {name!r}") from None


class JobQueue(Protocol):
    async def enqueue(self, name: str, payload: dict[str, Any], *, key: str) -> None: ...
    async def close(self) -> None: ...


class InProcessJobs:
    """Runs jobs as tasks of this event loop, with the shared retry policy.

    A key already queued or running is not queued again (its job is idempotent anyway).
    """

    def __init__(self, runtime: Runtime, concurrency: int = 8) -> None:
        self._runtime = runtime
        self._sem = asyncio.Semaphore(concurrency)
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def enqueue(self, name: str, payload: dict[str, Any], *, key: str) -> None:
        get_job(name)
        if key in self._pending:
            return
        self._pending.add(key)
        task = asyncio.create_task(self._run(name, payload, key), name=f"job:{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, name: str, payload: dict[str, Any], key: str) -> None:
        try:
            for attempt in range(MAX_TRIES):
                try:
                    async with self._sem:
                        await get_job(name)(self._runtime, payload)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    if attempt == MAX_TRIES - 1:
                        log.exception("job %s (%s) failed for good", name, key)
                        return
                    log.warning("job %s (%s) failed; retrying", name, key, exc_info=True)
                    await asyncio.sleep(BACKOFF[attempt])
        finally:
            self._pending.discard(key)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every job queued so far (and those they queue) has finished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("jobs still running")
            await asyncio.wait(list(self._tasks), timeout=remaining)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


_JOB_ID = re.compile(r"[^A-Za-z0-9_-]")


class RqJobs:
    """Enqueues onto rq. Workers run ``wiring.run_rq_job``, which builds a runtime per job."""

    def __init__(self, redis_url: str, queue_name: str) -> None:
        from redis import Redis
        from rq import Queue

        self._conn = Redis.from_url(redis_url)
        self.queue = Queue(queue_name, connection=self._conn)

    async def enqueue(self, name: str, payload: dict[str, Any], *, key: str) -> None:
        from rq import Retry

        get_job(name)
        job_id = _JOB_ID.sub("_", key)[:200]
        await asyncio.to_thread(
            self.queue.enqueue,
            "contact_center.wiring.run_rq_job",
            name,
            payload,
            job_id=job_id,
            retry=Retry(max=MAX_TRIES - 1, interval=[int(b) for b in BACKOFF[: MAX_TRIES - 1]]),
            result_ttl=600,
            failure_ttl=7 * 24 * 3600,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._conn.close)
