"""The llm agent's `record_answer` tool: answers recorded with the flows' intent set, arguments checked."""

from __future__ import annotations

import json

import pytest

from sipbridge.agents.base import Action, AgentCall
from sipbridge.agents.llm import LlmAgent, _ToolCall, tool_definitions
from sipbridge.config import LlmAgentConfig


def actions_for(call: AgentCall, name: str, args: dict[str, object]) -> list[Action]:
    agent = LlmAgent(LlmAgentConfig(), "Hello.")
    return agent._actions(call, [_ToolCall(name, json.dumps(args))])


def a_call(*caller: str) -> AgentCall:
    call = AgentCall("c", "")
    for text in caller:
        call.transcript += [("bot", "Does Jane work at Initech?"), ("caller", text)]
    return call


def test_the_tool_offers_exactly_the_intent_set() -> None:
    (tool,) = tool_definitions(["record_answer"])
    enum = tool["function"]["parameters"]["properties"]["intent"]["enum"]
    assert enum == ["yes", "no", "refuse", "unsure", "wrong_person", "repeat", "callback", "other", "unclear"]
    assert "record_answer" in LlmAgentConfig().tools


def test_a_yes_is_recorded_with_its_evidence_and_the_words_heard() -> None:
    call = a_call("Yeah, she's still with us.")
    args = {"question": "employment_confirmed", "intent": "yes", "evidence": "she's still with us"}
    actions = actions_for(call, "record_answer", args)
    assert call.results == {
        "employment_confirmed": True,
        "employment_confirmed_intent": "yes",
        "employment_confirmed_evidence": "she's still with us",
        "employment_confirmed_heard": "Yeah, she's still with us.",
    }
    assert Action.set_result("employment_confirmed", True) in actions


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ({"question": "employment_confirmed", "intent": "maybe", "evidence": "yes"}, "yes"),
        ({"question": "employment_confirmed", "intent": "yes", "evidence": "she works here"}, "I can't say."),
        ({"question": "Employment Confirmed!", "intent": "yes", "evidence": "yes"}, "yes"),
        ({"question": "employment_confirmed", "intent": "no"}, "no"),
    ],
)
def test_arguments_outside_the_set_or_unsaid_evidence_record_nothing(
    args: dict[str, object], said: str
) -> None:
    call = a_call(said)
    assert actions_for(call, "record_answer", args) == [] and call.results == {}


def test_a_yes_or_no_on_a_refusal_is_recorded_as_the_refusal() -> None:
    call = a_call("No, sorry, that's confidential.")
    args = {"question": "employment_confirmed", "intent": "no", "evidence": "No"}
    actions_for(call, "record_answer", args)
    assert call.results["employment_confirmed_intent"] == "refuse"
    assert "employment_confirmed" not in call.results


def test_set_result_cannot_write_an_intent_outside_the_set() -> None:
    call = a_call("yes")
    assert actions_for(call, "set_result", {"name": "employment_confirmed_intent", "value": "probably"}) == []
    assert actions_for(call, "set_result", {"name": "job_title", "value": "Engineer"}) == [
        Action.set_result("job_title", "Engineer")
    ]
