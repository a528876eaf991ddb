"""Strings from the wire made safe at the worker's boundary, before they go into IPC frames or logs.

pjsua2 hands header values to Python as `str` decoded with surrogate escapes, so a From display name with
bytes `\\xff\\xfe` arrives holding lone surrogates that no UTF-8 encoder (SQLite, JSON consumers, a log file)
accepts. `wire_text` gives back valid UTF-8 text (undecodable bytes become U+FFFD), control characters
escaped as `\\xNN` (a peer cannot forge log lines with CR/LF), and bounded in length.
"""

from __future__ import annotations

import re

MAX_WIRE_TEXT = 512  # a URI or reason longer than this is cut (marked with "…")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`\\r\\n` and every other control character as visible escapes (one log line stays one line)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def valid_utf8(text: str) -> str:
    """Lone surrogates (pjsua2's escapes of undecodable bytes) → the bytes they stand for → U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate outside the escape range: replace it outright
        return text.encode("utf-8", "replace").decode("utf-8")


def wire_text(value: object, limit: int = MAX_WIRE_TEXT) -> str:
    text = value if isinstance(value, str) else str(value)
    text = escape_controls(valid_utf8(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"
