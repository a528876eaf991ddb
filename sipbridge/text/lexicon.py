"""Per-deployment pronunciations: a word or a regex pattern and what to say instead.

Entries are tried before the locale's rules, so an entry overrides any rule: `{pattern: 'EMP-(\\d+)',
say: 'employee number \\1'}` wins over the ID reading. Its output is then read by the rules (digits kept by
a group are still said as digits) but never by the lexicon again, so entries cannot feed each other. Word
entries match whole words, case-insensitively unless `case_sensitive`; patterns are Python regexes whose
`say` may use their groups (\\1, \\g<name>). Config validation (sipbridge/config.py) compiles every entry
with `compile_entry`, so a bad pattern is reported with its key at load, never during a call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")


@dataclass(frozen=True)
class LexiconEntry:
    word: str | None = None
    pattern: str | None = None
    say: str = ""
    case_sensitive: bool = False


@dataclass(frozen=True)
class CompiledEntry:
    regex: re.Pattern[str]
    say: str
    template: bool  # `say` uses groups: expanded per match


def compile_entry(entry: LexiconEntry) -> CompiledEntry:
    """A compiled entry, or ValueError saying what is wrong with it (the config names the key)."""
    if (entry.word is None) == (entry.pattern is None):
        raise ValueError("give exactly one of word or pattern")
    flags = 0 if entry.case_sensitive else re.IGNORECASE
    if entry.word is not None:
        if not entry.word.strip():
            raise ValueError("word is empty")
        regex = re.compile(rf"(?<!\w){re.escape(entry.word.strip())}(?!\w)", flags)
        return CompiledEntry(regex, entry.say, template=False)
    assert entry.pattern is not None
    try:
        regex = re.compile(entry.pattern, flags)
    except re.error as exc:
        raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
    if regex.match("") is not None or regex.search("") is not None:
        raise ValueError("pattern matches empty text")
    for ref in _GROUP_REF.finditer(entry.say):
        number, name = ref.groups()
        if number is not None and int(number) > regex.groups:
            raise ValueError(f"say refers to group {number} but the pattern has {regex.groups}")
        known = name is None or name in regex.groupindex or (name.isdigit() and int(name) <= regex.groups)
        if not known:
            raise ValueError(f"say refers to group <{name}> which the pattern does not define")
    return CompiledEntry(regex, entry.say, template=bool(_GROUP_REF.search(entry.say)))


class Lexicon:
    """Compiled entries, first listed first: at one position the earlier entry wins."""

    def __init__(self, entries: Iterable[LexiconEntry] = ()) -> None:
        self.entries: Sequence[CompiledEntry] = tuple(compile_entry(e) for e in entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def spans(self, text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, spoken) matches in text[start:end], leftmost first."""
        end = len(text) if end is None else end
        found: list[tuple[int, int, int, str]] = []
        for rank, entry in enumerate(self.entries):
            for m in entry.regex.finditer(text, start, end):
                if m.end() > m.start():
                    said = m.expand(entry.say) if entry.template else entry.say
                    found.append((m.start(), rank, m.end(), said))
        found.sort()
        spans: list[tuple[int, int, str]] = []
        pos = start
        for s, _, e, said in found:
            if s >= pos:
                spans.append((s, e, said))
                pos = e
        return spans
