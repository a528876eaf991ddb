"""`sipbridge run`: the supervisor process.

It owns the durable and shared state of a deployment: the SQLite store, the HTTP side and (as later issues
attach them) the speech engine, ASR, agents, dialer and the SIP media workers it spawns. Everything runs on
one asyncio loop in the main thread; blocking work goes to threads. See docs/ARCHITECTURE.md.

Shutdown is graceful: the first SIGTERM/SIGINT starts a drain (`begin_drain`: /readyz 503, workers answer new
INVITEs 503, the dialer stops claiming) and active calls run until they end or `shutdown.drain_timeout_s`
passes; a second signal stops at once. Stopping is driven by one `asyncio.Event`: every component is then
stopped in the reverse order of start (the workers send BYE for what is left), and the process exits 0.

`Supervisor` keeps that life (start, drain, stop); its parts share one `SupervisorContext`
(sipbridge/supervisor_context.py) and each owns its own state: `CallRouter` (sipbridge/routing.py: worker
frames, sessions, call records), `StatusViews` (sipbridge/status.py: health, readiness, metrics gauges) and
`DialerLink` (sipbridge/dialing.py: the campaign's calls onto the workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from audio.resample import make_resampler
from sipbridge.agents import AgentError, make_agent
from sipbridge.asr import AsrError, Transcriber
from sipbridge.config import Config, LoadedConfig
from sipbridge.dialer.campaign import LoadedCampaign
from sipbridge.dialer.live import Clock
from sipbridge.dialer.suppression import DncList
from sipbridge.dialing import DialerLink
from sipbridge.engine import EngineError, make_engine
from sipbridge.http.app import create_app
from sipbridge.http.service import ConversationService
from sipbridge.loop_lag import LoopLag
from sipbridge.media.recorder import repair_recordings
from sipbridge.routing import CallRouter
from sipbridge.sip.front import FrontError, SipFront, check_front, front_uri, pick_port, worker_destinations
from sipbridge.sip.pool import WorkerPool, WorkerStartError
from sipbridge.status import StatusViews
from sipbridge.store import Store
from sipbridge.store_writer import StoreWriter
from sipbridge.supervisor_context import SupervisorContext
from sipbridge.turn_policy import EndOfTurn

log = logging.getLogger(__name__)


class SupervisorStartupError(Exception):
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
    http_port: int | None = None
    # `sipbridge dial`: the campaign this supervisor runs (docs/DIALER.md); the process ends with it.
    campaign: LoadedCampaign | None = None
    clock: Clock = field(default_factory=Clock)
    exit_when_idle: bool = False
    _dial_task: asyncio.Task[None] | None = None
    _drain_task: asyncio.Task[None] | None = None
    _stop_reason: str = "supervisor stopping"
    ctx: SupervisorContext = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = SupervisorContext(self.loaded)
        self.router = CallRouter(self.ctx)
        self.status = StatusViews(self.ctx)
        self.dialing = DialerLink(self.ctx)

    @property
    def config(self) -> Config:
        return self.loaded.config

    async def _start_components(self) -> None:
        cfg = self.config
        try:
            self.ctx.agent = make_agent(cfg.agent)
            # ASR first: the dia2 engine transcribes a voice prefix that came without its transcript.
            self.ctx.asr = Transcriber(cfg.asr)
            await self.ctx.asr.start()
            self.ctx.end_of_turn = EndOfTurn(cfg.turn)
            try:
                await self.ctx.end_of_turn.start()
            except RuntimeError as exc:  # the model's wheel is missing: say which key asked for it
                raise SupervisorStartupError(f"turn.end_of_turn: {exc}") from exc
            self.ctx.engine = make_engine(cfg.engine, self.ctx.asr, Path(cfg.storage.sqlite_path).parent)
            await self.ctx.engine.start()
            # Every reply makes an engine -> call rate resampler. Its filter design (and the scipy import
            # under it) is cached, but the first one cost ~1 s on the event loop, measured in the middle of
            # the first greetings (bench/system_load.py --cpu): pay it here, off the loop, before ready.
            await asyncio.to_thread(make_resampler, self.ctx.engine.sample_rate, cfg.media.clock_rate)
            check = check_front(cfg)
            if check.problem:
                raise FrontError(check.problem)
            front_port = (cfg.sip.port or pick_port(cfg.sip.bind_address)) if check.needed else 0
            link = front_uri(cfg, front_port) if check.needed else None
            self.ctx.pool = WorkerPool(
                cfg, self.router.on_worker_frame, self.router.on_worker_lost, front_uri=link
            )
            await self.ctx.pool.start()
            if check.needed:
                tls_port = None
                if "tls" in cfg.sip.transports:  # the front terminates TLS; its workers speak UDP to it
                    tls_port = cfg.sip.tls.port or pick_port(cfg.sip.bind_address)
                destinations = worker_destinations(cfg, self.ctx.pool.ports())
                self.ctx.front = SipFront(cfg, front_port, destinations, tls_port=tls_port)
                await self.ctx.front.start()
                front = self.ctx.front
                self.ctx.drain_hooks.append(lambda reason: self.ctx.track_closing(front.drain(reason)))
                self.ctx.ready_checks["front"] = lambda: front.running
            # The ASR's warm-up has run on its own thread since the model loaded, beside the engine and the
            # workers starting; waiting for it last means ready (log line, /healthz) is said only once the
            # first call's transcription will run at full speed, at the least cost to start-up.
            await self.ctx.asr.wait_warm()
        except (AgentError, EngineError, AsrError, WorkerStartError, FrontError) as exc:
            raise SupervisorStartupError(str(exc)) from exc
        ports = ", ".join(str(p) for p in self.ctx.pool.ports())
        if self.ctx.front is not None:
            self.status.add_front_gauges(self.ctx.front)
            log.info(
                "sip listening on %s port(s) %d (front: kamailio%s; %d worker(s) on %s port(s) %s)",
                cfg.sip.bind_address,
                self.ctx.front.port,
                f", tls {self.ctx.front.tls_port}" if self.ctx.front.tls_port else "",
                cfg.sip.workers,
                cfg.sip.front.worker_address,
                ports,
            )
            return
        log.info(
            "sip listening on %s port(s) %s (%d worker(s))", cfg.sip.bind_address, ports, cfg.sip.workers
        )

    async def _stop_components(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self.ctx.pool is not None:
            await self.ctx.pool.stop(self._stop_reason)
        if self.ctx.front is not None:
            await self.ctx.front.stop()  # after the workers: their BYEs leave through it
        for session in list(self.ctx.sessions.values()):
            self.router.close_session(session, None, "supervisor stopped while the call was active")
        self.ctx.sessions.clear()
        if self.ctx.closing:
            await asyncio.gather(*self.ctx.closing, return_exceptions=True)
        if self.ctx.conversations is not None:
            await self.ctx.conversations.close()
        if self.ctx.engine is not None:
            await self.ctx.engine.close()
        if self.ctx.asr is not None:
            self.ctx.asr.close()
        if self.ctx.end_of_turn is not None:
            self.ctx.end_of_turn.close()

    def request_stop(self, reason: str) -> None:
        if not self.ctx.stop_event.is_set():
            log.info("stopping: %s", reason)
            self._stop_reason = reason
            self.ctx.stop_event.set()

    def _on_signal(self, name: str) -> None:
        if self.ctx.stop_event.is_set():
            return
        if self.ctx.draining:
            self.request_stop(f"{name} again during the drain: hanging up {self._busy()} call(s) now")
        elif self.config.shutdown.drain_timeout_s == 0 or self.ctx.pool is None:
            self.request_stop(name)
        else:
            self.begin_drain(name)

    def begin_drain(self, reason: str) -> None:
        """Take no new calls; stop once the active ones end or shutdown.drain_timeout_s passes."""
        if self.ctx.draining or self.ctx.stop_event.is_set():
            return
        self.ctx.draining = True
        timeout = self.config.shutdown.drain_timeout_s
        log.info(
            "draining (%s): no new calls, %d active call(s) may run up to %.0f s; signal again to stop now",
            reason,
            self._busy(),
            timeout,
        )
        if self.ctx.pool is not None:
            self.ctx.pool.drain(reason)
        if self._dial_task is not None:
            self._dial_task.cancel()  # no new claims; calls already placed go on (the runner keeps routing)
        for hook in self.ctx.drain_hooks:
            try:
                hook(reason)
            except Exception:
                log.exception("drain hook %r failed", hook)
        self._drain_task = asyncio.create_task(self._drain(timeout), name="drain")

    def _busy(self) -> int:
        """Calls still in progress: answered sessions, and outbound ones ringing or placed."""
        busy = set(self.ctx.sessions)
        if self.ctx.pool is not None:
            for worker in self.ctx.pool.workers:
                busy |= worker.calls
        if self.ctx.dialer is not None:
            busy |= set(self.ctx.dialer.on_answer_route)
        return len(busy)

    async def _drain(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Polled: calls end through several paths (CallEnded, DialEnded, a worker dying); 10 checks a second
        # cost nothing next to a call's length.
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.ctx.closing:
            await asyncio.gather(*self.ctx.closing, return_exceptions=True)
        left = self._busy()
        if left:
            self.request_stop(f"drain timeout ({timeout:.0f} s): hanging up {left} call(s)")
        else:
            self.request_stop("drained: no call left")

    async def run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, signal.Signals(sig).name)

        self.ctx.store = Store(cfg.storage.database)
        repair_recordings(self.ctx.store.unfinished_recordings())
        failed = self.ctx.store.fail_unfinished("supervisor stopped while the call was active")
        if failed:
            log.warning("recorded %d call(s) left active by a previous run as failed", failed)
        cfg.storage.recordings_dir.mkdir(parents=True, exist_ok=True)
        log.info("store open: %s (schema %d)", self.ctx.store.where, self.ctx.store.schema_version)
        # HTTP binds first: a busy port fails in milliseconds, before any worker process exists.
        try:
            sock = bind_tcp(cfg.http.bind, cfg.http.port)
        except OSError:
            self.ctx.store.close()
            raise
        self.http_port = sock.getsockname()[1]
        self.ctx.loop = loop
        self.ctx.writer = StoreWriter(self.ctx.store)
        try:
            await self._start_components()
        except BaseException:
            await self._stop_components()
            sock.close()
            self._close_store()
            raise
        assert self.ctx.engine is not None
        self.ctx.conversations = ConversationService(self.ctx.engine, self.ctx.asr, cfg.http.limits)
        self.ctx.loop_lag = LoopLag(self.ctx.metrics.loop_lag)
        self.status.add_gauges(self.clock)
        app = create_app(
            self.status.health_sources(),
            self.ctx.conversations,
            cfg.http,
            metrics=self.ctx.metrics.render,
            readiness=self.status.readiness,
            dnc=DncList(self.ctx.store),
        )
        server = _EmbeddedServer(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
        http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        host = f"[{cfg.http.bind}]" if ":" in cfg.http.bind else cfg.http.bind
        log.info("http listening on http://%s:%d (GET /healthz)", host, self.http_port)
        log.info("sipbridge ready (config %s)", self.loaded.source)

        stop_task = asyncio.create_task(self.ctx.stop_event.wait(), name="stop")
        lag_task = asyncio.create_task(self.ctx.loop_lag.run(), name="loop-lag")
        waits: set[asyncio.Task[Any]] = {http_task, stop_task}
        if self.campaign is not None:
            runner = self.dialing.make_runner(self.campaign, self.clock, self.exit_when_idle)
            runner.prepare()
            dial_task = asyncio.create_task(
                self.dialing.run_campaign(runner, self.request_stop), name="dialer"
            )
            self._dial_task = dial_task
            waits.add(dial_task)
        while True:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if done & {http_task, stop_task} or not all(t.cancelled() for t in done):
                break
            waits -= done  # the drain cancelled the dialer: keep serving the calls in progress
        if http_task in done and not self.ctx.stop_event.is_set():
            # The HTTP server ending by itself is a failure (e.g. a crash inside uvicorn): surface it.
            stop_task.cancel()
            self._close_store()  # what the calls wrote so far is kept (they are failed at the next start)
            http_task.result()
            raise RuntimeError("HTTP server stopped unexpectedly")

        dialer_tasks = {self._dial_task} if self._dial_task is not None else set()
        for task in dialer_tasks:
            task.cancel()  # nothing new is placed while the workers stop
        for result in await asyncio.gather(*dialer_tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("dialer failed: %r", result, exc_info=result)
        stop_task.cancel()
        lag_task.cancel()
        server.should_exit = True
        await http_task
        sock.close()
        await self._stop_components()
        self._close_store()
        log.info("stopped cleanly")

    def _close_store(self) -> None:
        """After the sessions closed (their ends queued): every queued write is committed, then the store
        closes. Blocks the loop for the last batch's commit; nothing else runs on it any more."""
        if self.ctx.writer is not None:
            # Bounded: a store that stopped answering (a hung PostgreSQL) must not hang the stop; what is
            # still queued then is logged as lost by close(), and those calls are failed at the next start.
            self.ctx.writer.close(timeout=30)
            log.info("store writer closed: %s", self.ctx.writer.health())
            if self.ctx.writer.alive:
                return  # it still holds the connection's lock: closing would hang; the exit closes it
        if self.ctx.store is not None:
            self.ctx.store.close()
