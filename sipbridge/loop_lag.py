"""How late the supervisor's event loop runs what is due: the lag a 20 ms audio frame would see.

Everything on the loop (frames from workers, engine chunks to workers, HTTP, timers) waits behind whatever
runs now; a blocking call (a synchronous fsync, a model call, a big JSON) shows up as a late timer. A task
sleeps `interval_s` again and again and records how much later than asked it woke: the histogram
`sipbridge_event_loop_lag_seconds` and the largest lag seen, `sipbridge_event_loop_lag_max_seconds`
(bench/system_load.py reports both). Its own cost: 50 wake-ups a second, microseconds each.
"""

from __future__ import annotations

import asyncio

from sipbridge.metrics import Histogram

INTERVAL_S = 0.02  # one audio frame: a stall shorter than this is already a frame late


class LoopLag:
    def __init__(self, histogram: Histogram, interval_s: float = INTERVAL_S) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self.max_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(loop.time() - asked)

    def record(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.max_s = max(self.max_s, lag_s)
        self.histogram.observe(lag_s)
