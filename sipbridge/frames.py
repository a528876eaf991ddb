"""Typed frames and events that cross between a SIP media worker and the supervisor.

Every frame is delivered, in order, on one stream socket per worker. Barge-in does not drop frames by type:
bot audio belongs to an utterance that is interruptible or not (`PlayAudio.interruptible`). On barge-in the
worker's media thread drops the queued interruptible utterances at once, and the supervisor then sends
`CancelUtterances` naming the ones whose audio may still be in flight (every one of them on hang-up).
Each frame is a frozen dataclass; `pcm` carries raw int16 little-endian samples and travels outside the JSON
header on the IPC channel (sipbridge/sip/ipc.py), so audio is never base64-encoded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Frame:
    """Base of every frame on the worker <-> supervisor channel."""


@dataclass(frozen=True)
class CallFrame(Frame):
    """A frame about one call: the supervisor routes it to that call's session."""

    call_id: str


# ------------------------------------------------------------------------------ worker -> supervisor


@dataclass(frozen=True)
class WorkerReady(Frame):
    """First frame on a worker's connection: who it is and which ports it actually bound."""

    index: int
    pid: int
    sip_udp_port: int
    sip_tcp_port: int | None


@dataclass(frozen=True)
class Registration(Frame):
    """Trunk registration state changed (REGISTER answered, refreshed, or failed)."""

    index: int
    registered: bool
    code: int
    reason: str
    expires_s: int


@dataclass(frozen=True)
class CallRejected(Frame):
    """An INVITE we refused before any call existed (source not allowed, worker full)."""

    remote_addr: str
    remote_uri: str
    code: int
    reason: str


@dataclass(frozen=True)
class RequestsRefused(Frame):
    """SIP requests the worker's guard answered (or dropped) statelessly since its last report, aggregated:
    one frame per half second at most, however fast a flood comes (sipbridge/sip/guard.py)."""

    index: int
    counts: list[tuple[str, int, str, int]]  # (method, code, reason, count); code -1: dropped (an ACK)


@dataclass(frozen=True)
class RecordingFailed(CallFrame):
    """The call's recording could not be written (disk full, read-only directory): the call goes on
    without it."""

    error: str


@dataclass(frozen=True)
class CallStarted(CallFrame):
    """Answered, media active: the supervisor may speak from now on."""

    remote_uri: str
    local_uri: str
    remote_addr: str
    codec: str
    sip_call_id: str


@dataclass(frozen=True)
class SpeechStarted(CallFrame):
    t_ms: int  # call media time (ms since media became active)


@dataclass(frozen=True)
class TurnEnded(CallFrame):
    """A caller turn, boundaries in call media time, with its 8 kHz audio: `pcm` starts at `pcm_start_ms`,
    `vad.preroll_ms` before the speech `start_ms` (ASR word times are from there)."""

    start_ms: int
    end_ms: int
    reason: str
    pcm: bytes = dataclasses.field(repr=False)
    pcm_start_ms: int | None = None  # None: the pcm starts at start_ms


@dataclass(frozen=True)
class TurnPaused(CallFrame):
    """The caller's turn so far, `vad.pause_ms` into a silence (before the turn ends): the supervisor
    may transcribe it now. A TurnEnded with the same start and end follows when the caller says no more."""

    start_ms: int
    end_ms: int
    pcm: bytes = dataclasses.field(repr=False)
    pcm_start_ms: int | None = None  # as TurnEnded's


@dataclass(frozen=True)
class TurnResumed(CallFrame):
    """The caller made sound again after a TurnPaused, before the turn ended: a judgement of that pause
    (turn.end_of_turn) still in progress is void. Sent once per pause, from the energy onset (no VAD lag)."""

    start_ms: int  # the turn's start, as TurnPaused.start_ms
    t_ms: int  # onset of the new sound, call media time


@dataclass(frozen=True)
class TurnDropped(CallFrame):
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class BargeIn(CallFrame):
    """The worker already dropped queued interruptible audio; the supervisor cancels generation."""

    t_ms: int
    utterance: int
    dropped_ms: int
    onset_ms: int | None = None  # media time the caller's sound began (the energy onset)
    decided_at: float | None = None  # the worker's time.monotonic() of the decision: the drop is in effect


@dataclass(frozen=True)
class Dtmf(CallFrame):
    digit: str


@dataclass(frozen=True)
class PlaybackDone(CallFrame):
    """The last frame of an utterance went out (or it was cut by barge-in)."""

    utterance: int
    start_ms: int
    end_ms: int
    interrupted: bool
    underruns: int
    # time.monotonic() when the utterance's first frame went to RTP (one clock for every process of the
    # host): the last stage of the reply latency (metrics' turn stages). 0 = unknown.
    started_at: float = 0.0


@dataclass(frozen=True)
class TransferStatus(CallFrame):
    """Progress of a REFER we sent: 202 when accepted, then the transferee's final status (NOTIFY)."""

    code: int
    reason: str
    final: bool


@dataclass(frozen=True)
class CallEnded(CallFrame):
    sip_status: int
    reason: str
    by: str  # "remote", "local", "watchdog", "error"
    rx_frames: int
    tx_frames: int
    underruns: int


@dataclass(frozen=True)
class RtpQuality(CallFrame):
    """The call's receive-side RTP statistics from PJSIP's stream (RTCP counters and jitter buffer), sent
    just before its CallEnded: what the caller's network did to the audio we heard."""

    packets: int  # RTP packets received
    lost: int  # sequence gaps never filled
    late: int  # arrived too late for the jitter buffer (discarded)
    jitter_mean_ms: float
    jitter_max_ms: float


@dataclass(frozen=True)
class CallProgress(CallFrame):
    """An outbound call's provisional response (180 Ringing, 183 Session Progress), first of each code."""

    code: int
    reason: str
    t_ms: int  # ms since the INVITE was sent


@dataclass(frozen=True)
class DialEnded(CallFrame):
    """An outbound call that ended before it was answered (no CallStarted/CallEnded for it).

    `event` is set when the attempt ended on our side or without a response (ring_timeout, transport_error,
    cancelled, no_slot: PJSUA refused the INVITE locally, all its call slots taken; nothing was sent);
    otherwise `code` is the callee side's final response."""

    code: int
    reason: str
    event: str | None
    ringing_ms: int | None  # first 180/183 after the INVITE
    duration_ms: int  # INVITE to the end


@dataclass(frozen=True)
class AmdResult(CallFrame):
    """Answering-machine decision of an outbound call, made in the worker from the callee's first audio."""

    kind: str  # human | machine | not_sure
    reasons: list[str]
    decided_at_ms: int  # media ms after the answer
    transcript: str | None = None  # the greeting's words from ASR that the decision saw (amd.asr)


@dataclass(frozen=True)
class AmdProvisional(CallFrame):
    """AMD's provisional "human" (audio.amd.Provisional, amd.provisional_silence_ms): `start` (the callee's
    words look over: the held disclosure and greeting may go out before the verdict) or `withdraw` (the
    callee spoke again: the worker has already stopped the bot's audio and drops what is still on its way
    until `ResumePlayback`)."""

    action: str  # start | withdraw
    at_ms: int  # media ms after the answer
    reason: str


@dataclass(frozen=True)
class AmdAudio(CallFrame):
    """The callee's audio while AMD listens (amd.asr), every asr_chunk_ms: the supervisor's ASR transcribes
    the greeting so far and answers with AmdTranscript. Chunks follow each other without gaps."""

    start_ms: int  # media ms after the answer of the chunk's first sample
    pcm: bytes = dataclasses.field(repr=False)


@dataclass(frozen=True)
class MessageCueFrame(CallFrame):
    """After a machine decision: when to start the voicemail message (beep end, greeting end, timeout)."""

    at_ms: int
    reason: str


# ------------------------------------------------------------------------------ supervisor -> worker


@dataclass(frozen=True)
class Dial(CallFrame):
    """Place an outbound call. `call_id` is chosen by the supervisor so the attempt row exists before the
    INVITE; `amd` holds audio.amd.AmdSettings fields (None: no detection, the callee is taken as a person)."""

    target: str  # SIP URI
    caller_id: str  # E.164; sent as the From user part and in P-Asserted-Identity
    ring_timeout_s: float
    amd: dict[str, Any] | None = None
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    campaign: str = ""
    attempt_id: int = 0


@dataclass(frozen=True)
class CancelDial(CallFrame):
    """Stop a call we placed while it rings: SIP CANCEL, then DialEnded with event cancelled. Ignored once the
    call is answered (a paused campaign lets answered calls run to their end)."""


@dataclass(frozen=True)
class AmdTranscript(CallFrame):
    """The words ASR heard in the callee's first `audio_ms` of audio, for the worker's AMD detector."""

    text: str
    audio_ms: int
    asr_ms: float  # in the supervisor, from asking the ASR thread to the words (any queueing included)


@dataclass(frozen=True)
class PlayAudio(CallFrame):
    """8 kHz bot audio for one utterance; any length, the worker cuts it into ptime frames."""

    utterance: int
    interruptible: bool
    pcm: bytes = dataclasses.field(repr=False)


@dataclass(frozen=True)
class EndOfUtterance(CallFrame):
    """No more audio for this utterance: PlaybackDone follows when its last frame is played."""

    utterance: int


@dataclass(frozen=True)
class CancelUtterances(CallFrame):
    """Drop these utterances' queued audio and any of their audio still in flight (barge-in, hang-up)."""

    utterances: list[int]


@dataclass(frozen=True)
class ResumePlayback(CallFrame):
    """After a withdrawn provisional start: the supervisor has taken back every utterance it had sent (they
    are held again under new ids); audio of utterances from `from_utterance` on plays again, older ids are
    dead."""

    from_utterance: int


@dataclass(frozen=True)
class Hangup(CallFrame):
    code: int = 200
    reason: str = ""


@dataclass(frozen=True)
class Transfer(CallFrame):
    """Blind transfer: send REFER with Refer-To `target` (a SIP URI); TransferStatus reports progress."""

    target: str


@dataclass(frozen=True)
class SendDtmf(CallFrame):
    """Send keypad digits to the remote party (RFC 2833 events), e.g. to get through an IVR."""

    digits: str


@dataclass(frozen=True)
class Shutdown(Frame):
    reason: str = ""


@dataclass(frozen=True)
class Drain(Frame):
    """Stop taking calls (new INVITEs get 503) and let the active ones run to their end (graceful drain)."""

    reason: str = ""


@dataclass(frozen=True)
class Ping(Frame):
    """IPC latency probe, echoed by the worker: `t` is when the supervisor sent it, `t_echo` when the worker
    read it (both `time.monotonic_ns`, one clock for every process of the host)."""

    t: int
    t_echo: int = 0
    pcm: bytes = dataclasses.field(default=b"", repr=False)


FRAME_TYPES: dict[str, type[Frame]] = {
    cls.__name__: cls
    for cls in (
        WorkerReady,
        Registration,
        CallRejected,
        RequestsRefused,
        RecordingFailed,
        CallStarted,
        SpeechStarted,
        TurnEnded,
        TurnPaused,
        TurnResumed,
        TurnDropped,
        BargeIn,
        Dtmf,
        PlaybackDone,
        TransferStatus,
        CallEnded,
        CallProgress,
        RtpQuality,
        DialEnded,
        AmdResult,
        AmdProvisional,
        AmdAudio,
        MessageCueFrame,
        Dial,
        CancelDial,
        AmdTranscript,
        PlayAudio,
        EndOfUtterance,
        CancelUtterances,
        ResumePlayback,
        Hangup,
        Transfer,
        SendDtmf,
        Shutdown,
        Drain,
        Ping,
    )
}


_HEADER_NAMES: dict[type, tuple[str, ...]] = {}


def _header_names(cls: type) -> tuple[str, ...]:
    """A frame type's JSON fields. Kept per type: `dataclasses.fields` cost ~10 % of the supervisor loop's
    time in a 100-call greeting burst (every PlayAudio chunk asked it again; docs/PERFORMANCE.md)."""
    names = _HEADER_NAMES.get(cls)
    if names is None:
        names = _HEADER_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.name != "pcm")
    return names


def to_header(frame: Frame) -> tuple[dict[str, Any], bytes]:
    """Split a frame into its JSON-able fields and its binary payload."""
    fields = {name: getattr(frame, name) for name in _header_names(type(frame))}
    fields["type"] = type(frame).__name__
    return fields, getattr(frame, "pcm", b"")


def from_header(fields: dict[str, Any], blob: bytes) -> Frame:
    name = fields.pop("type", None)
    cls = FRAME_TYPES.get(str(name))
    if cls is None:
        raise ValueError(f"unknown frame type {name!r}")
    if any(f.name == "pcm" for f in dataclasses.fields(cls)):
        fields["pcm"] = blob
    return cls(**fields)
