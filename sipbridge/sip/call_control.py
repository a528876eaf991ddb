"""A worker's calls on the SIP side (main thread): the pjsua2 account and call callbacks, placing, answering,
refusing and ending calls, transfers and DTMF, and the watchdog (ring timeout, missing ACK, dead RTP).

`CallControl` owns the account, the request guard's policy (`RequestGuard`, `SourceFilter`) and the call
terminator; the call table it writes is the worker's (`WorkerContext.calls`). Every method runs on the main
thread, the only one that may create or drop pjsua2 objects.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import pjsua2 as pj

from sipbridge import frames as f
from sipbridge.sip.account import BridgeAccount, SourceFilter, account_config
from sipbridge.sip.call import BridgeCall, CallSlot
from sipbridge.sip.guard import RequestGuard, WireRequest
from sipbridge.sip.ipc import ChannelClosed
from sipbridge.sip.media_ports import MediaPorts
from sipbridge.sip.messages import MediaClose, ShutdownWorker
from sipbridge.sip.pjguard import CallTerminator
from sipbridge.sip.wire import wire_text
from sipbridge.sip.worker_context import WorkerContext

log = logging.getLogger("sipbridge.worker")

# A caller's ACK follows our 200 within a round trip; PJSIP retransmits the 200 at 0.5, 1, 2, 4 s. Past
# this the INVITE cannot become a call (spoofed source, an answer it cannot read): its slot is given back.
_ACK_TIMEOUT_S = 8.0
_PJ_ETOOMANY = 70010  # PJ_ERRNO_START_STATUS + 10: "Too many objects of the specified type"


@dataclass
class CallControl:
    ctx: WorkerContext
    media: MediaPorts
    account: BridgeAccount | None = None
    terminator: CallTerminator | None = None  # set once the library started (open_account)
    refusals_logged_at: float = 0.0
    sip_udp_port: int = 0  # our From/Contact port for calls we place

    def __post_init__(self) -> None:
        settings = self.ctx.settings
        self.sources = SourceFilter(settings.allowed_sources)
        family = 6 if ":" in settings.bind_address else 4
        self.guard = RequestGuard.from_cidrs(settings.allowed_sources, family)

    def open_account(self, sip_udp_port: int) -> None:
        self.sip_udp_port = sip_udp_port
        self.account = BridgeAccount(self)
        self.account.create(account_config(self.ctx.settings, sip_udp_port), True)

    # ------------------------------------------------------------------ PJSIP callbacks (main thread)

    def on_refused(self, req: WireRequest, ip: str, code: int, reason: str) -> None:
        """A request the guard answered itself: counted, reported in aggregate, logged once a second."""
        now = time.monotonic()
        if now - self.refusals_logged_at >= 1.0:
            self.refusals_logged_at = now
            log.warning(
                "refused %s from %s: %s (%s; further refusals this second are only counted)",
                wire_text(req.method, 32),
                ip,
                code if code > 0 else "dropped",
                reason,
            )

    def report_refusals(self) -> None:
        counts = self.guard.take_refused()
        if counts:
            self.ctx.emit(f.RequestsRefused(self.ctx.settings.index, counts))

    def on_incoming(self, account: BridgeAccount, prm: pj.OnIncomingCallParam) -> None:
        call = BridgeCall(self, account, prm.callId)
        slot_id = uuid.uuid4().hex
        call.slot_id = slot_id
        info = call.getInfo()
        # Strings from the wire are made safe here, before any frame, log line or store row holds them.
        slot = CallSlot(
            call_id=slot_id,
            pj_call=call,
            remote_uri=wire_text(info.remoteUri),
            local_uri=wire_text(info.localUri),
            remote_addr=wire_text(prm.rdata.srcAddress, 64),
            sip_call_id=wire_text(info.callIdString),
        )
        self.ctx.calls[slot_id] = slot  # keep a Python reference or SWIG frees the Call
        op = pj.CallOpParam()
        if not self.sources.allows(slot.remote_addr):
            slot.rejected = True
            op.statusCode = 403
            call.hangup(op)
            log.warning("rejected INVITE from %s (%s): source not allowed", slot.remote_addr, slot.remote_uri)
            self.ctx.emit(f.CallRejected(slot.remote_addr, slot.remote_uri, 403, "source not allowed"))
            return
        if self.ctx.draining:
            # Graceful drain: the caller's side (or the front) tries another host; Retry-After says when
            # this one may take calls again (an upgrade restarts it within a minute or so).
            slot.rejected = True
            op.statusCode = 503
            retry = pj.SipHeader()
            retry.hName = "Retry-After"
            retry.hValue = "60"
            op.txOption.headers.append(retry)
            call.hangup(op)
            log.info("rejected INVITE from %s (%s): draining", slot.remote_addr, slot.remote_uri)
            self.ctx.emit(f.CallRejected(slot.remote_addr, slot.remote_uri, 503, "draining"))
            return
        op.statusCode = 200
        slot.answered_at = time.monotonic()
        try:
            call.answer(op)
        except pj.Error as exc:  # the 200 cannot be built or sent: give the slot back now
            log.warning("call %s: answering failed (%s), refusing it", slot_id, exc.info().strip())
            self.hangup(slot_id, "local", 500, "answer failed")
            return
        log.info("call %s answered: %s from %s", slot_id, slot.remote_uri, slot.remote_addr)

    def dial(self, dial: f.Dial) -> None:
        """Place an outbound call (main thread). Failures to even send the INVITE end as transport_error."""
        assert self.account is not None
        call = BridgeCall(self, self.account)
        call.slot_id = dial.call_id
        slot = CallSlot(call_id=dial.call_id, pj_call=call, remote_uri=dial.target, dial=dial)
        slot.invited_at = time.monotonic()
        self.ctx.calls[dial.call_id] = slot
        op = pj.CallOpParam(True)
        # The caller ID goes in the From user part (what most trunks show) and in P-Asserted-Identity
        # (what trunks that authenticate us by IP read).
        host = self.ctx.settings.public_address or self.ctx.settings.bind_address
        op.txOption.localUri = f"sip:{dial.caller_id}@{host}:{self.sip_udp_port}"
        pai = pj.SipHeader()
        pai.hName = "P-Asserted-Identity"
        pai.hValue = f"<sip:{dial.caller_id}@{host}>"
        op.txOption.headers.append(pai)
        try:
            call.makeCall(dial.target, op)
        except pj.Error as exc:
            reason = exc.info().strip()
            log.warning("call %s: INVITE to %s failed: %s", dial.call_id, dial.target, reason)
            # PJ_ETOOMANY: all PJSUA call slots here are taken (e.g. an INVITE of ours not yet ACKed, a call
            # whose BYE went unanswered): nothing was sent, the dialer places the contact again.
            slot.local_event = "no_slot" if exc.status == _PJ_ETOOMANY else "transport_error"
            self.retire(dial.call_id, 500, reason)
            return
        info = call.getInfo()
        slot.local_uri = wire_text(info.localUri)
        slot.sip_call_id = wire_text(info.callIdString)
        self.guard.expect(info.callIdString)  # its in-dialog requests must come from whoever answers
        log.info("call %s: dialing %s (ring timeout %.0f s)", dial.call_id, dial.target, dial.ring_timeout_s)

    def on_progress(self, slot_id: str, code: int, reason: str) -> None:
        reason = wire_text(reason)
        slot = self.ctx.calls.get(slot_id)
        if slot is None or slot.dial is None or code in slot.progress or code not in (180, 183):
            return
        slot.progress.add(code)
        t_ms = int((time.monotonic() - slot.invited_at) * 1000)
        if slot.ringing_ms is None:
            slot.ringing_ms = t_ms
        self.ctx.emit(f.CallProgress(slot_id, code, reason, t_ms))

    def cancel(self, slot_id: str, event: str, reason: str) -> None:
        """End a call we placed: CANCEL before the answer (recorded as `event`), BYE after it."""
        slot = self.ctx.calls.get(slot_id)
        if slot is None:
            return
        if not slot.started and slot.local_event is None:
            slot.local_event = event
        self.hangup(slot_id, "local", 487 if not slot.started else 200, reason)

    def on_media_state(self, slot_id: str) -> None:
        self.media.on_media_state(slot_id)

    def on_transfer_status(self, slot_id: str, code: int, reason: str, final: bool) -> None:
        reason = wire_text(reason)
        log.info("call %s: transfer status %d %s%s", slot_id, code, reason, " (final)" if final else "")
        self.ctx.emit(f.TransferStatus(slot_id, code, reason, final))

    def on_stream_destroyed(self, slot_id: str, index: int) -> None:
        """The last moment PJSIP's stream statistics exist: keep them for the call's RtpQuality."""
        slot = self.ctx.calls.get(slot_id)
        if slot is None or index != slot.media_index:
            return
        try:
            stat = slot.pj_call.getStreamStat(index)
            slot.rtp = rtp_quality(stat)
            # The receive jitter buffer's delay: it grows over media-clock stalls (a starved CPU) and adds to
            # every caller frame's way to VAD and barge-in until it shrinks again.
            jb = stat.jbuf
            log.info(
                "call %s jitter buffer: delay avg %d ms, max %d ms", slot_id, jb.avgDelayMsec, jb.maxDelayMsec
            )
        except pj.Error:
            pass  # the watchdog's last snapshot (at most 0.5 s old) stands

    def on_disconnected(self, slot_id: str, code: int, reason: str) -> None:
        # Retired now, inside onCallState(DISCONNECTED) (pjsua2 allows deleting the Call there): once the
        # callback returns pjsua may give the call's index to the next INVITE, and a stale Call object of
        # that index would, when dropped, unhook the new call and hang it up (pjsua2's ~Call).
        try:
            self.retire(slot_id, code, wire_text(reason))
        except ChannelClosed:  # inside a PJSIP callback: never let it unwind into C
            self.ctx.commands.put(ShutdownWorker("supervisor channel closed"))
        except Exception:
            log.exception("call %s: retiring it failed", slot_id)

    def on_reg_state(self, prm: pj.OnRegStateParam) -> None:
        assert self.account is not None
        active = bool(self.account.getInfo().regIsActive)
        level = logging.INFO if active else logging.WARNING
        reason = wire_text(prm.reason)
        log.log(level, "trunk registration: %s %s (expires %ss)", prm.code, reason, prm.expiration)
        self.ctx.emit(f.Registration(self.ctx.settings.index, active, int(prm.code), reason, prm.expiration))

    # ------------------------------------------------------------------------ call ops (main thread)

    def hangup(self, slot_id: str, by: str, code: int = 200, reason: str = "") -> None:
        slot = self.ctx.calls.get(slot_id)
        if slot is None or slot.hangup_by is not None:
            return
        slot.hangup_by = by
        slot.hangup_reason = reason
        # Before the caller's ACK, PJSIP 2.15 holds the BYE back itself (pjsip_inv_session.pending_bye) and
        # sends it when the ACK comes: test_hangup_before_the_callers_ack_waits_for_it.
        op = pj.CallOpParam()
        op.statusCode = code
        try:
            slot.pj_call.hangup(op)
        except pj.Error as exc:
            log.warning("call %s: hangup failed: %s", slot_id, exc.info().strip())

    def call_op(self, kind: str, slot_id: str, arg: str) -> None:
        """REFER or DTMF for an agent action; a failure is reported, never fatal to the worker."""
        slot = self.ctx.calls.get(slot_id)
        if slot is None or slot.hangup_by is not None:
            return
        try:
            if kind == "transfer":
                log.info("call %s: REFER to %s", slot_id, arg)
                slot.pj_call.xfer(arg, pj.CallOpParam(True))
            else:
                log.info("call %s: sending DTMF %s", slot_id, arg)
                slot.pj_call.dialDtmf(arg)
        except pj.Error as exc:
            reason = exc.info().strip()
            log.warning("call %s: %s failed: %s", slot_id, kind, reason)
            if kind == "transfer":
                self.ctx.emit(f.TransferStatus(slot_id, 500, reason, True))

    def retire(self, slot_id: str, code: int, reason: str) -> None:
        ctx = self.ctx
        slot = ctx.calls.pop(slot_id, None)
        if slot is None:
            return
        self.guard.forget(slot.sip_call_id)
        # Dropping the Call here (main thread, registered) runs its C++ destructor safely. Never the port:
        # it is unbound (its callbacks stop touching this call at once) and kept for a later call, because
        # a destroyed port can still be called by the conference's clock thread (see CallPort).
        self.media.release(slot)
        slot.pj_call = None  # type: ignore[assignment]
        if slot.dial is not None and not slot.started:
            duration_ms = int((time.monotonic() - slot.invited_at) * 1000)
            log.info("call %s: not answered: %d %s (%s)", slot_id, code, reason, slot.local_event or "remote")
            ctx.emit(f.DialEnded(slot_id, code, reason, slot.local_event, slot.ringing_ms, duration_ms))
            return
        if slot.rejected or not slot.started:
            if not slot.rejected:
                ctx.emit(f.CallRejected(slot.remote_addr, slot.remote_uri, code, reason))
            return
        by = slot.hangup_by or "remote"
        if slot.rtp is not None:  # before CallEnded (which the media thread sends) so it is stored with it
            ctx.emit(f.RtpQuality(slot_id, *slot.rtp))
        ctx.inbox.put(MediaClose(slot_id, code, slot.hangup_reason or reason, by))
        # The media thread sends CallEnded once it reaches this close: the inbox depth says how far behind
        # it is (soak defect 4: one worker's CallEnded frames stopped reaching the supervisor under load).
        log.info("call %s ended by %s: %d %s (media inbox %d)", slot_id, by, code, reason, ctx.inbox.qsize())

    # ------------------------------------------------------------------------------ watchdog

    def watchdog(self, now: float) -> None:
        settings = self.ctx.settings
        for slot in list(self.ctx.calls.values()):
            if slot.answered_at and not slot.confirmed and slot.hangup_by is None:
                self._check_ack(slot, now)
                continue
            if slot.dial is not None and not slot.started and slot.hangup_by is None:
                if now - slot.invited_at > slot.dial.ring_timeout_s:
                    waited = now - slot.invited_at
                    log.info("call %s: no answer after %.0f s, cancelling", slot.call_id, waited)
                    self.cancel(slot.call_id, "ring_timeout", "ring timeout")
                continue
            if slot.port is None or slot.hangup_by is not None:
                continue
            try:
                slot.rtp = rtp_quality(slot.pj_call.getStreamStat(slot.media_index))
            except pj.Error:
                continue
            packets = slot.rtp[0]
            if packets and slot.rtp_peer is None and settings.rtp_source == "latch":
                self.media.latch_rtp(slot)
            if packets != slot.rx_packets:
                slot.rx_packets = packets
                slot.rx_changed_at = now
            elif now - slot.rx_changed_at > settings.dead_media_timeout_s:
                log.warning("call %s: no RTP for %.1f s, hanging up", slot.call_id, now - slot.rx_changed_at)
                self.hangup(slot.call_id, "watchdog", 200, "no media")

    def _check_ack(self, slot: CallSlot, now: float) -> None:
        try:
            info = slot.pj_call.getInfo()
        except pj.Error:
            return
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            slot.confirmed = True
        elif now - slot.answered_at > _ACK_TIMEOUT_S:
            log.warning("call %s: no ACK for our 200 after %.0f s, ending it", slot.call_id, _ACK_TIMEOUT_S)
            slot.hangup_by, slot.hangup_reason = "no_ack", "no ACK for our 200"
            terminator = self.terminator
            if terminator is None or not terminator.terminate(slot.pj_call.getId(), 408):
                slot.hangup_by = None
                self.hangup(slot.call_id, "local", 408, "no ACK")


def rtp_quality(stat: pj.StreamStat) -> tuple[int, int, int, float, float]:
    """RtpQuality's fields from PJSIP's stream statistics: received, lost, late (discarded), jitter ms."""
    rx = stat.rtcp.rxStat
    return (
        int(rx.pkt),
        int(rx.loss),
        int(rx.discard),
        round(rx.jitterUsec.mean / 1000, 3),
        round(rx.jitterUsec.max / 1000, 3),
    )
