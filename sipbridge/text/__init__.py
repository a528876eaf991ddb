"""Phone-grade text: reply text rewritten into the words a person would say (docs/TEXT.md).

    from sipbridge.text import normalize
    normalize("Call (415) 555-0132 by 5pm")
    # 'Call four one five, five five five, zero one three two by five P M'

`normalize` is the one function other modules need (HTTP TTS endpoints, tools). Engines use
`sipbridge.text.frontend.TextFrontend` (normaliser + lexicon + script shaping, from `engine.text`); LLM token
streams go through `sipbridge.text.stream.StreamNormalizer`. Kept import-light: sipbridge.config imports the
lexicon module, so the locale rules (num2words, phonenumbers) load on first use only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipbridge.text.lexicon import LexiconEntry


def normalize(text: str, locale: str = "en-US", lexicon: Iterable[LexiconEntry] | None = None) -> str:
    """The spoken form of `text` in `locale`, with optional pronunciation overrides."""
    from sipbridge.text.normalizer import normalize as _normalize

    return _normalize(text, locale, lexicon)


__all__ = ["normalize"]
