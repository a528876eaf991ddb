"""What an engine calls: reply text (a string or an LLM's stream) in, speakable segments out.

Each engine holds one `TextFrontend` (built from `engine.text` in the config by `make_engine`): the
deployment's normaliser (locale + lexicon) and the engine's shaping policy. `segments(text, params)` is
the whole text path of one utterance; the per-request switch is `SpeakParams.normalize` (None: the
deployment's `engine.text.normalize`). Switched off, the text reaches the engine exactly as given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sipbridge.engine.base import SpeakParams, TextSource, text_pieces
from sipbridge.text.normalizer import Normalizer
from sipbridge.text.shape import ReplyShaper, ShapePolicy
from sipbridge.text.stream import StreamNormalizer

if TYPE_CHECKING:
    from sipbridge.config import TextConfig

DIA2_TAG = "[S1]"


@dataclass(frozen=True)
class TextFrontend:
    normalizer: Normalizer = field(default_factory=Normalizer)
    policy: ShapePolicy = field(default_factory=ShapePolicy)
    enabled: bool = True

    @classmethod
    def from_config(cls, config: TextConfig, *, dia2: bool) -> TextFrontend:
        from sipbridge.text.lexicon import LexiconEntry

        entries = [LexiconEntry(e.word, e.pattern, e.say, e.case_sensitive) for e in config.lexicon]
        policy = ShapePolicy(
            speaker_tag=DIA2_TAG if dia2 else None,
            breaks=dia2,
            min_words=config.short_reply_words,
            short_pause_s=config.short_reply_pause_s,
            max_words=config.segment_max_words,
        )
        return cls(Normalizer(config.locale, entries), policy, config.normalize)

    def on_for(self, params: SpeakParams | None) -> bool:
        wanted = None if params is None else params.normalize
        return self.enabled if wanted is None else wanted

    def source(self, text: TextSource, params: SpeakParams | None) -> TextSource:
        """The engine's input: `text` untouched when normalisation is off, else its shaped segments."""
        if not self.on_for(params):
            return text
        if isinstance(text, str):
            return _from_list(self.shape(text))
        return self.stream(text)

    def shape(self, text: str) -> list[str]:
        return ReplyShaper(self.policy).shape(self.normalizer.normalize(text))

    async def stream(self, text: AsyncIterator[str] | TextSource) -> AsyncIterator[str]:
        normalizer, shaper = StreamNormalizer(self.normalizer), ReplyShaper(self.policy)
        async for piece in text_pieces(text):
            for segment in shaper.feed(normalizer.feed(piece)):
                yield segment
        for segment in shaper.feed(normalizer.finish()) + shaper.finish():
            yield segment


async def _from_list(segments: list[str]) -> AsyncIterator[str]:
    for segment in segments:
        yield segment
