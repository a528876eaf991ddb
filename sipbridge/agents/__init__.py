"""Agents decide what the bot says (sipbridge/agents/base.py has the interface)."""

from __future__ import annotations

from sipbridge.agents.base import (
    Action,
    Agent,
    AgentCall,
    AgentError,
    AgentTurnError,
    Reply,
    TextStream,
    Turn,
)
from sipbridge.config import AgentConfig


def make_agent(config: AgentConfig) -> Agent:
    if config.kind == "echo":
        from sipbridge.agents.echo import EchoAgent

        return EchoAgent(config.greeting)
    if config.kind == "script":
        from sipbridge.agents.script import ScriptAgent, load_flow

        return ScriptAgent(load_flow(config.script.flow), config.greeting)
    if config.kind == "webhook":
        from sipbridge.agents.webhook import WebhookAgent

        return WebhookAgent(config.webhook)
    from sipbridge.agents.llm import LlmAgent

    return LlmAgent(config.llm, config.greeting)


__all__ = [
    "Action",
    "Agent",
    "AgentCall",
    "AgentError",
    "AgentTurnError",
    "Reply",
    "TextStream",
    "Turn",
    "make_agent",
]
