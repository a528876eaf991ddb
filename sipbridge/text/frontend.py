"""What an engine calls: reply text (a string or an LLM's stream) in, speakable segments out.

Each engine holds one `TextFrontend` (built from `engine.text` in the config by `make_engine`): the
deployment's normaliser (locale + lexicon) and the engine's shaping policy. `segments(text, params)` is
the whole text path of one utterance; the per-request switch is `SpeakParams.normalize` (None: the
deployment's `engine.text.normalize`). Switched off, the text reaches the engine exactly as given.
"""

from __future__ import annotations

import asyncio
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
LONG_TEXT_CHARS = 400
_WARM_UP = "Dr. Smith paid $1.50 on 03/15/2019 at 5pm; call (415) 555-0132 or EMP-40213 at a@b.com."


@dataclass(frozen=True)
class TextFrontend:
    normalizer: Normalizer = field(default_factory=Normalizer)
    policy: ShapePolicy = field(default_factory=ShapePolicy)
    enabled: bool = True
    idle_flush_s: float = 0.15  # a stream paused this long with text held: read what is held

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
        frontend = cls(
            Normalizer(config.locale, entries), policy, config.normalize, config.idle_flush_ms / 1000
        )
        # The first use compiles the rules and loads phone metadata (~10 ms): at start, not in a call.
        frontend.shape(_WARM_UP)
        return frontend

    def on_for(self, params: SpeakParams | None) -> bool:
        wanted = None if params is None else params.normalize
        return self.enabled if wanted is None else wanted

    def source(self, text: TextSource, params: SpeakParams | None) -> TextSource:
        """The engine's input: `text` untouched when normalisation is off, else its shaped segments."""
        if not self.on_for(params):
            return text
        if isinstance(text, str):
            return self._whole(text)
        return self.stream(text)

    async def _whole(self, text: str) -> AsyncIterator[str]:
        # ~0.3 ms per 30 words: a long text (an HTTP client's 2000 characters of digits, ~50 ms) is read on a
        # worker thread so the event loop keeps feeding every call's audio meanwhile.
        long = len(text) > LONG_TEXT_CHARS
        segments = await asyncio.to_thread(self.shape, text) if long else self.shape(text)
        for segment in segments:
            yield segment

    def shape(self, text: str) -> list[str]:
        return ReplyShaper(self.policy).shape(self.normalizer.normalize(text))

    async def stream(self, text: AsyncIterator[str] | TextSource) -> AsyncIterator[str]:
        """Segments of a streamed reply as its pieces arrive. A word is complete once whitespace follows
        it, the stream ends, or no piece came for `idle_flush_s` while text is held: a producer that sends
        "...first sentence." and waits for its audio (a WebSocket client) is answered, not deadlocked."""
        normalizer, shaper = StreamNormalizer(self.normalizer), ReplyShaper(self.policy)
        pieces = aiter(text_pieces(text))
        upcoming: asyncio.Future[str] | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(pieces))
                held = normalizer.holding or shaper.holding
                done, _ = await asyncio.wait({upcoming}, timeout=self.idle_flush_s if held else None)
                if not done:  # the producer paused: what is held is read as it stands
                    said = normalizer.flush()
                    for segment in shaper.feed(said + " " if said and not said[-1].isspace() else said):
                        yield segment
                    for segment in shaper.flush():
                        yield segment
                    continue
                try:
                    piece = upcoming.result()
                except StopAsyncIteration:
                    break
                finally:
                    upcoming = None
                for segment in shaper.feed(normalizer.feed(piece)):
                    yield segment
        finally:
            if upcoming is not None:
                upcoming.cancel()
        for segment in shaper.feed(normalizer.finish()) + shaper.finish():
            yield segment
