"""The conversation API's endpoints (docs/HTTP_API.md): the earlier conversation server's names and flow.

`set_voice` → `user_spoke` → `generate` (or the `generate_stream` WebSocket), repeated, on the default
conversation or on any number of named ones (`conversation_id`), plus the stateless `upload_voice` / `tts` /
`voices`. Every route but `/health` needs the bearer token when `http.bearer_token` is set; it is checked
before the body is read (sipbridge/http/guards.py says why that takes a route class, not only a dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from starlette.websockets import WebSocketDisconnect

from sipbridge.config import HttpConfig
from sipbridge.engine import EngineError, EngineRejected
from sipbridge.engine.base import SpeakParams, Words
from sipbridge.http.audio_io import (
    MEDIA_TYPES,
    PCM_RATE,
    STREAM_FORMATS,
    DecodedAudio,
    OutputEncoder,
    decode_upload,
    wav_bytes,
)
from sipbridge.http.errors import error_responses
from sipbridge.http.guards import BearerToken, auth_first_route
from sipbridge.http.service import ApiError, Conversation, ConversationService, Timings, Voice, check_name

log = logging.getLogger(__name__)

HealthSource = Any  # Callable[[], Mapping[str, Any]]; kept loose to avoid an import cycle with app.py

Format = Literal["wav", "pcm16", "ulaw"]


class SamplingFields(BaseModel):
    cfg_scale: float | None = Field(None, ge=1.0, le=10.0, description="CFG scale; engine default if unset.")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="0 = greedy; engine default if unset."
    )
    top_k: int | None = Field(None, ge=1, le=2048, description="Top-k; Dia2 caps it at 64.")
    normalize: bool | None = Field(
        None,
        description="Read numbers, dates, money, IDs... as spoken words and shape the script (docs/TEXT.md); "
        "false sends the text to the engine as given. Default: the deployment's engine.text.normalize.",
    )

    def params(self) -> SpeakParams:
        return SpeakParams(self.cfg_scale, self.temperature, self.top_k, self.normalize)


class GenerateRequest(SamplingFields):
    text: str = Field(..., min_length=1, description="What the AI (speaker 1) says next.")
    format: Format = Field("wav", description="wav (24 kHz), pcm16 (24 kHz raw s16le) or ulaw (8 kHz).")
    conversation_id: str | None = Field(
        None, max_length=128, description="Default: the one default conversation."
    )


class TtsRequest(SamplingFields):
    text: str = Field(..., min_length=1)
    speaker_1: str | None = Field(
        None, max_length=128, description="Voice name (upload_voice) for speaker 1, the speaker."
    )
    speaker_2: str | None = Field(
        None, max_length=128, description="Voice name heard as speaker 2 (context only)."
    )
    format: Format = "wav"


class ConversationRef(BaseModel):
    conversation_id: str | None = Field(None, max_length=128)


_BODY_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body that may be JSON or a form (the earlier server's clients send both).

    The schema is inlined: these bodies are parsed by hand (`_parse_body`, after the token check), so
    FastAPI never registers the models as components and a `$ref` to them would dangle.
    """
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": model is not ConversationRef,
            "content": {f: {"schema": schema} for f in ("application/json", *_BODY_FORMS)},
        }
    }


def _loads(raw: bytes | str, what: str) -> Any:
    """JSON from the wire; 422 (not a 500) for bytes that are not UTF-8, bad syntax or absurd nesting."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        raise ApiError(422, f"{what} is not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the C decoder refuses ~1000+ levels before using much memory
        raise ApiError(422, f"{what} is nested too deeply") from exc


async def _parse_body(request: Request, model: type[BaseModel]) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype in _BODY_FORMS:
            form = await request.form()
            data: Any = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
        else:
            raw = await request.body()
            data = _loads(raw, "the body") if raw.strip() else {}
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ApiError(422, f"invalid request: {problems}") from exc


def _parse_words(raw: str | None) -> Words | None:
    """`[{"text": "Hi", "start": 0.1, "end": 0.3}, ...]` (seconds in the audio), as an ASR backend gives."""
    if raw is None or not raw.strip():
        return None
    items = _loads(raw, "words")
    try:
        return [(str(i.get("text", i.get("word"))), float(i["start"]), float(i["end"])) for i in items]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ApiError(
            422, 'words must be a JSON list of {"text": str, "start": s, "end": s} objects'
        ) from exc


def _timing_headers(t: Timings, fmt: str, rate: int) -> dict[str, str]:
    return {
        "X-First-Audio-Ms": "" if t.first_audio_ms is None else f"{t.first_audio_ms:.1f}",
        "X-Total-Ms": f"{t.total_ms:.1f}",
        "X-Frames": str(t.frames),
        "X-Audio-Ms": f"{t.audio_ms:.1f}",
        "X-Sample-Rate": str(rate),
        "X-Audio-Format": fmt,
    }


def _audio_response(frames: list[bytes], fmt: str, rate: int, timings: Timings) -> Response:
    body = b"".join(frames)
    if fmt == "wav":
        body = wav_bytes(body, rate)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=_timing_headers(timings, fmt, rate))


def build_router(
    service: ConversationService, http: HttpConfig, health_sources: Mapping[str, HealthSource]
) -> APIRouter:
    token = BearerToken(http.bearer_token.get_secret_value() if http.bearer_token is not None else None)
    token_ok = token.ok
    limits = http.limits
    bearer = HTTPBearer(auto_error=False, description="http.bearer_token from the config")

    # The route class checks the token before the body is read; this dependency repeats the check (it would
    # guard a route added to `api` some other way) and declares the security scheme in the OpenAPI schema.
    # Default-value style, not Annotated: with postponed annotations FastAPI resolves names in the module's
    # globals, and `bearer` is local to this factory.
    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if not token_ok(credentials.credentials if credentials else None):
            raise HTTPException(
                401, "missing or wrong bearer token (Authorization: Bearer ...)",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    public = APIRouter()
    api = APIRouter(
        dependencies=[Depends(require_token)],
        route_class=auth_first_route(token.check),
        responses=error_responses(401, 422, 500),
    )

    async def read_upload(upload: UploadFile | None, other: UploadFile | None) -> tuple[bytes, DecodedAudio]:
        file = upload or other
        if file is None:
            raise ApiError(
                422, "no audio: send the recording as the multipart file field 'audio' (or 'file')"
            )
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise ApiError(
                413,
                f"upload is over the limit of {limits.max_upload_bytes} bytes (http.limits.max_upload_bytes)",
            )
        return data, await asyncio.to_thread(
            decode_upload, data, name=file.filename or "audio", max_seconds=limits.max_audio_s
        )

    async def speak_whole(
        session: Any, text: str, params: SpeakParams, fmt: str, conv: Conversation | None
    ) -> Response:
        """Generate all of `text` on `conv` (or a bare `session`) and answer with the audio and timings."""
        service.check_text(text)
        started = time.monotonic()
        session = conv.session if conv is not None else session
        encoder = OutputEncoder(session.sample_rate, fmt)
        frames: list[bytes] = []

        async def sink(out: list[bytes]) -> None:
            frames.extend(out)

        async def op(s: Any) -> Timings:
            return await service.generate(s, text, params, encoder, sink, started=started)

        if conv is not None:
            timings: Timings = await service.run(conv, op)
            conv.replies += 1
        else:
            try:
                timings = await op(session)
            except EngineError as exc:
                raise ApiError(500, f"engine failed: {exc}") from exc
        log.info(
            "http generate %s: %d chars, first audio %s ms, total %.0f ms, %d frames",
            conv.id if conv else "tts", len(text), timings.as_dict()["first_audio_ms"], timings.total_ms,
            timings.frames,
        )  # fmt: skip
        return _audio_response(frames, fmt, encoder.rate, timings)

    # ------------------------------------------------------------------------------------------ health

    @public.get("/health", tags=["health"])
    def health() -> dict[str, Any]:
        """Engine status, model, device, GPU memory, open conversations and active calls (no auth)."""
        engine = dict(service.engine.health())
        calls = health_sources.get("calls")
        return {
            "status": "ok" if engine.get("ok", False) else "degraded",
            "engine": engine,
            "model": engine.get("model", service.engine.name),
            "device": engine.get("device", "cpu"),
            "gpu_memory": _gpu_memory(),
            "conversations": len(service.conversations),
            "calls": (calls() or {}).get("active", 0) if calls else 0,
        }

    # ----------------------------------------------------------------------------------- conversation

    @api.post(
        "/reset", tags=["conversation"], openapi_extra=_body_schema(ConversationRef),
        responses=error_responses(409, 413, 429, 503),
    )  # fmt: skip
    async def reset(request: Request, conversation_id: str | None = Query(None)) -> dict[str, Any]:
        """Forget every turn of the conversation (its voice is kept)."""
        ref = await _parse_body(request, ConversationRef)
        conv = service.get(conversation_id or ref.conversation_id)
        async with service.busy(conv):
            await service.run(conv, lambda s: s.reset())
            conv.user_turns = conv.replies = 0
        return {"ok": True, "conversation_id": conv.id}

    @api.post("/set_voice", tags=["conversation"], responses=error_responses(404, 409, 413, 415, 429, 503))
    async def set_voice(
        audio: Annotated[
            UploadFile | None, File(description="WAV/FLAC/OGG, any rate, mono or stereo")
        ] = None,
        file: Annotated[UploadFile | None, File(description="Alias of audio")] = None,
        transcript: Annotated[str | None, Form(description="What is said; ASR if absent")] = None,
        words: Annotated[str | None, Form(description='JSON [{"text","start","end"}], seconds')] = None,
        conversation_id: Annotated[str | None, Form()] = None,
        conversation: Annotated[str | None, Query(alias="conversation_id")] = None,
        voice_name: Annotated[
            str | None, Form(alias="voice", description="A stored voice (upload_voice) instead of audio")
        ] = None,
    ) -> dict[str, Any]:
        """The AI voice (speaker 1) of the conversation: a 5-15 s recording and its words, or a voice stored
        with /upload_voice (its cached codes, no new encoding). Resets it."""
        conv = service.get(conversation or conversation_id)
        upload: tuple[bytes, DecodedAudio, Words | None] | None = None
        if voice_name is None:
            raw, decoded = await read_upload(audio, file)
            upload = (raw, decoded, _parse_words(words))
        elif voice_name not in service.voices:
            raise ApiError(404, f"no voice {voice_name[:140]!r} (POST /upload_voice first)")
        async with service.busy(conv):
            if upload is None:
                voice: Voice = service.voices[str(voice_name)]  # prepared at upload: nothing to encode
            else:
                voice = await service.make_voice(upload[1], upload[0], transcript, upload[2], None)
            await service.run(conv, lambda s: s.set_prepared_voice(voice.prepared))
            conv.voice = voice
            conv.user_turns = conv.replies = 0
        return {"ok": True, "conversation_id": conv.id, **voice.describe()}

    @api.post("/user_spoke", tags=["conversation"], responses=error_responses(409, 413, 415, 429, 503))
    async def user_spoke(
        audio: Annotated[UploadFile | None, File(description="The user's turn, WAV/FLAC/OGG")] = None,
        file: Annotated[UploadFile | None, File(description="Alias of audio")] = None,
        transcript: Annotated[str | None, Form(description="What was said; ASR if absent")] = None,
        words: Annotated[str | None, Form(description='JSON [{"text","start","end"}], seconds')] = None,
        conversation_id: Annotated[str | None, Form()] = None,
        conversation: Annotated[str | None, Query(alias="conversation_id")] = None,
    ) -> dict[str, Any]:
        """The user's turn (speaker 2) joins the conversation's context."""
        conv = service.get(conversation or conversation_id)
        raw, decoded = await read_upload(audio, file)
        timed = _parse_words(words)
        async with service.busy(conv):
            heard = await service.words_for(decoded, raw, transcript, timed)
            text = heard if isinstance(heard, str) else " ".join(w for w, _, _ in heard)
            if not text.strip():  # silence, or an empty transcript: not a turn (the context stays as it was)
                raise ApiError(422, "no words in this turn: no speech in the audio and no transcript")
            pcm = decoded.at(PCM_RATE)
            await service.run(conv, lambda s: s.hear(pcm, PCM_RATE, heard))
            conv.user_turns += 1
        return {
            "ok": True,
            "conversation_id": conv.id,
            "transcript": text,
            "seconds": round(decoded.seconds, 3),
        }

    @api.post(
        "/generate", tags=["conversation"], openapi_extra=_body_schema(GenerateRequest),
        responses={
            200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "The audio"},
            **error_responses(409, 413, 429, 503),
        },
    )  # fmt: skip
    async def generate(request: Request, conversation_id: str | None = Query(None)) -> Response:
        """The AI's next turn as audio; X-First-Audio-Ms, X-Total-Ms and X-Frames carry the timings."""
        req: GenerateRequest = await _parse_body(request, GenerateRequest)
        conv = service.get(conversation_id or req.conversation_id)
        async with service.busy(conv):
            return await speak_whole(None, req.text, req.params(), req.format, conv)

    @api.get("/state", tags=["conversation"], responses=error_responses(404))
    async def state(conversation_id: str | None = Query(None)) -> dict[str, Any]:
        """Turns, context frames used (Dia2) and whether a voice is set; 404 if it is not open (a GET opens
        nothing)."""
        conv = service.find(conversation_id)
        engine_state = await service.run(conv, lambda s: s.state())
        return {
            "conversation_id": conv.id,
            "voice_set": conv.voice is not None,
            "voice": conv.voice.describe() if conv.voice else None,
            "turns": conv.user_turns + conv.replies,
            "user_turns": conv.user_turns,
            "replies": conv.replies,
            "context_frames": engine_state.get("context_steps"),
            "max_context_frames": engine_state.get("max_context_steps"),
            "speaking": conv.lock.locked(),
            "restarts": conv.restarts,
            "engine": engine_state,
        }

    @api.get("/conversations", tags=["conversation"])
    def conversations() -> dict[str, Any]:
        return {
            "conversations": [
                {"conversation_id": c.id, "voice_set": c.voice is not None, "turns": c.user_turns + c.replies}
                for c in service.conversations.values()
            ],
            "limit": limits.max_conversations,
        }

    @api.delete("/conversations/{conversation_id}", tags=["conversation"], responses=error_responses(404))
    async def close_conversation(conversation_id: str) -> dict[str, Any]:
        """Close a conversation and free its engine row (it is reopened empty on next use). An operation
        running on it is stopped: `interrupted` is true and that request answers 409."""
        interrupted = await service.close_conversation(conversation_id)
        if interrupted is None:
            raise ApiError(404, f"no conversation {conversation_id[:140]!r}")
        return {"ok": True, "interrupted": interrupted}

    # -------------------------------------------------------------------------------------- stateless

    @api.post("/upload_voice", tags=["voices"], responses=error_responses(413, 415, 429))
    async def upload_voice(
        name: Annotated[str, Form(description="Voice name: 1-128 of A-Z a-z 0-9 _ . : @ + -")],
        audio: Annotated[UploadFile | None, File()] = None,
        file: Annotated[UploadFile | None, File(description="Alias of audio")] = None,
        transcript: Annotated[str | None, Form()] = None,
        words: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """Store a named voice for /tts and /set_voice: its transcript and engine codes (Dia2: Mimi), computed
        once here, so using it costs no encoding."""
        check_name(name, "voice name")
        if name not in service.voices and len(service.voices) >= limits.max_voices:
            raise ApiError(429, f"{limits.max_voices} voices are stored (http.limits.max_voices)")
        raw, decoded = await read_upload(audio, file)
        voice = await service.make_voice(decoded, raw, transcript, _parse_words(words), name)
        service.voices[name] = voice
        return {"ok": True, **voice.describe()}

    @api.get("/voices", tags=["voices"])
    def voices() -> dict[str, Any]:
        return {"voices": [v.describe() for v in service.voices.values()]}

    @api.delete("/voices/{name}", tags=["voices"], responses=error_responses(404))
    def delete_voice(name: str) -> dict[str, Any]:
        if service.voices.pop(name, None) is None:
            raise ApiError(404, f"no voice {name[:140]!r}")
        return {"ok": True}

    @api.post(
        "/tts", tags=["voices"], openapi_extra=_body_schema(TtsRequest),
        responses={
            200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "The audio"},
            **error_responses(404, 413, 503),
        },
    )  # fmt: skip
    async def tts(request: Request) -> Response:
        """Speak text with named voices and no conversation state (a fresh engine session per request)."""
        req: TtsRequest = await _parse_body(request, TtsRequest)
        service.check_text(req.text)
        chosen = {}
        for role in ("speaker_1", "speaker_2"):
            voice_name = getattr(req, role)
            if voice_name is not None:
                if voice_name not in service.voices:
                    raise ApiError(404, f"{role}: no voice {voice_name!r} (POST /upload_voice first)")
                chosen[role] = service.voices[voice_name]
        session = service.engine_session("tts")
        try:
            try:
                if "speaker_1" in chosen:
                    await session.set_prepared_voice(chosen["speaker_1"].prepared)
                if "speaker_2" in chosen:
                    await session.hear_prepared(chosen["speaker_2"].prepared)
            except EngineRejected as exc:
                raise ApiError(413, f"the engine refused it: {exc}") from exc
            except EngineError as exc:
                raise ApiError(500, f"engine failed: {exc}") from exc
            return await speak_whole(session, req.text, req.params(), req.format, None)
        finally:
            await session.close()

    # -------------------------------------------------------------------------------------- websocket

    async def generate_stream(
        websocket: WebSocket,
        format: str = "pcm16",
        conversation_id: str | None = None,
        token: str | None = None,
    ) -> None:
        header = websocket.headers.get("authorization", "")
        presented = header[7:] if header.lower().startswith("bearer ") else token
        if not token_ok(presented):
            await websocket.send_denial_response(
                JSONResponse({"detail": "missing or wrong bearer token"}, 401, {"WWW-Authenticate": "Bearer"})
            )
            return
        if format not in STREAM_FORMATS:
            await websocket.send_denial_response(
                JSONResponse({"detail": f"format must be one of {list(STREAM_FORMATS)}, got {format!r}"}, 422)
            )
            return
        try:
            conv = service.get(conversation_id)
        except ApiError as exc:
            await websocket.send_denial_response(JSONResponse({"detail": exc.message}, exc.status))
            return
        await websocket.accept()
        await _Stream(service, conv, websocket, format).run()

    public.add_api_websocket_route("/generate_stream", generate_stream)
    public.add_api_websocket_route("/ws/generate", generate_stream)

    root = APIRouter()
    root.include_router(public)
    root.include_router(api)
    return root


def _gpu_memory() -> dict[str, Any] | None:
    """Allocated/reserved/total MiB of the current CUDA device, if torch is loaded and has one."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just for this (espeak deployments)
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    mib = 1 << 20
    return {
        "allocated_mib": round(torch.cuda.memory_allocated() / mib, 1),
        "reserved_mib": round(torch.cuda.memory_reserved() / mib, 1),
        "total_mib": round(torch.cuda.get_device_properties(0).total_memory / mib, 1),
    }


class _Stream:
    """One WebSocket: utterances one after another; text and control messages while one is spoken.

    The receive loop never blocks on generation: audio is sent by a separate task, so `{"cancel": true}`
    (barge-in) is acted on as soon as it arrives. Sends are serialised by a lock (two tasks send).
    """

    def __init__(self, service: ConversationService, conv: Conversation, ws: WebSocket, fmt: str) -> None:
        self.service, self.conv, self.ws, self.format = service, conv, ws, fmt
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._deltas: asyncio.Queue[str | None] | None = None
        self._chars = 0
        self._cancelled = False
        # True from an utterance's first text until just before its `done`/`error` goes out: the client may
        # start the next utterance as soon as it reads `done`, before the task object itself has finished.
        self._speaking = False

    async def _send_json(self, data: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_json(data)

    async def _error(self, status: int, message: str) -> None:
        await self._send_json({"event": "error", "status": status, "message": message})

    async def run(self) -> None:
        # A DELETE of the conversation stops a reply that waits for more text, not only one in the engine.
        self.conv.on_close.append(self._stop_generation)
        try:
            await self._serve()
        finally:
            self.conv.on_close.remove(self._stop_generation)

    async def _serve(self) -> None:
        rate = 8000 if self.format == "ulaw" else PCM_RATE
        await self._send_json(
            {"event": "ready", "format": self.format, "sample_rate": rate, "frame_ms": 20,
             "conversation_id": self.conv.id}
        )  # fmt: skip
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await self._error(422, 'send JSON text messages ({"text": ...}, {"end": true})')
                    continue
                try:
                    data = _loads(message["text"], "the message")
                except ApiError as exc:
                    await self._error(exc.status, exc.message)
                    continue
                if not isinstance(data, dict):
                    await self._error(422, "messages must be JSON objects")
                    continue
                await self._handle(data)
        except WebSocketDisconnect:
            pass
        finally:
            if self._task is not None and not self._task.done():
                self._stop_generation()
                with contextlib.suppress(BaseException):
                    await self._task

    def _stop_generation(self) -> None:
        self._cancelled = True
        self.conv.session.cancel()
        if self._deltas is not None:
            self._deltas.put_nowait(None)  # a reply waiting for more text must end too

    async def _handle(self, data: dict[str, Any]) -> None:
        if self.conv.closed:
            await self._error(409, self.service.closed_error(self.conv).message)
            await self.ws.close(1000, "conversation closed")
            return
        active = self._speaking
        if data.get("cancel"):
            if active:
                self._stop_generation()
            return
        text = data.get("text")
        if text is not None and not isinstance(text, str):
            await self._error(422, "text must be a string")
            return
        end = bool(data.get("end"))
        if not active:
            if not text and end:
                return  # an `end` after a cancelled or finished reply: nothing to close
            if not text:
                await self._error(422, 'start an utterance with {"text": ...}')
                return
            try:
                params = SamplingFields.model_validate(
                    {k: data[k] for k in ("cfg_scale", "temperature", "top_k", "normalize") if k in data}
                ).params()
                self.service.check_text(text)
            except ValidationError as exc:
                await self._error(422, f"invalid sampling parameters: {exc.errors()[0]['msg']}")
                return
            except ApiError as exc:
                await self._error(exc.status, exc.message)
                return
            self._chars = len(text)
            self._cancelled = False
            self._speaking = True
            if end:
                self._deltas = None
                source: Any = text
            else:
                self._deltas = asyncio.Queue()
                self._deltas.put_nowait(text)
                source = self._iterate(self._deltas)
            self._task = asyncio.create_task(self._generate(source, params), name=f"ws-{self.conv.id[:16]}")
            return
        if text:
            try:
                self.service.check_text(text, self._chars)
            except ApiError as exc:
                self._stop_generation()
                await self._error(exc.status, exc.message)
                return
            self._chars += len(text)
            if self._deltas is not None:
                self._deltas.put_nowait(text)
        if end and self._deltas is not None:
            self._deltas.put_nowait(None)

    @staticmethod
    async def _iterate(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        while (delta := await queue.get()) is not None:
            yield delta

    async def _generate(self, source: Any, params: SpeakParams) -> None:
        started = time.monotonic()
        conv, service = self.conv, self.service
        encoder = OutputEncoder(conv.session.sample_rate, self.format)

        async def sink(frames: list[bytes]) -> None:
            async with self._send_lock:
                for frame in frames:
                    if self._cancelled:
                        return  # barge-in: nothing more of this reply goes out
                    await self.ws.send_bytes(frame)

        async def first(ms: float) -> None:
            await self._send_json({"event": "first_audio", "ms": round(ms, 1)})

        async def op(session: Any) -> Timings:
            return await service.generate(
                session, source, params, encoder, sink, started=started, on_first_audio=first
            )

        try:
            async with service.busy(conv):
                timings: Timings = await service.run(conv, op)
                conv.replies += 1
        except ApiError as exc:
            self._speaking = False
            await self._error(exc.status, exc.message)
            if conv.closed:  # DELETEd under us: this socket has no conversation left to speak on
                await self.ws.close(1000, "conversation closed")
            return
        finally:
            self._speaking = False
        timings.cancelled = self._cancelled
        log.info("http stream %s: %s", conv.id, timings.as_dict())
        await self._send_json({"event": "done", **timings.as_dict()})
