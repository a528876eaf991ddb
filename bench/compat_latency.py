"""First-audio latency through each compatible surface against the engine's own (docs/COMPAT.md).

    python bench/compat_latency.py --engine espeak --out compat-espeak.json
    python bench/compat_latency.py --engine dia2 --model tests/fixtures/dia2-tiny --out compat-tiny.json
    python bench/compat_latency.py --engine dia2 --model <checkpoint> --device cuda --dtype bfloat16

The app (engine, conversation service, FastAPI with every surface) runs in this process on a loopback
uvicorn, on its own event loop and thread; clients run in the main thread, as an application would call
them. For every run of every surface, the same text is spoken with greedy sampling on a fresh engine
session, and three times are taken:

* `engine`: in the server's loop, opening an engine session and asking it to speak → its first chunk: the
  floor every surface stands on (what the engine costs, no HTTP, no encoding);
* each surface: the client sending its request (REST: a POST on a kept-alive connection; WebSockets: the
  text message on a socket opened beforehand, the connect timed apart) → the first audio bytes it reads;
* `overhead_ms` = the surface's median − the engine's median: what the protocol adds (parsing, session
  lease, encoding, the socket), the number the ≤ 5 ms target is about.

JSON goes to stdout (and --out). Runs alternate between surfaces so drift (CPU load from elsewhere) spreads
over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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
from sipbridge.http.app import create_app
from sipbridge.http.service import ConversationService

TEXT = "Hello, thank you for calling. How can I help you today?"
GREEDY = {"temperature": 0}


class Server:
    """The app on a loopback socket, served by this process's main event loop (espeak's subprocesses
    need the main thread's child watcher); the clients run in a worker thread."""

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

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop from the client thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(600)

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


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "min_ms": round(ordered[0], 2),
        "runs": len(ordered),
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

    def clients() -> None:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(timeout=120) as client:
            server.call(engine_first_chunk(server))  # warm-up: espeak's cold start, torch's first step
            for fn in SURFACES.values():
                fn(base, client)
            for _ in range(args.runs):
                times["engine"].append(server.call(engine_first_chunk(server)))
                for name, fn in SURFACES.items():
                    times[name].append(fn(base, client))

    async def run() -> None:
        await server.start()
        try:
            await asyncio.to_thread(clients)
        finally:
            await server.stop()

    asyncio.run(run())
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
        "text": TEXT,
        "first_audio": {"engine": engine},
    }
    for name in SURFACES:
        stats = summary(times[name])
        stats["overhead_ms"] = round(stats["p50_ms"] - engine["p50_ms"], 2)
        result["first_audio"][name] = stats
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
