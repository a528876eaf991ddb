"""The caller's side of a call: turns from the worker's segmenter to the agent, in the order they were spoken.

Early ASR: TurnPaused (`vad.pause_ms` into a silence) starts the turn's transcription at once; if the
TurnEnded that follows has the same bounds (the caller said nothing more) those words are the turn's. With
`turn.end_of_turn` the pause is also judged, and a complete turn is answered at the pause; the worker's
segmenter keeps that turn open until its own TurnEnded, so what was answered is remembered (`_answered`) and
only what the caller said after it becomes a turn (docs/ARCHITECTURE.md, "End of turn"). A short turn while
the bot speaks is a backchannel if its words say so (the bot goes on). With `turn.speculative_reply` the
pause's words are also answered ahead (sipbridge/call/speculation.py): the reply is made, held, and sent the
moment the turn ends with those words, or dropped unheard if the caller goes on. The silence timer
(`Reply.silence_timeout_s`) makes a silence turn when the caller says nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sipbridge import frames as f
from sipbridge.agents import Turn
from sipbridge.asr import Transcriber
from sipbridge.call.agent import AgentDriver
from sipbridge.call.context import CallContext, log
from sipbridge.call.outbound import OutboundLeg
from sipbridge.call.recording import TurnRecorder
from sipbridge.call.speaker import Speaker
from sipbridge.call.speculation import Guess, Speculator
from sipbridge.engine import Engine
from sipbridge.turn_policy import EndOfTurn, is_backchannel

Transcript = tuple[str, list[tuple[str, float, float]]]  # text, (word, start s, end s) if the engine wants


@dataclass
class EarlyWords:
    """A transcription started on TurnPaused, before the turn ended (`vad.pause_ms`). It is the turn's
    transcription only if the TurnEnded that follows has the same bounds (the caller said nothing more)."""

    start_ms: int
    end_ms: int
    task: asyncio.Task[Transcript | None]  # None: the run failed; the turn transcribes again
    guess: asyncio.Task[Guess | None] | None = None  # the reply made ahead for these words (speculation)


class TurnTaker:
    def __init__(
        self,
        ctx: CallContext,
        asr: Transcriber,
        engine: Engine,
        end_of_turn: EndOfTurn | None,
        parts: tuple[Speaker, TurnRecorder, AgentDriver, OutboundLeg],
    ) -> None:
        self.ctx = ctx
        self.asr = asr
        self.engine = engine
        # Decides at a pause whether the turn is over (turn.end_of_turn); None/"hangover": wait for TurnEnded.
        self.end_of_turn = end_of_turn
        self.speaker, self.recorder, self.driver, self.dialing = parts
        self.speculator = Speculator(ctx, self.driver, self.speaker, self.dialing.opt_out_said)
        self.caller_turns = 0
        self.lock = asyncio.Lock()  # turns (and silence turns) are answered in the order they came
        self.caller_speaking = False  # between SpeechStarted and the end of that turn
        self._early: EarlyWords | None = None  # transcription of the turn so far, from its latest TurnPaused
        # (the worker's turn start, the end we answered at) once a turn was ended at a pause.
        self._answered: tuple[int, int] | None = None
        self._premature_seen: int | None = None  # the answered end whose continuation was recorded premature
        self._silence: asyncio.Task[None] | None = None  # the armed silence timer (Reply.silence_timeout_s)
        self._silence_timeout_s: float | None = None

    def handle(self, frame: f.Frame) -> None:
        """The worker's turn frames (and any caller activity, which disarms the silence timer)."""
        if isinstance(frame, f.TurnEnded | f.SpeechStarted | f.Dtmf):
            self._disarm_silence()  # the caller is active: no silence turn
            self.caller_speaking = isinstance(frame, f.SpeechStarted)
        elif isinstance(frame, f.TurnDropped):
            self.caller_speaking = False
            if self._silence_timeout_s is not None:
                self._arm_silence(self._silence_timeout_s)  # noise only: keep waiting for a real answer
        if isinstance(frame, f.TurnEnded):
            turn = self._unanswered(frame)
            if turn is not None:
                self.ctx.spawn(self._on_turn(turn, time.monotonic(), self._take_early(turn)), "turn")
        elif isinstance(frame, f.TurnPaused):
            self._on_pause(self._unanswered(frame))
        elif isinstance(frame, f.TurnDropped):
            self._drop_early("noise, not a turn")
            self._answered = None
        elif isinstance(frame, f.TurnResumed):
            self._drop_early("the caller went on")  # that pause's words and judgement are not the turn's
        elif isinstance(frame, f.SpeechStarted):
            log.debug("call %s: caller speech at %d ms", self.ctx.call_id, frame.t_ms)

    # ------------------------------------------------------------------------------ transcription

    async def _transcribe(self, pcm: np.ndarray[Any, Any]) -> Transcript:
        # An engine that conditions on timed words (dia2) gets ASR's word timestamps instead of the text
        # spread evenly; the others do not pay the extra decode time.
        if getattr(self.engine, "wants_word_timings", False):
            return await self.asr.transcribe_words(pcm, self.ctx.rate)
        return await self.asr.transcribe(pcm, self.ctx.rate), []

    async def _transcribe_early(self, pcm: np.ndarray[Any, Any]) -> Transcript | None:
        try:
            return await self._transcribe(pcm)
        except Exception as exc:  # the turn's end transcribes again; a speculative run must not end the call
            log.warning("call %s: early transcription failed: %r", self.ctx.call_id, exc)
            return None

    def _on_pause(self, frame: f.TurnPaused | None) -> None:
        """Transcribe the turn so far while the stop hangover runs: if the caller says no more, the words
        are (nearly) ready when TurnEnded comes. A newer pause replaces an older one (its run finishes on
        the ASR thread anyway; only the newest can match). With `turn.end_of_turn` the pause is also judged:
        a complete turn is answered now, not at TurnEnded."""
        if frame is None:  # a pause inside what was already answered
            return
        self._drop_early("a newer pause")  # its run, if still queued on the ASR thread, never starts
        pcm = np.frombuffer(frame.pcm, dtype=np.int16)
        task = self.ctx.spawn(self._transcribe_early(pcm), "early-asr", watched=False)
        bounds = (frame.start_ms, frame.end_ms)
        guess = self.speculator.start(task, bounds, busy=self.lock.locked(), pcm=pcm)
        self._early = EarlyWords(frame.start_ms, frame.end_ms, task, guess)
        if self.end_of_turn is not None and self.end_of_turn.enabled:
            self.ctx.spawn(self._judge_pause(frame, self._early, time.monotonic()), "eot")

    async def _judge_pause(self, frame: f.TurnPaused, early: EarlyWords, paused_at: float) -> None:
        assert self.end_of_turn is not None
        pcm = np.frombuffer(frame.pcm, dtype=np.int16)
        try:
            verdict = await self.end_of_turn.judge(pcm, self.ctx.rate, asyncio.shield(early.task))
        except Exception as exc:  # a failed judgement leaves the turn to the hangover; the call goes on
            log.warning("call %s: end-of-turn judgement failed: %r", self.ctx.call_id, exc)
            return
        if self._early is not early:
            return  # the caller went on (a newer pause) or the hangover ended the turn first
        self.ctx.event(
            "end_of_turn",
            {
                "start_ms": frame.start_ms,
                "end_ms": frame.end_ms,
                "complete": verdict.complete,
                "reason": verdict.reason,
                "model_prob": verdict.model_prob,
                "decided_ms": verdict.decided_ms,
            },
        )
        if not verdict.complete:
            return
        self._early = None
        start = frame.start_ms if self._answered is None else self._answered[0]
        self._answered = (start, frame.end_ms)
        turn = f.TurnEnded(self.ctx.call_id, frame.start_ms, frame.end_ms, "end_of_turn", frame.pcm)
        await self._on_turn(turn, paused_at, early)

    def _unanswered(self, frame: f.TurnEnded | f.TurnPaused) -> Any:
        """The part of a worker turn event that was not answered yet: the frame itself; None when the whole
        of it was (the turn ended where it was judged complete); or, when the caller went on after a turn
        was ended at a pause (a premature end), only what came after that pause."""
        answered = self._answered
        if answered is None or frame.start_ms != answered[0]:
            self._answered = None
            return frame
        if isinstance(frame, f.TurnEnded):
            self._answered = None
        if frame.end_ms <= answered[1]:
            return None
        if self._premature_seen != answered[1]:  # once per answered pause the caller went on after
            self._premature_seen = answered[1]
            self.ctx.event("end_of_turn_premature", {"answered_end_ms": answered[1], "end_ms": frame.end_ms})
        pcm_start = frame.pcm_start_ms if frame.pcm_start_ms is not None else frame.start_ms  # pre-roll
        skip = (answered[1] - pcm_start) * self.ctx.rate // 1000 * 2  # int16 bytes
        rest = frame.pcm[max(skip, 0) :]
        return dataclasses.replace(frame, start_ms=answered[1], pcm=rest, pcm_start_ms=answered[1])

    def _take_early(self, turn: f.TurnEnded) -> EarlyWords | None:
        early = self._early
        if early is not None and (early.start_ms, early.end_ms) == (turn.start_ms, turn.end_ms):
            self._early = None
            return early
        self._drop_early("the turn ended elsewhere")
        return None

    def _drop_early(self, why: str) -> None:
        """Forget the pause's transcription: cancelling its task also takes its run off the ASR thread's
        queue if it has not started (under load, stale runs queued there delayed the turn's own by
        seconds). The reply made ahead for it is dropped unheard."""
        if self._early is not None:
            self._early.task.cancel()
            self.speculator.drop(self._early.guess, why)
            self._early = None

    # ------------------------------------------------------------------------------ answering

    async def _on_turn(self, turn: f.TurnEnded, detected_at: float, early: EarlyWords | None = None) -> None:
        guess = early.guess if early is not None else None
        try:
            await self._answer(turn, detected_at, early, guess)
        finally:  # not answered with it (a backchannel, an opt-out, a failure): dropped unheard
            self.speculator.drop(guess, "the turn was not answered with it")

    async def _answer(
        self,
        turn: f.TurnEnded,
        detected_at: float,
        early: EarlyWords | None,
        guess: asyncio.Task[Guess | None] | None,
    ) -> None:
        ctx = self.ctx
        assert ctx.engine_session is not None
        async with self.lock:  # turns are answered in the order they were spoken
            pcm = np.frombuffer(turn.pcm, dtype=np.int16)
            t0 = time.monotonic()
            early_words = await early.task if early is not None else None
            words, timed = early_words if early_words is not None else await self._transcribe(pcm)
            t_asr = time.monotonic()
            if self._short_during_speech(turn):
                if is_backchannel(words):  # the bot goes on; the agent never sees it
                    ctx.event(
                        "backchannel", {"words": words, "start_ms": turn.start_ms, "end_ms": turn.end_ms}
                    )
                    return
                self.speaker.cut()  # a short answer ("No."): the worker held it as a possible backchannel
            ctx.metrics.caller_turns.inc(early_asr="true" if early_words is not None else "false")
            ctx.metrics.asr_wait.observe(t_asr - t0)
            self._record(turn, pcm, words)
            opted_out = self.dialing.opt_out_said(words)
            made = None if opted_out else await self.speculator.claim(guess, words)
            if made is not None:
                self.driver.adopt(made.call)  # the agent answered this very turn ahead, on a copy
            # Its audio out (and its actions applied, on the adopted state) at once.
            sent = made is not None and self.speculator.commit(made, detected_at)
            if not (sent and made is not None and made.heard):  # else the engine heard this turn ahead
                # A guess the engine heard is forgotten first: the turn goes into its context once.
                await self.speculator.settle(guess, "the turn was not answered with it")
                ctx.engine_session.user_spoke(pcm, ctx.rate, timed if timed else words)
            if opted_out:
                return  # the agent never sees it: the session confirms and hangs up
            caller_turn = Turn(
                "speech", words, start_ms=turn.start_ms, end_ms=turn.end_ms, asr_ms=(t_asr - t0) * 1000
            )
            reply = made.reply if made is not None else await self.driver.on_turn(caller_turn)
            t_agent = time.monotonic()
            ahead = made.utt if made is not None else None
            if made is not None:
                self.speculator.used(made, sent)
            if reply is not None:
                utt = ahead if sent and ahead is not None else self.speaker.say(reply)
                utt.timing["speculative"] = made is not None
                utt.turn_ended_at = detected_at
                utt.marks.update(turn_end=detected_at, asr_done=t_asr, agent_done=t_agent)
                utt.timing.update(
                    asr_ms=(t_asr - t0) * 1000,  # with an early transcription: only what was left of it
                    agent_ms=(t_agent - t_asr) * 1000,
                    wait_ms=(t0 - detected_at) * 1000,
                    early_asr=early_words is not None,
                    end_of_turn=turn.reason == "end_of_turn",  # answered at the pause, not the hangover
                )

    def _record(self, turn: f.TurnEnded, pcm: np.ndarray[Any, Any], words: str) -> None:
        """The caller's turn in the store (with its WAV) and in the agent's history."""
        audio_path = self.recorder.save_wav(f"caller-{self.caller_turns}.wav", pcm)
        self.caller_turns += 1
        self.ctx.store.add_turn(
            self.ctx.call_id,
            "caller",
            words,
            start_ms=turn.start_ms,
            end_ms=turn.end_ms,
            audio_path=audio_path,
        )
        self.driver.caller_said(words)
        log.info(
            "call %s: caller turn %d-%d ms (%s): %r",
            self.ctx.call_id,
            turn.start_ms,
            turn.end_ms,
            turn.reason,
            words,
        )

    def _short_during_speech(self, turn: f.TurnEnded) -> bool:
        """A turn shorter than `vad.backchannel_ms` while interruptible speech is still queued or playing:
        the worker did not cut the bot for it (barge-in waits that long), the words decide."""
        limit = self.ctx.config.vad.backchannel_ms
        return limit > 0 and self.speaker.speaking_interruptible() and turn.end_ms - turn.start_ms < limit

    # ------------------------------------------------------------------------------ silence

    def silence_after(self, timeout_s: float) -> None:
        """A reply that waits for an answer was played: a caller silent that long makes a silence turn.
        Not while the caller is talking (their turn, not silence, comes next)."""
        if not self.caller_speaking:
            self._arm_silence(timeout_s)

    def _arm_silence(self, timeout_s: float) -> None:
        self._disarm_silence()
        self._silence_timeout_s = timeout_s
        self._silence = self.ctx.spawn(self._silence_turn(timeout_s), "silence")

    def _disarm_silence(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        self._silence_timeout_s = None

    async def _silence_turn(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        self._silence = None
        self._silence_timeout_s = None
        self.ctx.event("silence", {"timeout_s": timeout_s})
        async with self.lock:
            reply = await self.driver.on_turn(Turn("silence", silent_s=timeout_s))
        if reply is not None:
            self.speaker.say(reply)
