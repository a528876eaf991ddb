"""The rule engine under every locale: one left-to-right scan with one combined regex.

A locale is an ordered list of `Rule`s, each a regex (named groups unique across the locale) and a function
from its match to the spoken form. All rules are joined into one alternation, so the text is scanned once and
the earliest match wins; at one position the earlier rule wins. A rule may decline a match (return None,
e.g. "13/45" is no date): the later rules are then tried at that position, and if none applies one character
is passed through and the scan goes on. Text no rule matches (ordinary words) is copied unchanged.

`rewrite(text, start)` rewrites `text[start:]` only; rules may look at `text[:start]` (lookbehinds and the
`before` helper), which is how the streaming normaliser gives them the words it already released.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Say = Callable[[re.Match[str]], str | None]
log = logging.getLogger(__name__)
MAX_TOKEN_CHARS = 120  # longer runs without a space are no number, date or address: copied as written


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    say: Say
    flags: int = 0


class RuleSet:
    """The compiled rules of one locale (immutable, shared by every normaliser of that locale).

    `gate` (optional) finds the characters without which no rule can match: digits, symbols, a period after
    a capital... Every rule starts in the token of such a trigger or the token before it ("March" 15), so
    the scan tries the rules only from one token before each trigger, and text without any is copied at
    once. Same result as scanning every position, several times cheaper on ordinary words.
    """

    def __init__(self, rules: Sequence[Rule], gate: str | None = None) -> None:
        self.rules = tuple(rules)
        self._gate = re.compile(gate) if gate else None
        self._own = tuple(re.compile(r.pattern, r.flags) for r in self.rules)
        joined = "|".join(f"(?P<_r{i}>{_inline(r)})" for i, r in enumerate(self.rules))
        self._master = re.compile(joined)
        self._index = {f"_r{i}": i for i in range(len(self.rules))}

    def rewrite(self, text: str, start: int = 0, end: int | None = None) -> str:
        end = len(text) if end is None else end
        out: list[str] = []
        pos = start
        while pos < end:
            m = self._next_match(text, pos, end)
            if m is None:
                out.append(text[pos:end])
                break
            out.append(text[pos : m.start()])
            said, pos = self._apply(text, m, end)
            out.append(said)
        return "".join(out)

    def _next_match(self, text: str, pos: int, end: int) -> re.Match[str] | None:
        if self._gate is None:
            return self._master.search(text, pos, end)
        while (trigger := self._gate.search(text, pos, end)) is not None:
            t = trigger.start()
            token = _token_start(text, t)
            lo = max(pos, _token_start(text, token - 1))
            hi = _token_end(text, trigger.end(), end)
            if hi - token > MAX_TOKEN_CHARS:  # trying every start in it would cost its length squared
                pos = hi
                continue
            for p in range(lo, hi):
                m = self._master.match(text, p, end)
                if m is not None:
                    return m
            pos = hi
        return None

    def _apply(self, text: str, m: re.Match[str], end: int) -> tuple[str, int]:
        first = self._index[m.lastgroup or ""]
        said = _say(self.rules[first], m)
        if said is not None and m.end() > m.start():
            return said, m.end()
        for i in range(first + 1, len(self.rules)):  # the first rule declined: try the later ones here
            other = self._own[i].match(text, m.start(), end)
            if other is not None and other.end() > other.start():
                said = _say(self.rules[i], other)
                if said is not None:
                    return said, other.end()
        return text[m.start()], m.start() + 1


def _say(rule: Rule, m: re.Match[str]) -> str | None:
    """A rule that fails on some input (a library refusing a value) declines it: the text is then read by
    the later rules or as written, and the reply is still spoken."""
    try:
        return rule.say(m)
    except Exception:  # any failure of one reading must not cost the call its reply
        log.warning("text rule %s failed on %r", rule.name, m.group(0)[:80], exc_info=True)
        return None


def _token_start(text: str, i: int) -> int:
    """Start of the whitespace-separated token holding text[i] (or of the one before, if text[i] is space)."""
    i = max(i, 0)
    while i > 0 and text[i].isspace():
        i -= 1
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    return i


_SPACE = re.compile(r"\s")


def _token_end(text: str, i: int, end: int) -> int:
    space = _SPACE.search(text, i, end)
    return space.start() if space else end


def _inline(rule: Rule) -> str:
    """A rule's pattern with its flags scoped to it (the alternation has one set of flags)."""
    if rule.flags & re.IGNORECASE:
        return f"(?i:{rule.pattern})"
    return rule.pattern


def before(m: re.Match[str], chars: int = 24) -> str:
    """The text just before a match (within the released context when streaming)."""
    return m.string[max(0, m.start() - chars) : m.start()]


def after(m: re.Match[str], chars: int = 24) -> str:
    return m.string[m.end() : m.end() + chars]


_WORD_BEFORE = re.compile(r"([A-Za-z']+)[^\w]*$")


def word_before(m: re.Match[str]) -> str:
    found = _WORD_BEFORE.search(before(m))
    return found.group(1).lower() if found else ""


def sentence_ends_after(m: re.Match[str]) -> bool:
    """Whether a period that a match swallowed also ended the sentence: end of text, or a capitalised word
    (or a new line) after it. Used to keep that period so the sentence splitter still sees the end."""
    rest = after(m, 3)
    return rest == "" or rest[:1] == "\n" or (rest[:1] == " " and rest[1:2].isupper())
