"""Reply text shaped for the engine: speaker tags once, no tiny prompts, long replies in sentence segments.

Policy (docs/TEXT.md, "Script shaping"), applied to normalised text by `ReplyShaper`:

* **Speaker tags once.** Any `[S1]`/`[S2]` in a reply is removed (the bot never speaks as the caller, and an
  LLM that echoes tags must not switch voices); an engine that wants a tag (Dia2: `[S1]`) gets it once, at
  the start of the reply's first segment. Engines without tags also lose `<break time=".."/>` markup.
* **Segments.** Text leaves in segments that end at a sentence end (. ! ? or a new line). The first segment
  may end at a clause (, ; :) so a streamed reply starts speaking before its first sentence is complete; a
  segment over `max_words` is cut at its last clause, else its last word. espeak speaks each segment as one
  utterance; Dia2 gets them as one streamed script (the engine thread tokenises one segment at a time).
* **Short pieces.** A segment is never shorter than `min_words` words: a short sentence ("Yes.") is merged
  with the one after it. Only a stream's last segment can be shorter (what came before was already spoken).
* **Short replies.** Dia2 is unstable on tiny prompts (nari-labs/dia#192) and tends to end a hair early
  (dia#147). A whole reply under `min_words` words ("Yes.") gets a trailing `<break>` of `short_pause_s`:
  the model has frames to finish the word instead of ending on it. Nothing is put in front, so the first
  audio is not delayed; a voice prefix and the call's turns already give the model its context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAGS = re.compile(r"\s*\[S[12]\]\s*")
_BREAKS = re.compile(r'\s*<break\s+time="[0-9]+(?:\.[0-9]*)?s"\s*/?>\s*')
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n\s*")
_CLAUSE_END = re.compile(r"[,;:]\s+")
_BOUNDARY = re.compile(r"[.!?,;:\n]")
_WORD = re.compile(r"[^\s<>]+(?:\s|$)")


@dataclass(frozen=True)
class ShapePolicy:
    speaker_tag: str | None = None  # "[S1]" for Dia2
    breaks: bool = False  # the engine understands <break time="Xs"/>
    min_words: int = 3
    short_pause_s: float = 0.3  # 0: no pause after a short reply
    max_words: int = 40


def words(text: str) -> int:
    return len(_WORD.findall(_BREAKS.sub(" ", text)))


class ReplyShaper:
    """One reply's shaping state: text fed so far but not yet sent, segments sent, words in the reply."""

    def __init__(self, policy: ShapePolicy) -> None:
        self.policy = policy
        self._buf = ""
        self._sent = 0
        self._words = 0
        self._early = True  # the first segment may end at a clause (streams: speak before the sentence ends)

    def feed(self, text: str) -> list[str]:
        """Segments completed by `text` (normalised text; a word is complete once whitespace follows)."""
        text = self._clean(text)
        self._buf += text
        recent = max(0, len(self._buf) - len(text) - 4)  # a boundary just before, waiting for its space
        if not _BOUNDARY.search(self._buf, recent) and len(self._buf) < self.policy.max_words * 3:
            return []  # no new place to cut (a streamed reply mostly arrives a word at a time)
        out = []
        while (segment := self._next_segment()) is not None:
            out.append(segment)
        return out

    def finish(self) -> list[str]:
        """The rest of the reply as its last segment (nothing if the reply was empty)."""
        rest = self._buf.strip()
        self._buf = ""
        if not rest and not self._sent:
            return []
        self._words += words(rest)
        policy = self.policy
        if policy.breaks and 0 < self._words < policy.min_words and policy.short_pause_s > 0:
            rest = f'{rest} <break time="{policy.short_pause_s:g}s"/>'.strip()
        return [self._emit(rest)] if rest else []

    @property
    def holding(self) -> bool:
        return bool(self._buf.strip())

    def flush(self) -> list[str]:
        """What is buffered, as a segment now (the producer paused; more of the reply may follow)."""
        rest = self._buf.strip()
        self._buf = ""
        if not rest:
            return []
        self._words += words(rest)
        return [self._emit(rest) + " "]

    def shape(self, text: str) -> list[str]:
        """A whole reply at once: like feed + finish, and a short last sentence joins the one before it
        (a stream cannot do that: the one before was already sent)."""
        self._early = False  # the whole sentence is here: no reason to cut it at a comma
        segments = self.feed(text) + self.finish()
        if len(segments) >= 2 and words(segments[-1]) < self.policy.min_words:
            segments[-2:] = [segments[-2] + segments[-1]]
        return segments

    def _clean(self, text: str) -> str:
        text = _TAGS.sub(" ", text) if "[S" in text else text
        if not self.policy.breaks and "<break" in text:
            text = _BREAKS.sub(" ", text)
        return text

    def _next_segment(self) -> str | None:
        buf, policy = self._buf, self.policy
        cut = None
        for end in _SENTENCE_END.finditer(buf):
            if words(buf[: end.end()]) >= policy.min_words:
                cut = end.end()
                break
        if cut is None and not self._sent and self._early:
            for end in _CLAUSE_END.finditer(buf):
                if words(buf[: end.end()]) >= policy.min_words:
                    cut = end.end()
                    break
        if cut is None and words(buf) > policy.max_words:
            cut = self._long_cut(buf)
        if cut is None:
            return None
        self._buf = buf[cut:]
        segment = buf[:cut].strip()
        self._words += words(segment)
        return self._emit(segment) + " "

    def _long_cut(self, buf: str) -> int:
        ends = [m.end() for m in _WORD.finditer(buf)]
        limit = ends[self.policy.max_words - 1]
        clauses = [m.end() for m in _CLAUSE_END.finditer(buf, 0, limit)]
        return clauses[-1] if clauses and words(buf[: clauses[-1]]) >= self.policy.min_words else limit

    def _emit(self, segment: str) -> str:
        if self._sent == 0 and self.policy.speaker_tag:
            segment = f"{self.policy.speaker_tag} {segment}"
        self._sent += 1
        return segment
