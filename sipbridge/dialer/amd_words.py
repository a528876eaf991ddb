"""Words for answering-machine detection: the supervisor's ASR transcribes an outbound call's greeting.

AMD runs in the SIP worker next to the audio (audio/amd.py); the ASR model lives in the supervisor. With
`amd.asr` on, the worker sends the callee's audio every `asr_chunk_ms` (`AmdAudio`) from the moment the
detector hears speech until it decides; `GreetingTranscriber` (one per call, owned by its `CallSession`)
appends each chunk and transcribes *the whole greeting so far* on the ASR thread, so a word cut by a chunk
boundary is heard whole the next time. While a transcription runs, newer chunks only wait: the next run takes
everything that came in meanwhile, so a slow ASR costs one transcription of latency, never a backlog. Each
result goes back to the worker as `AmdTranscript(text, audio_ms)`. See docs/DIALER.md ("Words").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sipbridge import frames as f
from sipbridge.asr import Transcriber

log = logging.getLogger(__name__)

__all__ = ["GreetingTranscriber"]


@dataclass
class GreetingTranscriber:
    call_id: str
    asr: Transcriber
    rate: int
    send: Callable[[f.Frame], bool]  # to the call's worker
    spawn: Callable[[Coroutine[Any, Any, None], str], None]  # a task owned (and cancelled) by the session
    audio: bytearray = field(default_factory=bytearray)
    transcripts: int = 0
    _running: bool = False
    _stopped: bool = False

    @property
    def audio_ms(self) -> int:
        return len(self.audio) // 2 * 1000 // self.rate

    def add(self, frame: f.AmdAudio) -> None:
        if self._stopped:
            return
        if frame.start_ms != self.audio_ms:
            # Chunks are contiguous by construction (one worker, one ordered stream); say so if not.
            log.warning(
                "call %s: AMD audio chunk starts at %d ms, expected %d",
                self.call_id,
                frame.start_ms,
                self.audio_ms,
            )
        self.audio += frame.pcm
        if not self._running:
            self._running = True
            self.spawn(self._transcribe(), "amd-asr")

    def stop(self) -> None:
        """AMD has decided: words are no longer wanted (a transcription already running is just dropped)."""
        self._stopped = True

    async def _transcribe(self) -> None:
        try:
            done = 0
            while not self._stopped and len(self.audio) > done:
                done = len(self.audio)
                audio_ms = self.audio_ms
                pcm = np.frombuffer(bytes(self.audio), dtype="<i2")
                t0 = time.monotonic()
                text = await self.asr.transcribe(pcm, self.rate)
                asr_ms = (time.monotonic() - t0) * 1000
                if self._stopped:
                    return
                self.transcripts += 1
                self.send(f.AmdTranscript(self.call_id, text, audio_ms, round(asr_ms, 1)))
                log.info(
                    "call %s: AMD words of the first %d ms in %.0f ms: %r",
                    self.call_id,
                    audio_ms,
                    asr_ms,
                    text,
                )
        except Exception:
            # AMD goes on without words (its hold ends on asr_wait_ms); the call must not fail for this.
            log.exception("call %s: AMD transcription failed; deciding on timing alone", self.call_id)
            self._stopped = True
        finally:
            self._running = False
