"""The llm agent through a real SIP call, against a local server speaking OpenAI's streaming protocol (SSE).

The server sends the first clause, pauses, then the rest and a function call. The caller must hear the first
words before the server has sent its last token (input streaming), and the function call must end the call
with the outcome it names. Measured: caller stops -> first reply audio, with the server's first-token delay
shown separately (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .agent_servers import LocalServer, Request
from .bridge import Bridge
from .peers import caller_audio
from .test_calls import assert_clean, ms, record_result

FIRST_TOKEN_S = 0.3  # the "model's" time to first token
PAUSE_S = 2.0  # between the first clause and the rest: speech must start inside it
FIRST = ["Thank", " you", " for", " calling", " the", " help", " line", "."]
REST = [" Your", " call", " is", " recorded", ".", " Goodbye", "."]


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    event = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
             "finish_reason": finish}]}  # fmt: skip
    return f"data: {json.dumps(event)}\n\n".encode()


class Llm:
    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.bodies: list[dict[str, object]] = []

    def __call__(self, req: Request, handler: BaseHTTPRequestHandler) -> None:
        self.bodies.append(req.json())
        assert req.path == "/v1/chat/completions" and req.headers["Authorization"] == "Bearer sk-test"
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()  # HTTP/1.0: the body ends when the connection closes

        def send(data: bytes) -> None:
            handler.wfile.write(data)
            handler.wfile.flush()

        time.sleep(FIRST_TOKEN_S)
        self.sent["first"] = time.monotonic()
        for token in FIRST:
            send(chunk({"content": token}))
        time.sleep(PAUSE_S)
        for token in REST:
            send(chunk({"content": token}))
        args = json.dumps({"outcome": "helped"})
        send(chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                    "function": {"name": "end_call", "arguments": args[:5]}}]}))  # fmt: skip
        send(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}))
        self.sent["last"] = time.monotonic()
        send(chunk({}, "tool_calls"))
        send(b"data: [DONE]\n\n")


def test_llm_agent_streams_words_to_the_engine_before_the_reply_is_complete(tmp_path: Path) -> None:
    llm = Llm()
    with LocalServer(llm) as server:
        agent = {
            "kind": "llm",
            "greeting": "Hello, this is the help line.",
            "llm": {
                "base_url": server.url + "/v1",
                "model": "test-model",
                "api_key": "${TEST_LLM_KEY}",
                "system_prompt": "You help callers of {remote_uri}.",
                "tools": ["hang_up", "end_call", "set_result"],
            },
        }
        bridge = Bridge.start(tmp_path / "bridge", {"agent": agent}, env={"TEST_LLM_KEY": "sk-test"})
        try:
            baseline = bridge.health()
            caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.0, tail_s=9.0)
            wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp")
            t_stop = wire.caller_stop
            first_audio = wire.reply()[0].t
            # Input streaming: the caller heard the first clause while the server still held the rest back.
            assert first_audio < llm.sent["last"] - 0.5, (first_audio, llm.sent)

            assert call["agent_outcome"] == "helped" and call["agent"] == "llm"
            bots = [t["text"] for t in bridge.turns(call["id"]) if t["who"] == "bot"]
            assert bots == ["Hello, this is the help line.", "".join(FIRST + REST).strip()], bots
            (body,) = llm.bodies
            assert body["stream"] is True and body["model"] == "test-model"
            messages = body["messages"]
            assert "sip:caller@127.0.0.1" in messages[0]["content"]  # system prompt templated
            assert messages[1] == {"role": "assistant", "content": "Hello, this is the help line."}
            assert messages[2]["role"] == "user" and "help" in messages[2]["content"].lower()
            assert {t["function"]["name"] for t in body["tools"]} == {"hang_up", "end_call", "set_result"}
            timing = bridge.latency(call["id"])
            record_result(
                "llm_first_audio",
                {
                    "caller_stop_to_first_reply_packet_ms": ms(t_stop, first_audio),
                    "server_first_token_delay_ms": FIRST_TOKEN_S * 1000,
                    "caller_stop_to_request_ms": ms(t_stop, server.requests[0].t),
                    "caller_stop_to_first_token_sent_ms": ms(t_stop, llm.sent["first"]),
                    "first_token_sent_to_first_reply_packet_ms": ms(llm.sent["first"], first_audio),
                    "first_reply_packet_before_last_token_ms": ms(first_audio, llm.sent["last"]),
                    "bridge_turn_detected_to_first_audio_ms": round(timing["turn_to_first_audio_ms"], 1),
                    "asr_ms": round(timing["asr_ms"], 1),
                    "agent_first_text_ms": round(timing["agent_first_text_ms"], 1),
                    "engine_first_chunk_ms": round(timing["engine_first_ms"], 1),
                },
            )
            assert_clean(bridge, baseline)
        finally:
            assert bridge.stop() == 0
