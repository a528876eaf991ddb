"""The ElevenLabs, OpenAI and Kyutai compatible surfaces (docs/COMPAT.md) driven by clients we did not write.

The official `elevenlabs` and `openai` Python SDKs are pointed at a real `sipbridge run` (espeak, and the
tiny random Dia2 checkpoint on CPU with greedy sampling, so a text gives the same audio on every stateless
request); the Kyutai surface is driven by a MessagePack WebSocket client written from moshi-server's
documented messages. Every wait is on a response, a message or a log line, never a sleep.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import numpy.typing as npt
import openai
import pytest
import soundfile as sf
from elevenlabs.client import ElevenLabs
from elevenlabs.core.api_error import ApiError as ElevenLabsError
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from audio import g711
from audio.resample import make_resampler
from audio.testsignals import espeak
from sipbridge.engine.base import WordTime
from sipbridge.http.compat import engine_chars, send_failure

from .bridge import Bridge

TOKEN = "compat-token-456"
TINY = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
TEXT = "Hello there, this is a test of the speech endpoints."
LONG = "This reply is long on purpose, so that a client can hang up in the middle of it. " * 6
VOICE_TEXT = "Hello, this is the voice I would like you to use."
# Greedy sampling (our extension field on every surface): Dia2 gives the same reply to the same request, so
# formats and voices can be compared sample for sample. espeak ignores it.
GREEDY = {"temperature": 0}


@dataclass
class Server:
    engine: str
    bridge: Bridge

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.bridge.http_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.bridge.http_port}"

    def eleven(self, key: str = TOKEN) -> ElevenLabs:
        return ElevenLabs(api_key=key, base_url=self.base)

    def openai(self, key: str = TOKEN) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=f"{self.base}/v1", max_retries=0)

    def engine_health(self) -> dict[str, Any]:
        engine: dict[str, Any] = self.bridge.health()["engine"]
        return engine

    def slots(self) -> tuple[int, int]:
        """Engine sessions open and (Dia2) rows in use: what a finished or dropped request must give back."""
        engine = self.engine_health()
        return engine["sessions"], engine.get("rows_in_use", 0)


def _start(work: Path, engine: dict[str, Any]) -> Iterator[Server]:
    bridge = Bridge.start(
        work,
        {
            "engine": engine,
            "http": {"bearer_token": TOKEN, "limits": {"max_text_chars": 1000, "previous_text_chars": 300}},
        },
    )
    try:
        yield Server(engine["kind"], bridge)
    finally:
        code = bridge.stop()
        print("\n".join(line for line in bridge.proc.seen if " ERROR " in line or " WARNING " in line))
        assert code == 0


@pytest.fixture(scope="module")
def espeak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _start(tmp_path_factory.mktemp("espeak"), {"kind": "espeak"})


@pytest.fixture(scope="module")
def dia2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    dia2 = {"model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 4}
    yield from _start(tmp_path_factory.mktemp("dia2"), {"kind": "dia2", "dia2": dia2})


@pytest.fixture(params=["espeak", "dia2"])
def server(request: pytest.FixtureRequest) -> Server:
    found: Server = request.getfixturevalue(f"{request.param}_server")
    return found


# ------------------------------------------------------------------------------------------- audio


def pcm16(data: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def ulaw(data: bytes) -> npt.NDArray[np.float32]:
    return g711.ulaw_decode(data).astype(np.float32) / 32768.0


def snr_db(reference: npt.NDArray[np.float32], other: npt.NDArray[np.float32]) -> float:
    n = min(len(reference), len(other))
    ref, err = reference[:n], reference[:n] - other[:n]
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-12)))


def downsampled(pcm24k: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """24 kHz → 8 kHz through the same FIR as the server: what is left against µ-law is the codec's error."""
    fir = make_resampler(24000, 8000)
    return np.concatenate([fir.process(pcm24k), fir.flush()]).astype(np.float32)


def voice_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, espeak(VOICE_TEXT, 16000) * 0.7, 16000, format="WAV")
    return buf.getvalue()


def register(server: Server, name: str) -> str:
    """voice-register through the OpenAI SDK's own request machinery (multipart upload)."""
    answer = server.openai().post(
        "/audio/voice-register",
        cast_to=object,
        body={"name": name, "ref_text": VOICE_TEXT},
        files=[("file", ("voice.wav", voice_wav(), "audio/wav"))],
        options={"headers": {"Content-Type": "multipart/form-data"}},  # as the SDK's own uploads do
    )
    assert isinstance(answer, dict) and answer["voice_id"] == f"clone:{name}", answer
    return str(answer["voice_id"])


def released(server: Server, before: tuple[int, int]) -> tuple[float, int]:
    """Wait for the log line of a dropped reply's release; the slots are back to `before` by then.

    The server must have seen the client leave by the connection's end ("client disconnected"), not by a
    failed write one audio chunk later (a write that raced the close frame and failed because the connection
    was already gone counts as the disconnect: `send_failure`). Returns how long the engine slot took to
    come free after that, in ms and in engine steps: Dia2's own count of the steps that ran between the
    cancel request (made the moment the disconnect is seen) and the cancel acting on the engine thread."""
    while True:  # an earlier attempt whose reply ended as the client left may have logged one line too
        line = server.bridge.wait_log(
            r"reply cut short \(.*\); engine slot released in .* engine steps later"
        )
        if server.slots() == before:
            break
    how, ms, steps = re.findall(r"cut short \((.*)\); .* released in ([\d.]+) ms, (\d+) engine steps", line)[
        0
    ]
    assert how == "client disconnected", line
    return float(ms), int(steps)


# -------------------------------------------------------------------------------------- elevenlabs


def _formats(server: Server, common: tuple[str, ...], more: tuple[str, ...]) -> tuple[str, ...]:
    """Every format with espeak (fast); with tiny Dia2 on CPU (~2-3 s a reply) only those whose path differs
    from espeak's (the 24 kHz engine rate: no resampling to pcm 24 kHz)."""
    return common + more if server.engine == "espeak" else common


def test_elevenlabs_sdk_formats_agree(server: Server) -> None:
    client = server.eleven()
    formats = _formats(server, ("pcm_24000", "pcm_8000", "ulaw_8000"), ("pcm_16000", "mp3_44100_128"))
    out = {
        fmt: b"".join(
            client.text_to_speech.stream(
                voice_id="default", text=TEXT, model_id="eleven_flash_v2_5", output_format=fmt,
                optimize_streaming_latency=3, request_options={"additional_body_parameters": GREEDY},
            )
        )
        for fmt in formats
    }  # fmt: skip
    p24, p8, mu = pcm16(out["pcm_24000"]), pcm16(out["pcm_8000"]), ulaw(out["ulaw_8000"])
    assert np.abs(p24).max() > 0.05
    # Every format is a whole number of 20 ms frames of the same reply.
    assert len(p8) == len(mu) and len(p8) % 160 == 0 and len(p24) % 480 == 0
    assert abs(len(p24) - 3 * len(p8)) <= 480
    # µ-law decodes back to the 8 kHz PCM of the same request within G.711's error (~38 dB SNR for speech).
    assert snr_db(p8, mu) > 30, snr_db(p8, mu)
    if server.engine == "dia2":  # pcm_8000 is the engine's 24 kHz reply through the call path's FIR
        assert snr_db(downsampled(p24), p8) > 60
    else:
        assert abs(len(pcm16(out["pcm_16000"])) - 2 * len(p8)) <= 320
        mp3, rate = sf.read(io.BytesIO(out["mp3_44100_128"]), dtype="float32")
        assert rate == 44100 and abs(len(mp3) / 44100 - len(p8) / 8000) < 0.1
    # The whole-file endpoint gives the same audio as the stream.
    whole = client.text_to_speech.convert(
        voice_id="default", text=TEXT, output_format="pcm_24000",
        request_options={"additional_body_parameters": GREEDY},
    )  # fmt: skip
    assert b"".join(whole) == out["pcm_24000"]


def test_elevenlabs_sdk_with_timestamps(espeak_server: Server) -> None:
    text = "Hello there, one two three."
    reply = espeak_server.eleven().text_to_speech.convert_with_timestamps(
        voice_id="default", text=text, output_format="pcm_16000"
    )
    pcm = base64.b64decode(reply.audio_base_64)
    seconds = len(pcm) / 2 / 16000
    assert seconds > 1.0
    align = reply.alignment
    assert align is not None and "".join(align.characters) == text
    starts, ends = align.character_start_times_seconds, align.character_end_times_seconds
    assert starts[0] == 0.0 and starts == sorted(starts)
    assert all(a < b for a, b in zip(starts, ends, strict=True))
    assert abs(ends[-1] - seconds) < 0.01  # the estimate, spread over the real audio length
    assert reply.normalized_alignment == align


def test_alignment_maps_the_text_onto_the_engines_words() -> None:
    """`alignment` covers the request's text, timed by the engine's (normalised) words: a word the normaliser
    rewrote takes the span of what it became, the words after it keep their own engine word's start, and a
    word is timed only once the engine word after it has begun (or the audio ended)."""
    words = [WordTime(w, t) for w, t in (("It", 0.0), ("costs", 0.4), ("five", 0.8), ("dollars.", 1.2),
                                          ("Okay?", 1.8))]  # fmt: skip
    text = "It costs $5. Okay?"
    timed = engine_chars(text, words, 2.5)
    assert "".join(c for c, _, _ in timed) == text
    first = {c: a for c, a, _ in timed if c in "Ic$O"}
    assert first == {"I": 0.0, "c": 0.4, "$": 0.8, "O": 1.8}
    assert timed[-1][2] == pytest.approx(2.5)
    assert all(a < b for _, a, b in timed)
    # Streaming: "Okay?" has no end yet, nor has "$5." before "Okay?" began.
    assert "".join(c for c, _, _ in engine_chars(text, words, None)) == "It costs $5. "
    assert "".join(c for c, _, _ in engine_chars(text, words[:3], None)) == "It costs "


def _word_starts(chars: list[str], starts: list[float]) -> list[tuple[str, float]]:
    """(word, start of its first character) of an alignment's characters."""
    out: list[tuple[str, float]] = []
    for i, ch in enumerate(chars):
        if not ch.isspace() and (i == 0 or chars[i - 1].isspace()):
            out.append(("", starts[i]))
        if not ch.isspace() and out:
            out[-1] = (out[-1][0] + ch, out[-1][1])
    return out


def test_elevenlabs_sdk_stream_with_timestamps(server: Server) -> None:
    """`/stream/with-timestamps` through the SDK's own parser: the same audio as `/stream`, every character
    once, in order, each in the chunk its time falls in. With Dia2 the times are the engine's: every word
    starts on an 80 ms frame (the step the engine took it), the normalised alignment spells the engine's
    words, and the whole-file `/with-timestamps` gives the same times; espeak gets the estimate."""
    client = server.eleven()
    extra = {"additional_body_parameters": GREEDY}
    chunks = list(
        client.text_to_speech.stream_with_timestamps(
            voice_id="default", text=TEXT, output_format="pcm_24000", request_options=extra
        )
    )
    audio = b"".join(base64.b64decode(c.audio_base_64) for c in chunks)
    plain = b"".join(
        client.text_to_speech.stream(
            voice_id="default", text=TEXT, output_format="pcm_24000", request_options=extra
        )
    )
    assert audio == plain and len(audio) > 0
    chars: list[str] = []
    starts: list[float] = []
    norm_chars: list[str] = []
    norm_starts: list[float] = []
    at = 0.0
    for chunk in chunks:
        length = len(base64.b64decode(chunk.audio_base_64)) / 2 / 24000
        if chunk.alignment is not None:
            chars += chunk.alignment.characters
            starts += chunk.alignment.character_start_times_seconds
            if length:  # a chunk's characters start before its end (the last, empty one: the rest)
                assert all(t < at + length + 1e-3 for t in chunk.alignment.character_start_times_seconds)
        if chunk.normalized_alignment is not None:
            norm_chars += chunk.normalized_alignment.characters
            norm_starts += chunk.normalized_alignment.character_start_times_seconds
        at += length
    assert "".join(chars) == TEXT
    assert starts == sorted(starts) and starts[0] >= 0.0
    whole = client.text_to_speech.convert_with_timestamps(
        voice_id="default", text=TEXT, output_format="pcm_24000", request_options=extra
    )
    if server.engine == "espeak":
        assert norm_chars == chars and norm_starts == starts
        return
    assert whole.alignment is not None and whole.alignment.characters == chars
    assert whole.alignment.character_start_times_seconds == pytest.approx(starts, abs=2e-3)
    words = _word_starts(chars, starts)
    engine_words = _word_starts(norm_chars, norm_starts)
    assert [w for w, _ in words] == TEXT.split()
    assert len(engine_words) == len(words)  # the tiny checkpoint took every word
    for (_, start), (_, engine_start) in zip(words, engine_words, strict=True):
        assert start == pytest.approx(engine_start, abs=1e-3)  # the text's words on the engine's
        assert abs(start * 12.5 - round(start * 12.5)) < 0.02, start  # on an 80 ms frame: a step
    assert [t for _, t in words] == sorted({t for _, t in words})  # one step per word, in order


def test_elevenlabs_previous_text_is_context_not_audio(dia2_server: Server) -> None:
    """`previous_text` is spoken first on the request's own engine session, its audio dropped: Dia2's reply
    continues from it (greedy: different audio from the same request without it), and none of the
    previous text's audio is sent. `previous_request_ids` names an earlier reply's text by its
    `request-id` header: the same context, so the same audio."""
    client, extra = dia2_server.eleven(), {"additional_body_parameters": GREEDY}
    text, before = "Yes, she does.", "Does she still work there?"

    def convert(**fields: Any) -> bytes:
        return b"".join(
            client.text_to_speech.convert(
                voice_id="default", text=text, output_format="pcm_24000", request_options=extra, **fields
            )
        )

    alone = httpx.post(
        f"{dia2_server.base}/v1/text-to-speech/default?output_format=pcm_24000",
        json={"text": before, **GREEDY}, headers={"xi-api-key": TOKEN}, timeout=120,
    )  # fmt: skip
    assert alone.status_code == 200 and len(alone.content) >= 3840
    rid = alone.headers["request-id"]
    plain = convert()
    steps = dia2_server.engine_health()["steps_run"]
    heard = convert(previous_text=before)
    ran = dia2_server.engine_health()["steps_run"] - steps
    assert heard != plain  # the context changed the greedy reply
    assert not heard.startswith(alone.content[:3840])  # the context's own speech is not in the reply
    assert ran >= len(heard) // 3840 + len(alone.content) // 3840  # both generated (80 ms a step)
    assert convert(previous_request_ids=[rid]) == heard
    assert dia2_server.slots() == (0, 0)  # the session with the context is closed and its row freed


def test_elevenlabs_errors_have_its_shape(espeak_server: Server) -> None:
    server = espeak_server
    with pytest.raises(ElevenLabsError) as wrong:
        b"".join(server.eleven("wrong").text_to_speech.stream(voice_id="default", text="hi"))
    assert wrong.value.status_code == 401 and wrong.value.body["detail"]["status"] == "invalid_api_key"
    with pytest.raises(ElevenLabsError) as unknown:
        b"".join(server.eleven().text_to_speech.stream(voice_id="21m00Tcm4TlvDq8ikWAM", text="hi"))
    assert unknown.value.status_code == 404
    assert unknown.value.body["detail"]["status"] == "voice_not_found"
    with pytest.raises(ElevenLabsError) as bad_format:
        b"".join(
            server.eleven().text_to_speech.convert(
                voice_id="default", text="hi", output_format="opus_48000_64"
            )
        )
    assert bad_format.value.status_code == 422
    assert "output_format" in bad_format.value.body["detail"][0]["loc"]
    empty = httpx.post(
        f"{server.base}/v1/text-to-speech/default/stream", json={"text": ""}, headers={"xi-api-key": TOKEN}
    )
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "text"]
    ws = f"{server.ws_base}/v1/text-to-speech/default/stream-input"
    for url, headers, status in (
        (ws, {"xi-api-key": "wrong"}, 401),
        (f"{ws}?output_format=opus_48000_64", {"xi-api-key": TOKEN}, 422),
        (ws.replace("/default/", "/nobody/"), {"xi-api-key": TOKEN}, 404),
    ):
        with pytest.raises(InvalidStatus) as denied:
            connect(url, additional_headers=headers)
        assert denied.value.response.status_code == status
    # A key sent in the first message instead of a header (ElevenLabs allows both) is checked too.
    with connect(ws) as sock:
        sock.send(json.dumps({"text": " ", "xi-api-key": "wrong"}))
        refused = json.loads(sock.recv(timeout=10))
        assert refused["error"] == "invalid_api_key"
    sessions = espeak_server.slots()
    with connect(ws) as sock:  # the right key in the first message: no engine session taken before it
        assert espeak_server.slots() == sessions
        sock.send(json.dumps({"text": " ", "xi-api-key": TOKEN}))
        sock.send(json.dumps({"text": "Hello there. "}))
        sock.send(json.dumps({"text": ""}))
        audio, final = _stream_input(sock)
        assert audio and final == {"isFinal": True}


def _stream_input(
    sock: ClientConnection, aligned: list[str] | None = None
) -> tuple[list[bytes], dict[str, Any]]:
    """Audio messages until isFinal, then the close; `aligned` gets each message's aligned characters."""
    audio = []
    while True:
        message = json.loads(sock.recv(timeout=60))
        if message.get("isFinal"):
            return audio, message
        assert set(message) == {"audio", "isFinal", "normalizedAlignment", "alignment"}, message
        audio.append(base64.b64decode(message["audio"]))
        if aligned is not None:
            aligned += _alignment_chars(message, len(audio[-1]) / 8)  # µ-law 8 kHz: 8 bytes a ms


def _alignment_chars(message: dict[str, Any], chunk_ms: float) -> list[str]:
    """The characters of one stream-input message's alignment, both alignments' shapes checked as
    ElevenLabs sends them: equal-length lists, times in whole ms relative to the chunk, starts inside it."""
    for key in ("alignment", "normalizedAlignment"):
        align = message[key]
        if align is None:
            continue
        chars, starts, durations = align["chars"], align["charStartTimesMs"], align["charDurationsMs"]
        assert len(chars) == len(starts) == len(durations) > 0
        assert all(isinstance(t, int) and 0 <= t <= chunk_ms for t in starts), (starts, chunk_ms)
        assert starts == sorted(starts) and all(isinstance(d, int) and d > 0 for d in durations)
    return list(message["alignment"]["chars"]) if message["alignment"] else []


def test_elevenlabs_stream_input_speaks_before_the_text_ends(server: Server) -> None:
    query = "model_id=eleven_flash_v2_5&output_format=ulaw_8000"
    url = f"{server.ws_base}/v1/text-to-speech/default/stream-input?{query}"
    with connect(url, additional_headers={"xi-api-key": TOKEN}) as sock:
        sock.send(json.dumps({"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8},
                              "generation_config": {"chunk_length_schedule": [50]}}))  # fmt: skip
        sock.send(
            json.dumps({"text": "Hello there, this is the first sentence. ", "try_trigger_generation": True})
        )
        first = json.loads(sock.recv(timeout=60))  # audio before any more text: speech started early
        assert first["audio"] and first["isFinal"] is False
        aligned = _alignment_chars(first, len(base64.b64decode(first["audio"])) / 8)
        sock.send(json.dumps({"text": "And this is the second one. "}))
        sock.send(json.dumps({"text": "", "flush": True}))
        rest, final = _stream_input(sock, aligned)
        assert final == {"isFinal": True}
        with pytest.raises(ConnectionClosedOK):  # the server closes after isFinal
            sock.recv(timeout=10)
    audio = base64.b64decode(first["audio"]) + b"".join(rest)
    assert len(audio) % 160 == 0 and len(audio) > 8000  # > 1 s of 8 kHz µ-law, in 20 ms frames
    # Character alignment (Dia2: its word times; espeak: an estimate): every character sent, once, in order.
    assert "".join(aligned) == "Hello there, this is the first sentence. And this is the second one. "


class TlsFront:
    """TLS in front of the bridge's plain HTTP port, as a reverse proxy puts it in a deployment: the
    elevenlabs SDK's stream-input client (`convert_realtime`) always connects with wss://. The certificate
    is self-signed for 127.0.0.1 and trusted through SSL_CERT_FILE."""

    def __init__(self, work: Path, target_port: int) -> None:
        self.cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.context = context
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        plain = socket.create_connection(("127.0.0.1", self.target))

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(plain, tls), daemon=True).start()
        pump(tls, plain)

    def close(self) -> None:
        self.listener.close()


def test_elevenlabs_sdk_stream_input_client(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = TlsFront(tmp_path, server.bridge.http_port)
    monkeypatch.setenv("SSL_CERT_FILE", str(front.cert))
    try:
        client = ElevenLabs(api_key=TOKEN, base_url=f"https://127.0.0.1:{front.port}")

        def words() -> Iterator[str]:
            yield from "Good morning. How are you today? I hope you are well.".split(" ")

        chunks = list(client.text_to_speech.convert_realtime(
            voice_id="default", text=words(), model_id="eleven_flash_v2_5", output_format="pcm_16000"
        ))  # fmt: skip
        audio = pcm16(b"".join(chunks))
        assert len(audio) > 16000 and len(audio) % 320 == 0  # over a second, in 20 ms frames of 16 kHz
        assert np.abs(audio).max() > 0.05
        with pytest.raises(InvalidStatus) as denied:  # the SDK's key travels in the handshake header
            list(ElevenLabs(api_key="wrong", base_url=f"https://127.0.0.1:{front.port}")
                 .text_to_speech.convert_realtime(voice_id="default", text=words()))  # fmt: skip
        assert denied.value.response.status_code == 401
    finally:
        front.close()


def test_elevenlabs_voices_and_clone(server: Server) -> None:
    client = server.eleven()
    voice_id = register(server, f"agent-{server.engine}")
    listed = {v.voice_id: v for v in client.voices.get_all().voices}
    assert "default" in listed and listed[f"agent-{server.engine}"].category == "cloned"
    encodes = server.engine_health().get("mimi_encodes")
    greedy = {"additional_body_parameters": GREEDY}

    def speak(voice: str) -> bytes:
        return b"".join(client.text_to_speech.stream(
            voice_id=voice, text=TEXT, output_format="pcm_24000", request_options=greedy  # type: ignore[arg-type]
        ))  # fmt: skip

    default = speak("default")
    for name in (voice_id, f"agent-{server.engine}"):  # clone:<name> and the plain name
        cloned = speak(name)
        assert cloned
        if server.engine == "dia2":  # Dia2 speaks in the registered voice: another reply than the default
            assert cloned != default
    assert server.engine_health().get("mimi_encodes") == encodes  # the voice's codes were cached


# ------------------------------------------------------------------------------------------ openai


def test_openai_sdk_formats_agree(server: Server) -> None:
    client = server.openai()
    out = {}
    for fmt in _formats(server, ("pcm", "ulaw"), ("wav", "mp3")):
        with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="default",
            input=TEXT,
            response_format=fmt,  # type: ignore[arg-type]
            extra_body=GREEDY,
        ) as response:
            assert response.status_code == 200
            out[fmt] = b"".join(response.iter_bytes())
    pcm = pcm16(out["pcm"])
    assert np.abs(pcm).max() > 0.05 and len(pcm) % 480 == 0
    assert snr_db(downsampled(pcm), ulaw(out["ulaw"])) > 30
    if server.engine == "espeak":
        # wav: a streaming header (sizes unknown) in front of exactly the pcm bytes.
        assert out["wav"][:4] == b"RIFF" and struct.unpack("<I", out["wav"][24:28])[0] == 24000
        assert out["wav"][44:] == out["pcm"]
        mp3, rate = sf.read(io.BytesIO(out["mp3"]), dtype="float32")
        assert rate == 24000 and abs(len(mp3) - len(pcm)) < 24000 * 0.1
        # Non-streamed (our extension) is the same audio; the SDK's plain create() reads it whole.
        whole = client.audio.speech.create(model="tts-1", voice="default", input=TEXT, response_format="pcm",
                                           extra_body={"stream": False, **GREEDY})  # fmt: skip
        assert whole.content == out["pcm"]
    # SSE: speech.audio.delta events carrying the same bytes, then speech.audio.done.
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="default",
        input=TEXT,
        response_format="pcm",
        stream_format="sse",
        extra_body=GREEDY,
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == out["pcm"]


def _median_pitch_hz(pcm: npt.NDArray[np.float32], rate: int = 24000) -> float:
    """Median fundamental of the loud 40 ms frames, by autocorrelation (60-400 Hz)."""
    size, found = rate // 25, []
    for start in range(0, len(pcm) - size, size):
        frame = pcm[start : start + size] - pcm[start : start + size].mean()
        if np.sqrt(np.mean(frame**2)) < 0.05:
            continue
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        lo, hi = rate // 400, rate // 60
        found.append(rate / (lo + int(np.argmax(corr[lo:hi]))))
    return float(np.median(found))


def test_openai_speed_stretches_time_not_pitch(espeak_server: Server) -> None:
    """`speed` 2 halves the reply's length and 0.5 doubles it (Rubber Band), the pitch kept: the voice's
    fundamental stays as it was, where resampling would double or halve it."""
    text = "Hello there, this is a test of the speed setting."

    def speak(speed: float) -> npt.NDArray[np.float32]:
        reply = espeak_server.openai().audio.speech.create(
            model="tts-1", voice="default", input=text, speed=speed, response_format="pcm"
        )
        return pcm16(reply.content)

    normal, fast, slow = speak(1.0), speak(2.0), speak(0.5)
    assert len(fast) / len(normal) == pytest.approx(0.5, abs=0.05)
    assert len(slow) / len(normal) == pytest.approx(2.0, abs=0.1)
    assert len(fast) % 480 == 0 and np.abs(fast).max() > 0.05  # still 20 ms frames of speech
    pitch = _median_pitch_hz(normal)
    assert _median_pitch_hz(fast) / pitch == pytest.approx(1.0, abs=0.15), (pitch, _median_pitch_hz(fast))
    assert _median_pitch_hz(slow) / pitch == pytest.approx(1.0, abs=0.15), (pitch, _median_pitch_hz(slow))


def test_openai_errors_have_its_shape(espeak_server: Server) -> None:
    server = espeak_server
    with pytest.raises(openai.AuthenticationError) as wrong:
        server.openai("wrong").audio.speech.create(model="tts-1", voice="default", input="hi")
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as unknown:
        server.openai().audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert unknown.value.code == "voice_not_found" and unknown.value.param == "voice"
    for fmt in ("opus", "aac", "flac", "ogg"):
        with pytest.raises(openai.UnprocessableEntityError) as bad:
            server.openai().audio.speech.create(
                model="tts-1", voice="default", input="hi", response_format=fmt
            )  # type: ignore[arg-type]
        assert bad.value.param == "response_format", fmt
    with pytest.raises(openai.UnprocessableEntityError) as slow:
        server.openai().audio.speech.create(model="tts-1", voice="default", input="hi", speed=9)
    assert slow.value.param == "speed"
    normal = server.openai().audio.speech.create(
        model="tts-1", voice="default", input="hi", speed=1.0, response_format="pcm"
    )
    assert len(normal.content) > 0
    no_audio = httpx.post(f"{server.base}/v1/audio/voice-register", json={"name": "x", "audio": "!!"},
                          headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert no_audio.status_code == 422 and "base64" in no_audio.json()["error"]["message"]
    # The JSON form of voice-register: base64 audio.
    b64 = httpx.post(
        f"{server.base}/v1/audio/voice-register",
        json={"name": "json-voice", "audio": base64.b64encode(voice_wav()).decode(), "ref_text": VOICE_TEXT},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert b64.status_code == 200 and b64.json()["voice_id"] == "clone:json-voice"
    spoken = server.openai().audio.speech.create(model="tts-1", voice="clone:json-voice", input="hi",
                                                 response_format="pcm")  # fmt: skip
    assert len(spoken.content) > 0


def test_openai_clone_and_conversation_context(dia2_server: Server) -> None:
    server, client = dia2_server, dia2_server.openai()
    voice = register(server, "ctx-voice")
    before = server.slots()

    def say(text: str, conversation: str | None = None) -> bytes:
        body = {**GREEDY, **({"conversation_id": conversation} if conversation else {})}
        return client.audio.speech.create(model="tts-1", voice=voice, input=text, response_format="pcm",
                                          extra_body=body).content  # fmt: skip

    stateless = [say("Good morning."), say("Good morning.")]
    assert stateless[0] == stateless[1]  # no state carried between stateless requests
    assert server.slots() == before  # and each one's engine session was closed
    in_conv = [say("Good morning.", "compat-ctx"), say("Good morning.", "compat-ctx")]
    assert in_conv[0] == stateless[0]  # a fresh conversation with the same voice: the same first reply
    assert in_conv[1] != in_conv[0]  # the second one hears the first as context
    state = httpx.get(f"{server.base}/state", params={"conversation_id": "compat-ctx"},
                      headers={"Authorization": f"Bearer {TOKEN}"}).json()  # fmt: skip
    assert state["replies"] == 2 and state["voice"]["name"] == "ctx-voice"
    httpx.delete(f"{server.base}/conversations/compat-ctx", headers={"Authorization": f"Bearer {TOKEN}"})


# ------------------------------------------------------------------------------------------ kyutai


def kyutai(
    server: Server, query: str = "voice=default&format=PcmMessagePack", key: str = TOKEN
) -> ClientConnection:
    return connect(f"{server.ws_base}/api/tts_streaming?{query}", additional_headers={"kyutai-api-key": key})


def recv(sock: ClientConnection) -> dict[str, Any]:
    message = sock.recv(timeout=60)
    assert isinstance(message, bytes)
    decoded: dict[str, Any] = msgpack.unpackb(message)
    return decoded


def test_kyutai_words_in_speech_out_before_eos(server: Server) -> None:
    words = "Hello there. This is a word by word test of the streaming endpoint.".split()
    with kyutai(server) as sock:
        assert recv(sock) == {"type": "Ready"}
        for word in words:
            sock.send(msgpack.packb({"type": "Text", "text": word}))
        first = recv(sock)  # audio while Eos has not been sent: the speech started on the words alone
        assert first["type"] == "Audio" and len(first["pcm"]) > 0
        sock.send(msgpack.packb({"type": "Eos"}))
        pcm = list(first["pcm"])
        texts: list[dict[str, Any]] = []
        while True:
            try:
                message = recv(sock)
            except Exception:  # the server closes once everything is spoken
                break
            if message["type"] == "Text":  # a word's times, after the audio it starts in
                assert message["start_s"] < len(pcm) / 24000 + 1e-6, (message, len(pcm))
                texts.append(message)
                continue
            assert message["type"] == "Audio", message
            pcm += message["pcm"]
    audio = np.asarray(pcm, dtype=np.float32)
    assert len(audio) > 24000 and np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
    if server.engine == "espeak":
        assert texts == []  # espeak reports no word times; none are made up here
        return
    # Dia2: the words spoken, in order, at the step the engine took each (80 ms frames), each ending where
    # the next begins. (The tiny checkpoint's short context may cut the reply before the last words.)
    assert len(texts) >= 3 and [t["text"] for t in texts] == words[: len(texts)]
    starts = [t["start_s"] for t in texts]
    assert starts == sorted(set(starts)) and all(abs(t * 12.5 - round(t * 12.5)) < 1e-6 for t in starts)
    assert [t["stop_s"] for t in texts[:-1]] == starts[1:]
    assert starts[-1] < texts[-1]["stop_s"] <= len(audio) / 24000 + 1e-6


def test_kyutai_errors(espeak_server: Server) -> None:
    for query, key, status in (
        ("voice=default&format=PcmMessagePack", "wrong", 401),
        ("voice=nobody&format=PcmMessagePack", TOKEN, 404),
        ("voice=default&format=OggOpus", TOKEN, 422),
    ):
        with pytest.raises(InvalidStatus) as denied:
            kyutai(espeak_server, query, key)
        assert denied.value.response.status_code == status
        if status != 422:
            assert msgpack.unpackb  # the body is JSON for a refused handshake
            assert denied.value.response.body and json.loads(denied.value.response.body)["type"] == "Error"
    with kyutai(espeak_server) as sock:
        assert recv(sock) == {"type": "Ready"}
        sock.send(msgpack.packb({"type": "Voice", "embeddings": [0.0], "shape": [1]}))
        assert recv(sock)["type"] == "Error"
    register(espeak_server, "kyutai-voice")
    for name in ("kyutai-voice", "clone:kyutai-voice"):  # a registered voice, by name or as clone:
        with kyutai(espeak_server, f"voice={name}&format=PcmMessagePack") as sock:
            assert recv(sock) == {"type": "Ready"}
            sock.send(msgpack.packb({"type": "Text", "text": "Hi."}))
            sock.send(b"\0")  # moshi-server's other end-of-stream marker
            assert recv(sock)["type"] == "Audio"


# ------------------------------------------------------------------------------- client drops


def test_a_write_to_a_gone_peer_is_the_client_leaving() -> None:
    """The speaker's send and the socket watcher both learn of a close frame; whichever runs first, the reply
    ends as "client disconnected". Other send errors stay "send failed"."""
    assert send_failure(WebSocketDisconnect(code=1006)) == "client disconnected"
    assert send_failure(RuntimeError("Cannot call send once a close message has been sent")) == "send failed"
    assert send_failure(None) == "send failed"  # the speaker task was cancelled


def test_dropping_mid_stream_frees_the_engine_slot(dia2_server: Server) -> None:
    server = dia2_server
    before = server.slots()

    def live() -> bool:
        """The reply is still being generated (checked while the client holds the connection): the random
        tiny checkpoint sometimes ends a reply after a frame or two, and then there is nothing to free."""
        return server.slots() != before

    def rest() -> bool:  # ElevenLabs REST stream: read one chunk, hang up
        url = f"{server.base}/v1/text-to-speech/default/stream?output_format=pcm_24000"
        with httpx.stream("POST", url, json={"text": LONG}, headers={"xi-api-key": TOKEN}, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_raw())
            return live()

    def openai_sdk() -> bool:  # leave the SDK's streaming context after the first bytes
        with server.openai().audio.speech.with_streaming_response.create(
            model="tts-1", voice="default", input=LONG, response_format="pcm"
        ) as response:
            next(response.iter_bytes())
            return live()

    def stream_input(*messages: dict[str, Any]) -> Callable[[], bool]:
        def drop() -> bool:  # close the socket after the first audio
            url = f"{server.ws_base}/v1/text-to-speech/default/stream-input?output_format=pcm_24000"
            with connect(url, additional_headers={"xi-api-key": TOKEN}) as sock:
                for message in messages:
                    sock.send(json.dumps(message))
                assert json.loads(sock.recv(timeout=60))["audio"]
                return live()

        return drop

    def kyutai_ws() -> bool:
        with kyutai(server) as sock:
            recv(sock)
            sock.send(msgpack.packb({"type": "Text", "text": LONG}))
            sock.send(msgpack.packb({"type": "Eos"}))
            assert recv(sock)["type"] == "Audio"
            return live()

    surfaces = {
        "elevenlabs_rest": rest,
        "openai": openai_sdk,
        "elevenlabs_ws": stream_input({"text": " "}, {"text": LONG, "flush": True}),
        # The SDK's way: all the text, then {"text": ""}, then only reading; the server must still watch
        # the socket while it speaks, not learn of the drop from the next failed send.
        "elevenlabs_ws_after_end": stream_input({"text": " "}, {"text": LONG}, {"text": ""}),
        "kyutai": kyutai_ws,
    }
    took = {}
    for name, drop in surfaces.items():
        for _attempt in range(4):  # sampled replies differ: another attempt gives another reply
            if drop():
                took[name] = released(server, before)
                break
        else:
            pytest.fail(f"{name}: every reply of the tiny checkpoint ended before the client dropped")
    print("release after drop (ms, engine steps):", json.dumps(took))
    assert all(steps <= 1 for _, steps in took.values()), took  # freed within one frame (one step)
