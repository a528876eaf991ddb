"""The SIP side of `sipbridge call`: one pjsua2 Endpoint in this process placing one call, like a worker does.

Threads: the caller's (registered with PJSIP as its main thread) runs `poll`, which handles SIP events and
returns what happened as typed events; PJSIP's media clock thread runs `_Port`'s two frame callbacks, which
only move bytes (the other side's frame into `inbox`, our next frame out of `source`). No sound card: a null
device clocks the conference bridge, as in the workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pjsua2 as pj

from sipbridge.sip.call import fast_bytes
from sipbridge.tools.transcript import printable

log = logging.getLogger("sipbridge.call")

_CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}


class SoftphoneError(Exception):
    """PJSIP could not start, or the INVITE could not be sent."""


class FrameSource(Protocol):
    """What we send: one frame of `frame_bytes` per 20 ms tick (PlaybackQueue, or a microphone buffer)."""

    silence: bytes

    def pop(self) -> bytes: ...


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Received:
    """The other side's frame this tick (b"": none arrived); from the media's start, early media included."""

    pcm: bytes


@dataclass(frozen=True)
class Sent:
    pcm: bytes


@dataclass(frozen=True)
class Responded:
    """A provisional response to our INVITE (100 Trying, 180 Ringing, 183 Session Progress)."""

    code: int
    reason: str


@dataclass(frozen=True)
class Answered:
    """200 OK and ACK: the call is up (media may have started before, as early media)."""

    codec: str


@dataclass(frozen=True)
class Ended:
    """The call is over: `code` is the final status (the rejection, or 200 for an answered call)."""

    code: int
    reason: str
    answered: bool
    received: bool = (
        False  # the final response came from the other side (not PJSIP's timeout/transport error)
    )


PhoneEvent = Received | Sent | Responded | Answered | Ended


# ------------------------------------------------------------------------------------ pjsua2 glue


class _Port(pj.AudioMediaPort):
    """Runs on PJSIP's media clock: a few µs per callback, bytes in and out of queues only."""

    def __init__(self, inbox: queue.SimpleQueue[PhoneEvent], source: FrameSource) -> None:
        super().__init__()
        self.inbox = inbox
        self.source = source
        self._silence = pj.ByteVector(source.silence)

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        audio = frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size
        self.inbox.put(Received(fast_bytes(frame.buf) if audio else b""))

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        pcm = self.source.pop()
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = self._silence if pcm is self.source.silence else pj.ByteVector(pcm)
        frame.size = len(pcm)
        self.inbox.put(Sent(pcm))


class _Call(pj.Call):
    def __init__(self, phone: Softphone, account: pj.Account) -> None:
        super().__init__(account)
        self.phone = phone

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.phone.on_confirmed()
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            # A final response that arrived (486, 603 ...) ends the call through a received message; PJSIP's
            # own 408 or 503 (timeout, refused connection) through a timer or a transport error.
            event = prm.e
            received = (
                event.type == pj.PJSIP_EVENT_TSX_STATE and event.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG
            )
            self.phone.on_disconnected(int(info.lastStatusCode), printable(str(info.lastReason)), received)

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # Provisional responses to our INVITE: 100 Trying changes no call state, yet proves a server is there.
        body = prm.e.body.tsxState
        if (
            body.tsx.method == "INVITE"
            and body.type == pj.PJSIP_EVENT_RX_MSG
            and 100 <= body.tsx.statusCode < 200
        ):
            self.phone.inbox.put(Responded(int(body.tsx.statusCode), printable(str(body.tsx.statusText))))

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.phone.on_media_state()


class _LogWriter(pj.LogWriter):
    def write(self, entry: pj.LogEntry) -> None:
        log.warning("pjsip: %s", entry.msg.strip())


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """pjlib prints its start-up lines on stdout before the log level applies; the transcript lives there."""
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def local_address_for(host: str, port: int) -> str:
    """The address of ours that reaches `host` (the kernel's route; a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


@dataclass
class Softphone:
    bind_address: str
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    clock_rate: int = 8000
    user_agent: str = "sipbridge-call"
    transport: str = "udp"
    # Digest credentials for a PBX or trunk that challenges our INVITE (401/407): user, password, and the
    # domain our From uses then (the target's host: how a PBX knows its extensions).
    auth: tuple[str, str, str] | None = None

    def __post_init__(self) -> None:
        self.inbox: queue.SimpleQueue[PhoneEvent] = queue.SimpleQueue()
        self.ep: pj.Endpoint | None = None
        self.account: pj.Account | None = None
        self.call: _Call | None = None
        self.port: _Port | None = None
        self.source: FrameSource | None = None
        self.answered = False
        self.ended = False
        self.codec = "no audio"  # until the media is up
        self.local_port = 0

    @property
    def frame_bytes(self) -> int:
        return self.clock_rate * 20 // 1000 * 2

    def start(self) -> None:
        ep = pj.Endpoint()
        cfg = pj.EpConfig()
        cfg.uaConfig.maxCalls = 1
        cfg.uaConfig.userAgent = self.user_agent
        cfg.uaConfig.threadCnt = 0  # callbacks on our thread, in poll()
        cfg.uaConfig.mainThreadOnly = True
        self._writer = _LogWriter()  # PJSIP keeps a raw pointer: keep the object alive
        cfg.logConfig.writer = self._writer
        cfg.logConfig.level = 2
        cfg.logConfig.consoleLevel = 0
        cfg.logConfig.msgLogging = 0
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.clockRate = self.clock_rate
        cfg.medConfig.sndClockRate = self.clock_rate
        with _quiet_stdout():
            ep.libCreate()
            ep.libInit(cfg)
        self.ep = ep
        try:
            tcfg = pj.TransportConfig()
            tcfg.port = 0
            tcfg.boundAddress = self.bind_address
            kind = pj.PJSIP_TRANSPORT_TCP if self.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
            tid = ep.transportCreate(kind, tcfg)
            self.local_port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
            ep.libStart()
        except pj.Error as exc:
            raise SoftphoneError(f"cannot start SIP on {self.bind_address}: {exc.info().strip()}") from None
        try:
            self._configure(ep)
        except pj.Error as exc:
            raise SoftphoneError(f"cannot set up PJSIP: {exc.info().strip()}") from None

    def _configure(self, ep: pj.Endpoint) -> None:
        ep.audDevManager().setNullDev()
        wanted = {_CODEC_IDS[c]: 255 - i for i, c in enumerate(self.codecs)}
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, wanted.get("/".join(codec.codecId.split("/")[:2]), 0))
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:sipbridge-call@{self.bind_address}:{self.local_port}"
        if self.auth is not None:
            user, password, domain = self.auth
            acfg.idUri = f"sip:{user}@{domain}"
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
        acfg.mediaConfig.transportConfig.boundAddress = self.bind_address
        self.account = pj.Account()
        self.account.create(acfg, True)

    def dial(self, uri: str, source: FrameSource) -> None:
        assert self.account is not None
        self.source = source
        self.call = _Call(self, self.account)
        try:
            self.call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            self.call = None
            raise SoftphoneError(f"cannot call {uri}: {exc.info().strip()}") from None

    def poll(self, wait_ms: int = 10) -> list[PhoneEvent]:
        """Handle SIP events for up to `wait_ms`, then return everything that happened since the last poll."""
        assert self.ep is not None
        self.ep.libHandleEvents(wait_ms)
        out: list[PhoneEvent] = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def hangup(self) -> None:
        """CANCEL before the answer, BYE after it; the Ended event follows from poll()."""
        if self.call is None or self.ended:
            return
        op = pj.CallOpParam(True)
        op.statusCode = 200 if self.answered else 487
        with contextlib.suppress(pj.Error):
            self.call.hangup(op)

    # ------------------------------------------------------------------------- callbacks (our thread)

    def on_media_state(self) -> None:
        if self.call is None or self.port is not None or self.source is None:
            return
        info = self.call.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self._connect(media.index)
                return

    def _connect(self, index: int) -> None:
        assert self.call is not None and self.source is not None
        call_media = self.call.getAudioMedia(index)
        codec = printable(self.call.getStreamInfo(index).codecName)
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.clockRate = self.clock_rate
        fmt.channelCount = 1
        fmt.bitsPerSample = 16
        fmt.frameTimeUsec = 20000
        port = _Port(self.inbox, self.source)
        port.createPort("sipbridge-call", fmt)
        self.codec = codec
        call_media.startTransmit(port)
        port.startTransmit(call_media)
        self.port = port

    def on_confirmed(self) -> None:
        if not self.answered:
            self.answered = True
            self.inbox.put(Answered(self.codec))

    def on_disconnected(self, code: int, reason: str, received: bool) -> None:
        self.ended = True
        self.inbox.put(Ended(code, reason, self.answered, received))

    def close(self) -> None:
        """Drop the call and port here (our registered thread), then the account, then PJSIP itself."""
        if self.ep is None:
            return
        if self.call is not None and not self.ended:
            self.ep.hangupAllCalls()
            for _ in range(100):
                self.ep.libHandleEvents(10)
                if self.ended:
                    break
        self.port = None
        self.call = None
        if self.account is not None:
            self.account.shutdown()
            self.account = None
        self.ep.libDestroy()
        self.ep = None
