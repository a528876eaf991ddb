"""`sipbridge call` as a user runs it: a real process placing real SIP calls over loopback (pjsua2) to a live
`sipbridge run`, to SIPp answering with an error, and to a port where nothing answers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .bridge import Bridge
from .dialer.callees import Callee, answer_scenario, challenge_scenario, error_scenario, ring_scenario
from .peers import caller_audio, free_udp_port
from .procs import SIPBRIDGE


def call(
    *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIPBRIDGE, "call", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Bridge:
    b = Bridge.start(tmp_path_factory.mktemp("bridge"), {})
    yield b
    assert b.stop() == 0


def test_call_speaks_with_the_bot_and_prints_its_words_and_timings(bridge: Bridge, tmp_path: Path) -> None:
    """What the bot says and when depends on a shared, busy machine (its speech can stall for seconds under
    load, which ends its turn early for any caller): the checks hold for every such run."""
    wav = caller_audio("Yes please", 0.0, 0.0).write_wav(tmp_path / "yes.wav")
    out, report_path = tmp_path / "call.wav", tmp_path / "call.json"
    uri = f"sip:bot@127.0.0.1:{bridge.port}"
    lines_args = (
        "--say",
        "Good morning",
        "--wav",
        str(wav),
        "--record",
        str(out),
        "--json",
        str(report_path),
    )
    # A long end-of-turn silence: on a busy machine the bot's sentences may come with pauses between them.
    result = call(uri, *lines_args, "--end-silence-ms", "1500", "--reply-timeout", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    bot = [ln for ln in lines if re.match(r'bot \d+\.\d\d s: "', ln)]
    # The greeting ("Hello, this is sipbridge. How can I help?"), heard through tiny.en at 8 kHz.
    assert "hello" in bot[0].lower(), result.stdout
    you = [ln for ln in lines if ln.startswith("you ")]
    assert len(you) == 2 and you[0].endswith('"Good morning"') and "(yes.wav)" in you[1], result.stdout
    assert "yes" in you[1].lower()  # the WAV line's words come from ASR
    assert lines.index(bot[0]) < lines.index(you[0]) < lines.index(you[1])
    # Our lines are answered (the echo agent repeats them); a gap is the bot's response time.
    gaps = [float(m.group(1)) for ln in lines if (m := re.fullmatch(r"bot gap (\d+\.\d\d) s", ln))]
    assert gaps and all(g > 0.0 for g in gaps), result.stdout  # how long: bench, not test
    assert lines.index(you[0]) < lines.index(f"bot gap {gaps[0]:.2f} s")
    assert len(bot) >= 2 and result.stdout.rstrip().endswith("(we hung up)"), result.stdout
    # The bridge took it as a call with a caller's turns.
    call_row = bridge.calls()[-1]
    assert call_row["state"] == "ended" and any(t["who"] == "caller" for t in bridge.turns(call_row["id"]))
    # Both sides recorded, in step: us on the left, the bot on the right.
    stereo, rate = sf.read(out, dtype="int16")
    assert rate == 8000 and stereo.shape[1] == 2 and len(stereo) / rate > 3.0
    assert np.abs(stereo[:, 0]).max() > 3000 and np.abs(stereo[:, 1]).max() > 3000
    # The same call as data.
    report = json.loads(report_path.read_text())
    assert report["exit_code"] == 0 and report["answered"] and report["codec"] == "PCMU"
    you_turns = [t for t in report["turns"] if t["who"] == "you"]
    assert you_turns[0]["words"] == "Good morning" and you_turns[1]["file"] == "yes.wav"
    assert sum(t["who"] == "bot" for t in report["turns"]) == len(bot)
    assert [f"{g:.2f}" for g in report["gaps_s"]] == [f"{g:.2f}" for g in gaps]


def test_listening_only_exits_after_the_greeting(bridge: Bridge, tmp_path: Path) -> None:
    result = call(f"127.0.0.1:{bridge.port}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answered after" in result.stdout and re.search(r'bot \d+\.\d\d s: "hello', result.stdout.lower())


def test_nothing_listening_is_a_clear_failure(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:  # takes the datagrams, never answers
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        result = call(f"sip:bot@127.0.0.1:{port}", "--connect-timeout", "1", "--no-asr", cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"no SIP response from 127.0.0.1:{port}" in result.stderr
    assert "is a SIP server listening there?" in result.stderr
    with socket.socket() as closed:  # TCP: the connection is refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = call(f"sip:bot@127.0.0.1:{port};transport=tcp", "--no-asr", cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"no SIP response from 127.0.0.1:{port} (tcp)" in result.stderr


def test_a_rejected_call_says_why(tmp_path: Path) -> None:
    callee = Callee.start(error_scenario(486, "Busy Here"), tmp_path / "sipp", calls=1)
    try:
        result = call(f"sip:someone@127.0.0.1:{callee.sip_port}", "--no-asr", cwd=tmp_path)
    finally:
        callee.stop()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "rejected: 486 Busy Here" in result.stderr
    assert "180 Ringing" in result.stdout


def test_ringing_past_the_ring_timeout_is_no_answer(tmp_path: Path) -> None:
    callee = Callee.start(ring_scenario(), tmp_path / "sipp", calls=1)
    try:
        result = call(
            f"sip:2000@127.0.0.1:{callee.sip_port}", "--ring-timeout", "1", "--no-asr", cwd=tmp_path
        )
        assert callee.proc.wait(timeout=30) == 0, callee.errors()  # it got our CANCEL and ended the call
    finally:
        callee.stop()
    assert result.returncode == 4, result.stdout + result.stderr
    assert "180 Ringing" in result.stdout and "no answer: rang for 1 s" in result.stderr


def test_answered_but_never_a_word_exits_5(tmp_path: Path) -> None:
    """SIPp answers and sends no audio at all: we wait --reply-timeout, hang up, and say so."""
    callee = Callee.start(answer_scenario(None, ring_ms=0), tmp_path / "sipp", calls=1)
    try:
        target = f"sip:2000@127.0.0.1:{callee.sip_port}"
        result = call(target, "--reply-timeout", "1", "--no-asr", cwd=tmp_path)
        assert callee.proc.wait(timeout=30) == 0, callee.errors()  # it got our BYE
    finally:
        callee.stop()
    assert result.returncode == 5, result.stdout + result.stderr
    assert "answered after" in result.stdout and "bot silent for 1.00 s" in result.stdout
    assert "the other side never spoke" in result.stderr


def test_ctrl_c_hangs_up_properly(tmp_path: Path) -> None:
    """SIGINT mid-call sends BYE (SIPp waits for it and exits 0) and the tool still reports the call."""
    callee = Callee.start(answer_scenario(None, ring_ms=0), tmp_path / "sipp", calls=1)
    try:
        proc = subprocess.Popen(
            [
                *SIPBRIDGE,
                "call",
                f"sip:2000@127.0.0.1:{callee.sip_port}",
                "--reply-timeout",
                "60",
                "--no-asr",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        seen = [proc.stdout.readline() for _ in range(3)]  # calling, 180 Ringing, answered after ...
        assert seen[-1].startswith("answered after"), seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert callee.proc.wait(timeout=30) == 0, callee.errors()
    finally:
        callee.stop()
    assert proc.returncode == 5, out + err
    assert "we hung up: interrupted" in err


@pytest.mark.parametrize(("password", "final"), [("s3cret", "486 Busy Here"), ("wrong", "403 Forbidden")])
def test_digest_auth_for_a_pbx_that_challenges(tmp_path: Path, password: str, final: str) -> None:
    """SIPp checks the Authorization of the INVITE sent again after its 401: right gets 486, wrong 403."""
    callee = Callee.start(challenge_scenario("1001", "s3cret", hold_ms=100), tmp_path / "sipp", calls=1)
    try:
        target = f"sip:2000@127.0.0.1:{callee.sip_port}"
        env = {"SIPBRIDGE_CALL_PASSWORD": password}
        result = call(target, "--auth", "1001", "--no-asr", cwd=tmp_path, env=env)
    finally:
        callee.stop()
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"rejected: {final}" in result.stderr
    missing = call(target, "--auth", "1001", cwd=tmp_path, env={"SIPBRIDGE_CALL_PASSWORD": ""})
    assert missing.returncode == 2 and "SIPBRIDGE_CALL_PASSWORD" in missing.stderr


def test_bad_usage_exits_2_before_dialling(tmp_path: Path) -> None:
    result = call("sips:bot@127.0.0.1", cwd=tmp_path)
    assert result.returncode == 2 and "TLS" in result.stderr
    missing = tmp_path / "nope.wav"
    result = call(f"127.0.0.1:{free_udp_port()}", "--wav", str(missing), cwd=tmp_path)
    assert result.returncode == 2 and f"--wav {missing}" in result.stderr
    result = call("--interactive", "--say", "Hi", cwd=tmp_path)
    assert result.returncode == 2 and "--interactive" in result.stderr
    result = call(f"127.0.0.1:{free_udp_port()}", "--record", str(tmp_path / "no" / "dir.wav"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_interactive_without_audio_devices_is_a_clear_failure(tmp_path: Path) -> None:
    """This machine (and CI) has no sound card: --interactive must say so, not hang or crash."""
    result = call(f"127.0.0.1:{free_udp_port()}", "--interactive", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "--interactive" in result.stderr and (
        "no microphone" in result.stderr or "PortAudio" in result.stderr
    )
