"""Group commit: alone a caller is sent at once; callers arriving meanwhile share the next send,
and each hears its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from contact_center.group_commit import GroupCommit


class Sender:
    """Records each batch; a batch waits for ``release`` so the test decides when it returns."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_whole: set[int] = set()

    async def __call__(self, items: list[int]) -> list[str | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_whole & set(items):
            raise ConnectionError("the connection dropped")
        return [ValueError(f"bad {i}") if i < 0 else f"stored {i}" for i in items]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_a_caller_alone_is_sent_at_once_as_a_batch_of_one() -> None:
    sender = Sender()
    commit: GroupCommit[int, str] = GroupCommit(sender)
    assert await commit.submit(1) == "stored 1"
    assert await commit.submit(2) == "stored 2"
    assert sender.batches == [[1], [2]]


async def test_callers_arriving_while_a_batch_is_in_flight_share_the_next_one() -> None:
    sender = Sender()
    sender.release.clear()
    commit: GroupCommit[int, str] = GroupCommit(sender)
    first = asyncio.ensure_future(commit.submit(1))
    await until(lambda: sender.batches == [[1]])
    rest = [asyncio.ensure_future(commit.submit(i)) for i in (2, 3, -4, 5)]
    await until(lambda: commit.waiting == 4)
    sender.release.set()
    assert await first == "stored 1"
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert sender.batches == [[1], [2, 3, -4, 5]]
    assert outcomes[:2] == ["stored 2", "stored 3"]
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "bad -4"
    assert outcomes[3] == "stored 5"
    # Idle again: the next caller is sent at once.
    assert await commit.submit(6) == "stored 6"
    assert sender.batches[-1] == [6]


async def test_a_batch_that_fails_as_a_whole_fails_its_callers_only() -> None:
    sender = Sender()
    sender.release.clear()
    sender.fail_whole = {2}
    commit: GroupCommit[int, str] = GroupCommit(sender, max_batch=2)
    first = asyncio.ensure_future(commit.submit(1))
    await until(lambda: len(sender.batches) == 1)
    queued = [asyncio.ensure_future(commit.submit(i)) for i in (2, 3, 4, 5)]
    await until(lambda: commit.waiting == 4)
    sender.release.set()
    assert await first == "stored 1"
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert sender.batches == [[1], [2, 3], [4, 5]]
    assert all(isinstance(o, ConnectionError) for o in outcomes[:2])
    assert outcomes[2:] == ["stored 4", "stored 5"]


async def test_a_caller_that_gives_up_does_not_stall_the_others() -> None:
    sender = Sender()
    sender.release.clear()
    commit: GroupCommit[int, str] = GroupCommit(sender)
    first = asyncio.ensure_future(commit.submit(1))
    await until(lambda: len(sender.batches) == 1)
    gone = asyncio.ensure_future(commit.submit(2))
    stays = asyncio.ensure_future(commit.submit(3))
    await until(lambda: commit.waiting == 2)
    gone.cancel()
    sender.release.set()
    assert await first == "stored 1"
    assert await stays == "stored 3"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert sender.batches == [[1], [3]]
