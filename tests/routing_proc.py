"""Run as a separate process by test_routing_race: a routing engine making passes over the
same database as a sibling process, from the same moment, with the calling test's settings."""

from __future__ import annotations

import asyncio
import sys
import time

from contact_center.settings import load_settings
from contact_center.wiring import build_runtime
from routing.engine import engine_of


async def main(start_at: float, passes: int) -> None:
    rt = await build_runtime(load_settings())
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        made = 0
        if passes < 0:  # until killed, reporting as it goes
            while True:
                made += await engine_of(rt).run_pass()
                print(made, flush=True)
        for _ in range(passes):
            made += await engine_of(rt).run_pass()
        print(made)
    finally:
        await rt.close()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), int(sys.argv[2])))
