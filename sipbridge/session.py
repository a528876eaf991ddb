"""One call as the supervisor sees it: turns in, agent replies spoken through the engine, all recorded.

A `CallSession` lives on the supervisor's event loop from `CallStarted` to `CallEnded`. It owns the call's
agent state, engine session and speaking queue. Frames from the worker arrive through `handle()`; nothing in
it blocks the loop (ASR runs on its own thread; its store writes are queued to the store's writer thread,
sipbridge/store_writer.py, and only the call's end is waited for).

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
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audio.resample import make_resampler
from audio.wav import write_wav
from sipbridge import frames as f
from sipbridge.agents import Action, Agent, AgentCall, Reply, TextStream, Turn
from sipbridge.asr import Transcriber
from sipbridge.config import Config
from sipbridge.dialer.amd_words import GreetingTranscriber
from sipbridge.dialer.live import OutboundCall
from sipbridge.dialer.optout import OptOutDetector
from sipbridge.dialer.suppression import DncList
from sipbridge.engine import Engine, EngineError, EngineSession
from sipbridge.media.recorder import repair_recordings
from sipbridge.metrics import TURN_STAGES, Metrics
from sipbridge.outcomes import call_outcome
from sipbridge.sip.pool import WorkerHandle
from sipbridge.store_writer import StoreWriter
from sipbridge.text.heard import DEFAULT_CHARS_PER_S, heard_prefix
from sipbridge.turn_policy import EndOfTurn, is_backchannel

log = logging.getLogger(__name__)

_AGENT_TIMEOUT_S = 10.0


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


Transcript = tuple[str, list[tuple[str, float, float]]]  # text, (word, start s, end s) if the engine wants


@dataclass
class EarlyWords:
    """A transcription started on TurnPaused, before the turn ended (`vad.pause_ms`). It is the turn's
    transcription only if the TurnEnded that follows has the same bounds (the caller said nothing more)."""

    start_ms: int
    end_ms: int
    task: asyncio.Task[Transcript | None]  # None: the run failed; the turn transcribes again


@dataclass
class CallSession:
    start: f.CallStarted
    worker: WorkerHandle
    config: Config
    store: StoreWriter  # queues the call's writes: they never block the loop
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
    _silence: asyncio.Task[None] | None = None  # the armed silence timer (Reply.silence_timeout_s)
    _silence_timeout_s: float | None = None
    _caller_speaking: bool = False  # between SpeechStarted and the end of that turn
    # A call the dialer placed (None: inbound). Its AMD decision gates the greeting (docs/DIALER.md).
    outbound: OutboundCall | None = None
    _voicemail_utterance: int | None = None
    _disclosure_utterance: int | None = None
    _holding: bool = False  # new utterances are held: AMD has not decided yet (outbound)
    _amd_words: GreetingTranscriber | None = None  # the greeting's words for the worker's AMD (amd.asr)
    _early: EarlyWords | None = None  # transcription of the turn so far, from its latest TurnPaused
    metrics: Metrics = field(default_factory=Metrics)  # the supervisor's (a fresh one when run alone)
    _recording_failed: bool = False  # recordings dir unwritable: the call goes on without them
    # Decides at a pause whether the turn is over (turn.end_of_turn); None or "hangover": wait for TurnEnded.
    end_of_turn: EndOfTurn | None = None
    # (the worker's turn start, the end we answered at) once a turn was ended at a pause; the worker's
    # segmenter still has that turn open until its own TurnEnded (docs/ARCHITECTURE.md, "End of turn").
    _answered: tuple[int, int] | None = None
    _premature_seen: int | None = None  # the answered end whose continuation was recorded premature

    @property
    def direction(self) -> str:
        return "inbound" if self.outbound is None else "outbound"

    @property
    def call_id(self) -> str:
        return self.start.call_id

    @property
    def rate(self) -> int:
        return self.config.media.clock_rate

    def _turn_dir(self) -> Path | None:
        if not self.config.storage.record_calls or self._recording_failed:
            return None
        path = Path(self.config.storage.recordings_dir).resolve() / self.call_id
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._recording_error(exc)
            return None
        return path

    def _save_wav(self, name: str, pcm: np.ndarray[Any, Any]) -> str | None:
        """A turn's audio next to the call's recording; None (and an error event) if it cannot be written."""
        turn_dir = self._turn_dir()
        if turn_dir is None:
            return None
        path = turn_dir / name
        try:
            write_wav(str(path), pcm.astype(np.float32) / 32768.0, self.rate)
        except Exception as exc:  # OSError, soundfile.LibsndfileError (disk full, read-only)
            self._recording_error(exc)
            return None
        return str(path)

    def _recording_error(self, exc: BaseException) -> None:
        """Recordings stop for this call; the call goes on. Stored once as an event, counted once."""
        if self._recording_failed:
            return
        self._recording_failed = True
        self.metrics.recording_failures.inc()
        log.error("call %s: cannot write its recordings, going on without them: %s", self.call_id, exc)
        try:
            self.store.add_event(self.call_id, "recording_failed", {"error": f"{type(exc).__name__}: {exc}"})
        except Exception:
            log.exception("call %s: storing the recording failure failed", self.call_id)

    # ------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        s = self.start
        out = self.outbound
        variables = {"sip_call_id": s.sip_call_id, "remote_uri": s.remote_uri, "local_uri": s.local_uri}
        if out is None:
            row = self.store.create_call(
                "inbound",
                remote_uri=s.remote_uri,
                local_uri=s.local_uri,
                remote_addr=s.remote_addr,
                worker=self.worker.index,
                call_id=s.call_id,
                variables={"sip_call_id": s.sip_call_id},
            )
            # A call that cannot be recorded is not taken: hung up once the writer says its row failed.
            asyncio.wrap_future(row).add_done_callback(self._row_written)
        else:
            # The dialer created the row at the INVITE; the contact's columns become flow variables.
            variables.update(out.variables)
        self.store.mark_answered(s.call_id)
        self.metrics.calls_started.inc(direction=self.direction)
        turn_dir = self._turn_dir()
        self.store.set_call_media(
            s.call_id, codec=s.codec, recording_path=str(turn_dir / "call.wav") if turn_dir else None
        )
        self.agent_call = AgentCall(
            s.call_id,
            s.remote_uri,
            direction=self.direction,
            variables=variables,
        )
        self.store.set_agent_results(s.call_id, agent=self.agent.name)
        try:
            self.engine_session = self.engine.open_session(s.call_id)
        except EngineError as exc:
            self._fail(f"engine: {exc}")
            return
        self._spawn(self._speaker(), "speaker")
        # Outbound with AMD: the disclosure and the greeting are made now, while AMD listens, and held (no
        # audio leaves) until the verdict: a person hears them at once, a machine never (docs/DIALER.md).
        self._holding = out is not None and out.amd_enabled
        self._disclose()
        self._spawn(self._greet(), "greeting")

    def _row_written(self, row: asyncio.Future[str]) -> None:
        error = None if row.cancelled() else row.exception()
        if error is not None:
            self._fail(f"store: the call's row could not be written: {error}")

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
            await self._record_end(ended, lost_reason)
        except Exception:
            # The call is over whatever the store says; never let a bookkeeping error escape into the loop.
            log.exception("call %s: recording its end failed", self.call_id)
        if self.outbound is not None:
            # The dialer classifies and stores the attempt (answered: 200 + AMD + message delivered).
            self.outbound.finish(self.failure or lost_reason)

    async def _record_end(self, ended: f.CallEnded | None, lost_reason: str | None) -> None:
        """Waits for the end's commit: 'recorded' is said (and the dialer reads the call) only after it."""
        if lost_reason is not None:
            if self.config.storage.record_calls:  # its worker died writing it: make the header whole
                path = Path(self.config.storage.recordings_dir).resolve() / self.call_id / "call.wav"
                repair_recordings([str(path)] if path.exists() else [])
            await asyncio.wrap_future(self.store.end_call(self.call_id, "failed", reason=lost_reason))
            self.metrics.calls_ended.inc(direction=self.direction, outcome="failed")
            log.warning("call %s recorded: failed (%s)", self.call_id, lost_reason)
            return
        assert ended is not None
        outcome = call_outcome(ended.by, self.failure)
        self.metrics.calls_ended.inc(direction=self.direction, outcome=outcome)
        self.store.add_event(
            self.call_id,
            "media",
            {"rx_frames": ended.rx_frames, "tx_frames": ended.tx_frames, "underruns": ended.underruns},
        )
        written = self.store.end_call(
            self.call_id,
            outcome,
            reason=self.failure or f"{ended.by}: {ended.reason}",
            sip_status=ended.sip_status,
        )
        await asyncio.wrap_future(written)
        log.info("call %s recorded: %s (%s, %d underruns)", self.call_id, outcome, ended.by, ended.underruns)

    # ------------------------------------------------------------------------------ worker frames

    def handle(self, frame: f.Frame) -> None:
        if self.ended.is_set():
            return
        if self.outbound is not None and not self.outbound.accepts_turn(frame):
            return  # the greeting AMD listened to, or a machine's: no agent turn
        if isinstance(frame, f.TurnEnded | f.SpeechStarted | f.Dtmf):
            self._disarm_silence()  # the caller is active: no silence turn
            self._caller_speaking = isinstance(frame, f.SpeechStarted)
        elif isinstance(frame, f.TurnDropped):
            self._caller_speaking = False
            if self._silence_timeout_s is not None:
                self._arm_silence(self._silence_timeout_s)  # noise only: keep waiting for a real answer
        if isinstance(frame, f.TurnEnded):
            turn = self._unanswered(frame)
            if turn is not None:
                self._spawn(self._on_turn(turn, time.monotonic(), self._take_early(turn)), "turn")
        elif isinstance(frame, f.TurnPaused):
            self._on_pause(self._unanswered(frame))
        elif isinstance(frame, f.TurnDropped):
            self._early = None  # noise: nothing of it is a turn
            self._answered = None
        elif isinstance(frame, f.TurnResumed):
            self._drop_early()  # the caller went on: that pause's words and judgement are not the turn's
        elif isinstance(frame, f.BargeIn):
            self._on_barge_in(frame)
        elif isinstance(frame, f.RecordingFailed):  # the worker's call.wav
            self._recording_error(RuntimeError(frame.error))
        elif isinstance(frame, f.PlaybackDone):
            self._on_playback_done(frame)
        elif isinstance(frame, f.Dtmf):
            self._spawn(self._on_dtmf(frame.digit), "dtmf")
        elif isinstance(frame, f.TransferStatus):
            self._on_transfer_status(frame)
        elif isinstance(frame, f.SpeechStarted):
            log.debug("call %s: caller speech at %d ms", self.call_id, frame.t_ms)
        elif isinstance(frame, f.AmdAudio):
            self._on_amd_audio(frame)
        elif isinstance(frame, f.AmdResult):
            self._on_amd(frame)
        elif isinstance(frame, f.MessageCueFrame):
            self._on_message_cue(frame)

    def _on_amd_audio(self, frame: f.AmdAudio) -> None:
        if self.outbound is None or self.outbound.amd_kind is not None:
            return
        if self._amd_words is None:
            self._amd_words = GreetingTranscriber(
                self.call_id, self.asr, self.rate, self.worker.send, self._spawn
            )
        self._amd_words.add(frame)

    def _on_amd(self, frame: f.AmdResult) -> None:
        out = self.outbound
        if out is None:
            return
        if self._amd_words is not None:
            self._amd_words.stop()
        out.amd_kind, out.amd_at_ms = frame.kind, frame.decided_at_ms
        # First, before any bookkeeping: the audio made while AMD listened goes out now (or never).
        self._release_held(keep=frame.kind != "machine")
        data = {
            "kind": frame.kind,
            "reasons": frame.reasons,
            "decided_at_ms": frame.decided_at_ms,
            "transcript": frame.transcript,
        }
        self.store.add_event(self.call_id, "amd", data)
        log.info("call %s: AMD %s at %d ms %s", self.call_id, frame.kind, frame.decided_at_ms, frame.reasons)
        if frame.kind == "machine" and out.voicemail_message is None:
            self.hangup(200, "answering machine, no message configured")
        # else: the worker's MessageCueFrame says when the beep (or the greeting) is over

    def _release_held(self, *, keep: bool) -> None:
        """AMD decided: send what was made while it listened (a person), or drop it unheard (a machine)."""
        self._holding = False
        for utt in sorted((u for u in self.utterances.values() if u.held), key=lambda u: u.id):
            utt.held = False
            if not keep:
                utt.cancelled = True
                self.utterances.pop(utt.id, None)
                if self.generating is utt and self.engine_session is not None:
                    self.engine_session.cancel()
                continue
            for pcm in utt.held_frames:
                self.worker.send(f.PlayAudio(self.call_id, utt.id, utt.reply.interruptible, pcm))
            utt.held_frames.clear()
            if utt.generated:
                self.worker.send(f.EndOfUtterance(self.call_id, utt.id))

    def _on_message_cue(self, frame: f.MessageCueFrame) -> None:
        out = self.outbound
        if out is None or out.voicemail_message is None or self._voicemail_utterance is not None:
            return
        self.store.add_event(self.call_id, "message_cue", {"at_ms": frame.at_ms, "reason": frame.reason})
        # Not interruptible: a recorder's own noises must not cut the message short.
        utt = self.say(Reply(out.voicemail_message, interruptible=False, hangup=True))
        self._voicemail_utterance = utt.id

    def _disclose(self) -> None:
        """Outbound: the disclosure is queued before the agent is even asked for its greeting, so it is the
        first utterance; not interruptible, so barge-in cannot cut it; held with the greeting while AMD
        listens and dropped unheard if a machine answered (the voicemail message carries no disclosure)."""
        out = self.outbound
        text = None if out is None else (out.disclosure or self.config.dialer.disclosure)
        if text and self._disclosure_utterance is None:
            self._disclosure_utterance = self.say(Reply(text, interruptible=False)).id

    async def _greet(self) -> None:
        assert self.agent_call is not None
        reply = await self._ask_agent(self.agent.greeting(self.agent_call))
        machine = self.outbound is not None and self.outbound.amd_kind == "machine"
        if reply is not None and not machine:  # a greeting that comes after a machine verdict is not said
            self.say(reply)

    async def _transcribe(self, pcm: np.ndarray[Any, Any]) -> Transcript:
        # An engine that conditions on timed words (dia2) gets ASR's word timestamps instead of the text
        # spread evenly; the others do not pay the extra decode time.
        if getattr(self.engine, "wants_word_timings", False):
            return await self.asr.transcribe_words(pcm, self.rate)
        return await self.asr.transcribe(pcm, self.rate), []

    async def _transcribe_early(self, pcm: np.ndarray[Any, Any]) -> Transcript | None:
        try:
            return await self._transcribe(pcm)
        except Exception as exc:  # the turn's end transcribes again; a speculative run must not end the call
            log.warning("call %s: early transcription failed: %r", self.call_id, exc)
            return None

    def _on_pause(self, frame: f.TurnPaused | None) -> None:
        """Transcribe the turn so far while the stop hangover runs: if the caller says no more, the words
        are (nearly) ready when TurnEnded comes. A newer pause replaces an older one (its run finishes on
        the ASR thread anyway; only the newest can match). With `turn.end_of_turn` the pause is also judged:
        a complete turn is answered now, not at TurnEnded."""
        if frame is None:  # a pause inside what was already answered
            return
        self._drop_early()  # its run, if still queued behind others on the ASR thread, never starts
        pcm = np.frombuffer(frame.pcm, dtype=np.int16)
        task = asyncio.create_task(self._transcribe_early(pcm), name=f"early-asr-{self.call_id[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._early = EarlyWords(frame.start_ms, frame.end_ms, task)
        if self.end_of_turn is not None and self.end_of_turn.enabled:
            self._spawn(self._judge_pause(frame, self._early, time.monotonic()), "eot")

    async def _judge_pause(self, frame: f.TurnPaused, early: EarlyWords, paused_at: float) -> None:
        assert self.end_of_turn is not None
        pcm = np.frombuffer(frame.pcm, dtype=np.int16)
        try:
            verdict = await self.end_of_turn.judge(pcm, self.rate, asyncio.shield(early.task))
        except Exception as exc:  # a failed judgement leaves the turn to the hangover; the call goes on
            log.warning("call %s: end-of-turn judgement failed: %r", self.call_id, exc)
            return
        if self._early is not early:
            return  # the caller went on (a newer pause) or the hangover ended the turn first
        self.store.add_event(
            self.call_id,
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
        turn = f.TurnEnded(self.call_id, frame.start_ms, frame.end_ms, "end_of_turn", frame.pcm)
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
            premature = {"answered_end_ms": answered[1], "end_ms": frame.end_ms}
            self.store.add_event(self.call_id, "end_of_turn_premature", premature)
        pcm_start = frame.pcm_start_ms if frame.pcm_start_ms is not None else frame.start_ms  # pre-roll
        skip = (answered[1] - pcm_start) * self.rate // 1000 * 2  # int16 bytes
        rest = frame.pcm[max(skip, 0) :]
        return dataclasses.replace(frame, start_ms=answered[1], pcm=rest, pcm_start_ms=answered[1])

    def _take_early(self, turn: f.TurnEnded) -> EarlyWords | None:
        early = self._early
        if early is not None and (early.start_ms, early.end_ms) == (turn.start_ms, turn.end_ms):
            self._early = None
            return early
        self._drop_early()
        return None

    def _drop_early(self) -> None:
        """Forget the pause's transcription: cancelling its task also takes its run off the ASR thread's
        queue if it has not started (under load, stale runs queued there delayed the turn's own by
        seconds)."""
        if self._early is not None:
            self._early.task.cancel()
            self._early = None

    async def _on_turn(self, turn: f.TurnEnded, detected_at: float, early: EarlyWords | None = None) -> None:
        assert self.agent_call is not None and self.engine_session is not None
        async with self._turn_lock:  # turns are answered in the order they were spoken
            pcm = np.frombuffer(turn.pcm, dtype=np.int16)
            t0 = time.monotonic()
            early_words = await early.task if early is not None else None
            words, timed = early_words if early_words is not None else await self._transcribe(pcm)
            t_asr = time.monotonic()
            if self._short_during_speech(turn):
                if is_backchannel(words):  # the bot goes on; the agent never sees it
                    self.store.add_event(
                        self.call_id,
                        "backchannel",
                        {"words": words, "start_ms": turn.start_ms, "end_ms": turn.end_ms},
                    )
                    return
                self._cut_speech()  # a short answer ("No."): the worker held it as a possible backchannel
            self.metrics.caller_turns.inc(early_asr="true" if early_words is not None else "false")
            self.metrics.asr_wait.observe(t_asr - t0)
            self.engine_session.user_spoke(pcm, self.rate, timed if timed else words)
            audio_path = self._save_wav(f"caller-{self.caller_turns}.wav", pcm)
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
            if self._opt_out_said(words):
                return  # the agent never sees it: the session confirms and hangs up
            caller_turn = Turn(
                "speech", words, start_ms=turn.start_ms, end_ms=turn.end_ms, asr_ms=(t_asr - t0) * 1000
            )
            reply = await self._ask_agent(self.agent.on_turn(self.agent_call, caller_turn))
            t_agent = time.monotonic()
            if reply is not None:
                utt = self.say(reply)
                utt.turn_ended_at = detected_at
                utt.marks.update(turn_end=detected_at, asr_done=t_asr, agent_done=t_agent)
                utt.timing.update(
                    asr_ms=(t_asr - t0) * 1000,  # with an early transcription: only what was left of it
                    agent_ms=(t_agent - t_asr) * 1000,
                    wait_ms=(t0 - detected_at) * 1000,
                    early_asr=early_words is not None,
                    end_of_turn=turn.reason == "end_of_turn",  # answered at the pause, not the hangover
                )

    def _short_during_speech(self, turn: f.TurnEnded) -> bool:
        """A turn shorter than `vad.backchannel_ms` while interruptible speech is still queued or playing:
        the worker did not cut the bot for it (barge-in waits that long), the words decide."""
        limit = self.config.vad.backchannel_ms
        speaking = any(u.reply.interruptible and not u.cancelled for u in self.utterances.values())
        return limit > 0 and speaking and turn.end_ms - turn.start_ms < limit

    def _cut_speech(self) -> list[int]:
        """Drop every interruptible utterance not yet played out (generating, queued, or in the worker)."""
        dead = [u.id for u in self.utterances.values() if u.reply.interruptible and not u.cancelled]
        for utt_id in dead:
            self.utterances[utt_id].cancelled = True
        if self.generating is not None and self.generating.cancelled and self.engine_session is not None:
            self.engine_session.cancel()
        if dead:
            self.worker.send(f.CancelUtterances(self.call_id, dead))
        return dead

    async def _on_dtmf(self, digit: str) -> None:
        assert self.agent_call is not None
        self.store.add_event(self.call_id, "dtmf", {"digit": digit})
        reply = await self._ask_agent(self.agent.on_turn(self.agent_call, Turn("dtmf", dtmf=digit)))
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
        self._apply_now(reply.actions)
        utt = Utterance(self.next_utterance, reply, time.monotonic(), held=self._holding)
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
            if utt.held:
                utt.held_frames.append(pcm)
            else:
                self.worker.send(f.PlayAudio(self.call_id, utt.id, utt.reply.interruptible, pcm))
            if first:
                first = False
                now = time.monotonic()
                utt.timing["engine_first_ms"] = (now - t0) * 1000
                utt.marks["engine_audio"] = now
                self.metrics.engine_first_chunk.observe(now - t0)
                if utt.turn_ended_at is not None:
                    utt.timing["turn_to_first_audio_ms"] = (now - utt.turn_ended_at) * 1000
                    self.metrics.reply_latency.observe(now - utt.turn_ended_at)

        # An engine far faster than real time whose output still comes in bursts (espeak: one process per
        # sentence, starved on a busy box) asks for a head start: its first audio goes out once this much is
        # ready, so the worker's playback margin is not all that stands between a stall and an underrun.
        head = int(getattr(session, "start_margin_s", 0.0) * self.rate)
        held: list[np.ndarray] = []
        async for chunk in session.speak(utt.reply.text):
            if utt.cancelled:
                break
            out = resampler.process(np.asarray(chunk, dtype=np.float32))
            if head:
                held.append(out)
                if sum(map(len, held)) < head:
                    continue
                out, head = np.concatenate(held), 0
                held.clear()
            send(out)
        if not utt.cancelled:
            send(np.concatenate([*held, resampler.flush()]))
            utt.complete = True
            if utt.held:
                utt.generated = True  # EndOfUtterance goes with the audio when AMD says "person"
            else:
                self.worker.send(f.EndOfUtterance(self.call_id, utt.id))
        if isinstance(utt.reply.text, TextStream):
            self._apply_now(utt.reply.text.actions)  # an LLM's function calls arrive after its text
            if utt.reply.text.first_piece_at is not None and utt.turn_ended_at is not None:
                utt.timing["agent_first_text_ms"] = (utt.reply.text.first_piece_at - utt.turn_ended_at) * 1000
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
        self.metrics.barge_ins.inc()
        # Every interruptible utterance not yet played out dies: the one being generated, the ones queued
        # behind it, and those the worker already cut (re-cancelling those is harmless).
        self._cut_speech()
        self.store.add_event(
            self.call_id,
            "barge_in",
            {
                "t_ms": frame.t_ms,
                "utterance": frame.utterance,
                "dropped_ms": frame.dropped_ms,
                # The caller's sound onset (media ms) and the worker's monotonic decision time: tests put
                # these next to wire timestamps to split the cut into decision lag and drop time.
                "onset_ms": frame.onset_ms,
                "decided_at": frame.decided_at,
            },
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
        if utt.pcm:
            audio_path = self._save_wav(f"bot-{utt.id}.wav", np.frombuffer(b"".join(utt.pcm), dtype=np.int16))
        text = self._heard(utt, frame) if frame.interrupted else utt.reply.spoken_text
        self.store.add_turn(
            self.call_id,
            "bot",
            text,
            start_ms=frame.start_ms,
            end_ms=frame.end_ms,
            audio_path=audio_path,
            interrupted=frame.interrupted,
        )
        self._observe_stages(utt, frame.started_at)
        if utt.timing:
            self.store.add_event(self.call_id, "latency", {"utterance": utt.id, **utt.timing})
        if frame.underruns:
            log.warning("call %s: utterance %d had %d underruns", self.call_id, utt.id, frame.underruns)
        if utt.id == self._disclosure_utterance:
            # Offsets are media time from the answer, the time base of the call's recording (call.wav).
            whole = not frame.interrupted
            self.store.add_event(
                self.call_id,
                "disclosure",
                {
                    "text": utt.reply.spoken_text,
                    "start_ms": frame.start_ms,
                    "end_ms": frame.end_ms,
                    "whole": whole,
                },
            )
        if self.outbound is not None and utt.id == self._voicemail_utterance and not frame.interrupted:
            self.outbound.message_delivered = True
            self.store.add_event(
                self.call_id, "message_delivered", {"start_ms": frame.start_ms, "end_ms": frame.end_ms}
            )
        self._after_playback(utt.reply, frame.interrupted)

    def _heard(self, utt: Utterance, frame: f.PlaybackDone) -> str:
        """The words of a reply cut by barge-in that were played (sipbridge/text/heard.py): they replace the
        whole reply in the agent's history, so its next turn answers what the caller heard."""
        said = utt.reply.spoken_text
        played_s = max(0, frame.end_ms - frame.start_ms - 20 * frame.underruns) / 1000
        made_s = sum(map(len, utt.pcm)) / 2 / self.rate
        total_s = made_s if utt.complete else max(made_s, len(said) / DEFAULT_CHARS_PER_S)
        heard = heard_prefix(said, played_s, total_s)
        call = self.agent_call
        if call is not None and heard != said:
            for i in range(len(call.transcript) - 1, -1, -1):
                if call.transcript[i] == ("bot", said):
                    if heard:
                        call.transcript[i] = ("bot", heard)
                    else:  # cut before a word was heard: the caller was never told it
                        del call.transcript[i]
                    break
        self.store.add_event(
            self.call_id,
            "heard",
            {"utterance": utt.id, "said": said, "heard": heard, "played_ms": round(played_s * 1000),
             "audio_ms": round(total_s * 1000), "whole_audio": utt.complete},
        )  # fmt: skip
        return heard

    def _observe_stages(self, utt: Utterance, first_rtp_at: float) -> None:
        """Split a reply's latency into its stages (metrics.TURN_STAGES); `first_rtp_at` is the worker's
        monotonic time of the utterance's first frame out (0: none went out, e.g. cut before playing)."""
        marks = utt.marks
        if not first_rtp_at or "engine_audio" not in marks or "turn_end" not in marks:
            return
        text = utt.reply.text
        first_text = getattr(text, "first_piece_at", None) or marks["agent_done"]
        times = (marks["turn_end"], marks["asr_done"], first_text, marks["engine_audio"], first_rtp_at)
        for stage, start, end in zip(TURN_STAGES, times, times[1:], strict=False):
            self.metrics.turn_stage.observe(max(0.0, end - start), stage=stage)
        utt.timing["turn_to_first_rtp_ms"] = (first_rtp_at - marks["turn_end"]) * 1000

    # ------------------------------------------------------------------------------ agent actions

    def _apply_now(self, actions: tuple[Action, ...] | list[Action]) -> None:
        """Result fields and the outcome are stored as soon as the agent sets them (a crash keeps them)."""
        call = self.agent_call
        changed = False
        for action in actions:
            if call is None:
                break
            if action.kind == "set_result":
                call.results[action.arg] = action.value
                if action.arg == "outcome":  # the outcome without ending the call (e.g. before a transfer)
                    call.outcome = str(action.value)
                changed = True
            elif action.kind == "end":
                call.outcome = action.arg
                changed = True
            elif action.kind == "opt_out":
                self.opt_out(action.arg or "agent opt_out", cut_speech=False)
        if changed and call is not None:
            self.store.set_agent_results(self.call_id, results=call.results, outcome=call.outcome)

    def _opt_out_said(self, words: str) -> bool:
        if self.outbound is None:
            return False
        if self.outbound.opted_out:
            return True  # already confirming and hanging up: later turns get no answer
        phrase = OptOutDetector(tuple(self.config.dialer.opt_out_phrases)).match(words)
        if phrase is not None:
            self.opt_out(f"said {phrase!r}: {words[:160]!r}", cut_speech=True)
        return phrase is not None

    def opt_out(self, why: str, *, cut_speech: bool) -> None:
        """The callee asked not to be called again (docs/DIALER.md "Compliance"): the number goes on the
        do-not-call list now (before anything else can fail), then the confirmation, then BYE. `cut_speech`:
        drop the bot's interruptible speech first (a phrase heard mid-flow); an LLM's `opt_out` tool keeps
        the reply it came with (usually its own acknowledgement)."""
        out = self.outbound
        if out is None or out.opted_out:
            return
        out.opted_out = True
        number = out.claim.contact.number
        DncList(self.store.store).add(number, why[:200], "opt-out", now=time.time(), call_id=self.call_id)
        self.store.add_event(self.call_id, "opt_out", {"number": number, "why": why})
        log.info("call %s: %s opted out (%s): on the do-not-call list", self.call_id, number, why)
        self._apply_now([Action.end("opted_out")])
        if cut_speech:
            self._cut_speech()
        self.say(Reply(self.config.dialer.opt_out_confirmation, interruptible=False, hangup=True))

    def _after_playback(self, reply: Reply, interrupted: bool = False) -> None:
        """Actions that wait until the caller has heard the reply carrying them."""
        ends = reply.hangup
        for action in reply.all_actions():
            if action.kind == "send_dtmf":
                self.store.add_event(self.call_id, "send_dtmf", {"digits": action.arg})
                self.worker.send(f.SendDtmf(self.call_id, action.arg))
            elif action.kind == "transfer":
                self.store.add_event(self.call_id, "transfer", {"target": action.arg})
                self.worker.send(f.Transfer(self.call_id, action.arg))
                return  # the call ends when the transfer is accepted (TransferStatus)
            elif action.kind in ("hangup", "end"):
                ends = True
        if ends:
            self.hangup(200, "agent ended the call")
        elif reply.silence_timeout_s is not None and not self.utterances and not interrupted:
            # Cut by barge-in means the caller is talking: their turn, not silence, comes next.
            if not self._caller_speaking:
                self._arm_silence(reply.silence_timeout_s)

    def _on_transfer_status(self, frame: f.TransferStatus) -> None:
        self.store.add_event(self.call_id, "transfer_status", {"code": frame.code, "reason": frame.reason})
        # PJSIP reports the REFER's 202 as "100 Accepted", then the transferee's progress (NOTIFY sipfrag):
        # anything below 300 means the far end took the transfer, so a blind transfer is done.
        if frame.code < 300:
            self.hangup(200, f"transferred ({frame.code} {frame.reason})")
        else:
            log.warning("call %s: transfer failed: %d %s", self.call_id, frame.code, frame.reason)
            self.say(Reply(self.config.agent.fallback_line))

    def _arm_silence(self, timeout_s: float) -> None:
        self._disarm_silence()
        self._silence_timeout_s = timeout_s
        self._silence = asyncio.create_task(self._silence_turn(timeout_s), name=f"silence-{self.call_id[:8]}")
        self._tasks.add(self._silence)
        self._silence.add_done_callback(self._task_done)

    def _disarm_silence(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        self._silence_timeout_s = None

    async def _silence_turn(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        self._silence = None
        self._silence_timeout_s = None
        assert self.agent_call is not None
        self.store.add_event(self.call_id, "silence", {"timeout_s": timeout_s})
        async with self._turn_lock:
            reply = await self._ask_agent(
                self.agent.on_turn(self.agent_call, Turn("silence", silent_s=timeout_s))
            )
        if reply is not None:
            self.say(reply)
