"""Kyutai-compatible streaming TTS (moshi-server's `/api/tts_streaming`, docs/COMPAT.md).

`WS /api/tts_streaming?voice=<name>&format=PcmMessagePack`, key in the `kyutai-api-key` header (or the
`auth_id` query parameter, as moshi-server takes it). Client messages are MessagePack maps
`{"type": "Text", "text": <word(s)>}` as an LLM streams them and `{"type": "Eos"}` at the end (a single
zero byte is also taken as Eos, a text frame as text, as moshi-server does). The server sends
`{"type": "Ready"}` at once, `{"type": "Audio", "pcm": [float32 samples at 24 kHz]}` as the speech is
generated (for Dia2 that starts before Eos: its input streaming takes words as they come), and closes the
socket once everything is spoken. Errors are `{"type": "Error", "message": ...}` followed by the close.

`format=Pcm` sends the samples as raw little-endian float32 binary messages instead. Ogg/Opus formats are
refused (422). moshi's `Voice` message (speaker embeddings) has no meaning for Dia2 and is answered with
an Error message; our voices are chosen by name with `voice=`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from sipbridge.config import HttpConfig
from sipbridge.engine.base import SpeakParams
from sipbridge.http.audio_io import AudioFormat, FormatEncoder
from sipbridge.http.compat import (
    MAX_MESSAGE_BYTES,
    Generation,
    Lease,
    TextFeed,
    VoiceNotFound,
    key_ok,
    open_lease,
    release,
    resolve_voice,
    sampling,
    send_failure,
    streams_words,
)
from sipbridge.http.service import ApiError, ConversationService

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # moshi's Mimi rate, what Kyutai clients expect
FORMATS = ("PcmMessagePack", "Pcm")
IDLE_TIMEOUT_S = 30.0  # moshi-server drops a socket silent for 3 ping periods (30 s); so do we


def _denial(status: int, message: str) -> JSONResponse:
    return JSONResponse({"type": "Error", "message": message}, status)


def build_router(service: ConversationService, http: HttpConfig) -> APIRouter:
    token = http.bearer_token.get_secret_value() if http.bearer_token is not None else None
    router = APIRouter(tags=["kyutai"])

    async def tts_streaming(websocket: WebSocket) -> None:
        query = websocket.query_params
        presented = websocket.headers.get("kyutai-api-key") or query.get("auth_id")
        if not key_ok(token, presented):
            await websocket.send_denial_response(_denial(401, "missing or wrong kyutai-api-key"))
            return
        fmt = query.get("format", "PcmMessagePack")
        if fmt not in FORMATS:
            await websocket.send_denial_response(
                _denial(422, f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
            )
            return
        try:
            params = sampling(query)  # moshi-server's temperature / top_k (and our cfg_scale)
        except ValueError as exc:
            await websocket.send_denial_response(_denial(422, str(exc)))
            return
        try:
            voice = resolve_voice(service, query.get("voice"))
            lease = await open_lease(service, voice, query.get("conversation_id"), "kyutai")
        except VoiceNotFound as exc:
            await websocket.send_denial_response(_denial(404, f"unknown voice {exc.name!r}"))
            return
        except ApiError as exc:
            await websocket.send_denial_response(_denial(exc.status, exc.message))
            return
        await websocket.accept()
        await _TtsSocket(service, lease, websocket, params, msgpack_out=fmt == "PcmMessagePack").run()

    router.add_api_websocket_route("/api/tts_streaming", tts_streaming)
    return router


class _TtsSocket:
    """One utterance: words in as they come, float32 audio out as it is generated, close at the end."""

    def __init__(
        self, service: ConversationService, lease: Lease, ws: WebSocket, params: SpeakParams | None,
        *, msgpack_out: bool,
    ) -> None:  # fmt: skip
        self.service, self.lease, self.ws, self.msgpack_out = service, lease, ws, msgpack_out
        self.feed = TextFeed(words=streams_words(service))
        encoder = FormatEncoder(lease.session.sample_rate, AudioFormat("f32", SAMPLE_RATE))
        self.gen = Generation(
            lease, aiter(self.feed), encoder, params, on_end=self.feed.end, surface="kyutai_tts_streaming"
        )
        self._text_seen = False
        self._words_sent = 0  # of the engine's word times (`Text` messages)
        self._audio_s = 0.0

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send_bytes(msgpack.packb(message))

    async def _error(self, message: str) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "Error", "message": message})

    async def run(self) -> None:
        gen = self.gen
        receiver = asyncio.create_task(self._receive(), name="kyutai-receive")
        try:
            await self._send({"type": "Ready"})
            gen.start()
            while (frames := await gen.next()) is not None:
                pcm = b"".join(frames)
                self._audio_s += len(pcm) / 4 / SAMPLE_RATE
                if not self.msgpack_out:
                    await self.ws.send_bytes(pcm)
                else:
                    await self._send({"type": "Audio", "pcm": np.frombuffer(pcm, "<f4").tolist()})
                    await self._send_words(final=False)
                gen.wrote_first()
            if gen.error is not None:
                await self._error(gen.error.message)
            elif self.msgpack_out and not gen.cancelled:
                await self._send_words(final=True)
            log.info("kyutai tts %s: %s", self.lease.tag, gen.timings.as_dict())
        except Exception as exc:  # the client went away while we sent
            gen.abandon(send_failure(exc))
            log.info("kyutai tts %s: send failed (%r)", self.lease.tag, exc)
        finally:
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver
            await release(gen)
            with contextlib.suppress(Exception):
                await self.ws.close(1000)

    async def _send_words(self, *, final: bool) -> None:
        """moshi-server's `{"type": "Text", "text", "start_s", "stop_s"}` for each word the engine reports
        (Dia2's word times; espeak none) once its audio has begun and its end is known (the next word's
        start, or the end of the audio), after the Audio it starts in. A word whose audio never came (a
        reply cut by the context's end) is not sent."""
        words = self.gen.lease.session.word_times() or []
        while self._words_sent < len(words):
            word = words[self._words_sent]
            following = words[self._words_sent + 1].start_s if self._words_sent + 1 < len(words) else None
            if word.start_s >= self._audio_s:
                return  # not in the audio sent yet (or never: a reply cut by the context's end)
            if following is not None and following <= self._audio_s:
                stop = following
            elif final:
                stop = self._audio_s if following is None else min(following, self._audio_s)
            else:
                return  # its end is not in the audio sent yet
            await self._send({"type": "Text", "text": word.word, "start_s": word.start_s, "stop_s": stop})
            self._words_sent += 1

    async def _receive(self) -> None:
        """Text and Eos from the client; a disconnect or a silent client stops the reply at once."""
        how = "client disconnected"
        try:
            while not self.feed.ended:
                message = await asyncio.wait_for(self.ws.receive(), IDLE_TIMEOUT_S)
                if message["type"] == "websocket.disconnect":
                    break
                problem = self._handle(message)
                if problem is not None:
                    how = "bad message"
                    await self._error(problem)
                    break
            else:
                # Eos came: keep reading, so a client that leaves mid-reply is still seen at once.
                while (await self.ws.receive())["type"] != "websocket.disconnect":
                    pass
        except TimeoutError:
            how = "client silent"
            await self._error(f"no message for {IDLE_TIMEOUT_S:g} s")
        except Exception as exc:
            log.info("kyutai tts %s: receive ended (%r)", self.lease.tag, exc)
        self.gen.abandon(how)  # no more text will come and nobody listens: stop now

    def _handle(self, message: Mapping[str, Any]) -> str | None:
        if message.get("text") is not None:
            if len(message["text"]) > MAX_MESSAGE_BYTES:
                return f"message over {MAX_MESSAGE_BYTES} bytes"
            return self._text(message["text"])
        data = message.get("bytes") or b""
        if data == b"\0":
            self.feed.end()
            return None
        if len(data) > MAX_MESSAGE_BYTES:
            return f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}"
        try:
            decoded = msgpack.unpackb(data, raw=False, max_str_len=MAX_MESSAGE_BYTES)
        except Exception as exc:
            return f"not a MessagePack message: {exc}"
        kind = decoded.get("type") if isinstance(decoded, dict) else None
        if kind == "Eos":
            self.feed.end()
            return None
        if kind == "Text" and isinstance(decoded.get("text"), str):
            return self._text(decoded["text"])
        if kind == "Voice":
            return "Voice messages (speaker embeddings) are not supported: choose a voice with ?voice=<name>"
        return f"unknown message {kind!r}: send Text or Eos"

    def _text(self, text: str) -> str | None:
        """moshi-server splits every message into words, so consecutive messages never run together."""
        words = text.strip()
        if not words:
            return None
        piece = (" " if self._text_seen else "") + words
        try:
            self.service.check_text(piece, self.feed.chars)
        except ApiError as exc:
            return exc.message
        self._text_seen = True
        self.feed.push(piece)
        return None
