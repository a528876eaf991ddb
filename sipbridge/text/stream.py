"""Normalising text that arrives in pieces (an LLM's tokens) without waiting for the whole reply.

`StreamNormalizer` owns the only state: the text not yet released and a little released context. A piece
of text is released, normalised, once every word in it is complete (whitespace follows) and the words at its
end cannot join what comes next: a locale marks such "sticky" words (numbers, "$", month names, "Dr."), and
a trailing run of them waits for the next complete word. So "$52," + "300.50 today" is read once, whole,
while the words before it ("You owe ") go out at once. Concatenating the outputs equals
`Normalizer.normalize` of the whole text (tests/sipbridge/test_text.py checks every split).
"""

from __future__ import annotations

from collections.abc import Callable

from sipbridge.text.normalizer import Normalizer

CONTEXT_CHARS = 48  # released text kept for the rules' look-behind ("in" 2019, "Main" St.)
MAX_HOLD_CHARS = 240  # a run of sticky words longer than this is released anyway (bounded delay)
MAX_WORD_CHARS = 400  # a piece of text this long without whitespace is released as it stands


def safe_cut(text: str, sticky: Callable[[str], bool]) -> int:
    """How much of `text` can be normalised now: up to the trailing incomplete word and any sticky words
    just before it. The cut always sits right after whitespace (or at 0)."""
    complete = len(text)
    while complete > 0 and not text[complete - 1].isspace() and len(text) - complete <= MAX_WORD_CHARS:
        complete -= 1
    if len(text) - complete > MAX_WORD_CHARS:
        return len(text)  # a "word" this long never ends: let it go rather than hold it forever
    cut = complete
    if complete == len(text) and complete > 1 and text[:complete].rstrip().endswith("."):
        # Nothing after the space yet: whether "p.m." or "Inc." ended the sentence depends on the next
        # word's first letter, so that word waits for it.
        cut = len(text[:complete].rstrip())
        while cut > 0 and not text[cut - 1].isspace():
            cut -= 1
    while cut > 0:
        end = cut
        while end > 0 and text[end - 1].isspace():
            end -= 1
        begin = end
        while begin > 0 and not text[begin - 1].isspace():
            begin -= 1
        if begin == end or not sticky(text[begin:end]):
            break
        cut = begin
    if complete - cut > MAX_HOLD_CHARS:
        return complete
    return cut


class StreamNormalizer:
    def __init__(self, normalizer: Normalizer) -> None:
        self.normalizer = normalizer
        self._pending = ""
        self._context = ""
        self._space_out = False  # the last released character was a space

    def feed(self, delta: str) -> str:
        """The normalised text that `delta` completes (often empty while a word is still arriving)."""
        self._pending += delta
        cut = safe_cut(self._pending, self.normalizer.locale.sticky)
        return self._release(cut) if cut else ""

    @property
    def holding(self) -> bool:
        return bool(self._pending)

    def flush(self) -> str:
        """Everything held, read as it stands (the producer paused); the context is kept."""
        return self._release(len(self._pending)) if self._pending else ""

    def finish(self) -> str:
        """Everything still held (the reply is complete); the stream is ready for a new reply."""
        out = self._release(len(self._pending))
        self.reset()
        return out

    def reset(self) -> None:
        self._pending, self._context, self._space_out = "", "", False

    def _release(self, cut: int) -> str:
        text = self._context + self._pending  # what follows the cut is only peeked at, never rewritten
        start = len(self._context)
        out = self.normalizer.rewrite(text, start, start + cut)
        self._context = text[: start + cut][-CONTEXT_CHARS:]
        self._pending = self._pending[cut:]
        if self._space_out and out.startswith(" "):
            out = out.lstrip(" ")  # a replacement's space after a released space: the whole text has one
        if out:
            self._space_out = out.endswith(" ")
        return out
