"""Audio for `sipbridge call`: our scripted lines (espeak-ng or WAV files), the ears (ASR) and the recording.

The ears are the project's own Transcriber (asr.model of the config, bundled tiny.en by default), loaded on a
thread while the call is being set up; each turn is transcribed on that thread so the call loop never waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soxr

from audio.wav import AudioFormatError, read_wav
from sipbridge.asr import AsrError, Transcriber
from sipbridge.config import AsrConfig
from sipbridge.tools.dialogue import Line, Pcm

_SPEECH = 0.01  # |x| above this (-40 dBFS) is speech when trimming espeak-ng's padding
_TAIL_S = 0.05  # keep a breath after the last sample above it


class LineError(Exception):
    """A --say or --wav line cannot be turned into audio (espeak-ng missing, unreadable WAV)."""


def _to_pcm(x: np.ndarray, rate: int, clock_rate: int) -> Pcm:
    if rate != clock_rate:
        x = soxr.resample(x, rate, clock_rate, quality="HQ")
    return (np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _trim(x: np.ndarray, rate: int) -> np.ndarray:
    """espeak-ng pads its output with silence: drop it, so our turn ends when our words end."""
    loud = np.flatnonzero(np.abs(x) > _SPEECH)
    if len(loud) == 0:
        return x
    return x[loud[0] : min(len(x), loud[-1] + 1 + int(_TAIL_S * rate))]


def espeak_wav(text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, int]:
    """espeak-ng's speech for `text` (its WAV on stdout: no temporary file), as float mono and its rate."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise LineError("espeak-ng is not installed (apt-get install espeak-ng), needed for --say")
    done = subprocess.run(
        [exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text], capture_output=True, timeout=60
    )
    if done.returncode != 0 or len(done.stdout) <= 44:
        raise LineError(f"espeak-ng failed on {text!r}: {done.stderr.decode(errors='replace').strip()}")
    # espeak-ng writes "unknown length" sizes into the header of a piped WAV: read the samples after it.
    pcm = np.frombuffer(done.stdout[44 : 44 + (len(done.stdout) - 44) // 2 * 2], "<i2")
    rate = int.from_bytes(done.stdout[24:28], "little")
    return pcm.astype(np.float32) / 32768.0, rate


def say_line(text: str, clock_rate: int, voice: str = "en-us", words_per_minute: int = 165) -> Line:
    x, rate = espeak_wav(text, voice, words_per_minute)
    return Line(text, _to_pcm(_trim(x, rate), rate, clock_rate), words=text)


def wav_line(path: str, clock_rate: int) -> Line:
    try:
        x, rate = read_wav(path)
    except (FileNotFoundError, AudioFormatError) as exc:
        raise LineError(f"--wav {path}: {exc}") from exc
    return Line(Path(path).name, _to_pcm(x, rate, clock_rate), words=None)


class Ears:
    """ASR of turns on one background thread; `hear` returns a future of the words ("" when no ASR)."""

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self.error: str | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="call-asr")
        self._transcriber = Transcriber(config)
        self._loaded = self._pool.submit(self._load) if config.backend != "none" else None

    def _load(self) -> None:
        try:  # loads the model, queues its warm-up run on the transcriber's own thread, returns
            asyncio.run(self._transcriber.start())
        except AsrError as exc:
            self.error = str(exc)

    @property
    def available(self) -> bool:
        return self._loaded is not None and self.error is None

    def hear(self, pcm: Pcm, rate: int) -> concurrent.futures.Future[str]:
        if self._loaded is None:
            done: concurrent.futures.Future[str] = concurrent.futures.Future()
            done.set_result("")
            return done
        return self._pool.submit(self._hear, pcm, rate)

    def _hear(self, pcm: Pcm, rate: int) -> str:
        if self.error is not None:
            return ""
        return self._transcriber.transcribe_blocking(pcm, rate)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._transcriber.close()
