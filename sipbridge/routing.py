"""The supervisor's call routing (event loop): every frame a worker sends goes to the call's session, to the
dialer, or into the store (refusals, rejected INVITEs, RTP quality); a worker's death ends its calls.

`CallRouter` owns the call sessions' lifecycle (open on CallStarted, close on CallEnded or a lost worker) and
the rate limit on rejected-call rows; the sessions themselves live in `SupervisorContext.sessions`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from sipbridge import frames as f
from sipbridge.config import CALLS_PER_WORKER
from sipbridge.outcomes import refusal_outcome
from sipbridge.session import CallSession
from sipbridge.sip.pool import WorkerHandle
from sipbridge.store_writer import after
from sipbridge.supervisor_context import SupervisorContext

log = logging.getLogger("sipbridge.supervisor")

_REJECTED_ROWS_PER_MIN = 60
# More open calls than this many times a worker's slots: its CallEnded frames are lost (_check_call_count).
_LOST_ENDS_FACTOR = 3


@dataclass
class CallRouter:
    ctx: SupervisorContext
    _rejected_minute: int = -1  # CallRejected rows written this minute (rate limit)
    _rejected_rows: int = 0

    def on_worker_frame(self, worker: WorkerHandle, frame: f.Frame) -> None:
        """One frame's handling may fail (a store error, a bug): that frame is dropped, or that one call
        ended, and counted; the worker's link and its other calls go on."""
        try:
            self._route_frame(worker, frame)
        except Exception:
            kind = type(frame).__name__
            self.ctx.metrics.frame_errors.inc(frame=kind)
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
        session = self.ctx.sessions.get(call_id)
        if session is not None:
            session.failure = session.failure or reason

    def _on_refused(self, frame: f.RequestsRefused) -> None:
        ctx = self.ctx
        assert ctx.writer is not None
        for method, code, _reason, count in frame.counts:
            ctx.metrics.sip_refused.inc(count, method=method, code=str(code))
            if method == "INVITE" and code > 0:
                ctx.metrics.calls_rejected.inc(count, code=str(code))
        written = ctx.writer.add_refusals([tuple(c) for c in frame.counts])  # type: ignore[misc]
        # One line per worker report (at most two a second), however many requests it sums up; said once
        # committed: tests (and operators) may read the store when they see it.
        summary = ", ".join(f"{m} {c} x{n}" for m, c, _r, n in frame.counts)
        after(written, lambda: log.info("worker %d: sip refusals recorded: %s", frame.index, summary))

    def _on_rejected(self, worker: WorkerHandle, frame: f.CallRejected) -> None:
        """An INVITE PJSIP took and then refused (ACL backstop, 486, 488 ...): a call row, at most
        `_REJECTED_ROWS_PER_MIN` a minute; past that only the per-minute aggregate grows."""
        writer = self.ctx.writer
        assert writer is not None
        self.ctx.metrics.calls_rejected.inc(code=str(frame.code))
        minute = int(time.monotonic() // 60)
        if self._rejected_minute != minute:
            self._rejected_minute, self._rejected_rows = minute, 0
        if self._rejected_rows >= _REJECTED_ROWS_PER_MIN:
            writer.add_refusals([("INVITE", frame.code, frame.reason[:120], 1)])
            return
        self._rejected_rows += 1
        outcome = refusal_outcome(frame.code)
        call_id = uuid.uuid4().hex
        writer.create_call(
            "inbound",
            call_id=call_id,
            remote_uri=frame.remote_uri,
            remote_addr=frame.remote_addr,
            worker=worker.index,
        )
        written = writer.end_call(call_id, outcome, reason=frame.reason, sip_status=frame.code)
        # Logged once the row is committed: tests (and operators) may read the store once they see it.
        line = ("call %s recorded: %s (%d, %s)", call_id, outcome, frame.code, frame.reason)
        after(written, lambda: log.info(*line))

    def _route_frame(self, worker: WorkerHandle, frame: f.Frame) -> None:
        ctx = self.ctx
        assert ctx.writer is not None and ctx.engine and ctx.agent and ctx.asr
        if isinstance(frame, f.RtpQuality):
            self._record_rtp_quality(frame)
            return
        if ctx.dialer is not None and ctx.dialer.on_frame(frame):
            if isinstance(frame, f.DialEnded):
                worker.calls.discard(frame.call_id)
                ctx.front_load(worker)
            return
        if isinstance(frame, f.CallStarted):
            session = CallSession(
                frame,
                worker,
                ctx.config,
                ctx.writer,
                ctx.engine,
                ctx.agent,
                ctx.asr,
                metrics=ctx.metrics,
                end_of_turn=ctx.end_of_turn,
            )
            if ctx.dialer is not None:
                session.outbound = ctx.dialer.outbound(frame.call_id)
            ctx.sessions[frame.call_id] = session
            worker.calls.add(frame.call_id)
            ctx.front_load(worker)
            session.open()
            self._check_call_count(worker)
        elif isinstance(frame, f.CallEnded):
            worker.calls.discard(frame.call_id)
            ctx.front_load(worker)
            ended = ctx.sessions.pop(frame.call_id, None)
            if ended is not None:
                self.close_session(ended, frame, None)
        elif isinstance(frame, f.CallRejected):
            self._on_rejected(worker, frame)
        elif isinstance(frame, f.RequestsRefused):
            self._on_refused(frame)
        elif isinstance(frame, f.Registration):
            worker.registration = frame
        elif isinstance(frame, f.CallFrame):
            found = ctx.sessions.get(frame.call_id)
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
        ctx = self.ctx
        assert ctx.writer is not None
        ctx.writer.set_rtp_quality(
            q.call_id,
            packets=q.packets,
            lost=q.lost,
            late=q.late,
            jitter_ms=q.jitter_mean_ms,
            jitter_max_ms=q.jitter_max_ms,
        )
        expected = q.packets + q.lost
        if expected:
            ctx.metrics.rtp_loss.observe(q.lost / expected)
            ctx.metrics.rtp_jitter.observe(q.jitter_mean_ms / 1000)
        ctx.metrics.rtp_late.inc(q.late)

    def on_worker_lost(self, worker: WorkerHandle, call_ids: set[str], reason: str) -> None:
        ctx = self.ctx
        if ctx.front is not None:
            ctx.track_closing(ctx.front.worker_down(worker.index), name="front-worker-down")
        for call_id in call_ids:
            session = ctx.sessions.pop(call_id, None)
            if session is not None:
                self.close_session(session, None, reason)
            elif ctx.dialer is not None:
                ctx.dialer.lost(call_id, reason)  # still ringing when its worker died

    def close_session(self, session: CallSession, ended: f.CallEnded | None, lost: str | None) -> None:
        self.ctx.track_closing(session.close(ended, lost), name=f"close-{session.call_id[:8]}")
