"""The normaliser: written text in, the words a person would say out. Pure; one instance per deployment.

`Normalizer.normalize(text)` rewrites a whole text; `rewrite(text, start, end)` rewrites only
`text[start:end]` while the rules still see what comes before (the streaming normaliser's released context)
and peek after it (whether a capital follows a period). The lexicon
goes first (its output is read by the locale's rules but never by the lexicon again, so entries cannot
loop); the locale's rules read the rest; ordinary words pass unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from sipbridge.text.lexicon import Lexicon, LexiconEntry
from sipbridge.text.locales import Locale, get_locale

_SPACES = re.compile(r"(?<=\S) {2,}| {2,}(?=\S)")


class Normalizer:
    def __init__(self, locale: str = "en-US", lexicon: Lexicon | Iterable[LexiconEntry] = ()) -> None:
        self.locale: Locale = get_locale(locale)
        self.lexicon = lexicon if isinstance(lexicon, Lexicon) else Lexicon(lexicon)

    def normalize(self, text: str) -> str:
        return self.rewrite(text, 0)

    def rewrite(self, text: str, start: int = 0, end: int | None = None) -> str:
        """`text[start:end]` spoken; rules may look before `start` and after `end` but match only inside."""
        rules = self.locale.rules
        end = len(text) if end is None else end
        if not self.lexicon:
            return tidy(rules.rewrite(text, start, end))
        out: list[str] = []
        pos = start
        for s, e, said in self.lexicon.spans(text, start, end):
            out.append(rules.rewrite(text, pos, s))
            out.append(rules.rewrite(said))  # digits a pattern kept (a group) are still read out
            pos = e
        out.append(rules.rewrite(text, pos, end))
        return tidy("".join(out))


def tidy(text: str) -> str:
    """One space where a replacement left two ("R & D" → "R  and  D"); leading and trailing space stays, so
    streamed pieces still join up."""
    return _SPACES.sub(" ", text) if "  " in text else text


@lru_cache(maxsize=8)
def _default(locale: str) -> Normalizer:
    return Normalizer(locale)


def normalize(text: str, locale: str = "en-US", lexicon: Iterable[LexiconEntry] | None = None) -> str:
    """The spoken form of `text`: the one function other modules call (HTTP TTS endpoints, tools).
    Without a lexicon the locale's shared normaliser is used (nothing is compiled per call)."""
    normalizer = _default(locale) if lexicon is None else Normalizer(locale, lexicon)
    return normalizer.normalize(text)
