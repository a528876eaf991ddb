"""Opt-out detection (phrases, whole words) and the LLM agent's `opt_out` tool against a local server that
speaks OpenAI's streaming protocol. The live call (the callee says it; the number is never called again) is
in test_suppression.py."""

from __future__ import annotations

import asyncio
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from sipbridge.agents import Action, AgentCall, Turn
from sipbridge.agents.llm import LlmAgent
from sipbridge.config import Config, ConfigError, LlmAgentConfig, load_config
from sipbridge.dialer.optout import OptOutDetector

from ..agent_servers import LocalServer, Request
from ..test_llm_calls import chunk


@pytest.mark.parametrize(
    ("words", "phrase"),
    [
        ("Please stop calling me.", "stop calling"),
        ("STOP CALLING!", "stop calling"),
        ("Can you remove me from your list, please?", "remove me from your list"),
        ("Do not call me again", "do not call me"),
        ("Don\u2019t call me anymore.", "don't call me"),
        ("Yes, she works here.", None),
        ("The nonstop callings are fine", None),  # whole words only
        ("I'll call you back", None),
        ("up calling me remove me from your lid.", "remove me from your list"),  # heard by tiny.en, live
        ("do not call mom", None),  # one word off in a short phrase is another meaning
        ("Take me out of your list", None),  # 'out' for 'off': a different first letter
    ],
)
def test_phrases(words: str, phrase: str | None) -> None:
    assert OptOutDetector().match(words) == phrase


def test_phrases_are_configurable_and_checked(tmp_path: Path) -> None:
    detector = OptOutDetector((*Config().dialer.opt_out_phrases, "never ring here again"))
    assert detector.match("Never ring here again, OK?") == "never ring here again"
    with pytest.raises(ValueError, match="empty"):
        OptOutDetector(("stop calling", " ?! "))
    path = tmp_path / "c.yaml"
    path.write_text("dialer:\n  opt_out_phrases: []\n")
    with pytest.raises(ConfigError, match=r"dialer\.opt_out_phrases"):
        load_config(str(path), [])


class ToolLlm:
    """Says a short acknowledgement, then calls opt_out."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []

    def __call__(self, req: Request, handler: BaseHTTPRequestHandler) -> None:
        self.bodies.append(req.json())
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        handler.wfile.write(chunk({"content": "Of course, sorry to bother you."}))
        args = json.dumps({"words": "never ring here again"})
        call = {
            "index": 0,
            "id": "c1",
            "type": "function",
            "function": {"name": "opt_out", "arguments": args},
        }
        handler.wfile.write(chunk({"tool_calls": [call]}))
        handler.wfile.write(chunk({}, "tool_calls"))
        handler.wfile.write(b"data: [DONE]\n\n")


async def _turn(agent: LlmAgent, direction: str) -> list[Action]:
    call = AgentCall("c1", "sip:callee@127.0.0.1", direction=direction)
    call.transcript.append(("caller", "never ring here again"))
    reply = await agent.on_turn(call, Turn("speech", "never ring here again"))
    assert reply is not None
    stream = reply.text
    assert not isinstance(stream, str)
    text = "".join([piece async for piece in stream])
    assert "sorry to bother you" in text
    return reply.all_actions()


def test_the_llm_gets_an_opt_out_tool_on_outbound_calls_only() -> None:
    llm = ToolLlm()
    with LocalServer(llm) as server:
        agent = LlmAgent(LlmAgentConfig(base_url=f"{server.url}/v1"), "Hello.")
        outbound = asyncio.run(_turn(agent, "outbound"))
        inbound = asyncio.run(_turn(agent, "inbound"))
    offered = [{t["function"]["name"] for t in body["tools"]} for body in llm.bodies]  # type: ignore[index, union-attr]
    assert "opt_out" in offered[0] and "opt_out" not in offered[1]
    assert [a.kind for a in outbound] == ["opt_out"] and "never ring here again" in outbound[0].arg
    assert inbound == []  # a model calling it anyway on an inbound call does nothing
