"""End of turn on the supervisor: at the caller's first pause, is the turn over?

The worker's segmenter sends TurnPaused `vad.pause_ms` into a silence and TurnEnded `vad.stop_hangover_ms`
into it. Waiting for TurnEnded costs every turn the whole hangover (500 ms by default), although most turns
are plainly finished. `EndOfTurn.judge` decides at the pause instead, from what `turn.end_of_turn` names:

* ``words``: early ASR's text (already started on TurnPaused) ends a sentence (``.``/``?``/``!``, which
  Whisper writes only when the speech sounded finished) and its last word is not a continuation word;
* ``model``: Smart Turn v3.2 (audio.turn), ~50-150 ms of one CPU thread on the pause's audio;
* ``model_and_words``: both.

"Complete" ends the turn at once (the session answers it); anything else leaves the turn to the hangover,
so a caller who only paused gets the full `stop_hangover_ms` to go on. bench/turn_eot.py measured the choice
of default (docs/AUDIO.md, "End of turn").

One `EndOfTurn` per supervisor: the model is loaded once; decisions run on its own thread, not queued behind
the ASR thread's transcriptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from audio.turn.words import ends_sentence
from sipbridge.config import TurnConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    complete: bool
    reason: str  # what decided it, for the call's events
    model_prob: float | None  # Smart Turn's probability, when it ran
    text: str | None  # early ASR's words, when they were waited for
    decided_ms: float  # from the pause to the verdict


class EndOfTurn:
    def __init__(self, config: TurnConfig) -> None:
        self.config = config
        self._model: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.judged = 0  # pauses judged
        self.completed = 0  # of those, judged complete (turn ended at the pause)

    @property
    def enabled(self) -> bool:
        return self.config.end_of_turn != "hangover"

    @property
    def uses_model(self) -> bool:
        return self.config.end_of_turn in ("model", "model_and_words")

    @property
    def uses_words(self) -> bool:
        return self.config.end_of_turn in ("words", "model_and_words")

    async def start(self) -> None:
        """Load the model (when configured) and run it once, so the first caller's pause is not slower."""
        if not self.uses_model:
            return
        from audio.turn import SmartTurn

        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eot")
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._pool, SmartTurn)
        await loop.run_in_executor(self._pool, self._model.complete_prob, np.zeros(8000, np.int16), 8000)

    async def judge(
        self, pcm: npt.NDArray[np.int16], rate: int, words: Awaitable[tuple[str, Any] | None]
    ) -> Verdict:
        """Decide on the turn so far. `words` is the pause's early transcription (None if it failed)."""
        t0 = time.monotonic()
        model_run = None
        if self.uses_model:
            assert self._model is not None and self._pool is not None, "EndOfTurn.start() was not awaited"
            model_run = asyncio.get_running_loop().run_in_executor(
                self._pool, self._model.complete_prob, pcm, rate
            )
        text = None
        if self.uses_words:
            result = await words
            text = result[0] if result is not None else None
        prob = await model_run if model_run is not None else None
        verdict = self._decide(prob, text, (time.monotonic() - t0) * 1000)
        self.judged += 1
        self.completed += verdict.complete
        return verdict

    def _decide(self, prob: float | None, text: str | None, ms: float) -> Verdict:
        reasons = []
        complete = True
        if self.uses_model:
            assert prob is not None
            ok = prob >= self.config.model_threshold
            complete &= ok
            reasons.append(f"model {prob:.2f} {'>=' if ok else '<'} {self.config.model_threshold}")
        if self.uses_words:
            ok = text is not None and ends_sentence(text)
            complete &= ok
            reasons.append("words end a sentence" if ok else "words do not end a sentence")
        return Verdict(complete, "; ".join(reasons), prob, text, round(ms, 1))

    def health(self) -> dict[str, Any]:
        return {"mode": self.config.end_of_turn, "judged": self.judged, "completed": self.completed}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# What a listener says to show they are following, not to take the turn (Whisper's spellings included).
BACKCHANNELS = frozenset("okay ok yeah yep right sure alright uh-huh mm-hmm mm-hm mhm mm hmm hm".split())


def is_backchannel(words: str) -> bool:
    """True when every word of the transcript is a backchannel word ("Okay.", "Yeah, yeah.", "Mm-hmm.", and
    "All right.", Whisper's "alright"). "Uh-uh" (no) and anything with another word ("okay, stop") are not."""
    tokens = [t.strip(".,!?;:…\"'").lower() for t in words.split()]
    tokens = [t for t in tokens if t]
    tokens = [t for i, t in enumerate(tokens) if not (t == "all" and tokens[i + 1 : i + 2] == ["right"])]
    return bool(tokens) and all(t in BACKCHANNELS for t in tokens)
