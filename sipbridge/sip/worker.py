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
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import signal
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pjsua2 as pj

from audio.amd import AmdSettings, AnsweringMachineDetector, BeepWaiter, Decision, GreetingFeed
from audio.beep import BeepSettings
from audio.vad import VadSettings, make_segmenter
from audio.vad.backends import make_classifier
from sipbridge import frames as f
from sipbridge.logs import setup_logging
from sipbridge.media.inbound import EchoGate, Inbound
from sipbridge.media.playback import PlaybackQueue
from sipbridge.media.recorder import StereoRecorder
from sipbridge.sip.account import BridgeAccount, SourceFilter, account_config
from sipbridge.sip.call import BridgeCall, CallPort, CallSlot, PortBinding, PortPool
from sipbridge.sip.guard import RequestGuard, WireRequest
from sipbridge.sip.ipc import ChannelClosed, SyncChannel
from sipbridge.sip.messages import (
    AmdWords,
    BotAudio,
    CallerAudio,
    CallProgressed,
    CancelCall,
    Command,
    DrainWorker,
    DtmfReceived,
    HangupCall,
    InboxItem,
    MediaClose,
    MediaOpen,
    PlaceCall,
    SendDigits,
    ShutdownWorker,
    StopMedia,
    TransferCall,
)
from sipbridge.sip.pjguard import CallTerminator, PjGuard
from sipbridge.sip.rtpsource import restrict
from sipbridge.sip.settings import WorkerSettings
from sipbridge.sip.wire import wire_text

log = logging.getLogger("sipbridge.worker")

_CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}
_WATCHDOG_PERIOD_S = 0.5
_PORT_REST_S = 2.0  # how long an ended call's media port rests before it serves another call (PortPool)
# A caller's ACK follows our 200 within a round trip; PJSIP retransmits the 200 at 0.5, 1, 2, 4 s. Past
# this the INVITE cannot become a call (spoofed source, an answer it cannot read): its slot is given back.
_ACK_TIMEOUT_S = 8.0
_PJ_ETOOMANY = 70010  # PJ_ERRNO_START_STATUS + 10: "Too many objects of the specified type"
# A worker that lost a thread it cannot work without exits with this code (not 0: the supervisor sees a
# death, records the worker's calls failed and respawns it).
EXIT_THREAD_DIED = 70


class _PjLogWriter(pj.LogWriter):
    def write(self, entry: pj.LogEntry) -> None:
        # PJSIP quotes whole packets in some warnings (parse errors): one escaped line, never forged ones.
        log.warning("pjsip: %s", wire_text(entry.msg.strip(), 4096))


class StartupError(Exception):
    """The worker could not bind its ports or start PJSIP."""


@dataclass
class Worker:
    settings: WorkerSettings
    channel: SyncChannel
    inbox: queue.SimpleQueue[InboxItem] = field(default_factory=queue.SimpleQueue)
    commands: queue.SimpleQueue[Command] = field(default_factory=queue.SimpleQueue)
    calls: dict[str, CallSlot] = field(default_factory=dict)  # main thread writes; readers look up
    inbound: dict[str, Inbound] = field(default_factory=dict)  # media thread only
    # Outbound calls under answering-machine detection, then waiting for the beep (media thread only).
    amd: dict[str, AnsweringMachineDetector | BeepWaiter] = field(default_factory=dict)
    greetings: dict[str, GreetingFeed] = field(default_factory=dict)  # AMD audio for the ASR (amd.asr)
    stopping: bool = False
    draining: bool = False  # Drain from the supervisor: new INVITEs get 503, active calls go on
    sip_udp_port: int = 0
    sip_tcp_port: int | None = None
    sip_tls_port: int | None = None
    ep: pj.Endpoint | None = None
    account: BridgeAccount | None = None
    pj_guard: PjGuard | None = None
    refusals_logged_at: float = 0.0
    shutdown_reason: str = "worker shutting down"
    exit_code: int = 0

    def __post_init__(self) -> None:
        self.sources = SourceFilter(self.settings.allowed_sources)
        family = 6 if ":" in self.settings.bind_address else 4
        self.guard = RequestGuard.from_cidrs(self.settings.allowed_sources, family)
        self.frame_bytes = self.settings.clock_rate * 20 // 1000 * 2
        # Media ports are reused across calls, never destroyed while the worker runs (see CallPort).
        self.ports = PortPool(self._new_port, _PORT_REST_S)

    # ------------------------------------------------------------------------------------ set-up

    def start_endpoint(self) -> None:
        s = self.settings
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.maxCalls = s.max_calls
        cfg.uaConfig.userAgent = s.user_agent
        # SIP callbacks on our main thread (polled), so creating/dropping pjsua2 objects happens there.
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        # PJSIP's own log: errors and warnings only, through Python logging (the writer is kept alive on
        # self: PJSIP holds a raw pointer to it).
        self._log_writer = _PjLogWriter()
        cfg.logConfig.writer = self._log_writer
        cfg.logConfig.level = 2
        cfg.logConfig.consoleLevel = 2
        cfg.logConfig.msgLogging = 0
        cfg.medConfig.noVad = True  # send every frame: the caller hears real silence, RTP stays at 50/s
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.clockRate = s.clock_rate
        cfg.medConfig.sndClockRate = s.clock_rate
        cfg.medConfig.ptime = s.ptime_ms
        # The receive jitter buffer's prefetch delays every caller frame before VAD and barge-in hear it
        # (PJSIP's default minimum is 60 ms); config.MediaConfig documents the trade-off.
        cfg.medConfig.jbInit = s.jitter_buffer_ms
        cfg.medConfig.jbMinPre = s.jitter_buffer_min_ms
        cfg.medConfig.jbMaxPre = s.jitter_buffer_max_prefetch_ms
        cfg.medConfig.jbMax = s.jitter_buffer_max_ms
        ep.libInit(cfg)
        self.ep = ep
        try:
            tcfg = pj.TransportConfig()
            tcfg.port = s.sip_port
            # Behind the SIP front, SIP binds a private address and is reached only by the front.
            tcfg.boundAddress = s.sip_bind_address or s.bind_address
            tcfg.publicAddress = "" if s.front_uri else s.public_address
            udp = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
            self.sip_udp_port = int(ep.transportGetInfo(udp).localName.rsplit(":", 1)[1])
            if "tcp" in s.transports:
                tcfg.port = self.sip_udp_port
                tcp = ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcfg)
                self.sip_tcp_port = int(ep.transportGetInfo(tcp).localName.rsplit(":", 1)[1])
        except pj.Error as exc:
            raise StartupError(
                f"cannot bind SIP {tcfg.boundAddress}:{s.sip_port} ({exc.info().strip()})"
            ) from None
        if "tls" in s.transports:
            check_tls_files(s.tls)
            try:
                self.sip_tls_port = self._start_tls(ep)
            except pj.Error as exc:
                tls = s.tls
                raise StartupError(
                    f"cannot start SIP TLS on {s.bind_address}:{tls['port']} with sip.tls.cert_file"
                    f" {tls['cert_file']}, sip.tls.key_file {tls['key_file']}"
                    + (f", sip.tls.ca_file {tls['ca_file']}" if tls.get("ca_file") else "")
                    + f" ({exc.info().strip()})"
                ) from None
        ep.libStart()
        # Every request meets the guard before PJSIP creates a transaction, dialog or media socket for it.
        self.pj_guard = PjGuard(self.guard, self._on_refused)
        self.terminator = CallTerminator(s.max_calls)
        ep.audDevManager().setNullDev()  # no sound card: a null port clocks the conference bridge
        wanted = {_CODEC_IDS[c]: 255 - i for i, c in enumerate(s.codecs)}
        for codec in ep.codecEnum2():
            name = "/".join(codec.codecId.split("/")[:2])
            ep.codecSetPriority(codec.codecId, wanted.get(name, 0))
        self.account = BridgeAccount(self)
        self.account.create(account_config(s, self.sip_udp_port), True)

    def _start_tls(self, ep: pj.Endpoint) -> int:
        """SIP over TLS (sip.tls): our certificate, TLS 1.2 or newer, and the trunk's client certificate
        checked against the CA list when `verify_client` is on (mTLS)."""
        s = self.settings
        tls = s.tls
        tcfg = pj.TransportConfig()
        tcfg.port = int(tls["port"])
        tcfg.boundAddress = s.bind_address
        tcfg.publicAddress = s.public_address
        tc = tcfg.tlsConfig
        tc.certFile = tls["cert_file"]
        tc.privKeyFile = tls["key_file"]
        tc.CaListFile = tls.get("ca_file") or ""
        tc.method = pj.PJSIP_TLSV1_2_METHOD
        tc.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3
        tc.verifyClient = bool(tls["verify_client"])
        tc.requireClientCert = bool(tls["verify_client"])
        tc.verifyServer = bool(tls["verify_server"])
        transport = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
        return int(ep.transportGetInfo(transport).localName.rsplit(":", 1)[1])

    # ------------------------------------------------------------------ PJSIP callbacks (main thread)

    def _on_refused(self, req: WireRequest, ip: str, code: int, reason: str) -> None:
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

    def _report_refusals(self) -> None:
        counts = self.guard.take_refused()
        if counts:
            self.emit(f.RequestsRefused(self.settings.index, counts))

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
        self.calls[slot_id] = slot  # keep a Python reference or SWIG frees the Call
        op = pj.CallOpParam()
        if not self.sources.allows(slot.remote_addr):
            slot.rejected = True
            op.statusCode = 403
            call.hangup(op)
            log.warning("rejected INVITE from %s (%s): source not allowed", slot.remote_addr, slot.remote_uri)
            self.emit(f.CallRejected(slot.remote_addr, slot.remote_uri, 403, "source not allowed"))
            return
        if self.draining:
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
            self.emit(f.CallRejected(slot.remote_addr, slot.remote_uri, 503, "draining"))
            return
        op.statusCode = 200
        slot.answered_at = time.monotonic()
        try:
            call.answer(op)
        except pj.Error as exc:  # the 200 cannot be built or sent: give the slot back now
            log.warning("call %s: answering failed (%s), refusing it", slot_id, exc.info().strip())
            self._hangup(slot_id, "local", 500, "answer failed")
            return
        log.info("call %s answered: %s from %s", slot_id, slot.remote_uri, slot.remote_addr)

    def dial(self, dial: f.Dial) -> None:
        """Place an outbound call (main thread). Failures to even send the INVITE end as transport_error."""
        assert self.account is not None
        call = BridgeCall(self, self.account)
        call.slot_id = dial.call_id
        slot = CallSlot(call_id=dial.call_id, pj_call=call, remote_uri=dial.target, dial=dial)
        slot.invited_at = time.monotonic()
        self.calls[dial.call_id] = slot
        op = pj.CallOpParam(True)
        # The caller ID goes in the From user part (what most trunks show) and in P-Asserted-Identity
        # (what trunks that authenticate us by IP read).
        host = self.settings.public_address or self.settings.bind_address
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
            self._retire(dial.call_id, 500, reason)
            return
        info = call.getInfo()
        slot.local_uri = wire_text(info.localUri)
        slot.sip_call_id = wire_text(info.callIdString)
        self.guard.expect(info.callIdString)  # its in-dialog requests must come from whoever answers
        log.info("call %s: dialing %s (ring timeout %.0f s)", dial.call_id, dial.target, dial.ring_timeout_s)

    def _on_progress(self, slot_id: str, code: int, reason: str) -> None:
        reason = wire_text(reason)
        slot = self.calls.get(slot_id)
        if slot is None or slot.dial is None or code in slot.progress or code not in (180, 183):
            return
        slot.progress.add(code)
        t_ms = int((time.monotonic() - slot.invited_at) * 1000)
        if slot.ringing_ms is None:
            slot.ringing_ms = t_ms
        self.emit(f.CallProgress(slot_id, code, reason, t_ms))

    def _cancel(self, slot_id: str, event: str, reason: str) -> None:
        """End a call we placed: CANCEL before the answer (recorded as `event`), BYE after it."""
        slot = self.calls.get(slot_id)
        if slot is None:
            return
        if not slot.started and slot.local_event is None:
            slot.local_event = event
        self._hangup(slot_id, "local", 487 if not slot.started else 200, reason)

    def on_media_state(self, slot_id: str) -> None:
        slot = self.calls.get(slot_id)
        if slot is None:
            return
        if slot.port is not None:
            # A re-INVITE (only the dialog's peer gets one past the guard) may move the peer's media.
            if self.settings.rtp_source == "sdp":
                self._filter_rtp(slot)
            return
        info = slot.pj_call.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self._connect_media(slot, media.index)
                return

    def _connect_media(self, slot: CallSlot, index: int) -> None:
        call_media = slot.pj_call.getAudioMedia(index)
        codec = slot.pj_call.getStreamInfo(index).codecName
        slot.media_index = index
        slot.playback = PlaybackQueue(self.frame_bytes, -(-self.settings.playback_margin_ms // 20))
        # The bot's frames go to the media thread (in clock order with the caller's) for the recording and
        # for the echo gate's reference of what may come back.
        record = self.settings.recordings_dir is not None or self.settings.echo_return_db is not None
        # Announce the call before any media event of it can be emitted (the media thread sees "open"
        # only after this send), so the supervisor always learns of a call first.
        self.emit(
            f.CallStarted(
                slot.call_id, slot.remote_uri, slot.local_uri, slot.remote_addr, codec, slot.sip_call_id
            )
        )
        slot.started = True
        self.inbox.put(MediaOpen(slot.call_id, slot.playback))
        port = self.ports.take(time.monotonic())
        port.binding = PortBinding(slot.call_id, slot.playback, record)
        call_media.startTransmit(port)
        port.startTransmit(call_media)
        slot.port = port
        slot.rx_changed_at = time.monotonic()
        if self.settings.rtp_source == "sdp":
            self._filter_rtp(slot)
        log.info("call %s media up: %s", slot.call_id, codec)

    def _filter_rtp(self, slot: CallSlot, source: str | None = None) -> None:
        """Make the call's RTP (and RTCP) socket accept datagrams from its peer only: the SDP's address, or
        `source`, where the first packet came from (media.rtp_source; sipbridge/sip/rtpsource.py)."""
        try:
            tp = slot.pj_call.getMedTransportInfo(slot.media_index)
            if source is None:
                stream = slot.pj_call.getStreamInfo(slot.media_index)
                peer, peer_rtcp = stream.remoteRtpAddress, stream.remoteRtcpAddress
            else:
                peer, peer_rtcp = source, tp.srcRtcpName
        except pj.Error:
            return
        if peer == slot.rtp_peer:
            return
        slot.rtp_peer = peer  # tried once per address, applied or not
        if not restrict(tp.localRtpName, peer):
            log.warning(
                "call %s: RTP from anyone: no filter for %s <- %s", slot.call_id, tp.localRtpName, peer
            )
            return
        if peer_rtcp and tp.localRtcpName and tp.localRtcpName != tp.localRtpName:
            restrict(tp.localRtcpName, peer_rtcp)
        log.info("call %s: RTP accepted from %s only (%s)", slot.call_id, peer, self.settings.rtp_source)

    def _new_port(self, number: int) -> CallPort:
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.clockRate = self.settings.clock_rate
        fmt.channelCount = 1
        fmt.bitsPerSample = 16
        fmt.frameTimeUsec = 20000
        port = CallPort(self.inbox, self.frame_bytes)
        port.createPort(f"call-port-{number}", fmt)
        return port

    def on_transfer_status(self, slot_id: str, code: int, reason: str, final: bool) -> None:
        reason = wire_text(reason)
        log.info("call %s: transfer status %d %s%s", slot_id, code, reason, " (final)" if final else "")
        self.emit(f.TransferStatus(slot_id, code, reason, final))

    def on_stream_destroyed(self, slot_id: str, index: int) -> None:
        """The last moment PJSIP's stream statistics exist: keep them for the call's RtpQuality."""
        slot = self.calls.get(slot_id)
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
            self._retire(slot_id, code, wire_text(reason))
        except ChannelClosed:  # inside a PJSIP callback: never let it unwind into C
            self.commands.put(ShutdownWorker("supervisor channel closed"))
        except Exception:
            log.exception("call %s: retiring it failed", slot_id)

    def on_reg_state(self, prm: pj.OnRegStateParam) -> None:
        assert self.account is not None
        active = bool(self.account.getInfo().regIsActive)
        level = logging.INFO if active else logging.WARNING
        reason = wire_text(prm.reason)
        log.log(level, "trunk registration: %s %s (expires %ss)", prm.code, reason, prm.expiration)
        self.emit(f.Registration(self.settings.index, active, int(prm.code), reason, prm.expiration))

    # -------------------------------------------------------------------------------- main loop

    def run(self) -> None:
        assert self.ep is not None
        media = threading.Thread(target=self._media_loop, name="media", daemon=True)
        reader = threading.Thread(target=self._reader_loop, name="ipc-reader", daemon=True)
        media.start()
        reader.start()
        self.emit(f.WorkerReady(self.settings.index, os.getpid(), self.sip_udp_port, self.sip_tcp_port))
        log.info(
            "worker %d ready pid=%d sip udp %s:%d%s%s",
            self.settings.index,
            os.getpid(),
            self.settings.sip_bind_address or self.settings.bind_address,
            self.sip_udp_port,
            f" tcp {self.sip_tcp_port}" if self.sip_tcp_port else "",
            f" tls {self.sip_tls_port}" if self.sip_tls_port else "",
        )
        next_watchdog = time.monotonic()
        threads = (media, reader)
        while not self.stopping:
            self.ep.libHandleEvents(10)
            self._drain_commands()
            now = time.monotonic()
            if now >= next_watchdog:
                self._check_threads(threads)
                self._watchdog(now)
                self._report_refusals()
                self.guard.prune({s.sip_call_id for s in self.calls.values()}, now)
                next_watchdog = now + _WATCHDOG_PERIOD_S
        self._shutdown(media)

    def _check_threads(self, threads: tuple[threading.Thread, ...]) -> None:
        """The media thread sends every CallEnded and the reader carries every command: a worker that lost
        either one would go on answering calls it can never end (soak defect A: 576 calls of one worker left
        open in the supervisor after its media thread died). It ends itself instead, with `EXIT_THREAD_DIED`:
        its callers get a BYE, the supervisor records their calls failed and starts a new worker."""
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            self._drain_commands()  # a thread that saw the supervisor's link close said so before it ended
        if dead and not self.stopping:
            log.critical("worker %d: its %s thread died; ending the worker", self.settings.index, dead[0])
            self.stopping = True
            self.shutdown_reason = f"worker {self.settings.index}: {dead[0]} thread died"
            self.exit_code = EXIT_THREAD_DIED

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            self._command(command)

    def _command(self, command: Command) -> None:
        match command:
            case HangupCall(call_id, code, reason):
                self._hangup(call_id, "local", code, reason)
            case PlaceCall(dial):
                self.dial(dial)
            case CallProgressed(call_id, code, reason):
                self._on_progress(call_id, code, reason)
            case CancelCall(call_id, reason):
                slot = self.calls.get(call_id)
                if slot is not None and not slot.started:  # answered calls run to their end
                    self._cancel(call_id, "cancelled", reason)
            case TransferCall(call_id, target):
                self._call_op("transfer", call_id, target)
            case SendDigits(call_id, digits):
                self._call_op("send-dtmf", call_id, digits)
            case ShutdownWorker(reason):
                log.info("worker %d shutting down: %s", self.settings.index, reason)
                self.stopping = True
                self.shutdown_reason = reason
            case DrainWorker(reason):
                log.info("worker %d draining: %s; new INVITEs get 503", self.settings.index, reason)
                self.draining = True

    def _hangup(self, slot_id: str, by: str, code: int = 200, reason: str = "") -> None:
        slot = self.calls.get(slot_id)
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

    def _call_op(self, kind: str, slot_id: str, arg: str) -> None:
        """REFER or DTMF for an agent action; a failure is reported, never fatal to the worker."""
        slot = self.calls.get(slot_id)
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
                self.emit(f.TransferStatus(slot_id, 500, reason, True))

    def _retire(self, slot_id: str, code: int, reason: str) -> None:
        slot = self.calls.pop(slot_id, None)
        if slot is None:
            return
        self.guard.forget(slot.sip_call_id)
        # Dropping the Call here (main thread, registered) runs its C++ destructor safely. Never the port:
        # it is unbound (its callbacks stop touching this call at once) and kept for a later call, because
        # a destroyed port can still be called by the conference's clock thread (see CallPort).
        if slot.port is not None:
            self.ports.give_back(slot.port, time.monotonic())
        slot.port = None
        slot.pj_call = None  # type: ignore[assignment]
        if slot.dial is not None and not slot.started:
            duration_ms = int((time.monotonic() - slot.invited_at) * 1000)
            log.info("call %s: not answered: %d %s (%s)", slot_id, code, reason, slot.local_event or "remote")
            self.emit(f.DialEnded(slot_id, code, reason, slot.local_event, slot.ringing_ms, duration_ms))
            return
        if slot.rejected or not slot.started:
            if not slot.rejected:
                self.emit(f.CallRejected(slot.remote_addr, slot.remote_uri, code, reason))
            return
        by = slot.hangup_by or "remote"
        if slot.rtp is not None:  # before CallEnded (which the media thread sends) so it is stored with it
            self.emit(f.RtpQuality(slot_id, *slot.rtp))
        self.inbox.put(MediaClose(slot_id, code, slot.hangup_reason or reason, by))
        # The media thread sends CallEnded once it reaches this close: the inbox depth says how far behind
        # it is (soak defect 4: one worker's CallEnded frames stopped reaching the supervisor under load).
        log.info("call %s ended by %s: %d %s (media inbox %d)", slot_id, by, code, reason, self.inbox.qsize())

    def _watchdog(self, now: float) -> None:
        for slot in list(self.calls.values()):
            if slot.answered_at and not slot.confirmed and slot.hangup_by is None:
                self._check_ack(slot, now)
                continue
            if slot.dial is not None and not slot.started and slot.hangup_by is None:
                if now - slot.invited_at > slot.dial.ring_timeout_s:
                    waited = now - slot.invited_at
                    log.info("call %s: no answer after %.0f s, cancelling", slot.call_id, waited)
                    self._cancel(slot.call_id, "ring_timeout", "ring timeout")
                continue
            if slot.port is None or slot.hangup_by is not None:
                continue
            try:
                slot.rtp = rtp_quality(slot.pj_call.getStreamStat(slot.media_index))
            except pj.Error:
                continue
            packets = slot.rtp[0]
            if packets and slot.rtp_peer is None and self.settings.rtp_source == "latch":
                self._latch_rtp(slot)
            if packets != slot.rx_packets:
                slot.rx_packets = packets
                slot.rx_changed_at = now
            elif now - slot.rx_changed_at > self.settings.dead_media_timeout_s:
                log.warning("call %s: no RTP for %.1f s, hanging up", slot.call_id, now - slot.rx_changed_at)
                self._hangup(slot.call_id, "watchdog", 200, "no media")

    def _latch_rtp(self, slot: CallSlot) -> None:
        try:
            source = slot.pj_call.getMedTransportInfo(slot.media_index).srcRtpName
        except pj.Error:
            return
        if source:
            self._filter_rtp(slot, source)

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
            if not self.terminator.terminate(slot.pj_call.getId(), 408):
                slot.hangup_by = None
                self._hangup(slot.call_id, "local", 408, "no ACK")

    def _shutdown(self, media: threading.Thread) -> None:
        assert self.ep is not None
        # Order verified in the recipes: hang up, let BYEs and callbacks run, drop every port and Call on
        # this (registered) thread, then the account, then libDestroy. Calls are marked first: they end
        # because we stop (the supervisor's reason, e.g. a drain timeout), not because their callers hung up.
        for slot in self.calls.values():
            if slot.hangup_by is None:
                slot.hangup_by, slot.hangup_reason = "shutdown", self.shutdown_reason
        self.ep.hangupAllCalls()
        deadline = time.monotonic() + 2.0
        while self.calls and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
            self._drain_commands()
        for slot_id, slot in list(self.calls.items()):
            if slot.dial is not None and not slot.started and slot.local_event is None:
                slot.local_event = "cancelled"  # our shutdown, not the callee's 503
            self._retire(slot_id, 503, "worker shutting down")
        self._report_refusals()  # those of the last watchdog period, which would otherwise never be stored
        self.inbox.put(StopMedia())
        media.join(timeout=5)
        self.calls.clear()
        self.ports.clear()  # before libDestroy: their destructors need the library
        if self.account is not None:
            self.account.shutdown()
            self.account = None
        self.ep.libDestroy()
        self.ep = None
        self.channel.close()

    # ------------------------------------------------------------------------------ media thread

    def _media_loop(self) -> None:
        _warm_vad(self.settings.clock_rate)
        while True:
            item: InboxItem | None = None
            try:
                item = self.inbox.get()
                if isinstance(item, StopMedia):
                    return
                self._media_item(item)
            except ChannelClosed:
                self.commands.put(ShutdownWorker("supervisor channel closed"))
                return
            except Exception:
                # A bug in one call's media must not take the other calls down: end that call. Anything
                # else (a BaseException) ends this thread, and the main loop then ends the worker
                # (`_check_threads`): without it no call here would ever send its CallEnded.
                call_id = getattr(item, "call_id", "")
                log.exception("call %s: media error, hanging up", call_id)
                self.commands.put(HangupCall(call_id, 500, "media error"))

    def _media_item(self, item: InboxItem) -> None:
        match item:
            case CallerAudio(call_id, pcm):
                ib = self.inbound.get(call_id)
                if ib is not None:
                    ib.on_frame(pcm)
                    self._emit_finished(ib)
                if call_id in self.amd:
                    self._amd_frame(call_id, pcm)
            case BotAudio(call_id, pcm):
                ib = self.inbound.get(call_id)
                if ib is not None:
                    ib.on_bot_frame(pcm)
            case MediaOpen(call_id, playback):
                self._open_media(call_id, playback)
            case AmdWords(call_id, text, audio_ms):
                detector = self.amd.get(call_id)
                if isinstance(detector, AnsweringMachineDetector):
                    detector.add_transcript(text, audio_ms)
            case MediaClose(call_id, code, reason, by):
                self.amd.pop(call_id, None)
                self.greetings.pop(call_id, None)
                self._close_inbound(call_id, code, reason, by)
            case DtmfReceived(call_id, digit):
                log.info("call %s: DTMF %s", call_id, digit)
                self.emit(f.Dtmf(call_id, digit))

    def _open_media(self, call_id: str, playback: PlaybackQueue) -> None:
        self.inbound[call_id] = self._new_inbound(call_id, playback)
        slot = self.calls.get(call_id)
        if slot is not None and slot.dial is not None and slot.dial.amd is not None:
            amd = _amd_settings(slot.dial.amd)
            self.amd[call_id] = AnsweringMachineDetector(amd, self.settings.clock_rate)
            if amd.asr:
                rate = self.settings.clock_rate
                self.greetings[call_id] = GreetingFeed(rate, amd.asr_chunk_ms * rate // 1000 * 2)

    def _amd_frame(self, call_id: str, pcm: bytes) -> None:
        """Answering-machine detection on the callee's audio, then the beep wait (media thread).

        Runs here, next to the audio, rather than in the supervisor: the detector needs every 20 ms frame
        from the answer on, and only its decisions cross the IPC channel."""
        if len(pcm) == self.frame_bytes:
            frame = np.frombuffer(pcm, dtype="<i2")
        else:  # no audio this tick (b""): silence keeps AMD's clock equal to the call's media clock
            frame = np.zeros(self.frame_bytes // 2, np.int16)
        state = self.amd[call_id]
        if isinstance(state, AnsweringMachineDetector):
            decision = state.process(frame)
            self._amd_provisional(call_id, state, decision)
            feed = self.greetings.get(call_id)
            if decision is None:
                chunk = feed.add(frame, state.heard_speech) if feed is not None else None
                if chunk is not None:
                    self.emit(f.AmdAudio(call_id, *chunk))
                return
            self.greetings.pop(call_id, None)
            self.emit(
                f.AmdResult(
                    call_id, decision.kind, decision.reasons, decision.decided_at_ms, decision.transcript
                )
            )
            if decision.kind == "machine":
                waiter = state.wait_for_beep()
                self.amd[call_id] = waiter
                cue = waiter.process(None)  # the beep that decided may already be over
                if cue is not None:
                    self.amd.pop(call_id, None)
                    self.emit(f.MessageCueFrame(call_id, cue.at_ms, cue.reason))
            else:
                self.amd.pop(call_id, None)
            return
        cue = state.process(frame)
        if cue is not None:
            self.amd.pop(call_id, None)
            self.emit(f.MessageCueFrame(call_id, cue.at_ms, cue.reason))

    def _amd_provisional(
        self, call_id: str, detector: AnsweringMachineDetector, decision: Decision | None
    ) -> None:
        """AMD's provisional "human" (amd.provisional_silence_ms): the supervisor sends the held greeting on
        `start`; on `withdraw`, or a machine verdict while a start stands, the bot's audio stops here, at
        once, before the supervisor even hears of it (a machine does not record before its beep)."""
        change = detector.provisional_change
        stop = change is not None and change.action == "withdraw"
        if decision is not None and decision.kind == "machine" and decision.provisional_since_ms is not None:
            stop = True
        ib = self.inbound.get(call_id)
        if stop and ib is not None:
            # Their PlaybackDone frames go out with the next frame's, after this frame's AMD frames: the
            # supervisor takes the utterances back before it hears they were cut.
            cut, dropped = ib.playback.withdraw()
            log.info(
                "call %s: provisional start stopped: utterances %s cut (%d frames)", call_id, cut, dropped
            )
        if change is not None:
            self.emit(f.AmdProvisional(call_id, change.action, change.at_ms, change.reason))

    def _new_inbound(self, call_id: str, playback: PlaybackQueue) -> Inbound:
        s = self.settings
        recorder, failure = None, None
        if s.recordings_dir is not None:
            try:
                recorder = StereoRecorder(Path(s.recordings_dir) / call_id / "call.wav", s.clock_rate)
            except Exception as exc:  # read-only or full disk: the call goes on unrecorded
                failure = f"{type(exc).__name__}: {exc}"[:300]
        if failure is not None:
            self.emit(f.RecordingFailed(call_id, failure))
        return Inbound(
            call_id=call_id,
            segmenter=make_segmenter(VadSettings(**s.vad), s.clock_rate),
            playback=playback,
            emit=self.emit,
            barge_in_min_ms=s.barge_in_min_ms,
            recorder=recorder,
            echo=EchoGate.of(s.echo_return_db, s.echo_tail_ms),
        )

    def _emit_finished(self, ib: Inbound) -> None:
        for done in ib.playback.take_finished():
            self.emit(
                f.PlaybackDone(
                    ib.call_id,
                    done.utterance,
                    done.start_tick * 20,
                    done.end_tick * 20,
                    done.interrupted,
                    done.underruns,
                    done.started_at,
                )
            )

    def _close_inbound(self, call_id: str, code: int, reason: str, by: str) -> None:
        ib = self.inbound.pop(call_id, None)
        if ib is None:
            # The call's media never opened here (it failed): still end it, or its session never would.
            self.emit(f.CallEnded(call_id, code, reason, by, 0, 0, 0))
            return
        for frame in ib.close():
            self.emit(frame)
        ib.playback.cancel()
        self._emit_finished(ib)
        pb = ib.playback
        self.emit(f.CallEnded(call_id, code, reason, by, ib.frames, pb.frames_played, pb.underruns))

    # ------------------------------------------------------------------------------ ipc reader

    def _reader_loop(self) -> None:
        while True:
            try:
                frame = self.channel.recv()
            except ChannelClosed:
                self.commands.put(ShutdownWorker("supervisor channel closed"))
                return
            if isinstance(frame, f.PlayAudio):
                slot = self.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.push(frame.utterance, frame.interruptible, frame.pcm)
            elif isinstance(frame, f.EndOfUtterance):
                slot = self.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.end(frame.utterance)
            elif isinstance(frame, f.CancelUtterances):
                slot = self.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.cancel(frame.utterances)
            elif isinstance(frame, f.ResumePlayback):
                slot = self.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.resume(frame.from_utterance)
            elif isinstance(frame, f.Dial):
                self.commands.put(PlaceCall(frame))
            elif isinstance(frame, f.AmdTranscript):
                # To the media thread, which owns the detector; it reads the words on the call's next frame.
                self.inbox.put(AmdWords(frame.call_id, frame.text, frame.audio_ms))
            elif isinstance(frame, f.CancelDial):
                self.commands.put(CancelCall(frame.call_id, "cancelled by the dialer"))
            elif isinstance(frame, f.Hangup):
                self.commands.put(HangupCall(frame.call_id, frame.code, frame.reason))
            elif isinstance(frame, f.Transfer):
                self.commands.put(TransferCall(frame.call_id, frame.target))
            elif isinstance(frame, f.SendDtmf):
                self.commands.put(SendDigits(frame.call_id, frame.digits))
            elif isinstance(frame, f.Shutdown):
                self.commands.put(ShutdownWorker(frame.reason or "supervisor asked"))
            elif isinstance(frame, f.Drain):
                self.commands.put(DrainWorker(frame.reason or "supervisor asked"))
            elif isinstance(frame, f.Ping):
                self.channel.send(f.Ping(frame.t, time.monotonic_ns(), frame.pcm))

    def emit(self, frame: f.Frame) -> None:
        self.channel.send(frame)


def check_tls_files(tls: dict[str, Any]) -> None:
    """PJSIP opens a TLS listener even when its certificate cannot be read (each handshake then fails): check
    the files here, with OpenSSL through Python's ssl, and name the key that is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls["cert_file"], tls["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"sip.tls.cert_file {tls['cert_file']} / sip.tls.key_file {tls['key_file']}: not a readable PEM"
            f" certificate and its private key ({exc})"
        ) from None
    if tls.get("ca_file"):
        try:
            context.load_verify_locations(tls["ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"sip.tls.ca_file {tls['ca_file']}: not a readable PEM CA list ({exc})"
            ) from None


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


def _amd_settings(values: dict[str, Any]) -> AmdSettings:
    """AmdSettings from the Dial frame's JSON (the nested beep settings arrive as a dict)."""
    values = dict(values)
    if isinstance(values.get("beep"), dict):
        values["beep"] = BeepSettings(**values["beep"])
    if isinstance(values.get("machine_phrases"), list):
        values["machine_phrases"] = tuple(values["machine_phrases"])
    return AmdSettings(**values)


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
            sig, lambda signum, _frame: worker.commands.put(ShutdownWorker(signal.Signals(signum).name))
        )
    try:
        worker.start_endpoint()
    except StartupError as exc:
        log.error("worker %d: %s", settings.index, exc)
        return 1
    worker.run()
    return worker.exit_code


def _warm_vad(rate: int) -> None:
    """Load Silero's ONNX session (shared by every call's turn VAD and AMD) and run it once, on the media
    thread before any call: done on a first call's "open" instead, it held that call's frames for 0.5-2 s
    on a loaded CPU, so AMD's clock fell that far behind the line and the greeting came as late."""
    t0 = time.monotonic()
    try:
        vad = make_classifier("silero", rate)
        for _ in range(2):  # two 20 ms frames fill one 32 ms Silero window: the model runs once
            vad.speech_prob(np.zeros(rate // 50, np.int16))
    except Exception:  # a VAD that cannot load fails the calls that need it, with their own error
        log.exception("Silero VAD warm-up failed")
        return
    log.info("Silero VAD warm in %.0f ms", (time.monotonic() - t0) * 1000)


if __name__ == "__main__":
    raise SystemExit(main())
