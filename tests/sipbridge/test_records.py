"""Records and disks (issue 12): what is stored when processes die, disks refuse writes, calls are cut by our
own shutdown or refused for their media, and when a flood of real calls overflows a worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import wave
from pathlib import Path

from .bridge import Bridge
from .peers import Sipp, caller_audio, sipp_scenario
from .procs import LoggedProcess
from .rawsip import Dialog, RawSip, sdp, status, to_tag
from .test_hostile import assert_worker_never_restarted, start

SPEECH = "Hello, I need some help with my account please."


def speaking_caller(bridge: Bridge, tmp_path: Path, talk_ms: int = 30000) -> Sipp:
    audio = caller_audio(SPEECH, lead_s=1.0, tail_s=30.0).write_ulaw(tmp_path / "caller.ulaw")
    scenario = sipp_scenario(audio=audio, hangup="caller", talk_ms=talk_ms)
    return Sipp.call(scenario, bridge.port, work=tmp_path / "sipp", timeout_s=60)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_killed_worker_leaves_a_readable_recording(tmp_path: Path) -> None:
    bridge = start(tmp_path)
    sipp = speaking_caller(bridge, tmp_path)
    try:
        bridge.wait_log(r"caller turn \d+-(\d+) ms")  # the recording holds a few seconds by now
        os.kill(bridge.health()["sip"]["workers"][0]["pid"], signal.SIGKILL)
        bridge.wait_log(r"recorded: failed")
        (call,) = bridge.calls()
        assert wav_seconds(Path(call["recording_path"])) > 2.0
    finally:
        sipp.kill()
        assert bridge.stop() == 0


def test_killed_supervisor_its_call_hung_up_then_closed_failed_at_restart(tmp_path: Path) -> None:
    bridge = start(tmp_path)
    sipp = speaking_caller(bridge, tmp_path)
    try:
        bridge.wait_log(r"caller turn \d+-(\d+) ms")
        bridge.proc.proc.send_signal(signal.SIGKILL)
        bridge.proc.finish()
        # Its orphaned worker sees the supervisor gone and hangs up: SIPp's BYE gets no 200 (481), or the
        # bridge's BYE ends it; either way SIPp does not wait out its 30 s talk.
        sipp.wait(20)
    finally:
        sipp.kill()
    config = tmp_path / "bridge" / "config.yaml"
    again = LoggedProcess.start(["run", "-c", str(config)], cwd=tmp_path / "bridge")
    try:
        again.wait_for(r"recorded 1 call\(s\) left active by a previous run as failed")
        again.wait_for(r"sipbridge ready")
    finally:
        again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 0
    (call,) = bridge.calls()
    assert call["state"] == "ended" and call["outcome"] == "failed"
    assert wav_seconds(Path(call["recording_path"])) > 2.0


def test_unwritable_recordings_dir_costs_no_call(tmp_path: Path) -> None:
    bridge = start(tmp_path)
    shutil.rmtree(bridge.rec_dir)
    bridge.rec_dir.write_text("not a directory")  # every mkdir/open under it fails, as on a broken disk
    sipp = speaking_caller(bridge, tmp_path, talk_ms=9000)
    try:
        assert sipp.wait(60) == 0, sipp.errors()  # the caller hung up itself after 9 s: the call went on
        bridge.wait_log(r"recorded: completed \(remote")
        (call,) = bridge.calls()
        events = bridge.events(call["id"], "recording_failed")
        assert len(events) == 1 and "Error" in json.loads(events[0]["data"])["error"]
        assert [t["who"] for t in bridge.turns(call["id"])][:2] == ["bot", "caller"]
        assert bridge.metrics()["sipbridge_recording_failures_total"] == 1
        assert_worker_never_restarted(bridge)
    finally:
        sipp.kill()
        assert bridge.stop() == 0


def test_shutdown_hangup_and_488_are_recorded_as_what_they_are(tmp_path: Path) -> None:
    bridge = start(tmp_path)
    caller = RawSip(bridge.port)
    try:
        g722_only = (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 40000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n"
        )
        # No common codec: PJSIP answers 488 before any call or media exists (no call row); an unusable
        # address is the guard's 488, stored in the refusals aggregate with its reason.
        caller.send(caller.request("INVITE", Dialog("g722", "t"), body=g722_only))
        assert status(caller.final()) == 488
        caller.send(caller.request("INVITE", Dialog("v6", "t"), body=sdp("::1", family="IP6")))
        assert status(caller.final()) == 488
        _dialog, answer = caller.call()
        assert status(answer) == 200
        bridge.wait_log(r"media up")
    finally:
        assert bridge.stop() == 0
    assert any(r.startswith("BYE ") for r in caller.responses(1.0))  # the caller was told
    caller.close()
    calls = {r["sip_status"]: r for r in bridge.calls()}
    assert set(calls) == {200}
    with bridge.db() as db:
        refused = db.execute("SELECT code, reason FROM refusals WHERE method = 'INVITE'").fetchall()
    assert [tuple(r) for r in refused] == [(488, "connection address of another family or multicast")]
    assert calls[200]["outcome"] == "interrupted" and calls[200]["reason"].startswith("shutdown"), dict(
        calls[200]
    )


def test_a_call_ended_just_before_sigterm_is_recorded(tmp_path: Path) -> None:
    """The caller hangs up and SIGTERM follows at once: the call's end is still queued for the store's
    writer thread (or not even handled) when the stop begins; it is committed before the process exits."""
    bridge = start(tmp_path)
    caller = RawSip(bridge.port)
    try:
        dialog, answer = caller.call()
        assert status(answer) == 200
        bridge.wait_log(r"media up")
        dialog.cseq += 10
        caller.send(caller.request("BYE", dialog))
        assert status(caller.final()) == 200
        bridge.wait_log(r"call \S+ ended by remote")  # the worker's line, before the supervisor records it
    finally:
        assert bridge.stop() == 0
        caller.close()
    (call,) = bridge.calls()
    # CallEnded handled before the stop: completed; or the stop closed the session first: interrupted.
    assert call["state"] == "ended" and call["outcome"] in ("completed", "interrupted"), dict(call)
    assert call["agent"] == "echo" and call["codec"]  # the writes queued at its start are there too
    assert "store writer closed" in "\n".join(bridge.proc.seen)


def test_a_call_whose_row_cannot_be_written_is_hung_up_and_the_error_surfaced(tmp_path: Path) -> None:
    """The store's writer thread fails the call's first write (a trigger stands in for a broken disk): the
    error is not swallowed on that thread; it is logged, counted and shown, and the call is hung up."""
    bridge = start(tmp_path)
    db = bridge.db()
    db.execute("CREATE TRIGGER broken BEFORE INSERT ON calls BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    db.commit()
    db.close()
    caller = RawSip(bridge.port)
    try:
        _dialog, answer = caller.call()
        assert status(answer) == 200
        bridge.wait_log(r"store: the call's row could not be written: disk says no; hanging up")
        assert any(r.startswith("BYE ") for r in caller.responses(2.0))  # the caller is told at once
        bridge.logged(r"store \S+: CreateCall of call \S+: IntegrityError: disk says no failed")
        store = bridge.health()["store"]  # the call's later writes fail too (no row): each one counted
        assert store["write_errors"] >= 1 and "of call" in store["last_error"]
        assert bridge.metrics()["sipbridge_store_write_errors_total"] == store["write_errors"]
    finally:
        assert bridge.stop() == 0
        caller.close()
    assert bridge.calls() == []


def test_burst_of_real_calls_overflowing_a_worker_leaves_no_session_behind(tmp_path: Path) -> None:
    """40 valid INVITEs at once to a 4-call worker, each answered call ACKed and hung up at once."""
    bridge = start(tmp_path)
    peer = RawSip(bridge.port)
    try:
        for i in range(40):
            peer.send(peer.request("INVITE", Dialog(f"v{i}", "t"), body=sdp("127.0.0.1", 40000 + 2 * i)))
        answered: set[str] = set()
        for response in peer.responses(2.0):
            call_id = next(
                ln.split(":", 1)[1].strip() for ln in response.split("\r\n") if ln.startswith("Call-ID:")
            )
            if status(response) == 200 and call_id not in answered:  # (not a retransmitted 200)
                answered.add(call_id)
                dialog = Dialog(call_id, "t", to_tag(response))
                peer.send(peer.request("ACK", dialog))
                dialog.cseq = 2
                peer.send(peer.request("BYE", dialog))
        assert len(answered) >= 4
        for _ in answered:
            bridge.wait_log(r"recorded: completed")
        health = bridge.health()
        assert health["calls"]["active"] == 0 and health["store"]["active_calls"] == 0, health
        assert all(w["calls"] == 0 for w in health["sip"]["workers"])
        # The worker still answers a real call after the burst.
        _dialog, answer = RawSip(bridge.port).call()
        assert status(answer) == 200
    finally:
        peer.close()
        assert bridge.stop() == 0
