"""A YAML-scripted agent: a greeting, one reply per caller turn (picked by keyword or in order), a hang-up.

Flow file (agent.script.flow; config/flows/ has examples):

    greeting: Hello, this is the verification line.      # or {say: ..., interruptible: false}
    turns:                                               # the reply to the caller's 1st, 2nd, ... turn
      - say: Thank you. Can you confirm the dates?       # default reply for this turn
        when:                                            # optional: first entry whose keyword is heard wins
          - keywords: [no, wrong]
            say: I see. Who should I call instead?
      - say: Thank you, goodbye.
        hangup: true                                     # hang up after saying it
    dtmf:                                                # optional: reply to a keypad digit
      "0": {say: Transferring is not possible, sorry.}
    goodbye: Thank you. Goodbye.                         # said (then hang up) once the turns run out

Keywords match whole words, case-insensitive, so "no" does not match "know".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sipbridge.agents.base import AgentCall, AgentError, Reply


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Say(_Model):
    say: str = Field(min_length=1)
    interruptible: bool = True
    hangup: bool = False

    def reply(self) -> Reply:
        return Reply(self.say, self.interruptible, self.hangup)


class Branch(Say):
    keywords: list[str] = Field(min_length=1)


class Step(Say):
    when: list[Branch] = Field(default_factory=list)


class Flow(_Model):
    greeting: Say | None = None
    turns: list[Step] = Field(default_factory=list)
    dtmf: dict[str, Say] = Field(default_factory=dict)
    goodbye: str = "Thank you. Goodbye."

    @field_validator("greeting", mode="before")
    @classmethod
    def _plain_greeting(cls, value: Any) -> Any:
        return {"say": value} if isinstance(value, str) else value

    @field_validator("dtmf", mode="before")
    @classmethod
    def _plain_dtmf(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): ({"say": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value


class _FlowLoader(yaml.SafeLoader):
    """YAML 1.1 reads `no`, `yes`, `on`, `off` as booleans; in a flow they are words callers say."""


_FlowLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_FlowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_flow(path: Path) -> Flow:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_FlowLoader)  # a SafeLoader subclass
    except OSError as exc:
        raise AgentError(f"agent.script.flow: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise AgentError(f"agent.script.flow: {path} is not valid YAML: {exc}") from exc
    try:
        return Flow.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise AgentError(f"agent.script.flow {path}: {problems}") from None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


class ScriptAgent:
    name = "script"

    def __init__(self, flow: Flow, default_greeting: str) -> None:
        self.flow = flow
        self.default_greeting = default_greeting

    async def greeting(self, call: AgentCall) -> Reply | None:
        if self.flow.greeting is not None:
            return self.flow.greeting.reply()
        return Reply(self.default_greeting)

    async def on_turn(self, call: AgentCall, words: str) -> Reply | None:
        index = call.turns
        call.turns += 1
        if index >= len(self.flow.turns):
            return Reply(self.flow.goodbye, hangup=True)
        step = self.flow.turns[index]
        heard = _words(words)
        for branch in step.when:
            if heard & {k.lower() for k in branch.keywords}:
                return branch.reply()
        return step.reply()

    async def on_dtmf(self, call: AgentCall, digit: str) -> Reply | None:
        say = self.flow.dtmf.get(digit)
        return None if say is None else say.reply()

    async def on_end(self, call: AgentCall) -> None:
        return None
