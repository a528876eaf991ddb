"""The benchmark-only switch that runs Dia2 with random weights (bench/system_load.py on a GPU box): it needs
its confirmation beside it, a config cannot reach it, and it really bypasses engine.dia2.model: proven on CPU
with the tiny checkpoint's shapes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from sipbridge.config import Dia2EngineConfig
from sipbridge.engine.base import EngineError
from sipbridge.engine.dia2 import (
    BENCH_CONFIRM_ENV,
    BENCH_CONFIRM_VALUE,
    BENCH_RANDOM_ENV,
    Dia2Engine,
    bench_random_shape,
)

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"


def test_the_switch_is_off_unless_asked_and_refuses_without_its_confirmation() -> None:
    assert bench_random_shape({}) is None
    with pytest.raises(EngineError, match=BENCH_CONFIRM_ENV):
        bench_random_shape({BENCH_RANDOM_ENV: "2b"})
    with pytest.raises(EngineError, match="refusing to start"):
        bench_random_shape({BENCH_RANDOM_ENV: "2b", BENCH_CONFIRM_ENV: "yes"})
    assert bench_random_shape({BENCH_RANDOM_ENV: "2b", BENCH_CONFIRM_ENV: BENCH_CONFIRM_VALUE}) == "2b"
    with pytest.raises(ValueError, match="random"):  # no config key leads there
        Dia2EngineConfig.model_validate({"random_weights": "2b"})


def test_random_weights_at_the_tiny_shapes_start_and_speak_without_loading_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BENCH_RANDOM_ENV, str(TINY))
    monkeypatch.setenv(BENCH_CONFIRM_ENV, BENCH_CONFIRM_VALUE)
    # engine.dia2.model names nothing that exists: the switch must not read it.
    config = Dia2EngineConfig.model_validate(
        {"model": str(tmp_path / "no-such-checkpoint"), "device": "cpu", "dtype": "float32", "max_batch": 2}
    )

    async def run() -> list[np.ndarray]:
        engine = Dia2Engine(config)
        await engine.start()
        try:
            assert engine.health()["model"] == f"RANDOM:{TINY}"
            session = engine.open_session("c1")
            chunks = []
            async for chunk in session.speak("Hello there, this is a benchmark."):
                chunks.append(chunk)
                if sum(len(c) for c in chunks) >= 24000 // 2:  # half a second is proof enough
                    session.cancel()
            await session.close()
            return chunks
        finally:
            await engine.close()

    chunks = asyncio.run(run())
    audio = np.concatenate(chunks)
    assert audio.dtype == np.float32 and len(audio) >= 1920 and np.isfinite(audio).all()

    # Without the switch the same config loads engine.dia2.model, which does not exist here.
    monkeypatch.delenv(BENCH_RANDOM_ENV)
    with pytest.raises(EngineError, match="no-such-checkpoint"):
        asyncio.run(Dia2Engine(config).start())


def test_paged_kv_and_its_pool_reach_the_batch_engine() -> None:
    """engine.dia2.paged_kv / kv_pool_steps are what the engine is built with (off by default)."""
    from sipbridge.config import Config
    from sipbridge.engine.dia2 import engine_options

    default = Config.model_validate({}).engine.dia2
    assert not engine_options(default, 1500).paged_kv
    paged = Config.model_validate(
        {"engine": {"dia2": {"paged_kv": True, "kv_pool_steps": 750, "max_batch": 384}}}
    )
    options = engine_options(paged.engine.dia2, 1500)
    assert (options.paged_kv, options.kv_pool_steps, options.capacity) == (True, 750, 384)
    assert (options.reply_reserve_steps, options.max_reply_steps) == (250, 750)


def test_the_lead_in_lane_capacity_reaches_the_batch_engine() -> None:
    """engine.dia2.lane_capacity sizes the engine's lead-in lane (8 by default, as before the key)."""
    from sipbridge.config import Config
    from sipbridge.engine.dia2 import engine_options

    assert engine_options(Config.model_validate({}).engine.dia2, 1500).lane_capacity == 8
    wide = Config.model_validate({"engine": {"dia2": {"lane_capacity": 32, "max_batch": 128}}})
    assert engine_options(wide.engine.dia2, 1500).lane_capacity == 32
