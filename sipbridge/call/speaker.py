"""The bot's side of a call: its utterances from `say` to PlaybackDone.

Replies are queued and generated one after another by one task (`run`). Each reply is one *utterance* with an
id; its audio is resampled to the call rate and streamed to the worker as PlayAudio, then EndOfUtterance. The
worker plays and reports PlaybackDone. Barge-in is decided by the worker, which has already dropped queued
interruptible audio when BargeIn arrives; `cut` then cancels generation and drops every pending
interruptible reply, telling the worker which utterance ids are dead so audio still in flight is discarded
too. While AMD listens (outbound) new utterances are *held*: made, kept here, sent or dropped on the verdict.
A *speculative* utterance (turn.speculative_reply) is held the same way, made for words the caller may not be
done with: `commit` sends it when the turn ends with those words, `discard` drops it unheard. Until then it is
not one of `utterances` (barge-in, backchannels and the silence timer do not see it) and the worker never
hears of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from audio.resample import make_resampler
from sipbridge import frames as f
from sipbridge.agents import Action, Reply, TextStream
from sipbridge.call.context import CallContext, log
from sipbridge.engine import EngineError
from sipbridge.engine.base import HearsAhead
from sipbridge.metrics import TURN_STAGES
from sipbridge.text.heard import DEFAULT_CHARS_PER_S, heard_prefix


@dataclass
class Utterance:
    id: int
    reply: Reply
    queued_at: float
    turn_ended_at: float | None = None  # monotonic time the caller turn it answers was detected
    timing: dict[str, float | bool] = field(default_factory=dict)
    # Monotonic times of a turn's reply stages (turn_end, asr_done, agent_done, engine_audio): the
    # sipbridge_turn_stage_seconds histogram, completed by the worker's first-RTP time at PlaybackDone.
    marks: dict[str, float] = field(default_factory=dict)
    pcm: list[bytes] = field(default_factory=list)  # what was sent (for the bot turn's WAV)
    cancelled: bool = False
    # Made while AMD listens (no dead air): audio kept here until the verdict says a person answered.
    held: bool = False
    held_frames: list[bytes] = field(default_factory=list)
    generated: bool = False  # the engine finished it while it was held (EndOfUtterance is owed)
    complete: bool = False  # the engine made all of its audio (`pcm` is the whole reply)
    speculative: bool = False  # made before its turn ended: held until `commit`, or discarded
    made: asyncio.Event = field(
        default_factory=asyncio.Event
    )  # the engine is done with it (all, cut, failed)


@dataclass(frozen=True)
class Heard:
    """What the caller heard of a reply cut by barge-in (sipbridge/text/heard.py)."""

    said: str
    heard: str
    played_s: float
    audio_s: float  # the reply's whole audio (estimated from its text if generation was cut)
    whole_audio: bool


class Speaker:
    def __init__(self, ctx: CallContext, apply_actions: Callable[[Sequence[Action]], None]) -> None:
        self.ctx = ctx
        self.apply_actions = apply_actions  # the agent's actions, applied as soon as a reply carries them
        self.utterances: dict[int, Utterance] = {}  # queued, generating or playing
        self.pending: asyncio.Queue[Utterance] = asyncio.Queue()
        self.generating: Utterance | None = None
        self.next_utterance = 1
        self.holding = False  # new utterances are held: AMD has not decided yet (outbound)
        self.last_spoken: int | None = None  # the utterance the engine spoke last (its context ends there)
        # Utterances taken back from a withdrawn AMD provisional start, by the id they were sent under (the
        # worker's PlaybackDone for that id says how much of them was heard).
        self.withdrawn: dict[int, Utterance] = {}

    def say(self, reply: Reply) -> Utterance:
        self.apply_actions(reply.actions)
        utt = Utterance(self.next_utterance, reply, time.monotonic(), held=self.holding)
        self.next_utterance += 1
        self.utterances[utt.id] = utt
        self.pending.put_nowait(utt)
        return utt

    async def run(self) -> None:
        assert self.ctx.engine_session is not None
        while True:
            utt = await self.pending.get()
            if utt.cancelled:
                utt.made.set()
                continue
            self.generating = utt
            if not utt.speculative:  # a speculative one becomes the engine's latest at `commit`
                self.last_spoken = utt.id
            try:
                await self._generate(utt)
            except EngineError as exc:
                self.ctx.fail(f"engine: {exc}")
                return
            finally:
                self.generating = None
                utt.made.set()

    def _play(self, utt: Utterance, pcm: bytes) -> None:
        self.ctx.send(f.PlayAudio(self.ctx.call_id, utt.id, utt.reply.interruptible, pcm))

    def _first_audio(self, utt: Utterance, t0: float) -> None:
        now = time.monotonic()
        utt.timing["engine_first_ms"] = (now - t0) * 1000
        utt.marks["engine_audio"] = now
        metrics = self.ctx.metrics
        metrics.engine_first_chunk.observe(now - t0)
        if utt.turn_ended_at is not None:
            utt.timing["turn_to_first_audio_ms"] = (now - utt.turn_ended_at) * 1000
            metrics.reply_latency.observe(now - utt.turn_ended_at)

    async def _generate(self, utt: Utterance) -> None:
        ctx = self.ctx
        assert ctx.engine_session is not None
        session = ctx.engine_session
        # The low-latency FIR: soxr's stream would hold back up to 74 ms of every reply (docs/AUDIO.md). An
        # engine whose audio is shared between calls (espeak) resamples it once per rate for all of them.
        speak_at = getattr(session, "speak_at", None)
        resampler = None if speak_at is not None else make_resampler(session.sample_rate, ctx.rate)
        t0 = time.monotonic()
        first = True

        def send(chunk: np.ndarray) -> None:
            nonlocal first
            if not len(chunk) or utt.cancelled:
                return
            pcm = (np.clip(chunk, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
            utt.pcm.append(pcm)
            if utt.held:
                utt.held_frames.append(pcm)
            else:
                self._play(utt, pcm)
            if first:
                first = False
                self._first_audio(utt, t0)

        # An engine far faster than real time whose output still comes in bursts (espeak: one process per
        # sentence, starved on a busy box) asks for a head start: its first audio goes out once this much is
        # ready, so the worker's playback margin is not all that stands between a stall and an underrun.
        head = int(getattr(session, "start_margin_s", 0.0) * ctx.rate)
        held: list[np.ndarray] = []
        if utt.speculative and isinstance(session, HearsAhead):
            source = session.speak_ahead(utt.reply.text)  # the reply to the turn it heard ahead (Dia2)
        elif speak_at is None:
            source = session.speak(utt.reply.text)
        else:
            source = speak_at(utt.reply.text, ctx.rate)
        try:
            async for chunk in source:
                if utt.cancelled:
                    break
                out: np.ndarray = np.asarray(chunk, dtype=np.float32)
                if resampler is not None:
                    out = resampler.process(out)
                if head:
                    held.append(out)
                    if sum(map(len, held)) < head:
                        continue
                    out, head = np.concatenate(held), 0
                    held.clear()
                send(out)
        finally:  # a cut reply's generator ends now, not when collected (a Dia2 rewind waits for it)
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        if not utt.cancelled:
            tail = [] if resampler is None else [resampler.flush()]
            send(np.concatenate([*held, *tail, np.zeros(0, np.float32)]))
            utt.complete = True
            if utt.held:
                utt.generated = True  # EndOfUtterance goes with the audio when AMD says "person"
            else:
                ctx.send(f.EndOfUtterance(ctx.call_id, utt.id))
        if isinstance(utt.reply.text, TextStream):
            self.apply_actions(utt.reply.text.actions)  # an LLM's function calls arrive after its text
            if utt.reply.text.first_piece_at is not None and utt.turn_ended_at is not None:
                utt.timing["agent_first_text_ms"] = (utt.reply.text.first_piece_at - utt.turn_ended_at) * 1000
        utt.timing["engine_total_ms"] = (time.monotonic() - t0) * 1000
        self._log_latency(utt)

    def _log_latency(self, utt: Utterance) -> None:
        if utt.timing.get("turn_to_first_audio_ms") is None:
            return
        log.info(
            "call %s: utterance %d first audio %.0f ms after turn end (asr %.0f, agent %.1f, engine %.0f)",
            self.ctx.call_id,
            utt.id,
            utt.timing["turn_to_first_audio_ms"],
            utt.timing["asr_ms"],
            utt.timing["agent_ms"],
            utt.timing["engine_first_ms"],
        )

    def speaking_interruptible(self) -> bool:
        """Interruptible speech is still queued, generating or playing."""
        return any(u.reply.interruptible and not u.cancelled for u in self.utterances.values())

    def cut(self) -> list[int]:
        """Drop every interruptible utterance not yet played out (generating, queued, or in the worker)."""
        dead = [u.id for u in self.utterances.values() if u.reply.interruptible and not u.cancelled]
        for utt_id in dead:
            self.utterances[utt_id].cancelled = True
        if self.generating is not None and self.generating.cancelled and self.ctx.engine_session is not None:
            self.ctx.engine_session.cancel()
        if dead:
            self.ctx.send(f.CancelUtterances(self.ctx.call_id, dead))
        return dead

    def prepare(self, reply: Reply) -> Utterance:
        """Make a reply's audio ahead, held: nothing reaches the worker and no action is applied until
        `commit` (the caller's turn ended with the words it answers)."""
        utt = Utterance(self.next_utterance, reply, time.monotonic(), held=True, speculative=True)
        self.next_utterance += 1
        self.pending.put_nowait(utt)
        return utt

    def commit(self, utt: Utterance, turn_ended_at: float) -> bool:
        """The turn ended as guessed: the audio made so far goes out at once, the rest as it is made.
        False (nothing sent; the caller is answered afresh) when the engine failed it or a newer reply
        was said meanwhile, which it must not overtake."""
        if utt.cancelled or any(other > utt.id for other in self.utterances):
            self.discard(utt)
            return False
        utt.speculative = False
        self.utterances[utt.id] = utt
        self.last_spoken = utt.id
        self.apply_actions(utt.reply.actions)
        utt.turn_ended_at = turn_ended_at
        if utt.pcm:  # its first audio was made before the turn ended: the reply latency is ~0
            utt.marks["engine_audio"] = time.monotonic()
            utt.timing["turn_to_first_audio_ms"] = 0.0
            self.ctx.metrics.reply_latency.observe(0.0)
        if not self.holding:  # while AMD listens it stays held, like any reply made then
            self.release(utt)
        return True

    def discard(self, utt: Utterance) -> None:
        """The caller went on: the speculative reply is dropped unheard (the worker never saw it)."""
        utt.cancelled = True
        if self.generating is utt and self.ctx.engine_session is not None:
            self.ctx.engine_session.cancel()

    def release(self, utt: Utterance) -> None:
        """A held utterance's audio goes to the worker, and from now on its audio as it is made."""
        utt.held = False
        for pcm in utt.held_frames:
            self._play(utt, pcm)
        utt.held_frames.clear()
        if utt.generated:
            self.ctx.send(f.EndOfUtterance(self.ctx.call_id, utt.id))

    def release_held(self, *, keep: bool) -> None:
        """AMD decided: send what was made while it listened (a person), or drop it unheard (a machine)."""
        self.holding = False
        for utt in sorted((u for u in self.utterances.values() if u.held), key=lambda u: u.id):
            utt.held = False
            if not keep:
                utt.cancelled = True
                self.utterances.pop(utt.id, None)
                if self.generating is utt and self.ctx.engine_session is not None:
                    self.ctx.engine_session.cancel()
                continue
            self.release(utt)

    def withdraw(self) -> list[int]:
        """AMD withdrew its provisional start (the worker has stopped the audio and drops what is still on
        its way): every utterance not yet played out is held again under a new id, with all the audio made
        so far, so it plays from its beginning at the next start or the verdict. Returns the old ids."""
        self.holding = True
        old = sorted(u.id for u in self.utterances.values() if not u.cancelled)
        live_from = self.next_utterance
        for old_id in old:
            utt = self.utterances.pop(old_id)
            self.withdrawn[old_id] = utt
            utt.id, self.next_utterance = self.next_utterance, self.next_utterance + 1
            self.utterances[utt.id] = utt
            if self.last_spoken == old_id:
                self.last_spoken = utt.id
            utt.held = True
            utt.held_frames = list(utt.pcm)
            utt.generated = utt.complete  # its EndOfUtterance (if sent) was under the old id
        self.ctx.send(f.ResumePlayback(self.ctx.call_id, live_from))
        return old

    def finish(self, frame: f.PlaybackDone) -> Utterance | None:
        """The worker is done with an utterance: it leaves the bookkeeping (None: unknown or already gone)."""
        return self.utterances.pop(frame.utterance, None)

    def audio(self, utt: Utterance) -> np.ndarray:
        return np.frombuffer(b"".join(utt.pcm), dtype=np.int16)

    def heard(self, utt: Utterance, frame: f.PlaybackDone) -> Heard:
        """The words of a reply cut by barge-in that were played, up to the last sent sample."""
        said = utt.reply.spoken_text
        played_s = max(0, frame.end_ms - frame.start_ms - 20 * frame.underruns) / 1000
        made_s = sum(map(len, utt.pcm)) / 2 / self.ctx.rate
        total_s = made_s if utt.complete else max(made_s, len(said) / DEFAULT_CHARS_PER_S)
        return Heard(said, heard_prefix(said, played_s, total_s), played_s, total_s, utt.complete)

    def observe_stages(self, utt: Utterance, first_rtp_at: float) -> None:
        """Split a reply's latency into its stages (metrics.TURN_STAGES); `first_rtp_at` is the worker's
        monotonic time of the utterance's first frame out (0: none went out, e.g. cut before playing)."""
        marks = utt.marks
        if not first_rtp_at or "engine_audio" not in marks or "turn_end" not in marks:
            return
        text = utt.reply.text
        first_text = getattr(text, "first_piece_at", None) or marks["agent_done"]
        times = (marks["turn_end"], marks["asr_done"], first_text, marks["engine_audio"], first_rtp_at)
        for stage, start, end in zip(TURN_STAGES, times, times[1:], strict=False):
            self.ctx.metrics.turn_stage.observe(max(0.0, end - start), stage=stage)
        utt.timing["turn_to_first_rtp_ms"] = (first_rtp_at - marks["turn_end"]) * 1000
