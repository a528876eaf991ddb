"""Context = what was heard (issue 17 item 4), on a real call: the caller barges into a long greeting; the
agent's next request (a real webhook over loopback) carries only the greeting's words that were played
before the cut, and the call record's bot turn says the same."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from .agent_servers import LocalServer, Request, send_json
from .bridge import Bridge
from .peers import caller_audio, sipp_scenario, voiced_packets
from .test_calls import ms, record_result

# 24 words, ~8 s of espeak-ng: the caller cuts in ~2-3 s after it starts (its speech starts 3 s after the
# answer), so the first words were heard and the last ones cannot have been.
LONG = (
    "Alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey yankee."
)


def test_after_a_barge_in_the_agent_knows_only_the_words_played(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def webhook(req: Request, handler: BaseHTTPRequestHandler) -> None:
        data = req.json()
        seen.append(data)
        if data["event"] == "start":
            send_json(handler, 200, {"say": LONG})
        elif data["event"] == "turn":
            send_json(handler, 200, {"say": "Goodbye.", "actions": [{"type": "hangup"}]})
        else:
            send_json(handler, 200, {})

    with LocalServer(webhook) as server:
        agent = {"kind": "webhook", "webhook": {"url": server.url + "/turn", "timeout_s": 5.0}}
        bridge = Bridge.start(tmp_path / "bridge", {"agent": agent})
        try:
            caller = caller_audio("Sorry, I need some help please.", lead_s=3.0, tail_s=7.0)
            wire = bridge.sipp_call(
                sipp_scenario(audio=caller.write_ulaw(tmp_path / "caller.ulaw"), hangup="bridge"),
                work=tmp_path / "sipp",
            )
            (call,) = bridge.calls()
            turns = bridge.turns(call["id"])
            greeting = turns[0]
            assert greeting["who"] == "bot" and greeting["interrupted"] == 1, turns
            heard = greeting["text"]
            words, all_words = heard.split(), LONG.split()
            # Some words were played, the later ones were not, and what is kept is the reply's beginning.
            assert 1 <= len(words) <= len(all_words) - 8, heard
            assert LONG.startswith(heard), heard
            # The agent's next request carries what was heard as the bot's line, not what it asked to say.
            (turn_req,) = [d for d in seen if d["event"] == "turn"]
            assert turn_req["transcript"][0] == ["bot", heard], turn_req["transcript"]
            (event,) = bridge.events(call["id"], "heard")
            data = json.loads(event["data"])
            assert data["said"] == LONG and data["heard"] == heard
            # The played length the words were cut at is the greeting's length on the wire.
            t0 = wire.sent[0].t
            onset = t0 + caller.speech_ms[0] / 1000
            played = [p for p in voiced_packets(wire.bot) if p.t < onset + 0.5]
            on_wire_ms = ms(played[0].t, played[-1].t + 0.02)
            assert abs(data["played_ms"] - on_wire_ms) <= 250, (data, on_wire_ms)
            record_result(
                "heard_after_barge_in",
                {
                    "played_ms": data["played_ms"],
                    "reply_audio_ms": data["audio_ms"],
                    "on_wire_voiced_ms": on_wire_ms,
                    "words_heard": len(words),
                    "words_said": len(all_words),
                },
            )
        finally:
            assert bridge.stop() == 0
