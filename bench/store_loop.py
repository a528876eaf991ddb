"""What the store costs the supervisor's event loop at N calls: writes made on the loop (`--mode direct`, what
sipbridge did before the writer thread) against writes queued to sipbridge.store_writer (`--mode writer`).

    python bench/store_loop.py --calls 128 --mode direct writer [--dir var/bench] [--json out.json]

N simulated calls start `--ramp-s` apart in total and each writes what a CallSession writes (store.py rows,
real JSON, real SQLite file in WAL with synchronous FULL, on `--dir`'s disk): at its start the row, answer,
media and agent (4 writes); per turn, a caller turn, a bot turn, a latency event and the agent's results (4
writes, one turn every `--turn-s`); at its end the media event, RTP quality and the end (3 writes). Beside
them a task asks to wake every 20 ms (one audio frame) and records how late it woke: the loop lag that the
supervisor's frame routing and audio scheduling would see (as sipbridge/loop_lag.py does in the product).

Reported per mode: loop lag p50/p99/max and how many 20 ms ticks came > 5 ms and > 20 ms late, the loop's
time inside store calls (per write: mean and max), writes/s, and for the writer its batches (commits). The
disk and the box's load decide the numbers: state both (the JSON has the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sipbridge.store import Store  # noqa: E402
from sipbridge.store_writer import StoreWriter  # noqa: E402

TICK_S = 0.02
RESULTS = {"employed": "yes", "start_date": "2019-03", "title": "analyst", "verified_by": "hr"}


class Timed:
    """Calls a store (or a writer) and adds up the loop's time inside each call."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.spent: list[float] = []

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        getattr(self.target, method)(*args, **kwargs)
        self.spent.append(time.perf_counter() - t)


async def one_call(i: int, store: Timed, args: argparse.Namespace) -> None:
    call_id = f"call-{i:04d}-{os.urandom(4).hex()}"
    store("create_call", "inbound", remote_uri=f"sip:+1555{i:07d}@127.0.0.1", call_id=call_id,
          variables={"sip_call_id": call_id})  # fmt: skip
    store("mark_answered", call_id)
    store("set_call_media", call_id, codec="PCMU", recording_path=f"/var/rec/{call_id}/call.wav")
    store("set_agent_results", call_id, agent="script")
    for turn in range(args.turns):
        await asyncio.sleep(args.turn_s)
        t0 = turn * 8000
        store(
            "add_turn",
            call_id,
            "caller",
            "yes she started in march twenty nineteen",
            start_ms=t0,
            end_ms=t0 + 2400,
        )
        store("add_event", call_id, "latency", {"utterance": turn + 1, "asr_ms": 180.5, "agent_ms": 3.2,
                                                  "engine_ms": 150.1, "early_asr": True})  # fmt: skip
        store("add_turn", call_id, "bot", "Thank you. And what was her job title there?", start_ms=t0 + 2900,
              end_ms=t0 + 5900, audio_path=f"/var/rec/{call_id}/bot-{turn}.wav")  # fmt: skip
        store("set_agent_results", call_id, results=dict(list(RESULTS.items())[: turn + 1]), outcome=None)
    store("add_event", call_id, "media", {"rx_frames": 9000, "tx_frames": 9000, "underruns": 0})
    store("set_rtp_quality", call_id, packets=9000, lost=0, late=0, jitter_ms=0.4, jitter_max_ms=2.1)
    store("end_call", call_id, "completed", reason="remote: bye", sip_status=200)


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append(max(0.0, loop.time() - asked))


async def run_mode(mode: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = Store(Path(tmp) / "db.sqlite3")
        writer = StoreWriter(store) if mode == "writer" else None
        timed = Timed(writer if writer is not None else store)
        lags: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(lags, stop))
        start = time.perf_counter()
        calls = []
        for i in range(args.calls):
            calls.append(asyncio.create_task(one_call(i, timed, args)))
            await asyncio.sleep(args.ramp_s / args.calls)
        await asyncio.gather(*calls)
        if writer is not None:
            await asyncio.wrap_future(writer.flush())
        wall = time.perf_counter() - start
        stop.set()
        await tick
        batches = writer.batches if writer is not None else len(timed.spent)
        if writer is not None:
            writer.close()
        rows = store.query("SELECT COUNT(*) AS n FROM calls WHERE state = 'ended'")[0]["n"]
        store.close()
    lags.sort()
    spent = timed.spent
    return {
        "mode": mode,
        "calls_recorded": rows,
        "writes": len(spent),
        "writes_per_s": round(len(spent) / wall, 1),
        "commits": batches,
        "loop_lag_ms": {
            "p50": round(1000 * lags[len(lags) // 2], 2),
            "p99": round(1000 * lags[int(len(lags) * 0.99)], 2),
            "max": round(1000 * lags[-1], 2),
            "ticks": len(lags),
            "over_5ms": sum(lag > 0.005 for lag in lags),
            "over_20ms": sum(lag > 0.020 for lag in lags),
        },
        "loop_in_store_ms": {
            "total": round(1000 * sum(spent), 1),
            "per_write_mean": round(1000 * statistics.mean(spent), 3),
            "per_write_max": round(1000 * max(spent), 2),
        },
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=128)
    parser.add_argument("--turns", type=int, default=6, help="turns per call")
    parser.add_argument("--turn-s", type=float, default=5.0, help="seconds between a call's turns")
    parser.add_argument("--ramp-s", type=float, default=5.0, help="all calls start within this")
    parser.add_argument("--mode", nargs="+", choices=("direct", "writer"), default=["direct", "writer"])
    parser.add_argument("--dir", default="var/bench", help="directory on the database's disk (created)")
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    result = {
        "calls": args.calls,
        "turns_per_call": args.turns,
        "turn_s": args.turn_s,
        "dir": str(directory.resolve()),
        "box": {"cores": os.cpu_count(), "load_1m_before": round(os.getloadavg()[0], 2)},
        "runs": [asyncio.run(run_mode(mode, args, directory)) for mode in args.mode],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
