"""Hostile and broken SIP input must never cost a call (issue 12): a real `sipbridge run` on loopback,
attacked from 127.0.0.2 (outside `sip.allowed_sources`) and from 127.0.0.1 (inside it)
with hand-built requests.

Each test holds a legitimate call open through the attack and checks it ends as its caller ends it, recorded
`completed`, with the worker never restarted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .bridge import Bridge
from .rawsip import Dialog, RawSip, header, sdp, status

ACL = {"allowed_sources": ["127.0.0.1/32"]}


def start(tmp_path: Path, **sections: Any) -> Bridge:
    config: dict[str, Any] = {"sip": dict(ACL), "agent": {"kind": "echo"}}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return Bridge.start(tmp_path / "bridge", config)


def hang_up(bridge: Bridge, caller: RawSip, dialog: Dialog) -> None:
    """The legitimate caller's BYE ends its call, answered 200 and recorded as the caller hanging up."""
    dialog.cseq += 10
    caller.send(caller.request("BYE", dialog))
    assert status(caller.final()) == 200
    bridge.wait_log(r"recorded: completed \(remote")


def refusals_recorded(bridge: Bridge, total: int) -> None:
    """Wait until the supervisor has recorded `total` refusals in all (its per-report log lines)."""

    def counted() -> int:
        lines = [line for line in bridge.proc.seen if "sip refusals recorded" in line]
        return sum(int(n) for line in lines for n in re.findall(r" x(\d+)", line))

    while counted() < total:
        bridge.wait_log(r"sip refusals recorded")


def assert_worker_never_restarted(bridge: Bridge) -> None:
    workers = bridge.health()["sip"]["workers"]
    assert all(w["restarts"] == 0 and w["ready"] for w in workers), workers


def test_in_dialog_requests_and_unused_methods_from_strangers_are_refused(tmp_path: Path) -> None:
    bridge = start(tmp_path)
    caller, stranger = RawSip(bridge.port), RawSip(bridge.port, src="127.0.0.2")
    try:
        dialog, answer = caller.call()
        assert status(answer) == 200
        bridge.wait_log(r"media up")
        # The stranger knows the live call's Call-ID and both tags (as an on-path observer would).
        forged = Dialog(dialog.call_id, dialog.from_tag, dialog.to_tag, cseq=5)
        stranger.send(stranger.request("BYE", forged))
        assert status(stranger.final()) == 403
        forged.cseq = 6  # a re-INVITE that would move the bot's audio to the stranger
        stranger.send(stranger.request("INVITE", forged, body=sdp("127.0.0.2", 41000)))
        assert status(stranger.final()) == 403

        fresh = Dialog("c-" + dialog.call_id, "t1")
        for method in ("SUBSCRIBE", "MESSAGE", "OPTIONS", "FROB"):
            stranger.send(stranger.request(method, fresh, extra="Event: presence\r\n"))
            assert status(stranger.final()) == 403, method
        stranger.send(stranger.request("ACK", forged))  # an ACK is never answered: dropped
        # From an allowed source: SUBSCRIBE/MESSAGE 405 and an unknown method 501, each with Allow;
        # OPTIONS (the SIP front's health probe) 200. No NOTIFY follows the SUBSCRIBE.
        for method, code in (("SUBSCRIBE", 405), ("MESSAGE", 405), ("FROB", 501), ("OPTIONS", 200)):
            probe = RawSip(bridge.port)
            probe.send(
                probe.request(method, Dialog(f"{method}-{dialog.call_id}", "t2"), extra="Event: presence\r\n")
            )
            got = probe.responses(1.0)
            assert [status(r) for r in got if not r.startswith("SIP/2.0 1")] == [code], (method, got)
            if code in (405, 501):
                assert "INVITE" in header(got[0], "Allow") and "SUBSCRIBE" not in header(got[0], "Allow")
            probe.close()

        hang_up(bridge, caller, dialog)  # the call was still up: only its own caller ended it
        assert_worker_never_restarted(bridge)
        refusals_recorded(bridge, 10)
        metrics = bridge.metrics()
        assert metrics['sipbridge_sip_requests_refused_total{code="403",method="BYE"}'] == 1
        assert metrics['sipbridge_sip_requests_refused_total{code="405",method="SUBSCRIBE"}'] == 1
        assert metrics['sipbridge_sip_requests_refused_total{code="-1",method="ACK"}'] == 1
    finally:
        caller.close()
        stranger.close()
        assert bridge.stop() == 0


def test_invalid_utf8_and_forged_log_lines_cost_no_call(tmp_path: Path) -> None:
    bridge = start(tmp_path)
    caller, evil, stranger = RawSip(bridge.port), RawSip(bridge.port), RawSip(bridge.port, src="127.0.0.2")
    try:
        dialog, answer = caller.call()
        assert status(answer) == 200
        bridge.wait_log(r"media up")
        # Refused (outside the ACL) and accepted, both with bytes \xff\xfe in the From display name.
        stranger.send(
            stranger.request("INVITE", Dialog("x1", "t"), body=sdp("127.0.0.2"), display=b"\xff\xfe")
        )
        assert status(stranger.final()) == 403
        bad, answer = evil.call(display=b"\xff\xfe\x1b[31m")
        assert status(answer) == 200
        # A malformed packet whose text holds a forged log line; PJSIP logs packets it cannot parse.
        forged = (
            b"INVITE sip:x SIP/2.0\r\n2026-01-01T00:00:00.000Z INFO sipbridge.FORGED: call recorded\r\n\r\n"
        )
        stranger.send(forged)
        hang_up(bridge, evil, bad)
        hang_up(bridge, caller, dialog)
        assert_worker_never_restarted(bridge)
        rows = {r["variables"] and json.loads(r["variables"]).get("sip_call_id"): r for r in bridge.calls()}
        assert (
            "\ufffd\ufffd" in rows[bad.call_id]["remote_uri"]
            and "\x1b" not in rows[bad.call_id]["remote_uri"]
        )
        assert rows[dialog.call_id]["outcome"] == "completed"
    finally:
        for peer in (caller, evil, stranger):
            peer.close()
        assert bridge.stop() == 0
    # No line of the log starts with what a peer wrote: every line is one of ours.
    ours = re.compile(
        r"^(\d{4}-\d\d-\d\dT[\d:.]+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +sipbridge|Traceback|  |\w+Error)"
    )
    assert not [line for line in bridge.proc.seen if "FORGED" in line and not ours.match(line)]
    assert not [line for line in bridge.proc.seen if line.startswith("2026-01-01")]


def test_burst_of_80_invites_while_a_call_goes_on(tmp_path: Path) -> None:
    """40 INVITEs from outside the ACL and 40 allowed ones whose SDP cannot work (an IPv6 address for our
    IPv4 socket) in a few ms: each answered statelessly, no media socket opened, the live call unharmed."""
    bridge = start(tmp_path)
    caller, stranger, friend = RawSip(bridge.port), RawSip(bridge.port, src="127.0.0.2"), RawSip(bridge.port)
    try:
        dialog, answer = caller.call()
        assert status(answer) == 200
        bridge.wait_log(r"media up")
        size_before = bridge.db_path.stat().st_size
        for i in range(40):
            stranger.send(stranger.request("INVITE", Dialog(f"s{i}", "t"), body=sdp("127.0.0.2")))
            friend.send(friend.request("INVITE", Dialog(f"f{i}", "t"), body=sdp("::1", family="IP6")))
        got = {"stranger": stranger.responses(2.0), "friend": friend.responses(2.0)}
        finals = {who: sorted(status(r) for r in got[who] if not r.startswith("SIP/2.0 1")) for who in got}
        assert finals == {"stranger": [403] * 40, "friend": [488] * 40}
        _again, answer = RawSip(bridge.port).call()  # the worker still takes calls
        assert status(answer) == 200
        hang_up(bridge, caller, dialog)
        assert_worker_never_restarted(bridge)
        refusals_recorded(bridge, 80)
        metrics = bridge.metrics()
        assert metrics['sipbridge_calls_rejected_total{code="403"}'] == 40
        assert metrics['sipbridge_calls_rejected_total{code="488"}'] == 40
        # Refusals are aggregated: no call row each, a handful of per-minute rows.
        with bridge.db() as db:
            assert (
                db.execute(
                    "SELECT COUNT(*) FROM calls WHERE outcome IN ('rejected', 'not_acceptable')"
                ).fetchone()[0]
                == 0
            )
            total = db.execute("SELECT SUM(count) FROM refusals WHERE method = 'INVITE'").fetchone()[0]
            rows = db.execute("SELECT COUNT(*) FROM refusals").fetchone()[0]
        assert total == 80 and rows <= 4
        assert bridge.db_path.stat().st_size - size_before < 64 * 1024
    finally:
        for peer in (caller, stranger, friend):
            peer.close()
        assert bridge.stop() == 0


def test_invites_that_cannot_become_calls_take_no_slot(tmp_path: Path) -> None:
    """A From of 1700 × "é" makes the 200 larger than PJSIP's send buffer: refused 513 at once, so four of
    them do not fill the worker's four slots for the next 30-48 s. A 200 never ACKed gives its slot back
    after 8 s."""
    bridge = start(tmp_path)
    big = RawSip(bridge.port)
    try:
        for i in range(4):
            big.send(big.request("INVITE", Dialog(f"big{i}", "t"), body=sdp(), display="é".encode() * 1700))
            assert status(big.final()) == 513
        # Four INVITEs whose 200 is never ACKed (a spoofed source cannot): their slots come back after 8 s,
        # not at PJSIP's timers (30-64 s).
        for i in range(4):
            big.send(big.request("INVITE", Dialog(f"noack{i}", "t"), body=sdp()))
        for _ in range(4):
            bridge.wait_log(r"no ACK for our 200 after 8 s, ending it")
        caller = RawSip(bridge.port)
        dialog, answer = caller.call()
        assert status(answer) == 200, answer
        bridge.wait_log(r"media up")
        hang_up(bridge, caller, dialog)
        caller.close()
        outcomes = [r["outcome"] for r in bridge.calls()]
        assert sorted(outcomes) == ["completed"] + ["failed"] * 4, outcomes
    finally:
        big.close()
        assert bridge.stop() == 0
