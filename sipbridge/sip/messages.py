"""Typed messages on the worker's two inner queues (sipbridge/sip/worker.py), like the frames on its socket.

`inbox` (-> media thread): caller and bot audio from PJSIP's clock thread, call open/close from the main
thread, DTMF from the ioqueue thread, AMD words from the IPC reader. `commands` (-> main thread, the only one
that may act on pjsua2 objects): what the IPC reader, the media thread, signals and SIP callbacks ask of it.

The two audio messages are posted 50 times a second per call from PJSIP's clock thread: slotted, not frozen
(a frozen dataclass's __init__ goes through object.__setattr__, ~2x slower), never mutated after the put.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sipbridge import frames as f

if TYPE_CHECKING:
    from sipbridge.media.playback import PlaybackQueue

# ------------------------------------------------------------------------------ inbox (media thread)


@dataclass(slots=True)
class CallerAudio:
    """One clock tick of the caller's audio; b"" when no audio came this tick (counts as silence)."""

    call_id: str
    pcm: bytes


@dataclass(slots=True)
class BotAudio:
    """The frame just sent to the caller (posted only when the call is recorded)."""

    call_id: str
    pcm: bytes


@dataclass(slots=True)
class MediaOpen:
    """The call's media is up: start its VAD, recording and (outbound) answering-machine detection."""

    call_id: str
    playback: PlaybackQueue


@dataclass(slots=True)
class MediaClose:
    """The call ended: close its turn and recording, then send CallEnded."""

    call_id: str
    code: int
    reason: str
    by: str


@dataclass(slots=True)
class AmdWords:
    """The supervisor's transcript of the greeting so far, for the call's answering-machine detector."""

    call_id: str
    text: str
    audio_ms: int


@dataclass(slots=True)
class DtmfReceived:
    call_id: str
    digit: str


@dataclass(slots=True)
class StopMedia:
    """The worker is shutting down: the media thread returns."""


InboxItem = CallerAudio | BotAudio | MediaOpen | MediaClose | AmdWords | DtmfReceived | StopMedia

# ---------------------------------------------------------------------------- commands (main thread)


@dataclass(slots=True)
class PlaceCall:
    dial: f.Dial


@dataclass(slots=True)
class CallProgressed:
    """A 180/183 for a call we placed (from onCallState)."""

    call_id: str
    code: int
    reason: str


@dataclass(slots=True)
class CancelCall:
    """End a call we placed if it is not answered yet (answered calls run to their end)."""

    call_id: str
    reason: str


@dataclass(slots=True)
class HangupCall:
    call_id: str
    code: int
    reason: str


@dataclass(slots=True)
class TransferCall:
    call_id: str
    target: str


@dataclass(slots=True)
class SendDigits:
    call_id: str
    digits: str


@dataclass(slots=True)
class ShutdownWorker:
    reason: str


@dataclass(slots=True)
class DrainWorker:
    reason: str


Command = (
    PlaceCall
    | CallProgressed
    | CancelCall
    | HangupCall
    | TransferCall
    | SendDigits
    | ShutdownWorker
    | DrainWorker
)
