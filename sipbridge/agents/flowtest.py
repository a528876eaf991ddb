"""`sipbridge flow test FLOW.yaml --answers "a|b|c"`: a flow run without a call, for people writing flows.

The same `ScriptAgent` a call uses gets the greeting, then each answer as a caller turn; actions are applied
to the call's results the way the call session applies them (`set_result` and `end` at once). Each step is
printed — what the bot said, what the caller said, which state heard it, the answer intent with its
confidence and evidence, the results it recorded — then the outcome and all results as JSON.

An answer may be `(silence)` (the caller said nothing for the silence timeout) or `(dtmf 0)` (a keypad
digit). The run stops when the flow ends the call, or when the answers run out.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sipbridge.agents.base import AgentCall, Reply, Turn
from sipbridge.agents.flow import StateFlow
from sipbridge.agents.script import ScriptAgent, load_flow

__all__ = ["FlowTestResult", "parse_turn", "run_flow_test"]

_DTMF = re.compile(r"^\(dtmf ([0-9*#A-D])\)$", re.IGNORECASE)


@dataclass
class FlowTestResult:
    steps: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    ended: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "ended": self.ended, "results": self.results, "steps": self.steps}


def parse_turn(answer: str) -> Turn:
    text = answer.strip()
    if text.lower() == "(silence)":
        return Turn("silence", silent_s=0.0)
    m = _DTMF.match(text)
    if m:
        return Turn("dtmf", dtmf=m.group(1).upper())
    return Turn("speech", words=text)


def _apply(call: AgentCall, reply: Reply | None) -> dict[str, Any]:
    """As CallSession._apply_now: results and the outcome recorded at once; returns what this reply set."""
    recorded: dict[str, Any] = {}
    for action in reply.all_actions() if reply else []:
        if action.kind == "set_result":
            call.results[action.arg] = recorded[action.arg] = action.value
            if action.arg == "outcome":
                call.outcome = str(action.value)
        elif action.kind == "end":
            call.outcome = action.arg
    return recorded


def _step(call: AgentCall, who: str, said: str, reply: Reply | None) -> dict[str, Any]:
    step: dict[str, Any] = {who: said}
    if who == "caller":
        step["state"] = call.state.get("heard_in")
        if call.state.get("answer") and call.state["answer"].get("state") == step["state"]:
            answer = call.state["answer"]
            step["intent"] = answer["intent"]
            step["confidence"] = answer["confidence"]
            step["evidence"] = answer["evidence"]
    step["recorded"] = _apply(call, reply)
    step["bot"] = reply.spoken_text if reply else None
    actions = [a for a in (reply.all_actions() if reply else []) if a.kind in ("end", "transfer", "hangup")]
    if actions:
        step["then"] = [f"{a.kind} {a.arg}".strip() for a in actions]
    return step


async def run_flow_test(
    path: Path, answers: list[str], variables: dict[str, str] | None = None
) -> FlowTestResult:
    flow = load_flow(path)
    if not isinstance(flow, StateFlow):
        raise ValueError(f"{path}: `flow test` runs state flows (a `states:` file)")
    agent = ScriptAgent(flow, "")
    call = AgentCall("flow-test", "sip:flow-test@localhost", variables=dict(variables or {}))
    result = FlowTestResult()
    reply = await agent.greeting(call)
    result.steps.append(_step(call, "start", flow.start, reply))
    for answer in answers:
        if reply is not None and reply.ends_call():
            break
        call.state["heard_in"] = call.state.get("current")
        call.state.pop("answer", None)
        turn = parse_turn(answer)
        reply = await agent.on_turn(call, turn)
        said = turn.words if turn.kind == "speech" else f"({turn.kind} {turn.dtmf})".replace(" )", ")")
        result.steps.append(_step(call, "caller", said, reply))
    result.ended = reply is not None and reply.ends_call()
    result.results, result.outcome = dict(call.results), call.outcome
    return result


def print_flow_test(result: FlowTestResult, out: TextIO) -> None:
    for step in result.steps:
        if "caller" in step:
            out.write(f"caller: {step['caller']}\n")
            if "intent" in step:
                out.write(
                    f"  state {step['state']}: {step['intent']} ({step['confidence']:.2f})"
                    f" evidence {step['evidence']!r}\n"
                )
            else:
                out.write(f"  state {step['state']}\n")
        for key, value in step["recorded"].items():
            out.write(f"  recorded {key} = {json.dumps(value)}\n")
        if step["bot"] is not None:
            out.write(f"bot: {step['bot']}\n")
        for then in step.get("then", []):
            out.write(f"  then {then}\n")
    out.write(json.dumps({"outcome": result.outcome, "results": result.results}, indent=2) + "\n")


def flow_test_command(args: Any) -> int:
    """The CLI body: 0 ran (whatever the outcome), 2 unusable flow or arguments."""
    from sipbridge.agents.base import AgentError

    variables = {}
    for item in args.var or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--var {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        variables[key] = value
    answers = [a for a in args.answers.split("|")] if args.answers else []
    try:
        result = asyncio.run(run_flow_test(Path(args.flow_file), answers, variables))
    except (AgentError, ValueError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n")
    else:
        print_flow_test(result, sys.stdout)
    return 0
