"""Which words of a reply the caller heard before a barge-in cut it (issue 17, "context = what was heard").

The agent's history and the call record keep only those words: an agent that believes the caller heard a
question that was cut before its end asks for answers to words nobody heard. No engine we run reports word
timings on the wire path, so a word's end is estimated by its share of the reply's audio: each word takes
time in proportion to its letters plus a space, punctuation adds a pause. A word counts as heard only when
its estimated end was played (the last sent sample); a word cut halfway is not heard.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_CHARS_PER_S", "heard_prefix", "word_ends"]

# Speech rate used when the reply's whole audio is unknown (cut while still being generated): espeak-ng's
# default voice and Dia2 both speak about 14-16 characters a second.
DEFAULT_CHARS_PER_S = 15.0
_PAUSE_WEIGHT = {",": 3.0, ";": 3.0, ":": 3.0, ".": 5.0, "?": 5.0, "!": 5.0}
_TOKEN = re.compile(r"\S+")


def _weight(token: str) -> float:
    letters = sum(ch.isalnum() for ch in token)
    return letters + 1.0 + _PAUSE_WEIGHT.get(token[-1], 0.0)


def word_ends(text: str, total_s: float) -> list[tuple[str, float]]:
    """Each whitespace-separated word of `text` with its estimated end time in a reply `total_s` long."""
    tokens = _TOKEN.findall(text)
    weights = [_weight(t) for t in tokens]
    whole = sum(weights) or 1.0
    ends, acc = [], 0.0
    for token, weight in zip(tokens, weights, strict=True):
        acc += weight
        ends.append((token, total_s * acc / whole))
    return ends


def heard_prefix(text: str, played_s: float, total_s: float | None) -> str:
    """The words of `text` whose estimated end lies within the first `played_s` of its audio.

    `total_s`: the whole reply's audio length; None when generation was cut before it finished (the length
    is then estimated from the text at DEFAULT_CHARS_PER_S)."""
    if total_s is None:
        total_s = len(text) / DEFAULT_CHARS_PER_S
    if total_s <= 0 or played_s >= total_s:
        return text.strip()
    return " ".join(word for word, end in word_ends(text, total_s) if end <= played_s)
