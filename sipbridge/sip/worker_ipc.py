"""The worker's side of the supervisor link: the ipc-reader thread that takes every frame the supervisor
sends, and the main thread's handling of the commands that reach it through the `commands` queue.

The reader acts at once only where no pjsua2 object is touched (bot audio into a call's `PlaybackQueue`, AMD
words to the media thread, a Ping answered); everything else becomes a typed command
(sipbridge/sip/messages.py) that the main thread runs between two `libHandleEvents` polls.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass

from sipbridge import frames as f
from sipbridge.sip.call_control import CallControl
from sipbridge.sip.ipc import ChannelClosed
from sipbridge.sip.messages import (
    AmdWords,
    CallProgressed,
    CancelCall,
    Command,
    DrainWorker,
    HangupCall,
    PlaceCall,
    SendDigits,
    ShutdownWorker,
    TransferCall,
)
from sipbridge.sip.worker_context import WorkerContext

log = logging.getLogger("sipbridge.worker")


@dataclass
class WorkerIpc:
    ctx: WorkerContext
    control: CallControl

    # ------------------------------------------------------------------------------ ipc reader

    def reader_loop(self) -> None:
        ctx = self.ctx
        while True:
            try:
                frame = ctx.channel.recv()
            except ChannelClosed:
                ctx.commands.put(ShutdownWorker("supervisor channel closed"))
                return
            if isinstance(frame, f.PlayAudio):
                slot = ctx.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.push(frame.utterance, frame.interruptible, frame.pcm)
            elif isinstance(frame, f.EndOfUtterance):
                slot = ctx.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.end(frame.utterance)
            elif isinstance(frame, f.CancelUtterances):
                slot = ctx.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.cancel(frame.utterances)
            elif isinstance(frame, f.ResumePlayback):
                slot = ctx.calls.get(frame.call_id)
                if slot is not None and slot.playback is not None:
                    slot.playback.resume(frame.from_utterance)
            elif isinstance(frame, f.Dial):
                ctx.commands.put(PlaceCall(frame))
            elif isinstance(frame, f.AmdTranscript):
                # To the media thread, which owns the detector; it reads the words on the call's next frame.
                ctx.inbox.put(AmdWords(frame.call_id, frame.text, frame.audio_ms))
            elif isinstance(frame, f.CancelDial):
                ctx.commands.put(CancelCall(frame.call_id, "cancelled by the dialer"))
            elif isinstance(frame, f.Hangup):
                ctx.commands.put(HangupCall(frame.call_id, frame.code, frame.reason))
            elif isinstance(frame, f.Transfer):
                ctx.commands.put(TransferCall(frame.call_id, frame.target))
            elif isinstance(frame, f.SendDtmf):
                ctx.commands.put(SendDigits(frame.call_id, frame.digits))
            elif isinstance(frame, f.Shutdown):
                ctx.commands.put(ShutdownWorker(frame.reason or "supervisor asked"))
            elif isinstance(frame, f.Drain):
                ctx.commands.put(DrainWorker(frame.reason or "supervisor asked"))
            elif isinstance(frame, f.Ping):
                ctx.channel.send(f.Ping(frame.t, time.monotonic_ns(), frame.pcm))

    # ------------------------------------------------------------------------- commands (main thread)

    def drain_commands(self) -> None:
        while True:
            try:
                command = self.ctx.commands.get_nowait()
            except queue.Empty:
                return
            self._command(command)

    def _command(self, command: Command) -> None:
        ctx, control = self.ctx, self.control
        match command:
            case HangupCall(call_id, code, reason):
                control.hangup(call_id, "local", code, reason)
            case PlaceCall(dial):
                control.dial(dial)
            case CallProgressed(call_id, code, reason):
                control.on_progress(call_id, code, reason)
            case CancelCall(call_id, reason):
                slot = ctx.calls.get(call_id)
                if slot is not None and not slot.started:  # answered calls run to their end
                    control.cancel(call_id, "cancelled", reason)
            case TransferCall(call_id, target):
                control.call_op("transfer", call_id, target)
            case SendDigits(call_id, digits):
                control.call_op("send-dtmf", call_id, digits)
            case ShutdownWorker(reason):
                log.info("worker %d shutting down: %s", ctx.settings.index, reason)
                ctx.stopping = True
                ctx.shutdown_reason = reason
            case DrainWorker(reason):
                log.info("worker %d draining: %s; new INVITEs get 503", ctx.settings.index, reason)
                ctx.draining = True
