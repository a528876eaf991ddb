"""Repeats what the caller said: a smoke test of the whole loop (ASR -> agent -> engine)."""

from __future__ import annotations

from dataclasses import dataclass

from sipbridge.agents.base import AgentCall, Reply, Turn


@dataclass
class EchoAgent:
    greeting_text: str
    name: str = "echo"
    pure = True  # no state, no side effect: it may answer a turn ahead (turn.speculative_reply)

    async def greeting(self, call: AgentCall) -> Reply | None:
        return Reply(self.greeting_text)

    async def on_turn(self, call: AgentCall, turn: Turn) -> Reply | None:
        if turn.kind == "dtmf":
            return Reply(f"You pressed {turn.dtmf}.")
        if turn.kind == "silence":
            return None
        return Reply(f"You said: {turn.words}" if turn.words else "Sorry, I did not catch that.")

    async def on_end(self, call: AgentCall) -> None:
        return None
