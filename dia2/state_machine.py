"""The text-side state machine: turns the model's per-frame action (stay / new word) into the two
text tokens of the next frame.

Dia2 reads text as a queue of word entries. On a "new word" frame the next entry is popped, its
word pieces are put on the main stream one per frame, and (with ``second_stream_ahead`` = n) the
pieces of the word n entries ahead are put on the second stream. Padding rules force a minimum and a
maximum number of frames per word. Semantics follow upstream exactly; the values upstream hard-codes
(padding budget 6, initial padding from the generation options) are parameters here with the same
defaults.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Entry", "MachineState", "StateMachine", "StepOutput", "TokenIds"]


@dataclass(frozen=True)
class TokenIds:
    """Control ids the runtime needs (text side from config + tokenizer, audio side from config)."""

    new_word: int
    pad: int
    bos: int
    zero: int
    spk1: int
    spk2: int
    audio_pad: int
    audio_bos: int
    ungenerated: int = -2  # fill of never-written audio-buffer cells; must never reach a table


@dataclass(frozen=True)
class Entry:
    """One word (or a pause when ``tokens`` is empty): its pieces and the frames it must hold."""

    tokens: tuple[int, ...]
    text: str
    padding: int = 0


@dataclass
class MachineState:
    entries: deque[Entry]
    padding_budget: int
    forced_padding: int
    pending_tokens: deque[int] = field(default_factory=deque)
    lookahead_tokens: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumption_times: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)
    # Streaming text in (our extension, off for a whole script): while more words are promised, an
    # empty queue means "wait" (pad, no end of script) instead of "done".
    awaiting_text: bool = False

    def tokens_ahead(self, count: int) -> tuple[int, ...]:
        """Pieces of the ``count``-th upcoming entry that has any (pauses are skipped)."""
        seen = 0
        for entry in self.entries:
            if entry.tokens:
                seen += 1
                if seen == count:
                    return entry.tokens
        return ()


@dataclass(frozen=True)
class StepOutput:
    main: int
    second: int
    consumed_new_word: bool


class StateMachine:
    def __init__(
        self,
        ids: TokenIds,
        *,
        second_stream_ahead: int,
        max_padding: int = 6,
        initial_padding: int = 2,
    ) -> None:
        self.ids = ids
        self.second_stream_ahead = second_stream_ahead
        self.max_padding = max_padding
        self.initial_padding = initial_padding

    def new_state(self, entries: list[Entry]) -> MachineState:
        return MachineState(
            entries=deque(entries),
            padding_budget=self.initial_padding,
            forced_padding=self.initial_padding,
        )

    def process(self, step: int, state: MachineState, token: int, *, forced: bool = False) -> StepOutput:
        """Advance one frame. ``token`` is the action (0 stay, 1 new word) or, when ``forced``,
        the new-word / pad text id that prefix warm-up imposes."""
        action = self._normalise(token)
        action = self._constrain(state, action, forced)
        action, consumed = self._maybe_take_word(step, state, action)
        out = self._emit(state, action)
        main, second = self._split_streams(state, out)
        return StepOutput(main=main, second=second, consumed_new_word=consumed)

    # -- the five phases of one frame ---------------------------------------------------------

    def _normalise(self, token: int) -> int:
        ids = self.ids
        if token == 1:
            token = ids.new_word
        elif token == 0:
            token = ids.pad
        return token if token in (ids.new_word, ids.pad) else ids.pad

    def _constrain(self, state: MachineState, action: int, forced: bool) -> int:
        ids = self.ids
        if state.pending_tokens:  # a word is still being spelled out
            return ids.pad
        if forced:
            return action
        if state.forced_padding > 0:  # the current word has not had its minimum frames yet
            return ids.pad
        if state.padding_budget <= 0:  # too long without a word: force the next one
            return ids.new_word
        return action

    def _maybe_take_word(self, step: int, state: MachineState, action: int) -> tuple[int, bool]:
        ids = self.ids
        if action != ids.new_word:
            return action, False
        if not state.entries and state.awaiting_text:
            return ids.pad, False  # the next words have not arrived yet: hold, don't end the turn
        if not state.entries:
            # Script exhausted: one last new-word marker on the second stream, then pads forever.
            out = ids.new_word if self.second_stream_ahead and state.end_step is None else ids.pad
            if state.end_step is None:
                state.end_step = step
            return out, False
        entry = state.entries.popleft()
        state.consumption_times.append(step)
        if entry.tokens:
            state.transcript.append((entry.text, step))
            state.pending_tokens.extend(entry.tokens)
            if self.second_stream_ahead:
                state.lookahead_tokens.extend(state.tokens_ahead(self.second_stream_ahead))
            state.padding_budget = self.max_padding
        else:
            action = ids.pad  # a pause entry only sets forced padding
        state.forced_padding = entry.padding
        return action, True

    def _emit(self, state: MachineState, action: int) -> int:
        ids = self.ids
        if action == ids.pad:
            if state.padding_budget > 0:
                state.padding_budget -= 1
            if state.forced_padding > 0:
                state.forced_padding -= 1
            return state.pending_tokens.popleft() if state.pending_tokens else ids.pad
        return action  # new_word

    def _split_streams(self, state: MachineState, out: int) -> tuple[int, int]:
        ids = self.ids
        if not self.second_stream_ahead:
            return out, out
        if out == ids.new_word:
            # The marker goes on the second stream; the main stream gets the word's first piece,
            # so it never carries the new-word id (which is why first-word detection never fires).
            main = state.pending_tokens.popleft() if state.pending_tokens else ids.pad
            return main, ids.new_word
        second = state.lookahead_tokens.popleft() if state.lookahead_tokens else ids.pad
        return out, second
