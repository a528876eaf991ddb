"""Turn segmentation: per-frame VAD decisions in, caller turns out.

One :class:`TurnSegmenter` per call direction. Feed it the caller's 20 ms int16 frames at the call rate; it
returns events:

* :class:`SpeechStart` once ``start_hangover_ms`` of consecutive speech has been seen (``t`` is when that
  speech *began*, so it is emitted ``start_hangover_ms`` after ``t``);
* :class:`TurnEnd` once ``stop_hangover_ms`` of non-speech follows, or when the turn reaches
  ``max_turn_ms``. ``end`` is the end of the last speech frame, so for a silence-ended turn
  ``end == time the event was emitted - stop_hangover_ms`` (rounded up to whole frames). ``pcm`` holds the
  samples from ``pcm_start`` to ``end``: ``preroll_ms`` of audio before ``start`` (less only at the very
  start of the stream), so a soft first syllable the classifier scored below threshold is still there for
  ASR. Times measured inside ``pcm`` (ASR word timings) are from ``pcm_start``;
* :class:`TurnTooShort` instead of TurnEnd when the turn was shorter than ``min_turn_ms`` (a cough, a click,
  a noise burst): a consumer that paused playback on SpeechStart resumes it;
* :class:`SpeechPaused` (only with ``pause_ms`` set) once ``pause_ms`` of non-speech follows speech inside a
  turn: the turn *so far*, exactly what TurnEnd will carry if the caller says nothing more. A consumer can
  start the slow work (ASR) during the rest of the hangover and keep the result when a TurnEnd with the same
  ``start``/``end`` follows; speech after the pause makes the next TurnEnd's ``end`` later (and a later pause
  sends another SpeechPaused).

All times are integer milliseconds from the first frame of the stream, on 20 ms frame boundaries.

A classifier decides late: Silero's probability rises a window or two after speech begins and stays up a
little after it ends. Each backend states that lag (``onset_lag_ms``/``offset_lag_ms``, measured by
bench/vad_quality.py) and the segmenter moves ``start`` and ``end`` back by it, keeping pre-roll frames so
``pcm`` covers [start, end) plus ``preroll_ms`` before it. The silence needed to close a turn is counted from
the corrected ``end``, so ``TurnEnd`` is still emitted exactly ``stop_hangover_ms`` after ``end``.

The Silero backend uses hysteresis as Silero's own iterator does: a turn starts at ``threshold`` and
continues while the probability stays above ``threshold - 0.15``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from audio.vad.backends import FrameClassifier, make_classifier

__all__ = [
    "SegmenterState",
    "SpeechPaused",
    "SpeechStart",
    "TurnEnd",
    "TurnSegmenter",
    "TurnTooShort",
    "VadEvent",
    "VadSettings",
    "make_segmenter",
]

_HYSTERESIS = 0.15  # Silero's VADIterator ends speech at threshold - 0.15; same here


@dataclass(frozen=True)
class VadSettings:
    """Mirrors the ``vad`` section of the YAML config (docs/AUDIO.md explains the defaults)."""

    backend: str = "silero"  # "silero" | "webrtc"
    gate: bool = False  # silero only: run the model only around what webrtcvad calls speech (GatedSilero)
    aggressiveness: int = 2  # webrtc only, 0 (lenient) .. 3 (strict)
    threshold: float = 0.5  # silero only, speech probability 0..1
    start_hangover_ms: int = 60  # speech needed before SpeechStart
    stop_hangover_ms: int = 500  # silence that ends a turn
    min_turn_ms: int = 200  # shorter turns are dropped as noise
    max_turn_ms: int = 30000  # a turn this long is ended by force
    pause_ms: int | None = None  # silence inside a turn that sends SpeechPaused; None: never
    preroll_ms: int = 200  # audio kept in a turn's pcm before its (lag-corrected) start

    def __post_init__(self) -> None:
        if self.backend not in ("silero", "webrtc"):
            raise ValueError(f"vad.backend must be 'silero' or 'webrtc', got {self.backend!r}")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"vad.aggressiveness must be 0..3, got {self.aggressiveness}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"vad.threshold must be in (0, 1), got {self.threshold}")
        for name in ("start_hangover_ms", "stop_hangover_ms", "min_turn_ms", "preroll_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"vad.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_turn_ms <= self.min_turn_ms:
            raise ValueError("vad.max_turn_ms must be greater than vad.min_turn_ms")
        if self.pause_ms is not None and not 0 <= self.pause_ms < self.stop_hangover_ms:
            raise ValueError(f"vad pause_ms must be in [0, stop_hangover_ms), got {self.pause_ms}")


@dataclass(frozen=True)
class SpeechStart:
    t: int  # ms: start of the first frame of the speech run that opened the turn


@dataclass(frozen=True)
class TurnEnd:
    start: int  # ms, as SpeechStart.t
    end: int  # ms: end of the last speech frame
    pcm: npt.NDArray[np.int16] = field(repr=False)  # samples [pcm_start, end) at the stream's rate
    reason: Literal["silence", "max_turn", "flush"] = "silence"
    pcm_start: int | None = None  # ms of pcm's first sample (start - pre-roll); None: same as start

    @property
    def preroll_ms(self) -> int:
        return self.start - (self.start if self.pcm_start is None else self.pcm_start)


@dataclass(frozen=True)
class TurnTooShort:
    start: int
    end: int


@dataclass(frozen=True)
class SpeechPaused:
    start: int  # ms, as TurnEnd.start
    end: int  # ms: end of the last speech frame so far
    pcm: npt.NDArray[np.int16] = field(repr=False)  # samples [pcm_start, end), as TurnEnd.pcm would hold
    pcm_start: int | None = None  # as TurnEnd.pcm_start


VadEvent = SpeechStart | TurnEnd | TurnTooShort | SpeechPaused
_NONE: tuple[VadEvent, ...] = ()


@dataclass
class SegmenterState:
    """Everything that changes from frame to frame; ``reset`` replaces it whole."""

    frame_index: int = 0  # frames seen so far
    onset: list[npt.NDArray[np.int16]] = field(default_factory=list)  # current speech run while idle
    # The frames just before the speech run, kept for the onset-lag correction (bounded by maxlen).
    preroll: deque[npt.NDArray[np.int16]] = field(default_factory=deque)
    in_turn: bool = False
    turn_start: int = 0  # frame index of the turn's first speech frame
    pcm_start: int = 0  # frame index of turn_frames[0]: turn_start minus the pre-roll kept
    turn_frames: list[npt.NDArray[np.int16]] = field(default_factory=list)  # every frame since pcm_start
    last_speech: int = 0  # frame index of the turn's latest speech frame
    silence: int = 0  # consecutive non-speech frames inside the turn
    paused: bool = False  # SpeechPaused was sent for the current silence run


class TurnSegmenter:
    """Endpointer over any :class:`FrameClassifier`; frames must all be ``frame_ms`` long."""

    def __init__(
        self, classifier: FrameClassifier, settings: VadSettings, sample_rate: int, frame_ms: int = 20
    ) -> None:
        if classifier.sample_rate != sample_rate:
            raise ValueError(f"classifier runs at {classifier.sample_rate} Hz, stream is {sample_rate} Hz")
        self.classifier = classifier
        self.settings = settings
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        # Hangovers in whole frames, rounded up, so "at least that long" holds.
        self._start_frames = max(1, math.ceil(settings.start_hangover_ms / frame_ms))
        self._stop_frames = max(1, math.ceil(settings.stop_hangover_ms / frame_ms))
        self._max_frames = max(1, math.ceil(settings.max_turn_ms / frame_ms))
        pause = settings.pause_ms
        self._pause_frames = None if pause is None else max(1, math.ceil(pause / frame_ms))
        self._onset_lag = round(classifier.onset_lag_ms / frame_ms)
        self._preroll = math.ceil(settings.preroll_ms / frame_ms)  # whole frames, "at least that long"
        self._offset_lag = min(round(classifier.offset_lag_ms / frame_ms), self._stop_frames - 1)
        self._on = settings.threshold
        self._off = max(0.01, settings.threshold - _HYSTERESIS)
        self.state = self._fresh_state()

    def _fresh_state(self) -> SegmenterState:
        return SegmenterState(preroll=deque(maxlen=max(1, self._onset_lag + self._preroll)))

    def reset(self) -> None:
        """Forget the stream: time restarts at 0, any open turn is discarded, the classifier is reset."""
        self.state = self._fresh_state()
        self.classifier.reset()

    @property
    def now_ms(self) -> int:
        """Time at the end of the last frame processed."""
        return self.state.frame_index * self.frame_ms

    def process(self, frame: npt.NDArray[np.int16]) -> tuple[VadEvent, ...]:
        """Classify one frame and return the events it causes (usually none)."""
        if frame.shape != (self.frame_samples,) or frame.dtype != np.int16:
            raise ValueError(
                f"expected {self.frame_samples} int16 samples ({self.frame_ms} ms at {self.sample_rate} Hz), "
                f"got {frame.dtype} {frame.shape}"
            )
        st = self.state
        i = st.frame_index
        st.frame_index += 1
        p = self.classifier.speech_prob(frame)

        if not st.in_turn:
            if p < self._on:
                if st.onset:  # a run too short to start a turn becomes pre-roll
                    st.preroll.extend(st.onset)
                    st.onset.clear()
                st.preroll.append(frame)
                return _NONE
            st.onset.append(frame)
            if len(st.onset) < self._start_frames:
                return _NONE
            # Move the start back by the onset lag, as far as the stream and the pre-roll allow; the pcm
            # starts `preroll_ms` before that (ASR hears the soft onset the classifier scored low).
            back = min(self._onset_lag, len(st.preroll)) if self._onset_lag else 0
            kept = min(back + self._preroll, len(st.preroll))
            st.in_turn = True
            st.turn_start = i - len(st.onset) + 1 - back
            st.pcm_start = st.turn_start - (kept - back)
            st.turn_frames = [*list(st.preroll)[len(st.preroll) - kept :], *st.onset]
            st.onset = []
            st.preroll.clear()
            st.last_speech = i
            st.silence = 0
            return (SpeechStart(t=st.turn_start * self.frame_ms),)

        st.turn_frames.append(frame)
        if p >= self._off:
            st.last_speech = i
            st.silence = 0
            st.paused = False
        else:
            st.silence += 1
            # Silence is counted from the lag-corrected end, so the event comes stop_hangover after it.
            if st.silence + self._offset_lag >= self._stop_frames:
                return (self._close("silence"),)
        if i + 1 - st.turn_start >= self._max_frames:
            return (self._close("max_turn"),)
        if (
            self._pause_frames is not None
            and not st.paused
            and st.silence > 0
            and st.silence + self._offset_lag >= self._pause_frames
        ):
            st.paused = True
            start, end, frames = self._span(self._offset_lag)
            if end - start >= self.settings.min_turn_ms:
                pcm_start = st.pcm_start * self.frame_ms
                return (SpeechPaused(start=start, end=end, pcm=np.concatenate(frames), pcm_start=pcm_start),)
        return _NONE

    def flush(self) -> tuple[VadEvent, ...]:
        """End of stream (hang-up): close an open turn. The segmenter is then reset."""
        events: tuple[VadEvent, ...] = (self._close("flush"),) if self.state.in_turn else _NONE
        self.reset()
        return events

    def _span(self, lag: int) -> tuple[int, int, list[npt.NDArray[np.int16]]]:
        """The open turn's start and end (ms) and frames (from pcm_start), its end corrected back by ``lag``
        frames but never to before its start."""
        st = self.state
        last = max(st.last_speech - lag, st.turn_start)
        frames = st.turn_frames[: last - st.pcm_start + 1]
        return st.turn_start * self.frame_ms, (last + 1) * self.frame_ms, frames

    def _close(self, reason: Literal["silence", "max_turn", "flush"]) -> VadEvent:
        st = self.state
        # A max_turn cut happens while the caller may still be talking, so it keeps every frame up to the cut.
        start, end, frames = self._span(0 if reason == "max_turn" else self._offset_lag)
        st.in_turn = False
        st.turn_frames = []
        st.silence = 0
        st.paused = False
        if end - start < self.settings.min_turn_ms:
            return TurnTooShort(start=start, end=end)
        pcm = np.concatenate(frames)
        return TurnEnd(start=start, end=end, pcm=pcm, reason=reason, pcm_start=st.pcm_start * self.frame_ms)


def make_segmenter(settings: VadSettings, sample_rate: int, frame_ms: int = 20) -> TurnSegmenter:
    """A segmenter with a fresh classifier of the configured backend, for one stream at ``sample_rate``."""
    classifier = make_classifier(
        settings.backend, sample_rate, aggressiveness=settings.aggressiveness, gate=settings.gate
    )
    return TurnSegmenter(classifier, settings, sample_rate, frame_ms)
