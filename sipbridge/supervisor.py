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
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from sipbridge import frames as f
from sipbridge.agents import Agent, AgentError, make_agent
from sipbridge.asr import AsrError, Transcriber
from sipbridge.config import CALLS_PER_WORKER, Config, LoadedConfig
from sipbridge.dialer.campaign import LoadedCampaign
from sipbridge.dialer.live import CampaignRunner, Clock
from sipbridge.dialer.state import CampaignState
from sipbridge.engine import Engine, EngineError, make_engine
from sipbridge.http.app import create_app
from sipbridge.http.service import ConversationService
from sipbridge.metrics import Metrics
from sipbridge.session import CallSession
from sipbridge.sip.pool import WorkerHandle, WorkerPool, WorkerStartError
from sipbridge.store import Store

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A component could not start (engine, ASR model, agent flow, SIP worker); the message says which."""


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
    engine: Engine | None = None
    asr: Transcriber | None = None
    agent: Agent | None = None
    pool: WorkerPool | None = None
    sessions: dict[str, CallSession] = field(default_factory=dict)
    # HTTP conversations (sipbridge/http): sessions of the same engine as the calls, so they share its batch.
    conversations: ConversationService | None = None
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    # `sipbridge dial`: the campaign this supervisor runs (docs/DIALER.md); the process ends with it.
    campaign: LoadedCampaign | None = None
    clock: Clock = field(default_factory=Clock)
    exit_when_idle: bool = False
    dialer: CampaignRunner | None = None
    metrics: Metrics = field(default_factory=Metrics)  # GET /metrics; gauges added in _add_gauges

    @property
    def config(self) -> Config:
        return self.loaded.config

    def health_sources(self) -> Mapping[str, Any]:
        def process() -> dict[str, Any]:
            return {
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "config": self.loaded.source,
                # Leak checks: a finished call leaves no thread and no task behind.
                "threads": sorted(t.name for t in threading.enumerate()),
                "tasks": len(asyncio.all_tasks(self._loop)) if self._loop else 0,
            }

        def store() -> dict[str, Any]:
            if self.store is None:
                return {"ok": False}
            return {
                "ok": True,
                "path": str(self.store.path),
                "schema_version": self.store.schema_version,
                "active_calls": self.store.count_active_calls(),
            }

        return {
            "process": process,
            "store": store,
            "sip": lambda: self.pool.health() if self.pool else {"ok": False},
            "engine": lambda: self.engine.health() if self.engine else {"ok": False},
            "asr": lambda: self.asr.health() if self.asr else {"ok": False},
            "calls": lambda: {"active": len(self.sessions)},
            "conversations": lambda: self.conversations.health() if self.conversations else {"ok": True},
        }

    def _add_gauges(self) -> None:
        """Metrics read from the components when scraped (their state is theirs, not copied)."""
        m = self.metrics
        m.gauge("sipbridge_calls_active", "Calls in progress.", lambda: len(self.sessions))
        m.gauge(
            "sipbridge_dial_in_flight",
            "Outbound calls placed and not yet recorded (ringing or talking).",
            lambda: len(self.dialer.on_answer_route) if self.dialer else 0,
        )
        m.gauge(
            "sipbridge_workers_ready",
            "SIP media workers connected and ready.",
            lambda: sum(w.ready.is_set() for w in self.pool.workers) if self.pool else 0,
        )
        m.gauge(
            "sipbridge_worker_restarts_total",
            "SIP media workers restarted after dying.",
            lambda: sum(w.restarts for w in self.pool.workers) if self.pool else 0,
            kind="counter",
        )
        m.gauge(
            "sipbridge_trunk_registered",
            "1 while the trunk registration is in force (also 1 when registration is off).",
            lambda: self._trunk_registered(),
        )
        m.gauge(
            "sipbridge_asr_transcriptions_total",
            "ASR runs asked for (caller turns, early runs, AMD greetings, voice prefixes).",
            lambda: self.asr.turns if self.asr else 0,
            kind="counter",
        )
        m.gauge(
            "sipbridge_asr_redecoded_total",
            "ASR runs that fell back to a higher temperature (asr.temperature_fallback).",
            lambda: self.asr.redecoded if self.asr else 0,
            kind="counter",
        )

    def _trunk_registered(self) -> float:
        if self.pool is None:
            return 0
        registration = self.pool.health().get("registration")
        return 1 if registration is None or registration.get("registered") else 0

    # ------------------------------------------------------------------------------ call routing

    def _on_worker_frame(self, worker: WorkerHandle, frame: f.Frame) -> None:
        assert self.store is not None and self.engine and self.agent and self.asr
        if self.dialer is not None and self.dialer.on_frame(frame):
            if isinstance(frame, f.DialEnded):
                worker.calls.discard(frame.call_id)
            return
        if isinstance(frame, f.CallStarted):
            session = CallSession(
                frame, worker, self.config, self.store, self.engine, self.agent, self.asr,
                metrics=self.metrics,
            )
            if self.dialer is not None:
                session.outbound = self.dialer.outbound(frame.call_id)
            self.sessions[frame.call_id] = session
            worker.calls.add(frame.call_id)
            session.open()
        elif isinstance(frame, f.CallEnded):
            worker.calls.discard(frame.call_id)
            ended = self.sessions.pop(frame.call_id, None)
            if ended is not None:
                self._close_session(ended, frame, None)
        elif isinstance(frame, f.CallRejected):
            call_id = self.store.create_call(
                "inbound", remote_uri=frame.remote_uri, remote_addr=frame.remote_addr, worker=worker.index
            )
            self.store.end_call(call_id, "rejected", reason=frame.reason, sip_status=frame.code)
            self.metrics.calls_rejected.inc(code=str(frame.code))
            # Logged after the row is written: tests (and operators) may read the store once they see it.
            log.info("call %s recorded: rejected (%d, %s)", call_id, frame.code, frame.reason)
        elif isinstance(frame, f.Registration):
            worker.registration = frame
        elif isinstance(frame, f.CallFrame):
            found = self.sessions.get(frame.call_id)
            if found is not None:
                found.handle(frame)

    def _on_worker_lost(self, worker: WorkerHandle, call_ids: set[str], reason: str) -> None:
        for call_id in call_ids:
            session = self.sessions.pop(call_id, None)
            if session is not None:
                self._close_session(session, None, reason)
            elif self.dialer is not None:
                self.dialer.lost(call_id, reason)  # still ringing when its worker died

    # ------------------------------------------------------------------------------ dialer

    def _send_dial(self, dial: f.Dial) -> int | None:
        """The least busy connected worker places the call; its slot counts from the INVITE on."""
        assert self.pool is not None
        ready = [w for w in self.pool.workers if w.connected.is_set() and len(w.calls) < CALLS_PER_WORKER]
        if not ready:
            return None
        worker = min(ready, key=lambda w: (len(w.calls), w.index))
        if not worker.send(dial):
            return None
        worker.calls.add(dial.call_id)
        return worker.index

    def _send_to_worker(self, index: int, frame: f.Frame) -> bool:
        assert self.pool is not None
        return 0 <= index < len(self.pool.workers) and self.pool.workers[index].send(frame)

    def _free_slots(self) -> int:
        if self.pool is None:
            return 0
        return sum(
            max(0, CALLS_PER_WORKER - len(w.calls)) for w in self.pool.workers if w.connected.is_set()
        )

    def _default_dial_uri(self) -> str:
        trunk = self.config.sip.trunk
        host = str(trunk.registrar).split(":", 1)[1] if trunk.registrar else "127.0.0.1"
        return "sip:{number}@" + host

    def _close_session(self, session: CallSession, ended: f.CallEnded | None, lost: str | None) -> None:
        task = asyncio.create_task(session.close(ended, lost), name=f"close-{session.call_id[:8]}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _start_components(self) -> None:
        cfg = self.config
        try:
            self.agent = make_agent(cfg.agent)
            # ASR first: the dia2 engine transcribes a voice prefix that came without its transcript.
            self.asr = Transcriber(cfg.asr)
            await self.asr.start()
            self.engine = make_engine(cfg.engine, self.asr, Path(cfg.storage.sqlite_path).parent)
            await self.engine.start()
            self.pool = WorkerPool(cfg, self._on_worker_frame, self._on_worker_lost)
            await self.pool.start()
            # The ASR's warm-up has run on its own thread since the model loaded, beside the engine and the
            # workers starting; waiting for it last means ready (log line, /healthz) is said only once the
            # first call's transcription will run at full speed, at the least cost to start-up.
            await self.asr.wait_warm()
        except (AgentError, EngineError, AsrError, WorkerStartError) as exc:
            raise StartupError(str(exc)) from exc
        ports = ", ".join(str(p) for p in self.pool.ports())
        log.info(
            "sip listening on %s port(s) %s (%d worker(s))", cfg.sip.bind_address, ports, cfg.sip.workers
        )

    async def _stop_components(self) -> None:
        if self.pool is not None:
            await self.pool.stop()
        for session in list(self.sessions.values()):
            self._close_session(session, None, "supervisor stopped while the call was active")
        self.sessions.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.conversations is not None:
            await self.conversations.close()
        if self.engine is not None:
            await self.engine.close()
        if self.asr is not None:
            self.asr.close()

    async def _run_campaign(self, runner: CampaignRunner) -> None:
        await runner.run(self.stop_event)
        # Let answered calls finish their flow before stopping: the campaign ends when its last call does.
        while runner.on_answer_route and not self.stop_event.is_set():
            await asyncio.sleep(0.1)
        self.request_stop(f"campaign {runner.name} finished its work")

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            log.info("stopping: %s", reason)
            self.stop_event.set()

    async def run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)

        self.store = Store(cfg.storage.database)
        failed = self.store.fail_unfinished("supervisor stopped while the call was active")
        if failed:
            log.warning("recorded %d call(s) left active by a previous run as failed", failed)
        cfg.storage.recordings_dir.mkdir(parents=True, exist_ok=True)
        log.info("store open: %s (schema %d)", self.store.where, self.store.schema_version)
        # HTTP binds first: a busy port fails in milliseconds, before any worker process exists.
        try:
            sock = bind_tcp(cfg.http.bind, cfg.http.port)
        except OSError:
            self.store.close()
            raise
        self.http_port = sock.getsockname()[1]
        self._loop = loop
        try:
            await self._start_components()
        except BaseException:
            await self._stop_components()
            sock.close()
            self.store.close()
            raise
        assert self.engine is not None
        self.conversations = ConversationService(self.engine, self.asr, cfg.http.limits)
        self._add_gauges()
        app = create_app(self.health_sources(), self.conversations, cfg.http, metrics=self.metrics.render)
        server = _EmbeddedServer(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
        http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        host = f"[{cfg.http.bind}]" if ":" in cfg.http.bind else cfg.http.bind
        log.info("http listening on http://%s:%d (GET /healthz)", host, self.http_port)
        log.info("sipbridge ready (config %s)", self.loaded.source)

        stop_task = asyncio.create_task(self.stop_event.wait(), name="stop")
        waits: set[asyncio.Task[Any]] = {http_task, stop_task}
        if self.campaign is not None:
            self.dialer = CampaignRunner(
                self.campaign,
                CampaignState(self.store, self.campaign.campaign.name),
                self._send_dial,
                self._free_slots,
                clock=self.clock,
                default_dial_uri=self._default_dial_uri(),
                exit_when_idle=self.exit_when_idle,
                send_to_worker=self._send_to_worker,
                metrics=self.metrics,
                asr_available=cfg.asr.backend != "none",
            )
            self.dialer.prepare()
            dial_task = asyncio.create_task(self._run_campaign(self.dialer), name="dialer")
            waits.add(dial_task)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if http_task in done and not self.stop_event.is_set():
            # The HTTP server ending by itself is a failure (e.g. a crash inside uvicorn): surface it.
            stop_task.cancel()
            http_task.result()
            raise RuntimeError("HTTP server stopped unexpectedly")

        dialer_tasks = waits - {http_task, stop_task}
        for task in dialer_tasks:
            task.cancel()  # nothing new is placed while the workers stop
        for result in await asyncio.gather(*dialer_tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("dialer failed: %r", result, exc_info=result)
        stop_task.cancel()
        server.should_exit = True
        await http_task
        sock.close()
        await self._stop_components()
        self.store.close()
        log.info("stopped cleanly")
