"""The `webhook` agent: every call event is POSTed as JSON to your URL; the response says what to do.

Request (one per event; `event` is `start`, `turn` or `end`):

    {"event": "turn", "agent": "webhook",
     "call": {"id": ..., "direction": "inbound", "remote_uri": ..., "variables": {...}, "results": {...},
              "state": {...}},                       # `state`: whatever your last response put in "state"
     "turn": {"kind": "speech", "words": "yes she does", "dtmf": "", "start_ms": 5120, "end_ms": 6480},
     "transcript": [["bot", "Hello ..."], ["caller", "yes she does"]]}

Headers: `Content-Type: application/json`, `X-Sipbridge-Call`, and when `agent.webhook.hmac_secret` is set
`X-Sipbridge-Signature: sha256=<hex HMAC-SHA256 of the raw body>` (verify it before trusting the body).

Response (200, JSON; every key optional):

    {"say": "Thank you.", "interruptible": true, "silence_timeout_s": 8,
     "actions": [{"type": "set_result", "name": "title", "value": "engineer"},
                 {"type": "end", "outcome": "verified"}, {"type": "hangup"},
                 {"type": "transfer", "target": "sip:hr@pbx"}, {"type": "send_dtmf", "digits": "2"}],
     "state": {...}}                                 # echoed back in the next request's call.state

A timeout, connection error, non-2xx status or unreadable body is retried `retries` times, then the turn
fails and the session says `agent.fallback_line` (the caller never hears dead air).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from sipbridge.agents.base import Action, AgentCall, AgentTurnError, Reply, Turn
from sipbridge.config import WebhookAgentConfig

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sipbridge-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_actions(items: Any) -> list[Action]:
    """Webhook/LLM action objects -> Actions; unknown types are an error (a typo must not pass silently)."""
    actions: list[Action] = []
    for item in items or []:
        kind = item.get("type")
        if kind == "hangup":
            actions.append(Action.hangup())
        elif kind == "transfer":
            actions.append(Action.transfer(str(item["target"])))
        elif kind == "send_dtmf":
            actions.append(Action.send_dtmf(str(item["digits"])))
        elif kind == "set_result":
            actions.append(Action.set_result(str(item["name"]), item.get("value")))
        elif kind == "end":
            actions.append(Action.end(str(item.get("outcome", "completed"))))
        else:
            raise ValueError(f"unknown action type {kind!r}")
    return actions


class WebhookAgent:
    name = "webhook"

    def __init__(self, config: WebhookAgentConfig) -> None:
        assert config.url is not None  # AgentConfig validates it for kind webhook
        self.config = config
        self.url = config.url
        # One client (connection pool) for every call; closed with the process.
        self._client = httpx.AsyncClient(timeout=config.timeout_s)

    def _body(self, call: AgentCall, event: str, turn: Turn | None) -> dict[str, Any]:
        return {
            "event": event,
            "agent": self.name,
            "call": {
                "id": call.call_id,
                "direction": call.direction,
                "remote_uri": call.remote_uri,
                "variables": call.variables,
                "results": call.results,
                "state": call.state.get("webhook", {}),
            },
            "turn": None
            if turn is None
            else {
                "kind": turn.kind,
                "words": turn.words,
                "dtmf": turn.dtmf,
                "start_ms": turn.start_ms,
                "end_ms": turn.end_ms,
                "silent_s": turn.silent_s,
            },
            "transcript": [list(t) for t in call.transcript],
        }

    async def _post(self, call: AgentCall, event: str, turn: Turn | None) -> dict[str, Any]:
        body = json.dumps(self._body(call, event, turn)).encode()
        headers = {"Content-Type": "application/json", "X-Sipbridge-Call": call.call_id}
        if self.config.hmac_secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.config.hmac_secret.get_secret_value(), body)
        last = ""
        for attempt in range(self.config.retries + 1):
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
                response.raise_for_status()
                data = response.json() if response.content else {}
                if not isinstance(data, dict):
                    raise ValueError("response is not a JSON object")
                return data
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "call %s: webhook %s attempt %d failed: %s", call.call_id, event, attempt + 1, last
                )
        raise AgentTurnError(f"webhook {event} failed after {self.config.retries + 1} attempt(s): {last}")

    def _reply(self, call: AgentCall, data: dict[str, Any]) -> Reply | None:
        if isinstance(data.get("state"), dict):
            call.state["webhook"] = data["state"]
        try:
            actions = parse_actions(data.get("actions"))
        except (KeyError, ValueError, AttributeError) as exc:
            raise AgentTurnError(f"webhook response has a bad action: {exc}") from exc
        say = str(data.get("say") or "")
        if not say and not actions:
            return None
        timeout = data.get("silence_timeout_s")
        return Reply(
            say,
            interruptible=bool(data.get("interruptible", True)),
            actions=tuple(actions),
            silence_timeout_s=float(timeout) if timeout else None,
        )

    async def greeting(self, call: AgentCall) -> Reply | None:
        reply = self._reply(call, await self._post(call, "start", None))
        if reply is not None and reply.spoken_text:
            call.transcript.append(("bot", reply.spoken_text))
        return reply

    async def on_turn(self, call: AgentCall, turn: Turn) -> Reply | None:
        reply = self._reply(call, await self._post(call, "turn", turn))
        if reply is not None and reply.spoken_text:
            call.transcript.append(("bot", reply.spoken_text))
        return reply

    async def on_end(self, call: AgentCall) -> None:
        try:
            await self._post(call, "end", None)
        except AgentTurnError as exc:
            log.warning("call %s: %s", call.call_id, exc)
