"""The conversation API's state: HTTP conversations on the supervisor's engine, named voices, ASR cache.

Every HTTP conversation is one `EngineSession` of the same engine the phone calls use (for Dia2, one row
of the same batched step), so HTTP and SIP traffic share the GPU. This module knows nothing of HTTP
requests: it raises `ApiError` (status + message) and the routes turn that into a response.

Concurrency: one operation at a time per conversation (an `asyncio.Lock`); a second request while one runs
gets 409 instead of queueing behind a WebSocket stream that may wait for text indefinitely. Different
conversations run in parallel (their generations are batched by the engine).

Voices: every recording set as a voice (or stored by name) is prepared once by the engine
(`Engine.prepare_voice`: Dia2 Mimi-encodes it) and set from that, so a named voice or a restart costs no
encoder run. An input the engine refuses (`EngineRejected`, e.g. a voice longer than Dia2's context) leaves
the session as it was and is answered 413.

Failure: when the engine fails (`EngineError`), the conversation is rebuilt on a fresh engine session with
the last voice that was set successfully (its context is cleared), so the next request cannot meet whatever
state the failure left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sipbridge.asr import Transcriber
from sipbridge.config import HttpLimitsConfig
from sipbridge.engine import Engine, EngineError, EngineRejected, EngineSession, PreparedVoice
from sipbridge.engine.base import SpeakParams, TextSource, Words
from sipbridge.http.audio_io import PCM_RATE, DecodedAudio, OutputEncoder

log = logging.getLogger(__name__)

DEFAULT_CONVERSATION = "default"
_ASR_CACHE_SIZE = 256


class ApiError(Exception):
    """A request that cannot be served; `status` is the HTTP status, `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Voice:
    """A recording with its words, at the engine-facing rate (24 kHz mono float32), prepared once."""

    pcm: npt.NDArray[np.float32]
    words: Words
    prepared: PreparedVoice  # what the engine sets (Dia2: its Mimi codes), computed once
    transcript: str
    sha256: str
    seconds: float
    name: str | None = None
    created_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "transcript": self.transcript,
            "sha256": self.sha256,
            "created_at": self.created_at,
        }


@dataclass
class Timings:
    """What one generation took, measured from the request's start (as the response headers report)."""

    first_audio_ms: float | None = None
    total_ms: float = 0.0
    frames: int = 0  # engine chunks (Dia2: 80 ms Mimi frames)
    audio_ms: float = 0.0  # audio sent, padding of the last 20 ms frame included
    cancelled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_audio_ms": None if self.first_audio_ms is None else round(self.first_audio_ms, 1),
            "total_ms": round(self.total_ms, 1),
            "frames": self.frames,
            "audio_ms": round(self.audio_ms, 1),
            "cancelled": self.cancelled,
        }


@dataclass
class Conversation:
    id: str
    session: EngineSession
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    voice: Voice | None = None  # the last voice set successfully (re-applied after an engine failure)
    user_turns: int = 0
    replies: int = 0
    created_at: float = field(default_factory=time.time)
    restarts: int = 0


async def _chunks(session: EngineSession, text: TextSource, params: SpeakParams | None) -> AsyncIterator[Any]:
    async for chunk in session.speak(text, params):
        yield chunk


@dataclass
class ConversationService:
    engine: Engine
    asr: Transcriber | None
    limits: HttpLimitsConfig
    conversations: dict[str, Conversation] = field(default_factory=dict)
    voices: dict[str, Voice] = field(default_factory=dict)
    _asr_cache: OrderedDict[str, str] = field(default_factory=OrderedDict)
    generations: int = 0
    asr_runs: int = 0
    asr_cache_hits: int = 0

    # --------------------------------------------------------------------------------- conversations

    def engine_session(self, tag: str) -> EngineSession:
        try:
            return self.engine.open_session(f"http-{tag}-{uuid.uuid4().hex[:8]}")
        except EngineError as exc:  # e.g. every Dia2 row is held by calls and conversations
            raise ApiError(503, f"the engine cannot take another conversation: {exc}") from exc

    def get(self, conversation_id: str | None) -> Conversation:
        cid = conversation_id or DEFAULT_CONVERSATION
        found = self.conversations.get(cid)
        if found is not None:
            return found
        if len(self.conversations) >= self.limits.max_conversations:
            raise ApiError(
                429,
                f"{len(self.conversations)} conversations are open, the limit is"
                f" {self.limits.max_conversations} (http.limits.max_conversations); close one first",
            )
        conv = Conversation(cid, self.engine_session(f"conv-{cid[:32]}"))
        self.conversations[cid] = conv
        log.info("http conversation %r opened (%d open)", cid, len(self.conversations))
        return conv

    async def close_conversation(self, conversation_id: str) -> bool:
        conv = self.conversations.pop(conversation_id, None)
        if conv is None:
            return False
        await conv.session.close()
        log.info("http conversation %r closed", conversation_id)
        return True

    @contextlib.asynccontextmanager
    async def busy(self, conv: Conversation) -> AsyncIterator[None]:
        """Hold the conversation for one operation; 409 if another one is running."""
        if conv.lock.locked():
            raise ApiError(409, f"conversation {conv.id!r} is busy (a generation is in progress)")
        async with conv.lock:
            yield

    async def _recover(self, conv: Conversation, exc: EngineError) -> ApiError:
        """Replace a conversation's engine session after a failure; the error to answer with."""
        log.warning("http conversation %r: engine failed (%s); restarting it", conv.id, exc)
        with contextlib.suppress(Exception):
            await conv.session.close()
        conv.restarts += 1
        conv.user_turns = conv.replies = 0
        try:
            conv.session = self.engine_session(f"conv-{conv.id[:32]}")
        except ApiError:
            self.conversations.pop(conv.id, None)
            return ApiError(503, f"engine failed: {exc}; the conversation could not be reopened")
        kept = "no voice"
        if conv.voice is not None:
            try:
                await conv.session.set_prepared_voice(conv.voice.prepared)
                kept = "its voice is kept"
            except (EngineError, EngineRejected) as again:
                log.warning("http conversation %r: its voice cannot be restored: %s", conv.id, again)
                conv.voice = None
                kept = "its voice could not be restored"
        return ApiError(
            500, f"engine failed: {exc}; the conversation was restarted (context cleared, {kept})"
        )

    async def run(self, conv: Conversation, op: Callable[[EngineSession], Awaitable[Any]]) -> Any:
        """One engine operation on a held conversation, with recovery on engine failure."""
        try:
            return await op(conv.session)
        except EngineRejected as exc:  # refused before anything changed: no restart needed
            raise ApiError(413, f"the engine refused it: {exc}") from exc
        except EngineError as exc:
            raise await self._recover(conv, exc) from exc

    # ------------------------------------------------------------------------------------------ words

    async def words_for(
        self, audio: DecodedAudio, raw: bytes, transcript: str | None, words: Words | None
    ) -> Words:
        """Timed words if given, else the transcript, else ASR of the audio (cached by content hash)."""
        if words is not None and len(words) > 0:
            return words
        if transcript is not None and transcript.strip():
            return transcript.strip()
        return await self.transcribe(audio, raw)

    async def transcribe(self, audio: DecodedAudio, raw: bytes) -> str:
        key = hashlib.sha256(raw).hexdigest()
        cached = self._asr_cache.get(key)
        if cached is not None:
            self._asr_cache.move_to_end(key)
            self.asr_cache_hits += 1
            return cached
        if self.asr is None:
            return ""
        t0 = time.monotonic()
        self.asr_runs += 1
        text = await self.asr.transcribe(audio.int16(), audio.rate)
        log.info(
            "http asr: %.1f s of audio in %.0f ms: %r", audio.seconds, (time.monotonic() - t0) * 1e3, text
        )
        self._asr_cache[key] = text
        if len(self._asr_cache) > _ASR_CACHE_SIZE:
            self._asr_cache.popitem(last=False)
        return text

    async def make_voice(
        self, audio: DecodedAudio, raw: bytes, transcript: str | None, words: Words | None, name: str | None
    ) -> Voice:
        """The voice with its words (given or ASR) and its engine form (Dia2: Mimi codes), computed once;
        413 if the engine could never use it as a voice (too long for the context)."""
        resolved = await self.words_for(audio, raw, transcript, words)
        text = resolved if isinstance(resolved, str) else " ".join(w for w, _, _ in resolved)
        pcm = audio.at(PCM_RATE)
        t0 = time.monotonic()
        try:
            prepared = await self.engine.prepare_voice(pcm, PCM_RATE, resolved)
        except EngineRejected as exc:
            raise ApiError(413, f"the voice is too long for the engine: {exc}") from exc
        except EngineError as exc:
            raise ApiError(500, f"engine failed: {exc}") from exc
        log.info("http voice %s: %.1f s prepared in %.0f ms", name or "(conversation)", audio.seconds,
                 (time.monotonic() - t0) * 1e3)
        return Voice(
            pcm=pcm,
            words=resolved,
            prepared=prepared,
            transcript=text,
            sha256=hashlib.sha256(raw).hexdigest(),
            seconds=audio.seconds,
            name=name,
        )

    # ------------------------------------------------------------------------------------- generation

    def check_text(self, text: str, already: int = 0) -> None:
        if already + len(text) > self.limits.max_text_chars:
            raise ApiError(
                413,
                f"text of {already + len(text)} characters is over the limit of {self.limits.max_text_chars}"
                " (http.limits.max_text_chars)",
            )

    async def generate(
        self,
        session: EngineSession,
        text: TextSource,
        params: SpeakParams | None,
        encoder: OutputEncoder,
        sink: Callable[[list[bytes]], Awaitable[None]],
        *,
        started: float,
        on_first_audio: Callable[[float], Awaitable[None]] | None = None,
    ) -> Timings:
        """Speak `text` on `session`, handing encoded 20 ms frames to `sink` as they come.

        EngineError propagates (the caller recovers the conversation); cancellation (`session.cancel()`)
        ends the engine's iterator early and is reported by the caller, who knows it asked for it.
        """
        timings = Timings()
        self.generations += 1
        async for chunk in _chunks(session, text, params):
            timings.frames += 1
            frames = encoder.push(chunk)
            if frames:
                if timings.first_audio_ms is None:
                    timings.first_audio_ms = (time.monotonic() - started) * 1e3
                    if on_first_audio is not None:
                        await on_first_audio(timings.first_audio_ms)
                await sink(frames)
            # Yield once per chunk: espeak's pipe often has the whole reply buffered, and without this the
            # loop would send it all before the WebSocket's receive task could act on a {"cancel": true}.
            await asyncio.sleep(0)
        tail = encoder.flush()
        if tail:
            if timings.first_audio_ms is None:
                timings.first_audio_ms = (time.monotonic() - started) * 1e3
                if on_first_audio is not None:
                    await on_first_audio(timings.first_audio_ms)
            await sink(tail)
        timings.total_ms = (time.monotonic() - started) * 1e3
        timings.audio_ms = encoder.samples * 1000 / encoder.rate
        return timings

    # ---------------------------------------------------------------------------------------- health

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "conversations": len(self.conversations),
            "speaking": sum(1 for c in self.conversations.values() if c.lock.locked()),
            "voices": len(self.voices),
            "generations": self.generations,
            "asr_runs": self.asr_runs,
            "asr_cache_hits": self.asr_cache_hits,
        }

    async def close(self) -> None:
        for cid in list(self.conversations):
            with contextlib.suppress(Exception):
                await self.close_conversation(cid)
