"""Speech engines behind one interface (sipbridge/engine/base.py): espeak (CPU) and dia2 (GPU)."""

from __future__ import annotations

from sipbridge.config import EngineConfig
from sipbridge.engine.base import Engine, EngineError, EngineSession


def make_engine(config: EngineConfig) -> Engine:
    if config.kind == "espeak":
        from sipbridge.engine.espeak import EspeakEngine

        return EspeakEngine(config.espeak)
    from sipbridge.engine.dia2 import Dia2Engine

    return Dia2Engine(config.dia2)


__all__ = ["Engine", "EngineError", "EngineSession", "make_engine"]
