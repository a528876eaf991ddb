"""ElevenLabs-compatible text to speech (docs/COMPAT.md): what the `elevenlabs` SDK and ElevenLabs client
plugins call, answered by our engine.

* `POST /v1/text-to-speech/{voice_id}/stream`: JSON `text`, `model_id`, `voice_settings`, … and the query's
  `output_format`; the audio as a raw chunked stream;
* `POST /v1/text-to-speech/{voice_id}`: the same, the whole file at once;
* `WS /v1/text-to-speech/{voice_id}/stream-input`: `{"text": " ", ...}` first, text chunks (`flush`,
  `try_trigger_generation`), `{"text": ""}` ends; `{"audio": <base64>, "isFinal": false, "alignment",
  "normalizedAlignment"}` per engine chunk (character timings from the engine's word times, or estimated:
  compat.ReplyAlignment), `{"isFinal": true}`, then the socket closes;
* `POST /v1/text-to-speech/{voice_id}/with-timestamps` and `/stream/with-timestamps`: the audio as base64
  with character times, whole or as newline-delimited JSON objects per chunk;
* `GET /v1/voices`, `GET /v1/voices/{voice_id}`: our named voices.

Auth is the `xi-api-key` header (a WebSocket may also send it in its first message) against
`http.bearer_token`; errors have ElevenLabs' shape `{"detail": {"status": ..., "message": ...}}`, request
validation errors FastAPI's `{"detail": [{"loc", "msg", "type"}]}` (ElevenLabs' own 422 shape).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketState

from sipbridge.config import HttpConfig
from sipbridge.engine.base import SpeakParams, WordTime
from sipbridge.http.audio_io import AudioFormat, FormatEncoder, wav_bytes, wav_stream_header
from sipbridge.http.compat import (
    MAX_MESSAGE_BYTES,
    Frames,
    Generation,
    Lease,
    LeasedStream,
    ReplyAlignment,
    SamplingFields,
    TextFeed,
    TimedChar,
    VoiceNotFound,
    collect,
    context_text,
    engine_chars,
    first_frames,
    key_ok,
    ms_alignment,
    open_lease,
    protocol_errors,
    read_capped,
    release,
    resolve_voice,
    sampling,
    seconds_alignment,
    send_failure,
    spread_chars,
    streams_words,
    voice_names,
)
from sipbridge.http.service import ApiError, ConversationService

log = logging.getLogger(__name__)

DEFAULT_FORMAT = "mp3_44100_128"  # ElevenLabs' default, and the SDK's
_MP3 = {"mp3_22050_32", "mp3_24000_48", "mp3_44100_32", "mp3_44100_64", "mp3_44100_96", "mp3_44100_128",
        "mp3_44100_192"}  # fmt: skip
_PCM_RATES = {8000, 16000, 22050, 24000, 32000, 44100, 48000}
FORMATS = sorted(
    _MP3 | {f"pcm_{r}" for r in _PCM_RATES} | {f"wav_{r}" for r in _PCM_RATES} | {"ulaw_8000", "alaw_8000"}
)
_FORMAT = re.compile(r"^(mp3|pcm|wav|ulaw|alaw)_(\d+)(?:_(\d+))?$")
_BODY_LIMIT = 256 * 1024
_REMEMBERED = 1024  # replies whose text a later previous_request_ids can name (max_text_chars each)
_ERROR_SLUGS = {409: "conversation_busy", 413: "text_too_long", 429: "too_many_requests",
                500: "engine_error", 503: "system_busy"}  # fmt: skip


class FormatError(ValueError):
    pass


def parse_format(name: str) -> AudioFormat:
    """`ulaw_8000`, `pcm_16000`, `mp3_44100_128`, … as an AudioFormat; FormatError for the rest (opus)."""
    if name not in FORMATS:
        raise FormatError(f"output_format {name!r} is not supported; use one of {', '.join(FORMATS)}")
    match = _FORMAT.match(name)
    assert match is not None
    codec, rate, kbps = match.group(1), int(match.group(2)), int(match.group(3) or 0)
    if codec == "wav":
        return AudioFormat("pcm", rate, wav=True)
    return AudioFormat(codec, rate, kbps)  # type: ignore[arg-type]


class VoiceSettings(BaseModel):
    """Accepted for compatibility; the engine has no such knobs (Dia2 clones the voice from its prefix)."""

    model_config = ConfigDict(extra="allow")
    stability: float | None = Field(None, ge=0.0, le=1.0)
    similarity_boost: float | None = Field(None, ge=0.0, le=1.0)
    style: float | None = Field(None, ge=0.0, le=1.0)
    use_speaker_boost: bool | None = None
    speed: float | None = Field(None, ge=0.5, le=2.0)


class SpeechBody(SamplingFields):
    model_config = ConfigDict(extra="allow")  # fields we do not act on (pronunciation dictionaries, …)
    text: str = Field(..., min_length=1)
    model_id: str | None = None
    voice_settings: VoiceSettings | None = None
    previous_text: str | None = None  # spoken first as context, not sent (compat.context_text)
    next_text: str | None = None  # accepted, unused: Dia2 generates left to right
    previous_request_ids: list[str] | None = Field(None, max_length=3)  # ids of our earlier replies
    next_request_ids: list[str] | None = Field(None, max_length=3)  # accepted, unused (as next_text)
    seed: int | None = Field(None, ge=0, le=4294967295)
    language_code: str | None = None


@dataclass(frozen=True)
class _Whole:
    """A whole reply of the REST endpoints, ready to send."""

    body: SpeechBody
    format: AudioFormat
    audio: bytes
    seconds: float
    words: list[WordTime] | None  # the engine's word times (None: it reports none)
    headers: dict[str, str]


def error(status: int, slug: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": {"status": slug, "message": message}}, status, dict(headers or {}))


def api_error(exc: ApiError) -> JSONResponse:
    if exc.status == 422:
        return validation_error(["body"], exc.message)
    return error(exc.status, _ERROR_SLUGS.get(exc.status, "invalid_request"), exc.message)


def validation_error(loc: list[Any], message: str, kind: str = "value_error") -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": kind}]}, 422)


def _not_found(voice: str) -> JSONResponse:
    return error(404, "voice_not_found", f"A voice with voice_id {voice!r} was not found.")


def _voice_json(name: str, service: ConversationService) -> dict[str, Any]:
    voice = service.voices.get(name)
    return {
        "voice_id": name,
        "name": name,
        "category": "cloned" if voice is not None else "premade",
        "description": voice.transcript if voice is not None else "the engine's configured voice",
        "labels": {},
        "settings": None,
        "preview_url": None,
    }


def build_router(service: ConversationService, http: HttpConfig) -> APIRouter:
    token = http.bearer_token.get_secret_value() if http.bearer_token is not None else None
    router = APIRouter(tags=["elevenlabs"])
    said: OrderedDict[str, str] = OrderedDict()  # the latest replies' texts by their request-id

    def remember(body: SpeechBody) -> tuple[str, str | None]:
        """This reply's `request-id` (ElevenLabs' response header) and the text said before it:
        `previous_request_ids`' texts where we still know them (as ElevenLabs, they win over
        `previous_text`), else `previous_text`."""
        rid = uuid.uuid4().hex
        known = [said[r] for r in body.previous_request_ids or () if r in said]
        said[rid] = body.text
        while len(said) > _REMEMBERED:
            said.popitem(last=False)
        return rid, " ".join(known) if known else body.previous_text

    def denied(request_headers: Mapping[str, str]) -> JSONResponse | None:
        if key_ok(token, request_headers.get("xi-api-key")):
            return None
        return error(401, "invalid_api_key", "Invalid API key (xi-api-key must carry http.bearer_token)")

    async def prepare(
        request: Request, voice_id: str
    ) -> tuple[SpeechBody, AudioFormat, Lease] | JSONResponse:
        """Auth, then format, voice and body (in that order: nothing is read for a client without the key),
        then the engine session."""
        if (refused := denied(request.headers)) is not None:
            return refused
        try:
            fmt = parse_format(request.query_params.get("output_format", DEFAULT_FORMAT))
        except FormatError as exc:
            return validation_error(["query", "output_format"], str(exc))
        try:
            voice = resolve_voice(service, voice_id)
        except VoiceNotFound:
            return _not_found(voice_id)
        try:
            raw = await read_capped(request, _BODY_LIMIT)
            body = SpeechBody.model_validate_json(raw or b"{}")
            service.check_text(body.text)
            lease = await open_lease(
                service, voice, request.query_params.get("conversation_id"), f"elevenlabs-{voice_id[:24]}"
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            return validation_error(["body", *first["loc"]], first["msg"], first["type"])
        except ApiError as exc:
            return api_error(exc)
        return body, fmt, lease

    async def begin(
        request: Request, voice_id: str, surface: str
    ) -> tuple[SpeechBody, AudioFormat, Generation, dict[str, str]] | Response:
        """A reply started: its body, format, generation (previous text as context) and response headers
        (`request-id`), or the error response."""
        prepared = await prepare(request, voice_id)
        if isinstance(prepared, Response):
            return prepared
        body, fmt, lease = prepared
        rid, previous = remember(body)
        gen = Generation(
            lease, body.text, FormatEncoder(lease.session.sample_rate, fmt), body.params(),
            surface=f"{surface}_{fmt.codec}", context=context_text(service, lease, previous),
        ).start()  # fmt: skip
        return body, fmt, gen, {"request-id": rid}

    async def start_stream(
        request: Request, voice_id: str, surface: str
    ) -> tuple[SpeechBody, AudioFormat, Generation, Frames | None, dict[str, str]] | Response:
        """A streaming reply started: its body, format, generation, first frames and headers, or the error."""
        begun = await begin(request, voice_id, surface)
        if isinstance(begun, Response):
            return begun
        body, fmt, gen, headers = begun
        try:
            first = await first_frames(gen)
        except ApiError as exc:
            return api_error(exc)
        return body, fmt, gen, first, headers

    @router.post("/v1/text-to-speech/{voice_id}/stream", responses=protocol_errors(401, 404, 413, 422, 500))
    async def stream(voice_id: str, request: Request) -> Response:
        """The speech as a raw audio stream in `output_format` (query), sent as it is generated."""
        started = await start_stream(request, voice_id, "elevenlabs_rest")
        if isinstance(started, Response):
            return started
        _, fmt, gen, first, headers = started
        header = wav_stream_header(fmt.rate) if fmt.wav else b""
        return LeasedStream(gen, first, fmt.media_type, header, headers=headers)

    @router.post(
        "/v1/text-to-speech/{voice_id}/stream/with-timestamps",
        responses=protocol_errors(401, 404, 413, 422, 500),
    )
    async def stream_with_timestamps(voice_id: str, request: Request) -> Response:
        """The speech as newline-delimited JSON, one `{"audio_base64", "alignment", "normalized_alignment"}`
        per engine chunk as it is generated (character times in s from the reply's start), and a last
        object with empty audio for the characters timed past the audio's end."""
        started = await start_stream(request, voice_id, "elevenlabs_rest_timestamps")
        if isinstance(started, Response):
            return started
        body, fmt, gen, first, headers = started
        lines = _TimestampLines(body.text, fmt, ReplyAlignment(gen.lease.session))
        return LeasedStream(
            gen, first, "application/x-ndjson", headers=headers, frame=lines.line, trailer=lines.last
        )  # fmt: skip

    async def whole(request: Request, voice_id: str, surface: str) -> _Whole | Response:
        """The whole reply (a WAV header in front where the format asks) with the engine's word times, or
        the protocol's error response; the engine slot is released either way."""
        begun = await begin(request, voice_id, surface)
        if isinstance(begun, Response):
            return begun
        body, fmt, gen, headers = begun
        try:
            audio = await collect(gen)
        except ApiError as exc:
            return api_error(exc)
        seconds = gen.encoder.samples / gen.encoder.rate
        audio = wav_bytes(audio, fmt.rate) if fmt.wav else audio
        return _Whole(body, fmt, audio, seconds, gen.words, headers)

    @router.post("/v1/text-to-speech/{voice_id}", responses=protocol_errors(401, 404, 413, 422, 500))
    async def convert(voice_id: str, request: Request) -> Response:
        """The whole file at once."""
        reply = await whole(request, voice_id, "elevenlabs_convert")
        if isinstance(reply, Response):
            return reply
        return Response(reply.audio, media_type=reply.format.media_type, headers=reply.headers)

    @router.post(
        "/v1/text-to-speech/{voice_id}/with-timestamps", responses=protocol_errors(401, 404, 413, 422, 500)
    )
    async def convert_with_timestamps(voice_id: str, request: Request) -> Response:
        """The whole file as base64 with character times: from the engine's word starts (Dia2), else
        estimated from the text (espeak) and scaled to the real audio length."""
        reply = await whole(request, voice_id, "elevenlabs_timestamps")
        if isinstance(reply, Response):
            return reply
        text, words, total = reply.body.text, reply.words, reply.seconds
        timed = spread_chars(text, total) if words is None else engine_chars(text, words, total)
        normalised = timed if words is None else engine_chars(" ".join(w.word for w in words), words, total)
        return JSONResponse({
            "audio_base64": base64.b64encode(reply.audio).decode(),
            "alignment": seconds_alignment(timed),
            "normalized_alignment": seconds_alignment(normalised),
        }, headers=reply.headers)  # fmt: skip

    @router.get("/v1/voices", responses=protocol_errors(401, 422, 500))
    async def voices(request: Request) -> Response:
        if (refused := denied(request.headers)) is not None:
            return refused
        return JSONResponse({"voices": [_voice_json(n, service) for n in voice_names(service)]})

    @router.get("/v1/voices/{voice_id}", responses=protocol_errors(401, 404, 422, 500))
    async def voice(voice_id: str, request: Request) -> Response:
        if (refused := denied(request.headers)) is not None:
            return refused
        try:
            resolve_voice(service, voice_id)
        except VoiceNotFound:
            return _not_found(voice_id)
        name = voice_id.removeprefix("clone:")
        return JSONResponse(_voice_json(name, service))

    async def stream_input(websocket: WebSocket, voice_id: str) -> None:
        header_key = websocket.headers.get("xi-api-key")
        bearer = websocket.headers.get("authorization", "")
        presented = header_key or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
        if presented is not None and not key_ok(token, presented):
            await websocket.send_denial_response(
                denied({}) or error(401, "invalid_api_key", "Invalid API key")
            )
            return
        try:
            fmt = parse_format(websocket.query_params.get("output_format", DEFAULT_FORMAT))
            voice = resolve_voice(service, voice_id)
            timeout = float(websocket.query_params.get("inactivity_timeout", "20"))
            if not 1 <= timeout <= 180:
                raise FormatError("inactivity_timeout must be between 1 and 180 seconds")
            params = sampling(websocket.query_params)
        except (FormatError, ValueError) as exc:
            await websocket.send_denial_response(validation_error(["query"], str(exc)))
            return
        except VoiceNotFound:
            await websocket.send_denial_response(_not_found(voice_id))
            return

        async def lease() -> Lease:
            tag = f"elevenlabs-ws-{voice_id[:24]}"
            return await open_lease(service, voice, websocket.query_params.get("conversation_id"), tag)

        authed = presented is not None or not token
        opened: Lease | None = None
        if authed:  # the engine session is taken before the handshake completes, so a refusal is an HTTP one
            try:
                opened = await lease()
            except ApiError as exc:
                await websocket.send_denial_response(api_error(exc))
                return
        # Otherwise the key comes in the first message: no engine session for a client that has not shown it.
        await websocket.accept()
        socket = _StreamInput(service, opened or lease, websocket, fmt, timeout, params, authed=authed)
        try:
            await socket.run(token)
        finally:
            await socket.close()

    router.add_api_websocket_route("/v1/text-to-speech/{voice_id}/stream-input", stream_input)
    return router


def _audio_message(
    audio: bytes, chars: tuple[list[TimedChar], ...], begin_s: float, ms: float
) -> dict[str, Any]:
    """One stream-input reply: the chunk's audio and the characters starting in it (compat.ReplyAlignment:
    the engine's word times for Dia2, an estimate for espeak), times relative to the chunk."""
    return {
        "audio": base64.b64encode(audio).decode(),
        "isFinal": False,
        "normalizedAlignment": ms_alignment(chars[1], begin_s, ms / 1000),
        "alignment": ms_alignment(chars[0], begin_s, ms / 1000),
    }


class _TimestampLines:
    """`/stream/with-timestamps`' body: a JSON object and a newline per chunk (the SDK reads it by lines)."""

    def __init__(self, text: str, fmt: AudioFormat, align: ReplyAlignment) -> None:
        self.text, self.format, self.align = text, fmt, align
        self.header = wav_stream_header(fmt.rate) if fmt.wav else b""  # in the first object's audio

    def _object(self, audio: bytes, chars: tuple[list[TimedChar], ...]) -> bytes:
        found = chars[0] or chars[1]
        message = {
            "audio_base64": base64.b64encode(audio).decode(),
            "alignment": seconds_alignment(chars[0]) if found else None,
            "normalized_alignment": seconds_alignment(chars[1]) if found else None,
        }
        return json.dumps(message).encode() + b"\n"

    def line(self, audio: bytes) -> bytes:
        chars = self.align.chunk(self.text, self.format.seconds(len(audio)))
        audio, self.header = self.header + audio, b""
        return self._object(audio, chars)

    def last(self) -> bytes:
        chars = self.align.chunk(self.text, 0.0, final=True)
        return self._object(self.header, chars) if chars[0] or chars[1] else b""


class _StreamInput:
    """One stream-input socket: text in (receive loop), utterances spoken one after another (speaker task).

    A flush (or the end) closes the utterance being fed; the next text starts another on the same engine
    session, so Dia2 hears its own earlier replies as context. The socket's end, the client's leaving or
    `inactivity_timeout` without a message stops the engine and releases the session."""

    def __init__(
        self, service: ConversationService, lease: Lease | Callable[[], Awaitable[Lease]], ws: WebSocket,
        fmt: AudioFormat, timeout: float, params: SpeakParams | None, *, authed: bool,
    ) -> None:  # fmt: skip
        self.service, self.ws, self.format, self.timeout = service, ws, fmt, timeout
        self._lease = lease  # a lease, or how to open one once the first message has shown the key
        self.params = params
        self.authed = authed
        self.feed: TextFeed | None = None
        self.min_chars = 120
        self._utterances: asyncio.Queue[TextFeed | None] = asyncio.Queue()
        self._speaker: asyncio.Task[None] | None = None
        self._gen: Generation | None = None
        self._failed = False  # an error message was sent and the socket closed

    async def _send(self, data: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(data))

    async def _fail(self, message: str, slug: str, code: int = 1008) -> None:
        self._failed = True
        with contextlib.suppress(Exception):
            await self._send({"message": message, "error": slug, "code": code})
            await self.ws.close(code, slug)

    @property
    def lease(self) -> Lease:
        assert isinstance(self._lease, Lease)
        return self._lease

    async def run(self, token: str | None) -> None:
        first = True
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.timeout)
            except TimeoutError:
                await self._fail(
                    f"no message for {self.timeout:g} s (inactivity_timeout)", "input_timeout_exceeded"
                )
                return
            if message["type"] == "websocket.disconnect":
                self._client_left("client disconnected")
                return
            raw = message.get("text") or message.get("bytes") or b""
            if len(raw) > MAX_MESSAGE_BYTES:
                await self._fail(f"message over {MAX_MESSAGE_BYTES} bytes", "message_too_large", 1009)
                return
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError:
                await self._fail("messages must be JSON objects", "invalid_message")
                return
            if first:
                first = False
                if not self.authed:
                    bearer = str(data.get("authorization") or "")
                    key = data.get("xi-api-key") or (
                        bearer[7:] if bearer.lower().startswith("bearer ") else None
                    )
                    if not key_ok(token, key if isinstance(key, str) else None):
                        await self._fail("Invalid API key", "invalid_api_key")
                        return
                    self.authed = True
                if not isinstance(self._lease, Lease):
                    try:
                        self._lease = await self._lease()
                    except ApiError as exc:
                        await self._fail(exc.message, _ERROR_SLUGS.get(exc.status, "invalid_request"), 1013)
                        return
                self._speaker = asyncio.create_task(self._speak_all(), name=f"{self.lease.tag}-speaker")
                schedule = (data.get("generation_config") or {}).get("chunk_length_schedule")
                if isinstance(schedule, list) and schedule and isinstance(schedule[0], int | float):
                    self.min_chars = max(1, min(500, int(schedule[0])))
            if not await self._handle(data):
                break
        if self._failed:
            return  # the socket is closed with its error; `close` stops the speech
        # {"text": ""}: the last utterance finishes, then isFinal and the close.
        if self._speaker is not None and not await self._finish_speaking():
            return
        with contextlib.suppress(Exception):
            await self._send({"isFinal": True})
            await self.ws.close(1000)

    async def _finish_speaking(self) -> bool:
        """Wait for the queued utterances while still reading the socket, so a client that leaves after its
        last text is seen at once, not when the next audio send fails; False if it left."""
        assert self._speaker is not None
        watcher = asyncio.create_task(self._until_disconnect(), name=f"{self.lease.tag}-watch")
        try:
            await asyncio.wait({self._speaker, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        if not self._speaker.done():
            self._client_left("client disconnected")
            return False
        if self._speaker.cancelled() or self._speaker.exception() is not None:
            self._client_left(send_failure(None if self._speaker.cancelled() else self._speaker.exception()))
            return False
        return not self._failed

    async def _until_disconnect(self) -> None:
        """Messages after the input ended are ignored (ElevenLabs closes the input at {"text": ""})."""
        with contextlib.suppress(Exception):
            while (await self.ws.receive())["type"] != "websocket.disconnect":
                pass

    def _client_left(self, how: str) -> None:
        """Stop the reply being spoken in this very call: the engine drops the row at its next step."""
        if self._gen is not None:
            self._gen.abandon(how)

    async def _handle(self, data: dict[str, Any]) -> bool:
        """One client message; False once the input has ended."""
        text = data.get("text")
        if text is not None and not isinstance(text, str):
            await self._fail("text must be a string", "invalid_message")
            return False
        if text == "":
            self._end_input()
            return False
        if text and text.strip():
            if self.feed is None:
                self.feed = TextFeed(words=streams_words(self.service), min_chars=self.min_chars)
                self._utterances.put_nowait(self.feed)
            try:
                self.service.check_text(text, self.feed.chars)
            except ApiError as exc:
                await self._fail(exc.message, "text_too_long")
                return False
            self.feed.push(text)
            if data.get("try_trigger_generation"):
                self.feed.trigger()
        if data.get("flush") and self.feed is not None:
            self.feed.end()
            self.feed = None
        return True

    def _end_input(self) -> None:
        if self.feed is not None:
            self.feed.end()
            self.feed = None
        self._utterances.put_nowait(None)

    async def _speak_all(self) -> None:
        while (feed := await self._utterances.get()) is not None:
            gen = Generation(
                self.lease, aiter(feed), FormatEncoder(self.lease.session.sample_rate, self.format),
                self.params, on_end=feed.end, surface="elevenlabs_stream_input",
            ).start()  # fmt: skip
            self._gen = gen
            align = ReplyAlignment(self.lease.session)
            while (frames := await gen.next()) is not None:
                audio = b"".join(frames)
                begin, ms = align.at_s, self.format.seconds(len(audio)) * 1000
                chars = align.chunk(feed.text, ms / 1000)
                if audio and self.ws.application_state == WebSocketState.CONNECTED:
                    await self._send(_audio_message(audio, chars, begin, ms))
                    gen.wrote_first()
            if gen.error is None and not gen.cancelled:
                rest = align.chunk(feed.text, 0.0, final=True)  # characters timed past the audio's end
                if (rest[0] or rest[1]) and self.ws.application_state == WebSocketState.CONNECTED:
                    await self._send(_audio_message(b"", rest, align.at_s, 0.0))
            if gen.error is not None:
                await self._fail(gen.error.message, _ERROR_SLUGS.get(gen.error.status, "engine_error"), 1011)
                return
            log.info("elevenlabs stream-input %s: %s", self.lease.tag, gen.timings.as_dict())

    async def close(self) -> None:
        """The client left, the input ended or an error closed the socket: stop speaking, free the slot.
        The speaker goes first, so it cannot start a queued utterance on a lease being released."""
        if self.feed is not None:
            self.feed.end()
        if self._speaker is not None and not self._speaker.done():
            self._speaker.cancel()
            with contextlib.suppress(BaseException):
                await self._speaker
        if self._gen is not None:
            await release(self._gen)  # stops a reply still running (logged), releases the lease
        elif isinstance(self._lease, Lease):
            await self._lease.release()
