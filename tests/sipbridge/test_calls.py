"""End-to-end calls: a real `sipbridge run` answering real SIP peers (SIPp, baresip) on loopback.

What the caller hears is taken off the wire (RtpSniffer on lo) or from baresip's own recording, and checked
with whisper tiny.en on keywords it hears reliably in espeak-ng's voice (hello, help, line, recorded ...).
Every wait is on a process exit or a log line, never a sleep.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from .bridge import Bridge
from .peers import (
    Baresip,
    CallerAudio,
    Ears,
    Sipp,
    caller_audio,
    decode_stream,
    free_udp_port,
    match,
    refused_call,
    sipp_response,
    sipp_scenario,
    voiced_packets,
)

RESULTS = Path(os.environ.get("SIPBRIDGE_TEST_RESULTS", "/tmp/sipbridge-test-results"))


@pytest.fixture(scope="module")
def ears() -> Ears:
    return Ears()


def record_result(name: str, values: dict[str, Any]) -> None:
    """Measured numbers go to a JSON file per test (docs/PERFORMANCE.md quotes them) and to the test log."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(values, indent=2))
    print(name, json.dumps(values))


def write_flow(path: Path, flow: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(flow))
    return path


def script_agent(tmp_path: Path, flow: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "script", "script": {"flow": str(write_flow(tmp_path / "flow.yaml", flow))}}


def ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


def assert_clean(bridge: Bridge, baseline: dict[str, Any]) -> None:
    """No call, engine session, worker call, thread or task left behind."""
    health = bridge.health()
    assert health["calls"]["active"] == 0
    assert health["engine"]["sessions"] == 0
    assert all(w["calls"] == 0 for w in health["sip"]["workers"])
    assert health["store"]["active_calls"] == 0
    # Thread pools (asyncio's executor, AnyIO's for sync endpoints) may grow once; no other thread may appear.
    pools = ("asyncio_", "AnyIO worker", "ThreadPoolExecutor", "asr_")
    new = set(health["process"]["threads"]) - set(baseline["process"]["threads"])
    assert not [name for name in new if not name.startswith(pools)], new
    assert health["process"]["tasks"] <= baseline["process"]["tasks"]


MAIN_FLOW = {
    "greeting": "Hello, you have reached the help line.",
    "turns": [{"say": "Thank you. Your call is recorded. Goodbye.", "hangup": True}],
}


def test_call_greeting_turn_reply_then_bridge_hangs_up(tmp_path: Path, ears: Ears) -> None:
    bridge = Bridge.start(tmp_path / "bridge", {"agent": script_agent(tmp_path, MAIN_FLOW)})
    try:
        baseline = bridge.health()
        caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.5, tail_s=6.0)
        wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp")
        bot = wire.bot

        # RTP: our codec only, 50 packets/s, 160 samples each.
        assert bot and {p.pt for p in bot} == {0}
        rate = wire.bot_packets_per_s
        assert 48.5 < rate < 51.5, rate
        assert {len(p.payload) for p in bot} == {160}

        t_start, t_stop = voiced_packets(wire.sent)[0].t, wire.caller_stop
        greeting = ears.hear(decode_stream([p for p in bot if p.t < t_start])[0])
        assert "hello" in greeting and ("help" in greeting or "line" in greeting), greeting
        reply_packets = wire.reply()
        reply = ears.hear(decode_stream([p for p in bot if p.t > t_stop])[0])
        assert "recorded" in reply or "goodbye" in reply, reply

        assert call["outcome"] == "completed" and call["codec"] == "PCMU" and call["sip_status"] == 200
        turns = bridge.turns(call["id"])
        assert [t["who"] for t in turns] == ["bot", "caller", "bot"]
        # The caller turn's boundaries, in the bridge's media time (0 = its first packet to us), match
        # when the caller's speech crossed the wire.
        t0 = bot[0].t - 0.02
        start_err = turns[1]["start_ms"] - ms(t0, t_start)
        end_err = turns[1]["end_ms"] - ms(t0, t_stop)
        assert abs(start_err) <= 150 and abs(end_err) <= 150, (turns[1]["start_ms"], turns[1]["end_ms"])
        assert "help" in turns[1]["text"].lower()
        reply_timing = bridge.latency(call["id"])
        assert reply_timing["early_asr"] is True  # default vad.pause_ms: transcribed during the hangover
        record_result(
            "conversation",
            {
                "rtp_packets_per_s": round(rate, 2),
                "turn_start_error_ms": start_err,
                "turn_end_error_ms": end_err,
                "caller_stop_to_first_reply_packet_ms": ms(t_stop, reply_packets[0].t),
                "bridge_turn_detected_to_first_audio_ms": round(reply_timing["turn_to_first_audio_ms"], 1),
                "asr_ms": round(reply_timing["asr_ms"], 1),
                "agent_ms": round(reply_timing["agent_ms"], 2),
                "engine_first_chunk_ms": round(reply_timing["engine_first_ms"], 1),
                "stop_hangover_ms": 500,
            },
        )
        with wave.open(str(call["recording_path"])) as wav:
            assert wav.getnchannels() == 2 and wav.getframerate() == 8000
            assert wav.getnframes() / 8000 > 8
        assert all(Path(t["audio_path"]).is_file() for t in turns)
        assert_clean(bridge, baseline)
        m = bridge.metrics()  # the same call, as Prometheus sees it
        assert m['sipbridge_calls_started_total{direction="inbound"}'] == 1
        assert m['sipbridge_calls_ended_total{direction="inbound",outcome="completed"}'] == 1
        assert m['sipbridge_caller_turns_total{early_asr="true"}'] == 1
        assert m["sipbridge_reply_latency_seconds_count"] == 1 and m["sipbridge_calls_active"] == 0
        reply_s = reply_timing["turn_to_first_audio_ms"] / 1000
        assert m["sipbridge_reply_latency_seconds_sum"] == pytest.approx(reply_s, abs=1e-6)
        assert m["sipbridge_engine_first_chunk_seconds_count"] == 2  # greeting and reply
        assert m["sipbridge_workers_ready"] >= 1 and m["sipbridge_trunk_registered"] == 1
        assert m["sipbridge_asr_transcriptions_total"] >= 1
    finally:
        assert bridge.stop() == 0


@pytest.mark.parametrize("early_ms", [150, None])
def test_early_asr_kept_only_when_the_caller_said_no_more(tmp_path: Path, early_ms: int | None) -> None:
    """The caller pauses 350 ms mid-sentence (shorter than the 500 ms that ends a turn): the transcription
    started in that pause is dropped when the caller goes on; the one started 150 ms into the final silence
    is the turn's, and it holds both halves. `pause_ms: null` transcribes once, at the turn's end."""
    bridge = Bridge.start(
        tmp_path / "bridge", {"agent": script_agent(tmp_path, MAIN_FLOW), "vad": {"pause_ms": early_ms}}
    )
    try:
        first = caller_audio("I need some help", lead_s=3.5, tail_s=0.35)
        second = caller_audio("with my account please", lead_s=0.0, tail_s=6.0)
        wire, call = bridge.caller_plays(np.concatenate([first.pcm, second.pcm]), work=tmp_path / "sipp")
        t_stop = wire.caller_stop
        turns = bridge.turns(call["id"])
        assert [t["who"] for t in turns] == ["bot", "caller", "bot"]  # one turn: the pause did not end it
        text = turns[1]["text"].lower()
        assert "help" in text and "account" in text, text
        timing = bridge.latency(call["id"])
        runs = bridge.health()["asr"]["turns"]
        if early_ms is None:
            assert timing["early_asr"] is False and runs == 1
        else:  # at least the mid-sentence run was dropped, and the last one was used
            assert timing["early_asr"] is True and runs >= 2, runs
        record_result(
            f"early_asr_{early_ms}",
            {
                "pause_ms": early_ms,
                "caller_stop_to_first_reply_packet_ms": ms(t_stop, wire.reply()[0].t),
                "asr_wait_after_turn_end_ms": round(timing["asr_ms"], 1),
                "transcriptions": runs,
            },
        )
    finally:
        assert bridge.stop() == 0


# The interruptible reply is one long steady vowel (espeak-ng phoneme input, ~10 s): every bot packet of it
# is voiced, so the last voiced packet on the wire is exactly where playback was cut (speech with pauses
# between words made that ±30 ms).
STEADY_VOWEL = "[[" + "a:" * 110 + "]]"  # 9.6 s; espeak-ng says nothing for a phoneme word of 120
BARGE_FLOW = {
    "greeting": {"say": "Hello, this is the help line.", "interruptible": False},
    "turns": [{"say": STEADY_VOWEL}, {"say": "Goodbye.", "hangup": True}],
}


def noise_burst(ms_: int, rms: float = 4000.0, seed: int = 5) -> np.ndarray:
    """White noise as loud as speech: trips the energy onset, is not speech."""
    x = np.random.default_rng(seed).standard_normal(8 * ms_) * rms
    return np.clip(x, -32767, 32767).astype(np.int16)


def vowel_onset(voiced: list[Any], t: float) -> float:
    """Start of the unbroken run of voiced bot packets (20 ms apart) that is playing at time t."""
    before = [p.t for p in voiced if p.t <= t]
    i = len(before) - 1
    while i > 0 and before[i] - before[i - 1] < 0.045:
        i -= 1
    return before[i] if before else t


@pytest.mark.parametrize("min_ms", [0, 200])
def test_barge_in_cuts_interruptible_speech_but_not_a_protected_one(tmp_path: Path, min_ms: int) -> None:
    """Caller a talks over the protected greeting (plays through); its reply, a steady vowel, is cut by
    caller b. With `barge_in_min_ms: 200` a 100 ms noise burst during the vowel must not cut it."""
    bridge = Bridge.start(
        tmp_path / "bridge", {"agent": script_agent(tmp_path, BARGE_FLOW), "vad": {"barge_in_min_ms": min_ms}}
    )
    try:
        a = caller_audio("Hello there.", lead_s=0.6, tail_s=0.0)
        b = caller_audio("Hello, I would like some help please.", lead_s=0.0, tail_s=7.0)
        silence = np.zeros(8000, np.int16)  # 1 s
        # The vowel starts ~1-1.5 s after a ends (500 ms hangover, ASR, the rest of the protected greeting),
        # up to ~2.5 s on a slow CI machine; the burst comes 4 s after a, b 6 s after a, both well inside
        # the 9.6 s vowel.
        burst_ms = 100
        burst = noise_burst(burst_ms) if min_ms > burst_ms else np.zeros(8 * burst_ms, np.int16)
        gap = [silence] * 4 + [burst, silence, silence[: 8000 - 8 * burst_ms]]
        pcm = np.concatenate([a.pcm, *gap, b.pcm])
        burst_on = (len(a.pcm) + 4.0 * 8000) / 8000
        b_on = (len(pcm) - len(b.pcm)) / 8000 + b.speech_ms[0] / 1000
        wire, call = bridge.caller_plays(pcm, work=tmp_path / "sipp")
        bot, sent = wire.bot, wire.sent
        t0 = sent[0].t
        caller_on = voiced_packets(sent)
        tb = next(p.t for p in caller_on if p.t - t0 > b_on - 0.1)  # caller b's onset on the wire
        turns = bridge.turns(call["id"])
        bots = [t for t in turns if t["who"] == "bot"]
        # The protected greeting played to its end although the caller spoke over it.
        assert bots[0]["interrupted"] == 0 and bots[0]["end_ms"] - bots[0]["start_ms"] > 1500
        assert next(t for t in turns if t["who"] == "caller")["start_ms"] < bots[0]["end_ms"]
        # The vowel was cut, once, by b (not by the burst).
        assert bots[1]["interrupted"] == 1, [(t["who"], t["start_ms"], t["end_ms"]) for t in turns]
        (event,) = bridge.events(call["id"], "barge_in")
        assert bridge.metrics()["sipbridge_barge_ins_total"] == 1
        data = json.loads(event["data"])
        bot_voiced = voiced_packets(bot)
        vowel = [p for p in bot_voiced if t0 + burst_on - 0.5 <= p.t < tb + 1.5]
        # The vowel was playing from before the burst until b spoke: no gap (a cut would leave one).
        a_end = t0 + len(a.pcm) / 8000
        vowel_on = vowel_onset(bot_voiced, tb)
        assert vowel and vowel[0].t < t0 + burst_on - 0.3, f"vowel started {ms(a_end, vowel_on)} ms after a"
        before_b = [p for p in vowel if p.t < tb]
        assert before_b[-1].t > tb - 0.03
        assert max(np.diff([p.t for p in before_b])) < 0.045, "bot audio had a gap before b spoke"
        last_voiced = [p for p in vowel if p.t >= tb][-1] if vowel[-1].t >= tb else before_b[-1]
        first_silent = next(p for p in bot if p.t > last_voiced.t)
        cut_ms = ms(tb, last_voiced.t + 0.02)  # the last voiced packet carries 20 ms of audio
        decided_at = float(data["decided_at"])
        drop_ms = ms(decided_at, first_silent.t)
        record_result(
            f"barge_in_min{min_ms}",
            {
                "barge_in_min_ms": min_ms,
                "bot_audio_after_caller_onset_ms": cut_ms,
                "bot_audio_after_barge_in_point_ms": round(cut_ms - min_ms, 1),
                "caller_onset_to_worker_decision_ms": ms(tb, decided_at),
                "worker_decision_to_first_silent_packet_ms": drop_ms,
                "dropped_ms": data["dropped_ms"],
                "noise_burst_ms": burst_ms if min_ms > burst_ms else 0,
                "vowel_start_after_caller_a_ms": ms(a_end, vowel_on),
            },
        )
        # The worker's drop is in effect at the next 20 ms tick: silence on the wire within 40 ms.
        assert -5 <= drop_ms <= 40, drop_ms
        # On the wire: the issue's 60 ms past the barge-in point (onset + barge_in_min_ms).
        assert cut_ms <= min_ms + 60, cut_ms
        assert_clean(bridge, bridge.health())
    finally:
        assert bridge.stop() == 0


DTMF_FLOW = {
    "greeting": "Hello.",
    "turns": [],
    "dtmf": {"1": "You pressed one."},
}


def test_dtmf_reaches_the_agent_and_caller_bye_cleans_up(tmp_path: Path) -> None:
    """Also: PCMA when the caller offers only PCMA, and a TCP transport next to UDP."""
    sip = {"transports": ["udp", "tcp"], "codecs": ["PCMU", "PCMA"]}
    bridge = Bridge.start(tmp_path / "bridge", {"agent": script_agent(tmp_path, DTMF_FLOW), "sip": sip})
    try:
        baseline = bridge.health()
        ulaw = tmp_path / "silence.ulaw"
        ulaw.write_bytes(b"\xff" * 8000 * 5)
        bridge.sipp_call(
            sipp_scenario(
                audio=ulaw, dtmf_pcap=Path("/usr/share/sip-tester/dtmf_2833_1.pcap"), dtmf_at_ms=1500,
                hangup="caller", talk_ms=2500, codec="PCMA",
            ),
            work=tmp_path / "sipp", recorded=r"completed \(remote",
        )  # fmt: skip
        (call,) = bridge.calls()
        assert call["codec"] == "PCMA"
        bridge.logged(rf"sip udp 127\.0\.0\.1:{bridge.port} tcp {bridge.port}")
        assert [json.loads(e["data"])["digit"] for e in bridge.events(call["id"], "dtmf")] == ["1"]
        texts = [t["text"] for t in bridge.turns(call["id"]) if t["who"] == "bot"]
        assert "You pressed one." in texts
        assert_clean(bridge, baseline)
    finally:
        assert bridge.stop() == 0


def test_hangup_before_the_callers_ack_waits_for_it(tmp_path: Path) -> None:
    """An agent that hangs up on answer, a caller whose ACK comes 1 s after our 200 OK: the BYE must follow
    the ACK, never before it (the caller would drop it). PJSIP 2.15 already holds such a BYE back until the
    ACK; this guards that. Also: G.722 offered but not configured -> PCMU."""
    flow = {"greeting": {"say": " ", "hangup": True}}  # nothing to say: hang up as soon as the call is up
    bridge = Bridge.start(tmp_path / "bridge", {"agent": script_agent(tmp_path, flow)})
    try:
        # SIPp exits 0 only if it saw the BYE after its ACK and answered it.
        bridge.sipp_call(
            sipp_scenario(hangup="bridge", ack_delay_ms=1000, offer=["G722", "PCMU"], timeout_ms=10000),
            work=tmp_path / "sipp", wait_s=30, recorded=r"completed \(local",
        )  # fmt: skip
        (call,) = bridge.calls()
        assert call["codec"] == "PCMU" and call["sip_status"] == 200
    finally:
        assert bridge.stop() == 0


def test_g722_is_negotiated_when_configured_and_offered(tmp_path: Path) -> None:
    """G.722 is answered when configured and offered; the conference clock stays at 8 kHz (PJSIP
    resamples the 16 kHz codec). The wheel's PJSIP answers in the *caller's* order among the codecs we
    enable (PJMEDIA_SDP_NEG_PREFER_REMOTE_CODEC_ORDER=1, not settable through pjsua2), so the caller lists
    G.722 first here, as G.722 phones do."""
    bridge = Bridge.start(
        tmp_path / "bridge",
        {"agent": script_agent(tmp_path, DTMF_FLOW), "sip": {"codecs": ["G722", "PCMU"]}},
    )
    try:
        wire = bridge.sipp_call(
            sipp_scenario(hangup="caller", talk_ms=2000, offer=["G722", "PCMU"]),
            work=tmp_path / "sipp", wait_s=30,
        )  # fmt: skip
        (call,) = bridge.calls()
        assert call["codec"] == "G722"
        bot = wire.bot
        assert bot and {p.pt for p in bot} == {9}
        assert {len(p.payload) for p in bot} == {160}  # 20 ms at 64 kbit/s
        rate = wire.bot_packets_per_s
        assert 48.5 < rate < 51.5, rate
        bridge.logged(r"media up: G722")
    finally:
        assert bridge.stop() == 0


def test_unknown_source_is_rejected_403_and_dead_media_ends_a_call(tmp_path: Path) -> None:
    bridge = Bridge.start(tmp_path / "b1", {"sip": {"allowed_sources": ["10.0.0.0/8"]}})
    try:
        refused_call(bridge.port, 403, work=tmp_path / "sipp")
        bridge.wait_log(r"refused INVITE from 127\.0\.0\.1: 403")
        bridge.wait_log(r"sip refusals recorded: INVITE 403 x1")  # the supervisor has written the row
        # Refused before any call existed: counted and aggregated (docs/RELIABILITY.md), no call row.
        assert bridge.calls() == []
        with bridge.db() as db:
            refused = db.execute("SELECT code, reason, count FROM refusals WHERE method = 'INVITE'")
            refused = refused.fetchall()
        assert [tuple(r) for r in refused] == [(403, "source not allowed", 1)]
        assert bridge.metrics()['sipbridge_calls_rejected_total{code="403"}'] == 1
    finally:
        assert bridge.stop() == 0

    bridge = Bridge.start(tmp_path / "b2", {"media": {"dead_media_timeout_s": 1.0}})
    try:
        bridge.sipp_call(
            sipp_scenario(hangup="bridge"), work=tmp_path / "sipp2", wait_s=30, recorded="no_media"
        )
    finally:
        assert bridge.stop() == 0


def speech_only(caller: CallerAudio) -> np.ndarray:
    a, b = (int(t * 8) for t in caller.speech_ms)
    return caller.pcm[a:b]


def found_share(recording: np.ndarray, speech: np.ndarray, frame: int = 160, rms: float = 300.0) -> float:
    """Share of the recording's loud frames that occur in `speech` (normalised correlation >= 0.95); int16
    scale for `rms`."""
    x = recording.astype(np.float64)
    frames = [x[i : i + frame] for i in range(0, len(x) - frame + 1, frame)]
    loud = [fr for fr in frames if np.sqrt(np.mean(fr * fr)) > rms]
    return float(np.mean([match(speech, fr) >= 0.95 for fr in loud])) if loud else 0.0


TALK_MS = 16000  # long enough for 8 turns to queue through one ASR thread on 2 busy cores


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PHRASES = [
    "apple pie",
    "yellow submarine",
    "monday morning",
    "hot pizza",
    "call the doctor",
    "cold water",
    "play the guitar",
    "ripe banana",
]


def test_eight_calls_over_two_workers_without_cross_talk(tmp_path: Path) -> None:
    """8 calls at once, 4 per worker. Each caller says something else; cross-talk would show as another
    caller's audio in a call's recording, or another call's reply on a caller's wire."""
    # RTP away from the default range other bridges on this machine use: a port another test's call just
    # left may still receive its SIPp's stream, and PJSIP adopts a new RTP source after a few packets (one
    # run recorded another run's "yellow submarine" 10 s into a call whose caller had gone quiet).
    rtp = random.randrange(20000, 30000, 1000)
    config = {
        "sip": {"max_calls": 8},
        "agent": {"kind": "echo"},
        "media": {"rtp_port_min": rtp, "rtp_port_max": rtp + 999},
    }
    bridge = Bridge.start(tmp_path / "bridge", config)
    try:
        baseline = bridge.health()
        # Two workers behind the SIP front: one address (sip.front.mode auto).
        assert len(bridge.sip_ports) == 1 and len(baseline["sip"]["workers"]) == 2
        pids = [w["pid"] for w in baseline["sip"]["workers"]]
        cpu_before = [process_cpu_s(pid) for pid in pids]
        callers = [caller_audio(f"{p}.", lead_s=2.5, tail_s=0.5) for p in PHRASES]
        scenarios = {
            f"sipp{i}": sipp_scenario(audio=caller.write_ulaw(tmp_path / f"c{i}.ulaw"), talk_ms=TALK_MS)
            for i, caller in enumerate(callers)
        }
        wires = list(bridge.sipp_calls(scenarios, work=tmp_path, wait_s=90).values())  # 4 per worker
        cpu = sum(process_cpu_s(pid) - before for pid, before in zip(pids, cpu_before, strict=True))
        record_result(
            "media_cpu",
            {
                "calls": 8,
                "call_s": TALK_MS / 1000,
                "worker_cpu_s": round(cpu, 2),
                # VAD (silero), G.711 via PJSIP, playback and recording: the whole worker side of a call.
                "cpu_per_call_percent_of_one_core": round(100 * cpu / (8 * TALK_MS / 1000), 2),
            },
        )
        calls = bridge.calls()
        assert len(calls) == 8 and sorted(c["worker"] for c in calls) == [0, 0, 0, 0, 1, 1, 1, 1]
        assert all(c["outcome"] == "completed" for c in calls)
        # Caller -> bridge: each call's recording (left = what the bridge received) holds one caller's speech.
        from audio.wav import read_wav

        received = {}
        for c in calls:
            import soundfile as sf

            stereo, _ = sf.read(c["recording_path"], dtype="int16")
            received[c["id"]] = stereo
        owner = {}
        for call_id, stereo in received.items():
            # Share of the recording's loud 20 ms frames found, nearly unchanged, in each caller's speech.
            # Frame by frame, not phrase by phrase: on a loaded machine the worker's media clock stalls
            # (0.2-0.8 s measured) and PJSIP's adaptive jitter buffer grows over the stall, then shrinks by
            # dropping a 10 ms frame every ~0.3 s, so few 300 ms pieces survive intact while most 20 ms
            # frames do. Cross-talk (callers mixed, or another's audio) leaves few frames matching at 0.95.
            shares = [found_share(stereo[:, 0], speech_only(caller)) for caller in callers]
            best = int(np.argmax(shares))
            second = sorted(shares)[-2]
            assert shares[best] > 0.7 and second < 0.4, shares
            owner[call_id] = best
        assert sorted(owner.values()) == list(range(8))
        # Bridge -> caller: the reply each caller heard is the one generated for its own call.
        replies = {}
        for call_id in owner:
            bots = [t for t in bridge.turns(call_id) if t["who"] == "bot"]
            reply = next(t for t in bots if not t["text"].startswith("Hello"))
            assert reply["interrupted"] == 0, "the caller hung up before the reply was played"
            audio, _ = read_wav(reply["audio_path"])
            replies[call_id] = (reply["text"], audio)
        for call_id, i in owner.items():
            heard = decode_stream(wires[i].bot)[0]
            # Share of each reply's loud 20 ms frames found on this caller's wire: a playback underrun on a
            # starved box puts silence between frames (spoiling a whole-reply correlation), not inside one.
            # Every echo reply starts "You said:" in the same voice, so another's reply shares ~40-50 %.
            scores = {other: found_share(audio * 32767, heard) for other, (_, audio) in replies.items()}
            best = max(scores, key=lambda k: scores[k])
            others = [v for k, v in scores.items() if replies[k][0] != replies[call_id][0]]
            assert scores[call_id] > 0.8 and scores[call_id] - max(others) > 0.3, scores
            assert best == call_id or replies[best][0] == replies[call_id][0], (scores, replies[call_id][0])
        assert_clean(bridge, baseline)
    finally:
        assert bridge.stop() == 0


def test_killed_worker_records_its_call_failed_and_is_respawned(tmp_path: Path) -> None:
    bridge = Bridge.start(tmp_path / "bridge", {})
    try:
        ulaw = tmp_path / "silence.ulaw"
        ulaw.write_bytes(b"\xff" * 8000 * 30)
        sipp = Sipp.call(
            sipp_scenario(audio=ulaw, hangup="caller", talk_ms=30000),
            bridge.port,
            work=tmp_path / "s1",
            timeout_s=60,
        )
        bridge.wait_log(r"media up")
        pid = bridge.health()["sip"]["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        bridge.wait_log(r"SIP worker 0 \(pid \d+\) died .* 1 call\(s\) lost")
        bridge.wait_log(r"recorded: failed")
        bridge.wait_log(r"worker 0 ready")
        sipp.kill()
        (call,) = bridge.calls()
        assert call["outcome"] == "failed" and "worker 0 died" in call["reason"]
        health = bridge.health()
        assert (
            health["sip"]["workers"][0]["restarts"] == 1
            and health["sip"]["workers"][0]["sip_port"] == bridge.port
        )
        # The new worker answers on the same port.
        ok = Sipp.call(
            sipp_scenario(audio=ulaw, hangup="caller", talk_ms=500), bridge.port, work=tmp_path / "s2"
        )
        assert ok.wait(30) == 0, ok.errors()
        bridge.wait_log(r"recorded: completed")
    finally:
        assert bridge.stop() == 0


def test_a_worker_segfault_leaves_its_python_stacks_in_the_log(tmp_path: Path) -> None:
    """A crash inside PJSIP kills a worker with no Python traceback (soak defect 2): faulthandler prints every
    thread's Python stack first, so the log says which of our callbacks was running."""
    bridge = Bridge.start(tmp_path / "bridge", {})
    try:
        os.kill(bridge.health()["sip"]["workers"][0]["pid"], signal.SIGSEGV)
        bridge.wait_log(r"Fatal Python error: Segmentation fault")
        bridge.wait_log(r"Thread 0x[0-9a-f]+ \(most recent call first\):")
        bridge.wait_log(r'File ".*sipbridge/sip/worker\.py", line \d+ in \w+')
        bridge.wait_log(r"SIP worker 0 \(pid \d+\) died with code -11")
        bridge.wait_log(r"worker 0 ready")
    finally:
        assert bridge.stop() == 0


def test_baresip_hears_greeting_and_reply(tmp_path: Path, ears: Ears) -> None:
    bridge = Bridge.start(tmp_path / "bridge", {"agent": script_agent(tmp_path, MAIN_FLOW)})
    try:
        caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.5, tail_s=12.0)
        phone = Baresip.start(tmp_path / "baresip", caller.write_wav(tmp_path / "caller.wav"))
        events = phone.dial_and_wait(f"sip:bridge@127.0.0.1:{bridge.port}")
        assert any(e.get("type") == "CALL_ESTABLISHED" for e in events), events
        heard = ears.hear(phone.heard())
        assert "hello" in heard and "recorded" in heard, heard
        bridge.wait_log(r"recorded: completed")
    finally:
        assert bridge.stop() == 0


def test_dia2_engine_speaks_a_call_on_the_tiny_checkpoint(tmp_path: Path) -> None:
    """The dia2 engine path end to end on CPU: random weights speak noise, but with the right timing."""
    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
    engine = {
        "kind": "dia2",
        "dia2": {"model": str(tiny), "device": "cpu", "dtype": "float32", "max_batch": 2},
    }
    bridge = Bridge.start(tmp_path / "bridge", {"engine": engine, "agent": script_agent(tmp_path, MAIN_FLOW)})
    try:
        caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.5, tail_s=6.0)
        wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp", wait_s=90)
        bot = wire.bot
        rate = wire.bot_packets_per_s
        assert 48.5 < rate < 51.5, rate
        t_stop = wire.caller_stop
        greeting_delay = ms(bot[0].t, voiced_packets(bot)[0].t)
        reply = wire.reply()
        assert greeting_delay < 2000 and reply, greeting_delay
        timing = bridge.latency(call["id"])
        record_result(
            "dia2_tiny_cpu",
            {
                "answer_to_first_greeting_packet_ms": greeting_delay,
                "caller_stop_to_first_reply_packet_ms": ms(t_stop, reply[0].t),
                "asr_ms": round(timing["asr_ms"], 1),
                "agent_ms": round(timing["agent_ms"], 2),
                "engine_first_chunk_ms": round(timing["engine_first_ms"], 1),
            },
        )
        health = bridge.health()
        assert health["engine"]["sessions"] == 0 and health["engine"]["rows_in_use"] == 0
    finally:
        assert bridge.stop() == 0


REGISTRAR = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="registrar with digest auth">
  <recv request="REGISTER"/>
  <send>
    <![CDATA[
      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      WWW-Authenticate: Digest realm="trunk.test", nonce="4f1e2d3c", algorithm=MD5
      Content-Length: 0
    ]]>
  </send>
  <recv request="REGISTER">
    <action><verifyauth assign_to="ok" username="bridge" password="s3cret"/></action>
  </recv>
  <nop test="ok" next="good"/>
  <send>
    <![CDATA[
      SIP/2.0 403 Forbidden
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <nop next="end"/>
  <label id="good"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:];expires=60
      Expires: 60
      Content-Length: 0
    ]]>
  </send>
  <label id="end"/>
</scenario>
"""


def test_trunk_registration_with_digest_auth_shows_in_healthz(tmp_path: Path) -> None:
    port = free_udp_port()
    registrar = Sipp.serve(REGISTRAR, work=tmp_path / "registrar", sip_port=port)
    trunk = {
        "register": True,
        "registrar": f"sip:127.0.0.1:{port}",
        "username": "bridge",
        "password": "s3cret",
        "expiry_s": 60,
    }
    bridge = Bridge.start(tmp_path / "bridge", {"sip": {"port": 0, "trunk": trunk}})
    try:
        assert registrar.wait(30) == 0, registrar.errors()
        health = bridge.health()
        assert health["sip"]["registration"]["registered"] is True and health["status"] == "ok"
        bridge.logged(r"trunk registration: 200 OK")
        assert "s3cret" not in "\n".join(bridge.proc.seen)
    finally:
        registrar.kill()
        assert bridge.stop() == 0


_REG_TAG = ";tag=reg[call_number]"
_REG_OK = '\n  <recv request="REGISTER"/>\n' + sipp_response(
    "200 OK", "[last_Contact:];expires=8", "Expires: 8", to_tag=_REG_TAG
)


def test_trunk_registration_is_refreshed_before_expiry_and_a_failure_shows(tmp_path: Path) -> None:
    """The registrar grants 8 s instead of the 60 s asked for (registrars may shorten it): PJSIP must
    refresh before those run out; the third REGISTER is refused and /healthz and the log say so."""
    from datetime import datetime

    port = free_udp_port()
    head, tail = REGISTRAR.split("[last_Contact:];expires=60\n      Expires: 60")
    scenario = head + "[last_Contact:];expires=8\n      Expires: 8" + tail
    refused = '\n  <recv request="REGISTER"/>\n' + sipp_response("403 Forbidden", to_tag=_REG_TAG)
    scenario = scenario.replace("</scenario>", _REG_OK + refused + "</scenario>")
    registrar = Sipp.serve(scenario, work=tmp_path / "registrar", sip_port=port)
    trunk = {"register": True, "registrar": f"sip:127.0.0.1:{port}", "username": "bridge",
             "password": "s3cret", "expiry_s": 60}  # fmt: skip
    bridge = Bridge.start(tmp_path / "bridge", {"sip": {"port": 0, "trunk": trunk}})
    try:
        assert registrar.wait(30) == 0, registrar.errors()
        bridge.logged(r"trunk registration: 403 Forbidden")
        oks = [line for line in bridge.proc.seen if "trunk registration: 200 OK" in line]
        assert len(oks) == 2, oks
        stamps = [datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")) for line in oks]
        refresh_s = (stamps[1] - stamps[0]).total_seconds()
        record_result("registration", {"granted_expiry_s": 8, "refresh_after_s": refresh_s})
        # PJSIP refreshes delayBeforeRefreshSec (5 s) before the granted expiry.
        assert 1.0 < refresh_s < 8.0, refresh_s
        health = bridge.health()
        assert health["sip"]["registration"]["registered"] is False and health["status"] != "ok", health
    finally:
        registrar.kill()
        assert bridge.stop() == 0


def test_engine_failure_mid_call_ends_the_call_and_records_it_failed(tmp_path: Path) -> None:
    # espeak-ng that breaks after the greeting: the reply to the caller's turn fails mid-call.
    broken = tmp_path / "bin"
    broken.mkdir()
    count = tmp_path / "count"
    real = shutil.which("espeak-ng")
    (broken / "espeak-ng").write_text(
        "#!/bin/sh\n"
        f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}\n"
        "if [ \"$n\" -ge 1 ]; then echo 'espeak-ng: cannot open phoneme data' >&2; exit 1; fi\n"
        f'exec {real} "$@"\n'
    )
    (broken / "espeak-ng").chmod(0o755)
    env = {"PATH": f"{broken}:{os.environ['PATH']}"}
    bridge = Bridge.start(tmp_path / "bridge", {"agent": script_agent(tmp_path, MAIN_FLOW)}, env=env)
    try:
        caller = caller_audio("Hello, I need some help with my account please.", lead_s=3.5, tail_s=6.0)
        # SIPp exits 0 only if the bridge hung up (BYE) instead of leaving dead air.
        _wire, call = bridge.caller_plays(caller, work=tmp_path / "sipp", recorded="failed")
        assert call["outcome"] == "failed" and "cannot open phoneme data" in call["reason"]
        assert [t["who"] for t in bridge.turns(call["id"])] == ["bot", "caller"]  # nothing heard is lost
        assert bridge.health()["engine"]["sessions"] == 0
    finally:
        assert bridge.stop() == 0
