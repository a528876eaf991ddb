"""Acoustic echo cancellation for a phone line: the far end sends our own audio back (a hybrid's echo,
-10 to -20 dB, 20-200 ms late plus both jitter buffers); the canceller subtracts it from what we hear.

The canceller is WebRTC's AEC3 (adaptive filter + delay estimator + residual suppressor), which finds the
line's echo delay itself: the caller only has to hand it, every 20 ms, the frame we sent (`far`) before the
frame we heard (`near`) in the order they happened. `far` frames are queued and paired one-to-one with the
next `near` frames, so a tick whose two frames arrive out of order is still paired right. AEC3's delay search
ends near 500 ms at 8 kHz; a jitter buffer at its cap brings the echo back later, so the delay is measured
here too (`EchoDelay`) and past that reach AEC3 is handed an older sent frame (`reference_shift`).

`webrtc`: pywebrtc-audio (Apache-2.0, ~1 MB wheel, numpy its only dependency, C++ with the GIL released).
livekit.rtc.AudioProcessingModule wraps the same AEC3 (same ERLE and CPU, bench/echo_canceller.py) in a 28 MB
FFI library called through protobuf requests, with protobuf and aiofiles as dependencies: not worth it here.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = ["CANCELLERS", "EchoCanceller", "make_echo_canceller"]

CANCELLERS = ("none", "webrtc")
# Sent frames waiting for their heard frame. The conference clock hands the worker one of each per tick, so
# this holds 0-1; a longer queue (a stalled caller stream) would shift the reference late, so it is capped.
_MAX_QUEUED = 10
_TAIL = 25  # frames (500 ms): our audio's echo is back within this (line delay + both jitter buffers)
_BOT_AUDIBLE = 1000.0  # -30 dBFS: a frame of ours whose -10..-20 dB echo would be over _LOUD
_LOUD = 184.0  # -45 dBFS: sipbridge's onset threshold (OnsetDetector.min_rms)
_WINDOW = 100  # frames (2 s) of the bot audible lately per echo-free decision
# A hybrid's echo comes back at least 6 dB down (-10 to -20 dB on real lines): a heard frame louder than half
# the loudest frame we sent within the echo's tail cannot be our echo alone (the Geigel test of line-echo
# cancellers). Held for _HOLD frames, as a word's quieter syllables dip under the line: 300 ms kept 66 % of
# the loud frames of a greeting 6 dB under our opening (AEC3 held the rest down; the flow test's voicemail
# came out as "See my message." and was missed in ~1 of 3 runs), 1 s keeps 94 % (tests/audio/test_echo.py).
# The hold only starts on a frame no echo of ours can be, so an echo alone never opens it.
_DOUBLE_TALK = 0.5
_HOLD = 50  # frames (1 s)
# The echo's delay, measured by matching the level envelopes of what we sent and what we heard (as
# sipbridge's EchoGate does): a jitter buffer grown to its 500 ms cap, plus the line and the far end's buffer,
# brings our audio back later than `_TAIL`, when the frames sent within the tail may be a pause.
_DELAY_HISTORY = 50  # frames (1 s) of both sides' levels matched per measurement
_MAX_DELAY = 60  # frames (1.2 s): the longest echo delay looked for
_DELAY_EVERY = 25  # frames (500 ms) between measurements; two in a row must agree
_DELAY_JITTER = 3  # frames either side of the measured delay (jitter buffers drift by 1-2 frames)
_DELAY_MATCH = 0.85  # the least correlation of the two envelopes taken as a match
_MIN_REF = 100.0  # -50 dBFS: a frame we sent quieter than this teaches nothing about the line's echo
# AEC3 at 8 kHz cancels an echo up to ~500 ms late and none from ~560 ms on (its delay search ends there;
# the stream-delay hint does not move it). Past `_AEC_REACH` the frame we hand it is an older one, so that
# the delay left for it to find is `_AEC_LAG`.
_AEC_REACH = 25  # frames (500 ms)
_AEC_LAG = 10  # frames (200 ms)
# After the reference moves, AEC3 takes a few hundred ms to find the echo again and lets it through meanwhile
# (on real calls the bot was cut by its own echo, 600-800 ms late, 0.1-0.7 s after the move). For a second a
# heard frame that is not double talk (the caller louder than half of what we sent at the echo's delay) is
# taken to be our echo and muted.
_SETTLE = 50  # frames (1 s)


class EchoCanceller(Protocol):
    def far(self, pcm: bytes) -> None:
        """A frame we sent (int16 mono), in send order."""

    def near(self, pcm: bytes) -> bytes:
        """A frame we heard (int16 mono, same length); returns it with our echo removed."""

    @property
    def active(self) -> bool:
        """The last `near` frame may hold a residue of our echo: the bot was audible within the echo's tail
        and the line is not known to be echo-free."""


class _Paired:
    """Pairs each heard frame with the oldest sent frame not yet used (silence when none was sent)."""

    def __init__(self) -> None:
        self._far: deque[bytes] = deque(maxlen=_MAX_QUEUED)

    def far(self, pcm: bytes) -> None:
        self._far.append(pcm)

    def _take_far(self, n: int) -> np.ndarray:
        pcm = self._far.popleft() if self._far else b""
        if len(pcm) != 2 * n:
            return np.zeros(n, np.int16)
        return np.frombuffer(pcm, np.int16)


@dataclass
class EchoPresence:
    """Does this line send our audio back loud enough to matter? Decided once, from the bot's speech.

    AEC3 cannot know a line is echo-free until it has heard a few seconds of our audio not come back, and
    until then it treats a caller talking over the bot as possible echo: on an echo-free line their speech
    came out ~10 dB down, the onset ~680 ms late (bench/echo_canceller.py). So while the bot has been
    audible lately (`_BOT_AUDIBLE` within the last `_TAIL` frames: any echo of it would be back by now) we
    count how often the caller's side was loud at all (the onset detector's -45 dBFS). A line whose echo
    could trigger the VAD is loud in most such frames; after `_WINDOW` of them loud in under 5 %, the line is
    echo-free and the canceller steps aside for the rest of the call. A caller talking over the bot in that
    window only postpones the decision (the next window decides)."""

    sent: deque[float] = field(default_factory=lambda: deque(maxlen=_TAIL))
    audible: int = 0  # frames in this window with the bot audible lately
    loud: int = 0  # ... of which the heard frame was loud
    echo_free: bool = False

    def observe(self, far: np.ndarray, near: np.ndarray) -> None:
        self.sent.append(_rms(far))
        if max(self.sent) < _BOT_AUDIBLE:
            return
        self.audible += 1
        self.loud += _rms(near) > _LOUD
        if self.audible >= _WINDOW:
            self.echo_free = self.loud < 0.05 * self.audible
            self.audible = self.loud = 0


@dataclass
class DoubleTalk:
    """Is the caller talking over us? AEC3's suppressor cannot tell a caller from echo until it has learnt
    the line, so a caller who talks over the bot's first seconds (an answering machine's greeting over our
    opening sentence) came out ~10 dB down and cut to pieces: turns of empty text, the message unheard. While
    this says yes, the heard frame goes on as it came (the canceller still learns from it): the caller's
    voice dominates it, and what echo it holds is under the caller, not a turn of its own."""

    hold: int = 0

    def update(self, near_rms: float, far_max: float) -> bool:
        if near_rms > _LOUD and near_rms > _DOUBLE_TALK * far_max:
            self.hold = _HOLD
        elif self.hold:
            self.hold -= 1
        return self.hold > 0


@dataclass
class EchoDelay:
    """The line's echo delay (frames, `None` until measured) and the loudest frame we sent that may be
    coming back now. AEC3 estimates the delay too, but pywebrtc-audio does not expose it."""

    sent: deque[float] = field(default_factory=lambda: deque(maxlen=_DELAY_HISTORY + _MAX_DELAY))
    heard: deque[float] = field(default_factory=lambda: deque(maxlen=_DELAY_HISTORY))
    delay: int | None = None
    found: int | None = None  # the previous measurement
    frames: int = 0

    def observe(self, far_rms: float, near_rms: float) -> None:
        """One tick's sent and heard (raw, before cancelling) frame levels."""
        self.sent.append(far_rms)
        self.heard.append(near_rms)
        self.frames += 1
        if self.frames % _DELAY_EVERY or len(self.heard) < _DELAY_HISTORY:
            return
        found = envelope_delay(np.asarray(self.sent), np.asarray(self.heard))
        # Two measurements 500 ms apart must agree (one frame of jitter): one match can be a coincidence of
        # two rhythms. A failed measurement (the caller talking, the bot silent) keeps the delay known.
        if found is not None and self.found is not None and abs(found - self.found) <= 1:
            self.delay = found
        self.found = found

    def far_max(self) -> float:
        """The loudest frame sent within the tail (`_TAIL`, as before the delay was measured) or around the
        measured delay. Kept for the tail too: a jitter buffer that grows under load moves the echo later
        before a measurement follows, and within the tail the level test was already safe."""
        n = len(self.sent)
        loud = max(itertools.islice(self.sent, max(0, n - _TAIL), n), default=0.0)
        if self.delay is None:
            return loud
        lo, hi = n - 1 - self.delay - _DELAY_JITTER, n - self.delay + _DELAY_JITTER
        return max(loud, max(itertools.islice(self.sent, max(lo, 0), max(hi, 0)), default=0.0))


def envelope_delay(sent: np.ndarray, heard: np.ndarray) -> int | None:
    """The lag (frames, 1.._MAX_DELAY) at which the heard level envelope follows the sent one (both newest
    last, `sent` the longer), when the match is clear: correlation of the log levels >= `_DELAY_MATCH` over
    a window in which we sent sound most of the time (our silence matches any quiet line). Lag 0 is not a
    line's echo: nothing comes back within the tick it was sent in."""
    h = np.log1p(heard)
    if h.std() < 1e-6:
        return None
    lags = np.arange(1, min(_MAX_DELAY, len(sent) - len(heard)) + 1)
    if not len(lags):
        return None
    # Row i: the sent levels `lags[i]` frames before the heard ones (the windows ending lag frames back).
    windows = np.lib.stride_tricks.sliding_window_view(sent, len(heard))[len(sent) - len(heard) - lags]
    s = np.log1p(windows)
    sc = s - s.mean(axis=1, keepdims=True)
    hc = h - h.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (sc @ hc) / (np.linalg.norm(sc, axis=1) * np.linalg.norm(hc))
    corr[(np.mean(windows > _MIN_REF, axis=1) < 0.6) | ~np.isfinite(corr)] = -1.0
    best = int(np.argmax(corr))
    return int(lags[best]) if corr[best] >= _DELAY_MATCH else None


def reference_shift(shift: int, delay: int | None) -> int:
    """How many ticks older than its heard frame the sent frame handed to AEC3 is: 0 while the echo is in
    AEC3's reach, else the measured delay less `_AEC_LAG`. A shift is kept while the delay it leaves AEC3
    stays in reach: each change makes AEC3 find the delay again (a few loud frames)."""
    if delay is None or 2 <= delay - shift <= _AEC_REACH:
        return shift
    return delay - _AEC_LAG if delay > _AEC_REACH else 0


def _rms(x: np.ndarray) -> float:
    y = x.astype(np.float32)
    return math.sqrt(float(np.dot(y, y)) / max(1, len(y)))


class WebRtcEchoCanceller(_Paired):
    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        from pywebrtc_audio import AudioProcessor

        # AudioProcessor, not pywebrtc's EchoCanceller (16/32/48 kHz only): it runs AEC3 at 8 kHz too. At
        # 8 kHz AEC3's band split passes up to ~3.2 kHz (-5.5 dB at 3.4 kHz): a phone line's band. Running it
        # at 16 kHz (FIR both ways) cost 2.5x the CPU and won nothing: during double talk AEC3's suppressor,
        # not the band, holds back a word's first fricative (bench/echo_canceller.py, docs/PERFORMANCE.md).
        self._aec = AudioProcessor(sample_rate=sample_rate, num_channels=1, echo_cancellation=True)
        self.presence = EchoPresence()
        self.double_talk = DoubleTalk()
        self.echo_delay = EchoDelay()
        # The frames we sent, newest last, for AEC3's reference when the echo is later than its reach.
        self._sent: deque[np.ndarray] = deque(maxlen=_MAX_DELAY + 1)
        self.shift = 0
        self.settling = 0

    @property
    def active(self) -> bool:
        # The bot audible within the tail or around the measured delay: a late echo's residue is ours too.
        return not self.presence.echo_free and self.echo_delay.far_max() >= _BOT_AUDIBLE

    def near(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, np.int16)
        far = self._take_far(len(x))
        if self.presence.echo_free:
            return pcm
        self.presence.observe(far, x)
        near_rms = _rms(x)
        self.echo_delay.observe(_rms(far), near_rms)
        out = self._aec.process(x, self._reference(far))
        if self.double_talk.update(near_rms, self.echo_delay.far_max()):
            return pcm
        if self.settling:
            return bytes(len(pcm))
        return out.tobytes()

    def _reference(self, far: np.ndarray) -> np.ndarray:
        """The sent frame AEC3 gets with this tick's heard frame: this tick's, or the one `shift` ticks older
        when the echo is later than AEC3's reach."""
        self._sent.append(far)
        shift = reference_shift(self.shift, self.echo_delay.delay)
        if shift != self.shift:
            self.settling = _SETTLE
        elif self.settling:
            self.settling -= 1
        self.shift = shift
        return self._sent[-1 - shift] if shift < len(self._sent) else np.zeros(len(far), np.int16)


def make_echo_canceller(kind: str, sample_rate: int) -> EchoCanceller | None:
    """The canceller named in config (`vad.echo_canceller`); None for "none"."""
    if kind == "none":
        return None
    if kind == "webrtc":
        return WebRtcEchoCanceller(sample_rate)
    raise ValueError(f"unknown echo canceller {kind!r} (one of {', '.join(CANCELLERS)})")
