"""A call the dialer placed: AMD's verdict and words, the disclosure, the voicemail message, the opt-out.

With AMD on, the disclosure and the greeting are made as soon as media is up and held (the Speaker's
`holding`) until the verdict: a person hears them at once, a machine never; a machine with a message
configured gets it after the worker's MessageCue (the beep). See docs/DIALER.md. An inbound call has no
`OutboundCall` and every method here is a no-op for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from sipbridge import frames as f
from sipbridge.agents import Reply
from sipbridge.asr import Transcriber
from sipbridge.call.context import CallContext, log
from sipbridge.call.speaker import Speaker, Utterance
from sipbridge.dialer.amd_words import GreetingTranscriber
from sipbridge.dialer.live import OutboundCall
from sipbridge.dialer.optout import OptOutDetector
from sipbridge.dialer.suppression import DncList


class OutboundLeg:
    def __init__(
        self, ctx: CallContext, asr: Transcriber, speaker: Speaker, end_agent: Callable[[str], None]
    ) -> None:
        self.ctx = ctx
        self.asr = asr
        self.speaker = speaker
        self.end_agent = end_agent  # records the agent outcome (an `end` action) when the callee opts out
        self.call: OutboundCall | None = None  # None: an inbound call
        self._voicemail_utterance: int | None = None
        self._disclosure: Utterance | None = None  # (its id changes if a provisional start is withdrawn)
        self._amd_words: GreetingTranscriber | None = None  # the greeting's words for the worker's AMD
        self._provisional = False  # AMD's provisional start stands: the held audio is going out

    def start(self) -> None:
        """Media is up: hold what is made until AMD decides, and queue the disclosure first."""
        self.speaker.holding = self.call is not None and self.call.amd_enabled
        self._disclose()

    def accepts_turn(self, frame: f.Frame) -> bool:
        return self.call is None or self.call.accepts_turn(frame)

    def machine_answered(self) -> bool:
        return self.call is not None and self.call.amd_kind == "machine"

    def on_amd_audio(self, frame: f.AmdAudio) -> None:
        if self.call is None or self.call.amd_kind is not None:
            return
        if self._amd_words is None:
            ctx = self.ctx

            def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
                ctx.spawn(coro, name)

            self._amd_words = GreetingTranscriber(ctx.call_id, self.asr, ctx.rate, ctx.worker.send, spawn)
        self._amd_words.add(frame)

    def on_provisional(self, frame: f.AmdProvisional) -> None:
        """AMD's provisional "human" (amd.provisional_silence_ms; docs/DIALER.md "No dead air"): on `start`
        the held disclosure and greeting go out before the verdict; on `withdraw` (the callee spoke again;
        the worker has already stopped the audio) they are taken back and held again, to play whole from
        their beginning on the next start or a human verdict."""
        if self.call is None or self.call.amd_kind is not None:
            return
        if frame.action == "start":
            self._provisional = True
            self.speaker.release_held(keep=True)
        elif self._provisional:
            self._provisional = False
            self.speaker.withdraw()
        self.ctx.event(
            "amd_provisional", {"action": frame.action, "at_ms": frame.at_ms, "reason": frame.reason}
        )

    def on_amd(self, frame: f.AmdResult) -> None:
        out = self.call
        if out is None:
            return
        if self._amd_words is not None:
            self._amd_words.stop()
        out.amd_kind, out.amd_at_ms = frame.kind, frame.decided_at_ms
        if self._provisional and frame.kind == "machine":
            self.speaker.withdraw()  # the worker stopped it already: take it back, then drop it below
        self._provisional = False
        # First, before any bookkeeping: the audio made while AMD listened goes out now (or never).
        self.speaker.release_held(keep=frame.kind != "machine")
        data = {
            "kind": frame.kind,
            "reasons": frame.reasons,
            "decided_at_ms": frame.decided_at_ms,
            "transcript": frame.transcript,
        }
        self.ctx.event("amd", data)
        log.info(
            "call %s: AMD %s at %d ms %s", self.ctx.call_id, frame.kind, frame.decided_at_ms, frame.reasons
        )
        if frame.kind == "machine" and out.voicemail_message is None:
            self.ctx.hangup(200, "answering machine, no message configured")
        # else: the worker's MessageCueFrame says when the beep (or the greeting) is over

    def on_message_cue(self, frame: f.MessageCueFrame) -> None:
        out = self.call
        if out is None or out.voicemail_message is None or self._voicemail_utterance is not None:
            return
        self.ctx.event("message_cue", {"at_ms": frame.at_ms, "reason": frame.reason})
        # Not interruptible: a recorder's own noises must not cut the message short.
        utt = self.speaker.say(Reply(out.voicemail_message, interruptible=False, hangup=True))
        self._voicemail_utterance = utt.id

    def _disclose(self) -> None:
        """Outbound: the disclosure is queued before the agent is even asked for its greeting, so it is the
        first utterance; not interruptible, so barge-in cannot cut it; held with the greeting while AMD
        listens and dropped unheard if a machine answered (the voicemail message carries no disclosure)."""
        out = self.call
        text = None if out is None else (out.disclosure or self.ctx.config.dialer.disclosure)
        if text and self._disclosure is None:
            self._disclosure = self.speaker.say(Reply(text, interruptible=False))

    def played(self, utt: Utterance, frame: f.PlaybackDone) -> None:
        """An utterance's PlaybackDone: the disclosure and the voicemail message are recorded as heard."""
        if utt is self._disclosure:
            # Offsets are media time from the answer, the time base of the call's recording (call.wav).
            whole = not frame.interrupted
            self.ctx.event(
                "disclosure",
                {
                    "text": utt.reply.spoken_text,
                    "start_ms": frame.start_ms,
                    "end_ms": frame.end_ms,
                    "whole": whole,
                },
            )
        if self.call is not None and utt.id == self._voicemail_utterance and not frame.interrupted:
            self.call.message_delivered = True
            self.ctx.event("message_delivered", {"start_ms": frame.start_ms, "end_ms": frame.end_ms})

    def withdrawn_played(self, frame: f.PlaybackDone) -> None:
        """The worker's PlaybackDone of an utterance taken back from a withdrawn provisional start: what the
        callee heard of it is stored (the utterance itself plays again, whole, under its new id)."""
        utt = self.speaker.withdrawn.pop(frame.utterance, None)
        if utt is None:
            return
        heard = {"utterance": frame.utterance, "start_ms": frame.start_ms, "end_ms": frame.end_ms}
        self.ctx.event("withdrawn_audio", {**heard, "text": utt.reply.spoken_text, "now": utt.id})
        if utt is self._disclosure:
            self.ctx.event(
                "disclosure", {"text": utt.reply.spoken_text, **heard, "whole": False, "withdrawn": True}
            )

    def opt_out_said(self, words: str) -> bool:
        """The callee's turn asked not to be called again (or already had): the agent never sees it."""
        if self.call is None:
            return False
        if self.call.opted_out:
            return True  # already confirming and hanging up: later turns get no answer
        phrase = OptOutDetector(tuple(self.ctx.config.dialer.opt_out_phrases)).match(words)
        if phrase is not None:
            self.opt_out(f"said {phrase!r}: {words[:160]!r}", cut_speech=True)
        return phrase is not None

    def opt_out(self, why: str, *, cut_speech: bool) -> None:
        """The callee asked not to be called again (docs/DIALER.md "Compliance"): the number goes on the
        do-not-call list now (before anything else can fail), then the confirmation, then BYE. `cut_speech`:
        drop the bot's interruptible speech first (a phrase heard mid-flow); an LLM's `opt_out` tool keeps
        the reply it came with (usually its own acknowledgement)."""
        out = self.call
        if out is None or out.opted_out:
            return
        ctx = self.ctx
        out.opted_out = True
        number = out.claim.contact.number
        DncList(ctx.store.store).add(number, why[:200], "opt-out", now=time.time(), call_id=ctx.call_id)
        ctx.event("opt_out", {"number": number, "why": why})
        log.info("call %s: %s opted out (%s): on the do-not-call list", ctx.call_id, number, why)
        self.end_agent("opted_out")
        if cut_speech:
            self.speaker.cut()
        self.speaker.say(Reply(ctx.config.dialer.opt_out_confirmation, interruptible=False, hangup=True))
