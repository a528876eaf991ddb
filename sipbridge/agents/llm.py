"""The `llm` agent: any OpenAI-compatible chat completions endpoint, streamed into the speech engine.

Each caller turn sends the conversation so far (system prompt templated with `{call variables}`, then the
transcript) with `stream: true`. Text deltas are cut into pieces at clause ends (`, . ; : ! ?`) or every
few words and put into the reply's `TextStream` as they arrive, so the engine starts speaking the first
clause while the model is still writing the rest (input streaming). Why clauses and not single tokens:
espeak starts one process per piece and Dia2 phrases better with a few words of look-ahead; a clause is
the smallest piece that still sounds natural, and arrives a few hundred ms into the stream.

Function calls (the `tools` enabled in `agent.llm.tools`) become actions once the stream ends:
`hang_up()`, `end_call(outcome)`, `set_result(name, value)`, `transfer(target?)`, `send_dtmf(digits)`,
`opt_out(words?)` (outbound calls only: the callee asked not to be called again; sipbridge/dialer/optout.py).
Tool results are not sent back for a second completion: the actions simply happen after the reply is said.

Failure before any text (connect error, HTTP error, nothing within `timeout_s`) fails the turn, and the
session says `agent.fallback_line`; a failure mid-stream ends the reply where it got to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from sipbridge.agents.answer_examples import INTENTS
from sipbridge.agents.answers import guard_intent, normalise
from sipbridge.agents.base import Action, AgentCall, AgentTurnError, Reply, TextStream, Turn
from sipbridge.agents.flow import render
from sipbridge.config import LlmAgentConfig

log = logging.getLogger(__name__)

_MAX_WORDS = 8  # flush a piece after this many words even without punctuation
_CLAUSE_END = re.compile(r"[,.;:!?]$")

TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "hang_up": {"description": "Hang up once your reply has been said.", "parameters": {}},
    "end_call": {
        "description": "End the call with an outcome (e.g. verified, refused, voicemail) after your reply.",
        "parameters": {"outcome": {"type": "string"}},
        "required": ["outcome"],
    },
    "set_result": {
        "description": "Record an answer the caller gave (e.g. name=job_title, value=engineer).",
        "parameters": {"name": {"type": "string"}, "value": {"type": "string"}},
        "required": ["name", "value"],
    },
    "record_answer": {
        "description": (
            "Record what the caller answered to one of your questions: the intent of the answer (yes, no,"
            " refuse = declines to tell / policy / written request / call HR / The Work Number, unsure ="
            " does not know, wrong_person, repeat, callback, other, unclear) and the caller's exact words"
            " that decided it. Never record a refusal or a don't-know as yes or no."
        ),
        "parameters": {
            "question": {"type": "string", "description": "result field, e.g. employment_confirmed"},
            "intent": {"type": "string", "enum": [*INTENTS, "unclear"]},
            "evidence": {"type": "string", "description": "the caller's words, quoted exactly"},
            "value": {"type": "string", "description": "optional: a date, title or other value given"},
        },
        "required": ["question", "intent", "evidence"],
    },
    "transfer": {
        "description": "Transfer the caller to a person (SIP URI; default: the configured operator).",
        "parameters": {"target": {"type": "string"}},
    },
    "opt_out": {
        "description": "The person asked not to be called again (e.g. 'stop calling me', 'take me off your"
        " list'): their number goes on the do-not-call list, a confirmation is said and the call ends.",
        "parameters": {"words": {"type": "string", "description": "What they said."}},
    },
    "send_dtmf": {
        "description": "Press keypad digits (to navigate a phone menu).",
        "parameters": {"digits": {"type": "string"}},
        "required": ["digits"],
    },
}


def tool_definitions(names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        spec = TOOL_SCHEMAS[name]
        params = {"type": "object", "properties": spec["parameters"], "required": spec.get("required", [])}
        out.append(
            {
                "type": "function",
                "function": {"name": name, "description": spec["description"], "parameters": params},
            }
        )
    return out


@dataclass
class _Chunker:
    """Token deltas -> speakable pieces (whole words, ending at a clause end or after _MAX_WORDS)."""

    buffer: str = ""

    def feed(self, delta: str) -> list[str]:
        self.buffer += delta
        pieces: list[str] = []
        # Only complete words can be flushed ("Hel" + "lo" must not split): a word followed by whitespace,
        # or one ending a clause ("line." at the end of a stream that pauses must not wait for more).
        while True:
            words = re.split(r"(\s+)", self.buffer)
            if _CLAUSE_END.search(words[-1]):
                words.append("")
            complete = len(words) - 1  # the last element may be a partial word
            taken, count, cut = "", 0, -1
            for i in range(0, complete, 2):
                word = words[i]
                taken_upto = "".join(words[: i + 2])
                if word:
                    count += 1
                if word and (_CLAUSE_END.search(word) or count >= _MAX_WORDS):
                    cut, taken = i, taken_upto
                    break
            if cut < 0:
                return pieces
            pieces.append(taken.strip() + " ")
            self.buffer = self.buffer[len(taken) :]

    def flush(self) -> list[str]:
        rest, self.buffer = self.buffer.strip(), ""
        return [rest] if rest else []


@dataclass
class _ToolCall:
    name: str = ""
    arguments: str = ""


@dataclass
class LlmAgent:
    config: LlmAgentConfig
    greeting_text: str
    name: str = "llm"
    _client: httpx.AsyncClient | None = None
    _tasks: dict[str, set[asyncio.Task[None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # No overall timeout: a reply streams for as long as it speaks; connect/first byte are bounded.
        timeout = httpx.Timeout(None, connect=self.config.timeout_s, read=self.config.timeout_s)
        headers = {}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def greeting(self, call: AgentCall) -> Reply | None:
        # A fixed first line: no model round trip before the caller hears anything.
        text = render(self.greeting_text, call.variables)
        call.transcript.append(("bot", text))
        return Reply(text)

    def _messages(self, call: AgentCall) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": render(self.config.system_prompt, call.variables)}]
        for who, text in call.transcript:
            messages.append({"role": "assistant" if who == "bot" else "user", "content": text or "(silence)"})
        return messages

    async def on_turn(self, call: AgentCall, turn: Turn) -> Reply | None:
        if turn.kind == "silence":
            return None
        if turn.kind == "dtmf":
            call.transcript.append(("caller", f"(pressed {turn.dtmf})"))
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": self._messages(call),
            "stream": True,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        # opt_out only where there is a number we called (an outbound call), never inbound.
        offered = [t for t in self.config.tools if t != "opt_out" or call.direction == "outbound"]
        if offered:
            body["tools"] = tool_definitions(offered)
        stream = TextStream()
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self._complete(call, body, stream, started), name=f"llm-{call.call_id[:8]}"
        )
        tasks = self._tasks.setdefault(call.call_id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(started), self.config.timeout_s)
        except TimeoutError:
            task.cancel()
            raise AgentTurnError(f"llm: no reply within {self.config.timeout_s} s") from None
        except AgentTurnError:
            raise
        return Reply(stream)

    async def _complete(
        self, call: AgentCall, body: dict[str, Any], stream: TextStream, started: asyncio.Future[None]
    ) -> None:
        chunker = _Chunker()
        tools: dict[int, _ToolCall] = {}
        url = self.config.base_url.rstrip("/") + "/chat/completions"

        def put(pieces: list[str]) -> None:
            for piece in pieces:
                stream.put(piece)
                if not started.done():
                    started.set_result(None)

        try:
            assert self._client is not None
            async with self._client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    detail = (await response.aread())[:200].decode(errors="replace")
                    raise AgentTurnError(f"llm: HTTP {response.status_code}: {detail}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    for choice in event.get("choices", []):
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            put(chunker.feed(delta["content"]))
                        for tc in delta.get("tool_calls") or []:
                            acc = tools.setdefault(int(tc.get("index", 0)), _ToolCall())
                            fn = tc.get("function") or {}
                            acc.name += fn.get("name") or ""
                            acc.arguments += fn.get("arguments") or ""
            put(chunker.flush())
        except asyncio.CancelledError:
            stream.close()
            raise
        except Exception as exc:
            error = exc if isinstance(exc, AgentTurnError) else AgentTurnError(f"llm: {exc!r}")
            if not started.done():
                started.set_exception(error)
            else:
                log.warning("call %s: llm stream broke off: %s", call.call_id, error)
            stream.close()
            return
        actions = self._actions(call, list(tools.values()))
        stream.close(actions)
        if not started.done():
            started.set_result(None)  # tools only, no text
        call.transcript.append(("bot", stream.text))

    def _actions(self, call: AgentCall, calls: list[_ToolCall]) -> list[Action]:
        actions = []
        for tc in calls:
            try:
                args = json.loads(tc.arguments) if tc.arguments.strip() else {}
            except json.JSONDecodeError:
                log.warning(
                    "call %s: llm tool %s has unreadable arguments %r", call.call_id, tc.name, tc.arguments
                )
                continue
            if tc.name == "hang_up":
                actions.append(Action.hangup())
            elif tc.name == "end_call":
                actions.append(Action.end(str(args.get("outcome", "completed"))))
            elif tc.name == "set_result" and "name" in args:
                problem = _set_result_problem(args)
                if problem is None:
                    actions.append(Action.set_result(str(args["name"]), args.get("value")))
                else:
                    log.warning("call %s: llm set_result(%s) refused: %s", call.call_id, args, problem)
            elif tc.name == "record_answer":
                recorded = record_answer(call, args)
                if isinstance(recorded, str):
                    log.warning("call %s: llm record_answer(%s) refused: %s", call.call_id, args, recorded)
                else:
                    actions.extend(recorded)
            elif tc.name == "transfer" and (args.get("target") or self.config.transfer_target):
                actions.append(Action.transfer(str(args.get("target") or self.config.transfer_target)))
            elif tc.name == "opt_out" and call.direction == "outbound":
                actions.append(Action.opt_out(f"llm opt_out tool: {str(args.get('words', ''))[:120]}"))
            elif tc.name == "send_dtmf" and args.get("digits"):
                actions.append(Action.send_dtmf(str(args["digits"])))
            else:
                log.warning(
                    "call %s: llm called unknown or incomplete tool %s(%s)", call.call_id, tc.name, args
                )
        return actions

    async def on_end(self, call: AgentCall) -> None:
        for task in list(self._tasks.pop(call.call_id, set())):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# ------------------------------------------------------------------------------ answers, validated

ANSWER_INTENTS = frozenset([*INTENTS, "unclear"])
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,47}")


def _set_result_problem(args: dict[str, Any]) -> str | None:
    """set_result may not bypass record_answer's checks by writing an answer's intent field itself."""
    name = str(args["name"])
    if not _FIELD.fullmatch(name):
        return "name must be lower_snake_case, at most 48 characters"
    if name.endswith("_intent") and args.get("value") not in ANSWER_INTENTS:
        return f"an _intent field takes one of {sorted(ANSWER_INTENTS)}"
    return None


def record_answer(call: AgentCall, args: dict[str, Any]) -> list[Action] | str:
    """The tool's arguments checked, then recorded as a script flow records an answer: `<question>` (True /
    False for yes / no, or the value given), `<question>_intent`, `<question>_evidence`, `<question>_heard`.
    A problem comes back as a string: the intent outside the set, evidence the caller never said, or a yes/no
    whose evidence is a refusal or a "don't know" (the safety net of answers.py: it is recorded as that)."""
    question, intent = str(args.get("question", "")), str(args.get("intent", ""))
    evidence = str(args.get("evidence", "")).strip()
    if not _FIELD.fullmatch(question):
        return "question must be lower_snake_case, at most 48 characters"
    if intent not in ANSWER_INTENTS:
        return f"intent {intent!r} is not one of {sorted(ANSWER_INTENTS)}"
    said = [text for who, text in call.transcript if who == "caller"]
    if not evidence or not any(normalise(evidence) in normalise(text) for text in said):
        return "evidence must quote words the caller said"
    heard = next(text for text in reversed(said) if normalise(evidence) in normalise(text))
    guarded = guard_intent(heard)
    if intent in ("yes", "no") and guarded is not None:
        intent, evidence = guarded  # "yes, but that's confidential" is a refusal
    fields: dict[str, Any] = {}
    if intent in ("yes", "no"):
        fields[question] = intent == "yes"
    elif args.get("value") not in (None, "") and intent == "other":
        fields[question] = str(args["value"])[:200]
    fields |= {
        f"{question}_intent": intent,
        f"{question}_evidence": evidence[:300],
        f"{question}_heard": heard,
    }
    call.results.update(fields)
    return [Action.set_result(k, v) for k, v in fields.items()]
