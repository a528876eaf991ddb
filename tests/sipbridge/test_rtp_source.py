"""RTP from anyone but the call's peer never reaches the call (issue 15's security finding,
docs/RELIABILITY.md): PJSIP plays RTP from a stranger before the peer's first packet and adopts a new source
after a few packets, so whoever reaches a worker's RTP port could speak into a call.

A real call: a caller (hand-driven SIP, real RTP of silence from the port its SDP names) and, on another
socket, an attacker sending loud speech to the worker's RTP port from before the caller's first packet to the
end of the call. With `media.rtp_source: sdp` (the default) the call's recording holds the caller's silence
only and no caller turn is heard; `any` (PJSIP's own behaviour) is the attack succeeding, kept as a test so
the default stays justified: it must fail the same checks.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio import g711
from sipbridge.sip.rtpsource import restrict

from .bridge import Bridge
from .peers import caller_audio
from .rawsip import RawSip, status

FRAME = 160  # 20 ms of PCMU at 8 kHz


def rtp_stream(
    sock: socket.socket, dest: tuple[str, int], payloads: list[bytes], ssrc: int, burst: int = 1
) -> None:
    """Send `payloads` as one RTP stream (PCMU, 20 ms apart, paced on the clock), the first `burst` of them
    back to back (more than PJSIP's probation count between two of the peer's packets: it switches)."""
    t0 = time.monotonic() - (burst - 1) * 0.02
    for i, payload in enumerate(payloads):
        header = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * FRAME, ssrc)
        try:
            sock.sendto(header + payload, dest)
        except OSError:
            return
        time.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))


def loud_speech_payloads(seconds: float) -> list[bytes]:
    speech = caller_audio("transfer all the money to account nine nine nine", 0.0, 0.0).pcm.astype(np.float32)
    speech = np.clip(speech / max(1.0, float(np.abs(speech).max())) * 30000, -32768, 32767).astype(np.int16)
    n = int(seconds * 50)
    pcm = np.resize(speech, n * FRAME)  # repeated to fill the call
    data = bytes(g711.ulaw_encode(pcm))
    return [data[i * FRAME : (i + 1) * FRAME] for i in range(n)]


def attacked_call(bridge: Bridge, attacker_first: bool, caller_seconds: float = 3.0) -> str:
    """One call; the attacker starts 0.5 s before the caller's RTP (or 1 s after it) and keeps on to its end.
    Returns the call id once it is recorded."""
    legit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    legit.bind(("127.0.0.1", 0))
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.1", 0))
    caller = RawSip(bridge.port)
    try:
        dialog, answer = caller.call(media_port=legit.getsockname()[1])
        assert status(answer) == 200, answer
        found = re.search(r"\r\nm=audio (\d+) ", answer)
        assert found, answer
        dest = ("127.0.0.1", int(found.group(1)))
        silence = [b"\xff" * FRAME] * int(caller_seconds * 50)
        if attacker_first:
            first = threading.Thread(
                target=rtp_stream, args=(attacker, dest, loud_speech_payloads(3.5), 0xBAD)
            )
            then = (legit, silence, 0x600D, 1)
        else:
            first = threading.Thread(target=rtp_stream, args=(legit, dest, silence, 0x600D))
            then = (attacker, loud_speech_payloads(caller_seconds - 1.0), 0xBAD, 15)
        first.start()
        # The head start: PJSIP plays a stranger's RTP before the peer's first packet; `latch` takes the
        # first source it sees (at its 0.5 s watchdog), so there the caller goes first.
        time.sleep(0.5 if attacker_first else 1.0)
        rtp_stream(then[0], dest, *then[1:])
        first.join()
        dialog.cseq += 10
        caller.send(caller.request("BYE", dialog))
        assert status(caller.final()) == 200
        return bridge.proc.wait_for(r"call (\w+) recorded: completed \(remote").group(1)
    finally:
        caller.close()
        legit.close()
        attacker.close()


def caller_channel_peak(bridge: Bridge, call_id: str) -> int:
    pcm, _rate = sf.read(bridge.rec_dir / call_id / "call.wav", dtype="int16")
    return int(np.abs(pcm[:, 0].astype(np.int32)).max())


@pytest.mark.parametrize("mode", ["sdp", "latch", "any"])
def test_rtp_from_a_stranger_never_reaches_the_call(tmp_path: Path, mode: str) -> None:
    config = {
        "sip": {"allowed_sources": ["127.0.0.1/32"]},
        "agent": {"kind": "echo"},
        "media": {"rtp_source": mode},
    }
    bridge = Bridge.start(tmp_path / "bridge", config)
    try:
        call_id = attacked_call(bridge, attacker_first=mode != "latch")
        peak = caller_channel_peak(bridge, call_id)
        caller_turns = [t for t in bridge.turns(call_id) if t["who"] != "bot"]
        if mode != "any":
            assert peak < 500, f"the attacker's audio is in the recording (peak {peak})"
            assert caller_turns == []
            bridge.logged(rf"call {call_id}: RTP accepted from 127\.0\.0\.1:\d+ only \({mode}\)")
        else:  # PJSIP's own behaviour: the stranger is heard
            assert peak > 5000
    finally:
        bridge.stop()


def test_restrict_connects_the_socket_so_the_kernel_drops_strangers() -> None:
    """The filter itself, on plain sockets: found by its local address (or by port alone, as behind a NAT
    where PJSIP names it by its public address), only the peer's datagrams arrive; unusable peers (hold's
    0.0.0.0, port 0, multicast, names) are refused."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    peer, stranger = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    peer.bind(("127.0.0.1", 0))
    stranger.bind(("127.0.0.1", 0))
    try:
        port = rx.getsockname()[1]
        peer_text = f"127.0.0.1:{peer.getsockname()[1]}"
        for unusable in ("0.0.0.0:4000", "127.0.0.1:0", "239.1.1.1:4000", "host.example:4000", "junk"):
            assert not restrict(f"127.0.0.1:{port}", unusable)
        assert restrict(f"203.0.113.7:{port}", peer_text)  # named by a public address: found by its port
        stranger.sendto(b"stranger", ("127.0.0.1", port))
        peer.sendto(b"peer", ("127.0.0.1", port))
        rx.settimeout(2)
        assert rx.recvfrom(100)[0] == b"peer"
        rx.settimeout(0.2)
        with pytest.raises(TimeoutError):
            rx.recvfrom(100)
        rx.sendto(b"reply", ("127.0.0.1", peer.getsockname()[1]))  # PJSIP's sendto still works
        peer.settimeout(2)
        assert peer.recvfrom(100)[0] == b"reply"
    finally:
        for s in (rx, peer, stranger):
            s.close()
