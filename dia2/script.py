"""Turn a dialogue script (``[S1] Hello. [S2] Hi! <break time="0.5s"/> ...``) into word entries."""

from __future__ import annotations

import re
from typing import Protocol

from .state_machine import Entry, TokenIds

__all__ = ["WordEncoder", "normalize_script", "parse_script"]

# A pause tag or a run of whitespace: both end a word. ("[.]" where upstream has an unescaped ".":
# the only inputs that differ are malformed tags such as time="1x5s", on which upstream crashes.)
_EVENT = re.compile(r"<break\s+time=\"([0-9]+(?:[.][0-9]*)?)s\"\s*/?>|\s+")
_SPEAKER_TAGS = {"[S1]": 0, "[S2]": 1}


class WordEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def normalize_script(script: str | list[str] | tuple[str, ...]) -> str:
    """Upstream joins a list of lines with newlines and parses the result as a single line."""
    if isinstance(script, str):
        return script.strip()
    return "\n".join(line.strip() for line in script)


def parse_script(text: str, encoder: WordEncoder, ids: TokenIds, frame_rate: float) -> list[Entry]:
    """Entries for ``text`` with upstream's rules.

    * A ``[S1]``/``[S2]`` word is not an entry: the next word is encoded as ``"[S1] word"``.
    * Other words are encoded alone (no leading space), one entry each, padding = piece count.
    * The first word of the script gets ``[S1]`` prepended unless its pieces already start with it
      (upstream quirk: a script starting with ``[S2]`` becomes ``[S1][S2] ...``).
    * ``<break time="Xs"/>`` becomes a token-less entry of ``round(X * frame_rate)`` frames.
    """
    text = text.replace("\u2019", "'").replace(":", " ")
    speakers = (ids.spk1, ids.spk2)
    entries: list[Entry] = []
    pending: int | None = None  # speaker index announced by a tag, applied to the next word
    first_word = True
    pos = 0
    while pos <= len(text):
        match = _EVENT.search(text, pos)
        end = match.start() if match else len(text)
        for word in text[pos:end].split():
            if word in _SPEAKER_TAGS:
                pending = _SPEAKER_TAGS[word]
                continue
            source = f"{('[S1]', '[S2]')[pending]} {word}" if pending is not None else word
            tokens = list(encoder.encode(source))
            pending = None
            if first_word:
                # Upstream assigns speaker by line index and sees a single line: always S1.
                if not tokens or tokens[0] != speakers[0]:
                    tokens.insert(0, speakers[0])
                first_word = False
            entries.append(Entry(tokens=tuple(tokens), text=word, padding=len(tokens)))
        if match is None:
            break
        if match.group(1):
            frames = round(float(match.group(1)) * frame_rate)
            if frames > 0:
                entries.append(Entry(tokens=(), text="", padding=frames))
        pos = match.end()
        if match.end() == match.start():  # cannot happen with this pattern; guards an endless loop
            pos += 1
    return entries


class ScriptStream:
    """Incremental :func:`parse_script` for text that arrives in pieces (an LLM's deltas).

    ``feed`` returns the entries of the words completed so far; a word counts as complete once
    whitespace follows it (outside a ``<break .../>`` tag) or the text is finished. The entries are
    exactly those :func:`parse_script` gives for the whole text, in the same order.
    """

    def __init__(self, encoder: WordEncoder, ids: TokenIds, frame_rate: float) -> None:
        self._encoder, self._ids, self._rate = encoder, ids, frame_rate
        self._text = ""
        self._emitted = 0

    def feed(self, delta: str = "", *, final: bool = False) -> list[Entry]:
        self._text += delta
        text = self._text.replace("\u2019", "'")
        if final:
            complete = text
        else:
            cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
            complete = text[: cut + 1] if cut >= 0 else ""
            if complete.rfind("<") > complete.rfind(">"):  # inside a break tag: wait for its end
                complete = complete[: complete.rfind("<")]
        entries = parse_script(complete.strip(), self._encoder, self._ids, self._rate)
        new = entries[self._emitted :]
        self._emitted = len(entries)
        return new
