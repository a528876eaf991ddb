"""Repeats what the caller said: a smoke test of the whole loop (ASR -> agent -> engine)."""

from __future__ import annotations

from dataclasses import dataclass

from sipbridge.agents.base import AgentCall, Reply


@dataclass
class EchoAgent:
    greeting_text: str
    name: str = "echo"

    async def greeting(self, call: AgentCall) -> Reply | None:
        return Reply(self.greeting_text)

    async def on_turn(self, call: AgentCall, words: str) -> Reply | None:
        return Reply(f"You said: {words}" if words else "Sorry, I did not catch that.")

    async def on_dtmf(self, call: AgentCall, digit: str) -> Reply | None:
        return Reply(f"You pressed {digit}.")

    async def on_end(self, call: AgentCall) -> None:
        return None
