"""One call as the supervisor sees it: turns in, agent replies spoken through the engine, all recorded.

A `CallSession` lives on the supervisor's event loop from `CallStarted` to `CallEnded`. It owns the call's
agent state, engine session and speaking queue. Frames from the worker arrive through `handle()`; nothing in
it blocks the loop (ASR runs on its own thread, SQLite writes are a few ms).

Speaking: replies are queued and generated one after another by one task (`_speaker`). Each reply is one
*utterance* with an id; its audio is resampled to the call rate and streamed to the worker as PlayAudio, then
EndOfUtterance. The worker plays and reports PlaybackDone. Barge-in is decided by the worker, which has
already dropped queued interruptible audio when BargeIn arrives here; the session then cancels generation
and drops every pending interruptible reply, telling the worker which utterance ids are dead so audio still
in flight is discarded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audio.resample import make_resampler
from audio.wav import write_wav
from sipbridge import frames as f
from sipbridge.agents import Agent, AgentCall, Reply
from sipbridge.asr import Transcriber
from sipbridge.config import Config
from sipbridge.engine import Engine, EngineError, EngineSession
from sipbridge.outcomes import call_outcome
from sipbridge.sip.pool import WorkerHandle
from sipbridge.store import Store

log = logging.getLogger(__name__)

_AGENT_TIMEOUT_S = 10.0


@dataclass
class Utterance:
    id: int
    reply: Reply
    queued_at: float
    turn_ended_at: float | None = None  # monotonic time the caller turn it answers was detected
    timing: dict[str, float] = field(default_factory=dict)
    pcm: list[bytes] = field(default_factory=list)  # what was sent (for the bot turn's WAV)
    cancelled: bool = False


@dataclass
class CallSession:
    start: f.CallStarted
    worker: WorkerHandle
    config: Config
    store: Store
    engine: Engine
    agent: Agent
    asr: Transcriber
    engine_session: EngineSession | None = None
    agent_call: AgentCall | None = None
    utterances: dict[int, Utterance] = field(default_factory=dict)  # queued, generating or playing
    pending: asyncio.Queue[Utterance] = field(default_factory=asyncio.Queue)
    generating: Utterance | None = None
    next_utterance: int = 1
    failure: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    caller_turns: int = 0
    _turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _hangup_sent: bool = False

    @property
    def call_id(self) -> str:
        return self.start.call_id

    @property
    def rate(self) -> int:
        return self.config.media.clock_rate

    def _turn_dir(self) -> Path | None:
        if not self.config.storage.record_calls:
            return None
        path = Path(self.config.storage.recordings_dir).resolve() / self.call_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        s = self.start
        self.store.create_call(
            "inbound",
            remote_uri=s.remote_uri,
            local_uri=s.local_uri,
            remote_addr=s.remote_addr,
            worker=self.worker.index,
            call_id=s.call_id,
            variables={"sip_call_id": s.sip_call_id},
        )
        self.store.mark_answered(s.call_id)
        turn_dir = self._turn_dir()
        self.store.set_call_media(
            s.call_id, codec=s.codec, recording_path=str(turn_dir / "call.wav") if turn_dir else None
        )
        self.agent_call = AgentCall(s.call_id, s.remote_uri)
        try:
            self.engine_session = self.engine.open_session(s.call_id)
        except EngineError as exc:
            self._fail(f"engine: {exc}")
            return
        self._spawn(self._speaker(), "speaker")
        self._spawn(self._greet(), "greeting")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{self.call_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("call %s: %s failed: %r", self.call_id, task.get_name(), exc, exc_info=exc)
            self._fail(f"{task.get_name().split('-')[0]}: {exc}")

    def _fail(self, reason: str) -> None:
        """Something on our side broke mid-call: end the call cleanly and record why."""
        if self.failure is None:
            self.failure = reason
            log.error("call %s failed: %s; hanging up", self.call_id, reason)
        self.hangup(500, reason)

    def hangup(self, code: int = 200, reason: str = "") -> None:
        if not self._hangup_sent and not self.ended.is_set():
            self._hangup_sent = True
            self.worker.send(f.Hangup(self.call_id, code, reason))

    async def close(self, ended: f.CallEnded | None, lost_reason: str | None = None) -> None:
        """The call is over (CallEnded, or its worker died): stop everything, free the engine row, record."""
        if self.ended.is_set():
            return
        self.ended.set()
        for task in list(self._tasks):
            task.cancel()
        if self.engine_session is not None:
            await self.engine_session.close()
        if self.agent_call is not None:
            with contextlib.suppress(Exception):
                await self.agent.on_end(self.agent_call)
        try:
            self._record_end(ended, lost_reason)
        except Exception:
            # The call is over whatever the store says; never let a bookkeeping error escape into the loop.
            log.exception("call %s: recording its end failed", self.call_id)

    def _record_end(self, ended: f.CallEnded | None, lost_reason: str | None) -> None:
        if lost_reason is not None:
            self.store.end_call(self.call_id, "failed", reason=lost_reason)
            log.warning("call %s recorded: failed (%s)", self.call_id, lost_reason)
            return
        assert ended is not None
        outcome = call_outcome(ended.by, self.failure)
        self.store.add_event(
            self.call_id,
            "media",
            {"rx_frames": ended.rx_frames, "tx_frames": ended.tx_frames, "underruns": ended.underruns},
        )
        self.store.end_call(
            self.call_id,
            outcome,
            reason=self.failure or f"{ended.by}: {ended.reason}",
            sip_status=ended.sip_status,
        )
        log.info("call %s recorded: %s (%s, %d underruns)", self.call_id, outcome, ended.by, ended.underruns)

    # ------------------------------------------------------------------------------ worker frames

    def handle(self, frame: f.Frame) -> None:
        if self.ended.is_set():
            return
        if isinstance(frame, f.TurnEnded):
            self._spawn(self._on_turn(frame, time.monotonic()), "turn")
        elif isinstance(frame, f.BargeIn):
            self._on_barge_in(frame)
        elif isinstance(frame, f.PlaybackDone):
            self._on_playback_done(frame)
        elif isinstance(frame, f.Dtmf):
            self._spawn(self._on_dtmf(frame.digit), "dtmf")
        elif isinstance(frame, f.SpeechStarted):
            log.debug("call %s: caller speech at %d ms", self.call_id, frame.t_ms)

    async def _greet(self) -> None:
        assert self.agent_call is not None
        reply = await self._ask_agent(self.agent.greeting(self.agent_call))
        if reply is not None:
            self.say(reply)

    async def _on_turn(self, turn: f.TurnEnded, detected_at: float) -> None:
        assert self.agent_call is not None and self.engine_session is not None
        async with self._turn_lock:  # turns are answered in the order they were spoken
            pcm = np.frombuffer(turn.pcm, dtype=np.int16)
            t0 = time.monotonic()
            words = await self.asr.transcribe(pcm, self.rate)
            t_asr = time.monotonic()
            self.engine_session.user_spoke(pcm, self.rate, words)
            audio_path = None
            turn_dir = self._turn_dir()
            if turn_dir is not None:
                audio_path = str(turn_dir / f"caller-{self.caller_turns}.wav")
                write_wav(audio_path, pcm.astype(np.float32) / 32768.0, self.rate)
            self.caller_turns += 1
            self.store.add_turn(
                self.call_id,
                "caller",
                words,
                start_ms=turn.start_ms,
                end_ms=turn.end_ms,
                audio_path=audio_path,
            )
            self.agent_call.transcript.append(("caller", words))
            log.info(
                "call %s: caller turn %d-%d ms (%s): %r",
                self.call_id,
                turn.start_ms,
                turn.end_ms,
                turn.reason,
                words,
            )
            reply = await self._ask_agent(self.agent.on_turn(self.agent_call, words))
            t_agent = time.monotonic()
            if reply is not None:
                utt = self.say(reply)
                utt.turn_ended_at = detected_at
                utt.timing.update(
                    asr_ms=(t_asr - t0) * 1000,
                    agent_ms=(t_agent - t_asr) * 1000,
                    wait_ms=(t0 - detected_at) * 1000,
                )

    async def _on_dtmf(self, digit: str) -> None:
        assert self.agent_call is not None
        self.store.add_event(self.call_id, "dtmf", {"digit": digit})
        reply = await self._ask_agent(self.agent.on_dtmf(self.agent_call, digit))
        if reply is not None:
            self.say(reply)

    async def _ask_agent(self, call: Any) -> Reply | None:
        """A failing or hanging agent gets the fallback line said for it: the caller never hears dead air."""
        try:
            reply: Reply | None = await asyncio.wait_for(call, _AGENT_TIMEOUT_S)
            return reply
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("call %s: agent %s failed: %r", self.call_id, self.agent.name, exc)
            self.store.add_event(self.call_id, "agent_error", {"error": repr(exc)})
            return Reply(self.config.agent.fallback_line)

    # -------------------------------------------------------------------------------- speaking

    def say(self, reply: Reply) -> Utterance:
        utt = Utterance(self.next_utterance, reply, time.monotonic())
        self.next_utterance += 1
        self.utterances[utt.id] = utt
        self.pending.put_nowait(utt)
        return utt

    async def _speaker(self) -> None:
        assert self.engine_session is not None
        while True:
            utt = await self.pending.get()
            if utt.cancelled:
                continue
            self.generating = utt
            try:
                await self._generate(utt)
            except EngineError as exc:
                self._fail(f"engine: {exc}")
                return
            finally:
                self.generating = None

    async def _generate(self, utt: Utterance) -> None:
        assert self.engine_session is not None
        session = self.engine_session
        # The low-latency FIR: soxr's stream would hold back up to 74 ms of every reply (docs/AUDIO.md).
        resampler = make_resampler(session.sample_rate, self.rate)
        t0 = time.monotonic()
        first = True

        def send(chunk: np.ndarray) -> None:
            nonlocal first
            if not len(chunk) or utt.cancelled:
                return
            pcm = (np.clip(chunk, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
            utt.pcm.append(pcm)
            self.worker.send(f.PlayAudio(self.call_id, utt.id, utt.reply.interruptible, pcm))
            if first:
                first = False
                now = time.monotonic()
                utt.timing["engine_first_ms"] = (now - t0) * 1000
                if utt.turn_ended_at is not None:
                    utt.timing["turn_to_first_audio_ms"] = (now - utt.turn_ended_at) * 1000

        async for chunk in session.speak(utt.reply.text):
            if utt.cancelled:
                break
            send(resampler.process(np.asarray(chunk, dtype=np.float32)))
        if not utt.cancelled:
            send(resampler.flush())
            self.worker.send(f.EndOfUtterance(self.call_id, utt.id))
        utt.timing["engine_total_ms"] = (time.monotonic() - t0) * 1000
        if utt.timing.get("turn_to_first_audio_ms") is not None:
            log.info(
                "call %s: utterance %d first audio %.0f ms after turn end"
                " (asr %.0f, agent %.1f, engine %.0f)",
                self.call_id,
                utt.id,
                utt.timing["turn_to_first_audio_ms"],
                utt.timing["asr_ms"],
                utt.timing["agent_ms"],
                utt.timing["engine_first_ms"],
            )

    def _on_barge_in(self, frame: f.BargeIn) -> None:
        # Every interruptible utterance not yet played out dies: the one being generated, the ones queued
        # behind it, and those the worker already cut (re-cancelling those is harmless).
        dead = [u.id for u in self.utterances.values() if u.reply.interruptible and not u.cancelled]
        for utt_id in dead:
            self.utterances[utt_id].cancelled = True
        current = self.generating
        if current is not None and current.cancelled:
            assert self.engine_session is not None
            self.engine_session.cancel()
        if dead:
            self.worker.send(f.CancelUtterances(self.call_id, dead))
        self.store.add_event(
            self.call_id,
            "barge_in",
            {"t_ms": frame.t_ms, "utterance": frame.utterance, "dropped_ms": frame.dropped_ms},
        )
        log.info(
            "call %s: barge-in at %d ms, utterance %d cut (%d ms dropped)",
            self.call_id,
            frame.t_ms,
            frame.utterance,
            frame.dropped_ms,
        )

    def _on_playback_done(self, frame: f.PlaybackDone) -> None:
        utt = self.utterances.pop(frame.utterance, None)
        if utt is None:
            return
        audio_path = None
        turn_dir = self._turn_dir()
        if turn_dir is not None and utt.pcm:
            audio_path = str(turn_dir / f"bot-{utt.id}.wav")
            pcm = np.frombuffer(b"".join(utt.pcm), dtype=np.int16)
            write_wav(audio_path, pcm.astype(np.float32) / 32768.0, self.rate)
        self.store.add_turn(
            self.call_id,
            "bot",
            utt.reply.text,
            start_ms=frame.start_ms,
            end_ms=frame.end_ms,
            audio_path=audio_path,
            interrupted=frame.interrupted,
        )
        if utt.timing:
            self.store.add_event(self.call_id, "latency", {"utterance": utt.id, **utt.timing})
        if frame.underruns:
            log.warning("call %s: utterance %d had %d underruns", self.call_id, utt.id, frame.underruns)
        if utt.reply.hangup:
            self.hangup(200, "agent ended the call")
