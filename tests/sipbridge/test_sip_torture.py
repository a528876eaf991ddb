"""SIP torture (issue 19, item 1): RFC 4475-style messages, valid-but-tricky and invalid, over UDP and TCP, to
the Kamailio front and to a worker directly, on one real `sipbridge run` (2 workers behind the front). Each
message gets the status in the table (`sip_torture.CASES`) or, where the table says 0, no answer at all; no
process dies, no call slot stays held, and a normal SIPp call succeeds afterwards. The table with the reasons
is in docs/RELIABILITY.md."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from .bridge import Bridge
from .peers import sipp_scenario
from .sip_torture import CASES, close, fire, markdown_table
from .test_front import dial, silence, until

pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")


def front_settled(bridge: Bridge) -> dict[str, Any] | None:
    front: dict[str, Any] = bridge.health()["front"]
    settled = all(d["calls"] == 0 and d["state"] == "active" for d in front["destinations"])
    return front if settled else None


def test_torture_messages_get_the_rfc_answer_at_the_front_and_at_a_worker(tmp_path: Path) -> None:
    assert len(CASES) >= 30
    bridge = Bridge.start(
        tmp_path / "bridge",
        {"sip": {"max_calls": 8, "transports": ["udp", "tcp"]}, "agent": {"kind": "echo"}},
    )
    try:
        health = bridge.health()
        pids = {w["pid"] for w in health["sip"]["workers"]} | {health["front"]["pid"]}
        worker_port = health["sip"]["workers"][0]["sip_port"]
        wrong = []
        table = []
        for target, port in (("front", bridge.port), ("worker", worker_port)):
            for transport in ("UDP", "TCP"):
                # Two volleys, each holding fewer INVITEs than the 8 call slots: a ninth INVITE in flight at
                # once would rightly get the front's 503 (every slot taken), not the case's answer.
                shots = []
                for volley in (CASES[0::2], CASES[1::2]):
                    fired = fire(volley, target, transport, port)
                    close(fired)
                    shots += fired
                for shot in shots:
                    want = shot.case.expect(target, transport)
                    table.append(
                        f"{target:6} {transport} {shot.case.name:11} want {want:3} got {shot.final or '-'}"
                    )
                    if shot.status != want:
                        wrong.append(table[-1])
        print("\n".join(table))
        assert not wrong, "\n".join(wrong)
        # Nothing died or restarted, and no slot is held at the front or in a worker.
        health = bridge.health()
        assert {w["pid"] for w in health["sip"]["workers"]} | {health["front"]["pid"]} == pids
        assert all(w["restarts"] == 0 and w["ready"] for w in health["sip"]["workers"])
        until(lambda: bridge.health()["calls"]["active"] == 0, 10, "no call left active")
        front = until(lambda: front_settled(bridge), 10, "every front slot free, every worker active")
        assert front["restarts"] == 0
        # A normal call afterwards, through the front.
        audio = silence(tmp_path / "silence.ulaw", 3)
        caller = dial(bridge, sipp_scenario(audio=audio, talk_ms=1000), tmp_path / "caller")
        assert caller.wait(60) == 0, caller.errors()
        bridge.wait_log(r"recorded: completed")
    finally:
        assert bridge.stop() == 0


def test_the_documented_table_is_the_tested_one() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "RELIABILITY.md").read_text()
    assert markdown_table() in doc, (
        "regenerate the table in docs/RELIABILITY.md from sip_torture.markdown_table()"
    )
