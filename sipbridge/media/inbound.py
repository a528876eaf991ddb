"""The caller's side of a call in the worker: VAD turns and the barge-in decision.

Runs on the worker's media thread (never on PJSIP's clock thread): one `Inbound` per call gets every 20 ms
caller frame in order. Turn events go to the supervisor; barge-in is decided *here*, next to the playback
queue, so queued bot audio is dropped within one frame of the decision instead of after an IPC round trip
and a generation cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audio.vad import SpeechStart, TurnDropped, TurnEnd, TurnSegmenter
from sipbridge import frames as f
from sipbridge.media.playback import PlaybackQueue
from sipbridge.media.recorder import StereoRecorder


@dataclass
class Inbound:
    call_id: str
    segmenter: TurnSegmenter
    playback: PlaybackQueue
    emit: Callable[[f.Frame], None]
    barge_in_min_ms: int
    frame_ms: int = 20
    recorder: StereoRecorder | None = None
    speech_t: int | None = None  # start of the caller's current turn, ms
    barged: bool = False  # this turn already interrupted the bot
    frames: int = 0

    def on_frame(self, pcm: bytes) -> None:
        """One clock tick of caller audio; b"" (no audio this tick) counts as silence."""
        if len(pcm) != self.segmenter.frame_samples * 2:
            pcm = bytes(self.segmenter.frame_samples * 2)
        self.frames += 1
        if self.recorder is not None:
            self.recorder.caller(pcm)
        for event in self.segmenter.process(np.frombuffer(pcm, dtype=np.int16)):
            if isinstance(event, SpeechStart):
                self.speech_t = event.t
                self.barged = False
                self.emit(f.SpeechStarted(self.call_id, event.t))
            elif isinstance(event, TurnEnd):
                self.speech_t = None
                self.emit(
                    f.TurnEnded(self.call_id, event.start, event.end, event.reason, event.pcm.tobytes())
                )
            elif isinstance(event, TurnDropped):
                self.speech_t = None
                self.emit(f.TurnDropped(self.call_id, event.start, event.end))
        self._maybe_barge_in()

    def _maybe_barge_in(self) -> None:
        if self.speech_t is None or self.barged:
            return
        now = self.segmenter.now_ms
        if now - self.speech_t < self.barge_in_min_ms or not self.playback.interruptible_playing():
            return
        cut, dropped = self.playback.cancel(interruptible_only=True)
        self.barged = True
        if cut:
            self.emit(f.BargeIn(self.call_id, now, max(cut), dropped * self.frame_ms))

    def on_bot_frame(self, pcm: bytes) -> None:
        if self.recorder is not None:
            self.recorder.bot(pcm)

    def close(self) -> list[f.Frame]:
        """Hang-up: close an open turn (the supervisor may still want its words) and the recording."""
        out: list[f.Frame] = []
        for event in self.segmenter.flush():
            if isinstance(event, TurnEnd):
                out.append(
                    f.TurnEnded(self.call_id, event.start, event.end, event.reason, event.pcm.tobytes())
                )
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        return out
