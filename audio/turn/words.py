"""Does a transcript end mid-sentence? A word rule over early ASR's text (no model).

A turn whose last word is a conjunction, a filler, an article, a preposition or a linking verb ("I worked
there from", "my name is John and", "it was um") is not finished, whatever its pitch did; Whisper also marks
trailing speech with "..." or a comma. Used beside the end-of-turn model, which hears pitch and timing but
not words (bench/turn_eot.py measures both).
"""

from __future__ import annotations

import re

__all__ = ["CONTINUATION_WORDS", "ends_sentence", "ends_unfinished", "last_word"]

CONTINUATION_WORDS = frozenset(
    """and but so or nor because since although though while whereas if unless until when whether than
    um uh er erm hmm uhm ah
    the a an this that these those my your his her its our their
    to of from with without as at in on for by about into onto over under between through during
    is was were are am be been being has have had do does did will would can could should
    like i we you he she they it's i'm""".split()
)
_WORD = re.compile(r"[a-z']+")
_SENTENCE_END = (".", "?", "!")


def last_word(text: str) -> str:
    words = _WORD.findall(text.lower())
    return words[-1] if words else ""


def ends_unfinished(text: str) -> bool:
    """True when the text's end says the speaker is not done: a continuation word, or a trailing "..."/","."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", ",", "-", "…")):
        return True
    return last_word(stripped) in CONTINUATION_WORDS


def ends_sentence(text: str) -> bool:
    """The text reads as a finished sentence: it ends in ``.``/``?``/``!`` (Whisper writes one where the
    speech sounded finished) and not on a continuation word."""
    stripped = text.strip()
    return bool(stripped) and stripped.endswith(_SENTENCE_END) and not ends_unfinished(stripped)
