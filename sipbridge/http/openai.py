"""OpenAI-compatible speech (docs/COMPAT.md): `POST /v1/audio/speech` as the `openai` SDK calls it.

Body: `model` (any name: there is one engine), `input`, `voice` (a name, `clone:<name>`, `default`, or
`{"id": ...}`), `response_format` (`pcm` = s16le 24 kHz, `wav`, `mp3`, and `ulaw` / `alaw` (8 kHz G.711) as
extensions), `speed` (0.25-4; not 1: the whole reply time-stretched by Rubber Band, pitch kept, then
sent: audio_io.StretchedEncoder), `instructions` (accepted, not applied),
`stream_format` (`audio`: the raw bytes, chunked as generated; `sse`: `speech.audio.delta` events), and our
extensions `stream` (false: the whole file with its length) and `conversation_id` (speak inside a
conversation of the conversation API, keeping Dia2's dialogue context).

`POST /v1/audio/voice-register` (ours, in OpenAI's error style): `name`, the reference recording as a
multipart file (`file`, `audio` or `reference_audio`) or base64 in JSON (`audio`), and `ref_text` (what is
said; ASR when absent) → `{"voice_id": "clone:<name>"}`, usable as `voice` here and as the `voice_id` of
the ElevenLabs and Kyutai surfaces. `GET /v1/audio/voices` lists them.

Auth: `Authorization: Bearer <http.bearer_token>`. Errors: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from sipbridge.config import HttpConfig
from sipbridge.http.audio_io import (
    AudioFormat,
    FormatEncoder,
    StretchedEncoder,
    can_stretch,
    decode_upload,
    wav_bytes,
    wav_stream_header,
)
from sipbridge.http.compat import (
    CLONE_PREFIX,
    Generation,
    LeasedStream,
    SamplingFields,
    VoiceNotFound,
    collect,
    first_frames,
    key_ok,
    open_lease,
    protocol_errors,
    read_capped,
    resolve_voice,
    voice_names,
)
from sipbridge.http.service import ApiError, ConversationService

log = logging.getLogger(__name__)

FORMATS: dict[str, AudioFormat] = {
    "pcm": AudioFormat("pcm", 24000),
    "wav": AudioFormat("pcm", 24000, wav=True),
    "mp3": AudioFormat("mp3", 24000, kbps=96),
    "ulaw": AudioFormat("ulaw", 8000),
    "alaw": AudioFormat("alaw", 8000),
}
UNSUPPORTED = ("opus", "aac", "flac")
_BODY_LIMIT = 256 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_CODES = {
    409: "conversation_busy",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_value",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "engine_overloaded",
}


class VoiceRef(BaseModel):
    id: str = Field(..., min_length=1, max_length=200)


class SpeechRequest(SamplingFields):
    model_config = ConfigDict(extra="allow")  # newer SDK fields we do not act on must not break a client
    model: str = Field(..., min_length=1, max_length=200)
    input: str = Field(..., min_length=1)
    voice: str | VoiceRef = Field(..., description="A voice name, clone:<name> or default")
    response_format: str = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool = True  # extension: false sends the whole file with its Content-Length
    conversation_id: str | None = Field(None, max_length=200)  # extension

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


def error(
    status: int, message: str, *, param: str | None = None, code: str | None = None,
    kind: str = "invalid_request_error", headers: Mapping[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status, dict(headers or {}))


def api_error(exc: ApiError) -> JSONResponse:
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return error(exc.status, exc.message, code=_CODES.get(exc.status), kind=kind)


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _delta(audio: bytes) -> bytes:
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def build_router(service: ConversationService, http: HttpConfig) -> APIRouter:
    token = http.bearer_token.get_secret_value() if http.bearer_token is not None else None
    limits = http.limits
    router = APIRouter(tags=["openai"])

    def denied(request: Request) -> JSONResponse | None:
        header = request.headers.get("authorization", "")
        presented = header[7:] if header.lower().startswith("bearer ") else None
        if key_ok(token, presented):
            return None
        return error(
            401, "Incorrect API key provided (Authorization: Bearer <http.bearer_token>)",
            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip

    async def parse(request: Request) -> SpeechRequest | JSONResponse:
        try:
            raw = await read_capped(request, _BODY_LIMIT)
            data = json.loads(raw)
            req = SpeechRequest.model_validate(data)
        except ApiError as exc:
            return api_error(exc)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(422, f"the body is not valid JSON: {exc}", code="invalid_json")
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            return error(422, f"{param}: {first['msg']}", param=param, code="invalid_value")
        if req.response_format not in FORMATS:
            hint = " (not implemented here)" if req.response_format in UNSUPPORTED else ""
            return error(
                422, f"response_format {req.response_format!r} is not supported{hint}; use one of"
                f" {', '.join(FORMATS)}", param="response_format", code="unsupported_value",
            )  # fmt: skip
        return req

    @router.post("/v1/audio/speech", responses=protocol_errors(400, 401, 413, 422, 500))
    async def speech(request: Request) -> Response:
        """Speak `input`; the audio streams as it is generated (or whole with `"stream": false`)."""
        if (refused := denied(request)) is not None:
            return refused
        req = await parse(request)
        if isinstance(req, Response):
            return req
        fmt = FORMATS[req.response_format]
        if req.speed != 1.0 and not can_stretch():
            return error(
                422, "speed other than 1.0 needs the optional time-stretch library on the server: "
                "pip install 'sipbridge[timestretch]' (pedalboard, GPL-3.0: see docs/COMPAT.md)",
                param="speed", code="unsupported_value",
            )  # fmt: skip
        try:
            voice = resolve_voice(service, req.voice_name)
        except VoiceNotFound as exc:
            return error(
                400, f"voice {exc.name!r} does not exist; register it with /v1/audio/voice-register",
                param="voice", code="voice_not_found",
            )  # fmt: skip
        try:
            service.check_text(req.input)
            lease = await open_lease(service, voice, req.conversation_id, f"openai-{req.voice_name[:24]}")
        except ApiError as exc:
            return api_error(exc)
        plain = FormatEncoder(lease.session.sample_rate, fmt)
        encoder = plain if req.speed == 1.0 else StretchedEncoder(plain, lease.session.sample_rate, req.speed)
        surface = f"openai_speech_{fmt.codec}" + ("_sse" if req.stream_format == "sse" else "")
        gen = Generation(lease, req.input, encoder, req.params(), surface=surface).start()
        try:
            if not req.stream:
                audio = await collect(gen)
                return Response(wav_bytes(audio, fmt.rate) if fmt.wav else audio, media_type=fmt.media_type)
            first = await first_frames(gen)
        except ApiError as exc:
            return api_error(exc)
        header = wav_stream_header(fmt.rate) if fmt.wav else b""
        if req.stream_format == "sse":
            usage = {"input_tokens": len(req.input.split()), "output_tokens": 0, "total_tokens": 0}
            return LeasedStream(
                gen, first, "text/event-stream",
                header=_delta(header) if header else b"",
                frame=_delta,
                trailer=lambda: _sse({"type": "speech.audio.done", "usage": usage}),
            )  # fmt: skip
        return LeasedStream(gen, first, fmt.media_type, header)

    async def register_form(request: Request) -> tuple[str, bytes, str | None, str]:
        form = await request.form(max_files=2, max_fields=8)
        upload = next(
            (f for k in ("file", "audio", "reference_audio") if isinstance(f := form.get(k), UploadFile)),
            None,
        )
        name, ref_text = form.get("name"), form.get("ref_text")
        if upload is None:
            raise ApiError(422, "no reference audio: send it as the multipart file 'file' (or 'audio')")
        data = await upload.read(limits.max_upload_bytes + 1)
        return (
            name if isinstance(name, str) else "",
            data,
            ref_text if isinstance(ref_text, str) else None,
            upload.filename or "audio",
        )

    async def register_json(request: Request) -> tuple[str, bytes, str | None, str]:
        raw = await read_capped(request, limits.max_upload_bytes * 4 // 3 + 64 * 1024)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            audio = base64.b64decode(str(data.get("audio") or ""), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ApiError(422, f"invalid body: {exc} (audio must be base64)") from exc
        ref_text = data.get("ref_text")
        return str(data.get("name") or ""), audio, ref_text if isinstance(ref_text, str) else None, "audio"

    @router.post("/v1/audio/voice-register", responses=protocol_errors(401, 413, 422, 500))
    async def voice_register(request: Request) -> Response:
        """Store a reference recording as a named voice (Dia2: Mimi-encoded once, here)."""
        if (refused := denied(request)) is not None:
            return refused
        multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
        try:
            name, data, ref_text, filename = await (register_form if multipart else register_json)(request)
            name = name.removeprefix(CLONE_PREFIX)
            if not _NAME.match(name):
                raise ApiError(422, "name must be 1-64 letters, digits, '_', '.' or '-' (starting with one"
                               " of the first two)")  # fmt: skip
            if len(data) > limits.max_upload_bytes:
                raise ApiError(
                    413, f"the audio is over {limits.max_upload_bytes} bytes (http.limits.max_upload_bytes)"
                )
            if name not in service.voices and len(service.voices) >= limits.max_voices:
                raise ApiError(429, f"{limits.max_voices} voices are stored (http.limits.max_voices)")
            decoded = await asyncio.to_thread(
                decode_upload, data, name=filename, max_seconds=limits.max_audio_s
            )
            voice = await service.make_voice(decoded, data, ref_text, None, name)
        except ApiError as exc:
            return api_error(exc)
        service.voices[name] = voice
        log.info("openai voice-register: %s (%.1f s)", name, voice.seconds)
        return JSONResponse({"voice_id": f"{CLONE_PREFIX}{name}", "name": name, **voice.describe()})

    @router.get("/v1/audio/voices", responses=protocol_errors(401, 422, 500))
    async def voices(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        return JSONResponse({
            "voices": [n if n == "default" else f"{CLONE_PREFIX}{n}" for n in voice_names(service)]
        })  # fmt: skip

    return router
