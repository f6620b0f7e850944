"""Two processes ingesting the same provider messages at the same moment store each once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from contact_center.models import Conversation, Customer, Message
from contact_center.runtime import Runtime
from tests.helpers import make_inbox

ROOT = Path(__file__).resolve().parent.parent


async def test_two_processes_store_each_message_once(rt: Runtime) -> None:
    await make_inbox(rt)
    count = 40
    start_at = time.time() + 2.5  # both processes are up by then and start together
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.ingest_proc",
            str(start_at),
            str(count),
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [await asyncio.wait_for(p.communicate(), 120) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    duplicates = sum(int(out.decode().strip()) for out, _ in outputs)
    async with rt.db.read() as session:
        messages = await session.scalar(select(func.count()).select_from(Message))
        customers = await session.scalar(select(func.count()).select_from(Customer))
        conversations = await session.scalar(select(func.count()).select_from(Conversation))
    assert messages == count
    assert duplicates == count  # every message was seen twice and stored once
    assert customers == 7
    assert conversations == 7
