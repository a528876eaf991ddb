"""Hostile HTTP against a live `sipbridge run` (espeak engine, bearer token set): schemathesis generates
requests from the server's own /openapi.json (a bounded number per operation, fixed seed so a failure
reproduces), plus hand-written probes: malformed and oversized audio, path traversal in voice names and token
bypass attempts. No answer may be a 5xx other than the documented engine failures, and the server stays up."""

from __future__ import annotations

import io
import math
import struct
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sipbridge.http.guards import BearerToken

from .bridge import Bridge

TOKEN = "fuzz-token-5f2c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {"max_upload_bytes": 200_000, "max_audio_s": 5.0, "max_text_chars": 200, "max_conversations": 3}
# The 5xx answers the API documents (sipbridge/http/errors.py): the engine failed or has no free session.
EXAMPLES = 30  # per operation (valid and invalid mixed): 14 operations, about a minute here
ENGINE_FAILURES = ("engine failed", "the engine cannot take another conversation")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    config = {"engine": {"kind": "espeak"}, "http": {"bearer_token": TOKEN, "limits": LIMITS}}
    bridge = Bridge.start(tmp_path_factory.mktemp("fuzz"), config)
    try:
        yield bridge
    finally:
        assert bridge.proc.proc.poll() is None, "the supervisor died under the fuzzer"
        tracebacks = [line for line in bridge.proc.seen if "Traceback" in line or "Exception in ASGI" in line]
        assert bridge.stop() == 0
        assert not tracebacks, "\n".join(bridge.proc.seen)


def _no_unexplained_5xx(response: Any) -> None:
    if response.status_code >= 500:
        detail = (
            response.json().get("detail", "") if "json" in response.headers.get("content-type", "") else ""
        )
        assert str(detail).startswith(ENGINE_FAILURES), (response.status_code, response.text[:500])


def _close_conversations(live: Bridge) -> None:
    """Conversations the fuzzer opened would hold engine rows (max_conversations)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{live.http_port}", headers=AUTH, timeout=30) as c:
        for conv in c.get("/conversations").json()["conversations"]:
            c.delete(f"/conversations/{conv['conversation_id']}")


def test_generated_requests_get_no_unexplained_5xx(live: Bridge) -> None:
    # schemathesis' pytest plugin does not run under our pytest; its strategies drive hypothesis directly.
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{live.http_port}/openapi.json")
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        # Both kinds of request: ones that fit the schema, and ones that break it (wrong types, missing or
        # extra fields, out-of-range values).
        strategies = [
            operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def check(case: Any) -> None:
            response = case.call(headers=AUTH, timeout=60)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            _no_unexplained_5xx(response)
            _close_conversations(live)

        check()
    print("requests per operation:", calls)  # the figure in docs/RELIABILITY.md
    # Every operation of the schema was exercised (websocket routes are not in OpenAPI).
    assert len(calls) >= 10 and min(calls.values()) >= 1, calls
    assert live.proc.proc.poll() is None


@pytest.fixture
def client(live: Bridge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{live.http_port}", headers=AUTH, timeout=30) as c:
        yield c


def _wav(seconds: float, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        n = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 9))) for i in range(n)))
    return out.getvalue()


def _upload(client: httpx.Client, data: bytes, name: str = "v1", filename: str = "a.wav") -> httpx.Response:
    return client.post(
        "/upload_voice", data={"name": name, "transcript": "hello"}, files={"audio": (filename, data)}
    )


@pytest.mark.parametrize(
    ("label", "data", "statuses"),
    [
        ("random bytes named .wav", b"\x00\xff" * 5000, {415}),
        ("RIFF header only", b"RIFF\x24\x00\x00\x00WAVEfmt ", {415}),
        (
            "data chunk claiming 2 GB",
            _wav(0.5)[:40] + struct.pack("<I", 0x7FFFFFF0) + _wav(0.5)[44:],
            {200, 415, 422},
        ),
        ("zero channels", _wav(0.5)[:22] + b"\x00\x00" + _wav(0.5)[24:], {415, 422}),
        ("sample rate 0", _wav(0.5)[:24] + b"\x00\x00\x00\x00" + _wav(0.5)[28:], {415, 422}),
        ("empty", b"", {415, 422}),
        ("longer than max_audio_s", _wav(6.0, rate=8000), {413}),
        ("bigger than max_upload_bytes", _wav(7.0), {413}),
    ],
)
def test_bad_and_oversized_audio_is_refused_with_a_reason(
    client: httpx.Client, label: str, data: bytes, statuses: set[int]
) -> None:
    response = _upload(client, data)
    assert response.status_code in statuses, (label, response.status_code, response.text)
    if response.status_code == 200:  # a lying length is read as what is really there, never as 2 GB
        assert response.json()["seconds"] <= 0.5, response.text
        assert client.delete("/voices/v1").status_code == 200
    else:
        assert response.json()["detail"], label


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "..", "a/b", "a\\b", "%2e%2e%2fetc", "/abs", "v\x00.wav", "ok\nname", "x" * 129],
)
def test_voice_names_cannot_traverse_paths(client: httpx.Client, name: str) -> None:
    response = _upload(client, _wav(0.5), name=name)
    assert response.status_code == 422, (name, response.text)
    assert name not in [v["name"] for v in client.get("/voices").json()["voices"]]


@pytest.mark.parametrize("path", ["/voices/..%2F..%2Fetc%2Fpasswd", "/voices/%2e%2e", "/voices/a%00b"])
def test_deleting_a_traversing_voice_name_touches_nothing(client: httpx.Client, path: str) -> None:
    response = client.delete(path)
    assert response.status_code in (404, 422), (path, response.text)


@pytest.mark.parametrize(
    ("label", "headers", "params"),
    [
        ("no header", {}, {}),
        ("token in the query string", {}, {"token": TOKEN}),
        ("access_token in the query string", {}, {"access_token": TOKEN}),
        ("Basic scheme", {"Authorization": f"Basic {TOKEN}"}, {}),
        ("Token scheme", {"Authorization": f"Token {TOKEN}"}, {}),
        ("no scheme", {"Authorization": TOKEN}, {}),
        ("Bearer, empty", {"Authorization": "Bearer"}, {}),
        ("a prefix of the token", {"Authorization": f"Bearer {TOKEN[:-1]}"}, {}),
        ("the token and more", {"Authorization": f"Bearer {TOKEN}x"}, {}),
        ("the token twice", {"Authorization": f"Bearer {TOKEN} {TOKEN}"}, {}),
        ("the token in a cookie", {"Cookie": f"token={TOKEN}"}, {}),
        ("non-ASCII bytes", {"Authorization": b"Bearer \xff\xfe" + TOKEN.encode()}, {}),
    ],
)
def test_token_bypass_attempts_are_401(
    live: Bridge, label: str, headers: dict[str, Any], params: dict[str, str]
) -> None:
    url = f"http://127.0.0.1:{live.http_port}"
    for method, path in (("GET", "/voices"), ("GET", "/conversations"), ("POST", "/generate")):
        response = httpx.request(method, url + path, headers=headers, params=params, timeout=30)
        assert response.status_code == 401, (label, path, response.status_code, response.text)


def test_the_right_token_passes_and_the_scheme_is_case_insensitive(live: Bridge) -> None:
    url = f"http://127.0.0.1:{live.http_port}/voices"
    assert httpx.get(url, headers={"Authorization": f"bearer {TOKEN}"}, timeout=30).status_code == 200


def test_websocket_header_wins_over_the_query_token(live: Bridge) -> None:
    """Browsers cannot set headers on a WebSocket, so `?token=` is accepted there, but never to override a
    wrong header."""
    base = f"ws://127.0.0.1:{live.http_port}/generate_stream"
    with pytest.raises(InvalidStatus) as denied:
        connect(f"{base}?token={TOKEN}", additional_headers={"Authorization": "Bearer wrong"}).close()
    assert denied.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        connect(f"{base}?token={TOKEN[:-1]}").close()


def test_the_token_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check goes through hmac.compare_digest on the whole presented value (no early-exit `==`),
    whatever its length."""
    import hmac

    import sipbridge.http.guards as guards

    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(guards.hmac, "compare_digest", spy)
    token = BearerToken(TOKEN)
    for presented in (TOKEN, TOKEN[:3], TOKEN + "x" * 100, "", "é" * 10):
        assert token.ok(presented) is (presented == TOKEN)
    assert [a for a, _ in seen] == [p.encode() for p in (TOKEN, TOKEN[:3], TOKEN + "x" * 100, "", "é" * 10)]
    assert {b for _, b in seen} == {TOKEN.encode()}
