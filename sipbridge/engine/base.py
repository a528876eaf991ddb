"""The speech engine interface every engine (espeak, dia2) implements.

An `Engine` lives in the supervisor for the whole run; each call opens one `EngineSession` (for Dia2, one row
of the batched conversation state). A session hears what the caller said (`user_spoke`, so a contextual voice
can answer in context), speaks text or a stream of text as float32 chunks at `sample_rate`, can be cut
mid-sentence (`cancel`, barge-in) and is closed when the call ends, which frees its engine row.

A recording used many times (the conversation API's named voices) is prepared once with
`Engine.prepare_voice` and set with `set_prepared_voice` / `hear_prepared`: for Dia2 that skips the Mimi
encoder on every use; espeak has nothing to prepare (its prepared voice only carries the transcript).

A speculative reply (turn.speculative_reply) is spoken ahead only by a session with `speaks_ahead`: espeak,
whose speech depends on the text alone, and a session that `HearsAhead` (Dia2), which hears the caller's turn
so far under a mark of its context and forgets both that turn and the reply made to it on discard.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

TextSource = str | AsyncIterable[str]  # agents' TextStream is an AsyncIterable
Chunk = npt.NDArray[np.float32]
# Words of a recording: plain text (an engine that needs timings spreads them evenly) or timed
# (word, start s, end s) triples, e.g. from an uploaded words JSON.
Words = str | Sequence[tuple[str, float, float]]


@dataclass(frozen=True)
class SpeakParams:
    """Per-utterance overrides (the conversation API's cfg_scale/temperature/top_k/normalize).

    None keeps the engine's configured value. Engines without sampling (espeak) ignore the first three.
    `normalize` switches text normalisation and script shaping (sipbridge/text) for this utterance.
    """

    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    normalize: bool | None = None


@dataclass(frozen=True)
class WordTime:
    """A word of the utterance being spoken, as the engine read it (after normalisation), and the time in
    that utterance's audio (from its first sample) at which the engine began it."""

    word: str
    start_s: float


class EngineError(Exception):
    """The engine cannot start or failed while speaking; the call using it ends cleanly."""


class EngineRejected(ValueError):
    """The engine refuses an input as given (e.g. a voice longer than Dia2's context allows). Raised before
    the session changes, so it stays usable: not an engine failure (the conversation API answers 413)."""


@dataclass(frozen=True)
class PreparedVoice:
    """A recording made ready once for one engine (`Engine.prepare_voice`), set on any number of sessions
    without redoing that work. `data` is the engine's own form: Dia2 a `dia2.engine.VoicePrompt` (Mimi codes
    and timed words); espeak None (it cannot clone a voice)."""

    engine: str  # the engine kind that prepared it
    transcript: str
    seconds: float
    data: Any = None


class EngineSession(Protocol):
    call_id: str
    sample_rate: int
    speaks_ahead: bool  # a reply may be made ahead of its turn's end and thrown away unheard (see HearsAhead)

    def user_spoke(self, pcm: npt.NDArray[np.int16], rate: int, words: Words) -> None:
        """The caller's turn: audio at `rate` and its transcript (possibly empty; timed when the engine has
        `wants_word_timings = True` and ASR gave timings)."""

    def speak(self, text: TextSource, params: SpeakParams | None = None) -> AsyncIterator[Chunk]:
        """Mono float32 chunks in [-1, 1] at `sample_rate`; ends when the text is spoken or cancelled."""

    def word_times(self) -> list[WordTime] | None:
        """The words of the utterance being spoken (or the last one) that the engine has begun so far, in
        order, each with its start in that utterance's audio; None when the engine does not report them
        (espeak: callers estimate from the text). Dia2 knows a word ~1.4 s before its audio is out (the
        codebook delays), so a chunk's words are known when the chunk comes."""

    def played(self, seconds: float) -> None:
        """Barge-in cut the reply last spoken after its first `seconds` were played: a contextual engine
        (Dia2) drops the rest from its context, so the next reply follows what the caller heard."""

    # The conversation API's operations (sipbridge/http): awaited, so their errors reach the client.

    async def hear(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        """`user_spoke`, awaited: returns once the turn is in the context; EngineError if it failed."""

    async def set_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        """The AI voice of this session (speaker 1) and the words said in it; resets the context."""

    async def set_prepared_voice(self, voice: PreparedVoice) -> None:
        """`set_voice` from a voice prepared by this session's engine; EngineRejected if it does not fit."""

    async def hear_prepared(self, voice: PreparedVoice) -> None:
        """`hear` from a prepared recording (speaker 2, as context); EngineRejected if it does not fit."""

    async def reset(self) -> None:
        """Forget every turn (the voice is kept)."""

    async def state(self) -> dict[str, Any]:
        """What the session holds (turns, context used, voice set)."""

    def cancel(self) -> concurrent.futures.Future[int] | None:
        """Stop the utterance in progress as soon as possible (its iterator ends). A batched engine (Dia2)
        returns a future of the engine steps that ran before the cancel took effect (0 or 1: how the
        compat surfaces prove a client that leaves frees its slot within one frame); espeak None."""

    async def close(self) -> None:
        """The call is over: cancel and free everything this session holds."""


@runtime_checkable
class HearsAhead(Protocol):
    """A session whose context keeps what was said (Dia2) and can still speak ahead: the guessed turn and
    the reply to it leave no trace when the guess is discarded. One guess at a time, between replies."""

    async def hear_ahead(self, pcm: npt.NDArray[np.int16], rate: int, words: Words) -> bool:
        """The caller's turn so far, heard before it ends (as `user_spoke`), the context marked first.
        False, nothing changed: a guess is already held, a reply is being spoken, or it failed. Cancelled
        while it runs, the guess is forgotten."""
        ...

    def speak_ahead(self, text: TextSource, params: SpeakParams | None = None) -> AsyncIterator[Chunk]:
        """The reply to the turn heard ahead (as `speak`); nothing once the guess was forgotten."""
        ...

    def holds_ahead(self) -> bool:
        """A guess is held: heard, neither kept nor forgotten (another reply's `speak` forgets it)."""
        ...

    def keep_ahead(self) -> None:
        """The turn ended as heard: it and the reply to it stay in the context; it is not heard again."""

    def forget_ahead(self) -> None:
        """Discard the guess: its reply ends, then the context is the mark's again, as if it never was."""


class Engine(Protocol):
    name: str
    sample_rate: int

    async def start(self) -> None: ...

    def open_session(self, call_id: str) -> EngineSession: ...

    async def prepare_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> PreparedVoice:
        """Do once what setting this recording as a voice costs (Dia2: Mimi-encode it); EngineRejected if it
        can never be a voice (too long), EngineError if the engine failed."""
        ...

    def health(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


async def text_pieces(text: TextSource) -> AsyncIterator[str]:
    """A plain string as a one-item stream, so engines handle both forms with one loop."""
    if isinstance(text, str):
        yield text
        return
    async for piece in text:
        yield piece
