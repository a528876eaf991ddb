"""Which SIP requests a worker lets reach PJSIP: a pure policy over the raw request (no I/O, no pjsua2).

PJSIP on its own answers whatever arrives: OPTIONS and MESSAGE 200, SUBSCRIBE 200 followed by NOTIFYs to any
Contact (a reflection amplifier), in-dialog BYE / re-INVITE from anyone who knows a Call-ID, and it creates
the media sockets of an INVITE before the application can refuse it. `RequestGuard.check` runs first, on
every request (sipbridge/sip/pjguard.py hooks it in below PJSIP's transaction layer) and decides:

| request | verdict |
|---|---|
| in a dialog we hold (its Call-ID), from that dialog's peer address | pass |
| in a dialog we hold, from anyone else | 403 (ACK: dropped) |
| outside a dialog, source outside `sip.allowed_sources` | 403 (ACK: dropped) |
| SUBSCRIBE, PUBLISH, MESSAGE, REGISTER | 405 + Allow |
| a method we do not know | 501 + Allow |
| a request PJSIP parsed but whose framing or CSeq is wrong (RFC 4475: clerr, mcl01, mismatch01) | 400 |
| a datagram that filled PJSIP's 4000-byte receive buffer (it was cut: the rest is lost) | 513 |
| a new INVITE whose answer cannot fit PJSIP's send buffer | 513 |
| a new INVITE whose body is neither SDP nor multipart | 415 + Accept |
| a new INVITE whose SDP has no usable audio address | 488 |
| new INVITEs over `_INVITE_RATE`/s (each one opens two media sockets) | 503 + Retry-After |

Everything refused is answered statelessly: no transaction, no dialog, no media socket, no call slot.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import Counter
from dataclasses import dataclass, field

# Methods a worker takes part in. NOTIFY and REFER/INFO/UPDATE/PRACK only inside a dialog (transfer status,
# DTMF, session refresh); OPTIONS from an allowed source is a health probe (the SIP front's).
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY"
_KNOWN = set(ALLOW.replace(" ", "").split(","))
_NOT_OURS = {"SUBSCRIBE", "PUBLISH", "MESSAGE", "REGISTER"}
_DIALOG_ONLY = {"NOTIFY", "REFER", "INFO", "UPDATE", "PRACK"}

# PJSIP_MAX_PKT_LEN is 4000 in the pjsua2 wheel: a 200 copies Via, From, To, Call-ID, CSeq and Record-Route
# and adds Contact, Allow, Supported and ~300 bytes of SDP. Past this many bytes of copied headers the 200
# cannot be sent, and the call would hold its slot until PJSIP's transaction timer gave up (30-48 s).
MAX_COPIED_HEADERS = 2600
_COPIED = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "record-route"}

# Each INVITE that reaches pjsua opens an RTP and an RTCP socket; PJSIP's ioqueue has 64 keys and keeps a
# closed one 500 ms before reuse (PJ_IOQUEUE_KEY_FREE_DELAY). 10 new INVITEs a second leave ample room for
# four live calls and the SIP transports; a trunk never offers one worker that many.
_INVITE_RATE = 10.0
_INVITE_BURST = 10.0

# PJSIP_MAX_PKT_LEN in the wheel: a UDP datagram that long was cut by recvfrom (PJSIP parses what is left;
# a cut INVITE without its SDP would become a call whose offer PJSIP makes itself).
MAX_PACKET = 4000

_COMPACT = {"i": "call-id", "t": "to", "f": "from", "l": "content-length", "c": "content-type", "v": "via"}
_TAG = re.compile(rb";\s*tag\s*=", re.IGNORECASE)


@dataclass(frozen=True)
class WireRequest:
    """What the guard reads of a request: its method, dialog identity, size and SDP body."""

    method: str
    call_id: str
    to_tag: bool
    copied_bytes: int
    body: bytes
    problem: str = ""  # why the framing or CSeq is malformed ("" if it is not)
    size: int = 0  # bytes PJSIP received for it
    content_type: str = ""


@dataclass(frozen=True)
class GuardVerdict:
    code: int  # 0: pass to PJSIP; -1: drop silently (an ACK); else the stateless answer
    reason: str = ""

    @property
    def passes(self) -> bool:
        return self.code == 0


PASS = GuardVerdict(0)


def parse_request(raw: bytes) -> WireRequest | None:
    """The guard's view of one SIP request; None if it is not one (PJSIP has parsed it already, so this is
    only a second, forgiving read of the fields we need)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0].decode("ascii", "replace").upper() if lines else ""
    if not method or method.startswith("SIP/"):
        return None
    call_id, to_tag, copied, ctype = "", False, 0, ""
    fields: dict[str, list[str]] = {}
    for line in _unfold(lines[1:]):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower().decode("ascii", "replace")
        key = _COMPACT.get(key, key)
        if key in _COPIED:
            copied += len(line) + 2
        if key in ("cseq", "content-length"):
            fields.setdefault(key, []).append(value.decode("ascii", "replace").strip())
        if key == "call-id":
            call_id = value.strip().decode("utf-8", "replace")
        elif key == "to":
            to_tag = bool(_TAG.search(value))
        elif key == "content-type":
            ctype = value.split(b";", 1)[0].strip().lower().decode("ascii", "replace")
        # (headers are unfolded first: a folded To or Call-ID is read whole)
    problem = framing_problem(method, fields, len(body))
    return WireRequest(method, call_id, to_tag, copied, body, problem, len(raw), ctype)


def _unfold(lines: list[bytes]) -> list[bytes]:
    """Header lines with continuation lines (leading space or tab, RFC 3261 7.3.1) joined to their header."""
    out: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b" " + line.strip()
        else:
            out.append(line)
    return out


def framing_problem(method: str, fields: dict[str, list[str]], body_len: int) -> str:
    """What RFC 3261 makes a 400 and PJSIP lets through: a CSeq whose method is not the request's (RFC 4475
    mismatch01), Content-Length headers that disagree (mcl01), or one larger than what came (clerr; over TCP
    PJSIP waits for the rest, so this only shows on UDP)."""
    cseq = fields.get("cseq", [""])[0].split()
    if len(cseq) == 2 and cseq[1].upper() != method:
        return "CSeq method is not the request's"
    lengths = set(fields.get("content-length", []))
    if len(lengths) > 1:
        return "conflicting Content-Length headers"
    if lengths:
        value = lengths.pop()
        if value.isdigit() and int(value) > body_len:
            return "Content-Length larger than the message"
    return ""


def sdp_refusal(body: bytes, family: int) -> str | None:
    """Why an SDP offer cannot become a call on a socket of `family` (4 or 6), or None if it can."""
    if not body.strip():
        return None  # no offer: PJSIP sends one in the 200 and takes the answer in the ACK
    text = body.decode("utf-8", "replace")
    if not any(line.startswith("m=audio ") for line in text.splitlines()):
        return "no audio stream offered"
    for line in text.splitlines():
        if not line.startswith("c="):
            continue
        parts = line[2:].split()
        if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
            return "unusable connection line"
        address = parts[2].split("/", 1)[0]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "connection address is not an IP address"
        if ip.version != family or ip.is_multicast:
            return "connection address of another family or multicast"
    return None


def _offer_type(content_type: str) -> bool:
    """A body PJSIP can take an offer from: SDP, or multipart holding SDP (RFC 4475 mpart01)."""
    return content_type == "application/sdp" or content_type.startswith("multipart/")


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float = 0.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def source_ip(address: str) -> str:
    """`1.2.3.4:5060` / `[::1]:5060` / bare address → the address (PJSIP's srcAddress forms)."""
    if address.startswith("["):
        return address[1 : address.index("]")]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address


@dataclass
class RequestGuard:
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    family: int = 4
    invites: _Bucket = field(default_factory=lambda: _Bucket(_INVITE_RATE, _INVITE_BURST, _INVITE_BURST))
    dialogs: dict[str, str] = field(default_factory=dict)  # Call-ID -> peer IP ("" until an answer names it)
    born: dict[str, float] = field(default_factory=dict)  # Call-ID -> when it was let in (for `prune`)
    refused: Counter[tuple[str, int, str]] = field(default_factory=Counter)  # (method, code, reason), unsent

    @classmethod
    def from_cidrs(cls, cidrs: list[str], family: int = 4) -> RequestGuard:
        return cls([ipaddress.ip_network(c, strict=False) for c in cidrs], family)

    def allows_source(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.allowed)

    def check(self, req: WireRequest, ip: str, now: float | None = None) -> GuardVerdict:
        verdict = self._decide(req, ip, time.monotonic() if now is None else now)
        if not verdict.passes:
            self.refused[(req.method, verdict.code, verdict.reason)] += 1
        return verdict

    def _decide(self, req: WireRequest, ip: str, now: float) -> GuardVerdict:
        peer = self.dialogs.get(req.call_id)
        in_dialog = bool(peer) and (req.to_tag or req.method in ("ACK", "CANCEL", "BYE"))
        if in_dialog and ip != peer:
            return GuardVerdict(-1 if req.method == "ACK" else 403, "not the dialog's peer")
        # (an outbound dialog nobody has answered yet has no peer: the ACL below decides)
        if not in_dialog and not self.allows_source(ip):
            return GuardVerdict(-1 if req.method == "ACK" else 403, "source not allowed")
        if req.problem:
            return GuardVerdict(-1 if req.method == "ACK" else 400, req.problem)
        if req.size >= MAX_PACKET:
            return GuardVerdict(-1 if req.method == "ACK" else 513, "message too large")
        if in_dialog:
            return PASS
        if req.method in _NOT_OURS:
            return GuardVerdict(405, "method not allowed")
        if req.method not in _KNOWN:
            return GuardVerdict(501, "method not implemented")
        if req.method in _DIALOG_ONLY and not req.to_tag:
            return GuardVerdict(405, "method not allowed outside a dialog")
        if req.method != "INVITE" or req.to_tag:
            return PASS  # ACK/BYE/CANCEL of dialogs PJSIP may know (481 otherwise), OPTIONS probes
        return self._new_invite(req, ip, now)

    def _new_invite(self, req: WireRequest, ip: str, now: float) -> GuardVerdict:
        if req.call_id in self.dialogs:
            return PASS  # a retransmission of an INVITE we took
        if req.copied_bytes > MAX_COPIED_HEADERS:
            return GuardVerdict(513, "headers too large for an answer")
        if req.body.strip() and not _offer_type(req.content_type):
            return GuardVerdict(415, "the body is not application/sdp")
        why = sdp_refusal(req.body, self.family)
        if why is not None:
            return GuardVerdict(488, why)
        if not self.invites.take(now):
            return GuardVerdict(503, "too many INVITEs")
        self.dialogs[req.call_id] = ip
        self.born[req.call_id] = now
        return PASS

    def expect(self, call_id: str, now: float | None = None) -> None:
        """A dialog we start (outbound): its peer is whoever answers first (`answered_by`)."""
        self.dialogs.setdefault(call_id, "")
        self.born[call_id] = time.monotonic() if now is None else now

    def answered_by(self, call_id: str, ip: str) -> None:
        if self.dialogs.get(call_id) == "":
            self.dialogs[call_id] = ip

    def forget(self, call_id: str) -> None:
        self.dialogs.pop(call_id, None)
        self.born.pop(call_id, None)

    def prune(self, live: set[str], now: float, grace_s: float = 64.0) -> None:
        """Drop dialogs that never became a call (PJSIP answered 486, the caller cancelled) once PJSIP's
        transaction timers (64 x T1) are over for them."""
        for call_id, since in list(self.born.items()):
            if call_id not in live and now - since > grace_s:
                self.forget(call_id)

    def take_refused(self) -> list[tuple[str, int, str, int]]:
        """Refusals counted since the last call, for one aggregated report (method, code, reason, count)."""
        counts = [(m, c, r, n) for (m, c, r), n in self.refused.items()]
        self.refused.clear()
        return counts
