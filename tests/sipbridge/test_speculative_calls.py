"""Speculative replies on real calls (turn.speculative_reply, sipbridge/call/speculation.py).

The reply to early ASR's words is made inside the silence and held; it is sent when the turn ends with those
words (a caller who said all they had to say), and dropped unheard, with the agent's state untouched, when the
caller goes on after the pause."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .bridge import Bridge
from .peers import caller_audio, voiced_packets
from .test_calls import MAIN_FLOW, script_agent


def speculation(bridge: Bridge, call_id: str) -> list[dict[str, object]]:
    return [json.loads(row["data"]) for row in bridge.events(call_id, "speculative_reply")]


def test_a_caller_who_said_it_all_gets_the_reply_made_in_the_silence(tmp_path: Path) -> None:
    config = {"agent": script_agent(tmp_path, MAIN_FLOW), "turn": {"speculative_reply": True}}
    bridge = Bridge.start(tmp_path / "bridge", config)
    try:
        caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.5, tail_s=6.0)
        wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp")
        turns = bridge.turns(call["id"])
        assert [t["who"] for t in turns] == ["bot", "caller", "bot"]
        assert turns[2]["text"] == MAIN_FLOW["turns"][0]["say"]  # type: ignore[index]
        (used,) = speculation(bridge, call["id"])
        assert used["used"] is True and used["audio_ahead"] is True, used
        timing = bridge.latency(call["id"])
        assert timing["speculative"] is True and timing["early_asr"] is True
        assert wire.reply(), "the reply was heard"
        assert bridge.metrics()['sipbridge_speculative_replies_total{result="used"}'] == 1
    finally:
        assert bridge.stop() == 0


def test_a_caller_who_goes_on_never_hears_the_reply_made_at_the_pause(tmp_path: Path) -> None:
    """A 3.5 s mid-sentence pause under a 5 s hangover: the guess (agent + espeak) is made in it, then the
    caller goes on. Its audio never reaches the wire, and the agent answers the whole sentence as its first
    turn: had the guess stayed in its state, the script would be at its second step."""
    flow = {
        "greeting": {"say": "Hello.", "interruptible": False},
        "turns": [{"say": "First step.", "hangup": True}, {"say": "Second step.", "hangup": True}],
    }
    config = {
        "agent": script_agent(tmp_path, flow),
        "vad": {"stop_hangover_ms": 5000},
        "turn": {"speculative_reply": True},
    }
    bridge = Bridge.start(tmp_path / "bridge", config)
    try:
        first = caller_audio("I need some help", lead_s=3.5, tail_s=3.5)
        second = caller_audio("for a reference letter.", lead_s=0.0, tail_s=8.0)
        wire, call = bridge.caller_plays(
            np.concatenate([first.pcm, second.pcm]),
            work=tmp_path / "sipp", wait_s=90, timeout_ms=60000, sipp_timeout_s=80,
        )  # fmt: skip
        turns = bridge.turns(call["id"])
        assert [t["who"] for t in turns] == ["bot", "caller", "bot"]
        assert "need" in turns[1]["text"].lower() and "reference" in turns[1]["text"].lower()
        assert turns[2]["text"] == "First step."  # the discarded guess left no turn in the agent's state
        events = speculation(bridge, call["id"])
        dropped = [e for e in events if not e["used"]]
        assert dropped and dropped[0]["why"] == "the caller went on", events
        assert int(dropped[0]["made_ms"]) > 0, "the guess's audio was made (and then dropped)"  # type: ignore[call-overload]
        assert [e["used"] for e in events][-1] is True  # the whole sentence's reply was made ahead too
        # On the wire: no bot audio from the caller's first word to their last.
        caller_voiced = voiced_packets(wire.sent)
        start, stop = caller_voiced[0].t, wire.caller_stop
        inside = [p.t for p in voiced_packets(wire.bot) if start < p.t < stop]
        assert not inside, f"bot audio while the caller was mid-sentence: {len(inside)} packets"
        assert wire.reply(), "the real reply was heard"
    finally:
        assert bridge.stop() == 0
