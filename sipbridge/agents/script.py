"""The `script` agent: a YAML flow decides every reply, no network, no model.

Two flow formats:

- state flows (`states:`; sipbridge/agents/flow.py has the format, config/flows/ the shipped ones): prompts
  templated from call variables, expected answers, retries and re-prompts, silence timeouts, branches,
  captured result fields, an outcome; validated at load time;
- the first format (`turns:`), kept for simple scripts: a greeting, one reply per caller turn (picked by
  keyword or in order), DTMF replies, a hang-up:

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, field_validator

from sipbridge.agents.answers import Answer, AnswerClassifier, default_classifier, is_guard_phrase
from sipbridge.agents.base import Action, AgentCall, AgentError, Reply, Turn
from sipbridge.agents.flow import (
    RESUME,
    FlowLoader,
    State,
    StateFlow,
    has_phrase,
    load_state_flow,
    parse_answer,
    read_flow_text,
    render,
    words_of,
)
from sipbridge.config_loader import ConfigError, ConfigIssue, StrictScalars, compose_bounded, load_yaml_model


class _ScriptModel(StrictScalars):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Say(_ScriptModel):
    say: str = Field(min_length=1)
    interruptible: bool = True
    hangup: bool = False

    def reply(self) -> Reply:
        return Reply(self.say, self.interruptible, self.hangup)


class Branch(Say):
    keywords: list[str] = Field(min_length=1)


class Step(Say):
    when: list[Branch] = Field(default_factory=list)


class Flow(_ScriptModel):
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


def load_flow(path: Path) -> Flow | StateFlow:
    """A flow file of either format; AgentError naming every problem (key path and line) otherwise."""
    try:
        text = read_flow_text(path)
        try:
            compose_bounded(text, FlowLoader)  # alias bombs and absurd nesting are refused before loading
            data = yaml.load(text, Loader=FlowLoader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise AgentError(f"agent.script.flow: {path} is not valid YAML: {exc}") from exc
        if isinstance(data, dict) and "states" in data:
            return load_state_flow(text, str(path))
        return load_yaml_model(Flow, text, str(path), loader=FlowLoader).model
    except ConfigError as exc:
        raise FlowError(path, exc.issues) from None


class FlowError(AgentError):
    """A flow file is unusable; `issues` name each problem's key path and file line."""

    def __init__(self, path: Path, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__(f"agent.script.flow {path}: " + "; ".join(str(i) for i in issues))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


class ScriptAgent:
    name = "script"
    pure = True  # all it changes is the AgentCall: it may answer a turn ahead (turn.speculative_reply)

    def __init__(
        self, flow: Flow | StateFlow, default_greeting: str, classifier: AnswerClassifier | None = None
    ) -> None:
        self.flow = flow
        self.default_greeting = default_greeting
        self._per_state: dict[str, AnswerClassifier] = {}
        if isinstance(flow, StateFlow):
            # Loaded now (~0.3 s, once per process), not on the first caller's answer.
            base = classifier or default_classifier()
            for name, state in flow.states.items():
                extra = state.expect.examples if state.expect else {}
                self._per_state[name] = base.with_examples(extra) if extra else base

    def understand(self, state: str, words: str) -> Answer:
        """What an answer to `state`'s question meant (the flow's own examples for that state included)."""
        return self._per_state[state].classify(words)

    def _run(self, call: AgentCall) -> _FlowRun:
        assert isinstance(self.flow, StateFlow)
        return _FlowRun(self.flow, call, self.understand)

    async def greeting(self, call: AgentCall) -> Reply | None:
        if isinstance(self.flow, StateFlow):
            return self._run(call).enter(self.flow.start)
        if self.flow.greeting is not None:
            return self.flow.greeting.reply()
        return Reply(self.default_greeting)

    async def on_turn(self, call: AgentCall, turn: Turn) -> Reply | None:
        if isinstance(self.flow, StateFlow):
            return self._run(call).on_turn(turn)
        if turn.kind == "dtmf":
            say = self.flow.dtmf.get(turn.dtmf)
            return None if say is None else say.reply()
        if turn.kind == "silence":
            return None
        index = call.turns
        call.turns += 1
        if index >= len(self.flow.turns):
            return Reply(self.flow.goodbye, hangup=True)
        step = self.flow.turns[index]
        heard = _words(turn.words)
        for branch in step.when:
            if heard & {k.lower() for k in branch.keywords}:
                return branch.reply()
        return step.reply()

    async def on_end(self, call: AgentCall) -> None:
        return None


def _says_more_than_a_title(heard: str, answer: Answer) -> bool:
    """Free-text answers are short and can sound like an intent ("Manager" near "the manager is away",
    "Warehouse shift supervisor" near "you've reached the warehouse"): only a sentence is taken as one."""
    count = len(words_of(heard))
    if answer.intent == "repeat":
        return True  # "Pardon?" is nobody's title
    if answer.intent in ("refuse", "unsure"):
        return count >= 3 or is_guard_phrase(heard)
    return count >= 4


def _with(reply: Reply, before: list[Action]) -> Reply:
    """The same reply with `before` actions first (results captured by the answer that led to it)."""
    return Reply(
        reply.text, reply.interruptible, reply.hangup, (*before, *reply.actions), reply.silence_timeout_s
    )


@dataclass
class _FlowRun:
    """One step of a state flow for one call; all memory lives in `call.state` (current, resume, retries)."""

    flow: StateFlow
    call: AgentCall
    understand: Callable[[str, str], Answer]

    @property
    def values(self) -> dict[str, Any]:
        return {**self.flow.variables, **self.call.variables, **self.call.results}

    def enter(self, name: str, prefix: str = "", depth: int = 0) -> Reply:
        st = self.call.state
        if name == RESUME:
            name = st.get("resume") or self.flow.start
        state = self.flow.states[name]
        st["current"] = name
        st["retries"] = 0
        st.pop("confirming", None)
        st.pop("repeats", None)
        actions: list[Action] = []
        for key, value in state.set.items():
            self.call.results[key] = value  # visible to the templates of this very prompt
            actions.append(Action.set_result(key, value))
        if state.outcome is not None and state.end is None:
            actions.append(Action.set_result("outcome", state.outcome))  # the outcome, the call goes on
        text = " ".join(p for p in (prefix, render(state.say or "", self.values)) if p)
        if state.end is not None:
            actions.append(Action.end(state.end))
        if state.send_dtmf:
            actions.append(Action.send_dtmf(state.send_dtmf))
        if state.transfer:
            actions.append(Action.transfer(render(state.transfer, self.values)))
        if state.goto is not None and not state.final and depth < 8:
            # Say this and go straight on: one reply, the texts joined, every action kept in order.
            then = self.enter(state.goto, text, depth + 1)
            return Reply(
                then.text,
                interruptible=state.interruptible and then.interruptible,
                actions=(*actions, *then.actions),
                silence_timeout_s=then.silence_timeout_s,
            )
        return Reply(
            text,
            interruptible=state.interruptible,
            actions=tuple(actions),
            silence_timeout_s=None if state.final else self._silence_timeout(state),
        )

    def _silence_timeout(self, state: State) -> float:
        if state.wait:
            return state.silence_timeout_s or self.flow.settings.hold_timeout_s
        return state.silence_timeout_s or self.flow.settings.silence_timeout_s

    def _current(self) -> tuple[str, State]:
        name = self.call.state.get("current") or self.flow.start
        return name, self.flow.states[name]

    def on_turn(self, turn: Turn) -> Reply | None:
        name, state = self._current()
        if state.final:
            return None  # already saying goodbye
        if turn.kind == "silence":
            if state.wait:
                return self.enter(state.silence) if state.silence else None
            limit = self.flow.settings.retries if state.silence_retries is None else state.silence_retries
            give_up = state.silence or state.no_match
            return self._retry(state, give_up, "Sorry, I did not hear you.", limit)
        if turn.kind == "dtmf":
            goto = self.flow.dtmf.get(turn.dtmf)
            return None if goto is None else self._jump(name, goto)
        self.call.turns += 1
        words = words_of(turn.words)
        if state.intents and words:
            for intent in self.flow.intents.values():
                if intent.keywords and has_phrase(words, intent.keywords):
                    said = (
                        self._answered(name, state, turn.words, intent.answer, None) if intent.answer else []
                    )
                    self.call.results.update(intent.set)
                    extra = [Action.set_result(k, v) for k, v in intent.set.items()]
                    return _with(self._jump(name, intent.goto), [*said, *extra])
        if state.wait:
            return self.enter(state.next or RESUME)
        if state.expect is None:
            return self.enter(state.next) if state.next else None
        if not words:
            return self._not_understood(state)
        answer = self.understand(name, turn.words)
        self.call.state["answer"] = {"state": name, **answer.as_record()}  # `flow test` prints it
        if state.expect.type == "yes_no":
            return self._yes_no(name, state, turn.words, answer)
        return self._field(name, state, turn.words, answer)

    def _yes_no(self, name: str, state: State, heard: str, answer: Answer) -> Reply | None:
        assert state.expect is not None
        st = self.call.state
        if answer.low_confidence and answer.intent not in ("other", "repeat"):
            if not st.get("confirming"):  # a guess: ask once, then take what the second answer says
                st["confirming"] = heard.strip()  # kept: the record shows both answers
                text = render(state.expect.confirm, self.values)
                return Reply(text, state.interruptible, silence_timeout_s=self._silence_timeout(state))
            said = self._answered(name, state, heard, "unclear", answer)
            return _with(self.enter(state.no_match), said) if state.no_match else Reply(actions=tuple(said))
        if answer.intent == "yes" or answer.intent == "no":
            said = self._answered(name, state, heard, answer.intent, answer, answer.intent == "yes")
            goto = state.on.get(answer.intent) or state.next
            return _with(self.enter(goto), said) if goto else Reply(actions=tuple(said))
        return self._other_answer(name, state, heard, answer)

    def _field(self, name: str, state: State, heard: str, answer: Answer) -> Reply | None:
        """A date, number, title ... answer: the parsed value, unless the words are a refusal, a callback
        request and the like (a title field would otherwise record "I can't say" as the title)."""
        assert state.expect is not None
        decisive = answer.intent not in ("yes", "no", "other") and not answer.low_confidence
        if decisive and state.expect.type in ("text", "title", "any"):
            decisive = _says_more_than_a_title(heard, answer)
        if decisive:
            return self._other_answer(name, state, heard, answer)
        branch, value = parse_answer(state.expect, heard)
        if branch is None:
            return self._other_answer(name, state, heard, answer)
        said = self._answered(name, state, heard, None, None, value)
        goto = state.on.get(branch) or state.next
        return _with(self.enter(goto), said) if goto else Reply(actions=tuple(said))

    def _other_answer(self, name: str, state: State, heard: str, answer: Answer) -> Reply | None:
        """Not a value: "say that again", a refusal, "don't know", wrong person, callback, or unknown."""
        st = self.call.state
        if answer.intent == "repeat" and st.get("repeats", 0) < 3:
            st["repeats"] = st.get("repeats", 0) + 1
            text = render(state.say or "", self.values)
            return Reply(f"Sure. {text}", state.interruptible, silence_timeout_s=self._silence_timeout(state))
        if answer.intent in ("yes", "no", "other", "repeat") or answer.low_confidence:
            return self._not_understood(state)
        goto = state.on.get(answer.intent)
        if goto is None and state.intents:
            goto = next((i.goto for i in self.flow.intents.values() if i.answer == answer.intent), None)
        said = self._answered(name, state, heard, answer.intent, answer)
        goto = goto or state.no_match or state.next  # "don't know" the title: recorded, on to what is next
        if goto is None:
            return Reply(actions=tuple(said))
        return _with(self._jump(name, goto), said)

    def _not_understood(self, state: State) -> Reply | None:
        limit = self.flow.settings.retries if state.retries is None else state.retries
        return self._retry(state, state.no_match, "Sorry, I did not understand.", limit)

    def _answered(
        self,
        name: str,
        state: State,
        heard: str,
        intent: str | None,
        answer: Answer | None,
        value: Any = None,
    ) -> list[Action]:
        """Record an answer: the value under the state's capture, and beside it the words heard and, for an
        understood intent, which one and the words that decided it (evidence)."""
        key = state.capture or name
        fields: dict[str, Any] = {}
        if state.capture and value is not None:
            fields[state.capture] = value
        guess = self.call.state.get("confirming")
        fields[f"{key}_heard"] = f"{guess} / {heard.strip()}" if guess else heard.strip()
        if intent is not None:
            fields[f"{key}_intent"] = intent
            if answer is not None:
                fields[f"{key}_evidence"] = answer.evidence
        self.call.results.update(fields)
        return [Action.set_result(k, v) for k, v in fields.items()]

    def _jump(self, current: str, goto: str) -> Reply:
        if goto != current and not self.flow.states[current].wait:
            self.call.state["resume"] = current  # "hold on" comes back here
        return self.enter(goto)

    def _retry(self, state: State, give_up: str | None, sorry: str, limit: int) -> Reply | None:
        st = self.call.state
        st["retries"] = st.get("retries", 0) + 1
        if st["retries"] > limit:
            return None if give_up is None else self.enter(give_up)
        prompt = render(state.say or "", self.values)
        text = render(state.reprompt, self.values) if state.reprompt else f"{sorry} {prompt}"
        return Reply(text, state.interruptible, silence_timeout_s=self._silence_timeout(state))
