"""The scripted agent: greeting, replies by turn and keyword, DTMF, hang-up, flow errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipbridge.agents import AgentCall, AgentError, Reply, make_agent
from sipbridge.agents.script import ScriptAgent, load_flow
from sipbridge.config import AgentConfig

ROOT = Path(__file__).resolve().parents[2]

FLOW = """
greeting: {say: Hello, interruptible: false}
turns:
  - say: Please confirm.
    when:
      - keywords: [no, wrong]
        say: Sorry to hear that.
        hangup: true
  - say: Goodbye.
    hangup: true
dtmf:
  "0": No operator.
"""


def run_turns(agent: ScriptAgent, *said: str) -> list[Reply | None]:
    call = AgentCall("c", "sip:x@y")

    async def go() -> list[Reply | None]:
        return [await agent.greeting(call)] + [await agent.on_turn(call, s) for s in said]

    return asyncio.run(go())


def test_script_replies_in_order_by_keyword_and_hangs_up(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(FLOW)
    agent = ScriptAgent(load_flow(tmp_path / "f.yaml"), "default greeting")
    greeting, first, second, third = run_turns(agent, "yes I know", "ok", "more")
    assert greeting == Reply("Hello", interruptible=False)
    assert first == Reply("Please confirm.")  # "know" does not match "no": whole words only
    assert second == Reply("Goodbye.", hangup=True)
    assert third == Reply("Thank you. Goodbye.", hangup=True)  # turns ran out
    _, branch = run_turns(agent, "No, that is wrong.")
    assert branch == Reply("Sorry to hear that.", hangup=True)
    assert asyncio.run(agent.on_dtmf(AgentCall("c", ""), "0")) == Reply("No operator.")
    assert asyncio.run(agent.on_dtmf(AgentCall("c", ""), "5")) is None


def test_bad_flows_fail_at_start_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns:\n  - hangup: true\n")
    with pytest.raises(AgentError, match=r"turns\.0\.say"):
        load_flow(bad)
    with pytest.raises(AgentError, match="cannot read"):
        load_flow(tmp_path / "missing.yaml")
    bad.write_text("turns: [\n")
    with pytest.raises(AgentError, match="not valid YAML"):
        load_flow(bad)


def test_shipped_flow_loads() -> None:
    agent = make_agent(
        AgentConfig(kind="script", script={"flow": ROOT / "config/flows/employment_verification.yaml"})
    )
    assert agent.name == "script"
