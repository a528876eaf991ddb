"""YAML conversation flows (the `script` agent): states with prompts, expected answers, retries, branches.

A flow file (config/flows/employment_verification.yaml is the full example; docs/AGENTS.md the reference):

    variables: {company: your company}       # template defaults; call variables override them
    settings: {silence_timeout_s: 8, retries: 2, hold_timeout_s: 90}
    start: intro
    intents:                                 # checked before the state's own answers, in every state
      hold: {keywords: [hold on, one moment], goto: holding}
      refused: {answer: refuse, goto: refused}   # the answer classifier (answers.py) found a refusal
    dtmf: {"0": to_operator}                 # keypad digit -> state
    states:
      intro:
        say: Hello, this is {agency}. Does {subject_name} work at {company}?
        expect: yes_no                       # yes_no | date | number | title | text | regex | keywords | any
        capture: employment_confirmed        # result field the value goes to (+ _heard, _intent, _evidence)
        on: {yes: dates, no: not_employed, unsure: unclear}   # any answer intent (answer_examples.py)
        no_match: unclear                    # after `retries` re-prompts without a usable answer
        silence: no_response                 # after `retries` re-prompts on silence
      not_employed: {say: Thank you. Goodbye., end: not_employed}   # say, then hang up with an outcome

A yes_no answer is classified (yes, no, refuse, unsure, wrong_person, repeat, callback, other); a guess is
confirmed once (`expect.confirm`) before "unclear" is recorded; a refusal or "don't know" is never recorded
as a yes or a no. docs/AGENTS.md has the rules.

Targets are state names, or `$resume`: back to the state an intent interrupted (after "hold on").
Problems (unknown state, unreachable state, missing prompt, unknown template variable, bad regex ...) are
found at load time and reported with the key path and file line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from sipbridge.agents.answer_examples import INTENTS, AnswerIntent
from sipbridge.agents.fields import parse_date, parse_number, parse_title
from sipbridge.config_loader import (
    ConfigError,
    ConfigIssue,
    LoadedYaml,
    Origins,
    StrictScalars,
    load_yaml_model,
    read_yaml_text,
)

RESUME = "$resume"
ExpectKind = Literal["yes_no", "date", "number", "title", "text", "regex", "keywords", "any"]


class _FlowModel(StrictScalars):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_FlowModel):
    type: ExpectKind = "any"
    pattern: str | None = Field(None, description="regex: the first group (or the whole match) is the value")
    options: dict[str, list[str]] = Field(default_factory=dict, description="keywords: option -> phrases")
    # yes_no: more labelled answers for this question, added to the classifier's own (answer_examples.py),
    # e.g. {yes: [she used to work here]} where the question is "did she ever work here?".
    examples: dict[AnswerIntent, list[str]] = Field(default_factory=dict)
    # yes_no: said once when the answer was a guess (low confidence); a second guess records "unclear".
    confirm: str = "Sorry, was that a yes or a no?"


class FlowSettings(_FlowModel):
    silence_timeout_s: float = Field(8.0, gt=0, le=600)
    retries: int = Field(2, ge=0, le=10)  # re-prompts before no_match / silence targets
    hold_timeout_s: float = Field(90.0, gt=0, le=3600)  # how long a `wait` state waits in silence


class Intent(_FlowModel):
    keywords: list[str] = Field(default_factory=list)  # any of these phrases, heard anywhere in the turn
    answer: AnswerIntent | None = None  # or: the answer classifier found this (refuse, callback ...)
    goto: str
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_a_trigger(self) -> Intent:
        if not self.keywords and self.answer is None:
            raise ValueError("an intent needs keywords or an answer")
        return self


class State(_FlowModel):
    say: str | None = None
    reprompt: str | None = None  # said on retries; default "Sorry, ..." + say
    interruptible: bool = True
    expect: Expect | None = None
    capture: str | None = None
    on: dict[str, str] = Field(default_factory=dict)
    next: str | None = None
    goto: str | None = None  # say, then continue straight to this state without waiting for an answer
    no_match: str | None = None
    silence: str | None = None
    retries: int | None = Field(
        None, ge=0, le=10
    )  # re-prompts on unusable answers (default settings.retries)
    silence_retries: int | None = Field(
        None, ge=0, le=10
    )  # re-prompts on silence (default: settings.retries)
    silence_timeout_s: float | None = Field(None, gt=0, le=3600)
    wait: bool = False  # hold: any speech continues to `next`; silence waits hold_timeout_s, no re-prompt
    intents: bool = True
    set: dict[str, Any] = Field(default_factory=dict)  # result fields set on entering
    outcome: str | None = None  # the call's outcome, set on entering (the call goes on)
    end: str | None = None  # outcome, then hang up after saying `say`
    transfer: str | None = None  # REFER to this URI (templated) after saying `say`
    send_dtmf: str | None = None

    @field_validator("expect", mode="before")
    @classmethod
    def _plain_expect(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @property
    def final(self) -> bool:
        return self.end is not None or self.transfer is not None


class StateFlow(_FlowModel):
    variables: dict[str, str] = Field(default_factory=dict)
    settings: FlowSettings = Field(default_factory=FlowSettings)
    start: str
    intents: dict[str, Intent] = Field(default_factory=dict)
    dtmf: dict[str, str] = Field(default_factory=dict)
    states: dict[str, State] = Field(min_length=1)

    @field_validator("dtmf", mode="before")
    @classmethod
    def _digit_keys(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class FlowLoader(yaml.SafeLoader):
    """YAML 1.1 reads `no`, `yes`, `on`, `off` as booleans; in a flow they are words callers say."""


FlowLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
FlowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_TEMPLATE = re.compile(r"\{(\w+)\}")


def render(text: str, values: dict[str, Any]) -> str:
    """`{name}` from call variables/results; an unknown name stays as written (validated at load)."""
    return _TEMPLATE.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)


# ------------------------------------------------------------------------------------- validation


@dataclass
class _Checker:
    flow: StateFlow
    origins: Origins
    issues: list[ConfigIssue]

    def add(self, path: tuple[str | int, ...], message: str) -> None:
        dotted = ".".join(str(p) for p in path)
        self.issues.append(ConfigIssue(dotted, message, self.origins.source_of(path)))

    def target(self, path: tuple[str | int, ...], name: str | None, *, resume_ok: bool = True) -> None:
        if name is None or name in self.flow.states or (resume_ok and name == RESUME):
            return
        self.add(path, f"unknown state {name!r}")

    def run(self) -> None:
        flow = self.flow
        self.target(("start",), flow.start, resume_ok=False)
        captures = {s.capture for s in flow.states.values() if s.capture}
        setters = {k for s in flow.states.values() for k in s.set} | {
            k for i in flow.intents.values() for k in i.set
        }
        known = set(flow.variables) | captures | setters
        for name, intent in flow.intents.items():
            self.target(("intents", name, "goto"), intent.goto, resume_ok=False)
        for digit, goto in flow.dtmf.items():
            if not re.fullmatch(r"[0-9*#A-D]", digit):
                self.add(("dtmf", digit), f"{digit!r} is not a DTMF digit")
            self.target(("dtmf", digit), goto, resume_ok=False)
        for name, state in flow.states.items():
            path: tuple[str | int, ...] = ("states", name)
            if not state.say:
                self.add(path, f"state {name!r} has no prompt (say)")
            for key in ("next", "goto", "no_match", "silence"):
                self.target((*path, key), getattr(state, key))
            for answer, goto in state.on.items():
                self.target((*path, "on", answer), goto)
            for key in ("say", "reprompt", "transfer"):
                text = getattr(state, key)
                for var in _TEMPLATE.findall(text or ""):
                    if var not in known:
                        self.add((*path, key), f"unknown variable {{{var}}} (declare it under variables)")
            self._expect(path, name, state)
        self._reachable()

    def _expect(self, path: tuple[str | int, ...], name: str, state: State) -> None:
        expect = state.expect
        if expect is not None and expect.examples and expect.type != "yes_no":
            self.add((*path, "expect", "examples"), "examples are for yes_no expects")
        if expect is None:
            if state.on or state.capture:
                self.add(path, f"state {name!r} has on/capture but no expect")
            return
        if expect.type == "regex":
            if not expect.pattern:
                self.add((*path, "expect"), "regex expects need a pattern")
            else:
                try:
                    re.compile(expect.pattern)
                except re.error as exc:
                    self.add((*path, "expect", "pattern"), f"invalid regex: {exc}")
        if expect.type == "keywords" and not expect.options:
            self.add((*path, "expect"), "keywords expects need options")
        answers: dict[str, set[str]] = {"yes_no": set(INTENTS), "keywords": set(expect.options)}
        allowed = answers.get(expect.type)
        if allowed is not None:
            for answer in state.on:
                if answer not in allowed:
                    self.add((*path, "on", answer), f"{answer!r} is not an answer of {expect.type} here")

    def _reachable(self) -> None:
        flow = self.flow
        seen: set[str] = set()
        todo = [flow.start, *(i.goto for i in flow.intents.values()), *flow.dtmf.values()]
        while todo:
            name = todo.pop()
            if name in seen or name not in flow.states:
                continue
            seen.add(name)
            s = flow.states[name]
            todo.extend(t for t in (s.next, s.goto, s.no_match, s.silence, *s.on.values()) if t)
        for name in flow.states:
            if name not in seen:
                self.add(("states", name), f"state {name!r} is unreachable from start {flow.start!r}")


def validate_flow(loaded: LoadedYaml[StateFlow]) -> StateFlow:
    issues: list[ConfigIssue] = []
    _Checker(loaded.model, loaded.origins, issues).run()
    if issues:
        raise ConfigError(issues)
    return loaded.model


def load_state_flow(text: str, origin: str) -> StateFlow:
    """Parse and validate a state flow; ConfigError lists every problem with its key path and line."""
    return validate_flow(load_yaml_model(StateFlow, text, origin, loader=FlowLoader))


def read_flow_text(path: Path) -> str:
    return read_yaml_text(path, "flow file")


# ----------------------------------------------------------------------------------- answer parsing


def words_of(text: str) -> list[str]:
    text = text.lower().replace("’", "'").replace("cannot", "can not")
    return re.findall(r"[a-z0-9']+", text)


def has_phrase(words: list[str], phrases: list[str]) -> bool:
    """Whole-word (or whole-phrase) match, so "no" does not match "know"."""
    line = f" {' '.join(words)} "
    return any(f" {' '.join(words_of(p))} " in line for p in phrases if words_of(p))


def parse_answer(expect: Expect, text: str) -> tuple[str | None, Any]:
    """(branch key, normalised value) for every kind but yes_no (the answer classifier's, answers.py);
    branch key None = no usable answer."""
    words = words_of(text)
    if not words:
        return None, None
    kind = expect.type
    if kind == "yes_no":
        raise ValueError("yes_no answers are classified by sipbridge.agents.answers, not parsed")
    parsers = {"date": parse_date, "number": parse_number, "title": parse_title}
    if kind in parsers:
        value = parsers[kind](text)
        return (None, None) if value is None else ("matched", value)
    if kind == "regex":
        m = re.search(expect.pattern or "", text, re.IGNORECASE)
        if m is None:
            return None, None
        return "matched", m.group(1) if m.groups() else m.group(0)
    if kind == "keywords":
        for option, phrases in expect.options.items():
            if has_phrase(words, phrases):
                return option, option
        return None, None
    return "matched", text.strip()  # text / any


__all__ = ["parse_date", "parse_number", "parse_title"]  # re-exported: flows and tests import them here
