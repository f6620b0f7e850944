"""Run as a separate process by test_ingest_processes: ingest the same provider ids as a
sibling process, at the same moment, with the CC_* settings of the calling test."""

from __future__ import annotations

import asyncio
import sys
import time

from contact_center.settings import load_settings
from contact_center.wiring import build_runtime
from tests.helpers import sms


async def main(start_at: float, count: int) -> None:
    rt = await build_runtime(load_settings())
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        duplicates = 0
        for i in range(count):
            result = await rt.ingestor.ingest(
                sms(f"message {i}", sid=f"SMproc{i:04d}", phone=f"+1415555{i % 7:04d}")
            )
            duplicates += result.duplicate
        print(duplicates)
    finally:
        await rt.close()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), int(sys.argv[2])))
