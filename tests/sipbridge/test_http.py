"""The conversation HTTP API against a real `sipbridge run` (uvicorn on loopback), espeak and tiny Dia2.

Every request goes over a real socket to the supervisor's own engine (the one phone calls use); the Dia2
server runs the tiny random checkpoint on CPU, so its audio is noise but its timing, streaming, state and
batching are the real thing. Greedy sampling (temperature 0) makes its replies repeatable, which is how
formats and streamed/unstreamed outputs are compared. Every wait is on a response, a WebSocket message or a
log line, never a sleep.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from audio import g711
from audio.resample import make_resampler
from audio.testsignals import espeak

from .bridge import Bridge

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
LIMITS = {
    "max_upload_bytes": 400_000,
    "max_audio_s": 20.0,
    "max_text_chars": 300,
    "max_conversations": 4,
}
GREEDY = {"temperature": 0}


@dataclass
class Api:
    bridge: Bridge
    client: httpx.Client

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.bridge.http_port}"

    def ws(self, path: str = "/generate_stream", **query: str) -> ClientConnection:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return connect(f"ws://127.0.0.1:{self.bridge.http_port}{path}?{q}", additional_headers=AUTH)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def generate(self, text: str, fmt: str = "wav", **extra: Any) -> httpx.Response:
        response = self.post("/generate", json={"text": text, "format": fmt, **extra})
        assert response.status_code == 200, response.text
        return response


def _server(work: Path, engine: dict[str, Any]) -> Iterator[Api]:
    bridge = Bridge.start(work, {"engine": engine, "http": {"bearer_token": TOKEN, "limits": LIMITS}})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{bridge.http_port}", headers=AUTH, timeout=60) as c:
            yield Api(bridge, c)
    finally:
        code = bridge.stop()
        problems = [line for line in bridge.proc.seen if " ERROR " in line or " WARNING " in line]
        print("\n".join(problems))  # shown by pytest when a test failed
        assert code == 0


@pytest.fixture(scope="module")
def espeak_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from _server(tmp_path_factory.mktemp("espeak"), {"kind": "espeak"})


@pytest.fixture(scope="module")
def dia2_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    engine = {
        "kind": "dia2",
        "dia2": {"model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 4},
    }
    yield from _server(tmp_path_factory.mktemp("dia2"), engine)


@pytest.fixture(autouse=True)
def close_conversations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with no conversation open: every one holds an engine row until it is closed."""
    yield
    for name in ("espeak_api", "dia2_api"):
        if name in request.fixturenames:
            api: Api = request.getfixturevalue(name)
            for conv in api.get("/conversations").json()["conversations"]:
                assert api.client.delete(f"/conversations/{conv['conversation_id']}").status_code == 200


# ------------------------------------------------------------------------------------------- audio


def speech(text: str, rate: int, *, stereo: bool = False) -> npt.NDArray[np.float32]:
    pcm = espeak(text, rate) * 0.7
    return np.stack([pcm, pcm * 0.5], axis=1) if stereo else pcm


def encode(pcm: npt.NDArray[np.float32], rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def pcm16(data: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def wav_audio(data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    pcm, rate = sf.read(io.BytesIO(data), dtype="float32")
    return pcm, rate


def ulaw(data: bytes) -> npt.NDArray[np.float32]:
    return g711.ulaw_decode(data).astype(np.float32) / 32768.0


def snr_db(reference: npt.NDArray[np.float32], other: npt.NDArray[np.float32]) -> float:
    n = min(len(reference), len(other))
    ref, err = reference[:n], reference[:n] - other[:n]
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-12)))


def upload(api: Api, path: str, audio: bytes, name: str = "a.wav", **fields: str) -> httpx.Response:
    return api.post(path, files={"audio": (name, audio)}, data=fields)


@dataclass
class Streamed:
    chunks: list[bytes]
    events: list[dict[str, Any]]
    first_chunk_t: float | None
    done_t: float
    sent_t: float

    @property
    def done(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def audio(self) -> bytes:
        return b"".join(self.chunks)


def stream(
    ws: ClientConnection,
    messages: list[dict[str, Any]],
    cancel_after: int | None = None,
    after_first: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> Streamed:
    """Send `messages`, then read binary chunks and events until `done` (or `error`); `after_first` is sent
    once the first chunk has arrived, `{"cancel": true}` after `cancel_after` chunks."""
    sent_t = time.monotonic()
    for message in messages:
        ws.send(json.dumps(message))
    chunks: list[bytes] = []
    events: list[dict[str, Any]] = []
    first: float | None = None
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, bytes):
            if first is None:
                first = time.monotonic()
                for later in after_first:
                    ws.send(json.dumps(later))
            chunks.append(message)
            if cancel_after is not None and len(chunks) == cancel_after:
                ws.send(json.dumps({"cancel": True}))
            continue
        event = json.loads(message)
        events.append(event)
        if event["event"] in ("done", "error"):
            return Streamed(chunks, events, first, time.monotonic(), sent_t)


def ready(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(ws.recv(timeout=30))
    assert event["event"] == "ready", event
    return event


# ------------------------------------------------------------------------------------------- tests


def test_auth_health_and_openapi(espeak_api: Api) -> None:
    base = espeak_api.base
    health = httpx.get(f"{base}/health").json()  # no token needed
    assert health["status"] == "ok" and health["engine"]["kind"] == "espeak" and "calls" in health
    assert httpx.get(f"{base}/healthz").status_code == 200
    for method, path in (("GET", "/state"), ("POST", "/generate"), ("POST", "/reset"), ("GET", "/voices")):
        assert httpx.request(method, f"{base}{path}").status_code == 401
        wrong = httpx.request(method, f"{base}{path}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "bearer token" in wrong.json()["detail"]
    with pytest.raises(InvalidStatus) as denied:
        connect(f"ws://127.0.0.1:{espeak_api.bridge.http_port}/generate_stream")
    assert denied.value.response.status_code == 401
    # The token may also come as ?token= (browsers cannot set WebSocket headers).
    with connect(f"ws://127.0.0.1:{espeak_api.bridge.http_port}/ws/generate?token={TOKEN}") as ws:
        assert ready(ws)["format"] == "pcm16"
    schema = httpx.get(f"{base}/openapi.json").json()
    for path in ("/health", "/reset", "/set_voice", "/user_spoke", "/generate", "/state", "/upload_voice",
                 "/tts", "/voices"):  # fmt: skip
        assert path in schema["paths"], path


def test_whole_flow_espeak_with_asr_and_any_audio_format(espeak_api: Api) -> None:
    api = espeak_api
    cid = {"conversation_id": "flow"}
    voice = encode(
        speech("Hello, this is the help line. How can I help you?", 16000, stereo=True), 16000, "WAV"
    )
    first = upload(api, "/set_voice", voice, **cid)
    assert first.status_code == 200, first.text
    assert "help" in first.json()["transcript"].lower()  # no transcript given: ASR heard it
    runs = api.get("/healthz").json()["conversations"]["asr_runs"]
    again = upload(api, "/set_voice", voice, **cid)  # same bytes: the cached transcript, no ASR run
    assert again.json()["transcript"] == first.json()["transcript"]
    after = api.get("/healthz").json()["conversations"]
    assert after["asr_runs"] == runs and after["asr_cache_hits"] >= 1

    turns = [
        ("FLAC", 44100, "I need help with my account."),
        ("OGG", 48000, "Thank you very much."),
    ]
    for container, rate, said in turns:
        audio = encode(speech(said, rate), rate, container)
        heard = upload(api, "/user_spoke", audio, name=f"turn.{container.lower()}", **cid)
        assert heard.status_code == 200, heard.text
        reply = api.generate("Sure, I can help with that.", "wav", **cid)
        pcm, rate_out = wav_audio(reply.content)
        assert rate_out == 24000 and np.abs(pcm).max() > 0.05
        assert float(reply.headers["X-First-Audio-Ms"]) <= float(reply.headers["X-Total-Ms"])
        assert int(reply.headers["X-Frames"]) > 0
    state = api.get("/state", params=cid).json()
    assert state["voice_set"] and state["turns"] == 4 and state["user_turns"] == 2
    assert api.post("/reset", json=cid).status_code == 200
    state = api.get("/state", params=cid).json()
    assert state["voice_set"] and state["turns"] == 0
    # A transcript given with the audio is used as is (no ASR), and a form body works for /generate.
    given = upload(
        api, "/user_spoke", encode(speech("yes", 8000), 8000, "WAV"), transcript="yes please", **cid
    )
    assert given.json()["transcript"] == "yes please"
    form = api.post("/generate", data={"text": "Okay.", "format": "pcm16", **cid})
    assert form.status_code == 200 and form.headers["content-type"].startswith("audio/L16")


def _formats_agree(api: Api, conversation: str, extra: dict[str, Any]) -> None:
    cid = {"conversation_id": conversation}
    outputs = {}
    for fmt in ("wav", "pcm16", "ulaw"):
        reset = api.post("/reset", json=cid)
        assert reset.status_code == 200, reset.text
        outputs[fmt] = api.generate("Hello there, how are you today?", fmt, **cid, **extra).content
    wav, rate = wav_audio(outputs["wav"])
    raw = pcm16(outputs["pcm16"])
    assert rate == 24000 and len(wav) == len(raw) and np.array_equal(wav, raw)
    mu = ulaw(outputs["ulaw"])
    # The reference goes through the same 24 -> 8 kHz filter as the server (the call path's FIR), so what
    # is left is the codec's error: µ-law's ~6 bits of SNR over the signal's range.
    fir = make_resampler(24000, 8000)
    reference = np.concatenate([fir.process(raw), fir.flush()]).astype(np.float32)
    assert abs(len(mu) - len(reference)) <= 160  # one 20 ms frame of padding at most
    assert snr_db(reference, mu) > 30, snr_db(reference, mu)


def test_wav_pcm16_and_ulaw_are_the_same_audio_espeak(espeak_api: Api) -> None:
    _formats_agree(espeak_api, "formats", {})


def test_wav_pcm16_and_ulaw_are_the_same_audio_dia2(dia2_api: Api) -> None:
    _formats_agree(dia2_api, "formats", GREEDY)


def test_sampling_parameters_reach_the_engine(dia2_api: Api) -> None:
    cid = {"conversation_id": "sampling"}
    outs = []
    for extra in (GREEDY, GREEDY, {"temperature": 1.0, "top_k": 50}, {"temperature": 1.0, "top_k": 50}):
        dia2_api.post("/reset", json=cid)
        outs.append(dia2_api.generate("Good morning to you.", "pcm16", **cid, **extra).content)
    assert outs[0] == outs[1]  # greedy: the same reply twice
    assert outs[2] != outs[3] and outs[2] != outs[0]  # sampled: they differ
    bad = dia2_api.post("/generate", json={"text": "x", "temperature": 9})
    assert bad.status_code == 422 and "temperature" in bad.json()["detail"]


def test_websocket_streams_before_the_end_and_matches_generate_dia2(dia2_api: Api) -> None:
    api, cid = dia2_api, {"conversation_id": "ws"}
    text = "Hello there, this is a streaming test of the conversation server."
    api.post("/reset", json=cid)
    whole = api.generate(text, "pcm16", **cid, **GREEDY).content
    api.post("/reset", json=cid)
    with api.ws(format="pcm16", **cid) as ws:
        assert ready(ws)["sample_rate"] == 24000
        got = stream(ws, [{"text": text, "end": True, **GREEDY}])
    assert got.done["event"] == "done" and not got.done["cancelled"], got.events
    assert [e["event"] for e in got.events] == ["first_audio", "done"]
    assert {len(c) for c in got.chunks} == {960}  # 20 ms of 24 kHz s16le per message
    assert got.audio == whole  # the stream concatenates to the non-streamed reply
    assert got.first_chunk_t is not None
    first_ms, done_ms = (got.first_chunk_t - got.sent_t) * 1e3, (got.done_t - got.sent_t) * 1e3
    assert first_ms < done_ms - 100, (first_ms, done_ms)  # audio flowed while the reply was generated
    print("dia2 tiny cpu ws", json.dumps({"first_chunk_ms": round(first_ms, 1), **got.done}))

    # µ-law over the same socket path, text as deltas: 160-byte frames, ready for RTP.
    with api.ws(path="/ws/generate", format="ulaw", **cid) as ws:
        assert ready(ws)["sample_rate"] == 8000
        got = stream(
            ws, [{"text": "Hello there,"}, {"text": " how are you"}, {"text": " today?"}, {"end": True}]
        )
    assert got.done["event"] == "done" and {len(c) for c in got.chunks} == {160}


def test_websocket_streams_text_deltas_espeak(espeak_api: Api) -> None:
    # espeak speaks a sentence in ~20 ms, far faster than any timing margin, so streaming is shown by
    # order instead: the rest of the text (and the end) is only sent once the first sentence's audio came.
    sentences = ["Hello, this is the first sentence.", " Here is the second one.", " And a third."]
    with espeak_api.ws(format="ulaw") as ws:
        ready(ws)
        got = stream(
            ws, [{"text": sentences[0]}], after_first=[*({"text": s} for s in sentences[1:]), {"end": True}]
        )
    assert got.done["event"] == "done" and got.first_chunk_t is not None
    first_ms, done_ms = (got.first_chunk_t - got.sent_t) * 1e3, (got.done_t - got.sent_t) * 1e3
    assert first_ms < done_ms, (first_ms, done_ms)
    assert got.done["audio_ms"] > 3000 and len(got.audio) == got.done["audio_ms"] * 8
    print("espeak ws", json.dumps({"first_chunk_ms": round(first_ms, 1), **got.done}))


@pytest.mark.parametrize("engine", ["espeak", "dia2"])
def test_cancel_stops_the_stream(engine: str, request: pytest.FixtureRequest) -> None:
    api: Api = request.getfixturevalue(f"{engine}_api")
    long_text = "This reply is long on purpose so that it can be interrupted. " * 4
    cid = {"conversation_id": "cancel"}
    api.post("/reset", json=cid)
    full = len(api.generate(long_text, "pcm16", **cid, **GREEDY).content)
    api.post("/reset", json=cid)
    with api.ws(format="pcm16", **cid) as ws:
        ready(ws)
        got = stream(ws, [{"text": long_text, "end": True, **GREEDY}], cancel_after=1)
        assert got.done["event"] == "done" and got.done["cancelled"], got.events
        assert len(got.audio) < full / 2, (len(got.audio), full)
        # The socket and the conversation are still usable after a barge-in.
        again = stream(ws, [{"text": "Okay.", "end": True}])
        assert again.done["event"] == "done" and not again.done["cancelled"] and again.chunks
    assert api.get("/state", params=cid).json()["speaking"] is False


def test_limits_and_bad_audio(espeak_api: Api) -> None:
    api = espeak_api
    too_long = api.post("/generate", json={"text": "a" * 301})
    assert too_long.status_code == 413 and "max_text_chars" in too_long.json()["detail"]
    big = upload(api, "/user_spoke", b"\0" * 500_000)
    assert big.status_code == 413 and "max_upload_bytes" in big.json()["detail"]
    long_audio = encode(np.zeros(4000 * 25, np.float32), 4000, "WAV", "PCM_16")  # 25 s in 200 kB
    over = upload(api, "/user_spoke", long_audio)
    assert over.status_code == 413 and "20 s" in over.json()["detail"]

    garbage = upload(api, "/set_voice", b"this is not audio at all" * 10, name="x.mp3")
    assert garbage.status_code == 415 and "not a readable audio file" in garbage.json()["detail"]
    aiff = upload(api, "/set_voice", encode(speech("hello", 8000), 8000, "AIFF"), name="v.aiff")
    assert aiff.status_code == 415 and "AIFF" in aiff.json()["detail"]
    empty = upload(api, "/set_voice", b"", name="empty.wav")
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    no_frames = upload(api, "/set_voice", encode(np.zeros(0, np.float32), 8000, "WAV"), name="none.wav")
    assert no_frames.status_code == 422 and "no audio frames" in no_frames.json()["detail"]
    words = upload(api, "/set_voice", encode(speech("hi", 8000), 8000, "WAV"), words="[1, 2]")
    assert words.status_code == 422 and "words" in words.json()["detail"]
    missing = api.post("/user_spoke", data={"transcript": "x"})
    assert missing.status_code == 422 and "audio" in missing.json()["detail"]
    # A turn with no words (silence, blank transcript) is refused, not added to the context (issue 12).
    silent = upload(api, "/user_spoke", encode(np.zeros(8000, np.float32), 8000, "WAV"), transcript=" ")
    assert silent.status_code == 422 and "no words" in silent.json()["detail"], silent.text
    bad_format = api.post("/generate", json={"text": "hi", "format": "mp3"})
    assert bad_format.status_code == 422
    with pytest.raises(InvalidStatus) as denied:
        api.ws(format="flac")
    assert denied.value.response.status_code == 422

    for open_one in api.get("/conversations").json()["conversations"]:  # this test's uploads opened one
        assert api.client.delete(f"/conversations/{open_one['conversation_id']}").status_code == 200
    extra = [f"limit-{i}" for i in range(LIMITS["max_conversations"])]
    for cid in extra:
        assert api.post("/reset", json={"conversation_id": cid}).status_code == 200
    refused = api.post("/reset", json={"conversation_id": "one-too-many"})
    assert refused.status_code == 429 and "max_conversations" in refused.json()["detail"]
    assert api.client.delete(f"/conversations/{extra[0]}").status_code == 200
    assert api.post("/reset", json={"conversation_id": "one-too-many"}).status_code == 200


def test_two_conversations_in_parallel_stay_separate(dia2_api: Api) -> None:
    api = dia2_api
    voice = encode(speech("Hello, this is my voice.", 24000), 24000, "WAV")
    a, b = {"conversation_id": "alice"}, {"conversation_id": "bob"}
    assert upload(api, "/set_voice", voice, transcript="Hello, this is my voice.", **a).status_code == 200
    api.post("/reset", json=b)
    alone = api.generate("Good afternoon.", "pcm16", **b, **GREEDY).content
    api.post("/reset", json=b)

    def say(cid: dict[str, str], text: str) -> bytes:
        return api.generate(text, "pcm16", **cid, **GREEDY).content

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fa = pool.submit(say, a, "This is a longer reply for the first conversation.")
        fb = pool.submit(say, b, "Good afternoon.")
        out_a, out_b = fa.result(), fb.result()
    assert out_a and out_b
    assert snr_db(pcm16(alone), pcm16(out_b)) > 30  # bob's reply did not hear alice's context
    sa, sb = api.get("/state", params=a).json(), api.get("/state", params=b).json()
    assert sa["voice_set"] and not sb["voice_set"]
    assert sa["replies"] == 1 and sb["replies"] == 1
    assert sa["context_frames"] > sb["context_frames"]  # alice's context holds her voice too
    assert api.get("/healthz").json()["engine"]["rows_in_use"] >= 2


def test_oversized_voice_is_413_and_the_conversation_keeps_its_voice(dia2_api: Api) -> None:
    api, cid = dia2_api, {"conversation_id": "oversized"}
    voice = encode(speech("Hello, this is my voice.", 24000), 24000, "WAV")
    assert upload(api, "/set_voice", voice, transcript="Hello, this is my voice.", **cid).status_code == 200
    before = api.get("/state", params=cid).json()
    # 15 s of voice is within http.limits but longer than the tiny model's context leaves a voice (160 steps,
    # less a reply's 40-step reserve: 119 frames, 9.5 s). Dia2 refuses it before the row changes.
    long_voice = encode(np.resize(speech("Hello, this is a voice.", 8000), 8000 * 15), 8000, "WAV")
    refused = upload(api, "/set_voice", long_voice, transcript="hello", **cid)
    assert refused.status_code == 413, refused.text
    detail = refused.json()["detail"]
    assert "max_context_steps is 160" in detail and "at most 119 frames" in detail, detail
    named = api.post("/upload_voice", files={"audio": ("long.wav", long_voice)}, data={"name": "long"})
    assert named.status_code == 413 and "max_context_steps" in named.json()["detail"]
    assert "long" not in [v["name"] for v in api.get("/voices").json()["voices"]]
    # No restart, the earlier voice and context are still there, and the conversation goes on.
    state = api.get("/state", params=cid).json()
    assert state["restarts"] == 0 and state["voice"]["sha256"] == before["voice"]["sha256"]
    assert state["context_frames"] == before["context_frames"]
    reply = api.generate("Are you still there?", "wav", **cid)
    assert wav_audio(reply.content)[0].size > 0
    assert api.post("/reset", json=cid).status_code == 200
    assert api.get("/state", params=cid).json()["context_frames"] == before["context_frames"]


def test_stateless_tts_with_named_voices(dia2_api: Api) -> None:
    api = dia2_api
    sessions = api.get("/healthz").json()["engine"]["sessions"]
    voice = encode(speech("This is the voice of speaker one.", 16000), 16000, "FLAC")
    stored = upload(
        api, "/upload_voice", voice, name="v.flac", transcript="This is the voice of speaker one."
    )
    assert stored.status_code == 422  # a name is required
    stored = api.post(
        "/upload_voice", files={"audio": ("v.flac", voice)}, data={"name": "one", "transcript": "This is it."}
    )
    assert stored.status_code == 200, stored.text
    assert [v["name"] for v in api.get("/voices").json()["voices"]] == ["one"]
    spoken = api.post("/tts", json={"text": "[S1] Hello there.", "speaker_1": "one", "speaker_2": "one",
                                    "format": "ulaw", **GREEDY})  # fmt: skip
    assert spoken.status_code == 200 and len(spoken.content) % 160 == 0 and spoken.headers["X-Total-Ms"]
    again = api.post("/tts", json={"text": "[S1] Hello there.", "speaker_1": "one", "speaker_2": "one",
                                   "format": "ulaw", **GREEDY})  # fmt: skip
    assert again.content == spoken.content  # no state carried from one request to the next
    encodes = api.get("/healthz").json()["engine"]["mimi_encodes"]
    third = api.post("/tts", json={"text": "[S1] Hello there.", "speaker_1": "one", "speaker_2": "one",
                                   "format": "ulaw", **GREEDY})  # fmt: skip
    assert third.content == spoken.content
    # The stored voice's Mimi codes were computed once, at upload: using it (as speaker 1 and 2, or as a
    # conversation's voice by name) runs no encoder.
    cid = {"conversation_id": "named-voice"}
    assert api.post("/set_voice", data={"voice": "one", **cid}).status_code == 200
    assert api.get("/healthz").json()["engine"]["mimi_encodes"] == encodes
    by_name = api.generate("[S1] Hello there.", "pcm16", **cid, **GREEDY).content
    assert by_name and api.get("/state", params=cid).json()["voice"]["name"] == "one"
    assert api.post("/set_voice", data={"voice": "nobody", **cid}).status_code == 404
    assert api.client.delete("/conversations/named-voice").status_code == 200
    unknown = api.post("/tts", json={"text": "hi", "speaker_1": "nobody"})
    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
    assert api.get("/healthz").json()["engine"]["sessions"] == sessions  # the tts session was closed


# ------------------------------------------------------------------------ hostile input (issue 12)


def _raw_upload(api: Api, *, token: bool, body_bytes: int) -> tuple[int, bytes]:
    """A chunked multipart upload over a raw socket, the way a hostile client streams one: headers, then
    1 MiB chunks, reading between chunks; the body is never ended. Returns (bytes of body sent before the
    server answered, the answer)."""
    sock = socket.create_connection(("127.0.0.1", api.bridge.http_port), timeout=30)
    auth = f"Authorization: Bearer {TOKEN}\r\n" if token else ""
    sock.sendall(
        f"POST /user_spoke HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n{auth}"
        "Content-Type: multipart/form-data; boundary=XYZ\r\n\r\n".encode()
    )
    head = b'--XYZ\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
    chunk = b"\0" * (1 << 20)
    sent, answer = 0, b""
    with sock:
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(body_bytes // len(chunk)):
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed) before the body ended
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break  # it closed the connection on us: read what it said
            sent += len(chunk)
        # The body is still open: an answer can only come from a server that stopped reading it.
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return sent, answer


def test_uploads_are_refused_before_their_body_is_read(espeak_api: Api) -> None:
    # No token: answered 401 right after the headers, while the body is still coming.
    sent, answer = _raw_upload(espeak_api, token=False, body_bytes=0)
    assert answer.startswith(b"HTTP/1.1 401") and b"bearer token" in answer, answer[:200]
    # With the token, a chunked body (no Content-Length to refuse up front) is cut off at the cap: 413
    # naming the key, long before the 64 MiB the client meant to send, and nothing spooled past the cap.
    sent, answer = _raw_upload(espeak_api, token=True, body_bytes=64 << 20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"http.limits.max_upload_bytes" in answer and sent < 16 << 20, (sent, answer[:300])
    assert espeak_api.get("/health").status_code == 200


def test_bad_json_is_422_not_500(espeak_api: Api) -> None:
    api = espeak_api
    ctype = {"content-type": "application/json"}
    bad_utf8 = api.post("/generate", content=b'{"text": "\xff\xfe"}', headers=ctype)
    assert bad_utf8.status_code == 422 and "UTF-8" in bad_utf8.json()["detail"], bad_utf8.text
    deep = b"[" * 50_000 + b"]" * 50_000
    nested = api.post("/generate", content=deep, headers=ctype)
    assert nested.status_code == 422 and "nested too deeply" in nested.json()["detail"], nested.text
    tts = api.post("/tts", content=b"{" + b'"a":{' * 30_000 + b"}" * 30_001, headers=ctype)
    assert tts.status_code == 422, tts.text
    words = upload(api, "/user_spoke", encode(speech("yes", 8000), 8000, "WAV"), words=deep.decode())
    assert words.status_code == 422 and "words" in words.json()["detail"], words.text
    with api.ws(format="pcm16") as ws:
        ready(ws)
        ws.send(deep.decode())
        error = json.loads(ws.recv(timeout=30))
        assert error["event"] == "error" and error["status"] == 422, error
        again = stream(ws, [{"text": "Still here.", "end": True}])  # the socket is still usable
        assert again.done["event"] == "done" and again.chunks
    # FastAPI's own validation errors have the same shape as ours: one sentence in `detail`.
    unnamed = api.post("/upload_voice", files={"audio": ("v.wav", b"x")})
    assert unnamed.status_code == 422 and unnamed.json()["detail"] == "invalid request: name: Field required"


def test_delete_during_a_websocket_reply_says_so(espeak_api: Api) -> None:
    api, cid = espeak_api, {"conversation_id": "deleted-ws"}
    with api.ws(format="pcm16", **cid) as ws:
        ready(ws)
        ws.send(json.dumps({"text": "Hello, this reply waits for more text"}))  # no `end`: still speaking
        while True:  # the reply is under way once its first audio arrived
            if isinstance(ws.recv(timeout=30), bytes):
                break
        closed = api.client.delete("/conversations/deleted-ws")
        assert closed.status_code == 200 and closed.json() == {"ok": True, "interrupted": True}
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                message = ws.recv(timeout=30)
                if isinstance(message, str):
                    events.append(json.loads(message))
    assert events and events[-1]["event"] == "error" and events[-1]["status"] == 409, events
    assert "was closed" in events[-1]["message"]
    assert api.get("/state", params=cid).status_code == 404


def test_delete_during_generate_says_so(dia2_api: Api) -> None:
    api, cid = dia2_api, {"conversation_id": "deleted"}
    assert api.post("/reset", json=cid).status_code == 200
    text = "This reply is long on purpose so that it can be deleted halfway. " * 4
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(api.post, "/generate", json={"text": text, "format": "pcm16", **cid, **GREEDY})
        while not api.get("/state", params=cid).json()["speaking"]:  # tiny Dia2 on CPU speaks for seconds
            assert not pending.done(), pending.result().text
        closed = api.client.delete("/conversations/deleted")
        reply = pending.result()
    assert closed.status_code == 200 and closed.json()["interrupted"] is True
    assert reply.status_code == 409 and "was closed" in reply.json()["detail"], reply.text
    assert api.get("/healthz").json()["engine"]["rows_in_use"] == 0  # nothing leaked
    assert api.post("/reset", json=cid).status_code == 200  # reopened empty on next use


def test_ids_and_names_are_bounded_and_get_opens_nothing(espeak_api: Api) -> None:
    api = espeak_api
    opened = api.get("/conversations").json()["conversations"]
    missing = api.get("/state", params={"conversation_id": "never-opened"})
    assert missing.status_code == 404 and api.get("/conversations").json()["conversations"] == opened
    for bad in ("a" * 129, "a" * 20_000, "a/b", "..", "has space", "per%cent", ""):
        refused = api.post("/reset", json={"conversation_id": bad}) if bad else None
        if refused is not None:
            assert refused.status_code == 422 and "conversation_id" in refused.json()["detail"], bad
        named = api.post("/upload_voice", files={"audio": ("v.wav", b"x")}, data={"name": bad})
        assert named.status_code == 422, (bad, named.text)
    assert api.get("/conversations").json()["conversations"] == opened
    with pytest.raises(InvalidStatus) as denied:
        api.ws(format="pcm16", conversation_id="a%2Fb")
    assert denied.value.response.status_code == 422
    longest = "x" * 128
    assert api.post("/reset", json={"conversation_id": longest}).status_code == 200
    assert api.client.delete(f"/conversations/{longest}").json() == {"ok": True, "interrupted": False}


def test_openapi_refs_resolve_and_errors_are_declared(espeak_api: Api) -> None:
    base = espeak_api.base
    # /docs and /openapi.json are public (docs/HTTP_API.md): the schema holds no config value or secret.
    assert httpx.get(f"{base}/docs").status_code == 200
    schema = httpx.get(f"{base}/openapi.json").json()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from ([value] if key == "$ref" else refs(value))
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(schema):
        target: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"dangling $ref {ref}"
            target = target[part]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    body = schema["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"text", "format", "conversation_id"} <= set(body["properties"])
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            declared = set(op["responses"])
            if path not in ("/health", "/healthz", "/readyz", "/metrics"):
                assert {"401", "422", "500"} <= declared, (method, path, declared)
            for code in declared - {"200"}:
                error = op["responses"][code]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    assert {"409", "413", "429"} <= set(schema["paths"]["/generate"]["post"]["responses"])
    assert "404" in schema["paths"]["/state"]["get"]["responses"]
