"""The webhook agent through real SIP calls, against a real HTTP server on loopback.

Three calls at once, told apart by the number dialled: `ok` (greeting + DTMF, a reply that captures a result
and ends the call), `slow` (the turn's request times out) and `broken` (every request answers 500). The
failing ones must fall back to `agent.fallback_line`, never to dead air.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .agent_servers import LocalServer, Request, send_json
from .bridge import Bridge
from .peers import caller_audio, sipp_scenario
from .test_calls import assert_clean

SECRET = "hush"
FALLBACK = "Sorry, I had a problem. Could you say that again?"


def dialled(req: Request) -> str:
    return str(req.json()["call"]["variables"]["local_uri"]).split(":")[1].split("@")[0]


def webhook(req: Request, handler: BaseHTTPRequestHandler) -> None:
    data, who = req.json(), dialled(req)
    if who == "broken":
        send_json(handler, 500, {"error": "boom"})
    elif data["event"] == "start":
        dtmf = [{"type": "send_dtmf", "digits": "5"}] if who == "ok" else []
        send_json(
            handler, 200, {"say": "Hello, this is the help line.", "state": {"step": 1}, "actions": dtmf}
        )
    elif data["event"] == "end":
        send_json(handler, 200, {})
    elif who == "slow":
        time.sleep(2.5)  # past timeout_s (1 s) on both attempts
        send_json(handler, 200, {"say": "Too late."})
    else:
        send_json(handler, 200, {
            "say": "Thank you, goodbye.",
            "actions": [{"type": "set_result", "name": "heard", "value": data["turn"]["words"]},
                        {"type": "set_result", "name": "step", "value": data["call"]["state"]["step"]},
                        {"type": "end", "outcome": "helped"}],
        })  # fmt: skip


def test_webhook_agent_reply_timeout_and_500(tmp_path: Path) -> None:
    with LocalServer(webhook) as server:
        agent = {
            "kind": "webhook",
            "fallback_line": FALLBACK,
            "webhook": {"url": server.url + "/turn", "timeout_s": 1.0, "retries": 1, "hmac_secret": SECRET},
        }
        bridge = Bridge.start(tmp_path / "bridge", {"agent": agent})
        try:
            baseline = bridge.health()
            caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.0, tail_s=13.0)
            audio = caller.write_ulaw(tmp_path / "caller.ulaw")
            scenarios = {
                name: sipp_scenario(
                    audio=audio, user=name, hangup="bridge" if name == "ok" else "caller", talk_ms=15000
                )
                for name in ("ok", "slow", "broken")
            }
            wires = bridge.sipp_calls(scenarios, work=tmp_path)
            calls = bridge.calls_by_user()

            # Every request is signed with the shared secret over the exact body.
            for req in server.requests:
                expected = "sha256=" + hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
                assert req.headers["X-Sipbridge-Signature"] == expected
            ok = calls["ok"]
            assert ok["agent_outcome"] == "helped"
            results = json.loads(ok["results"])
            assert "help" in results["heard"].lower() and results["step"] == 1
            assert [t["text"] for t in bridge.turns(ok["id"]) if t["who"] == "bot"] == [
                "Hello, this is the help line.",
                "Thank you, goodbye.",
            ]
            turn_req = next(
                r.json() for r in server.requests if dialled(r) == "ok" and r.json()["event"] == "turn"
            )
            assert turn_req["turn"]["kind"] == "speech" and turn_req["turn"]["end_ms"] > 3000
            # send_dtmf: RFC 2833 events (payload type 101) went out to the caller.
            assert any(p.pt == 101 for p in wires["ok"].bot)

            slow = calls["slow"]
            slow_bot = bridge.bot_said(slow["id"])
            assert slow_bot == ["Hello, this is the help line.", FALLBACK]
            assert "ReadTimeout" in json.loads(bridge.events(slow["id"], "agent_error")[0]["data"])["error"]
            broken = calls["broken"]
            broken_bot = bridge.bot_said(broken["id"])
            assert broken_bot == [FALLBACK, FALLBACK]  # greeting and turn: never dead air
            assert "500" in json.loads(bridge.events(broken["id"], "agent_error")[0]["data"])["error"]
            starts = [r for r in server.requests if dialled(r) == "broken" and r.json()["event"] == "start"]
            assert len(starts) == 2  # one retry
            assert all(c["outcome"] == "completed" for c in calls.values())
            assert_clean(bridge, baseline)
        finally:
            assert bridge.stop() == 0
