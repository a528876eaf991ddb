"""`sipbridge run`: the supervisor process.

It owns the durable and shared state of a deployment: the SQLite store, the HTTP side and (as later issues
attach them) the speech engine, ASR, agents, dialer and the SIP media workers it spawns. Everything runs on
one asyncio loop in the main thread; blocking work goes to threads. See docs/ARCHITECTURE.md.

Shutdown is driven by one `asyncio.Event`: SIGINT/SIGTERM set it, every component is then stopped in the
reverse order of start, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from sipbridge.config import Config, LoadedConfig
from sipbridge.http.app import create_app
from sipbridge.store import Store

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the supervisor decides when the process stops.

    uvicorn.Server.serve() swaps SIGINT/SIGTERM handlers for its own and re-raises the signal afterwards,
    which would bypass our orderly shutdown of the other components.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_tcp(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so that port 0 resolves before we log the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class Supervisor:
    loaded: LoadedConfig
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    store: Store | None = None
    http_port: int | None = None

    @property
    def config(self) -> Config:
        return self.loaded.config

    def health_sources(self) -> Mapping[str, Any]:
        def process() -> dict[str, Any]:
            return {"uptime_s": round(time.monotonic() - self.started_at, 3), "config": self.loaded.source}

        def store() -> dict[str, Any]:
            if self.store is None:
                return {"ok": False}
            return {
                "ok": True,
                "path": str(self.store.path),
                "schema_version": self.store.schema_version,
                "active_calls": self.store.count_active_calls(),
            }

        return {"process": process, "store": store}

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            log.info("stopping: %s", reason)
            self.stop_event.set()

    async def run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)

        self.store = Store(cfg.storage.sqlite_path)
        failed = self.store.fail_unfinished("supervisor stopped while the call was active")
        if failed:
            log.warning("recorded %d call(s) left active by a previous run as failed", failed)
        cfg.storage.recordings_dir.mkdir(parents=True, exist_ok=True)
        log.info("store open: %s (schema %d)", cfg.storage.sqlite_path, self.store.schema_version)

        sock = bind_tcp(cfg.http.bind, cfg.http.port)
        self.http_port = sock.getsockname()[1]
        server = _EmbeddedServer(
            uvicorn.Config(
                create_app(self.health_sources()), log_config=None, lifespan="off", access_log=False
            )
        )
        http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        host = f"[{cfg.http.bind}]" if ":" in cfg.http.bind else cfg.http.bind
        log.info("http listening on http://%s:%d (GET /healthz)", host, self.http_port)
        log.info("sipbridge ready (config %s)", self.loaded.source)

        stop_task = asyncio.create_task(self.stop_event.wait(), name="stop")
        done, _ = await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if http_task in done and not self.stop_event.is_set():
            # The HTTP server ending by itself is a failure (e.g. a crash inside uvicorn): surface it.
            stop_task.cancel()
            http_task.result()
            raise RuntimeError("HTTP server stopped unexpectedly")

        server.should_exit = True
        await http_task
        sock.close()
        self.store.close()
        log.info("stopped cleanly")
