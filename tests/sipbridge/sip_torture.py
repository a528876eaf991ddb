"""RFC 4475-style SIP torture messages and a raw UDP/TCP sender for them (test_sip_torture.py).

Each case builds its bytes for one target and transport (`Wire`), so Via, Call-ID and branch are fresh and
the sender can tell whose answer is whose (one socket per message). The names follow RFC 4475 where a case is
one of its messages (wsinv, esc01, clerr, badvers, ...); the rest are the issue's list (SDP without a common
codec, huge headers, NUL bytes, stray requests).
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Wire:
    """Where one message goes and what its headers name."""

    transport: str  # "UDP" / "TCP"
    port: int  # target port on 127.0.0.1
    lport: int  # our source port (known before sending: the socket is bound first)
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    branch: str = field(default_factory=lambda: "z9hG4bK" + uuid.uuid4().hex[:16])
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def via(self) -> str:
        return f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.lport};branch={self.branch};rport"

    def head(
        self, method: str, *, ruri: str = "", cseq: str = "", to_tag: str = "", contact: bool = True
    ) -> str:
        """A well-formed request head without Content-Length (the case adds it, right or wrong)."""
        ruri = ruri or f"sip:bridge@{self.target}"
        to = f"<sip:bridge@{self.target}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            self.via,
            f"From: <sip:torture@127.0.0.1:{self.lport}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq or '1 ' + method}",
            "Max-Forwards: 70",
        ]
        if contact:
            lines.append(f"Contact: <sip:torture@127.0.0.1:{self.lport};transport={self.transport.lower()}>")
        return "\r\n".join(lines) + "\r\n"


def with_body(head: str, body: bytes = b"", content_type: str = "application/sdp") -> bytes:
    ctype = f"Content-Type: {content_type}\r\n" if body else ""
    return (head + ctype + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def sdp(
    *,
    pts: str = "0",
    rtpmap: str = "a=rtpmap:0 PCMU/8000",
    conn: str = "c=IN IP4 127.0.0.1",
    media: bool = True,
) -> bytes:
    lines = ["v=0", "o=torture 1 1 IN IP4 127.0.0.1", "s=-", conn, "t=0 0"]
    if media:
        lines += [f"m=audio 49170 RTP/AVP {pts}", rtpmap]
    return ("\r\n".join(lines) + "\r\n").encode()


Build = Callable[[Wire], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Build
    front: int  # expected final status at the Kamailio front; 0: dropped (no answer)
    worker: int  # expected final status at a worker reached directly
    tcp_front: int | None = None  # where TCP differs (stream framing): its expectation
    tcp_worker: int | None = None

    def expect(self, target: str, transport: str) -> int:
        if transport == "TCP":
            other = self.tcp_front if target == "front" else self.tcp_worker
            if other is not None:
                return other
        return self.front if target == "front" else self.worker


# ----------------------------------------------------------------------------------------------- the cases


def _options(w: Wire) -> bytes:
    return with_body(w.head("OPTIONS"))


def _wsinv(w: Wire) -> bytes:
    """RFC 4475 3.1.1.1 in spirit: compact forms, odd case, folded lines, LWS around colons, an unknown
    header, quoted display names with escapes; all legal."""
    text = (
        f"OPTIONS sip:bridge@{w.target} SIP/2.0\r\n"
        f"v:  SIP/2.0/{w.transport}   127.0.0.1:{w.lport}\r\n ;branch={w.branch};rport\r\n"
        f'f: "J Rosenberg \\\\\\"" <sip:torture@127.0.0.1:{w.lport}>\r\n  ;tag = {w.tag}\r\n'
        f"TO :\r\n <sip:bridge@{w.target}>\r\n"
        f"i: {w.call_id}\r\n"
        "cSeQ   :   \r\n 8   OPTIONS\r\n"
        "Max-Forwards: 068\r\n"
        "NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
        "UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
        "l: 0\r\n\r\n"
    )
    return text.encode()


def _wsinv_cseq(w: Wire) -> bytes:
    """RFC 4475 wsinv's CSeq exactly: folded between the number and the method."""
    return _wsinv(w).replace(b"cSeQ   :   \r\n 8   OPTIONS", b"cseq: 0009\r\n  OPTIONS")


def _esc01(w: Wire) -> bytes:
    """RFC 4475 3.1.1.3: %-escapes in the Request-URI's user part and in From."""
    ruri = f"sip:sips%3Auser%40example.com@{w.target}"
    return with_body(w.head("OPTIONS", ruri=ruri))


def _escnull(w: Wire) -> bytes:
    """RFC 4475 3.1.1.4: escaped NULs (%00) in URIs are legal."""
    return with_body(w.head("OPTIONS", ruri=f"sip:null-%00-null@{w.target}"))


def _semiuri(w: Wire) -> bytes:
    """RFC 4475 3.1.1.9: a semicolon (escaped and not) in the user part."""
    return with_body(w.head("OPTIONS", ruri=f"sip:user;par=u%40example.net@{w.target}"))


def _longreq(w: Wire) -> bytes:
    """RFC 4475 3.1.1.7 in spirit: long but legal values (a 1 kB token header, a long To display name)."""
    head = w.head("OPTIONS") + "X-Long-Token: " + "x" * 1000 + "\r\n"
    return with_body(head)


def _badbranch(w: Wire) -> bytes:
    """RFC 4475 3.2.1 in spirit: a branch without the RFC 3261 magic cookie (an RFC 2543 peer)."""
    return with_body(w.head("OPTIONS").replace(w.branch, "1234-" + w.tag))


def _dblreq(w: Wire) -> bytes:
    """RFC 4475 3.1.1.8: octets after the message in the datagram (over UDP they are ignored)."""
    return with_body(w.head("OPTIONS")) + b"junk after the message: not a second request\r\n"


def _unknown_method(w: Wire) -> bytes:
    """RFC 4475 3.1.1.2 (intmeth) reduced: an unknown method made of legal token characters."""
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    return with_body(w.head(method))


def _register(w: Wire) -> bytes:
    return with_body(w.head("REGISTER", ruri=f"sip:{w.target}") + "Expires: 60\r\n")


def _subscribe(w: Wire) -> bytes:
    return with_body(w.head("SUBSCRIBE") + "Event: presence\r\nExpires: 60\r\n")


def _badvers(w: Wire) -> bytes:
    """RFC 4475 3.1.2.16: SIP/7.0 in the request line: 505."""
    return with_body(w.head("OPTIONS").replace(" SIP/2.0\r\n", " SIP/7.0\r\n", 1))


def _unkscm(w: Wire) -> bytes:
    """RFC 4475 3.3.2: a Request-URI scheme we do not know: 416."""
    return with_body(w.head("OPTIONS", ruri="nobodyknowsthisscheme:totallyopaque-content"))


def _insuf(w: Wire) -> bytes:
    """RFC 4475 3.3.1: no Call-ID, From or To: 400."""
    head = "".join(
        line + "\r\n"
        for line in w.head("OPTIONS").split("\r\n")
        if line and not line.startswith(("Call-ID", "From", "To"))
    )
    return with_body(head)


def _no_cseq(w: Wire) -> bytes:
    head = "".join(
        line + "\r\n" for line in w.head("OPTIONS").split("\r\n") if line and not line.startswith("CSeq")
    )
    return with_body(head)


def _mismatch01(w: Wire) -> bytes:
    """RFC 4475 3.1.2.17: CSeq's method is not the request's: 400."""
    return with_body(w.head("OPTIONS", cseq="1 INVITE"))


def _scalar02(w: Wire) -> bytes:
    """RFC 4475 3.1.2.4: a CSeq number past 2**32: 400."""
    return with_body(w.head("OPTIONS", cseq="36893488147419103232 OPTIONS"))


def _cl_bigger(w: Wire) -> bytes:
    """RFC 4475 3.1.2.2 (clerr): Content-Length says more than the datagram holds. Over UDP: 400. Over TCP
    the stream waits for the rest: no answer (the framing is the peer's to get right)."""
    body = sdp()
    head = w.head("INVITE") + "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body) + 500}\r\n\r\n").encode() + body


def _ncl(w: Wire) -> bytes:
    """RFC 4475 3.1.2.3: a negative Content-Length."""
    return (w.head("OPTIONS") + "Content-Length: -999\r\n\r\n").encode()


def _mcl01(w: Wire) -> bytes:
    """RFC 4475 3.3.9: two Content-Length headers with different values."""
    return (w.head("OPTIONS") + "Content-Length: 0\r\nContent-Length: 5\r\n\r\n").encode()


def _ltgtruri(w: Wire) -> bytes:
    """RFC 4475 3.1.2.7: the Request-URI enclosed in <>."""
    return with_body(w.head("OPTIONS", ruri=f"<sip:bridge@{w.target}>"))


def _lwsruri(w: Wire) -> bytes:
    """RFC 4475 3.1.2.8: whitespace inside the Request-URI."""
    return with_body(w.head("OPTIONS", ruri=f"sip:bridge@{w.target}; lr"))


def _lwsstart(w: Wire) -> bytes:
    """RFC 4475 3.1.2.9: several spaces between the request line's elements."""
    return with_body(w.head("OPTIONS").replace("OPTIONS sip:", "OPTIONS  sip:", 1))


def _escruri(w: Wire) -> bytes:
    """RFC 4475 3.1.2.11: headers (?Route=...) escaped into the Request-URI."""
    return with_body(w.head("OPTIONS", ruri=f"sip:bridge@{w.target}?Route=%3Csip:example.com%3E"))


def _quotbal(w: Wire) -> bytes:
    """RFC 4475 3.1.2.6: an unterminated quoted display name."""
    head = w.head("OPTIONS").replace("From: <sip:", 'From: "Bob <sip:', 1)
    return with_body(head)


def _nul_header(w: Wire) -> bytes:
    """NUL bytes inside a header value (not escaped)."""
    return with_body(w.head("OPTIONS") + "Subject: nul\x00\x00byte\r\n")


def _nul_invite(w: Wire) -> bytes:
    """NUL bytes in a header of an INVITE (the front relays INVITEs; the worker's parser drops it)."""
    return with_body(w.head("INVITE") + "Subject: nul\x00\x00byte\r\n", sdp())


def _nul_start(w: Wire) -> bytes:
    """A datagram that starts with NUL bytes."""
    return b"\x00" * 16 + with_body(w.head("OPTIONS"))


def _no_via(w: Wire) -> bytes:
    """No Via: nowhere to send an answer to (RFC 3261 18.2.1 ... 8.2.6.1): dropped."""
    head = "".join(
        line + "\r\n" for line in w.head("OPTIONS").split("\r\n") if line and not line.startswith("Via")
    )
    return with_body(head)


def _garbage(w: Wire) -> bytes:
    """Not SIP at all: a TLS ClientHello's first bytes."""
    return bytes.fromhex("16030100a5010000a10303") + bytes(range(64))


def _stray_response(w: Wire) -> bytes:
    """A response matching no transaction: dropped (RFC 3261 17.1.3 / 18.1.2)."""
    head = w.head("INVITE").replace(f"INVITE sip:bridge@{w.target} SIP/2.0", "SIP/2.0 200 OK", 1)
    return with_body(head)


def _invite_huge_header(w: Wire) -> bytes:
    """A 6 kB header on an INVITE: larger than the workers' 4000-byte receive buffer."""
    return with_body(w.head("INVITE") + "X-Huge: " + "h" * 6000 + "\r\n", sdp())


def _invite_huge_from(w: Wire) -> bytes:
    """A 2.9 kB From display name: the 200 could not be sent (guard: 513)."""
    head = w.head("INVITE").replace("From: <sip:", 'From: "' + "a" * 2900 + '" <sip:', 1)
    return with_body(head, sdp())


def _invite_no_common_codec(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), sdp(pts="18", rtpmap="a=rtpmap:18 G729/8000"))


def _invite_no_media(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), sdp(media=False))


def _invite_bad_address(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), sdp(conn="c=IN IP4 999.1.1.1"))


def _invite_hostname_address(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), sdp(conn="c=IN IP4 media.example.com"))


def _invite_multicast(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), sdp(conn="c=IN IP4 224.2.1.1/127"))


def _invite_not_sdp(w: Wire) -> bytes:
    """RFC 4475 3.3.7 (invut): a body type we do not understand: 415."""
    return with_body(w.head("INVITE"), b"<audio><pcmu port='443'/></audio>", "application/unknownformat")


def _invite_sdp_garbage(w: Wire) -> bytes:
    return with_body(w.head("INVITE"), b"this is not a session description\r\n")


def _invite_no_contact(w: Wire) -> bytes:
    """An INVITE without Contact (RFC 3261 8.1.1.8: it MUST have one)."""
    return with_body(w.head("INVITE", contact=False), sdp())


def _reinvite_unknown(w: Wire) -> bytes:
    """An in-dialog INVITE (To tag) for a dialog nobody has: 481."""
    return with_body(w.head("INVITE", to_tag="nosuchdialog"), sdp())


def _bye_unknown(w: Wire) -> bytes:
    return with_body(w.head("BYE", to_tag="nosuchdialog"))


def _cancel_stray(w: Wire) -> bytes:
    """A CANCEL whose INVITE never came: 481 (RFC 3261 9.2)."""
    return with_body(w.head("CANCEL", cseq="1 CANCEL"))


def _ack_stray(w: Wire) -> bytes:
    """An ACK matching nothing: absorbed, never answered (RFC 3261 17.2.3)."""
    return with_body(w.head("ACK", to_tag="nosuchdialog"))


def _info_outside_dialog(w: Wire) -> bytes:
    return with_body(w.head("INFO"))


def _zeromf(w: Wire) -> bytes:
    """RFC 4475 3.3.10 (zeromf): Max-Forwards 0 on an OPTIONS. A proxy must not forward it (483); a UAS is the
    final recipient and answers it."""
    return with_body(w.head("OPTIONS").replace("Max-Forwards: 70", "Max-Forwards: 0"))


# Expected final status: at the front, at a worker reached directly; then TCP's where it differs. 0: no answer
# (dropped). Where RFC 4475 allows either refusing or being liberal, the table holds what we do and the
# docs/RELIABILITY.md table says why.
CASES: list[Case] = [
    # valid but tricky: answered as the plain request would be
    Case("options", "a plain OPTIONS (baseline)", _options, 200, 200),
    Case("wsinv", "compact forms, folding, odd LWS, unknown headers (4475 3.1.1.1)", _wsinv, 200, 200),
    Case("wsinv-cseq", "CSeq folded between number and method (3.1.1.1)", _wsinv_cseq, 0, 200),
    Case("esc01", "%-escapes in the Request-URI user part (3.1.1.3)", _esc01, 200, 200),
    Case("escnull", "escaped NULs in the Request-URI (3.1.1.4)", _escnull, 200, 200),
    Case("semiuri", "semicolons in the user part (3.1.1.9)", _semiuri, 200, 200),
    Case("longreq", "a 1 kB header value (3.1.1.7)", _longreq, 200, 200),
    Case("badbranch", "RFC 2543 branch, no magic cookie (3.2.1)", _badbranch, 200, 200),
    Case("dblreq", "octets after the message (3.1.1.8)", _dblreq, 200, 200),
    Case("escruri", "escaped headers in the Request-URI (3.1.2.11: may be ignored)", _escruri, 200, 200),
    Case("lwsstart", "two spaces in the request line (3.1.2.9: may be ignored)", _lwsstart, 0, 200),
    # methods
    Case("intmeth", "an unknown method of legal token characters (3.1.1.2)", _unknown_method, 501, 501),
    Case("register", "REGISTER: a method we know and do not serve", _register, 405, 405),
    Case("subscribe", "SUBSCRIBE: known, not served", _subscribe, 405, 405),
    Case("info", "INFO outside a dialog", _info_outside_dialog, 405, 405),
    Case("zeromf", "Max-Forwards: 0 (3.3.10)", _zeromf, 483, 200),
    # invalid syntax and semantics
    Case("badvers", "SIP/7.0 (3.1.2.16)", _badvers, 0, 0),
    Case("unkscm", "unknown Request-URI scheme (3.3.2)", _unkscm, 416, 0),
    Case("insuf", "no Call-ID, From, To (3.3.1)", _insuf, 0, 0),
    Case("nocseq", "no CSeq", _no_cseq, 0, 0),
    Case("mismatch01", "CSeq method differs from the request's (3.1.2.17)", _mismatch01, 400, 400),
    Case("scalar02", "CSeq number past 2**32 (3.1.2.4)", _scalar02, 400, 0),
    Case("clerr", "Content-Length past the datagram (3.1.2.2)", _cl_bigger, 400, 400, 0, 0),
    Case("ncl", "negative Content-Length (3.1.2.3)", _ncl, 0, 0),
    Case("mcl01", "two different Content-Lengths (3.3.9)", _mcl01, 0, 400),
    Case("ltgtruri", "Request-URI in <> (3.1.2.7)", _ltgtruri, 400, 0),
    Case("lwsruri", "whitespace in the Request-URI (3.1.2.8)", _lwsruri, 0, 0),
    Case("quotbal", "unterminated quoted display name (3.1.2.6)", _quotbal, 400, 0),
    Case("nulhdr", "NUL bytes in a header of an OPTIONS", _nul_header, 400, 0),
    Case("nulinvite", "NUL bytes in a header of an INVITE", _nul_invite, 400, 0),
    Case("nulstart", "NUL bytes before the request line", _nul_start, 400, 0),
    Case("novia", "no Via", _no_via, 0, 0),
    Case("garbage", "not SIP (TLS ClientHello bytes)", _garbage, 0, 0),
    Case("response", "a response matching no transaction", _stray_response, 0, 0),
    # INVITEs that cannot become calls
    Case("hugehdr", "INVITE with a 6 kB header", _invite_huge_header, 513, 513, None, 0),
    Case("hugefrom", "INVITE with a 2.9 kB From (its 200 would not fit)", _invite_huge_from, 513, 513),
    Case("nocodec", "SDP offering only G.729", _invite_no_common_codec, 488, 488),
    Case("nomedia", "SDP without a media line", _invite_no_media, 488, 488),
    Case("badaddr", "SDP c= 999.1.1.1", _invite_bad_address, 488, 488),
    Case("hostaddr", "SDP c= a host name", _invite_hostname_address, 488, 488),
    Case("mcast", "SDP c= multicast", _invite_multicast, 488, 488),
    Case("invut", "body of an unknown type (3.3.7)", _invite_not_sdp, 415, 415),
    Case("sdpjunk", "application/sdp that is not SDP", _invite_sdp_garbage, 488, 488),
    Case("nocontact", "INVITE without Contact", _invite_no_contact, 400, 400),
    # dialogs and transactions nobody has
    Case("reinvite", "re-INVITE in an unknown dialog", _reinvite_unknown, 481, 481),
    Case("bye", "BYE in an unknown dialog", _bye_unknown, 481, 481),
    Case("cancel", "CANCEL without its INVITE", _cancel_stray, 481, 481),
    Case("ack", "ACK matching nothing", _ack_stray, 0, 0),
]


# ----------------------------------------------------------------------------------------------- the sender


@dataclass
class Shot:
    case: Case
    wire: Wire
    sock: socket.socket
    sent: bytes
    buf: bytes = b""
    final: str = ""  # first line of the first final response
    response: str = ""

    @property
    def status(self) -> int:
        parts = self.final.split(" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _open(transport: str, port: int) -> socket.socket:
    if transport == "UDP":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return sock
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def fire(cases: list[Case], target: str, transport: str, port: int, *, quiet_s: float = 1.0) -> list[Shot]:
    """Send every case (one socket each) and collect each one's first final answer: until every case that
    expects an answer has one, then `quiet_s` more (an answer to a case that expects none would show), and
    never longer than 10 s. INVITEs that got a final answer are ACKed (and a 2xx hung up)."""
    shots = []
    for case in cases:
        sock = _open(transport, port)
        wire = Wire(transport, port, sock.getsockname()[1])
        data = case.build(wire)
        if transport == "UDP":
            sock.sendto(data, ("127.0.0.1", port))
        else:
            sock.sendall(data)
        shots.append(Shot(case, wire, sock, data))
    by_fd = {s.sock.fileno(): s for s in shots}
    deadline = time.monotonic() + 10.0
    quiet_until = None
    while time.monotonic() < min(deadline, quiet_until or deadline):
        if quiet_until is None and all(s.final for s in shots if s.case.expect(target, transport)):
            quiet_until = time.monotonic() + quiet_s
        waiting = [s.sock for s in shots if not s.final]
        if not waiting:
            break
        ready, _, _ = select.select(waiting, [], [], 0.05)
        for sock in ready:
            shot = by_fd[sock.fileno()]
            try:
                chunk = sock.recv(65535)
            except OSError:
                chunk = b""
            if not chunk:
                shot.final = shot.final or "closed"
                continue
            shot.buf += chunk
            _take_final(shot)
    for shot in shots:
        if shot.sent.startswith(b"INVITE ") and shot.status >= 200:
            _finish_invite(shot)
    return shots


def _send(shot: Shot, data: bytes) -> None:
    if shot.wire.transport == "UDP":
        shot.sock.sendto(data, ("127.0.0.1", shot.wire.port))
    else:
        shot.sock.sendall(data)


def _header(text: str, name: str) -> list[str]:
    out = []
    for line in text.split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            out.append(value.strip())
    return out


def _finish_invite(shot: Shot) -> None:
    """ACK the INVITE's final answer: a failure's ACK is hop by hop (same branch and Request-URI); a 2xx's
    is a new transaction along the route set, followed by a BYE (a torture INVITE must not hold a slot)."""
    w, response = shot.wire, shot.response
    to = (_header(response, "to") or _header(response, "t") or [""])[0]
    if shot.status >= 300:
        head = w.head("ACK", cseq="1 ACK").replace(f"To: <sip:bridge@{w.target}>", f"To: {to}", 1)
        _send(shot, with_body(head))
        return
    routes = list(reversed(_header(response, "record-route")))
    contact = _header(response, "contact")[0].strip("<>").split(">", 1)[0]
    extra = "".join(f"Route: {r}\r\n" for r in routes)
    for n, method in ((1, "ACK"), (2, "BYE")):
        fresh = Wire(w.transport, w.port, w.lport, call_id=w.call_id, tag=w.tag)
        head = fresh.head(method, ruri=contact, cseq=f"{n} {method}")
        head = head.replace(f"To: <sip:bridge@{w.target}>", f"To: {to}", 1) + extra
        _send(shot, with_body(head))


def _take_final(shot: Shot) -> None:
    """Pull complete responses out of the shot's buffer; keep the first final one."""
    while b"\r\n\r\n" in shot.buf and not shot.final:
        head, _, rest = shot.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l") and value.strip().isdigit():
                length = int(value.strip())
        text = head.decode("utf-8", "replace")
        shot.buf = rest[length:]
        first = text.split("\r\n", 1)[0]
        if first.startswith("SIP/2.0 ") and not first.startswith("SIP/2.0 1"):
            shot.final, shot.response = first, text


def close(shots: list[Shot]) -> None:
    for shot in shots:
        shot.sock.close()


def markdown_table() -> str:
    """The expectation table as docs/RELIABILITY.md shows it (a test keeps the two the same)."""

    def cell(status: int) -> str:
        return "dropped" if status == 0 else str(status)

    rows = [
        "| case | message | front UDP | front TCP | worker UDP | worker TCP |",
        "|---|---|---|---|---|---|",
    ]
    for c in CASES:
        cells = [cell(c.expect(t, p)) for t in ("front", "worker") for p in ("UDP", "TCP")]
        rows.append(f"| `{c.name}` | {c.what} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
