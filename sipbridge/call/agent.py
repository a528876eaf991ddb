"""The agent's side of a call: its `AgentCall` (transcript, results, outcome), asking it, its actions.

A failing or hanging agent never leaves the caller in dead air: the fallback line is said for it. Result
fields and the outcome are stored the moment a reply sets them (a crash later keeps them); actions that must
wait until the caller heard the reply (DTMF, transfer, hang-up) run at its PlaybackDone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sipbridge import frames as f
from sipbridge.agents import Action, Agent, AgentCall, Reply, Turn
from sipbridge.call.context import CallContext, log
from sipbridge.call.speaker import Speaker

AGENT_TIMEOUT_S = 10.0


class AgentDriver:
    def __init__(
        self, ctx: CallContext, agent: Agent, speaker: Speaker, opt_out: Callable[[str], None]
    ) -> None:
        self.ctx = ctx
        self.agent = agent
        self.speaker = speaker
        self.opt_out = opt_out  # an `opt_out` action (an LLM's tool): the dialer's opt-out, reply kept
        self.call: AgentCall | None = None

    def open(self, direction: str, variables: dict[str, Any]) -> None:
        s = self.ctx.start
        self.call = AgentCall(s.call_id, s.remote_uri, direction=direction, variables=variables)
        self.ctx.store.set_agent_results(s.call_id, agent=self.agent.name)

    async def ask(self, call: Awaitable[Reply | None]) -> Reply | None:
        """A failing or hanging agent gets the fallback line said for it: the caller never hears dead air."""
        try:
            reply: Reply | None = await asyncio.wait_for(call, AGENT_TIMEOUT_S)
            return reply
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("call %s: agent %s failed: %r", self.ctx.call_id, self.agent.name, exc)
            self.ctx.event("agent_error", {"error": repr(exc)})
            return Reply(self.ctx.config.agent.fallback_line)

    async def on_turn(self, turn: Turn) -> Reply | None:
        assert self.call is not None
        return await self.ask(self.agent.on_turn(self.call, turn))

    async def greeting(self) -> Reply | None:
        assert self.call is not None
        return await self.ask(self.agent.greeting(self.call))

    async def on_end(self) -> None:
        if self.call is not None:
            await self.agent.on_end(self.call)

    async def on_dtmf(self, digit: str) -> None:
        self.ctx.event("dtmf", {"digit": digit})
        reply = await self.on_turn(Turn("dtmf", dtmf=digit))
        if reply is not None:
            self.speaker.say(reply)

    def caller_said(self, words: str) -> None:
        assert self.call is not None
        self.call.transcript.append(("caller", words))

    def adopt(self, call: AgentCall) -> None:
        """A speculative answer is used: the copy of the call state it was made on (with the caller's turn
        and the agent's answer) becomes the call's state (sipbridge/call/speculation.py)."""
        assert self.call is not None
        vars(self.call).update(vars(call))

    def forget_unheard(self, said: str, heard: str) -> None:
        """A reply cut by barge-in: only its heard words stay in the history (none: it was never said), so
        the agent's next turn answers what the caller heard."""
        call = self.call
        if call is None or heard == said:
            return
        for i in range(len(call.transcript) - 1, -1, -1):
            if call.transcript[i] == ("bot", said):
                if heard:
                    call.transcript[i] = ("bot", heard)
                else:  # cut before a word was heard: the caller was never told it
                    del call.transcript[i]
                break

    def apply_now(self, actions: Sequence[Action]) -> None:
        """Result fields and the outcome are stored as soon as the agent sets them (a crash keeps them)."""
        call = self.call
        changed = False
        for action in actions:
            if call is None:
                break
            if action.kind == "set_result":
                call.results[action.arg] = action.value
                if action.arg == "outcome":  # the outcome without ending the call (e.g. before a transfer)
                    call.outcome = str(action.value)
                changed = True
            elif action.kind == "end":
                call.outcome = action.arg
                changed = True
            elif action.kind == "opt_out":
                self.opt_out(action.arg or "agent opt_out")
        if changed and call is not None:
            self.ctx.store.set_agent_results(self.ctx.call_id, results=call.results, outcome=call.outcome)

    def after_playback(self, reply: Reply) -> bool:
        """Actions that wait until the caller has heard the reply carrying them. False: the call is over
        (hung up) or being transferred; True: it goes on."""
        ctx = self.ctx
        ends = reply.hangup
        for action in reply.all_actions():
            if action.kind == "send_dtmf":
                ctx.event("send_dtmf", {"digits": action.arg})
                ctx.send(f.SendDtmf(ctx.call_id, action.arg))
            elif action.kind == "transfer":
                ctx.event("transfer", {"target": action.arg})
                ctx.send(f.Transfer(ctx.call_id, action.arg))
                return False  # the call ends when the transfer is accepted (TransferStatus)
            elif action.kind in ("hangup", "end"):
                ends = True
        if ends:
            ctx.hangup(200, "agent ended the call")
        return not ends

    def on_transfer_status(self, frame: f.TransferStatus) -> None:
        ctx = self.ctx
        ctx.event("transfer_status", {"code": frame.code, "reason": frame.reason})
        # PJSIP reports the REFER's 202 as "100 Accepted", then the transferee's progress (NOTIFY sipfrag):
        # anything below 300 means the far end took the transfer, so a blind transfer is done.
        if frame.code < 300:
            ctx.hangup(200, f"transferred ({frame.code} {frame.reason})")
        else:
            log.warning("call %s: transfer failed: %d %s", ctx.call_id, frame.code, frame.reason)
            self.speaker.say(Reply(ctx.config.agent.fallback_line))
