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

Echo: a phone line's hybrid (or a speakerphone) sends the bot's own audio back, 10-20 dB down and 20-200 ms
late (plus both jitter buffers); to the VAD that is speech. By default an echo canceller (`aec`, WebRTC AEC3,
audio/echo.py) subtracts it from every caller frame before anything here looks at it, fed every frame the
clock sent; the caller talking over the echo is then heard from their onset. The optional `EchoGate` keeps the
level of every frame we sent and raises the onset's threshold to what could be our own echo now: the frames
sent around the line's echo delay (measured by matching the two level envelopes over the last second; until
then, anything sent in the last `echo_tail_ms`) times the line's echo return, +3 dB. The return starts at the
worst expected (`vad.echo_return_db`) and follows the peak the line really sends back while the caller is
quiet (a line without echo soon gates nothing). A turn whose every loud frame was gated as echo is dropped
(`TurnDropped`), so the bot neither cuts itself off nor answers its own words. The cost: while the bot speaks,
a caller quieter than the echo allows is heard only between the bot's loud syllables (docs/PERFORMANCE.md,
"Echo").
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from audio.echo import EchoCanceller
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

    loud: bool = False  # the last frame was over the threshold
    gated: bool = False  # the last frame was over it but no louder than our own echo could be

    def process(self, samples: np.ndarray, index: int, echo_rms: float = 0.0) -> bool:
        """Feed frame `index`; True while sound is on. `echo_rms`: the loudest our echo could be now."""
        rms = frame_rms(samples)
        threshold = max(self.min_rms, self.floor * self.floor_ratio)
        self.loud = rms > max(threshold, echo_rms)
        self.gated = not self.loud and rms > threshold
        if self.loud:
            self.quiet = 0
            if self.active_since is None:
                self.active_since = index
            return True
        # The floor follows quiet frames only: fast down (a line that went quiet), slow up (hiss building).
        # Our echo is not the line's floor: it stops when we do.
        if not self.gated:
            self.floor = rms if rms < self.floor else 0.95 * self.floor + 0.05 * rms
        if self.active_since is not None:
            self.quiet += 1
            if self.quiet > self.gap_frames:
                self.active_since = None
        return self.active_since is not None


def frame_rms(samples: np.ndarray) -> float:
    x = samples.astype(np.float32)
    return math.sqrt(float(np.dot(x, x)) / max(1, len(x)))


_ECHO_MARGIN = 10 ** (3 / 20)  # +3 dB over the echo return: the gate's headroom (µ-law noise, drift)
_ECHO_LEARN_FRAMES = 50  # the echo return is the peak seen over the last 1 s of our audio
_ECHO_JITTER = 3  # frames either side of the measured delay
_ECHO_HISTORY = 50  # the echo delay is measured over the last 1 s of both sides' levels
_ECHO_MIN_REF = 100.0  # below this (-50 dBFS) what we sent teaches nothing about the line's echo


@dataclass
class EchoGate:
    """How loud our own audio could be coming back now (see the module docstring)."""

    worst_return: float  # 10^(vad.echo_return_db / 20): the loudest echo the line is expected to return
    tail_frames: int  # how long what we sent may still come back (echo delay + both jitter buffers)
    sent: deque[float] = field(init=False)  # RMS of the frames we sent, newest last (1 s and the tail)
    heard: deque[float] = field(init=False)  # RMS of the caller's frames, newest last (the last 1 s)
    delay: int | None = None  # the line's echo delay in frames, once measured
    _found: int | None = None  # the previous measurement
    frames: int = 0
    # Caller level / our reference level of the last frames with a reference and no caller sound: their
    # peak is the line's echo return. Until 1 s of them was seen the worst return is assumed.
    seen: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.sent = deque(maxlen=_ECHO_HISTORY + self.tail_frames)
        self.heard = deque(maxlen=_ECHO_HISTORY)
        self.seen = deque(maxlen=_ECHO_LEARN_FRAMES)

    @classmethod
    def of(cls, echo_return_db: float | None, tail_ms: int, frame_ms: int = 20) -> EchoGate | None:
        if echo_return_db is None:
            return None
        return cls(10 ** (echo_return_db / 20), max(1, tail_ms // frame_ms))

    @property
    def ratio(self) -> float:
        """The line's echo return as measured (never above the worst expected)."""
        if len(self.seen) < _ECHO_LEARN_FRAMES:
            return self.worst_return
        return min(self.worst_return, max(self.seen))

    def add_sent(self, pcm: bytes) -> None:
        self.sent.append(frame_rms(np.frombuffer(pcm, dtype=np.int16)))

    def reference(self) -> float:
        """The loudest frame sent that may be coming back now: around the measured delay (+-3 frames: jitter
        buffers drift by 1-2 frames under load), or anywhere in the tail until it is measured."""
        n = len(self.sent)
        if self.delay is None:
            lo, hi = n - self.tail_frames, n
        else:
            lo, hi = n - 1 - self.delay - _ECHO_JITTER, n - self.delay + _ECHO_JITTER
        return max(itertools.islice(self.sent, max(lo, 0), max(hi, 0)), default=0.0)

    def threshold(self, ref: float) -> float:
        return ref * self.ratio * _ECHO_MARGIN

    def observe(self, rms: float, ref: float, caller_sound: bool) -> None:
        """Learn the line's echo return (and, every half second, its delay) from the caller's frames."""
        self.heard.append(rms)
        self.frames += 1
        if not caller_sound and ref >= _ECHO_MIN_REF:
            self.seen.append(rms / ref)
        if self.frames % 25 == 0 and len(self.heard) == _ECHO_HISTORY:
            found = _echo_delay(list(self.sent), list(self.heard), self.tail_frames)
            # A delay is taken once two measurements half a second apart agree (one frame of jitter).
            agreed = found is not None and self._found is not None and abs(found - self._found) <= 1
            self._found = found
            if agreed and found != self.delay:  # returns measured against the other reference do not apply
                self.delay = found
                self.seen.clear()


def _echo_delay(sent: list[float], heard: list[float], tail: int) -> int | None:
    """The lag (frames) at which the caller's level envelope follows ours: the echo delay, when the match
    is clear (correlation >= 0.85, over a second in which we sent sound most of the time); else None. Lag 0
    is not a line's echo (nothing comes back within the tick it was sent in)."""
    h = np.log1p(np.asarray(heard))
    best, lag = 0.85, None
    for d in range(1, tail):
        s = np.asarray(sent[len(sent) - len(heard) - d : len(sent) - d])
        if len(s) != len(h) or np.mean(s > _ECHO_MIN_REF) < 0.6 or h.std() < 1e-6:
            continue
        corr = float(np.corrcoef(np.log1p(s), h)[0, 1])
        if corr > best:
            best, lag = corr, d
    return lag


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
    echo: EchoGate | None = None  # None: the line is trusted to return none of our audio
    loud_frames: int = 0  # since the last turn ended: frames louder than any echo of ours
    gated_frames: int = 0  # since the last turn ended: frames loud, but no louder than our echo could be
    echo_turns: int = 0  # turns dropped as our own echo
    loud_since: int | None = None  # ms of the first frame over our echo since the last turn, when gated
    # Acoustic echo canceller (vad.echo_canceller): the caller's frames are cleaned of our echo before the
    # onset detector, the echo gate and the VAD see them. Its state (AEC3's filter, delay estimate, the
    # queue of sent frames awaiting their heard frame) is this call's, on the media thread.
    aec: EchoCanceller | None = None
    residue_frames: int = (
        0  # since the last turn ended: frames the canceller may have left our echo's residue in
    )

    def on_frame(self, pcm: bytes) -> None:
        """One clock tick of caller audio; b"" (no audio this tick) counts as silence."""
        if len(pcm) != self.segmenter.frame_samples * 2:
            pcm = bytes(self.segmenter.frame_samples * 2)
        index = self.frames
        self.frames += 1
        if self.recorder is not None:
            self._record(self.recorder.caller, pcm)  # as heard: echo and all
        if self.aec is not None:
            pcm = self.aec.near(pcm)
        samples = np.frombuffer(pcm, dtype=np.int16)
        sounding = self._sound(samples, index)
        for event in self.segmenter.process(samples):
            if isinstance(event, SpeechStart):
                self.speech_t = event.t
                self.emit(f.SpeechStarted(self.call_id, event.t))
            elif isinstance(event, TurnEnd):
                self.speech_t = None
                self.paused_end = None
                self.emit(self._turn_end(event))
            elif isinstance(event, TurnTooShort):
                self.speech_t = None
                self.paused_end = None
                self._turn_over()
                self.emit(f.TurnDropped(self.call_id, event.start, event.end))
            elif isinstance(event, SpeechPaused) and not self._echo_only():
                pcm = event.pcm.tobytes()
                self.emit(f.TurnPaused(self.call_id, event.start, event.end, pcm, event.pcm_start))
                self.paused_end = event.end
        self._maybe_resumed(sounding)
        if not sounding and self.speech_t is None:
            self.barged = False  # the next sound may interrupt the next utterance
        self._maybe_barge_in(sounding)

    def _sound(self, samples: np.ndarray, index: int) -> bool:
        """The onset detector's verdict on this frame, with the threshold raised over our own echo."""
        echo = self.echo
        if echo is None:
            sounding = self.onset.process(samples, index)
        else:
            ref = echo.reference()
            sounding = self.onset.process(samples, index, echo.threshold(ref))
            echo.observe(frame_rms(samples), ref, self.onset.loud)
        self.loud_frames += self.onset.loud
        self.gated_frames += self.onset.gated
        self.residue_frames += self.aec is not None and self.aec.active
        if self.gated_frames and self.onset.loud and self.loud_since is None:
            self.loud_since = index * self.frame_ms
        return sounding

    def _turn_over(self) -> None:
        self.loud_frames = self.gated_frames = self.residue_frames = 0
        self.loud_since = None

    def _echo_only(self) -> bool:
        """Everything loud since the last turn was no louder than our own echo could be; or, with the echo
        canceller, nothing was loud at all while its output could hold our echo's residue: AEC3 leaves our
        echo ~20 dB down, under the onset threshold but not under Silero, which is level-blind enough to
        make a turn of it (seen on the real echo call: a silent "caller" turn in the greeting's first 3 s)."""
        if self.loud_frames > 0:
            return False
        return (self.echo is not None and self.gated_frames > 0) or self.residue_frames > 0

    def _turn_end(self, event: TurnEnd) -> f.Frame:
        echo = self._echo_only()
        self._turn_over()
        if not echo:
            return _turn_ended(self.call_id, event)
        self.echo_turns += 1
        return f.TurnDropped(self.call_id, event.start, event.end)

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
            # lag-corrected only approximately), the earlier of the two when the sound had a gap. A turn
            # our echo opened dates nothing: the caller is timed from their first frame over the echo.
            start = min(onset_ms, self.speech_t if self.loud_since is None else self.loud_since)
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
        """A frame the clock sent, in order with the caller's frames (the worker queues both)."""
        if self.echo is not None:
            self.echo.add_sent(pcm)
        if self.aec is not None:
            self.aec.far(pcm)
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
