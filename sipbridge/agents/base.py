"""The agent interface: who decides what the bot says, one `AgentCall` of state per call.

Agents are async (later ones call webhooks and LLMs) and stateless themselves; everything a call needs
between turns lives in its `AgentCall`, which the supervisor's call session owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Reply:
    """Something to say. `interruptible=False` plays through barge-in (legal disclosures)."""

    text: str
    interruptible: bool = True
    hangup: bool = False  # hang up once this has been played


@dataclass
class AgentCall:
    call_id: str
    remote_uri: str
    turns: int = 0  # caller turns answered so far
    state: dict[str, Any] = field(default_factory=dict)  # the agent's own per-call memory
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (who, text)


class Agent(Protocol):
    name: str

    async def greeting(self, call: AgentCall) -> Reply | None: ...

    async def on_turn(self, call: AgentCall, words: str) -> Reply | None: ...

    async def on_dtmf(self, call: AgentCall, digit: str) -> Reply | None: ...

    async def on_end(self, call: AgentCall) -> None: ...


class AgentError(Exception):
    """The agent's configuration is unusable (raised at start, never mid-call)."""
