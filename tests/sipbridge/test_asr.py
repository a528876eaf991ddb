"""The ASR warms itself up: one model run on faint noise right after the load, on the ASR thread, so the first
caller's transcription is not the model's cold first run. Real faster-whisper (bundled tiny.en) throughout;
what is checked is which run was which (counters, flags, the log), never how long a run took."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from sipbridge.asr import Transcriber
from sipbridge.config import AsrConfig

from .peers import caller_audio

HELLO = "Hello, I need some help with my account please."


def test_the_first_transcription_after_start_is_the_models_second_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sipbridge.asr")
    asr = Transcriber(AsrConfig())
    caller = caller_audio(HELLO, lead_s=0.3, tail_s=0.3)

    async def first_call() -> str:
        await asr.start()
        # No wait_warm(): a turn that comes while the warm-up still runs queues behind it on the one thread.
        return await asr.transcribe(caller.pcm, 8000)

    try:
        text = asyncio.run(first_call())
        assert "help" in text.lower(), text
        assert asr.warmed and asr.runs == 2 and asr.turns == 1  # run 1 was the warm-up, not a caller's
        health = asr.health()
        assert health["ok"] and health["warm"] and health["warmup_ms"] > 0 and health["turns"] == 1
        assert len([r for r in caplog.records if r.message.startswith("asr warmed up in")]) == 1
    finally:
        asr.close()


def test_a_failed_warm_up_is_logged_and_the_asr_still_transcribes(caplog: pytest.LogCaptureFixture) -> None:
    # A 3-D array: faster-whisper's feature extractor itself rejects it (a real error, raised at once).
    asr = Transcriber(AsrConfig(), warmup_pcm=np.zeros((1, 1, 16000), np.float32))
    caller = caller_audio(HELLO, lead_s=0.3, tail_s=0.3)

    async def first_call() -> str:
        await asr.start()
        await asr.wait_warm()  # the supervisor's wait: a failed warm-up must not fail the start
        return await asr.transcribe(caller.pcm, 8000)

    try:
        text = asyncio.run(first_call())
        assert "help" in text.lower(), text
        assert not asr.warmed and asr.warmup_ms is None and asr.turns == 1
        health = asr.health()
        assert health["ok"] and not health["warm"]
        (record,) = [r for r in caplog.records if r.message.startswith("asr warm-up failed")]
        assert record.levelno == logging.WARNING and record.exc_info is not None
    finally:
        asr.close()


def test_no_asr_backend_has_nothing_to_warm() -> None:
    asr = Transcriber(AsrConfig.model_validate({"backend": "none"}))

    async def start() -> None:
        await asr.start()
        await asr.wait_warm()

    try:
        asyncio.run(start())
        assert asr.runs == 0 and not asr.warmed and asr.health()["ok"]
    finally:
        asr.close()


def test_transcribe_blocking_is_the_same_model_run_on_the_callers_thread() -> None:
    # Shared with bench/amd_accuracy.py --asr, which replays the live words path in audio time.
    asr = Transcriber(AsrConfig())
    caller = caller_audio(HELLO, lead_s=0.3, tail_s=0.3)

    async def both() -> tuple[str, str]:
        await asr.start()
        await asr.wait_warm()
        return await asr.transcribe(caller.pcm, 8000), asr.transcribe_blocking(caller.pcm, 8000)

    try:
        in_pool, here = asyncio.run(both())
        assert in_pool == here and "help" in here.lower(), (in_pool, here)
        assert asr.turns == 2 and asr.transcribe_blocking(caller.pcm[:0], 8000) == "" and asr.turns == 2
    finally:
        asr.close()


# Speech played backwards: speech-like sound without words. tiny.en's greedy decode of it has a low
# log-probability (-1.4 against the -1.0 threshold) while its no-speech probability stays low (0.4), which is
# exactly what makes Whisper decode it again at higher temperatures.
BABBLE = "Yes, she worked here from two thousand nineteen."


@pytest.mark.parametrize("fallback", [False, True])
def test_temperature_fallback_is_off_unless_configured(fallback: bool) -> None:
    """Default: one greedy decode per turn, even for audio the model is unsure of. `temperature_fallback`
    gives Whisper's redo at temperatures 0.2 ... 1.0 (counted in `redecoded`, shown in /healthz)."""
    asr = Transcriber(AsrConfig(temperature_fallback=fallback))
    babble = caller_audio(BABBLE, lead_s=0.2, tail_s=0.2).pcm[::-1].copy()
    clear = caller_audio(HELLO, lead_s=0.3, tail_s=0.3).pcm

    async def run() -> tuple[str, str]:
        await asr.start()
        await asr.wait_warm()
        return await asr.transcribe(babble, 8000), await asr.transcribe(clear, 8000)

    try:
        _, text = asyncio.run(run())
        assert "help" in text.lower(), text
        assert asr.turns == 2 and asr.redecoded == asr.health()["redecoded"] == int(fallback)
    finally:
        asr.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_asr_workers_transcribe_calls_side_by_side(workers: int) -> None:
    """`asr.workers`: that many transcriptions run at once (two calls' turns asked for together both start
    at once with 2 workers; with 1 the second waits for the first), each with the right words; each worker
    had its own warm-up run."""
    asr = Transcriber(AsrConfig(workers=workers))
    a = caller_audio(HELLO, lead_s=0.3, tail_s=0.3).pcm
    b = caller_audio(BABBLE, lead_s=0.3, tail_s=0.3).pcm

    async def two_calls() -> list[str]:
        await asr.start()
        await asr.wait_warm()
        return list(await asyncio.gather(asr.transcribe(a, 8000), asr.transcribe(b, 8000)))

    try:
        first, second = asyncio.run(two_calls())
        assert "help" in first.lower() and "worked" in second.lower(), (first, second)
        assert asr.peak_parallel == workers and asr.health()["workers"] == workers
        assert asr.warmed and asr.runs == workers + 2  # one warm-up run per worker, then the two calls
    finally:
        asr.close()
