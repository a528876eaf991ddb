"""Turn taking for `sipbridge call`: when to speak our next line, and the timings the transcript shows.

Pure and I/O-free: the softphone feeds the other side's 20 ms frames (`bot_frame`), our microphone's in
interactive mode (`you_frame`) and the times our scripted lines really played (`played`); the dialogue answers
with typed events. Its clock is the call's media clock: frames received since the media came up, 20 ms each,
so every time printed is "seconds since the call was answered" as heard at our end.

The other side's turns come from audio/vad's segmenter (the one the workers run on callers): a turn ends
after `stop_hangover_ms` of silence, and then our next line starts. A side that says nothing for
`reply_timeout_ms` is reported and we go on, so a silent peer cannot hang the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from audio.vad import SpeechStart, TurnEnd, TurnSegmenter, TurnTooShort

FRAME_MS = 20
Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Line:
    """One of our scripted turns: its words when known (`--say`), else a label (the WAV's name)."""

    label: str
    pcm: Pcm = field(repr=False)  # at the call's clock rate
    words: str | None = None


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Speak:
    """Play line `index` now (the glue queues its audio; `played` reports when it really went out)."""

    index: int
    line: Line
    at_ms: int


@dataclass(frozen=True)
class BotStarted:
    """The other side started talking. `gap_ms`: the silence since our last turn ended (its response
    time), None when there was no turn of ours to answer; `over_you`: it started while we were talking."""

    at_ms: int
    gap_ms: int | None
    over_you: bool = False


@dataclass(frozen=True)
class BotSaid:
    """One turn of the other side, ready for ASR."""

    start_ms: int
    end_ms: int
    pcm: Pcm = field(repr=False)


@dataclass(frozen=True)
class YouSaid:
    """One turn of ours from the microphone (interactive mode), ready for ASR."""

    start_ms: int
    end_ms: int
    pcm: Pcm = field(repr=False)


@dataclass(frozen=True)
class BotSilent:
    """The other side said nothing for `waited_ms`; we go on."""

    waited_ms: int


@dataclass(frozen=True)
class DialogueDone:
    """Every line was said and answered (or waited for): time to hang up."""

    at_ms: int


Event = Speak | BotStarted | BotSaid | YouSaid | BotSilent | DialogueDone


# ------------------------------------------------------------------------------------------ dialogue


@dataclass
class DialogueState:
    frames: int = 0  # other side's frames seen: the clock
    next_line: int = 0
    speaking: int | None = None  # index of the line playing now
    listen_since: int = 0  # ms: since when we wait for the other side
    our_end: int | None = None  # ms: end of our last turn (scripted or from the microphone)
    gap_pending: bool = False  # the next BotStarted measures the gap after `our_end`
    bot_in_turn: bool = False
    bot_turns: int = 0
    finished: bool = False
    gaps_ms: list[int] = field(default_factory=list)


class Dialogue:
    """`lines` None: interactive (a person talks; we never speak or finish on our own)."""

    def __init__(
        self,
        lines: Sequence[Line] | None,
        bot_vad: TurnSegmenter,
        reply_timeout_ms: int,
        you_vad: TurnSegmenter | None = None,
    ) -> None:
        self.lines = list(lines) if lines is not None else None
        self.bot_vad = bot_vad
        self.you_vad = you_vad
        self.reply_timeout_ms = reply_timeout_ms
        self.state = DialogueState()

    @property
    def now_ms(self) -> int:
        return self.state.frames * FRAME_MS

    @property
    def bot_spoke(self) -> bool:
        return self.state.bot_turns > 0

    # -------------------------------------------------------------------------------------- inputs

    def bot_frame(self, pcm: Pcm) -> list[Event]:
        """One 20 ms frame from the other side (silence when none arrived this tick)."""
        self.state.frames += 1
        out: list[Event] = []
        for event in self.bot_vad.process(pcm):
            out += self._bot_event(event)
        return out + self._check_silence()

    def you_frame(self, pcm: Pcm) -> list[Event]:
        """One 20 ms frame of our microphone (interactive): our turns, and the gap after each."""
        assert self.you_vad is not None
        out: list[Event] = []
        for event in self.you_vad.process(pcm):
            if isinstance(event, TurnEnd):
                self.state.our_end = event.end
                self.state.gap_pending = True
                out.append(YouSaid(event.start, event.end, event.pcm))
        return out

    def played(self, index: int, start_ms: int, end_ms: int) -> list[Event]:
        """Line `index` went out from `start_ms` to `end_ms`: now we listen for the answer."""
        st = self.state
        if st.speaking != index:
            return []
        st.speaking = None
        st.our_end = end_ms
        st.gap_pending = not st.bot_in_turn  # a turn already under way is not an answer to this line
        st.listen_since = max(end_ms, self.now_ms)
        return []

    def hung_up(self) -> list[Event]:
        """The call ended: the other side's turn in progress (if any) still counts."""
        out: list[Event] = []
        for event in self.bot_vad.flush():
            out += self._bot_event(event)
        if self.you_vad is not None:
            for event in self.you_vad.flush():
                if isinstance(event, TurnEnd):
                    out.append(YouSaid(event.start, event.end, event.pcm))
        self.state.finished = True
        return out

    # ----------------------------------------------------------------------------------- internals

    def _bot_event(self, event: object) -> list[Event]:
        st = self.state
        if isinstance(event, SpeechStart):
            st.bot_in_turn = True
            if st.speaking is not None:
                return [BotStarted(event.t, None, over_you=True)]
            gap = event.t - st.our_end if st.gap_pending and st.our_end is not None else None
            st.gap_pending = False
            if gap is not None and gap < 0:  # its speech began before our line ended: it talked over us
                return [BotStarted(event.t, None, over_you=True)]
            if gap is not None:
                st.gaps_ms.append(gap)
            return [BotStarted(event.t, gap)]
        if isinstance(event, TurnTooShort):
            st.bot_in_turn = False
            return []
        if isinstance(event, TurnEnd):
            st.bot_in_turn = False
            st.bot_turns += 1
            said: list[Event] = [BotSaid(event.start, event.end, event.pcm)]
            if st.speaking is None and not st.finished:
                return said + self._advance()
            return said
        return []

    def _check_silence(self) -> list[Event]:
        st = self.state
        if st.finished or st.speaking is not None or st.bot_in_turn or self.lines is None:
            return []
        waited = self.now_ms - st.listen_since
        if waited < self.reply_timeout_ms:
            return []
        return [BotSilent(waited), *self._advance()]

    def _advance(self) -> list[Event]:
        """The other side answered (or stayed silent): say the next line, or finish after the last."""
        st = self.state
        st.listen_since = self.now_ms
        if self.lines is None:
            return []
        if st.next_line >= len(self.lines):
            st.finished = True
            return [DialogueDone(self.now_ms)]
        index = st.next_line
        st.next_line += 1
        st.speaking = index
        return [Speak(index, self.lines[index], self.now_ms)]
