"""A SIP media worker process: one pjsua2 Endpoint, at most 4 calls, spawned by the supervisor.

    python -m sipbridge.sip.worker        (settings as JSON on stdin; see sipbridge/sip/settings.py)

Threads (every one that touches pjsua2 is PJSIP's own or registered):

| thread | runs | touches pjsua2 |
|---|---|---|
| main (registered) | `libHandleEvents` loop: SIP callbacks, commands, watchdog, pjsua2 objects | yes |
| PJSIP media clock | `CallPort` frame callbacks: push rx bytes, pop playback frames | (is PJSIP's) |
| PJSIP media ioqueue | RTP receive, `onDtmfDigit` (posts to the inbox) | (is PJSIP's) |
| media | inbox consumer: VAD turns, barge-in, recording, PlaybackDone/CallEnded events | no |
| ipc-reader | supervisor frames: audio into playback queues, commands to the main thread | no |

Queues: `inbox` (clock/ioqueue/main -> media thread) and `commands` (ipc-reader/media -> main thread), both
`queue.SimpleQueue`, so no PJSIP thread ever waits on Python work. Their items are the small typed messages of
sipbridge/sip/messages.py.

`Worker` keeps the process's life (start, main loop, thread checks, shutdown); the parts it wires share one
`WorkerContext` (sipbridge/sip/worker_context.py) and each owns its own state: `SipEndpoint` (endpoint.py),
`CallControl` (call_control.py: account and call callbacks, watchdog), `MediaPorts` (media_ports.py),
`MediaThread` (media_thread.py) with `WorkerAmd` (worker_amd.py), and `WorkerIpc` (worker_ipc.py).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from sipbridge import frames as f
from sipbridge.logs import setup_logging
from sipbridge.sip.call_control import CallControl, rtp_quality
from sipbridge.sip.endpoint import SipEndpoint, StartupError, check_tls_files
from sipbridge.sip.ipc import SyncChannel
from sipbridge.sip.media_ports import MediaPorts
from sipbridge.sip.media_thread import MediaThread
from sipbridge.sip.messages import ShutdownWorker, StopMedia
from sipbridge.sip.pjguard import CallTerminator, PjGuard
from sipbridge.sip.settings import WorkerSettings
from sipbridge.sip.worker_amd import WorkerAmd
from sipbridge.sip.worker_context import WorkerContext
from sipbridge.sip.worker_ipc import WorkerIpc

__all__ = ["EXIT_THREAD_DIED", "StartupError", "Worker", "check_tls_files", "main", "rtp_quality"]

log = logging.getLogger("sipbridge.worker")

_WATCHDOG_PERIOD_S = 0.5
# A worker that lost a thread it cannot work without exits with this code (not 0: the supervisor sees a
# death, records the worker's calls failed and respawns it).
EXIT_THREAD_DIED = 70


@dataclass
class Worker:
    settings: WorkerSettings
    channel: SyncChannel
    pj_guard: PjGuard | None = None
    exit_code: int = 0
    ctx: WorkerContext = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = WorkerContext(self.settings, self.channel)
        self.endpoint = SipEndpoint(self.settings)
        self.media = MediaPorts(self.ctx)
        self.control = CallControl(self.ctx, self.media)
        self.media_thread = MediaThread(self.ctx, WorkerAmd(self.ctx))
        self.ipc = WorkerIpc(self.ctx, self.control)

    def start_endpoint(self) -> None:
        self.endpoint.start()
        # Every request meets the guard before PJSIP creates a transaction, dialog or media socket for it.
        self.pj_guard = PjGuard(self.control.guard, self.control.on_refused)
        self.control.terminator = CallTerminator(self.settings.max_calls)
        self.endpoint.use_codecs()
        self.control.open_account(self.endpoint.sip_udp_port)

    # -------------------------------------------------------------------------------- main loop

    def run(self) -> None:
        ep = self.endpoint.ep
        assert ep is not None
        ctx, endpoint = self.ctx, self.endpoint
        media = threading.Thread(target=self.media_thread.run, name="media", daemon=True)
        reader = threading.Thread(target=self.ipc.reader_loop, name="ipc-reader", daemon=True)
        media.start()
        reader.start()
        ctx.emit(
            f.WorkerReady(self.settings.index, os.getpid(), endpoint.sip_udp_port, endpoint.sip_tcp_port)
        )
        log.info(
            "worker %d ready pid=%d sip udp %s:%d%s%s",
            self.settings.index,
            os.getpid(),
            self.settings.sip_bind_address or self.settings.bind_address,
            endpoint.sip_udp_port,
            f" tcp {endpoint.sip_tcp_port}" if endpoint.sip_tcp_port else "",
            f" tls {endpoint.sip_tls_port}" if endpoint.sip_tls_port else "",
        )
        next_watchdog = time.monotonic()
        threads = (media, reader)
        while not ctx.stopping:
            ep.libHandleEvents(10)
            self.ipc.drain_commands()
            now = time.monotonic()
            if now >= next_watchdog:
                self._check_threads(threads)
                self.control.watchdog(now)
                self.control.report_refusals()
                self.control.guard.prune({s.sip_call_id for s in ctx.calls.values()}, now)
                next_watchdog = now + _WATCHDOG_PERIOD_S
        self._shutdown(media)

    def _check_threads(self, threads: tuple[threading.Thread, ...]) -> None:
        """The media thread sends every CallEnded and the reader carries every command: a worker that lost
        either one would go on answering calls it can never end (soak defect A: 576 calls of one worker left
        open in the supervisor after its media thread died). It ends itself instead, with `EXIT_THREAD_DIED`:
        its callers get a BYE, the supervisor records their calls failed and starts a new worker."""
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            self.ipc.drain_commands()  # a thread that saw the supervisor's link close said so before it ended
        if dead and not self.ctx.stopping:
            log.critical("worker %d: its %s thread died; ending the worker", self.settings.index, dead[0])
            self.ctx.stopping = True
            self.ctx.shutdown_reason = f"worker {self.settings.index}: {dead[0]} thread died"
            self.exit_code = EXIT_THREAD_DIED

    def _shutdown(self, media: threading.Thread) -> None:
        ep = self.endpoint.ep
        assert ep is not None
        ctx, control = self.ctx, self.control
        # Order verified in the recipes: hang up, let BYEs and callbacks run, drop every port and Call on
        # this (registered) thread, then the account, then libDestroy. Calls are marked first: they end
        # because we stop (the supervisor's reason, e.g. a drain timeout), not because their callers hung up.
        for slot in ctx.calls.values():
            if slot.hangup_by is None:
                slot.hangup_by, slot.hangup_reason = "shutdown", ctx.shutdown_reason
        ep.hangupAllCalls()
        deadline = time.monotonic() + 2.0
        while ctx.calls and time.monotonic() < deadline:
            ep.libHandleEvents(10)
            self.ipc.drain_commands()
        for slot_id, slot in list(ctx.calls.items()):
            if slot.dial is not None and not slot.started and slot.local_event is None:
                slot.local_event = "cancelled"  # our shutdown, not the callee's 503
            control.retire(slot_id, 503, "worker shutting down")
        control.report_refusals()  # those of the last watchdog period, which would otherwise never be stored
        ctx.inbox.put(StopMedia())
        media.join(timeout=5)
        ctx.calls.clear()
        self.media.ports.clear()  # before libDestroy: their destructors need the library
        if control.account is not None:
            control.account.shutdown()
            control.account = None
        self.endpoint.destroy()
        self.channel.close()


def main() -> int:
    settings = WorkerSettings.from_json(sys.stdin.read())
    setup_logging(settings.log_level, json_format=settings.log_json)
    # A crash inside PJSIP (SIGSEGV, SIGABRT ...) kills the worker with no Python traceback: print every
    # thread's Python stack to stderr (the supervisor's log) first, so the next person sees which of our
    # callbacks was running (docs/RELIABILITY.md, defect 2).
    faulthandler.enable(all_threads=True)
    channel = SyncChannel.connect(settings.ipc_path)
    worker = Worker(settings, channel)
    # A terminal's Ctrl+C or a service manager's SIGTERM may reach the worker directly: shut down in order
    # (hang up, BYE, libDestroy) instead of dying mid-call.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(
            sig, lambda signum, _frame: worker.ctx.commands.put(ShutdownWorker(signal.Signals(signum).name))
        )
    try:
        worker.start_endpoint()
    except StartupError as exc:
        log.error("worker %d: %s", settings.index, exc)
        return 1
    worker.run()
    return worker.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
