"""The agent interface: who decides what the bot says, one `AgentCall` of state per call.

Agents are async (webhooks and LLMs are network calls) and stateless themselves; everything a call needs
between turns lives in its `AgentCall`, which the supervisor's call session owns.

The session drives an agent with three calls:

- `greeting(call)`: the call is up (`call.direction`, `call.variables` are set) -> the first reply;
- `on_turn(call, turn)`: the caller said something (`turn.kind == "speech"`), pressed a key (`"dtmf"`) or
  stayed silent for the reply's `silence_timeout_s` (`"silence"`) -> a reply or None;
- `on_end(call)`: the call is over (free per-call resources; results are already stored).

An agent whose `on_turn` changes nothing but the `AgentCall` it is given (no request leaves, nothing is
written) sets `pure = True`: the session may then ask it about a turn before the turn is over, on a copy of
the call, and throw the answer away if the caller goes on (turn.speculative_reply). Webhook and LLM agents
are not pure (the far end sees every request), so they are only asked once a turn has ended.

A `Reply` carries text (a `str`, or a `TextStream` fed while the agent is still producing it, so speech can
start before the reply is complete) and `Action`s: hang up, transfer (SIP REFER), send DTMF, set a result
field, end the call with an outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ActionKind = Literal["hangup", "transfer", "send_dtmf", "set_result", "end", "opt_out"]


@dataclass(frozen=True)
class Action:
    """Something the agent wants done besides speaking.

    `set_result` and `end` (its outcome) are recorded at once; `hangup`, `transfer`, `send_dtmf` and the
    hang-up implied by `end` wait until the reply carrying them has been played, so the caller hears it.
    """

    kind: ActionKind
    arg: str = ""  # transfer target URI, DTMF digits, result field name, or outcome
    value: Any = None  # set_result's value

    @classmethod
    def hangup(cls) -> Action:
        return cls("hangup")

    @classmethod
    def transfer(cls, target: str) -> Action:
        return cls("transfer", target)

    @classmethod
    def send_dtmf(cls, digits: str) -> Action:
        return cls("send_dtmf", digits)

    @classmethod
    def set_result(cls, name: str, value: Any) -> Action:
        return cls("set_result", name, value)

    @classmethod
    def end(cls, outcome: str) -> Action:
        return cls("end", outcome)

    @classmethod
    def opt_out(cls, why: str = "") -> Action:
        """The callee asked not to be called again (outbound): do-not-call list, confirmation, hang-up."""
        return cls("opt_out", why)

    @property
    def after_playback(self) -> bool:
        return self.kind in ("hangup", "transfer", "send_dtmf", "end")


class TextStream:
    """Reply text produced piece by piece (LLM tokens): the engine speaks it while it is still arriving.

    The producer `put`s pieces and `close`s it (optionally with actions it learnt late, e.g. LLM function
    calls that follow the text); the engine iterates it. `text` is what was produced so far, for the record.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.pieces: list[str] = []
        self.actions: list[Action] = []
        self.closed = False
        self.first_piece_at: float | None = None  # monotonic time the first piece was put (latency report)

    def put(self, piece: str) -> None:
        if piece and not self.closed:
            if self.first_piece_at is None:
                self.first_piece_at = time.monotonic()
            self.pieces.append(piece)
            self._queue.put_nowait(piece)

    def close(self, actions: list[Action] | None = None) -> None:
        if not self.closed:
            self.actions.extend(actions or [])
            self.closed = True
            self._queue.put_nowait(None)

    @property
    def text(self) -> str:
        return "".join(self.pieces).strip()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            piece = await self._queue.get()
            if piece is None:
                return
            yield piece


@dataclass(frozen=True)
class Reply:
    """Something to say (and do). `interruptible=False` plays through barge-in (legal disclosures).

    `silence_timeout_s`: once this reply has been played, a caller silent for that long produces a
    `Turn(kind="silence")`; None = wait forever.
    """

    text: str | TextStream = ""
    interruptible: bool = True
    hangup: bool = False  # hang up once this has been played (same as Action.hangup())
    actions: tuple[Action, ...] = ()
    silence_timeout_s: float | None = None

    @property
    def spoken_text(self) -> str:
        return self.text if isinstance(self.text, str) else self.text.text

    def all_actions(self) -> list[Action]:
        """Static actions plus those a stream delivered when it closed."""
        late = self.text.actions if isinstance(self.text, TextStream) else []
        return [*self.actions, *late]

    def ends_call(self) -> bool:
        return self.hangup or any(a.kind in ("hangup", "end", "transfer") for a in self.all_actions())


@dataclass(frozen=True)
class Turn:
    """What the caller did: spoke (`words`, possibly empty), pressed a key (`dtmf`), or stayed silent."""

    kind: Literal["speech", "dtmf", "silence"] = "speech"
    words: str = ""
    dtmf: str = ""
    start_ms: int | None = None  # call media time of the caller's speech
    end_ms: int | None = None
    asr_ms: float | None = None
    silent_s: float | None = None  # for silence turns: how long the caller was silent


@dataclass
class AgentCall:
    call_id: str
    remote_uri: str
    direction: str = "inbound"
    variables: dict[str, Any] = field(default_factory=dict)  # call variables (contact fields, SIP data)
    turns: int = 0  # caller turns answered so far
    state: dict[str, Any] = field(default_factory=dict)  # the agent's own per-call memory
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (who, text)
    results: dict[str, Any] = field(default_factory=dict)  # captured fields (stored with the call)
    outcome: str | None = None  # the agent's verdict (stored as results["outcome"])


class Agent(Protocol):
    name: str

    async def greeting(self, call: AgentCall) -> Reply | None: ...

    async def on_turn(self, call: AgentCall, turn: Turn) -> Reply | None: ...

    async def on_end(self, call: AgentCall) -> None: ...


class AgentError(Exception):
    """The agent's configuration is unusable (raised at start, never mid-call)."""


class AgentTurnError(Exception):
    """One turn failed (webhook down, LLM error): the session says the fallback line instead."""
