"""Pure pieces of issue 17's barge-in context and backchannels: the words heard before a cut, and which
short caller turns are backchannels."""

from __future__ import annotations

import pytest

from sipbridge.text.heard import heard_prefix, word_ends
from sipbridge.turn_policy import is_backchannel

TEXT = "Hello there, how are you today? I am fine."


def test_word_ends_grow_and_end_at_the_reply_length() -> None:
    ends = [end for _, end in word_ends(TEXT, 4.0)]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("played_s", "heard"),
    [(0.0, ""), (0.5, "Hello"), (1.6, "Hello there, how"), (4.0, TEXT), (9.0, TEXT)],
)
def test_only_words_played_to_their_end_are_heard(played_s: float, heard: str) -> None:
    assert heard_prefix(TEXT, played_s, 4.0) == heard


def test_an_unfinished_reply_is_timed_at_the_usual_speech_rate() -> None:
    # 42 characters at 15 per second: ~2.8 s; half of it played is about half of the words.
    assert heard_prefix(TEXT, 1.4, None) == "Hello there, how are"


@pytest.mark.parametrize("words", ["Okay.", "Yeah, yeah.", "Mm-hmm.", "uh-huh", "Right.", "All right."])
def test_backchannels(words: str) -> None:
    assert is_backchannel(words)


@pytest.mark.parametrize(
    "words", ["", "No.", "Uh uh.", "Okay, stop.", "Yes.", "Wait.", "All of it.", "All right, stop."]
)
def test_not_backchannels(words: str) -> None:
    assert not is_backchannel(words)
