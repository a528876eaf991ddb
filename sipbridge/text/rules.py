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

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Say = Callable[[re.Match[str]], str | None]


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    say: Say
    flags: int = 0


class RuleSet:
    """The compiled rules of one locale (immutable, shared by every normaliser of that locale)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._own = tuple(re.compile(r.pattern, r.flags) for r in self.rules)
        joined = "|".join(f"(?P<_r{i}>{_inline(r)})" for i, r in enumerate(self.rules))
        self._master = re.compile(joined)
        self._index = {f"_r{i}": i for i in range(len(self.rules))}

    def rewrite(self, text: str, start: int = 0, end: int | None = None) -> str:
        end = len(text) if end is None else end
        out: list[str] = []
        pos = start
        while pos < end:
            m = self._master.search(text, pos, end)
            if m is None:
                out.append(text[pos:end])
                break
            out.append(text[pos : m.start()])
            said, pos = self._apply(text, m, end)
            out.append(said)
        return "".join(out)

    def _apply(self, text: str, m: re.Match[str], end: int) -> tuple[str, int]:
        first = self._index[m.lastgroup or ""]
        said = self.rules[first].say(m)
        if said is not None and m.end() > m.start():
            return said, m.end()
        for i in range(first + 1, len(self.rules)):  # the first rule declined: try the later ones here
            other = self._own[i].match(text, m.start(), end)
            if other is not None and other.end() > other.start():
                said = self.rules[i].say(other)
                if said is not None:
                    return said, other.end()
        return text[m.start()], m.start() + 1


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
