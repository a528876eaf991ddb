"""The dia2 engine adapter on the tiny checkpoint (CPU) with the bundled whisper tiny.en: a voice prefix
without transcript is transcribed once (cached by content hash) and caller words reach the conversation with
ASR word timings, not spread evenly."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbridge.asr import Transcriber
from sipbridge.config import AsrConfig, Dia2EngineConfig
from sipbridge.engine import dia2 as dia2_engine
from sipbridge.engine.dia2 import Dia2Engine

from .peers import caller_audio

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"


@pytest.fixture(scope="module")
def asr() -> Iterator[Transcriber]:
    transcriber = Transcriber(AsrConfig())
    asyncio.run(transcriber.start())
    yield transcriber
    transcriber.close()


def engine_config(voice: Path) -> Dia2EngineConfig:
    return Dia2EngineConfig.model_validate(
        {
            "model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 2,
            "voice": {"prefix_wav": str(voice)},
        }
    )  # fmt: skip


def test_asr_word_timings_follow_the_speech(asr: Transcriber) -> None:
    # 1.2 s of silence first: evenly spread words would start at 0.
    caller = caller_audio("Hello, I need some help with my account please.", lead_s=1.2, tail_s=0.8)
    text, words = asyncio.run(asr.transcribe_words(caller.pcm, 8000))
    assert "help" in text.lower() and len(words) >= 5, (text, words)
    start_s, end_s = caller.speech_ms[0] / 1000, caller.speech_ms[1] / 1000
    assert abs(words[0][1] - start_s) < 0.4, (words[0], start_s)
    assert abs(words[-1][2] - end_s) < 0.5, (words[-1], end_s)
    assert all(a <= b for _, a, b in words)
    assert all(w[1] <= v[1] for w, v in itertools.pairwise(words))


def test_voice_prefix_without_transcript_is_transcribed_once_and_cached(
    tmp_path: Path, asr: Transcriber
) -> None:
    voice = caller_audio("Thank you for calling the help line.", lead_s=1.2, tail_s=0.5)
    wav = voice.write_wav(tmp_path / "voice.wav")
    dia2_engine._VOICE_CACHE.clear()

    async def start_engine() -> Dia2Engine:
        engine = Dia2Engine(engine_config(wav), asr=asr, cache_dir=tmp_path / "var")
        await engine.start()
        return engine

    async def run() -> None:
        turns = asr.turns
        engine = await start_engine()
        try:
            assert engine.voice is not None
            words = engine.voice.data.words  # a dia2 VoicePrompt: Mimi codes and timed words
            assert engine.health()["mimi_encodes"] == 1  # encoded once at start, not once per call
            text = " ".join(w.text for w in words).lower()
            assert "help" in text or "calling" in text, text
            assert asr.turns == turns + 1
            # Timed by ASR: the first word starts after the 1.2 s lead, not at 0 as an even spread would.
            assert 0.6 < words[0].start < 1.6, words[0]
            cache = json.loads((tmp_path / "var" / "voice-transcripts.json").read_text())
            ((key, entry),) = cache.items()
            assert key.endswith(":bundled:tiny.en") and entry["words"][0][0] == words[0].text

            # Caller turns go in with ASR's timings.
            session = engine.open_session("call-1")
            caller = caller_audio("Hello, I need some help please.", lead_s=1.0, tail_s=0.3)
            _, timed = await asr.transcribe_words(caller.pcm, 8000)
            session.user_spoke(caller.pcm, 8000, timed)
            assert [(w.text, w.start, w.end) for w in session.last_heard] == timed
            assert session.last_heard[0].start > 0.6
            await session.close()
        finally:
            await engine.close()
        # A restart (fresh process memory) reads the file: no second transcription.
        dia2_engine._VOICE_CACHE.clear()
        engine = await start_engine()
        try:
            assert engine.voice is not None and asr.turns == turns + 2  # +1: the caller turn above
            assert [w.text for w in engine.voice.data.words] == [w.text for w in words]
        finally:
            await engine.close()

    asyncio.run(run())


def test_word_times_are_the_engines_own_steps() -> None:
    """The words' start times come from the steps at which Dia2's text state machine took each word
    (`MachineState.transcript`), counted from the reply's first frame in 80 ms Mimi frames: whole frames,
    in order, inside the audio, and exactly the transcript's steps. A letter-weight estimate (what espeak
    gets) would neither fall on frame boundaries nor match the steps."""
    config = Dia2EngineConfig.model_validate(
        {"model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 1, "temperature": 0.0}
    )

    async def run() -> None:
        engine = Dia2Engine(config)
        await engine.start()
        try:
            session = engine.open_session("timed")
            assert session.word_times() == []  # nothing spoken yet
            text = "one two three four five six"
            samples = sum([len(c) async for c in session.speak(text)])
            words = session.word_times()
            assert words is not None and words, "the tiny checkpoint took no word"
            rate = engine.dia2_engine.frame_rate
            assert rate == 12.5  # Mimi: 24 kHz / 1920 samples a frame
            # The same numbers the engine thread recorded: its step less the reply's first frame.
            frame0 = session._first_chunk.frame
            steps = session._conv._call.machine.transcript[-len(words) :]
            assert [(w.word, w.start_s) for w in words] == [(w, (s - frame0) / rate) for w, s in steps]
            assert [w.word for w in words] == text.split()[: len(words)]
            frames = [w.start_s * rate for w in words]
            assert all(abs(f - round(f)) < 1e-9 for f in frames), frames  # whole frames
            assert all(b > a for a, b in itertools.pairwise(frames)), frames
            assert 0 <= frames[0] and words[-1].start_s < samples / 24000
            # A second reply on the session reports its own words, from its own first frame.
            async for _ in session.speak("seven eight"):
                pass
            again = session.word_times()
            assert again is not None and [w.word for w in again] == ["seven", "eight"][: len(again)]
            assert again and again[0].start_s < 1.0
            await session.close()
        finally:
            await engine.close()

    asyncio.run(run())


def test_gil_switch_ms_sets_the_interval_the_engine_thread_waits_for_the_gil(tmp_path: Path) -> None:
    """engine.dia2.gil_switch_ms is the process's GIL switch interval once the engine starts; unset, the
    interval is left as Python has it."""
    import sys

    before = sys.getswitchinterval()
    cfg = Dia2EngineConfig.model_validate(
        {"model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 2, "gil_switch_ms": 0.5}
    )

    async def run(config: Dia2EngineConfig) -> float:
        engine = Dia2Engine(config, asr=None, cache_dir=tmp_path / "var")
        await engine.start()
        try:
            return sys.getswitchinterval()
        finally:
            await engine.close()

    try:
        assert asyncio.run(run(cfg)) == pytest.approx(0.0005)
        sys.setswitchinterval(before)
        assert asyncio.run(run(cfg.model_copy(update={"gil_switch_ms": None}))) == before
    finally:
        sys.setswitchinterval(before)
