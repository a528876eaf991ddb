"""The worker's media thread: it consumes the inbox (caller and bot audio in clock order, call open and close,
DTMF, AMD words) and runs each call's `Inbound` (VAD turns, barge-in, echo gate, stereo recording) and its
answering-machine detection. Every PlaybackDone, Dtmf and CallEnded frame of the worker leaves from here.

`MediaThread` owns the calls' `Inbound`s and its `WorkerAmd`; it never touches pjsua2 (what it needs done to
a call goes to the main thread as a command).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio.echo import make_echo_canceller
from audio.vad import VadSettings, make_segmenter
from audio.vad.backends import make_classifier
from sipbridge import frames as f
from sipbridge.media.inbound import EchoGate, Inbound
from sipbridge.media.playback import PlaybackQueue
from sipbridge.media.recorder import StereoRecorder
from sipbridge.sip.ipc import ChannelClosed
from sipbridge.sip.messages import (
    AmdWords,
    BotAudio,
    CallerAudio,
    DtmfReceived,
    HangupCall,
    InboxItem,
    MediaClose,
    MediaOpen,
    ShutdownWorker,
    StopMedia,
)
from sipbridge.sip.worker_amd import WorkerAmd
from sipbridge.sip.worker_context import WorkerContext

log = logging.getLogger("sipbridge.worker")


@dataclass
class MediaThread:
    ctx: WorkerContext
    amd: WorkerAmd
    inbound: dict[str, Inbound] = field(default_factory=dict)  # media thread only

    def run(self) -> None:
        _warm_vad(self.ctx.settings.clock_rate)
        while True:
            item: InboxItem | None = None
            try:
                item = self.ctx.inbox.get()
                if isinstance(item, StopMedia):
                    return
                self._media_item(item)
            except ChannelClosed:
                self.ctx.commands.put(ShutdownWorker("supervisor channel closed"))
                return
            except Exception:
                # A bug in one call's media must not take the other calls down: end that call. Anything
                # else (a BaseException) ends this thread, and the main loop then ends the worker
                # (`_check_threads`): without it no call here would ever send its CallEnded.
                call_id = getattr(item, "call_id", "")
                log.exception("call %s: media error, hanging up", call_id)
                self.ctx.commands.put(HangupCall(call_id, 500, "media error"))

    def _media_item(self, item: InboxItem) -> None:
        match item:
            case CallerAudio(call_id, pcm):
                ib = self.inbound.get(call_id)
                if ib is not None:
                    ib.on_frame(pcm)
                    self._emit_finished(ib)
                if call_id in self.amd:
                    self.amd.on_frame(call_id, pcm, ib.playback if ib is not None else None)
            case BotAudio(call_id, pcm):
                ib = self.inbound.get(call_id)
                if ib is not None:
                    ib.on_bot_frame(pcm)
            case MediaOpen(call_id, playback):
                self._open_media(call_id, playback)
            case AmdWords(call_id, text, audio_ms):
                self.amd.words(call_id, text, audio_ms)
            case MediaClose(call_id, code, reason, by):
                self.amd.close(call_id)
                self._close_inbound(call_id, code, reason, by)
            case DtmfReceived(call_id, digit):
                log.info("call %s: DTMF %s", call_id, digit)
                self.ctx.emit(f.Dtmf(call_id, digit))

    def _open_media(self, call_id: str, playback: PlaybackQueue) -> None:
        self.inbound[call_id] = self._new_inbound(call_id, playback)
        slot = self.ctx.calls.get(call_id)
        if slot is not None:
            self.amd.open(call_id, slot.dial)

    def _new_inbound(self, call_id: str, playback: PlaybackQueue) -> Inbound:
        s = self.ctx.settings
        recorder, failure = None, None
        if s.recordings_dir is not None:
            try:
                recorder = StereoRecorder(Path(s.recordings_dir) / call_id / "call.wav", s.clock_rate)
            except Exception as exc:  # read-only or full disk: the call goes on unrecorded
                failure = f"{type(exc).__name__}: {exc}"[:300]
        if failure is not None:
            self.ctx.emit(f.RecordingFailed(call_id, failure))
        return Inbound(
            call_id=call_id,
            segmenter=make_segmenter(VadSettings(**s.vad), s.clock_rate),
            playback=playback,
            emit=self.ctx.emit,
            barge_in_min_ms=s.barge_in_min_ms,
            recorder=recorder,
            echo=EchoGate.of(s.echo_return_db, s.echo_tail_ms),
            aec=make_echo_canceller(s.echo_canceller, s.clock_rate),
        )

    def _emit_finished(self, ib: Inbound) -> None:
        for done in ib.playback.take_finished():
            self.ctx.emit(
                f.PlaybackDone(
                    ib.call_id,
                    done.utterance,
                    done.start_tick * 20,
                    done.end_tick * 20,
                    done.interrupted,
                    done.underruns,
                    done.started_at,
                )
            )

    def _close_inbound(self, call_id: str, code: int, reason: str, by: str) -> None:
        emit = self.ctx.emit
        ib = self.inbound.pop(call_id, None)
        if ib is None:
            # The call's media never opened here (it failed): still end it, or its session never would.
            emit(f.CallEnded(call_id, code, reason, by, 0, 0, 0))
            return
        for frame in ib.close():
            emit(frame)
        ib.playback.cancel()
        self._emit_finished(ib)
        pb = ib.playback
        emit(f.CallEnded(call_id, code, reason, by, ib.frames, pb.frames_played, pb.underruns))


def _warm_vad(rate: int) -> None:
    """Load Silero's ONNX session (shared by every call's turn VAD and AMD) and run it once, on the media
    thread before any call: done on a first call's "open" instead, it held that call's frames for 0.5-2 s
    on a loaded CPU, so AMD's clock fell that far behind the line and the greeting came as late."""
    t0 = time.monotonic()
    try:
        vad = make_classifier("silero", rate)
        for _ in range(2):  # two 20 ms frames fill one 32 ms Silero window: the model runs once
            vad.speech_prob(np.zeros(rate // 50, np.int16))
    except Exception:  # a VAD that cannot load fails the calls that need it, with their own error
        log.exception("Silero VAD warm-up failed")
        return
    log.info("Silero VAD warm in %.0f ms", (time.monotonic() - t0) * 1000)
