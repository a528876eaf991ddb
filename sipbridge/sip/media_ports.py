"""A worker's media side of SIP (main thread): connecting a call's audio to a `CallPort` at media-up, the port
pool that outlives calls, and the RTP source filter (media.rtp_source).

`MediaPorts` owns the `PortPool`; the `CallPort`s it hands out move bytes between PJSIP's clock thread and
the media thread's inbox (sipbridge/sip/call.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pjsua2 as pj

from sipbridge import frames as f
from sipbridge.media.playback import PlaybackQueue
from sipbridge.sip.call import CallPort, CallSlot, PortBinding, PortPool
from sipbridge.sip.messages import MediaOpen
from sipbridge.sip.rtpsource import restrict
from sipbridge.sip.worker_context import WorkerContext

log = logging.getLogger("sipbridge.worker")

_PORT_REST_S = 2.0  # how long an ended call's media port rests before it serves another call (PortPool)


@dataclass
class MediaPorts:
    ctx: WorkerContext

    def __post_init__(self) -> None:
        # Media ports are reused across calls, never destroyed while the worker runs (see CallPort).
        self.ports = PortPool(self._new_port, _PORT_REST_S)

    def on_media_state(self, slot_id: str) -> None:
        slot = self.ctx.calls.get(slot_id)
        if slot is None:
            return
        if slot.port is not None:
            # A re-INVITE (only the dialog's peer gets one past the guard) may move the peer's media.
            if self.ctx.settings.rtp_source == "sdp":
                self.filter_rtp(slot)
            return
        info = slot.pj_call.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self._connect_media(slot, media.index)
                return

    def _connect_media(self, slot: CallSlot, index: int) -> None:
        ctx = self.ctx
        call_media = slot.pj_call.getAudioMedia(index)
        codec = slot.pj_call.getStreamInfo(index).codecName
        slot.media_index = index
        slot.playback = PlaybackQueue(ctx.frame_bytes, -(-ctx.settings.playback_margin_ms // 20))
        # The bot's frames go to the media thread (in clock order with the caller's) for the recording and
        # for the echo gate's and the echo canceller's reference of what may come back.
        s = ctx.settings
        record = s.recordings_dir is not None or s.echo_return_db is not None or s.echo_canceller != "none"
        # Announce the call before any media event of it can be emitted (the media thread sees "open"
        # only after this send), so the supervisor always learns of a call first.
        ctx.emit(
            f.CallStarted(
                slot.call_id, slot.remote_uri, slot.local_uri, slot.remote_addr, codec, slot.sip_call_id
            )
        )
        slot.started = True
        ctx.inbox.put(MediaOpen(slot.call_id, slot.playback))
        port = self.ports.take(time.monotonic())
        port.binding = PortBinding(slot.call_id, slot.playback, record)
        call_media.startTransmit(port)
        port.startTransmit(call_media)
        slot.port = port
        slot.rx_changed_at = time.monotonic()
        if ctx.settings.rtp_source == "sdp":
            self.filter_rtp(slot)
        log.info("call %s media up: %s", slot.call_id, codec)

    def filter_rtp(self, slot: CallSlot, source: str | None = None) -> None:
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
        log.info("call %s: RTP accepted from %s only (%s)", slot.call_id, peer, self.ctx.settings.rtp_source)

    def latch_rtp(self, slot: CallSlot) -> None:
        try:
            source = slot.pj_call.getMedTransportInfo(slot.media_index).srcRtpName
        except pj.Error:
            return
        if source:
            self.filter_rtp(slot, source)

    def release(self, slot: CallSlot) -> None:
        """The call ended: its port is unbound (its callbacks stop touching this call at once) and kept for
        a later call, because a destroyed port can still be called by the conference's clock thread."""
        if slot.port is not None:
            self.ports.give_back(slot.port, time.monotonic())
        slot.port = None

    def _new_port(self, number: int) -> CallPort:
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.clockRate = self.ctx.settings.clock_rate
        fmt.channelCount = 1
        fmt.bitsPerSample = 16
        fmt.frameTimeUsec = 20000
        port = CallPort(self.ctx.inbox, self.ctx.frame_bytes)
        port.createPort(f"call-port-{number}", fmt)
        return port
