"""One call as the supervisor sees it: turns in, agent replies spoken through the engine, all recorded.

A `CallSession` lives on the supervisor's event loop from `CallStarted` to `CallEnded`. It opens and closes
the call (store rows, engine session, agent) and routes the worker's frames to the parts that own each piece
of the call's state (sipbridge/call/): the `Speaker` (bot utterances, playback, barge-in cuts), the
`TurnTaker` (caller turns, early ASR, end of turn, silence timer), the `AgentDriver` (the agent's call state
and actions), the `OutboundLeg` (AMD, disclosure, voicemail, opt-out) and the `TurnRecorder` (turn WAVs).
Nothing here blocks the loop: ASR runs on its own thread; store writes are queued to the store's writer thread
(sipbridge/store_writer.py) and only the call's end is waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sipbridge import frames as f
from sipbridge.agents import Action, Agent, Reply
from sipbridge.asr import Transcriber
from sipbridge.call.agent import AgentDriver
from sipbridge.call.context import CallContext, log
from sipbridge.call.outbound import OutboundLeg
from sipbridge.call.recording import TurnRecorder
from sipbridge.call.speaker import Speaker, Utterance
from sipbridge.call.turns import TurnTaker
from sipbridge.config import Config
from sipbridge.dialer.live import OutboundCall
from sipbridge.engine import Engine, EngineError
from sipbridge.media.recorder import repair_recordings
from sipbridge.metrics import Metrics
from sipbridge.outcomes import call_outcome
from sipbridge.sip.pool import WorkerHandle
from sipbridge.store_writer import StoreWriter
from sipbridge.turn_policy import EndOfTurn

__all__ = ["CallSession", "Utterance"]


class CallSession:
    def __init__(
        self,
        start: f.CallStarted,
        worker: WorkerHandle,
        config: Config,
        store: StoreWriter,  # queues the call's writes: they never block the loop
        engine: Engine,
        agent: Agent,
        asr: Transcriber,
        *,
        metrics: Metrics | None = None,  # the supervisor's (a fresh one when run alone)
        end_of_turn: EndOfTurn | None = None,
        outbound: OutboundCall | None = None,  # a call the dialer placed (None: inbound)
    ) -> None:
        self.ctx = ctx = CallContext(start, worker, config, store, metrics or Metrics())
        self.engine = engine
        self.recorder = TurnRecorder(ctx)
        self.speaker = Speaker(ctx, lambda actions: self.driver.apply_now(actions))
        self.driver = AgentDriver(
            ctx, agent, self.speaker, lambda why: self.dialing.opt_out(why, cut_speech=False)
        )
        self.dialing = OutboundLeg(
            ctx, asr, self.speaker, lambda outcome: self.driver.apply_now([Action.end(outcome)])
        )
        self.dialing.call = outbound
        parts = (self.speaker, self.recorder, self.driver, self.dialing)
        self.turns = TurnTaker(ctx, asr, engine, end_of_turn, parts)

    # The supervisor's view: identity, failure (set when the start failed), the dialer's call.

    @property
    def call_id(self) -> str:
        return self.ctx.call_id

    @property
    def failure(self) -> str | None:
        return self.ctx.failure

    @failure.setter
    def failure(self, reason: str | None) -> None:
        self.ctx.failure = reason

    @property
    def outbound(self) -> OutboundCall | None:
        return self.dialing.call

    @outbound.setter
    def outbound(self, call: OutboundCall | None) -> None:
        self.dialing.call = call

    @property
    def direction(self) -> str:
        return "inbound" if self.outbound is None else "outbound"

    def hangup(self, code: int = 200, reason: str = "") -> None:
        self.ctx.hangup(code, reason)

    def say(self, reply: Reply) -> Utterance:
        return self.speaker.say(reply)

    # ------------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        ctx, s, out = self.ctx, self.ctx.start, self.outbound
        variables = {"sip_call_id": s.sip_call_id, "remote_uri": s.remote_uri, "local_uri": s.local_uri}
        if out is None:
            row = ctx.store.create_call(
                "inbound",
                remote_uri=s.remote_uri,
                local_uri=s.local_uri,
                remote_addr=s.remote_addr,
                worker=ctx.worker.index,
                call_id=s.call_id,
                variables={"sip_call_id": s.sip_call_id},
            )
            # A call that cannot be recorded is not taken: hung up once the writer says its row failed.
            asyncio.wrap_future(row).add_done_callback(self._row_written)
        else:
            # The dialer created the row at the INVITE; the contact's columns become flow variables.
            variables.update(out.variables)
        ctx.store.mark_answered(s.call_id)
        ctx.metrics.calls_started.inc(direction=self.direction)
        turn_dir = self.recorder.turn_dir()
        ctx.store.set_call_media(
            s.call_id, codec=s.codec, recording_path=str(turn_dir / "call.wav") if turn_dir else None
        )
        self.driver.open(self.direction, variables)
        try:
            ctx.engine_session = self.engine.open_session(s.call_id)
        except EngineError as exc:
            ctx.fail(f"engine: {exc}")
            return
        ctx.spawn(self.speaker.run(), "speaker")
        # Outbound with AMD: the disclosure and the greeting are made now, while AMD listens, and held (no
        # audio leaves) until the verdict: a person hears them at once, a machine never (docs/DIALER.md).
        self.dialing.start()
        ctx.spawn(self._greet(), "greeting")

    def _row_written(self, row: asyncio.Future[str]) -> None:
        error = None if row.cancelled() else row.exception()
        if error is not None:
            self.ctx.fail(f"store: the call's row could not be written: {error}")

    async def _greet(self) -> None:
        reply = await self.driver.greeting()
        if reply is not None and not self.dialing.machine_answered():  # not said after a machine verdict
            self.speaker.say(reply)

    async def close(self, ended: f.CallEnded | None, lost_reason: str | None = None) -> None:
        """The call is over (CallEnded, or its worker died): stop everything, free the engine row, record."""
        ctx = self.ctx
        if ctx.ended.is_set():
            return
        ctx.ended.set()
        ctx.cancel_tasks()
        if ctx.engine_session is not None:
            await ctx.engine_session.close()
        with contextlib.suppress(Exception):
            await self.driver.on_end()
        try:
            await self._record_end(ended, lost_reason)
        except Exception:
            # The call is over whatever the store says; never let a bookkeeping error escape into the loop.
            log.exception("call %s: recording its end failed", self.call_id)
        if self.outbound is not None:
            # The dialer classifies and stores the attempt (answered: 200 + AMD + message delivered).
            self.outbound.finish(ctx.failure or lost_reason)

    async def _record_end(self, ended: f.CallEnded | None, lost_reason: str | None) -> None:
        """Waits for the end's commit: 'recorded' is said (and the dialer reads the call) only after it."""
        ctx = self.ctx
        if lost_reason is not None:
            if ctx.config.storage.record_calls:  # its worker died writing it: make the header whole
                path = Path(ctx.config.storage.recordings_dir).resolve() / self.call_id / "call.wav"
                repair_recordings([str(path)] if path.exists() else [])
            await asyncio.wrap_future(ctx.store.end_call(self.call_id, "failed", reason=lost_reason))
            ctx.metrics.calls_ended.inc(direction=self.direction, outcome="failed")
            log.warning("call %s recorded: failed (%s)", self.call_id, lost_reason)
            return
        assert ended is not None
        outcome = call_outcome(ended.by, ctx.failure)
        ctx.metrics.calls_ended.inc(direction=self.direction, outcome=outcome)
        media = {"rx_frames": ended.rx_frames, "tx_frames": ended.tx_frames, "underruns": ended.underruns}
        ctx.event("media", media)
        written = ctx.store.end_call(
            self.call_id,
            outcome,
            reason=ctx.failure or f"{ended.by}: {ended.reason}",
            sip_status=ended.sip_status,
        )
        await asyncio.wrap_future(written)
        log.info("call %s recorded: %s (%s, %d underruns)", self.call_id, outcome, ended.by, ended.underruns)

    # ------------------------------------------------------------------------------ worker frames

    def handle(self, frame: f.Frame) -> None:
        if self.ctx.ended.is_set():
            return
        if not self.dialing.accepts_turn(frame):
            return  # the greeting AMD listened to, or a machine's: no agent turn
        self.turns.handle(frame)
        if isinstance(frame, f.BargeIn):
            self._on_barge_in(frame)
        elif isinstance(frame, f.RecordingFailed):  # the worker's call.wav
            self.recorder.error(RuntimeError(frame.error))
        elif isinstance(frame, f.PlaybackDone):
            self._on_playback_done(frame)
        elif isinstance(frame, f.Dtmf):
            self.ctx.spawn(self.driver.on_dtmf(frame.digit), "dtmf")
        elif isinstance(frame, f.TransferStatus):
            self.driver.on_transfer_status(frame)
        elif isinstance(frame, f.AmdAudio):
            self.dialing.on_amd_audio(frame)
        elif isinstance(frame, f.AmdProvisional):
            self.dialing.on_provisional(frame)
        elif isinstance(frame, f.AmdResult):
            self.dialing.on_amd(frame)
        elif isinstance(frame, f.MessageCueFrame):
            self.dialing.on_message_cue(frame)

    def _on_barge_in(self, frame: f.BargeIn) -> None:
        self.ctx.metrics.barge_ins.inc()
        # Every interruptible utterance not yet played out dies: the one being generated, the ones queued
        # behind it, and those the worker already cut (re-cancelling those is harmless).
        self.speaker.cut()
        self.ctx.event(
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
        utt = self.speaker.finish(frame)
        if utt is None:
            self.dialing.withdrawn_played(frame)  # taken back from a withdrawn AMD provisional start
            return
        ctx = self.ctx
        audio_path = self.recorder.save_wav(f"bot-{utt.id}.wav", self.speaker.audio(utt)) if utt.pcm else None
        text = self._heard(utt, frame) if frame.interrupted else utt.reply.spoken_text
        ctx.store.add_turn(
            self.call_id,
            "bot",
            text,
            start_ms=frame.start_ms,
            end_ms=frame.end_ms,
            audio_path=audio_path,
            interrupted=frame.interrupted,
        )
        self.speaker.observe_stages(utt, frame.started_at)
        if utt.timing:
            ctx.event("latency", {"utterance": utt.id, **utt.timing})
        if frame.underruns:
            log.warning("call %s: utterance %d had %d underruns", self.call_id, utt.id, frame.underruns)
        self.dialing.played(utt, frame)
        reply = utt.reply
        goes_on = self.driver.after_playback(reply)
        # Cut by barge-in means the caller is talking: their turn, not silence, comes next.
        if (
            goes_on
            and reply.silence_timeout_s is not None
            and not self.speaker.utterances
            and not frame.interrupted
        ):
            self.turns.silence_after(reply.silence_timeout_s)

    def _heard(self, utt: Utterance, frame: f.PlaybackDone) -> str:
        """The words of a reply cut by barge-in that were played (sipbridge/text/heard.py): they replace the
        whole reply in the agent's history, and the engine's context keeps only its played audio (when it
        was the engine's latest reply), so the next turn answers what the caller heard."""
        heard = self.speaker.heard(utt, frame)
        self.driver.forget_unheard(heard.said, heard.heard)
        session = self.ctx.engine_session
        if session is not None and utt.id == self.speaker.last_spoken:
            session.played(heard.played_s)  # the engine's own context (Dia2) drops the unplayed audio too
        self.ctx.event(
            "heard",
            {"utterance": utt.id, "said": heard.said, "heard": heard.heard,
             "played_ms": round(heard.played_s * 1000), "audio_ms": round(heard.audio_s * 1000),
             "whole_audio": heard.whole_audio},
        )  # fmt: skip
        return heard.heard
