"""A bounded INVITE flood at the SIP front from one source while another source places calls (issue 19,
item 3): used by tests/sipbridge/test_front.py and bench/sip_flood.py --front."""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .sip_torture import Case, Wire, fire, sdp, with_body


def _v6_offer(w: Wire) -> bytes:
    """An INVITE the front passes on (when under its limit) and a worker's guard refuses (488: an IPv6
    media address on an IPv4 worker): it costs the workers a parse, never a call slot."""
    return with_body(w.head("INVITE"), sdp(conn="c=IN IP6 ::1"))


def _call(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), sdp())


CALL = Case("call", "a normal call (no media: the echo agent greets it)", _call, 200, 200)


@dataclass
class FloodResult:
    sent: int = 0
    seconds: float = 0.0
    answers: Counter[int] = field(default_factory=Counter)  # final status -> INVITEs (retransmissions once)
    seen: set[str] = field(default_factory=set)
    call_setup_ms: list[float] = field(default_factory=list)
    call_answers: Counter[int] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        setup = sorted(self.call_setup_ms)
        return {
            "flood": {
                "sent": self.sent,
                "seconds": round(self.seconds, 2),
                "answered": dict(sorted(self.answers.items())),
                "unanswered": self.sent - sum(self.answers.values()),
            },
            "other_source_calls": {
                "placed": len(setup),
                "answers": dict(sorted(self.call_answers.items())),
                "setup_ms_median": round(statistics.median(setup), 1) if setup else None,
                "setup_ms_max": round(setup[-1], 1) if setup else None,
            },
        }


def flood_while_calling(
    front_port: int, flood_src: str, *, seconds: float = 5.0, rate: int = 200, calls: int = 5
) -> FloodResult:
    """`rate` INVITEs a second from `flood_src` for `seconds` (paced, so the kernel's socket buffer does not
    decide the outcome), counting the final answers; meanwhile `calls` normal calls from 127.0.0.1, one after
    the other, each timed from INVITE to its final answer (then ACKed and hung up)."""
    result = FloodResult()
    done = threading.Event()

    def caller() -> None:
        while not done.is_set() and len(result.call_setup_ms) < calls:
            t0 = time.monotonic()
            (shot,) = fire([CALL], "front", "UDP", front_port, quiet_s=0.0)
            shot.sock.close()
            result.call_setup_ms.append(1000 * (time.monotonic() - t0))
            result.call_answers[shot.status] += 1

    thread = threading.Thread(target=caller, daemon=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((flood_src, 0))
        lport = sock.getsockname()[1]
        thread.start()
        start = time.monotonic()
        while (now := time.monotonic() - start) < seconds:
            while result.sent < int(now * rate) + 1:
                # (the Via names 127.0.0.1 with rport: answers go back to the real source address)
                sock.sendto(_v6_offer(Wire("UDP", front_port, lport)), ("127.0.0.1", front_port))
                result.sent += 1
            _drain(sock, result, 0.002)
        result.seconds = time.monotonic() - start
        _drain(sock, result, 1.0)
    thread.join(timeout=60)
    done.set()
    return result


def _drain(sock: socket.socket, result: FloodResult, quiet_s: float) -> None:
    """Read final answers until the socket is quiet for `quiet_s`; each INVITE's first one counts (we send
    no ACK, as a flood would not, so the front retransmits its answers)."""
    while select.select([sock], [], [], quiet_s)[0]:
        head = sock.recv(65535).split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        parts = head[0].split(" ", 2)
        if (
            not (head[0].startswith("SIP/2.0 ") and len(parts) > 1 and parts[1].isdigit())
            or parts[1][0] == "1"
        ):
            continue
        call_id = next((ln.split(":", 1)[1].strip() for ln in head if ln.lower().startswith("call-id:")), "")
        if call_id not in result.seen:
            result.seen.add(call_id)
            result.answers[int(parts[1])] += 1
