"""First-audio latency through each compatible surface against the engine's own (docs/COMPAT.md).

    python bench/compat_latency.py --engine espeak --out compat-espeak.json
    python bench/compat_latency.py --engine dia2 --model tests/fixtures/dia2-tiny --out compat-tiny.json
    python bench/compat_latency.py --engine dia2 --model <checkpoint> --device cuda --dtype bfloat16

The app (engine, conversation service, FastAPI with every surface) runs in this process on a loopback
uvicorn; the clients run in a second process, as an application would call them. For every run of every
surface, the same text is spoken with greedy sampling on a fresh engine session, and these are taken:

* `engine`: in the server's loop, opening an engine session and asking it to speak → its first chunk: the
  floor every surface stands on (what the engine costs, no HTTP, no encoding);
* each surface: the client sending its request (REST: a POST on a kept-alive connection; WebSockets: the
  text on a socket opened beforehand, as a client that keeps one open does) → the first audio bytes read;
* `overhead_ms` = the median over runs of (surface − engine of the same run): what the protocol adds
  (parsing, session lease, encoding, the sockets, the client library), the number the ≤ 5 ms target is
  about. Pairing each surface with the engine run just before it keeps load drift out of the difference.

* `added_in_server_ms` (the load-robust number): per request, inside the server process, the time from the
  engine's first chunk reaching the surface's generation to the surface's first audio write (encoding,
  resampling, base64/JSON/MessagePack, the queue hop, the socket write), taken by the app's own
  `compat.first_write_hooks`; p50/p95 per surface, from the engine's first chunk and from the chunk that
  completed the first 20 ms frame (they differ for espeak, whose 20 ms reads fill no frame through the
  resampler's lag: that wait is for the engine's next chunk). Both timestamps are in one process on one
  clock and a few milliseconds apart, so other work on the machine barely moves them, unlike the
  client-side pairs.

JSON goes to stdout (and --out). Runs alternate between surfaces so drift (CPU load from elsewhere) spreads
over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import uvicorn
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipbridge.config import EngineConfig, HttpConfig, HttpLimitsConfig
from sipbridge.engine import make_engine
from sipbridge.http import compat
from sipbridge.http.app import create_app
from sipbridge.http.service import ConversationService

TEXT = "Hello, thank you for calling. How can I help you today?"
GREEDY = {"temperature": 0}


class Server:
    """The app on a loopback socket, served by this process's main event loop (espeak's subprocesses
    need the main thread's child watcher); the clients run in another process."""

    def __init__(self, engine_cfg: EngineConfig) -> None:
        self.engine_cfg = engine_cfg

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = make_engine(self.engine_cfg)
        await self.engine.start()
        self.service = ConversationService(self.engine, None, HttpLimitsConfig())
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        app = create_app({}, self.service, HttpConfig())
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        await self.engine.close()


async def engine_first_chunk(server: Server) -> float:
    """Open a session and speak: ms to the first chunk (then drain it and close, as a surface does)."""
    from sipbridge.engine.base import SpeakParams

    t0 = time.perf_counter()
    session = server.engine.open_session("bench-engine")
    first = None
    try:
        async for _chunk in session.speak(TEXT, SpeakParams(temperature=0)):
            if first is None:
                first = (time.perf_counter() - t0) * 1e3
    finally:
        await session.close()
    assert first is not None
    return first


def _first_bytes(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    """POST, ms to the first body bytes; the rest is read to the end (the session is released then)."""
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for _chunk in r.iter_raw():
            if first is None:
                first = (time.perf_counter() - t0) * 1e3
    assert first is not None
    return first


def elevenlabs_rest(base: str, client: httpx.Client) -> float:
    url = f"{base}/v1/text-to-speech/default/stream?output_format=pcm_24000"
    return _first_bytes(client, url, {"text": TEXT, "model_id": "eleven_flash_v2_5", **GREEDY})


def elevenlabs_ulaw(base: str, client: httpx.Client) -> float:
    url = f"{base}/v1/text-to-speech/default/stream?output_format=ulaw_8000"
    return _first_bytes(client, url, {"text": TEXT, **GREEDY})


def openai_speech(base: str, client: httpx.Client) -> float:
    body = {"model": "tts-1", "voice": "default", "input": TEXT, "response_format": "pcm", **GREEDY}
    return _first_bytes(client, f"{base}/v1/audio/speech", body)


def elevenlabs_ws(base: str, _client: httpx.Client) -> float:
    url = (
        base.replace("http", "ws")
        + "/v1/text-to-speech/default/stream-input?output_format=pcm_24000&temperature=0"
    )
    with connect(url) as sock:
        sock.send(json.dumps({"text": " "}))
        t0 = time.perf_counter()
        sock.send(json.dumps({"text": TEXT + " ", "flush": True}))
        message = json.loads(sock.recv(timeout=120))
        first = (time.perf_counter() - t0) * 1e3
        assert base64.b64decode(message["audio"])
        sock.send(json.dumps({"text": ""}))
        while not json.loads(sock.recv(timeout=120)).get("isFinal"):
            pass
    return first


def kyutai_ws(base: str, _client: httpx.Client) -> float:
    url = base.replace("http", "ws") + "/api/tts_streaming?voice=default&format=PcmMessagePack&temperature=0"
    with connect(url) as sock:
        assert msgpack.unpackb(sock.recv(timeout=120))["type"] == "Ready"
        t0 = time.perf_counter()
        for word in TEXT.split():
            sock.send(msgpack.packb({"type": "Text", "text": word}))
        sock.send(msgpack.packb({"type": "Eos"}))
        while msgpack.unpackb(sock.recv(timeout=120))["type"] != "Audio":
            pass
        first = (time.perf_counter() - t0) * 1e3
        try:
            while True:
                sock.recv(timeout=120)
        except Exception:  # closed once everything is spoken
            pass
    return first


SURFACES: dict[str, Callable[[str, httpx.Client], float]] = {
    "elevenlabs_rest_pcm": elevenlabs_rest,
    "elevenlabs_rest_ulaw": elevenlabs_ulaw,
    "elevenlabs_stream_input": elevenlabs_ws,
    "openai_speech_pcm": openai_speech,
    "kyutai_tts_streaming": kyutai_ws,
}


def client_process(conn: Any, port: int) -> None:
    """The clients, in a process of their own: no GIL shared with the server (a thread would wait up to
    Python's 5 ms switch interval for it). Each "run" times every surface once and sends the times back."""
    base = f"http://127.0.0.1:{port}"
    # httpx writes a request's headers and body separately; with Nagle's algorithm on, the body waits for the
    # ACK of the headers, which the server's kernel delays up to 40 ms on a busy keep-alive connection.
    # TCP_NODELAY (what curl and latency-minded clients set) keeps that stall out of the numbers.
    nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(timeout=120, transport=nodelay) as client:
        names = list(SURFACES)
        turn = 0
        while conn.recv() == "run":
            # Each run starts one surface later: none always follows the same other one (a keep-alive
            # connection just used, an engine session just closed).
            order = names[turn % len(names) :] + names[: turn % len(names)]
            turn += 1
            conn.send({name: SURFACES[name](base, client) for name in order})


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "min_ms": round(ordered[0], 2),
        "runs": len(ordered),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "max_ms": round(ordered[-1], 3),
        "replies": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["espeak", "dia2"], default="espeak")
    parser.add_argument("--model", default="tests/fixtures/dia2-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    engine_cfg = EngineConfig.model_validate(
        {"kind": args.engine, "dia2": {"model": args.model, "device": args.device, "dtype": args.dtype}}
    )
    load_before = os.getloadavg()
    server = Server(engine_cfg)
    times: dict[str, list[float]] = {"engine": [], **{name: [] for name in SURFACES}}
    added: dict[str, list[float]] = {}  # per surface: ms from the engine's first chunk to the first write
    framed: dict[str, list[float]] = {}  # ... from the engine chunk that completed the first frame

    def first_write(surface: str, from_first: float, from_completing: float) -> None:
        added.setdefault(surface, []).append(from_first)
        framed.setdefault(surface, []).append(from_completing)

    compat.first_write_hooks.append(first_write)

    async def run() -> None:
        await server.start()
        parent, child = multiprocessing.get_context("spawn").Pipe()
        proc = multiprocessing.get_context("spawn").Process(target=client_process, args=(child, server.port))
        proc.start()
        try:
            await engine_first_chunk(server)  # warm-up: espeak's cold start, torch's first step
            parent.send("run")  # the client's warm-up round
            await asyncio.to_thread(parent.recv)
            added.clear()  # the warm-up round's first writes are not counted
            framed.clear()
            for _ in range(args.runs):
                times["engine"].append(await engine_first_chunk(server))
                parent.send("run")
                for name, ms in (await asyncio.to_thread(parent.recv)).items():
                    times[name].append(ms)
                report(final=False)  # defined below, before run() is awaited
        finally:
            parent.send("stop")
            await asyncio.to_thread(proc.join, 60)
            await server.stop()

    def report(final: bool) -> None:
        """The summary so far: written after every run (--out), so a run cut short still leaves numbers."""
        if not times["engine"]:
            return
        engine = summary(times["engine"])
        result: dict[str, Any] = {
            "bench": "compat_latency",
            "engine": args.engine,
            "model": args.model if args.engine == "dia2" else None,
            "device": args.device,
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            # Other work on the machine shows in every number: the 1-minute load average before and after.
            "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "complete": final,
            "text": TEXT,
            "first_audio": {"engine": engine},
        }
        for name in SURFACES:
            stats = summary(times[name])
            paired = [t - e for t, e in zip(times[name], times["engine"], strict=True)]
            stats["overhead_ms"] = round(statistics.median(paired), 2)
            result["first_audio"][name] = stats
        result["added_in_server_ms"] = {
            name: {
                "from_first_chunk": percentiles(values),
                "from_completing_chunk": percentiles(framed[name]),
            }
            for name, values in sorted(added.items())
        }
        text = json.dumps(result, indent=2)
        if final:
            print(text)
        if args.out:
            args.out.write_text(text + "\n")

    asyncio.run(run())
    report(final=True)


if __name__ == "__main__":
    main()
