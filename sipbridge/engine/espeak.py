"""espeak-ng as a speech engine: a subprocess per utterance, its WAV streamed from stdout as it is written.

Robotic but intelligible, needs no GPU or weights, starts speaking in a few milliseconds: the default engine
and the one end-to-end tests check words with. It has no conversation context, so `user_spoke` is a no-op,
a voice recording is only noted (`state`) and the sampling overrides of `SpeakParams` are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sipbridge.config import EspeakEngineConfig
from sipbridge.engine.base import (
    Chunk,
    EngineError,
    PreparedVoice,
    SpeakParams,
    TextSource,
    Words,
    text_pieces,
)
from sipbridge.text.frontend import TextFrontend

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050  # espeak-ng's only output rate
_WAV_HEADER = 44  # espeak-ng writes a canonical 44-byte header with "unknown length" sizes
# A read returns what the pipe holds, up to this: the first chunk is as early as espeak writes it, and
# later ones are as large as espeak ran ahead (it runs ~10x real time). A 20 ms cap made every 20 ms of audio
# one resampler pass and one IPC message, ~40 % of the supervisor's event loop at 8 calls (py-spy).
_READ_BYTES = 2 * ESPEAK_RATE  # up to 1 s per read


@dataclass
class EspeakSession:
    call_id: str
    engine: EspeakEngine
    sample_rate: int = ESPEAK_RATE
    _proc: asyncio.subprocess.Process | None = None
    _cancelled: bool = False
    _closed: bool = False
    turns_heard: list[str] = field(default_factory=list)
    voice_words: str | None = None  # espeak cannot clone a voice; kept so `state` reports it was set
    replies: int = 0

    @property
    def start_margin_s(self) -> float:
        """Audio the call path gathers before a reply's first send (engine.espeak.start_margin_ms)."""
        return self.engine.config.start_margin_ms / 1000

    def user_spoke(self, pcm: npt.NDArray[np.int16], rate: int, words: Words) -> None:
        # No context model; kept for health/debugging only.
        self.turns_heard.append(words if isinstance(words, str) else " ".join(w for w, _, _ in words))

    def played(self, seconds: float) -> None:
        pass  # no context model: nothing said is remembered

    async def hear(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        self.turns_heard.append(words if isinstance(words, str) else " ".join(w for w, _, _ in words))

    async def set_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        self.voice_words = words if isinstance(words, str) else " ".join(w for w, _, _ in words)
        await self.reset()

    # espeak cannot clone a voice: a prepared voice is its transcript only (see EspeakEngine.prepare_voice).
    async def set_prepared_voice(self, voice: PreparedVoice) -> None:
        self.voice_words = voice.transcript
        await self.reset()

    async def hear_prepared(self, voice: PreparedVoice) -> None:
        self.turns_heard.append(voice.transcript)

    async def reset(self) -> None:
        self.cancel()
        self.turns_heard.clear()
        self.replies = 0

    async def state(self) -> dict[str, Any]:
        return {
            "turns": len(self.turns_heard) + self.replies,
            "user_turns": len(self.turns_heard),
            "replies": self.replies,
            "voice_set": self.voice_words is not None,
        }

    async def speak(self, text: TextSource, params: SpeakParams | None = None) -> AsyncIterator[Chunk]:
        self.replies += 1
        self._cancelled = False
        # Normalised text comes in sentence segments (sipbridge/text): one espeak-ng run each.
        async for piece in text_pieces(self.engine.text.source(text, params)):
            if self._cancelled or self._closed:
                return
            if not piece.strip():
                continue
            async for chunk in self._speak_one(piece):
                yield chunk

    async def _speak_one(self, text: str) -> AsyncIterator[Chunk]:
        cfg = self.engine.config
        try:
            proc = await asyncio.create_subprocess_exec(
                self.engine.exe,
                "-v",
                cfg.voice,
                "-s",
                str(cfg.words_per_minute),
                "--stdout",
                "--",
                text,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise EngineError(f"cannot run espeak-ng: {exc}") from exc
        self._proc = proc
        assert proc.stdout is not None
        try:
            header = await proc.stdout.readexactly(_WAV_HEADER)
            if header[:4] != b"RIFF" or header[36:40] != b"data":
                raise EngineError("espeak-ng wrote something that is not a WAV stream")
            carry = b""
            while not self._cancelled:
                data = await proc.stdout.read(_READ_BYTES)
                if not data:
                    break
                data = carry + data
                usable = len(data) // 2 * 2
                carry = data[usable:]
                if usable:
                    yield np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        except asyncio.IncompleteReadError:
            if not self._cancelled:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode(errors="replace").strip()
                raise EngineError(f"espeak-ng failed: {err or 'no output'}") from None
        finally:
            self._proc = None
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            # Drain the pipes: after a cancel, stdout may hold enough unread audio that its transport paused
            # reading, so it never sees EOF; asyncio (3.11) completes `wait()` only once every pipe closed,
            # so an undrained pipe hung the cancelled utterance here forever.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(Exception):
                        await pipe.read()
            await proc.wait()

    def cancel(self) -> None:  # the subprocess is killed at once: no engine step to count
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def close(self) -> None:
        self.cancel()
        self._closed = True
        self.engine.sessions.pop(self.call_id, None)


@dataclass
class EspeakEngine:
    config: EspeakEngineConfig
    name: str = "espeak"
    sample_rate: int = ESPEAK_RATE
    exe: str = ""
    sessions: dict[str, EspeakSession] = field(default_factory=dict)
    text: TextFrontend = field(default_factory=TextFrontend)  # normaliser and shaping of what it speaks

    async def start(self) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise EngineError("espeak-ng is not installed (apt-get install -y espeak-ng)")
        self.exe = exe
        log.info("engine espeak ready (%s, voice %s)", exe, self.config.voice)

    def open_session(self, call_id: str) -> EspeakSession:
        session = EspeakSession(call_id, self)
        self.sessions[call_id] = session
        return session

    async def prepare_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> PreparedVoice:
        """Nothing to prepare (no voice cloning, no codec): keeps the transcript, for `state`."""
        text = words if isinstance(words, str) else " ".join(w for w, _, _ in words)
        return PreparedVoice(self.name, text, len(pcm) / rate)

    def health(self) -> dict[str, Any]:
        return {"ok": bool(self.exe), "kind": self.name, "sessions": len(self.sessions)}

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
