"""`sipbridge run`: the supervisor process.

It owns the durable and shared state of a deployment: the SQLite store, the HTTP side and (as later issues
attach them) the speech engine, ASR, agents, dialer and the SIP media workers it spawns. Everything runs on
one asyncio loop in the main thread; blocking work goes to threads. See docs/ARCHITECTURE.md.

Shutdown is graceful: the first SIGTERM/SIGINT starts a drain (`begin_drain`: /readyz 503, workers answer new
INVITEs 503, the dialer stops claiming) and active calls run until they end or `shutdown.drain_timeout_s`
passes; a second signal stops at once. Stopping is driven by one `asyncio.Event`: every component is then
stopped in the reverse order of start (the workers send BYE for what is left), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from audio.resample import make_resampler
from sipbridge import frames as f
from sipbridge.agents import Agent, AgentError, make_agent
from sipbridge.asr import AsrError, Transcriber
from sipbridge.config import CALLS_PER_WORKER, Config, LoadedConfig
from sipbridge.dialer.campaign import LoadedCampaign
from sipbridge.dialer.health import add_caller_id_gauges
from sipbridge.dialer.live import CampaignRunner, Clock
from sipbridge.dialer.state import CampaignState, ts
from sipbridge.dialer.suppression import DncList
from sipbridge.engine import Engine, EngineError, make_engine
from sipbridge.http.app import create_app
from sipbridge.http.service import ConversationService
from sipbridge.loop_lag import LoopLag
from sipbridge.media.recorder import repair_recordings
from sipbridge.metrics import Metrics
from sipbridge.outcomes import refusal_outcome
from sipbridge.session import CallSession
from sipbridge.sip.front import FrontError, SipFront, check_front, front_uri, pick_port, worker_destinations
from sipbridge.sip.pool import WorkerHandle, WorkerPool, WorkerStartError
from sipbridge.store import Store
from sipbridge.store_writer import StoreWriter, after
from sipbridge.turn_policy import EndOfTurn

log = logging.getLogger(__name__)


_REJECTED_ROWS_PER_MIN = 60
# More open calls than this many times a worker's slots: its CallEnded frames are lost (_check_call_count).
_LOST_ENDS_FACTOR = 3


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
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    store: Store | None = None
    # The only writer of call records while running: the loop queues, its thread commits (store_writer.py).
    writer: StoreWriter | None = None
    http_port: int | None = None
    engine: Engine | None = None
    asr: Transcriber | None = None
    end_of_turn: EndOfTurn | None = None  # turn.end_of_turn: judges a caller's pause (sipbridge/turn_policy)
    agent: Agent | None = None
    pool: WorkerPool | None = None
    front: SipFront | None = None  # Kamailio before the workers (sip.front); None: workers reached directly
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
    loop_lag: LoopLag | None = None  # measures the loop's stalls from ready on (sipbridge/loop_lag.py)
    _rejected_minute: int = -1  # CallRejected rows written this minute (rate limit)
    _rejected_rows: int = 0
    # Graceful drain (begin_drain). A SIP front (docs/DEPLOY.md) registers a hook to stop routing INVITEs
    # here and a readiness check of its own; both are plain callables run on the loop.
    draining: bool = False
    drain_hooks: list[Callable[[str], None]] = field(default_factory=list)
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    _dial_task: asyncio.Task[None] | None = None
    _drain_task: asyncio.Task[None] | None = None
    _stop_reason: str = "supervisor stopping"

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
                **(self.writer.health() if self.writer else {}),
            }

        return {
            "process": process,
            "store": store,
            "sip": lambda: self.pool.health() if self.pool else {"ok": False},
            "engine": lambda: self.engine.health() if self.engine else {"ok": False},
            "asr": lambda: self.asr.health() if self.asr else {"ok": False},
            "front": lambda: self.front.health() if self.front else {"ok": True, "enabled": False},
            "end_of_turn": lambda: self.end_of_turn.health() if self.end_of_turn else {"ok": False},
            "calls": lambda: {"active": len(self.sessions)},
            "conversations": lambda: self.conversations.health() if self.conversations else {"ok": True},
        }

    def readiness(self) -> dict[str, bool]:
        """GET /readyz: may this process take new calls? Every check must hold (a front or load balancer
        routes calls only to ready hosts; /healthz stays 200 while the process lives)."""
        asr = self.asr.health() if self.asr else {}
        checks = {
            "not_draining": not self.draining and not self.stop_event.is_set(),
            "workers": self.pool is not None
            and bool(self.pool.workers)
            and all(w.ready.is_set() and w.connected.is_set() for w in self.pool.workers),
            "engine": bool(self.engine and self.engine.health().get("ok")),
            "asr": bool(asr.get("ok")) and (asr.get("backend") == "none" or bool(asr.get("warm"))),
            "store": bool(self.store and self.store.writable()),
        }
        for name, check in self.ready_checks.items():
            checks[name] = bool(check())
        return checks

    def _add_gauges(self) -> None:
        """Metrics read from the components when scraped (their state is theirs, not copied)."""
        m = self.metrics
        m.gauge("sipbridge_calls_active", "Calls in progress.", lambda: len(self.sessions))
        # Campaign time, like the attempts' started_at (`dial --now` runs on its own clock).
        add_caller_id_gauges(m, lambda: self.store, self.config.dialer, lambda: ts(self.clock.now()))
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
        writer = self.writer
        assert writer is not None
        m.gauge(
            "sipbridge_store_write_errors_total",
            "Store writes that failed (each logged with its call; /healthz store.last_error).",
            lambda: writer.errors,
            kind="counter",
        )
        m.gauge(
            "sipbridge_store_writes_queued",
            "Store writes queued for the writer thread.",
            lambda: writer.queued,
        )
        m.gauge(
            "sipbridge_event_loop_lag_max_seconds",
            "The largest event-loop lag seen since ready (sipbridge_event_loop_lag_seconds).",
            lambda: self.loop_lag.max_s if self.loop_lag else 0.0,
        )
        m.gauge(
            "sipbridge_asr_redecoded_total",
            "ASR runs that fell back to a higher temperature (asr.temperature_fallback).",
            lambda: self.asr.redecoded if self.asr else 0,
            kind="counter",
        )

    def _add_front_gauges(self, front: SipFront) -> None:
        """The front's own counters (Kamailio's, summed over its restarts) and its view of the workers."""
        m = self.metrics
        m.gauge("sipbridge_front_up", "1 while the SIP front (Kamailio) runs.", lambda: front.running)
        m.gauge(
            "sipbridge_front_restarts_total",
            "SIP front restarts after dying.",
            lambda: front.restarts,
            kind="counter",
        )
        m.gauge(
            "sipbridge_front_destinations_active",
            "Workers (or hosts) the front sends new calls to: answering its OPTIONS probes.",
            lambda: sum(d.state == "active" for d in front.view),
        )
        for key, text in (
            ("busy", "INVITEs the front answered 503 (every call slot taken, or no worker up)."),
            ("rejected", "Requests the front refused: source outside sip.allowed_sources."),
            ("limited", "Requests the front dropped: over sip.front.rate_limit_per_s from one source."),
            ("failover", "INVITEs the front moved to another worker after one refused or did not answer."),
        ):
            m.gauge(f"sipbridge_front_{key}_total", text, front.counter(key), kind="counter")

    def _trunk_registered(self) -> float:
        if self.pool is None:
            return 0
        registration = self.pool.health().get("registration")
        return 1 if registration is None or registration.get("registered") else 0

    # ------------------------------------------------------------------------------ call routing

    def _on_worker_frame(self, worker: WorkerHandle, frame: f.Frame) -> None:
        """One frame's handling may fail (a store error, a bug): that frame is dropped, or that one call
        ended, and counted; the worker's link and its other calls go on."""
        try:
            self._route_frame(worker, frame)
        except Exception:
            kind = type(frame).__name__
            self.metrics.frame_errors.inc(frame=kind)
            call_id = frame.call_id if isinstance(frame, f.CallFrame) else None
            log.exception(
                "worker %d: handling %s%s failed",
                worker.index,
                kind,
                f" of call {call_id}" if call_id else "",
            )
            if isinstance(frame, f.CallStarted) and call_id is not None:
                self._abandon(worker, call_id, f"supervisor could not start the call ({kind} failed)")

    def _abandon(self, worker: WorkerHandle, call_id: str, reason: str) -> None:
        """A call whose start failed: hang it up and end its session, so none is left that never ends."""
        worker.send(f.Hangup(call_id, 500, reason))
        session = self.sessions.get(call_id)
        if session is not None:
            session.failure = session.failure or reason

    def _on_refused(self, frame: f.RequestsRefused) -> None:
        assert self.writer is not None
        for method, code, _reason, count in frame.counts:
            self.metrics.sip_refused.inc(count, method=method, code=str(code))
            if method == "INVITE" and code > 0:
                self.metrics.calls_rejected.inc(count, code=str(code))
        written = self.writer.add_refusals([tuple(c) for c in frame.counts])  # type: ignore[misc]
        # One line per worker report (at most two a second), however many requests it sums up; said once
        # committed: tests (and operators) may read the store when they see it.
        summary = ", ".join(f"{m} {c} x{n}" for m, c, _r, n in frame.counts)
        after(written, lambda: log.info("worker %d: sip refusals recorded: %s", frame.index, summary))

    def _on_rejected(self, worker: WorkerHandle, frame: f.CallRejected) -> None:
        """An INVITE PJSIP took and then refused (ACL backstop, 486, 488 ...): a call row, at most
        `_REJECTED_ROWS_PER_MIN` a minute; past that only the per-minute aggregate grows."""
        assert self.writer is not None
        self.metrics.calls_rejected.inc(code=str(frame.code))
        minute = int(time.monotonic() // 60)
        if self._rejected_minute != minute:
            self._rejected_minute, self._rejected_rows = minute, 0
        if self._rejected_rows >= _REJECTED_ROWS_PER_MIN:
            self.writer.add_refusals([("INVITE", frame.code, frame.reason[:120], 1)])
            return
        self._rejected_rows += 1
        outcome = refusal_outcome(frame.code)
        call_id = uuid.uuid4().hex
        self.writer.create_call(
            "inbound",
            call_id=call_id,
            remote_uri=frame.remote_uri,
            remote_addr=frame.remote_addr,
            worker=worker.index,
        )
        written = self.writer.end_call(call_id, outcome, reason=frame.reason, sip_status=frame.code)
        # Logged once the row is committed: tests (and operators) may read the store once they see it.
        line = ("call %s recorded: %s (%d, %s)", call_id, outcome, frame.code, frame.reason)
        after(written, lambda: log.info(*line))

    def _route_frame(self, worker: WorkerHandle, frame: f.Frame) -> None:
        assert self.writer is not None and self.engine and self.agent and self.asr
        if isinstance(frame, f.RtpQuality):
            self._record_rtp_quality(frame)
            return
        if self.dialer is not None and self.dialer.on_frame(frame):
            if isinstance(frame, f.DialEnded):
                worker.calls.discard(frame.call_id)
                self._front_load(worker)
            return
        if isinstance(frame, f.CallStarted):
            session = CallSession(
                frame,
                worker,
                self.config,
                self.writer,
                self.engine,
                self.agent,
                self.asr,
                metrics=self.metrics,
                end_of_turn=self.end_of_turn,
            )
            if self.dialer is not None:
                session.outbound = self.dialer.outbound(frame.call_id)
            self.sessions[frame.call_id] = session
            worker.calls.add(frame.call_id)
            self._front_load(worker)
            session.open()
            self._check_call_count(worker)
        elif isinstance(frame, f.CallEnded):
            worker.calls.discard(frame.call_id)
            self._front_load(worker)
            ended = self.sessions.pop(frame.call_id, None)
            if ended is not None:
                self._close_session(ended, frame, None)
        elif isinstance(frame, f.CallRejected):
            self._on_rejected(worker, frame)
        elif isinstance(frame, f.RequestsRefused):
            self._on_refused(frame)
        elif isinstance(frame, f.Registration):
            worker.registration = frame
        elif isinstance(frame, f.CallFrame):
            found = self.sessions.get(frame.call_id)
            if found is not None:
                found.handle(frame)

    def _check_call_count(self, worker: WorkerHandle) -> None:
        """A worker holds at most CALLS_PER_WORKER calls; a few more open here only while its CallEnded
        frames are on their way. Far more means they stopped coming (soak defect A): its calls would stay
        open for ever, so it is restarted, which records them failed."""
        if len(worker.calls) > _LOST_ENDS_FACTOR * CALLS_PER_WORKER and worker.kill():
            log.error(
                "worker %d has %d calls open for %d slots: its CallEnded frames are lost; restarting it",
                worker.index,
                len(worker.calls),
                CALLS_PER_WORKER,
            )

    def _record_rtp_quality(self, q: f.RtpQuality) -> None:
        """Stored with the call (its row exists from the answer on) and counted, just before CallEnded."""
        assert self.writer is not None
        self.writer.set_rtp_quality(
            q.call_id,
            packets=q.packets,
            lost=q.lost,
            late=q.late,
            jitter_ms=q.jitter_mean_ms,
            jitter_max_ms=q.jitter_max_ms,
        )
        expected = q.packets + q.lost
        if expected:
            self.metrics.rtp_loss.observe(q.lost / expected)
            self.metrics.rtp_jitter.observe(q.jitter_mean_ms / 1000)
        self.metrics.rtp_late.inc(q.late)

    def _on_worker_lost(self, worker: WorkerHandle, call_ids: set[str], reason: str) -> None:
        if self.front is not None:
            task = asyncio.create_task(self.front.worker_down(worker.index), name="front-worker-down")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
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
        self._front_load(worker)
        return worker.index

    def _front_load(self, worker: WorkerHandle) -> None:
        """The front routes on the calls it dispatched; dialer calls count only here: tell it."""
        if self.front is not None:
            self.front.worker_load(worker.index, len(worker.calls))

    def _send_to_worker(self, index: int, frame: f.Frame) -> bool:
        assert self.pool is not None
        return 0 <= index < len(self.pool.workers) and self.pool.workers[index].send(frame)

    def _free_slots(self) -> int:
        if self.pool is None:
            return 0
        return sum(max(0, CALLS_PER_WORKER - len(w.calls)) for w in self.pool.workers if w.connected.is_set())

    def _default_dial_uri(self) -> str:
        trunk = self.config.sip.trunk
        host = str(trunk.registrar).split(":", 1)[1] if trunk.registrar else "127.0.0.1"
        return "sip:{number}@" + host

    def _track_closing(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task the stop waits for (`_closing`), e.g. the front's drain RPCs."""
        task = asyncio.create_task(coro, name="closing")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

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
            self.end_of_turn = EndOfTurn(cfg.turn)
            try:
                await self.end_of_turn.start()
            except RuntimeError as exc:  # the model's wheel is missing: say which key asked for it
                raise SupervisorStartupError(f"turn.end_of_turn: {exc}") from exc
            self.engine = make_engine(cfg.engine, self.asr, Path(cfg.storage.sqlite_path).parent)
            await self.engine.start()
            # Every reply makes an engine -> call rate resampler. Its filter design (and the scipy import
            # under it) is cached, but the first one cost ~1 s on the event loop, measured in the middle of
            # the first greetings (bench/system_load.py --cpu): pay it here, off the loop, before ready.
            await asyncio.to_thread(make_resampler, self.engine.sample_rate, cfg.media.clock_rate)
            check = check_front(cfg)
            if check.problem:
                raise FrontError(check.problem)
            front_port = (cfg.sip.port or pick_port(cfg.sip.bind_address)) if check.needed else 0
            link = front_uri(cfg, front_port) if check.needed else None
            self.pool = WorkerPool(cfg, self._on_worker_frame, self._on_worker_lost, front_uri=link)
            await self.pool.start()
            if check.needed:
                tls_port = None
                if "tls" in cfg.sip.transports:  # the front terminates TLS; its workers speak UDP to it
                    tls_port = cfg.sip.tls.port or pick_port(cfg.sip.bind_address)
                destinations = worker_destinations(cfg, self.pool.ports())
                self.front = SipFront(cfg, front_port, destinations, tls_port=tls_port)
                await self.front.start()
                front = self.front
                self.drain_hooks.append(lambda reason: self._track_closing(front.drain(reason)))
                self.ready_checks["front"] = lambda: front.running
            # The ASR's warm-up has run on its own thread since the model loaded, beside the engine and the
            # workers starting; waiting for it last means ready (log line, /healthz) is said only once the
            # first call's transcription will run at full speed, at the least cost to start-up.
            await self.asr.wait_warm()
        except (AgentError, EngineError, AsrError, WorkerStartError, FrontError) as exc:
            raise SupervisorStartupError(str(exc)) from exc
        ports = ", ".join(str(p) for p in self.pool.ports())
        if self.front is not None:
            self._add_front_gauges(self.front)
            log.info(
                "sip listening on %s port(s) %d (front: kamailio%s; %d worker(s) on %s port(s) %s)",
                cfg.sip.bind_address,
                self.front.port,
                f", tls {self.front.tls_port}" if self.front.tls_port else "",
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
        if self.pool is not None:
            await self.pool.stop(self._stop_reason)
        if self.front is not None:
            await self.front.stop()  # after the workers: their BYEs leave through it
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
        if self.end_of_turn is not None:
            self.end_of_turn.close()

    async def _run_campaign(self, runner: CampaignRunner) -> None:
        await runner.run(self.stop_event)
        # Let answered calls finish their flow before stopping: the campaign ends when its last call does.
        while runner.on_answer_route and not self.stop_event.is_set():
            await asyncio.sleep(0.1)
        self.request_stop(f"campaign {runner.name} finished its work")

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            log.info("stopping: %s", reason)
            self._stop_reason = reason
            self.stop_event.set()

    def _on_signal(self, name: str) -> None:
        if self.stop_event.is_set():
            return
        if self.draining:
            self.request_stop(f"{name} again during the drain: hanging up {self._busy()} call(s) now")
        elif self.config.shutdown.drain_timeout_s == 0 or self.pool is None:
            self.request_stop(name)
        else:
            self.begin_drain(name)

    def begin_drain(self, reason: str) -> None:
        """Take no new calls; stop once the active ones end or shutdown.drain_timeout_s passes."""
        if self.draining or self.stop_event.is_set():
            return
        self.draining = True
        timeout = self.config.shutdown.drain_timeout_s
        log.info(
            "draining (%s): no new calls, %d active call(s) may run up to %.0f s; signal again to stop now",
            reason,
            self._busy(),
            timeout,
        )
        if self.pool is not None:
            self.pool.drain(reason)
        if self._dial_task is not None:
            self._dial_task.cancel()  # no new claims; calls already placed go on (the runner keeps routing)
        for hook in self.drain_hooks:
            try:
                hook(reason)
            except Exception:
                log.exception("drain hook %r failed", hook)
        self._drain_task = asyncio.create_task(self._drain(timeout), name="drain")

    def _busy(self) -> int:
        """Calls still in progress: answered sessions, and outbound ones ringing or placed."""
        busy = set(self.sessions)
        if self.pool is not None:
            for worker in self.pool.workers:
                busy |= worker.calls
        if self.dialer is not None:
            busy |= set(self.dialer.on_answer_route)
        return len(busy)

    async def _drain(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Polled: calls end through several paths (CallEnded, DialEnded, a worker dying); 10 checks a second
        # cost nothing next to a call's length.
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
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

        self.store = Store(cfg.storage.database)
        repair_recordings(self.store.unfinished_recordings())
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
        self.writer = StoreWriter(self.store)
        try:
            await self._start_components()
        except BaseException:
            await self._stop_components()
            sock.close()
            self._close_store()
            raise
        assert self.engine is not None
        self.conversations = ConversationService(self.engine, self.asr, cfg.http.limits)
        self.loop_lag = LoopLag(self.metrics.loop_lag)
        self._add_gauges()
        app = create_app(
            self.health_sources(),
            self.conversations,
            cfg.http,
            metrics=self.metrics.render,
            readiness=self.readiness,
            dnc=DncList(self.store),
        )
        server = _EmbeddedServer(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
        http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        host = f"[{cfg.http.bind}]" if ":" in cfg.http.bind else cfg.http.bind
        log.info("http listening on http://%s:%d (GET /healthz)", host, self.http_port)
        log.info("sipbridge ready (config %s)", self.loaded.source)

        stop_task = asyncio.create_task(self.stop_event.wait(), name="stop")
        lag_task = asyncio.create_task(self.loop_lag.run(), name="loop-lag")
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
                daily_cap=cfg.dialer.max_attempts_per_number_per_day,
            )
            self.dialer.prepare()
            dial_task = asyncio.create_task(self._run_campaign(self.dialer), name="dialer")
            self._dial_task = dial_task
            waits.add(dial_task)
        while True:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if done & {http_task, stop_task} or not all(t.cancelled() for t in done):
                break
            waits -= done  # the drain cancelled the dialer: keep serving the calls in progress
        if http_task in done and not self.stop_event.is_set():
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
        if self.writer is not None:
            # Bounded: a store that stopped answering (a hung PostgreSQL) must not hang the stop; what is
            # still queued then is logged as lost by close(), and those calls are failed at the next start.
            self.writer.close(timeout=30)
            log.info("store writer closed: %s", self.writer.health())
            if self.writer.alive:
                return  # it still holds the connection's lock: closing would hang; the exit closes it
        if self.store is not None:
            self.store.close()
