"""SIP flood against a real `sipbridge run` on loopback (issue 12): does one worker survive, keep its live
call, and end every session it started?

    python bench/sip_flood.py [--invites 1000] [--out docs/results/<date>-cpu-sip-flood.json]

Sends, as fast as one socket can, a mix of INVITEs: from outside `sip.allowed_sources` (127.0.0.2), allowed
ones whose SDP cannot work (IPv6 address), and allowed valid ones that are ACKed and hung up at once (the
worker's four slots overflow, so PJSIP answers many 486). A legitimate call stays up throughout. Prints and
writes JSON: responses by status, worker restarts, sessions and store rows left active, store growth, and
whether the live call ended as its caller ended it. tests/sipbridge/test_hostile.py has the 80-INVITE
version that CI runs.

    python bench/sip_flood.py --front [--seconds 5] [--rate 200] [--limit 20] [--calls 5] [--out ...]

`--front` (issue 19, item 3): a `sipbridge run` with 2 workers behind its Kamailio front
(`sip.front.rate_limit_per_s` = --limit); 127.0.0.5 sends --rate INVITEs a second for --seconds (each one a
worker would refuse, 488), while 127.0.0.1 places --calls calls one after the other, each timed from INVITE
to answer. Prints: INVITEs sent, answered by status, unanswered, the front's `limited` counter, the other
source's answers and setup times. tests/sipbridge/test_front.py runs the 5 s version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sipbridge.bridge import Bridge  # noqa: E402
from tests.sipbridge.floods import flood_while_calling  # noqa: E402
from tests.sipbridge.rawsip import Dialog, RawSip, sdp, status, to_tag  # noqa: E402


def flood(bridge: Bridge, invites: int, batch: int = 100) -> dict[str, object]:
    """`batch` INVITEs back to back, then their answers, and so on: a kernel socket buffer holds ~200 kB, so a
    bigger burst only measures how many packets the kernel drops."""
    stranger, friend = RawSip(bridge.port, src="127.0.0.2"), RawSip(bridge.port)
    answers: Counter[str] = Counter()
    t0 = time.monotonic()
    for first in range(0, invites, batch):
        for i in range(first, min(invites, first + batch)):
            kind = i % 3
            if kind == 0:
                stranger.send(stranger.request("INVITE", Dialog(f"s{i}", "t"), body=sdp("127.0.0.2")))
            elif kind == 1:
                friend.send(friend.request("INVITE", Dialog(f"b{i}", "t"), body=sdp("::1", family="IP6")))
            else:
                body = sdp("127.0.0.1", 40000 + 2 * (i % 500))
                friend.send(friend.request("INVITE", Dialog(f"v{i}", "t"), body=body))
        for peer in (stranger, friend):
            for response in peer.responses(0.5):
                _answer(peer is friend, friend, response, answers)
    for response in friend.responses(2.0):
        _answer(True, friend, response, answers)
    stranger.close()
    friend.close()
    return {"wall_s": round(time.monotonic() - t0, 3), "responses": dict(sorted(answers.items()))}


def _answer(ours: bool, friend: RawSip, response: str, answers: Counter[str]) -> None:
    """Count a response; ACK and hang up each call that was answered."""
    code = status(response)
    if code == 0:
        answers[response.split(" ", 1)[0]] += 1  # a request from the bridge (its BYE of a call we left)
        return
    method = next((ln.split()[-1] for ln in response.split("\r\n") if ln.lower().startswith("cseq:")), "?")
    answers[f"{method} {code}"] += 1
    if code == 200 and ours and method == "INVITE":
        call_id = next(
            ln.split(":", 1)[1].strip() for ln in response.split("\r\n") if ln.startswith("Call-ID:")
        )
        dialog = Dialog(call_id, "t", to_tag(response))
        friend.send(friend.request("ACK", dialog))
        dialog.cseq = 2
        friend.send(friend.request("BYE", dialog))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invites", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--front", action="store_true", help="flood the Kamailio front (issue 19)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=200, help="flood INVITEs per second")
    parser.add_argument("--limit", type=int, default=20, help="sip.front.rate_limit_per_s")
    parser.add_argument("--calls", type=int, default=5, help="calls the other source places meanwhile")
    args = parser.parse_args()
    if args.front:
        return _write(front_flood(args), args.out)
    work = Path(tempfile.mkdtemp(prefix="sip-flood-"))
    bridge = Bridge.start(work, {"sip": {"allowed_sources": ["127.0.0.1/32"]}, "agent": {"kind": "echo"}})
    result: dict[str, object] = {"invites": args.invites}
    try:
        caller = RawSip(bridge.port)
        live, answer = caller.call()
        result["live_call_answered"] = status(answer)
        size0 = bridge.db_path.stat().st_size
        result.update(flood(bridge, args.invites))
        live.cseq = 9
        caller.send(caller.request("BYE", live))
        result["live_call_bye"] = status(caller.final())
        caller.close()
        deadline = time.monotonic() + 10  # let closes land (a bench may poll; tests wait on log lines)
        while time.monotonic() < deadline and bridge.health()["calls"]["active"] > 0:
            time.sleep(0.2)
        health = bridge.health()
        result["worker_restarts"] = sum(w["restarts"] for w in health["sip"]["workers"])
        result["sessions_active_after"] = health["calls"]["active"]
        result["store_active_after"] = health["store"]["active_calls"]
        result["store_growth_bytes"] = bridge.db_path.stat().st_size - size0
        with bridge.db() as db:
            row = db.execute("SELECT outcome FROM calls WHERE variables LIKE ?", (f"%{live.call_id}%",))
            result["live_call_outcome"] = (row.fetchone() or [None])[0]
            result["call_rows"] = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    finally:
        bridge.stop()
        shutil.rmtree(work, ignore_errors=True)
    return _write(result, args.out)


def front_flood(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="sip-flood-front-"))
    sip = {
        "max_calls": 8,
        "allowed_sources": ["127.0.0.1/32", "127.0.0.5/32"],
        "front": {"rate_limit_per_s": args.limit},
    }
    bridge = Bridge.start(work, {"sip": sip, "agent": {"kind": "echo"}, "storage": {"record_calls": False}})
    try:
        flood = flood_while_calling(
            bridge.port, "127.0.0.5", seconds=args.seconds, rate=args.rate, calls=args.calls
        )
        result: dict[str, object] = {
            "rate_limit_per_s": args.limit,
            "flood_rate": args.rate,
            **flood.report(),
        }
        deadline = time.monotonic() + 5  # the front's counters reach /metrics with its next poll (0.5 s)
        while time.monotonic() < deadline and not bridge.metrics()["sipbridge_front_limited_total"]:
            time.sleep(0.2)
        m = bridge.metrics()
        result["front_limited"] = int(m["sipbridge_front_limited_total"])
        result["front_failover"] = int(m["sipbridge_front_failover_total"])
        result["worker_restarts"] = sum(w["restarts"] for w in bridge.health()["sip"]["workers"])
    finally:
        bridge.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def _write(result: dict[str, object], out: Path | None) -> int:
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
