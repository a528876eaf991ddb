"""The bot's side of a call in the worker: queued utterances, played one 20 ms frame per clock tick.

Three threads touch a `PlaybackQueue`: the IPC reader pushes audio, PJSIP's media clock thread pops one frame
per tick (`pop` must stay a few microseconds: it only moves bytes under a lock), and the worker's media thread
drops interruptible audio on barge-in. All state sits behind one lock; no call into it blocks.

Utterances play in id order. An utterance starts once `start_frames` frames of it are queued (the jitter
margin; or once it has ended, if it is shorter): the engine's chunks reach the worker with jitter (the
supervisor's event loop, IPC, the engine's own start), and starting on the first frame made the second one
late. Silence before that start is reply latency, measured on the wire, not an underrun. Once started, a tick
that finds the utterance's audio has not caught up (the engine slower than real time, or a stall longer than
the margin) plays silence, counted as an underrun; silence between utterances is not an underrun.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class PlaybackItem:
    id: int
    interruptible: bool
    frames: deque[bytes] = field(default_factory=deque)
    partial: bytearray = field(default_factory=bytearray)
    ended: bool = False  # EndOfUtterance seen: no more audio will come
    started_tick: int | None = None  # the tick of its first frame out
    started_at: float = 0.0  # time.monotonic() of its first frame out
    underruns: int = 0


@dataclass(frozen=True)
class PlaybackDone:
    """An utterance left the queue: played out, or cut."""

    utterance: int
    start_tick: int
    end_tick: int
    interrupted: bool
    underruns: int
    started_at: float = 0.0


@dataclass
class PlaybackQueue:
    frame_bytes: int
    start_frames: int = (
        1  # the jitter margin: frames queued before an utterance starts (media.playback_margin_ms)
    )
    silence: bytes = b""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queue: deque[PlaybackItem] = field(default_factory=deque)
    _by_id: dict[int, PlaybackItem] = field(default_factory=dict)
    _cancelled: set[int] = field(default_factory=set)
    _finished: list[PlaybackDone] = field(default_factory=list)
    # AMD's provisional start withdrawn (outbound): every push is dropped until the supervisor says from
    # which utterance id audio is live again (`resume`); ids below `_live_from` stay dead.
    _withdrawn: bool = False
    _live_from: int = 0
    tick: int = 0
    underruns: int = 0
    frames_played: int = 0

    def __post_init__(self) -> None:
        self.silence = bytes(self.frame_bytes)

    # ---------------------------------------------------------------------------- IPC reader thread

    def push(self, utterance: int, interruptible: bool, pcm: bytes) -> None:
        with self._lock:
            utt = self._get(utterance, interruptible)
            if utt is None:
                return
            utt.partial += pcm
            n = self.frame_bytes
            whole = len(utt.partial) // n * n
            for pos in range(0, whole, n):
                utt.frames.append(bytes(utt.partial[pos : pos + n]))
            del utt.partial[:whole]

    def end(self, utterance: int) -> None:
        with self._lock:
            utt = self._get(utterance, True)
            if utt is None:
                return
            if utt.partial:
                utt.frames.append(bytes(utt.partial) + bytes(self.frame_bytes - len(utt.partial)))
                utt.partial.clear()
            utt.ended = True

    def _get(self, utterance: int, interruptible: bool) -> PlaybackItem | None:
        if self._withdrawn or utterance < self._live_from:
            return None  # sent before the supervisor learnt of a withdrawal (AMD provisional start)
        if utterance in self._cancelled:
            return None  # audio still in flight when the utterance was cut
        utt = self._by_id.get(utterance)
        if utt is None:
            utt = PlaybackItem(utterance, interruptible)
            self._by_id[utterance] = utt
            self._queue.append(utt)
        return utt

    # -------------------------------------------------------------------------- media clock thread

    def pop(self) -> bytes:
        """The next frame to send; silence when nothing is due."""
        with self._lock:
            self.tick += 1
            while self._queue:
                utt = self._queue[0]
                if utt.started_tick is None:
                    if len(utt.frames) < self.start_frames and not utt.ended:
                        return self.silence  # the margin is still filling: latency, not an underrun
                    utt.started_tick = self.tick
                if utt.frames:
                    if not utt.started_at:
                        utt.started_at = time.monotonic()
                    self.frames_played += 1
                    return utt.frames.popleft()
                if utt.ended:
                    self._retire(utt, interrupted=False)
                    continue
                utt.underruns += 1
                self.underruns += 1
                return self.silence
            return self.silence

    def _retire(self, utt: PlaybackItem, *, interrupted: bool) -> None:
        self._queue.remove(utt)
        del self._by_id[utt.id]
        start = utt.started_tick if utt.started_tick is not None else self.tick
        self._finished.append(
            PlaybackDone(utt.id, start, self.tick, interrupted, utt.underruns, utt.started_at)
        )

    # -------------------------------------------------------------------------------- media thread

    def interruptible_playing(self) -> bool:
        """True while the utterance now at the head is interruptible and has audio queued or coming."""
        with self._lock:
            return bool(self._queue) and self._queue[0].interruptible

    def cancel(
        self, utterances: list[int] | None = None, *, interruptible_only: bool = False
    ) -> tuple[list[int], int]:
        """Drop utterances (all queued ones when `utterances` is None); returns their ids, frames dropped."""
        with self._lock:
            if utterances is None:
                targets = [u for u in self._queue if u.interruptible or not interruptible_only]
            else:
                targets = [self._by_id[i] for i in utterances if i in self._by_id]
                self._cancelled.update(utterances)
            dropped = 0
            for utt in targets:
                dropped += len(utt.frames)
                self._cancelled.add(utt.id)
                self._retire(utt, interrupted=True)
            return [u.id for u in targets], dropped

    def withdraw(self) -> tuple[list[int], int]:
        """AMD withdrew its provisional "human": nothing more goes out (every queued utterance is cut, as
        interrupted) and every push is dropped until `resume`: the supervisor's audio still on its way
        belongs to the withdrawn start. Returns the ids cut and the frames dropped."""
        with self._lock:
            self._withdrawn = True
        return self.cancel()

    def resume(self, live_from: int) -> None:
        """The supervisor has taken the withdrawn utterances back: ids from `live_from` on play again."""
        with self._lock:
            self._withdrawn = False
            self._live_from = max(self._live_from, live_from)

    def take_finished(self) -> list[PlaybackDone]:
        with self._lock:
            done, self._finished = self._finished, []
            return done
