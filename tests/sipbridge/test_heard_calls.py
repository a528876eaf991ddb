"""Context = what was heard (issue 17 item 4), on a real call: the caller barges into a long greeting; the
agent's next request (a real webhook over loopback) carries only the greeting's words that were played
before the cut, and the call record's bot turn says the same."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

from .agent_servers import LocalServer, Request, send_json
from .bridge import Bridge
from .peers import caller_audio, voiced_packets
from .test_calls import ms, record_result, script_agent

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
            wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp")
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


def test_a_backchannel_does_not_cut_the_bot_but_a_short_no_does(tmp_path: Path) -> None:
    """`vad.backchannel_ms: 700`: the caller's "Okay." (~500 ms) during the greeting lets it go on and never
    reaches the agent; the caller's "No." (~430 ms, as short) 3 s later cuts it and is answered."""
    flow = {"greeting": {"say": LONG}, "turns": [{"say": "Goodbye.", "hangup": True}]}
    config = {"agent": script_agent(tmp_path, flow), "vad": {"backchannel_ms": 700}}
    bridge = Bridge.start(tmp_path / "bridge", config)
    try:
        okay = caller_audio("Okay.", lead_s=3.0, tail_s=3.0)
        no = caller_audio("No.", lead_s=0.0, tail_s=5.0)
        wire, call = bridge.caller_plays(np.concatenate([okay.pcm, no.pcm]), work=tmp_path / "sipp")
        turns = sorted(bridge.turns(call["id"]), key=lambda t: t["start_ms"])  # bot rows land at their end
        assert [t["who"] for t in turns] == ["bot", "caller", "bot"], [dict(t) for t in turns]
        assert turns[1]["text"].lower().startswith("no"), dict(turns[1])
        assert turns[0]["interrupted"] == 1  # by the "No."
        (event,) = bridge.events(call["id"], "backchannel")
        assert json.loads(event["data"])["words"].lower().startswith("okay")
        # On the wire the greeting kept playing through the "Okay." and past it, until the "No.".
        t0 = wire.sent[0].t
        okay_end = t0 + okay.speech_ms[1] / 1000
        no_on = t0 + (len(okay.pcm) + 8 * no.speech_ms[0]) / 8000
        greeting = [p.t for p in voiced_packets(wire.bot) if p.t < no_on + 2.0]
        assert greeting[0] < okay_end - 0.5 and greeting[-1] > no_on, (greeting[0], greeting[-1])
        assert max(np.diff([t for t in greeting if okay_end - 0.6 < t < okay_end + 1.0])) < 0.5
        assert bridge.metrics()["sipbridge_barge_ins_total"] == 0  # the session cut it, not the worker
        record_result(
            "backchannel_700",
            {
                "backchannel_ms": 700,
                "okay_speech_ms": round(okay.speech_ms[1] - okay.speech_ms[0]),
                "bot_audio_after_okay_end_ms": ms(okay_end, greeting[-1] + 0.02),
                "short_no_end_to_cut_ms": turns[0]["end_ms"] - turns[1]["end_ms"],
            },
        )
    finally:
        assert bridge.stop() == 0


def test_after_a_barge_in_dia2s_context_keeps_only_the_frames_played(tmp_path: Path) -> None:
    """The same on the tiny Dia2 checkpoint (CPU, random weights: noise, but Dia2's real context path): the
    cut greeting's unplayed frames leave the call's Dia2 conversation before the next reply is made, and
    what stays is what the wire carried (whole 80 ms frames). With turn.speculative_reply the (pure) script
    agent answers at the caller's pause and Dia2 may speak ahead on a mark of its context (rewound if the
    guess is dropped): either way the trim lands first, since a guess is made only once the cut reply is
    over (tests/sipbridge/test_dia2_speculation.py covers the mark itself)."""
    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
    engine = {
        "kind": "dia2",
        "dia2": {"model": str(tiny), "device": "cpu", "dtype": "float32", "max_batch": 2},
    }
    flow = {"greeting": LONG, "turns": [{"say": "Goodbye.", "hangup": True}]}
    config = {"engine": engine, "agent": script_agent(tmp_path, flow), "turn": {"speculative_reply": True}}
    bridge = Bridge.start(tmp_path / "bridge", config)
    try:
        caller = caller_audio("Sorry, I need some help please.", lead_s=3.0, tail_s=7.0)
        _wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp", wait_s=90)
        turns = bridge.turns(call["id"])
        assert [t["who"] for t in turns] == ["bot", "caller", "bot"], turns
        assert turns[0]["interrupted"] == 1
        (event,) = bridge.events(call["id"], "heard")
        heard = json.loads(event["data"])
        lines = list(bridge.proc.seen)
        trims = [i for i, line in enumerate(lines) if "dia2 context keeps" in line]
        assert len(trims) == 1, trims
        kept, dropped = map(
            int, re.findall(r"keeps (\d+) heard frames .* drops (\d+) unheard", lines[trims[0]])[0]
        )
        assert kept == int(heard["played_ms"] / 80 + 1e-6) and kept >= 1, (kept, heard)
        assert dropped >= 1  # the unplayed rest left the context
        if heard["whole_audio"]:  # generation finished before the cut: every made frame is accounted for
            assert abs(kept + dropped - heard["audio_ms"] / 80) <= 1, (kept, dropped, heard)
        # The trim ran before the next reply was made (the session's ops run in order): that reply's
        # context is the greeting's played frames, the caller's turn, nothing unheard.
        reply = [i for i, line in enumerate(lines) if re.search(r"utterance 2 first audio", line)]
        assert reply and trims[0] < reply[0], (trims, reply)
        guesses = [json.loads(e["data"]) for e in bridge.events(call["id"], "speculative_reply")]
        assert guesses[-1]["used"] is True, guesses
        record_result(
            "dia2_heard_after_barge_in",
            {"played_ms": heard["played_ms"], "frames_kept": kept, "frames_dropped": dropped},
        )
    finally:
        assert bridge.stop() == 0
