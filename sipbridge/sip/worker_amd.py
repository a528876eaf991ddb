"""Answering-machine detection in the worker (media thread): the detector of each outbound call with AMD on,
then its beep wait, and the greeting audio it sends for the supervisor's ASR (amd.asr).

It runs here, next to the audio, rather than in the supervisor: the detector needs every 20 ms frame from
the answer on, and only its decisions cross the IPC channel. `WorkerAmd` is the media thread's; the
supervisor's words for it arrive through the inbox (`AmdWords`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audio.amd import AmdSettings, AnsweringMachineDetector, BeepWaiter, Decision, GreetingFeed
from audio.beep import BeepSettings
from sipbridge import frames as f
from sipbridge.media.playback import PlaybackQueue
from sipbridge.sip.worker_context import WorkerContext

log = logging.getLogger("sipbridge.worker")


@dataclass
class WorkerAmd:
    ctx: WorkerContext
    # Outbound calls under answering-machine detection, then waiting for the beep (media thread only).
    amd: dict[str, AnsweringMachineDetector | BeepWaiter] = field(default_factory=dict)
    greetings: dict[str, GreetingFeed] = field(default_factory=dict)  # AMD audio for the ASR (amd.asr)

    @property
    def frame_bytes(self) -> int:
        return self.ctx.frame_bytes

    def emit(self, frame: f.Frame) -> None:
        self.ctx.emit(frame)

    def open(self, call_id: str, dial: f.Dial | None) -> None:
        """A call's media is up: detect if it is one we placed with AMD on."""
        if dial is not None and dial.amd is not None:
            amd = _amd_settings(dial.amd)
            self.amd[call_id] = AnsweringMachineDetector(amd, self.ctx.settings.clock_rate)
            if amd.asr:
                rate = self.ctx.settings.clock_rate
                self.greetings[call_id] = GreetingFeed(rate, amd.asr_chunk_ms * rate // 1000 * 2)

    def words(self, call_id: str, text: str, audio_ms: int) -> None:
        detector = self.amd.get(call_id)
        if isinstance(detector, AnsweringMachineDetector):
            detector.add_transcript(text, audio_ms)

    def close(self, call_id: str) -> None:
        self.amd.pop(call_id, None)
        self.greetings.pop(call_id, None)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self.amd

    def on_frame(self, call_id: str, pcm: bytes, playback: PlaybackQueue | None) -> None:
        """Answering-machine detection on the callee's audio, then the beep wait (media thread)."""
        if len(pcm) == self.frame_bytes:
            frame = np.frombuffer(pcm, dtype="<i2")
        else:  # no audio this tick (b""): silence keeps AMD's clock equal to the call's media clock
            frame = np.zeros(self.frame_bytes // 2, np.int16)
        state = self.amd[call_id]
        if isinstance(state, AnsweringMachineDetector):
            decision = state.process(frame)
            self._provisional(call_id, state, decision, playback)
            feed = self.greetings.get(call_id)
            if decision is None:
                chunk = feed.add(frame, state.heard_speech) if feed is not None else None
                if chunk is not None:
                    self.emit(f.AmdAudio(call_id, *chunk))
                return
            self.greetings.pop(call_id, None)
            self.emit(
                f.AmdResult(
                    call_id, decision.kind, decision.reasons, decision.decided_at_ms, decision.transcript
                )
            )
            if decision.kind == "machine":
                waiter = state.wait_for_beep()
                self.amd[call_id] = waiter
                cue = waiter.process(None)  # the beep that decided may already be over
                if cue is not None:
                    self.amd.pop(call_id, None)
                    self.emit(f.MessageCueFrame(call_id, cue.at_ms, cue.reason))
            else:
                self.amd.pop(call_id, None)
            return
        cue = state.process(frame)
        if cue is not None:
            self.amd.pop(call_id, None)
            self.emit(f.MessageCueFrame(call_id, cue.at_ms, cue.reason))

    def _provisional(
        self,
        call_id: str,
        detector: AnsweringMachineDetector,
        decision: Decision | None,
        playback: PlaybackQueue | None,
    ) -> None:
        """AMD's provisional "human" (amd.provisional_silence_ms): the supervisor sends the held greeting on
        `start`; on `withdraw`, or a machine verdict while a start stands, the bot's audio stops here, at
        once, before the supervisor even hears of it (a machine does not record before its beep)."""
        change = detector.provisional_change
        stop = change is not None and change.action == "withdraw"
        if decision is not None and decision.kind == "machine" and decision.provisional_since_ms is not None:
            stop = True
        if stop and playback is not None:
            # Their PlaybackDone frames go out with the next frame's, after this frame's AMD frames: the
            # supervisor takes the utterances back before it hears they were cut.
            cut, dropped = playback.withdraw()
            log.info(
                "call %s: provisional start stopped: utterances %s cut (%d frames)", call_id, cut, dropped
            )
        if change is not None:
            self.emit(f.AmdProvisional(call_id, change.action, change.at_ms, change.reason))


def _amd_settings(values: dict[str, Any]) -> AmdSettings:
    """AmdSettings from the Dial frame's JSON (the nested beep settings arrive as a dict)."""
    values = dict(values)
    if isinstance(values.get("beep"), dict):
        values["beep"] = BeepSettings(**values["beep"])
    if isinstance(values.get("machine_phrases"), list):
        values["machine_phrases"] = tuple(values["machine_phrases"])
    return AmdSettings(**values)
