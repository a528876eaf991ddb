"""SIP over TLS at the Kamailio front (issue 18 with issue 15's front): the front terminates TLS, holds the
certificate and checks client certificates (mTLS); the workers behind it speak UDP on the host; SRTP media
goes straight between the caller and the worker.

The caller is the pjsua2 TLS peer of test_tls_srtp.py (only a TLS transport, the bridge's certificate checked
against the CA made here), so an answered call proves the front's TLS path end to end.
"""

from __future__ import annotations

from pathlib import Path

from .bridge import Bridge
from .peers import free_tcp_port, refused_call
from .test_tls_srtp import make_cert, peer_call


def test_front_terminates_tls_with_mtls_and_srtp_reaches_the_worker(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "certs", "front")
    client_cert, client_key = make_cert(tmp_path / "certs", "trunk")
    tls_port = free_tcp_port()
    tls = {"port": tls_port, "cert_file": str(cert), "key_file": str(key)}
    config = {
        "agent": {"kind": "echo"},
        "sip": {
            "transports": ["udp", "tls"],
            "front": {"mode": "on"},
            "tls": {**tls, "ca_file": str(client_cert), "verify_client": True},
        },
        "media": {"srtp": "mandatory"},
    }
    bridge = Bridge.start(tmp_path / "bridge", config)
    bridge.logged(rf"front: kamailio, tls {tls_port}")
    assert bridge.health()["front"]["ok"]
    target = f"sip:bridge@127.0.0.1:{tls_port};transport=tls"

    # No client certificate: the front refuses the handshake, no call reaches a worker.
    refused = peer_call(target, tmp_path / "refused.wav", "--ca", str(cert), talk_s=1)
    assert not refused["confirmed"], refused

    # With the trunk's certificate: answered through the front, SRTP both ways with the worker.
    accepted = peer_call(
        target, tmp_path / "ok.wav", "--ca", str(cert), "--cert", str(client_cert), "--key", str(client_key),
        talk_s=6,
    )  # fmt: skip
    assert accepted["confirmed"] and accepted["srtp"], accepted
    assert accepted["rx_packets"] > 100, accepted  # the worker's SRTP, decrypted by the peer
    bridge.wait_log("recorded: completed")
    (row,) = bridge.calls()
    assert row["outcome"] == "completed" and row["rtp_packets"] > 100 and row["rtp_lost"] == 0, dict(row)

    # Plain RTP offered over the front's UDP socket: refused, SRTP is mandatory.
    refused_call(bridge.port, 488, work=tmp_path / "plain")
    # A worker's own refusal is an answer: the front keeps it in (it once took such a worker out and 503'd).
    (worker,) = bridge.health()["front"]["destinations"]
    assert (worker["state"], worker["calls"]) == ("active", 0), worker
    assert bridge.stop() == 0
    assert len(bridge.calls()) == 1
