"""The SIP front (Kamailio) before the media workers: one address, load-aware dispatch, health probes, edge
limits, several hosts. Real Kamailio, real workers, real SIPp callers over loopback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipbridge.sip.front import Destination, dispatcher_list, parse_destinations

from .bridge import Bridge
from .peers import RtpSniffer, Sipp, free_media_port, free_udp_port, sipp_scenario, voiced_packets

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")


def silence(path: Path, seconds: float) -> Path:
    path.write_bytes(b"\xff" * int(8000 * seconds))  # G.711 u-law silence: RTP flows, no caller turns
    return path


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` (a state read, not a sleep-and-hope) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def front_view(bridge: Bridge, every: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The front's /healthz section once `every` destination satisfies the check."""
    front: dict[str, Any] = bridge.health()["front"]
    return front if all(every(d) for d in front["destinations"]) else None


def front_bridge(work: Path, max_calls: int, **sip: Any) -> Bridge:
    config = {
        "sip": {"max_calls": max_calls, **sip},
        "agent": {"kind": "echo"},
        "storage": {"record_calls": False},
    }
    return Bridge.start(work, config)


def expect_503_with_retry_after(retry_after_s: int) -> str:
    """A caller that must be turned away: 503 with the configured Retry-After."""
    return sipp_scenario(expect=503).replace(
        '<recv response="503"/>',
        '<recv response="503"><action><ereg regexp="Retry-After: *' + str(retry_after_s) + '[^0-9]" '
        'search_in="msg" check_it="true" assign_to="ra"/></action></recv>',
    ).replace("</scenario>", '<Reference variables="ra"/>\n</scenario>')


def test_32_calls_over_8_workers_at_one_address_then_503(tmp_path: Path) -> None:
    bridge = front_bridge(tmp_path / "bridge", 32)
    try:
        assert len(bridge.sip_ports) == 1  # one address for all eight workers
        front = bridge.health()["front"]
        assert len(front["destinations"]) == 8
        assert {(d["state"], d["maxload"]) for d in front["destinations"]} == {("active", 4)}
        # Long enough for the last of the 32 to be set up (and the 33rd turned away) on a busy 2-core box
        # while the first still talks.
        audio = silence(tmp_path / "silence.ulaw", 20)
        media = [free_media_port() for _ in range(32)]
        t0 = time.monotonic()
        with RtpSniffer(set(media)) as sniffer:
            callers = [
                Sipp.call(
                    sipp_scenario(audio=audio, talk_ms=20000), bridge.port, work=tmp_path / f"c{i}",
                    media_port=port, timeout_s=60,
                )  # fmt: skip
                for i, port in enumerate(media)
            ]
            for _ in callers:
                bridge.wait_log(r"media up", timeout=60)
            setup_s = time.monotonic() - t0
            assert bridge.health()["calls"]["active"] == 32, setup_s
            # One more than sip.max_calls: turned away at the front with Retry-After.
            extra = Sipp.call(
                expect_503_with_retry_after(5), bridge.port, work=tmp_path / "extra", media_port=free_media_port()
            )
            assert extra.wait(30) == 0, (setup_s, extra.errors())
            for i, sipp in enumerate(callers):
                assert sipp.wait(90) == 0, (i, sipp.errors())
        for _ in callers:
            bridge.wait_log(r"recorded: completed")
        calls = bridge.calls()
        assert len(calls) == 32 and {c["outcome"] for c in calls} == {"completed"}
        assert Counter(c["worker"] for c in calls) == {i: 4 for i in range(8)}
        # Each caller heard its greeting (speech, not silence, in the bot's RTP; ~2.5 s, of which ~60 % of
        # the packets are voiced) and its own RTP reached its worker directly (not through the front).
        voiced = [len(voiced_packets(sniffer.sent_to(port))) for port in media]
        assert min(voiced) > 25, voiced
        assert min(len(sniffer.sent_from(port)) for port in media) > 300
        m = bridge.metrics()
        assert m["sipbridge_front_busy_total"] == 1
        assert m['sipbridge_calls_started_total{direction="inbound"}'] == 32
        # Every slot is free again at the front (the BYEs passed through it).
        front = until(lambda: front_view(bridge, lambda d: d["calls"] == 0), 10, "every call slot released")
        assert front["counters"]["failover"] == 0
    finally:
        assert bridge.stop() == 0
