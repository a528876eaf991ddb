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
import re
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
from sipbridge.http.audio_io import PCM_RATE, ChunkEncoder, DecodedAudio
from sipbridge.http.errors import ApiError

log = logging.getLogger(__name__)

DEFAULT_CONVERSATION = "default"
_ASR_CACHE_SIZE = 256

# Conversation ids and voice names travel in URL paths (DELETE /conversations/{id}), logs and engine session
# names: short, no "/" or "%" (a path could never name them), no whitespace, no leading "." ("..").
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}")
NAME_RULE_TEXT = "1-128 characters of A-Z a-z 0-9 _ . : @ + -, starting with a letter or digit"


def check_name(value: str, what: str) -> str:
    """`value` if it is a usable conversation id / voice name, else a 422 that says the rule."""
    if NAME_RULE.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + f"... ({len(value)} characters)"
        raise ApiError(422, f"{what} {shown!r} is not valid: {NAME_RULE_TEXT}")
    return value


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
    first_chunk_at: float | None = None  # monotonic time the engine's first chunk came, before encoding
    first_frames_at: float | None = None  # ... the engine chunk that completed the first encoded frame came

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
    # Set by DELETE: an operation still running on it ends with 409 instead of a truncated success. A
    # WebSocket stream registers its stop here (it may be waiting for text, not in the engine).
    closed: bool = False
    on_close: list[Callable[[], None]] = field(default_factory=list)


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

    def find(self, conversation_id: str | None) -> Conversation:
        """An open conversation, never a new one (GET requests); 404 if it is not open."""
        cid = conversation_id or DEFAULT_CONVERSATION
        found = self.conversations.get(cid)
        if found is None:
            raise ApiError(404, f"no open conversation {cid[:140]!r} (a POST or the WebSocket opens one)")
        return found

    def get(self, conversation_id: str | None) -> Conversation:
        """The conversation, opened (engine session) if it is not yet: for requests that change it."""
        cid = conversation_id or DEFAULT_CONVERSATION
        found = self.conversations.get(cid)
        if found is not None:
            return found
        check_name(cid, "conversation_id")
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

    async def close_conversation(self, conversation_id: str) -> bool | None:
        """Close it: None if it was not open, else whether an operation on it was interrupted (that
        operation answers 409, see `run`)."""
        conv = self.conversations.pop(conversation_id, None)
        if conv is None:
            return None
        interrupted = conv.lock.locked()
        conv.closed = True
        for stop in list(conv.on_close):
            stop()
        await conv.session.close()  # cancels a generation in progress: its iterator ends
        log.info("http conversation %r closed%s", conversation_id, " mid-operation" if interrupted else "")
        return interrupted

    @staticmethod
    def closed_error(conv: Conversation) -> ApiError:
        return ApiError(
            409,
            f"conversation {conv.id!r} was closed (DELETE /conversations/{conv.id}) while this request ran:"
            " its result is incomplete and was dropped",
        )

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
            result = await op(conv.session)
        except EngineRejected as exc:  # refused before anything changed: no restart needed
            raise ApiError(413, f"the engine refused it: {exc}") from exc
        except EngineError as exc:
            if conv.closed:  # the failure is the close itself: nothing to recover
                raise self.closed_error(conv) from exc
            raise await self._recover(conv, exc) from exc
        if conv.closed:
            raise self.closed_error(conv)
        return result

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
        log.info(
            "http voice %s: %.1f s prepared in %.0f ms",
            name or "(conversation)",
            audio.seconds,
            (time.monotonic() - t0) * 1e3,
        )
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
        encoder: ChunkEncoder,
        sink: Callable[[list[bytes]], Awaitable[None]],
        *,
        started: float,
        on_first_audio: Callable[[float], Awaitable[None]] | None = None,
        timings: Timings | None = None,
    ) -> Timings:
        """Speak `text` on `session`, handing encoded 20 ms frames to `sink` as they come.

        EngineError propagates (the caller recovers the conversation); cancellation (`session.cancel()`)
        ends the engine's iterator early and is reported by the caller, who knows it asked for it.
        """
        timings = timings or Timings()  # given: the caller reads `first_chunk_at` while it runs
        self.generations += 1
        async for chunk in _chunks(session, text, params):
            came = time.monotonic()
            if timings.first_chunk_at is None:
                timings.first_chunk_at = came
            timings.frames += 1
            frames = encoder.push(chunk)
            if frames and timings.first_frames_at is None:
                timings.first_frames_at = came
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
