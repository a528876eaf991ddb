"""What the ElevenLabs, OpenAI and Kyutai compatible surfaces share (docs/COMPAT.md).

Each protocol module (elevenlabs.py, openai.py, kyutai.py) only parses its own messages and writes its own
error shape; the engine side is here, so all three speak through the same engine sessions as the
conversation API and the phone calls:

* `AudioFormat` / `FormatEncoder` (audio_io.py, the one encoder the conversation API uses too): engine
  chunks → 20 ms frames of PCM, µ-law, A-law or float32 at any of the protocols' rates, or MP3 (lameenc);
* `resolve_voice`: a stored voice by name or `clone:<name>`, or `default` (the engine's configured voice);
* `open_lease`: the engine session one request or one socket speaks on: a fresh one with the voice set
  (stateless, closed afterwards: its Dia2 row is freed) or a conversation's (its dialogue context is kept);
* `Generation`: one reply generated in its own task, its frames handed over through a queue, so a client
  that leaves (`stop`) cancels the engine at once instead of whenever a send next fails;
* `LeasedStream`: a streaming HTTP response that releases the lease however the response ends (done,
  client gone, server shutting down);
* `TextFeed`: text pushed from a socket as it arrives, handed to the engine as a text stream; for an engine
  that speaks each piece on its own (espeak) it is cut at sentence ends instead of per word.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import difflib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from sipbridge.engine import EngineError, EngineRejected, EngineSession
from sipbridge.engine.base import SpeakParams, TextSource, WordTime
from sipbridge.http.audio_io import FormatEncoder, StretchedEncoder
from sipbridge.http.service import ApiError, Conversation, ConversationService, Timings, Voice
from sipbridge.text.heard import DEFAULT_CHARS_PER_S

log = logging.getLogger(__name__)

DEFAULT_VOICE = "default"  # the engine's configured voice (Dia2: engine.dia2.voice), or none
CLONE_PREFIX = "clone:"
MAX_ID_CHARS = 128  # conversation ids from a query or body
MAX_MESSAGE_BYTES = 64 * 1024  # one WebSocket message (a text chunk, a word): far above any real one


# ------------------------------------------------------------------------------------------- formats


# -------------------------------------------------------------------------------------- auth, voices


def key_ok(token: str | None, presented: str | None) -> bool:
    """The configured `http.bearer_token` (None: no auth) against what the client sent, in constant time."""
    return token is None or (
        presented is not None and hmac.compare_digest(presented.encode(), token.encode())
    )


class VoiceNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no voice {name!r}")
        self.name = name


def resolve_voice(service: ConversationService, name: str | None) -> Voice | None:
    """A stored voice by its name or `clone:<name>`; None for `default`/empty (the engine's own voice)."""
    if name is None or name == "" or (name == DEFAULT_VOICE and DEFAULT_VOICE not in service.voices):
        return None
    key = name[len(CLONE_PREFIX) :] if name.startswith(CLONE_PREFIX) else name
    voice = service.voices.get(key)
    if voice is None:
        raise VoiceNotFound(name)
    return voice


def voice_names(service: ConversationService) -> list[str]:
    return [DEFAULT_VOICE, *(n for n in service.voices if n != DEFAULT_VOICE)]


# ------------------------------------------------------------------------------------------ sampling

_SAMPLING_BOUNDS = {"temperature": (0.0, 2.0), "top_k": (1, 2048), "cfg_scale": (1.0, 10.0)}


def sampling(values: Mapping[str, Any]) -> SpeakParams | None:
    """Our sampling extension (`temperature`, `top_k`, `cfg_scale`, as the conversation API takes them) from
    a body or query; ValueError names a bad one. None when none is given: the engine's configured values."""
    found: dict[str, Any] = {}
    for key, (low, high) in _SAMPLING_BOUNDS.items():
        raw = values.get(key)
        if raw is None or raw == "":
            continue
        try:
            value = int(raw) if key == "top_k" else float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number") from None
        if isinstance(raw, bool) or not low <= value <= high:
            raise ValueError(f"{key} must be between {low} and {high}")
        found[key] = value
    return SpeakParams(**found) if found else None


class SamplingFields(BaseModel):
    """Our extension on the REST bodies (ElevenLabs, OpenAI): the conversation API's sampling overrides.
    None: the engine's configured values."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=1, le=2048)
    cfg_scale: float | None = Field(None, ge=1.0, le=10.0)

    def params(self) -> SpeakParams | None:
        given = (self.cfg_scale, self.temperature, self.top_k)
        return None if given == (None, None, None) else SpeakParams(*given)


# -------------------------------------------------------------------------------------------- leases


def send_failure(exc: BaseException | None) -> str:
    """How a client was seen to leave when a send raised: a write that fails because the peer's connection is
    already gone (it raced the close frame the socket watcher was about to read) is the client disconnecting;
    anything else is a failed send."""
    return "client disconnected" if isinstance(exc, WebSocketDisconnect) else "send failed"


@dataclass
class Lease:
    """The engine session one request or socket speaks on, until `release`."""

    service: ConversationService
    session: EngineSession
    conv: Conversation | None  # None: a fresh session of this lease alone (closed on release)
    tag: str
    released: bool = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.conv is not None:
            self.conv.lock.release()
        else:
            with contextlib.suppress(Exception):
                await self.session.close()


async def open_lease(
    service: ConversationService, voice: Voice | None, conversation_id: str | None, tag: str
) -> Lease:
    """A fresh engine session with `voice` set, or the conversation `conversation_id` held (409 if busy)
    with `voice` set on it when it differs from its current one (which resets its context)."""
    if conversation_id:
        if len(conversation_id) > MAX_ID_CHARS:
            raise ApiError(422, f"conversation_id is longer than {MAX_ID_CHARS} characters")
        conv = service.get(conversation_id)
        if conv.lock.locked():
            raise ApiError(409, f"conversation {conv.id!r} is busy (a generation is in progress)")
        await conv.lock.acquire()
        lease = Lease(service, conv.session, conv, tag)
        try:
            if voice is not None and (conv.voice is None or conv.voice.sha256 != voice.sha256):
                await service.run(conv, lambda s: s.set_prepared_voice(voice.prepared))
                conv.voice = voice
                conv.user_turns = conv.replies = 0
            lease.session = conv.session  # service.run may have rebuilt it after an engine failure
        except BaseException:
            await lease.release()
            raise
        return lease
    session = service.engine_session(tag)
    try:
        if voice is not None:
            await session.set_prepared_voice(voice.prepared)
    except EngineRejected as exc:
        await session.close()
        raise ApiError(413, f"the engine refused the voice: {exc}") from exc
    except EngineError as exc:
        await session.close()
        raise ApiError(500, f"engine failed: {exc}") from exc
    except BaseException:
        await session.close()
        raise
    return Lease(service, session, None, tag)


# ---------------------------------------------------------------------------------------- generation

Frames = list[bytes]
# Called once per reply with (surface, ms from the engine's first chunk to the surface's first audio write,
# ms from the engine chunk that completed the first 20 ms frame to that write): how bench/compat_latency.py
# measures each surface's own overhead inside the server, free of load drift. The two differ when the
# engine's first chunk is shorter than a frame plus the resampler's lag (espeak's 20 ms reads).
first_write_hooks: list[Callable[[str, float, float], None]] = []


@dataclass
class Generation:
    """One reply on a lease, generated in its own task: `next()` gives each engine chunk's encoded frames
    (None at the end), `stop()` cancels it within one engine step and waits for the task."""

    lease: Lease
    text: TextSource
    encoder: FormatEncoder | StretchedEncoder  # the second: OpenAI speed ≠ 1
    params: SpeakParams | None = None
    started: float = field(default_factory=time.monotonic)
    on_end: Callable[[], None] | None = None  # e.g. end the text feed the engine may be waiting on
    # Text said before this reply (ElevenLabs' previous_text): spoken first on the same session with its
    # audio discarded, so a contextual engine (Dia2) continues from it; see `context_text`.
    context: str | None = None
    surface: str = "compat"  # which protocol surface speaks it (first-write hooks, bench)
    timings: Timings = field(default_factory=Timings)
    first_write_at: float | None = None  # monotonic time the surface handed its first audio to the socket
    error: ApiError | None = None
    words: list[WordTime] | None = None  # the engine's word times of the complete reply (None: it has none)
    cancelled: bool = False
    left_at: float | None = None  # when the client was seen leaving (`abandon`)
    left_how: str | None = None  # "client disconnected" (the server saw the connection end), "send failed", …
    cancel_steps: concurrent.futures.Future[int] | None = None  # Dia2: steps run before the cancel acted
    _queue: asyncio.Queue[Frames | None] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Generation:
        self._task = asyncio.create_task(self._run(), name=f"compat-{self.lease.tag}")
        return self

    async def _run(self) -> None:
        service, lease = self.lease.service, self.lease

        async def sink(frames: Frames) -> None:
            self._queue.put_nowait(frames)

        async def op(session: EngineSession) -> Timings:
            if self.context:
                await self._say_unheard(session, self.context)
                if self.cancelled:  # the client left while the context was being spoken
                    return self.timings
            timings = await service.generate(
                session,
                self.text,
                self.params,
                self.encoder,
                sink,
                started=self.started,
                timings=self.timings,
            )
            self.words = session.word_times()  # before the queue's end marker: read by whole replies
            if isinstance(self.encoder, StretchedEncoder) and not self.cancelled:
                stretched = await asyncio.to_thread(self.encoder.finish)  # off the calls' event loop
                if stretched:
                    timings.first_audio_ms = (time.monotonic() - self.started) * 1e3
                    await sink(stretched)
                timings.audio_ms = self.encoder.samples * 1000 / self.encoder.rate
            return timings

        try:
            if lease.conv is not None:
                self.timings = await service.run(lease.conv, op)
                lease.conv.replies += 1
                lease.session = lease.conv.session
            else:
                self.timings = await op(lease.session)
        except ApiError as exc:
            self.error = exc
        except EngineError as exc:
            self.error = ApiError(500, f"engine failed: {exc}")
        finally:
            self._queue.put_nowait(None)

    async def _say_unheard(self, session: EngineSession, text: str) -> None:
        """`text` spoken on the session and its audio dropped: it joins the engine's context only."""
        t0 = time.monotonic()
        frames = 0
        async for _ in session.speak(text, self.params):
            frames += 1
        log.info(
            "compat %s: previous text (%d characters) spoken as context in %.0f ms, %d chunks not sent",
            self.lease.tag, len(text), (time.monotonic() - t0) * 1e3, frames,
        )  # fmt: skip

    async def next(self) -> Frames | None:
        return await self._queue.get()

    def wrote_first(self) -> None:
        """The surface has just written its first audio bytes: what it added on top of the engine (from
        the engine's first chunk: encoding, framing, the hop through the queue, the write) goes to every
        `first_write_hooks` entry. Called once per reply by each surface, right after that write."""
        if self.first_write_at is not None:
            return
        self.first_write_at = time.monotonic()
        first, completing = self.timings.first_chunk_at, self.timings.first_frames_at
        if first is not None and completing is not None:
            for hook in first_write_hooks:
                hook(
                    self.surface,
                    (self.first_write_at - first) * 1e3,
                    (self.first_write_at - completing) * 1e3,
                )

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def abandon(self, how: str) -> None:
        """The client is gone (`how` says how that was seen): cancel the engine's utterance now, in this very
        call (no await between seeing the client leave and the engine's cancel), from any task. The engine
        drops the row at its next step boundary; `release` logs how long that took."""
        if self.left_at is not None or self.done:
            return
        self.left_at, self.left_how = time.monotonic(), how
        self.cancelled = True
        self.cancel_steps = self.lease.session.cancel()
        if self.on_end is not None:
            self.on_end()

    async def stop(self) -> None:
        """Cancel the engine's utterance and wait for the task (bounded: a stuck engine cannot hold us)."""
        if self._task is None or self._task.done():
            return
        self.cancelled = True
        self.lease.session.cancel()
        if self.on_end is not None:
            self.on_end()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5.0)
        except TimeoutError:
            log.warning("compat %s: generation did not stop within 5 s; cancelling its task", self.lease.tag)
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def first_frames(gen: Generation) -> Frames | None:
    """The reply's first frames; None if it produced none. An error before any audio is raised (the
    response can still carry its status), and then the generation is stopped and its lease released:
    the stream that would have released it is never made."""
    try:
        frames = await gen.next()
        if frames is None and gen.error is not None:
            raise gen.error
    except BaseException:
        await release(gen)
        raise
    return frames


async def collect(gen: Generation) -> bytes:
    """The whole reply (non-streaming endpoints), the lease released at its end; an engine error anywhere
    is raised."""
    out: list[bytes] = []
    try:
        while (frames := await gen.next()) is not None:
            out.extend(frames)
        if gen.error is not None:
            raise gen.error
    finally:
        await release(gen)
    return b"".join(out)


class LeasedStream(StreamingResponse):
    """A streamed reply that stops its generation and releases its lease however it ends.

    The disconnect is watched for here, whatever ASGI spec version the server reports (Starlette only
    listens for `http.disconnect` below 2.4; above, it notices only when a write fails, and uvicorn drops
    writes to a closed connection silently): the moment it comes the engine is cancelled (`abandon`), then
    the body is stopped and the lease released, so the engine row is free at the next engine step."""

    def __init__(
        self, gen: Generation, first: Frames | None, media_type: str, header: bytes = b"",
        headers: dict[str, str] | None = None, frame: Callable[[bytes], bytes] | None = None,
        trailer: Callable[[], bytes] | None = None,
    ) -> None:  # fmt: skip
        self.gen = gen
        self._first = first
        self._header = header
        self._frame = frame  # wraps each chunk's bytes (SSE events); None: raw bytes
        self._trailer = trailer
        self._body_done = False  # every byte of the reply was handed to the server
        self.first_write_at: float | None = (
            None  # monotonic time of the first audio byte handed to the server
        )
        super().__init__(self._body(), media_type=media_type, headers=headers)

    async def _body(self) -> AsyncIterator[bytes]:
        if self._header:
            yield self._header
        frames = self._first
        while frames is not None:
            data = b"".join(frames)
            if data:
                yield data if self._frame is None else self._frame(data)
                self.gen.wrote_first()  # resumed: Starlette has handed the bytes to the server
            frames = await self.gen.next()
        if self.gen.error is not None:  # headers are out: all we can do is end the body early
            log.warning("compat %s: engine failed mid-stream: %s", self.gen.lease.tag, self.gen.error.message)
        elif self._trailer is not None:
            yield self._trailer()
        self._body_done = True

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # uvicorn also answers http.disconnect once the response is complete: that is no client leaving.
        if not self._body_done:
            self.gen.abandon("client disconnected")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError, ClientDisconnect):  # a write to a closed client
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self._watch(receive)
                group.cancel_scope.cancel()
        finally:
            await release(self.gen)


async def release(gen: Generation) -> None:
    """Stop `gen` if it still runs and release its lease; a reply cut short by the client is logged with
    how long the engine slot took to come free after the client was seen leaving, in ms and in engine
    steps (Dia2's own count from the cancel request to the cancel acting: at most one).

    A session of the lease's own is closed right after the cancel (closing frees the Dia2 row in the same
    visit to the engine thread); the generation task then ends by itself. A conversation's reply is
    stopped before its lock is let go."""
    gen.abandon("response ended")  # a no-op when the client was seen leaving or the reply is done
    if gen.lease.conv is None:
        await gen.lease.release()
        await gen.stop()
    else:
        await gen.stop()
        await gen.lease.release()
    if gen.left_at is not None:
        steps: int | str = "no"  # espeak: nothing batched to count
        if gen.cancel_steps is not None:
            with contextlib.suppress(Exception):
                steps = await asyncio.wait_for(asyncio.wrap_future(gen.cancel_steps), 5.0)
        log.info(
            "compat %s: reply cut short (%s); engine slot released in %.1f ms, %s engine steps later",
            gen.lease.tag, gen.left_how, (time.monotonic() - gen.left_at) * 1e3, steps,
        )  # fmt: skip


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes even when it comes chunked (no Content-Length)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over {limit} bytes")
    return bytes(body)


# ------------------------------------------------------------------------------------------ text feed

_SENTENCE_END = re.compile(r"[.!?;:…]['\")\]]*\s*$|\n\s*$")


class TextFeed:
    """Text arriving over a socket, as the engine's text stream for one utterance.

    `words=True` (Dia2, which takes word deltas) hands each piece on as it comes. Otherwise (espeak, which
    speaks every piece as its own utterance) pieces are held until a sentence ends, `min_chars` are
    buffered at a word boundary, or the client flushes, so the speech does not break after every word.
    """

    def __init__(self, *, words: bool, min_chars: int = 120) -> None:
        self.words = words
        self.min_chars = min_chars
        self.chars = 0
        self.text = ""  # everything pushed, as sent (what character alignment covers)
        self.ended = False
        self._buffer = ""
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    def push(self, text: str) -> None:
        if self.ended or not text:
            return
        self.chars += len(text)
        self.text += text
        if self.words:
            self._queue.put_nowait(text)
            return
        self._buffer += text
        if _SENTENCE_END.search(self._buffer) or (
            len(self._buffer) >= self.min_chars and self._buffer[-1].isspace()
        ):
            self.flush()

    def trigger(self, min_chars: int = 50) -> None:
        """ElevenLabs' `try_trigger_generation`: speak the buffer if it is long enough to sound right."""
        if len(self._buffer) >= min_chars:
            self.flush()

    def flush(self) -> None:
        if self._buffer.strip():
            self._queue.put_nowait(self._buffer)
        self._buffer = ""

    def end(self) -> None:
        if not self.ended:
            self.flush()
            self.ended = True
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[str]:
        while (piece := await self._queue.get()) is not None:
            yield piece


# Character weights of the alignment estimate (sipbridge/text/heard.py weighs words the same way): a
# letter or a space one unit, punctuation the pause after it.
_CHAR_PAUSE = {",": 3.0, ";": 3.0, ":": 3.0, ".": 5.0, "?": 5.0, "!": 5.0}
_WORD = re.compile(r"\S+\s*")  # a word and the whitespace after it: the characters its time span covers

TimedChar = tuple[str, float, float]  # a character, its start and end in the reply's audio (s)


def estimated_chars(text: str, chars_per_s: float = DEFAULT_CHARS_PER_S) -> list[TimedChar]:
    """The estimate for an engine without word times (espeak): `text` laid out at `chars_per_s` (heard.py's
    rate), a character weighing 1 and punctuation its pause."""
    out: list[TimedChar] = []
    at = 0.0
    for ch in text:
        duration = (1.0 + _CHAR_PAUSE.get(ch, 0.0)) / chars_per_s
        out.append((ch, at, at + duration))
        at += duration
    return out


def _spread(text: str, begin: float, end: float) -> list[TimedChar]:
    step = max(end - begin, 1e-3) / max(len(text), 1)
    return [(ch, begin + i * step, begin + (i + 1) * step) for i, ch in enumerate(text)]


def _key(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _word_spans(
    text_words: list[str], words: Sequence[WordTime], end_s: float | None
) -> list[tuple[float, float]]:
    """The time span of each text word that the engine's words time so far. The text's words are matched
    to the engine's (difflib, on letters and digits): a matched word spans its engine word's start to the
    next one's; a run the normaliser rewrote ("$5" → "five dollars") shares the span of the engine words it
    became. A span needs the start of the engine word after it, or the audio's end (`end_s`, final)."""
    starts = [w.start_s for w in words]

    def at(j: int) -> float | None:
        return starts[j] if j < len(starts) else end_s

    spans: list[tuple[float, float]] = []
    matcher = difflib.SequenceMatcher(
        None, [_key(w) for w in text_words], [_key(w.word) for w in words], False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                begin, end = at(j1 + k), at(j1 + k + 1)
                if begin is None or end is None:
                    return spans
                spans.append((begin, max(end, begin)))
            continue
        begin, end = at(j1), at(j2)
        if begin is None or end is None or (j1 == j2 == len(starts) and end_s is None):
            return spans
        step = max(end - begin, 0.0) / max(i2 - i1, 1)
        spans += [(begin + k * step, begin + (k + 1) * step) for k in range(i2 - i1)]
    return spans


def engine_chars(text: str, words: Sequence[WordTime], end_s: float | None) -> list[TimedChar]:
    """The characters of `text` that the engine's word starts time so far (`_word_spans`): each text word
    and the whitespace after it evenly over its span; whitespace before the first word from 0 to it. At the
    end (`end_s`), text the engine never reached lies at the end of the audio."""
    found = list(_WORD.finditer(text))
    if not found or not words:  # at the end of a reply cut before its first word: all at its end
        return _spread(text, end_s, end_s) if end_s is not None else []
    spans = _word_spans([m.group().strip() for m in found], words, end_s)
    out = _spread(text[: found[0].start()], 0.0, spans[0][0]) if spans and found[0].start() else []
    for match, (begin, end) in zip(found, spans, strict=False):
        out += _spread(match.group(), begin, end)
    return out


@dataclass
class ReplyAlignment:
    """Character timings of one reply for ElevenLabs' alignment fields, chunk by chunk.

    Measured where the engine reports word starts (`EngineSession.word_times`, Dia2: the step each word
    was taken): `alignment` covers the request's text, `normalized` the words as the engine read them
    (after normalisation). Otherwise (espeak) both are the letter-weight estimate of the text. Each call
    of `chunk` gives the characters not sent yet whose start falls before the audio so far (for Dia2, of the
    words whose next word has begun); `final` gives all the rest, so every character is sent once, in order.
    """

    session: EngineSession
    at_s: float = 0.0  # audio so far
    _sent: list[int] = field(default_factory=lambda: [0, 0])  # characters given out: text, normalised

    def chunk(self, text: str, seconds: float, *, final: bool = False) -> tuple[list[TimedChar], ...]:
        """(text characters, normalised characters) for the next `seconds` of audio."""
        self.at_s += seconds
        words = self.session.word_times()
        if words is None:
            timed = normalised = estimated_chars(text)
        else:
            end = self.at_s if final else None
            timed = engine_chars(text, words, end)
            normalised = engine_chars(" ".join(w.word for w in words), words, end)
        return self._take(0, timed, final), self._take(1, normalised, final)

    def _take(self, which: int, timed: list[TimedChar], final: bool) -> list[TimedChar]:
        first = self._sent[which]
        last = first
        while last < len(timed) and (final or timed[last][1] < self.at_s):
            last += 1
        self._sent[which] = last
        return timed[first:last]


def ms_alignment(chars: list[TimedChar], begin_s: float, chunk_s: float) -> dict[str, list[Any]] | None:
    """stream-input's `{"chars", "charStartTimesMs", "charDurationsMs"}`: whole ms relative to the chunk
    that starts at `begin_s` (a start before it, a character of an earlier chunk sent late, is 0)."""
    if not chars:
        return None
    limit = chunk_s * 1000
    return {
        "chars": [c for c, _, _ in chars],
        "charStartTimesMs": [round(min(max((a - begin_s) * 1000, 0.0), limit)) for _, a, _ in chars],
        "charDurationsMs": [max(1, round((b - a) * 1000)) for _, a, b in chars],
    }


def seconds_alignment(chars: list[TimedChar]) -> dict[str, list[Any]]:
    """REST `/with-timestamps`' CharacterAlignmentResponseModel: times in s from the reply's start."""
    return {
        "characters": [c for c, _, _ in chars],
        "character_start_times_seconds": [round(a, 3) for _, a, _ in chars],
        "character_end_times_seconds": [round(b, 3) for _, _, b in chars],
    }


def spread_chars(text: str, total_s: float) -> list[TimedChar]:
    """The estimate over a whole reply `total_s` long (espeak's REST `/with-timestamps`): the weights of
    estimated_chars, scaled to the real audio length."""
    timed = estimated_chars(text)
    scale = total_s / (timed[-1][2] if timed else 1.0)
    return [(c, a * scale, b * scale) for c, a, b in timed]


def context_text(service: ConversationService, lease: Lease, previous: str | None) -> str | None:
    """What of a request's previous text to speak as context: its last `http.limits.previous_text_chars`
    (from a word boundary; 0: none), only for an engine that keeps context (not espeak) and only on a fresh
    session (a conversation already holds what was really said; a made-up turn would enter it for good)."""
    most = service.limits.previous_text_chars
    if not most or not previous or not previous.strip() or lease.conv is not None:
        return None
    if service.engine.name == "espeak":
        return None
    text = previous.strip()
    if len(text) > most:
        cut = text[-most:]
        text = cut[cut.find(" ") + 1 :] if " " in cut else cut
    return text


def streams_words(service: ConversationService) -> bool:
    """Whether the engine takes text as word deltas within one utterance (Dia2's input streaming) rather
    than speaking every piece as its own utterance (espeak)."""
    return service.engine.name != "espeak"


_PROTOCOL_WHEN = {
    400: "Unknown voice (OpenAI's shape).",
    401: "Missing or wrong API key.",
    404: "Unknown voice.",
    413: "Body over http.limits.",
    422: "Invalid request or output format.",
    500: "Engine failure.",
}


def protocol_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a compatible surface: its errors keep that protocol's own JSON shape
    (ElevenLabs `{"detail": {...}}`, OpenAI `{"error": {...}}`), not sipbridge's `ErrorBody`."""
    schema = {"type": "object", "description": "the protocol's own error object"}
    return {
        code: {"description": _PROTOCOL_WHEN[code], "content": {"application/json": {"schema": schema}}}
        for code in codes
    }
