"""SIP over TLS with SRTP media (issue 18): a real pjsua2 peer process over loopback, certificates made here.

The peer (tests/sipbridge/tls_peer.py) has only a TLS transport and checks the bridge's certificate against
the CA made in the test, so an answered call proves the TLS path; its stream's profile (RTP/SAVP) and the
bridge's received-packet count prove SRTP carried the audio both ways.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from .bridge import Bridge
from .peers import free_tcp_port, refused_call
from .procs import LoggedProcess

ROOT = Path(__file__).resolve().parents[2]


def make_cert(work: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    work.mkdir(parents=True, exist_ok=True)
    cert, key = work / f"{name}.pem", work / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def peer_call(target: str, wav: Path, *args: str, talk_s: float = 5.0) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.sipbridge.tls_peer", "--target", target, "--wav", str(wav),
         "--talk-s", str(talk_s), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def tls_bridge(work: Path, cert: Path, key: Path, **tls: object) -> tuple[Bridge, int]:
    port = free_tcp_port()
    config = {
        "agent": {"kind": "echo"},
        "sip": {
            "transports": ["udp", "tls"],
            "tls": {"port": port, "cert_file": str(cert), "key_file": str(key), **tls},
        },
        "media": {"srtp": "mandatory"},
    }
    bridge = Bridge.start(work, config)
    bridge.logged(rf"worker 0 ready .* tls {port}")
    return bridge, port


def test_tls_srtp_call_and_plain_rtp_refused_when_srtp_is_mandatory(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "certs", "bridge")
    bridge, port = tls_bridge(tmp_path / "bridge", cert, key)

    wav = tmp_path / "heard.wav"
    result = peer_call(f"sip:bridge@127.0.0.1:{port};transport=tls", wav, "--ca", str(cert), talk_s=8)
    assert result["confirmed"] and result["srtp"], result
    assert result["rx_packets"] > 100, result  # the bridge's SRTP, decrypted by the peer
    bridge.wait_log("recorded: completed")
    (row,) = bridge.calls()
    assert row["rtp_packets"] > 100 and row["rtp_lost"] == 0, dict(row)  # the peer's SRTP, decrypted
    # The greeting was played into the call (what the peer heard of it depends on the machine's load).
    assert any(turn["who"] == "bot" for turn in bridge.turns(row["id"]))

    # A plain-RTP offer (SIPp over UDP) is refused: SRTP is mandatory.
    refused_call(bridge.port, 488, work=tmp_path / "plain")
    assert bridge.stop() == 0
    assert len(bridge.calls()) == 1


def test_mutual_tls_refuses_a_peer_without_a_client_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "certs", "bridge")
    client_cert, client_key = make_cert(tmp_path / "certs", "trunk")
    bridge, port = tls_bridge(tmp_path / "bridge", cert, key, ca_file=str(client_cert), verify_client=True)
    target = f"sip:bridge@127.0.0.1:{port};transport=tls"

    refused = peer_call(target, tmp_path / "refused.wav", "--ca", str(cert), talk_s=1)
    assert not refused["confirmed"], refused
    accepted = peer_call(
        target, tmp_path / "ok.wav", "--ca", str(cert), "--cert", str(client_cert), "--key", str(client_key),
        talk_s=1,
    )  # fmt: skip
    assert accepted["confirmed"] and accepted["srtp"], accepted
    bridge.wait_log("recorded: completed")
    assert bridge.stop() == 0
    assert [row["outcome"] for row in bridge.calls()] == ["completed"]


def test_unreadable_certificate_fails_the_start_naming_the_key(tmp_path: Path) -> None:
    """PJSIP would open the TLS port anyway and fail every handshake; we refuse to start instead."""
    cert, _ = make_cert(tmp_path / "certs", "bridge")
    wrong_key = tmp_path / "certs" / "other.key"
    make_cert(tmp_path / "other", "other")[1].rename(wrong_key)  # a key that does not match the certificate
    tls = {"port": 0, "cert_file": str(cert), "key_file": str(wrong_key)}
    work = tmp_path / "bridge"
    work.mkdir()
    (work / "config.yaml").write_text(
        yaml.safe_dump({"sip": {"port": 0, "transports": ["udp", "tls"], "tls": tls}, "http": {"port": 0}})
    )
    proc = LoggedProcess.start(
        ["run", "-c", str(work / "config.yaml")], cwd=work, env={"OMP_NUM_THREADS": "1"}
    )
    assert proc.finish(timeout=120) == 1
    assert any("sip.tls.cert_file" in line and "sip.tls.key_file" in line for line in proc.seen), proc.seen
