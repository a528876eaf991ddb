"""The live dialer end to end: `sipbridge dial` places real INVITEs through its SIP workers to SIPp callees.

One dial run covers every single-call outcome (human, voicemail with the message after the beep, busy, no
answer, decline, 404); a second test runs a 20-contact campaign over two workers, kills the supervisor
mid-campaign and resumes it; a third has AMD decide a short greeting by its words (real ASR); a fourth pauses
a campaign while a call rings. Synchronisation is on the processes' log lines and exit, never sleeps.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from audio import g711
from audio.amd import AnsweringMachineDetector

from ..peers import RtpSniffer, voiced_packets
from ..procs import SIPBRIDGE, LoggedProcess
from .callees import (
    Callee,
    answer_scenario,
    challenge_scenario,
    error_scenario,
    greeting_audio,
    human_audio,
    ring_scenario,
    ring_then_answer_scenario,
    voicemail_audio,
)

ROOT = Path(__file__).resolve().parents[3]
FLOW = ROOT / "config" / "flows" / "employment_verification.yaml"
# A Wednesday, 10:00 in New York: inside the default 09:00-17:00 weekday window.
WEDNESDAY_10_NY = datetime(2026, 1, 7, 15, 0, tzinfo=UTC)


def write_config(work: Path, **sip: Any) -> Path:
    cfg = {
        "sip": {"port": 0, **sip},
        "http": {"port": 0},
        "storage": {
            "sqlite_path": str(work / "db.sqlite3"),
            "recordings_dir": str(work / "rec"),
            "record_calls": False,
        },
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_campaign(work: Path, contacts: list[dict[str, str]], **overrides: Any) -> Path:
    columns = list(contacts[0])
    lines = [",".join(columns)] + [",".join(c[k] for k in columns) for c in contacts]
    (work / "contacts.csv").write_text("\n".join(lines) + "\n")
    campaign: dict[str, Any] = {
        "name": "verify-test",
        "caller_id": "+14155550100",
        "agent": {"kind": "script", "flow": str(FLOW)},
        "limits": {"concurrency": 6, "calls_per_second": 5, "ring_timeout_s": 3},
        "default_timezone": "America/New_York",
        "dial_uri": "sip:{user}@127.0.0.1:{port}",
        "voicemail": {
            "action": "leave_message",
            "message": "Hello, this is Acme calling to verify employment. Please call us back.",
        },
        "contacts": "contacts.csv",
    }
    campaign.update(overrides)
    path = work / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path


def dial(work: Path, campaign: Path, config: Path, now: datetime) -> LoggedProcess:
    return LoggedProcess.start(
        ["dial", str(campaign), "-c", str(config), "--now", now.isoformat(), "--exit-when-idle"],
        cwd=work,
        env={"OMP_NUM_THREADS": "1"},
    )


def db(work: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(work / "db.sqlite3", timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def attempts(work: Path) -> list[sqlite3.Row]:
    with db(work) as conn:
        return list(
            conn.execute(
                "SELECT a.*, c.number, c.state, c.next_at, c.row FROM attempts a"
                " JOIN contacts c ON c.id = a.contact_id ORDER BY a.started_at, a.id"
            )
        )


def test_each_callee_gets_its_outcome(tmp_path: Path) -> None:
    human = Callee.start(answer_scenario(human_audio(tmp_path), talk_ms=9000), tmp_path / "human", calls=1)
    vm = voicemail_audio(tmp_path)
    voicemail = Callee.start(answer_scenario(vm.path), tmp_path / "vm", calls=1)
    callees = {
        "human": human,
        "voicemail": voicemail,
        "busy": Callee.start(error_scenario(486, "Busy Here"), tmp_path / "busy", calls=1),
        "noanswer": Callee.start(ring_scenario(), tmp_path / "ring", calls=1),
        "decline": Callee.start(error_scenario(603, "Decline"), tmp_path / "decline", calls=1),
        "missing": Callee.start(error_scenario(404, "Not Found"), tmp_path / "missing", calls=1),
    }
    contacts = [
        {"number": f"+1201555010{i}", "name": who, "port": str(c.sip_port), "subject_name": "Dana Whitfield"}
        for i, (who, c) in enumerate(callees.items())
    ]
    campaign = write_campaign(tmp_path, contacts)
    config = write_config(tmp_path, max_calls=8)
    try:
        with RtpSniffer({voicemail.media_port}) as sniffer:
            proc = dial(tmp_path, campaign, config, WEDNESDAY_10_NY)
            rc = proc.finish(timeout=120)
            log = "\n".join(proc.seen)
            assert rc == 0, log
            from_vm = sniffer.sent_from(voicemail.media_port)
            to_vm = voiced_packets(sniffer.sent_to(voicemail.media_port))
    finally:
        for c in callees.values():
            c.stop()

    by_name = {r["number"]: r for r in attempts(tmp_path)}
    outcomes = {c["name"]: by_name[c["number"]]["outcome"] for c in contacts}
    assert outcomes == {
        "human": "answered-human",
        "voicemail": "voicemail-message-left",
        "busy": "busy",
        "noanswer": "no-answer",
        "decline": "rejected",
        "missing": "invalid-number",
    }, log
    rows = {c["name"]: by_name[c["number"]] for c in contacts}
    assert rows["busy"]["sip_code"] == 486 and rows["busy"]["state"] == "retry"
    assert rows["noanswer"]["event"] == "ring_timeout" and rows["noanswer"]["ringing_ms"] is not None
    assert rows["decline"]["state"] == "final" and rows["missing"]["state"] == "final"
    assert rows["human"]["amd"] == "human" and rows["voicemail"]["amd"] == "machine"

    with db(tmp_path) as conn:
        events = {
            r["kind"]: json.loads(r["data"])
            for r in conn.execute(
                "SELECT * FROM call_events WHERE call_id = ?", (rows["voicemail"]["call_id"],)
            )
        }
        human_turns = list(
            conn.execute("SELECT * FROM turns WHERE call_id = ? AND who = 'bot'", (rows["human"]["call_id"],))
        )
        human_cut = [
            json.loads(r["data"])
            for r in conn.execute(
                "SELECT * FROM call_events WHERE call_id = ? AND kind = 'heard'", (rows["human"]["call_id"],)
            )
        ]
    assert events["amd"]["kind"] == "machine" and events["message_cue"]["reason"] == "beep"
    assert "message_delivered" in events
    # The disclosure first (dialer.disclosure), then the greeting with the contact's columns as variables.
    assert len(human_turns) >= 2 and human_turns[0]["text"].startswith(
        "You are speaking with an automated"
    ), log
    # The callee's answer can cut the greeting: its turn then holds the words heard, the 'heard' event the
    # whole text said (sipbridge/text/heard.py).
    greeting = human_turns[1]["text"]
    if human_turns[1]["interrupted"]:
        greeting = next(e["said"] for e in human_cut if e["heard"] == greeting)
    assert "Dana Whitfield" in greeting, log
    # No disclosure on the voicemail message: it is not a conversation.
    assert "disclosure" not in events

    # The message audio reached the recorder only after its beep had ended. Before the beep, the recorder
    # heard at most the provisional starts that the greeting's next words withdrew
    # (amd.provisional_silence_ms: a fraction of a second each, in its sentence gaps; it records nothing).
    assert from_vm and to_vm
    answer_t = from_vm[0].t
    with db(tmp_path) as conn:
        withdrawn = [
            json.loads(r["data"])
            for r in conn.execute(
                "SELECT data FROM call_events WHERE call_id = ? AND kind = 'withdrawn_audio'",
                (rows["voicemail"]["call_id"],),
            )
        ]
    heard_ms = sum(e["end_ms"] - e["start_ms"] for e in withdrawn)
    before_beep = [p for p in to_vm if p.t - answer_t < vm.beep_end_s]
    assert len(before_beep) * 20 <= heard_ms + 100 and heard_ms <= 1000, (len(before_beep), withdrawn)
    message = [p.t - answer_t for p in to_vm if p.t - answer_t >= vm.beep_end_s]
    assert message and message[0] >= vm.beep_end_s, (message[:1], vm.beep_end_s)


def test_every_worker_answers_the_trunks_challenge_through_its_outbound_proxy(tmp_path: Path) -> None:
    """`sip.trunk` with credentials and an outbound proxy, no registration: INVITEs go to the proxy (the
    Request-URI's host, TEST-NET 192.0.2.1, is unreachable), the trunk challenges each with 401, and the
    calls placed on worker 0 *and* worker 1 answer with the trunk's credentials (then 486: busy)."""
    trunk = Callee.start(challenge_scenario("bridge", "s3cret"), tmp_path / "trunk", calls=4, trace_msg=True)
    contacts = [{"number": f"+1201555011{i}", "name": f"c{i}"} for i in range(4)]
    campaign = write_campaign(tmp_path, contacts, dial_uri="sip:{user}@192.0.2.1")
    proxy = f"sip:127.0.0.1:{trunk.sip_port}"
    config = write_config(
        tmp_path, max_calls=8, trunk={"username": "bridge", "password": "s3cret", "outbound_proxy": proxy}
    )
    try:
        proc = dial(tmp_path, campaign, config, WEDNESDAY_10_NY)
        rc = proc.finish(timeout=120)
        log = "\n".join(proc.seen)
        assert rc == 0, log
    finally:
        trunk.stop()
    rows = attempts(tmp_path)
    assert [(r["outcome"], r["sip_code"]) for r in rows] == [("busy", 486)] * 4, (trunk.errors(), log)
    assert "on worker 0" in log and "on worker 1" in log  # both workers placed calls
    messages = trunk.messages()
    assert messages.count('Authorization: Digest username="bridge"') == 4, messages
    assert "INVITE sip:12015550110@192.0.2.1 SIP/2.0" in messages
    assert f"Route: <{proxy};lr>" in messages


@pytest.mark.parametrize("concurrency", [6])
def test_campaign_window_cps_and_resume_after_kill(tmp_path: Path, concurrency: int) -> None:
    answer = Callee.start(answer_scenario(None, ring_ms=200, talk_ms=2500), tmp_path / "answer")
    busy = Callee.start(error_scenario(486, "Busy Here"), tmp_path / "busy")
    contacts = [
        {
            "number": f"+1201555{1000 + i:04d}",
            "name": f"c{i}",
            "port": str((busy if i % 5 == 4 else answer).sip_port),
        }
        for i in range(20)
    ]
    cps = 4.0
    campaign = write_campaign(
        tmp_path,
        contacts,
        limits={"concurrency": concurrency, "calls_per_second": cps, "ring_timeout_s": 5},
        amd={"enabled": False},
        voicemail={"action": "hangup"},
    )
    config = write_config(tmp_path, max_calls=8)
    # 8 s before 09:00 in New York on a Wednesday: nothing may start before the window opens.
    window_open = datetime(2026, 1, 7, 14, 0, tzinfo=UTC)
    start = window_open - timedelta(seconds=8)
    t0 = time.monotonic()
    try:
        first = dial(tmp_path, campaign, config, start)
        first.wait_for(r"sip listening on \S+ port\(s\) \d+.*\b2 worker", 90)
        for _ in range(7):  # kill once several attempts are recorded and others are up
            first.wait_for(r"attempt \d+ recorded", 90)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        first_log = "\n".join(first.seen)
        in_flight = [r for r in attempts(tmp_path) if r["ended_at"] is None]

        second = dial(tmp_path, campaign, config, start + timedelta(seconds=time.monotonic() - t0))
        rc = second.finish(timeout=150)
        log = "\n".join(second.seen)
        assert rc == 0, log
        log = first_log + "\n----- resumed -----\n" + log
    finally:
        answer.stop()
        busy.stop()

    rows = attempts(tmp_path)
    with db(tmp_path) as conn:
        states = {r["number"]: r["state"] for r in conn.execute("SELECT * FROM contacts")}
    # Every contact is final or has a scheduled retry; every attempt is closed.
    assert len(states) == 20 and set(states.values()) <= {"final", "retry"}, states
    assert all(r["ended_at"] is not None and r["outcome"] for r in rows)
    # Nothing lost: every answering contact was answered exactly once; busy ones are scheduled to retry.
    answered = [r["number"] for r in rows if r["outcome"] == "answered-human"]
    expected = sorted(c["number"] for c in contacts if c["port"] == str(answer.sip_port))
    assert sorted(answered) == expected, log
    for c in contacts:
        if c["port"] == str(busy.sip_port):
            assert states[c["number"]] == "retry"
    # Attempts interrupted by the kill were closed as cancelled and the contact called again (new attempt).
    assert in_flight, "the kill should have caught calls in flight"
    for r in in_flight:
        closed = next(x for x in rows if x["id"] == r["id"])
        assert closed["outcome"] == "cancelled"
        assert any(x["number"] == r["number"] and x["attempt"] == r["attempt"] + 1 for x in rows)
    # Concurrency: never more than `concurrency` attempts open at once.
    edges = sorted([(r["started_at"], 1) for r in rows] + [(r["ended_at"], -1) for r in rows])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    assert peak <= concurrency
    # The window: no attempt before 09:00 New York.
    assert min(r["started_at"] for r in rows) >= window_open.timestamp()
    # CPS: any k+1 consecutive starts span at least k/cps seconds (bucket of one token), per run.
    starts = sorted(r["started_at"] for r in rows)
    for i in range(len(starts) - 4):
        assert starts[i + 4] - starts[i] >= 3 / cps - 0.05, starts


def amd_events(work: Path) -> dict[str, dict[str, Any]]:
    """The AMD decision recorded for each outbound call (call id -> event data)."""
    with db(work) as conn:
        return {
            r["call_id"]: json.loads(r["data"])
            for r in conn.execute("SELECT call_id, data FROM call_events WHERE kind = 'amd'")
        }


def timing_alone(ulaw: Path) -> str:
    """What AMD decides on this audio without words: the rules of audio/amd.py on the decoded file."""
    pcm = g711.ulaw_decode(np.frombuffer(ulaw.read_bytes(), np.uint8)).astype(np.int16)
    amd = AnsweringMachineDetector()
    for i in range(0, len(pcm) - 159, 160):
        decision = amd.process(pcm[i : i + 160])
        if decision is not None:
            return decision.kind
    return amd.finish().kind


# tiny.en hears this espeak-ng phrase right after 8 kHz u-law (checked for six voices and rates; "leave a
# message" comes out as "leave my message"), and at 1.1 s of speech it is short enough to pass for a person.
SHORT_VOICEMAIL = "Leave me a message."


def test_words_from_asr_make_a_short_greeting_a_machine(tmp_path: Path) -> None:
    short_vm = greeting_audio(tmp_path, SHORT_VOICEMAIL)
    hello = greeting_audio(tmp_path, "Hello?")
    assert timing_alone(short_vm) == "human"  # the case words are for: timing says person
    callees = {
        "machine": Callee.start(answer_scenario(short_vm), tmp_path / "vm", calls=1),
        "person": Callee.start(answer_scenario(hello, talk_ms=6000), tmp_path / "hello", calls=1),
    }
    contacts = [
        {"number": f"+1201555020{i}", "name": who, "port": str(c.sip_port), "subject_name": "Dana Whitfield"}
        for i, (who, c) in enumerate(callees.items())
    ]
    campaign = write_campaign(tmp_path, contacts, limits={"concurrency": 2, "calls_per_second": 1})
    try:
        proc = dial(tmp_path, campaign, write_config(tmp_path, max_calls=4), WEDNESDAY_10_NY)
        rc = proc.finish(timeout=120)
        log = "\n".join(proc.seen)
        assert rc == 0, log
    finally:
        for c in callees.values():
            c.stop()

    rows = {r["number"]: r for r in attempts(tmp_path)}
    vm, person = (rows[c["number"]] for c in contacts)
    events = amd_events(tmp_path)
    assert (vm["amd"], vm["outcome"]) == ("machine", "voicemail-message-left"), log
    decision = events[vm["call_id"]]
    assert decision["reasons"][0] == "voicemail phrase 'leave me a message' in greeting", decision
    # The words are the supervisor's ASR's, logged there as they were sent to the worker.
    assert "leave me a message" in decision["transcript"].lower(), decision
    assert "AMD words of the first" in log and repr(decision["transcript"]) in log
    assert (person["amd"], person["outcome"]) == ("human", "answered-human"), log
    assert events[person["call_id"]]["reasons"][0].startswith("short greeting"), events[person["call_id"]]


def test_pause_cancels_a_ringing_call_and_resume_calls_it_again(tmp_path: Path) -> None:
    """Two calls up when the campaign is paused: the answered one runs to its end (the callee hangs up), the
    ringing one is CANCELled, recorded cancelled without counting as a try, and called again on resume."""
    talking = Callee.start(answer_scenario(None, ring_ms=200, talk_ms=6000), tmp_path / "talking", calls=1)
    ringing = Callee.start(
        ring_then_answer_scenario(None, answer_after_ms=5000, talk_ms=2000),
        tmp_path / "ringing",
        calls=2,
        trace_msg=True,
    )
    contacts = [
        {"number": "+12015550300", "name": "talking", "port": str(talking.sip_port)},
        {"number": "+12015550301", "name": "ringing", "port": str(ringing.sip_port)},
    ]
    campaign = write_campaign(
        tmp_path,
        contacts,
        limits={"concurrency": 2, "calls_per_second": 1, "ring_timeout_s": 20},
        amd={"enabled": False},
        voicemail={"action": "hangup"},
    )
    config = write_config(tmp_path, max_calls=4)

    def campaign_cli(action: str) -> None:
        # As an operator would, from another shell: the running dial reads the status from SQLite.
        done = subprocess.run(
            [*SIPBRIDGE, "campaign", action, "verify-test", "-c", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    try:
        proc = dial(tmp_path, campaign, config, WEDNESDAY_10_NY)
        http = int(proc.wait_for(r"http listening on http://127\.0\.0\.1:(\d+)", 90).group(1))
        proc.wait_for(r"\+12015550301 ringing \(180", 90)
        with db(tmp_path) as conn:
            answered = [r[0] for r in conn.execute("SELECT answered_at FROM calls ORDER BY created_at")]
        assert answered[0] is not None and answered[1] is None  # one call talking, one ringing
        campaign_cli("pause")
        proc.wait_for(r"\+12015550301 attempt 1 recorded: cancelled \(paused while ringing", 30)
        by_number = {r["number"]: r for r in attempts(tmp_path)}
        cancelled = by_number["+12015550301"]
        assert (cancelled["outcome"], cancelled["event"], cancelled["state"]) == (
            "cancelled",
            "paused",
            "pending",
        )
        assert by_number["+12015550300"]["ended_at"] is None  # still talking while paused
        metrics = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=10).text.splitlines()
        # prometheus-client writes every value as a float (issue 18)
        assert 'sipbridge_dial_attempts_total{campaign="verify-test",outcome="cancelled"} 1.0' in metrics
        assert "sipbridge_dial_in_flight 1.0" in metrics and "sipbridge_calls_active 1.0" in metrics
        campaign_cli("resume")
        rc = proc.finish(timeout=90)
        log = "\n".join(proc.seen)
        assert rc == 0, log
        # The answered callee hung up itself after talking (a BYE from us would have failed its scenario).
        assert talking.proc.wait(timeout=30) == 0, talking.errors()
        assert ringing.proc.wait(timeout=30) == 0, ringing.errors()
    finally:
        talking.stop()
        ringing.stop()

    assert "CANCEL sip:" in ringing.messages()  # the ringing call got a SIP CANCEL
    rows = attempts(tmp_path)
    [kept] = [r for r in rows if r["number"] == "+12015550300"]
    assert (kept["outcome"], kept["state"]) == ("answered-human", "final"), log
    first, second = (r for r in rows if r["number"] == "+12015550301")
    assert (first["attempt"], first["outcome"], first["event"]) == (1, "cancelled", "paused")
    assert json.loads(first["detail"])["code"] == 487
    assert (second["attempt"], second["outcome"], second["state"]) == (2, "answered-human", "final"), log
    assert second["started_at"] > first["ended_at"]
