"""What `sipbridge call` prints: the call target, and the transcript in the order things happened.

    bot 0.42 s: "Hello, this is sipbridge. How can I help?"
    you 3.10 s: "Hi"
    bot gap 0.71 s
    bot 3.81 s: "You said: hi."

Times are seconds since the call was answered; `bot gap` is the silence between the end of our turn and
the start of the other side's answer (what a caller feels as the bot's response time).
"""

from __future__ import annotations

import concurrent.futures
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# ------------------------------------------------------------------------------------------ target

_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@;?]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:;?\[\]]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>;[^?]*)?$"
)


class TargetError(ValueError):
    """Not a SIP URI we can call."""


@dataclass(frozen=True)
class Target:
    uri: str  # what goes into the INVITE's Request-URI
    host: str
    port: int
    transport: str  # udp | tcp


def parse_target(text: str, default_user: str = "bot") -> Target:
    """`sip:user@host[:port][;transport=tcp]`; `user@host:port` and `host:port` get `sip:` (and a user)."""
    raw = text.strip()
    if not raw.startswith(("sip:", "sips:")):
        raw = "sip:" + (raw if "@" in raw else f"{default_user}@{raw}")
    m = _URI.match(raw)
    if m is None:
        raise TargetError(f"{text!r} is not a SIP URI (sip:user@host[:port])")
    if m["scheme"] == "sips":
        raise TargetError(f"{text!r}: sips: (TLS) is not supported by `sipbridge call`; use sip:")
    params = (m["params"] or "").lower()
    transport = "tcp" if ";transport=tcp" in params else "udp"
    if ";transport=" in params and transport == "udp" and ";transport=udp" not in params:
        raise TargetError(f"{text!r}: only transport=udp or transport=tcp")
    port = int(m["port"]) if m["port"] else 5060
    if not 0 < port < 65536:
        raise TargetError(f"{text!r}: port {port} is out of range")
    host = m["host"].strip("[]")
    if ":" in host:
        raise TargetError(f"{text!r}: IPv6 targets are not supported by `sipbridge call`")
    return Target(raw, host, port, transport)


# ------------------------------------------------------------------------------------------ lines

_MAX_PEER_TEXT = 120


def printable(text: str) -> str:
    """A peer's text (a reason phrase) made safe for a terminal: no escape sequences, no line breaks."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= _MAX_PEER_TEXT else clean[: _MAX_PEER_TEXT - 3] + "..."


def seconds(ms: float) -> str:
    return f"{ms / 1000:.2f} s"


def said(who: str, start_ms: int, end_ms: int, words: str) -> str:
    if words.strip():
        return f'{who} {seconds(start_ms)}: "{words.strip()}"'
    return f"{who} {seconds(start_ms)}: ({seconds(end_ms - start_ms)} of speech, no words recognised)"


def gap(gap_ms: int) -> str:
    return f"bot gap {seconds(gap_ms)}"


class Transcript:
    """Lines in the order things happened: a line still waiting for its words (ASR) holds back the later
    ones, so a reply is never printed above the turn it answers."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self._pending: deque[str | concurrent.futures.Future[str]] = deque()

    def add(self, line: str | concurrent.futures.Future[str]) -> None:
        self._pending.append(line)
        self.flush()

    def flush(self) -> None:
        while self._pending:
            head = self._pending[0]
            if isinstance(head, concurrent.futures.Future):
                if not head.done():
                    return
                self.write(head.result())
            else:
                self.write(head)
            self._pending.popleft()

    def drain(self, timeout_s: float) -> None:
        """Wait for every line still waiting (at most `timeout_s` each) and print them."""
        for item in list(self._pending):
            if isinstance(item, concurrent.futures.Future):
                concurrent.futures.wait([item], timeout=timeout_s)
        while self._pending:
            head = self._pending.popleft()
            if isinstance(head, concurrent.futures.Future):
                text = head.result() if head.done() and head.exception() is None else "(words not ready)"
                self.write(text)
            else:
                self.write(head)


def mapped(
    future: concurrent.futures.Future[str], fn: Callable[[str], str]
) -> concurrent.futures.Future[str]:
    """A future of `fn(result)`: a transcript line made from words that are still being recognised."""
    out: concurrent.futures.Future[str] = concurrent.futures.Future()

    def done(f: concurrent.futures.Future[str]) -> None:
        out.set_result(fn(f.result() if f.exception() is None else ""))

    future.add_done_callback(done)
    return out


# ------------------------------------------------------------------------------------------ report


@dataclass
class TurnEntry:
    """One turn for the JSON report; `words` may still be on its way from ASR."""

    who: str  # bot | you
    start_ms: int
    end_ms: int
    words: str | concurrent.futures.Future[str]
    label: str | None = None  # the WAV file of a --wav line


def _words(entry: TurnEntry) -> str | None:
    w = entry.words
    if isinstance(w, str):
        return w
    return w.result().strip() if w.done() and w.exception() is None else None


def report(
    target: str,
    answered_after_s: float | None,
    codec: str | None,
    turns: list[TurnEntry],
    gaps_ms: list[int],
    exit_code: int,
    outcome: str,
) -> dict[str, object]:
    """`sipbridge call --json`: the call as data (times in seconds since the answer)."""
    return {
        "target": target,
        "answered": answered_after_s is not None,
        "answered_after_s": None if answered_after_s is None else round(answered_after_s, 3),
        "codec": codec,
        "turns": [
            {
                "who": t.who,
                "start_s": t.start_ms / 1000,
                "end_s": t.end_ms / 1000,
                "words": _words(t),
                **({"file": t.label} if t.label else {}),
            }
            for t in sorted(turns, key=lambda t: t.start_ms)
        ],
        "gaps_s": [g / 1000 for g in gaps_ms],
        "exit_code": exit_code,
        "outcome": outcome,
    }
