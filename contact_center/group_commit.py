"""Group commit: concurrent callers' items sent to the database together, as one statement.

A caller that finds nothing in flight sends its item at once, as a batch of one: alone, it waits
for nothing. Items that arrive while a batch is in flight wait for it and then go together as
the next batch, so the next batch forms while the previous one is in flight. Each caller gets its
own outcome back (a value, or the exception meant for it), never a neighbour's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The sender answers one outcome per item, in order: a value, or an exception for that caller.
Send = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, send: Send[T, R], *, max_batch: int = 64, depth: int = 1) -> None:
        self._send = send
        self._max_batch = max_batch
        self._depth = depth  # batches in flight at once
        self._in_flight = 0
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Items queued behind the batch in flight."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        if self._in_flight < self._depth:
            self._in_flight += 1
            try:
                outcome = (await self._send([item]))[0]
            finally:
                self._next()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        return await future

    def _next(self) -> None:
        """A batch in flight returned: send what queued behind it."""
        self._in_flight -= 1
        while self._waiting and self._in_flight < self._depth:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            batch = [(item, future) for item, future in batch if not future.done()]
            if batch:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._run(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._send([item for item, _ in batch])
        except Exception as exc:  # the sender failed as a whole: every caller hears it
            outcomes = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is closing): so are the callers
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._next()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller gave up (cancelled); its item was still sent
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
