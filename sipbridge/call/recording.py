"""Each turn's audio as a WAV next to the call's recording (the worker writes call.wav itself).

A recordings directory that cannot be written stops this call's recordings, once, with an event and a count;
the call goes on without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from audio.wav import write_wav
from sipbridge.call.context import CallContext, log


class TurnRecorder:
    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.failed = False  # recordings dir unwritable: the call goes on without them

    def turn_dir(self) -> Path | None:
        storage = self.ctx.config.storage
        if not storage.record_calls or self.failed:
            return None
        path = Path(storage.recordings_dir).resolve() / self.ctx.call_id
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.error(exc)
            return None
        return path

    def save_wav(self, name: str, pcm: np.ndarray[Any, Any]) -> str | None:
        """A turn's audio next to the call's recording; None (and an error event) if it cannot be written."""
        turn_dir = self.turn_dir()
        if turn_dir is None:
            return None
        path = turn_dir / name
        try:
            write_wav(str(path), pcm.astype(np.float32) / 32768.0, self.ctx.rate)
        except Exception as exc:  # OSError, soundfile.LibsndfileError (disk full, read-only)
            self.error(exc)
            return None
        return str(path)

    def error(self, exc: BaseException) -> None:
        """Recordings stop for this call; the call goes on. Stored once as an event, counted once."""
        if self.failed:
            return
        self.failed = True
        ctx = self.ctx
        ctx.metrics.recording_failures.inc()
        log.error("call %s: cannot write its recordings, going on without them: %s", ctx.call_id, exc)
        try:
            ctx.event("recording_failed", {"error": f"{type(exc).__name__}: {exc}"})
        except Exception:
            log.exception("call %s: storing the recording failure failed", ctx.call_id)
