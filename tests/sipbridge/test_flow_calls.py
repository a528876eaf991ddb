"""The employment-verification flow (config/flows/employment_verification.yaml) through real SIP calls.

One bridge, five SIPp callers at once (each plays an espeak-ng "employer" timed against the bot's prompts):
a confirming employer, a refusing one, a silent one, a voicemail box, and one that presses 0 and is
transferred with a SIP REFER. Assertions are on the agent's stored results and outcome (the state machine is
driven by turns, so exact timing does not matter), plus keywords whisper tiny.en hears in the bot's audio.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from audio import g711
from audio.testsignals import espeak, speech_extent
from audio.wav import read_wav

from .bridge import Bridge
from .peers import CALLER_CONTACT, RATE, Ears, sipp_response, sipp_scenario
from .test_calls import assert_clean

ROOT = Path(__file__).resolve().parents[2]

REFER_THEN_BYE = '\n  <recv request="REFER"/>\n' + sipp_response("202 Accepted", CALLER_CONTACT)


def employer(lines: list[tuple[float, str]], total_s: float, path: Path) -> Path:
    """An employer's side of the call: each line spoken at its time (s), silence elsewhere, as u-law."""
    pcm = np.zeros(int(total_s * RATE), np.float32)
    for at, text in lines:
        speech = espeak(text, RATE, speed=150)
        a, b = speech_extent(speech)
        speech = speech[a:b] * 0.7
        start = int(at * RATE)
        pcm[start : start + len(speech)] = speech[: len(pcm) - start]
    path.write_bytes(bytes(g711.ulaw_encode((pcm * 32767).astype(np.int16))))
    return path


def test_verification_flow_end_to_end(tmp_path: Path) -> None:
    flow = (ROOT / "config/flows/employment_verification.yaml").read_text()
    # Shorter waits than a real deployment's so the silent caller is given up on within the test's minute.
    flow = flow.replace("silence_timeout_s: 8 ", "silence_timeout_s: 4 ")
    assert "silence_timeout_s: 4 " in flow
    flow_path = tmp_path / "flow.yaml"
    flow_path.write_text(flow)
    agent = {"kind": "script", "script": {"flow": str(flow_path)}}
    bridge = Bridge.start(tmp_path / "bridge", {"agent": agent, "sip": {"max_calls": 8}})
    try:
        baseline = bridge.health()
        callers = {
            # The intro takes ~11 s; each later prompt 2-5 s. An answer given over a prompt cuts it
            # (barge-in) but still answers it: the flow moves on turns, not on time.
            "confirm": employer(
                [(12.0, "Sure, go ahead."), (18.5, "Yes, she does."), (25.0, "She started in March 2019."),
                 (31.0, "Yes, she is."), (36.0, "She works as an engineer.")], 55, tmp_path / "confirm.ulaw",
            ),
            "refuse": employer(
                [(12.0, "Yes."), (18.5, "Sorry, I can not share that. It is company policy.")], 40,
                tmp_path / "refuse.ulaw",
            ),
            "silent": employer([], 60, tmp_path / "silent.ulaw"),
            "voicemail": employer(
                [(0.5, "Sorry, the person you are calling is not available. Please leave a message.")], 40,
                tmp_path / "voicemail.ulaw",
            ),
            "transfer": employer([], 40, tmp_path / "transfer.ulaw"),
        }  # fmt: skip
        scenarios = {}
        for name, audio in callers.items():
            kwargs = {}
            if name == "transfer":
                kwargs = {"dtmf_pcap": Path("/usr/share/sip-tester/dtmf_2833_0.pcap"), "dtmf_at_ms": 1000}
            scenario = sipp_scenario(audio=audio, hangup="bridge", timeout_ms=70000, user=name, **kwargs)
            if name == "transfer":
                scenario = scenario.replace('  <recv request="BYE"', REFER_THEN_BYE + '  <recv request="BYE"')
            scenarios[name] = scenario
        bridge.sipp_calls(scenarios, work=tmp_path / "sipp", wait_s=90, sipp_timeout_s=80)

        by_user = bridge.calls_by_user()
        results = {name: json.loads(c["results"]) for name, c in by_user.items()}
        outcomes = {name: c["agent_outcome"] for name, c in by_user.items()}
        assert outcomes == {
            "confirm": "verified",
            "refuse": "refused",
            "silent": "no_answer",
            "voicemail": "voicemail",
            "transfer": "transferred",
        }, (outcomes, results)
        confirm = results["confirm"]
        assert confirm["employment_confirmed"] is True and confirm["currently_employed"] is True
        assert "2019" in str(confirm["start_date"]) and "engineer" in confirm["job_title"].lower()
        assert results["refuse"]["refused"] is True
        assert all(c["agent"] == "script" for c in by_user.values())
        # Silent: the intro, two re-prompts, the goodbye.
        silent_bot = [t["text"] for t in bridge.turns(by_user["silent"]["id"]) if t["who"] == "bot"]
        assert len(silent_bot) == 4 and silent_bot[1].startswith("Hello? Are you there?"), silent_bot
        assert len(bridge.events(by_user["silent"]["id"], "silence")) == 3
        # Transfer: DTMF 0 -> REFER, accepted (202) -> the bridge hangs up.
        transfer_id = by_user["transfer"]["id"]
        assert [json.loads(e["data"])["digit"] for e in bridge.events(transfer_id, "dtmf")] == ["0"]
        (refer,) = bridge.events(transfer_id, "transfer")
        assert json.loads(refer["data"])["target"] == "sip:verifier@127.0.0.1"
        accepted = json.loads(bridge.events(transfer_id, "transfer_status")[0]["data"])
        assert accepted["code"] < 300 and accepted["reason"] == "Accepted"  # PJSIP reports 202 as 100
        assert "transferred" in by_user["transfer"]["reason"]

        ears = Ears()
        turns = bridge.turns(by_user["confirm"]["id"])
        intro = ears.hear((read_wav(turns[0]["audio_path"])[0] * 32768).astype(np.int16))
        assert "recorded" in intro, intro
        goodbye = ears.hear((read_wav(turns[-1]["audio_path"])[0] * 32768).astype(np.int16))
        assert "thank" in goodbye and "goodbye" in goodbye.replace(" ", "").replace("-", ""), goodbye
        assert_clean(bridge, baseline)
    finally:
        assert bridge.stop() == 0
