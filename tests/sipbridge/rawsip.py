"""A hand-driven SIP UDP peer for hostile-input tests: any bytes, any source address (127.0.0.0/8), any rate.

SIPp plays well-formed scenarios; an attacker does not. `RawSip` builds requests by hand (From display names
with invalid UTF-8, forged in-dialog requests with a live call's tags, floods) and reads what comes back.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field


def sdp(ip: str = "127.0.0.1", port: int = 40000, family: str = "IP4") -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


@dataclass
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str = ""
    cseq: int = 1


@dataclass
class RawSip:
    target_port: int
    src: str = "127.0.0.1"
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.src, 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        dialog: Dialog,
        *,
        body: bytes = b"",
        display: bytes = b"caller",
        extra: str = "",
        cseq_method: str | None = None,
    ) -> bytes:
        target = f"sip:bridge@127.0.0.1:{self.target_port}"
        to = f"<{target}>" + (f";tag={dialog.to_tag}" if dialog.to_tag else "")
        head = (
            f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.src}:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
        ).encode()
        head += (
            b'From: "' + display + f'" <sip:caller@{self.src}:{self.port}>;tag={dialog.from_tag}\r\n'.encode()
        )
        head += (
            f"To: {to}\r\nCall-ID: {dialog.call_id}\r\nCSeq: {dialog.cseq} {cseq_method or method}\r\n"
            f"Contact: <sip:caller@{self.src}:{self.port}>\r\nMax-Forwards: 70\r\n{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.target_port))

    def final(self, timeout: float = 5.0) -> str:
        """The next final response (1xx skipped); "" if none came in `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                text = self.sock.recv(65535).decode("utf-8", "replace")
                if text.startswith("SIP/2.0 ") and not text.startswith("SIP/2.0 1"):
                    return text
        except TimeoutError:
            return ""

    def responses(self, timeout: float = 2.0) -> list[str]:
        """Every response until the socket is quiet for `timeout`."""
        out = []
        self.sock.settimeout(timeout)
        try:
            while True:
                out.append(self.sock.recv(65535).decode("utf-8", "replace"))
        except TimeoutError:
            return out

    def call(self, *, media_port: int = 40000, display: bytes = b"caller") -> tuple[Dialog, str]:
        """INVITE → final response → ACK (if 200). Returns the dialog (with the bridge's To tag) and the
        final response."""
        dialog = Dialog(uuid.uuid4().hex, uuid.uuid4().hex[:8])
        self.send(self.request("INVITE", dialog, body=sdp(self.src, media_port), display=display))
        answer = self.final()
        dialog.to_tag = to_tag(answer)
        if answer.startswith("SIP/2.0 200"):
            self.send(self.request("ACK", dialog, display=display))
        return dialog, answer


def status(response: str) -> int:
    return int(response.split(" ", 2)[1]) if response.startswith("SIP/2.0 ") else 0


def header(response: str, name: str) -> str:
    for line in response.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return ""


def to_tag(response: str) -> str:
    value = header(response, "To")
    return value.split(";tag=", 1)[1].split(";", 1)[0] if ";tag=" in value else ""
