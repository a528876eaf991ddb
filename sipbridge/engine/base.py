"""The speech engine interface every engine (espeak, dia2) implements.

An `Engine` lives in the supervisor for the whole run; each call opens one `EngineSession` (for Dia2, one row
of the batched conversation state). A session hears what the caller said (`user_spoke`, so a contextual voice
can answer in context), speaks text or a stream of text as float32 chunks at `sample_rate`, can be cut
mid-sentence (`cancel`, barge-in) and is closed when the call ends, which frees its engine row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

TextSource = str | AsyncIterator[str]
Chunk = npt.NDArray[np.float32]


class EngineError(Exception):
    """The engine cannot start or failed while speaking; the call using it ends cleanly."""


class EngineSession(Protocol):
    call_id: str
    sample_rate: int

    def user_spoke(self, pcm: npt.NDArray[np.int16], rate: int, words: str) -> None:
        """The caller's turn: audio at `rate` and its transcript (possibly empty)."""

    def speak(self, text: TextSource) -> AsyncIterator[Chunk]:
        """Mono float32 chunks in [-1, 1] at `sample_rate`; ends when the text is spoken or cancelled."""

    def cancel(self) -> None:
        """Stop the utterance in progress as soon as possible (its iterator ends)."""

    async def close(self) -> None:
        """The call is over: cancel and free everything this session holds."""


class Engine(Protocol):
    name: str
    sample_rate: int

    async def start(self) -> None: ...

    def open_session(self, call_id: str) -> EngineSession: ...

    def health(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


async def text_pieces(text: TextSource) -> AsyncIterator[str]:
    """A plain string as a one-item stream, so engines handle both forms with one loop."""
    if isinstance(text, str):
        yield text
        return
    async for piece in text:
        yield piece
