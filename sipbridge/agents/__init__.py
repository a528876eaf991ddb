"""Agents decide what the bot says (sipbridge/agents/base.py has the interface)."""

from __future__ import annotations

from sipbridge.agents.base import Agent, AgentCall, AgentError, Reply
from sipbridge.config import AgentConfig


def make_agent(config: AgentConfig) -> Agent:
    if config.kind == "echo":
        from sipbridge.agents.echo import EchoAgent

        return EchoAgent(config.greeting)
    if config.kind == "script":
        from sipbridge.agents.script import ScriptAgent, load_flow

        return ScriptAgent(load_flow(config.script.flow), config.greeting)
    raise AgentError(f"agent.kind {config.kind!r} is not available in this version (echo, script are)")


__all__ = ["Agent", "AgentCall", "AgentError", "Reply", "make_agent"]
