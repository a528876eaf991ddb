"""Opt-out mid-call: the callee asks not to be called again ("stop calling", "remove me from your list").

Detection is a phrase match on the words of each callee turn of an outbound call (the configured
`dialer.opt_out_phrases`), checked by the call session *before* the agent sees the turn, so no flow, script
or model can talk past it; the LLM agent can also decide it (its `opt_out` tool, for wordings no phrase
covers). Either way the session (`CallSession.opt_out`) puts the number on the do-not-call list at once
(source `opt-out`, with the call id and the words), stores an `opt_out` event, says
`dialer.opt_out_confirmation` (not interruptible) and hangs up; the attempt's outcome is `opted-out` (final).

Kept apart from the flows' intent classifier on purpose: opt-out is a legal duty with its own list of
phrases, and must not depend on what a flow is currently asking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_OPT_OUT_PHRASES", "OptOutDetector", "normalise"]

DEFAULT_OPT_OUT_PHRASES: tuple[str, ...] = (
    "stop calling",
    "remove me from your list",
    "do not call me",
    "don't call me",
    "dont call me",
    "take me off your list",
    "take me off the list",
    "remove my number",
    "do not call this number",
    "don't call this number",
    "put me on your do not call list",
    "add me to your do not call list",
)


def normalise(text: str) -> str:
    """Lower case, curly apostrophes straight, punctuation to spaces, one space between words."""
    text = text.lower().replace("\u2019", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


@dataclass(frozen=True)
class OptOutDetector:
    phrases: tuple[str, ...] = DEFAULT_OPT_OUT_PHRASES

    def __post_init__(self) -> None:
        normalised = tuple(normalise(p) for p in self.phrases)
        if any(not p for p in normalised):
            raise ValueError("an opt-out phrase is empty")
        object.__setattr__(self, "_patterns", tuple(_word_pattern(p) for p in normalised))

    def match(self, words: str) -> str | None:
        """The first phrase the words contain (whole words: "stop calling" is not in "nonstop callings");
        failing that, a phrase of 5+ words heard with one word wrong (`_near`)."""
        text = normalise(words)
        for phrase, pattern in zip(self.phrases, self._patterns, strict=True):  # type: ignore[attr-defined]
            if pattern.search(text):
                return phrase
        tokens = text.split()
        for phrase in self.phrases:
            if _near(normalise(phrase).split(), tokens):
                return phrase
        return None


def _near(phrase: list[str], tokens: list[str]) -> bool:
    """ASR slips a word now and then (tiny.en heard espeak's "remove me from your list" as "... your lid"):
    a long phrase still counts when exactly one of its words differs and starts with the same letter. Not for
    short phrases, where one word is the meaning ("do not call mom")."""
    n = len(phrase)
    if n < _NEAR_MIN_WORDS:
        return False
    for i in range(len(tokens) - n + 1):
        wrong = [(a, b) for a, b in zip(tokens[i : i + n], phrase, strict=True) if a != b]
        if len(wrong) == 1 and wrong[0][0][:1] == wrong[0][1][:1]:
            return True
    return False


_NEAR_MIN_WORDS = 5


def _word_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z0-9'])" + re.escape(phrase) + r"(?![a-z0-9'])")
