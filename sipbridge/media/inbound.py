"""The caller's side of a call in the worker: VAD turns and the barge-in decision.

Runs on the worker's media thread (never on PJSIP's clock thread): one `Inbound` per call gets every 20 ms
caller frame in order. Turn events go to the supervisor; barge-in is decided *here*, next to the playback
queue, so queued bot audio is dropped within one frame of the decision instead of after an IPC round trip
and a generation cancel.

Barge-in does not wait for Silero: Silero scores 32 ms windows and needs `start_hangover_ms` of speech
before it reports a turn, so alone it decides ~60-100 ms after the caller's onset. An energy onset detector
(`OnsetDetector`, a few µs a frame) sees the onset in the frame it arrives in and dates the barge-in clock
from there. Noise bursts are kept in check by the minimum: with `barge_in_min_ms` > 0 the sound must last
that long *and* Silero must have confirmed speech before the bot is cut; only `barge_in_min_ms: 0` cuts on
the energy onset alone (any sound interrupts: for quiet lines and tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from audio.vad import SpeechPaused, SpeechStart, TurnEnd, TurnSegmenter, TurnTooShort
from sipbridge import frames as f
from sipbridge.media.playback import PlaybackQueue
from sipbridge.media.recorder import StereoRecorder


@dataclass
class OnsetDetector:
    """Frame-energy onset: "sound started at frame N and is still going", with a tracked noise floor.

    A frame is loud when its RMS is over both `min_rms` (-45 dBFS: quieter than a talker on a phone line,
    louder than line hiss) and `floor_ratio` × the noise floor (so a noisy line does not look loud all the
    time). Sound stays "on" through gaps up to `gap_frames` (the pauses between syllables), so one talker's
    onset is not re-dated mid-word.
    """

    min_rms: float = 184.0  # -45 dBFS on the int16 scale
    floor_ratio: float = 4.0  # +12 dB over the noise floor
    gap_frames: int = 3
    floor: float = 0.0
    active_since: int | None = None  # frame index of the current sound's first loud frame
    quiet: int = 0

    def process(self, samples: np.ndarray, index: int) -> bool:
        """Feed frame `index`; True while sound is on."""
        x = samples.astype(np.float32)
        rms = math.sqrt(float(np.dot(x, x)) / max(1, len(x)))
        loud = rms > max(self.min_rms, self.floor * self.floor_ratio)
        if loud:
            self.quiet = 0
            if self.active_since is None:
                self.active_since = index
            return True
        # The floor follows quiet frames only: fast down (a line that went quiet), slow up (hiss building).
        self.floor = rms if rms < self.floor else 0.95 * self.floor + 0.05 * rms
        if self.active_since is not None:
            self.quiet += 1
            if self.quiet > self.gap_frames:
                self.active_since = None
        return self.active_since is not None


@dataclass
class Inbound:
    call_id: str
    segmenter: TurnSegmenter
    playback: PlaybackQueue
    emit: Callable[[f.Frame], None]
    barge_in_min_ms: int
    frame_ms: int = 20
    recorder: StereoRecorder | None = None
    onset: OnsetDetector = field(default_factory=OnsetDetector)
    speech_t: int | None = None  # start of the caller's current turn, ms
    barged: bool = False  # this sound / turn already interrupted the bot
    frames: int = 0
    paused_end: int | None = None  # end (ms) of the turn's speech at its last TurnPaused, until it goes on

    def on_frame(self, pcm: bytes) -> None:
        """One clock tick of caller audio; b"" (no audio this tick) counts as silence."""
        if len(pcm) != self.segmenter.frame_samples * 2:
            pcm = bytes(self.segmenter.frame_samples * 2)
        index = self.frames
        self.frames += 1
        if self.recorder is not None:
            self._record(self.recorder.caller, pcm)
        samples = np.frombuffer(pcm, dtype=np.int16)
        sounding = self.onset.process(samples, index)
        for event in self.segmenter.process(samples):
            if isinstance(event, SpeechStart):
                self.speech_t = event.t
                self.emit(f.SpeechStarted(self.call_id, event.t))
            elif isinstance(event, TurnEnd):
                self.speech_t = None
                self.paused_end = None
                self.emit(_turn_ended(self.call_id, event))
            elif isinstance(event, TurnTooShort):
                self.speech_t = None
                self.paused_end = None
                self.emit(f.TurnDropped(self.call_id, event.start, event.end))
            elif isinstance(event, SpeechPaused):
                pcm = event.pcm.tobytes()
                self.emit(f.TurnPaused(self.call_id, event.start, event.end, pcm, event.pcm_start))
                self.paused_end = event.end
        self._maybe_resumed(sounding)
        if not sounding and self.speech_t is None:
            self.barged = False  # the next sound may interrupt the next utterance
        self._maybe_barge_in(sounding)

    def _maybe_resumed(self, sounding: bool) -> None:
        """Sound after a pause, inside the same turn: the supervisor's end-of-turn judgement of that pause
        must not end the turn (the segmenter says nothing until the next pause or the turn's end)."""
        if self.paused_end is None or not sounding or self.onset.active_since is None:
            return
        onset_ms = self.onset.active_since * self.frame_ms
        if onset_ms >= self.paused_end and self.speech_t is not None:
            self.emit(f.TurnResumed(self.call_id, self.speech_t, onset_ms))
            self.paused_end = None

    def _maybe_barge_in(self, sounding: bool) -> None:
        if self.barged or not sounding:
            return
        now = self.segmenter.now_ms
        assert self.onset.active_since is not None
        onset_ms = self.onset.active_since * self.frame_ms
        if self.barge_in_min_ms == 0:
            start = onset_ms  # energy alone: cut in the frame the sound arrives in
        elif self.speech_t is not None:
            # Silero confirmed speech; the sound's own onset dates it (Silero's start is late and
            # lag-corrected only approximately), the earlier of the two when the sound had a gap.
            start = min(onset_ms, self.speech_t)
        else:
            return  # loud but not (yet) speech: a noise burst never cuts the bot on energy alone
        if now - start < self.barge_in_min_ms or not self.playback.interruptible_playing():
            return
        cut, dropped = self.playback.cancel(interruptible_only=True)
        self.barged = True
        if cut:
            self.emit(
                f.BargeIn(self.call_id, now, max(cut), dropped * self.frame_ms, onset_ms, time.monotonic())
            )

    def on_bot_frame(self, pcm: bytes) -> None:
        if self.recorder is not None:
            self._record(self.recorder.bot, pcm)

    def _record(self, write: Callable[[bytes], None], pcm: bytes) -> None:
        """A recording that cannot be written (disk full, directory gone read-only) is dropped, reported
        once, and the call goes on: a lost recording must never cost the call."""
        try:
            write(pcm)
        except Exception as exc:  # OSError, soundfile.LibsndfileError
            self.recording_failed(exc)

    def recording_failed(self, exc: BaseException) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.abandon()
        self.emit(f.RecordingFailed(self.call_id, f"{type(exc).__name__}: {exc}"[:300]))

    def close(self) -> list[f.Frame]:
        """Hang-up: close an open turn (the supervisor may still want its words) and the recording."""
        out: list[f.Frame] = []
        for event in self.segmenter.flush():
            if isinstance(event, TurnEnd):
                out.append(_turn_ended(self.call_id, event))
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception as exc:
                self.recording_failed(exc)
            self.recorder = None
        return out


def _turn_ended(call_id: str, event: TurnEnd) -> f.TurnEnded:
    return f.TurnEnded(call_id, event.start, event.end, event.reason, event.pcm.tobytes(), event.pcm_start)
