"""Speech engines behind one interface (sipbridge/engine/base.py): espeak (CPU) and dia2 (GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sipbridge.config import EngineConfig
from sipbridge.engine.base import Engine, EngineError, EngineRejected, EngineSession, PreparedVoice

if TYPE_CHECKING:
    from sipbridge.asr import Transcriber


def make_engine(
    config: EngineConfig, asr: Transcriber | None = None, cache_dir: Path | None = None
) -> Engine:
    """`asr` and `cache_dir`: dia2 transcribes a voice prefix that has no transcript (cached by content)."""
    from sipbridge.text.frontend import TextFrontend

    text = TextFrontend.from_config(config.text, dia2=config.kind == "dia2")  # normaliser, shaping
    if config.kind == "espeak":
        from sipbridge.engine.espeak import EspeakEngine

        return EspeakEngine(config.espeak, text=text)
    from sipbridge.engine.dia2 import Dia2Engine

    return Dia2Engine(config.dia2, asr=asr, cache_dir=cache_dir, text=text)


__all__ = ["Engine", "EngineError", "EngineRejected", "EngineSession", "PreparedVoice", "make_engine"]
