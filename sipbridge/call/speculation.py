"""Speculative replies (turn.speculative_reply): the answer to a pause's words, made before the turn is over.

Early ASR transcribes the turn so far at each pause (`vad.pause_ms`). With these words the agent is asked at
once, on a *copy* of its call state, and the engine makes the reply's audio into a held utterance (nothing
reaches the worker). When the turn ends with the same bounds, so the same words, the copy becomes the agent's
state and the held audio goes out at once (`Speaker.commit`): the reply leaves when the turn is declared over
instead of after agent + engine first chunk + the engine's start margin. When the caller goes on (TurnResumed,
a newer pause, noise) the guess is cancelled and everything it made is dropped: the agent's real state never
saw the turn, the worker never saw the audio.

What may run ahead (docs/ARCHITECTURE.md, "Speculative reply"):
- the agent only if it declares itself `pure` (its `on_turn` changes nothing but the AgentCall): script and
  echo. A webhook or LLM agent would show the far end a turn that never happened, so with those nothing is
  speculative (the engine needs the reply's text);
- the engine only if its session `speaks_ahead`: espeak (its speech depends on the text alone), and Dia2,
  which keeps what is said in its context: its session `HearsAhead` (sipbridge/engine/base.py). The guess
  marks the context and has it hear the turn so far before the reply is made; a discarded guess rewinds it
  to the mark, a used one stays, and the turn's end does not hear that turn again. Only while the engine
  makes no other reply and no earlier one is still live (its barge-in trim would land after the mark).
A guess is not made while interruptible bot speech is playing (the turn may be a backchannel or a barge-in
the words decide) or while an earlier turn is still being answered (the agent's state is about to change).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sipbridge.agents import AgentCall, Reply, Turn
from sipbridge.call.agent import AGENT_TIMEOUT_S, AgentDriver
from sipbridge.call.context import CallContext, log
from sipbridge.call.speaker import Speaker, Utterance
from sipbridge.engine.base import HearsAhead

Transcript = tuple[str, list[tuple[str, float, float]]]


@dataclass
class Guess:
    """What was made for one pause's words: the agent's answer on a copy of its state, and its audio."""

    words: str
    base: AgentCall  # the agent's state the answer was made from (stale if the live one changed since)
    call: AgentCall  # that state after the caller's words and the agent's answer
    reply: Reply | None
    utt: Utterance | None  # its audio being made, held (None: the engine may not speak ahead)
    made_at: float
    settled: bool = False  # used or discarded: `drop` leaves it alone
    heard: bool = False  # the engine's context took the turn so far for it (HearsAhead): kept or forgotten


class Speculator:
    def __init__(
        self, ctx: CallContext, driver: AgentDriver, speaker: Speaker, opt_out_said: Callable[[str], bool]
    ) -> None:
        self.ctx = ctx
        self.driver = driver
        self.speaker = speaker
        self.opt_out_said = opt_out_said  # the dialer's opt-out phrases: never answered by the agent
        agent_pure = bool(getattr(driver.agent, "pure", False))
        self.enabled = ctx.config.turn.speculative_reply and agent_pure

    def start(
        self,
        early: asyncio.Task[Transcript | None],
        bounds: tuple[int, int],
        busy: bool,
        pcm: np.ndarray[Any, np.dtype[np.int16]],
    ) -> asyncio.Task[Guess | None] | None:
        """Guess the reply to a pause's words (`early`: their transcription of `pcm`, the turn so far); None
        when not allowed now."""
        if not self.enabled or busy or self.speaker.speaking_interruptible() or self.driver.call is None:
            return None
        # The agent's state now, before the turn's own words may reach it (the turn can end, and be
        # recorded, before its early transcription is done).
        base = copy.deepcopy(self.driver.call)
        return self.ctx.spawn(self._make(early, bounds, base, pcm), "speculate", watched=False)

    async def _make(
        self,
        early: asyncio.Task[Transcript | None],
        bounds: tuple[int, int],
        base: AgentCall,
        pcm: np.ndarray[Any, np.dtype[np.int16]],
    ) -> Guess | None:
        # Shielded: cancelling the guess must not cancel the transcription the turn itself may use.
        result = await asyncio.shield(early)
        if result is None or self.opt_out_said(result[0]):
            return None
        words, timed = result
        call = copy.deepcopy(base)
        call.transcript.append(("caller", words))  # what `TurnTaker._record` adds to the live state
        turn = Turn("speech", words, start_ms=bounds[0], end_ms=bounds[1], asr_ms=0.0)
        try:
            reply = await asyncio.wait_for(self.driver.agent.on_turn(call, turn), AGENT_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the turn's end asks again, and says the fallback line if it fails then
            log.info("call %s: speculative agent turn failed: %r", self.ctx.call_id, exc)
            return None
        utt, heard = None, False
        session = self.ctx.engine_session
        if reply is not None and isinstance(reply.text, str) and getattr(session, "speaks_ahead", False):
            if isinstance(session, HearsAhead):
                # The same audio and words `TurnTaker` gives `user_spoke` at the turn's end (same bounds).
                heard = self._engine_idle() and await session.hear_ahead(pcm, self.ctx.rate, timed or words)
                if heard and not self._engine_idle():  # a reply came meanwhile: the guess must not follow it
                    session.forget_ahead()
                    heard = False
            if heard or not isinstance(session, HearsAhead):
                utt = self.speaker.prepare(reply)
        return Guess(words, base, call, reply, utt, time.monotonic(), heard=heard)

    def _engine_idle(self) -> bool:
        """No reply is queued, being made or playing: a context engine's mark is then where the caller is."""
        speaker = self.speaker
        return speaker.generating is None and speaker.pending.empty() and not speaker.utterances

    async def claim(self, task: asyncio.Task[Guess | None] | None, words: str) -> Guess | None:
        """The turn ended with `words` where the guess was made: the guess if it answers exactly this turn
        from the agent's current state (its audio not yet sent: `Speaker.commit`), else None (discarded)."""
        if task is None:
            return None
        try:
            guess = await task  # usually done: the agent and the engine's first chunk ran in the silence
        except Exception as exc:  # a failed guess costs nothing: the turn is answered as without one
            log.warning("call %s: speculative reply failed: %r", self.ctx.call_id, exc)
            return None
        if guess is None:
            return None
        guess.settled = True
        expected = copy.deepcopy(guess.base)
        expected.transcript.append(("caller", words))
        if guess.words != words or self.driver.call != expected:
            self._discarded(guess, "the words or the agent's state changed")
            return None
        return guess

    def commit(self, guess: Guess, turn_ended_at: float) -> bool:
        """A claimed guess's held audio goes out (`Speaker.commit`); a context engine keeps the turn it heard
        ahead and the reply. False, nothing sent: no audio was made ahead, or it may not go (`Speaker.commit`
        refused, the engine forgot the guess for another reply); the engine forgot it then."""
        utt = guess.utt
        if utt is None:
            return False
        session = self.ctx.engine_session
        ahead = session if guess.heard and isinstance(session, HearsAhead) else None
        if ahead is not None and not ahead.holds_ahead():
            self.speaker.discard(utt)
            return False
        sent = self.speaker.commit(utt, turn_ended_at)
        if ahead is not None:
            if sent:
                ahead.keep_ahead()
            else:
                ahead.forget_ahead()
        return sent

    async def settle(self, task: asyncio.Task[Guess | None] | None, why: str) -> None:
        """`drop`, and wait until the guess task has ended: a turn it was hearing ahead is then forgotten
        before anything else reaches the engine (the turn's own `user_spoke`)."""
        self.drop(task, why)
        if task is not None and not task.done():
            await asyncio.wait([task])
            self.drop(task, why)

    def drop(self, task: asyncio.Task[Guess | None] | None, why: str) -> None:
        """The caller went on (or the turn was answered otherwise): the guess and all it made go, unheard."""
        if task is None:
            return
        if not task.done():
            task.cancel()  # the agent copy and any audio not yet asked for die with it
            return
        guess = None if task.cancelled() or task.exception() is not None else task.result()
        if guess is not None and not guess.settled:
            guess.settled = True
            self._discarded(guess, why)

    def _discarded(self, guess: Guess, why: str) -> None:
        made_ms = 0
        if guess.utt is not None:
            made_ms = round(sum(map(len, guess.utt.pcm)) / 2 / self.ctx.rate * 1000)
            self.speaker.discard(guess.utt)
        session = self.ctx.engine_session
        if guess.heard and isinstance(session, HearsAhead):
            session.forget_ahead()  # its reply ends, then the context is rewound to before the turn
        self.ctx.metrics.speculative_replies.inc(result="discarded")
        self.ctx.event(
            "speculative_reply", {"used": False, "why": why, "words": guess.words, "made_ms": made_ms}
        )

    def used(self, guess: Guess, sent: bool) -> None:
        made_ms = 0 if guess.utt is None else round(sum(map(len, guess.utt.pcm)) / 2 / self.ctx.rate * 1000)
        self.ctx.metrics.speculative_replies.inc(result="used")
        self.ctx.event(
            "speculative_reply",
            {"used": True, "words": guess.words, "audio_ahead": sent, "made_ms": made_ms},
        )
