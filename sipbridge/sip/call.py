"""One SIP call inside a worker: the pjsua2 `Call`, its `AudioMediaPort`, and the state the worker keeps.

PJSIP threads call into here. `CallPort`'s two media callbacks run on the conference clock thread that serves
every call of the worker, so they only move bytes between queues (a few µs each); VAD, recording and IPC
happen on the worker's media thread. SIP callbacks (`onCallState`, `onCallMediaState`, `onDtmfDigit`) only
post to the worker's queues as well, or call the worker's `CallControl` (sipbridge/sip/call_control.py) on
the main thread.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pjsua2 as pj

from sipbridge import frames as f
from sipbridge.media.playback import PlaybackQueue
from sipbridge.sip.messages import BotAudio, CallerAudio, CallProgressed, DtmfReceived, HangupCall, InboxItem

log = logging.getLogger("sipbridge.worker")

if TYPE_CHECKING:
    from sipbridge.sip.call_control import CallControl


def fast_bytes(vector: pj.ByteVector) -> bytes:
    """Copy a SWIG ByteVector without iterating it element by element (75x faster than `bytes(vector)`).

    Reads libstdc++'s std::vector layout `[begin, end, capacity]` behind the SWIG pointer.
    """
    begin, end = ctypes.cast(int(vector.this), ctypes.POINTER(ctypes.c_void_p))[0:2]
    return ctypes.string_at(begin, end - begin) if begin and end and end != begin else b""


@dataclass(frozen=True)
class PortBinding:
    """What a `CallPort` serves now: one call's id, playback queue and whether its bot audio is recorded."""

    call_id: str
    playback: PlaybackQueue
    record: bool


class CallPort(pj.AudioMediaPort):
    """Caller frames into the media thread's inbox, bot frames out of the playback queue.

    A port is never destroyed while the worker runs: it is bound to a call, unbound when the call ends, and
    bound to a later call (`PortPool`). pjsua2's `~AudioMediaPort` frees the C port at once while PJSIP 2.14+
    removes it from the conference later, on the clock thread, which may still call it in between: a call
    into freed memory (AttributeError on a half-freed Python object, a corrupted inbox item, SIGSEGV; soak
    defect C, reproduced in seconds by `bench/port_churn.py --mode drop`). The binding is one attribute,
    swapped atomically, so the clock thread sees either the old call or none, never half of each.
    """

    def __init__(self, inbox: queue.SimpleQueue[InboxItem], frame_bytes: int):
        super().__init__()
        self.inbox = inbox
        self.binding: PortBinding | None = None
        self._silence_pcm = bytes(frame_bytes)
        self._silence = pj.ByteVector(self._silence_pcm)

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        binding = self.binding
        if binding is None:
            return
        # Every tick posts something, audio or not (b"" = no audio this tick), so the media thread's frame
        # count is the call's media clock and VAD times line up with what was sent.
        audio = frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size
        self.inbox.put(CallerAudio(binding.call_id, fast_bytes(frame.buf) if audio else b""))

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        binding = self.binding
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        if binding is None:
            frame.buf = self._silence
            frame.size = len(self._silence_pcm)
            return
        pcm = binding.playback.pop()
        frame.buf = self._silence if pcm is binding.playback.silence else pj.ByteVector(pcm)
        frame.size = len(pcm)
        if binding.record:
            self.inbox.put(BotAudio(binding.call_id, pcm))


@dataclass
class PortPool:
    """The worker's `CallPort`s (main thread only): at most its call slots plus the resting ones.

    An unbound port rests `rest_s` before it serves another call, so the conference has long applied the
    disconnects of the call that ended (PJSIP queues them to its clock thread) before a new connect."""

    make: Callable[[int], CallPort]
    rest_s: float = 2.0
    free: list[CallPort] = field(default_factory=list)
    resting: list[tuple[float, CallPort]] = field(default_factory=list)
    created: int = 0

    def take(self, now: float) -> CallPort:
        self.free.extend(p for t, p in self.resting if t <= now)
        self.resting = [(t, p) for t, p in self.resting if t > now]
        if self.free:
            return self.free.pop()
        self.created += 1
        return self.make(self.created)

    def give_back(self, port: CallPort, now: float) -> None:
        port.binding = None
        self.resting.append((now + self.rest_s, port))

    def clear(self) -> None:
        """Drop every idle port (shutdown, before libDestroy: their destructors need the library)."""
        self.free.clear()
        self.resting.clear()


@dataclass
class CallSlot:
    """Worker-side state of one call; owned by the worker's main thread (pjsua2 objects included)."""

    call_id: str
    pj_call: BridgeCall
    remote_uri: str = ""
    local_uri: str = ""
    remote_addr: str = ""
    sip_call_id: str = ""
    playback: PlaybackQueue | None = None
    port: CallPort | None = None
    media_index: int = -1
    started: bool = False  # CallStarted sent
    hangup_by: str | None = None  # set when we end the call ourselves
    hangup_reason: str = ""
    rx_packets: int = 0
    rx_changed_at: float = field(default_factory=time.monotonic)
    rejected: bool = False
    answered_at: float = 0.0  # inbound: when we sent the 200 (0: not yet)
    confirmed: bool = False  # the caller's ACK came (PJSIP_INV_STATE_CONFIRMED)
    # Outbound (sipbridge/dialer): the Dial that placed the call, INVITE time, first 180/183, why we ended it.
    dial: f.Dial | None = None
    invited_at: float = 0.0
    ringing_ms: int | None = None
    progress: set[int] = field(default_factory=set)
    local_event: str | None = None  # ring_timeout | cancelled | transport_error
    rtp: tuple[int, int, int, float, float] | None = None  # last RtpQuality snapshot (watchdog, stream end)
    rtp_peer: str | None = None  # the address its RTP socket accepts datagrams from (media.rtp_source)


class BridgeCall(pj.Call):
    def __init__(self, control: CallControl, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.control = control
        self.slot_id = ""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_EARLY:
            # 180/183 of a call we placed: the worker's main loop records the first of each code.
            self.control.ctx.commands.put(
                CallProgressed(self.slot_id, int(info.lastStatusCode), info.lastReason)
            )
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            # Never delete a Call inside its own callback: the main loop retires it.
            self.control.on_disconnected(self.slot_id, info.lastStatusCode, info.lastReason)

    def onStreamDestroyed(self, prm: pj.OnStreamDestroyedParam) -> None:
        self.control.on_stream_destroyed(self.slot_id, int(prm.streamIdx))

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            self.control.on_media_state(self.slot_id)
        except Exception:  # never unwind into PJSIP: end this call instead
            log.exception("call %s: connecting its media failed", self.slot_id)
            self.control.ctx.commands.put(HangupCall(self.slot_id, 500, "media error"))

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        # Only report: the supervisor decides to hang up once the transfer is accepted.
        self.control.on_transfer_status(
            self.slot_id, int(prm.statusCode), str(prm.reason), bool(prm.finalNotify)
        )

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        self.control.ctx.inbox.put(DtmfReceived(self.slot_id, str(prm.digit)))
