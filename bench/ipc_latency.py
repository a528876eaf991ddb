"""IPC latency between a SIP media worker and the supervisor (the channel of sipbridge/sip/ipc.py).

    python bench/ipc_latency.py [--frames 3000] [--interval-ms 1] [--json docs/results/ipc-latency.json]

What the worker <-> supervisor channel adds to audio latency: the one-way delay of a 320-byte frame (20 ms of
8 kHz PCM) each way, p50/p99/max, in microseconds; JSON to stdout (and --json).

The parent is an asyncio server, as the supervisor is; the child is a blocking `SyncChannel` reader thread,
as a worker's is. Each probe is a `Ping` carrying 20 ms of 8 kHz PCM (320 B, the size of one PlayAudio
frame), stamped with `time.monotonic_ns` when sent, when the child read it, and when its echo came back:
so both one-way delays are measured on the one host clock, not estimated as half a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sipbridge import frames as f
from sipbridge.sip.ipc import SyncChannel, read_frame, write_frame

PCM_20MS = bytes(320)


def _child(path: str) -> None:
    channel = SyncChannel.connect(path)
    while True:
        frame = channel.recv()
        if isinstance(frame, f.Shutdown):
            return
        if isinstance(frame, f.Ping):
            channel.send(f.Ping(frame.t, time.monotonic_ns(), frame.pcm))


def _stats(values_ns: list[int]) -> dict[str, float]:
    us = np.asarray(values_ns, dtype=np.float64) / 1000.0
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "max_us": round(float(us.max()), 1),
        "mean_us": round(float(us.mean()), 1),
    }


async def run(frames: int, interval_ms: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sipbridge-ipcbench-"))
    path = str(tmp / "bench.sock")
    connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Future()
    finished = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set_result((reader, writer))
        await finished.wait()  # keep the connection open; the bench drives it

    server = await asyncio.start_unix_server(accept, path)
    child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--child", path)
    reader, writer = await connected
    down, up, rtt = [], [], []
    try:
        for i in range(frames + 50):
            sent = time.monotonic_ns()
            write_frame(writer, f.Ping(sent, 0, PCM_20MS))
            echo = await read_frame(reader)
            back = time.monotonic_ns()
            assert isinstance(echo, f.Ping) and echo.t == sent
            if i >= 50:  # skip warm-up (first connects, page faults)
                down.append(echo.t_echo - sent)
                up.append(back - echo.t_echo)
                rtt.append(back - sent)
            await asyncio.sleep(interval_ms / 1000)
    finally:
        write_frame(writer, f.Shutdown("bench done"))
        await child.wait()
        finished.set()
        await asyncio.sleep(0)
        server.close()
        os.unlink(path)
        tmp.rmdir()
    return {
        "frames": frames,
        "payload_bytes": len(PCM_20MS),
        "interval_ms": interval_ms,
        "supervisor_to_worker": _stats(down),
        "worker_to_supervisor": _stats(up),
        "round_trip": _stats(rtt),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--interval-ms", type=float, default=1.0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    result = asyncio.run(run(args.frames, args.interval_ms))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
