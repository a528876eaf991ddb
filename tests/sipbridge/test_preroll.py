"""Pre-roll (vad.preroll_ms): the first syllable of a caller turn reaches ASR, and the word times ASR gives
(which Dia2 conditions on) are from the start of the turn's pcm, so pcm_start + time is call time.

µ-law telephone audio from espeak-ng, the shipped Silero segmenter, the bundled whisper tiny.en."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from audio import g711
from audio.vad import TurnEnd, VadSettings, make_segmenter
from sipbridge.asr import Transcriber
from sipbridge.config import AsrConfig, load_config

from .peers import caller_audio


@pytest.fixture(scope="module")
def asr() -> Iterator[Transcriber]:
    transcriber = Transcriber(AsrConfig())
    asyncio.run(transcriber.start())
    yield transcriber
    transcriber.close()


def turn_of(text: str, settings: VadSettings) -> tuple[TurnEnd, tuple[float, float]]:
    caller = caller_audio(text, lead_s=1.0, tail_s=1.0)
    pcm = g711.ulaw_decode(g711.ulaw_encode(caller.pcm))
    seg = make_segmenter(settings, 8000)
    events = [e for i in range(0, len(pcm) - 159, 160) for e in seg.process(pcm[i : i + 160])]
    (turn,) = [e for e in [*events, *seg.flush()] if isinstance(e, TurnEnd)]
    return turn, caller.speech_ms


def test_the_soft_first_word_is_heard_with_the_shipped_preroll(asr: Transcriber) -> None:
    settings = load_config(None, env={}).config.vad.segmenter_settings()
    assert settings.preroll_ms >= 200
    turn, _ = turn_of("Hello, I need some help with my account please.", settings)
    assert turn.preroll_ms == settings.preroll_ms
    words = asyncio.run(asr.transcribe(turn.pcm, 8000))
    assert words.lower().startswith("hello"), words
    # The same turn cut where the VAD's onset puts it (what the segmenter kept before): the "h" is lost.
    bare, _ = turn_of("Hello, I need some help with my account please.", VadSettings(preroll_ms=0))
    assert bare.start == turn.start and len(bare.pcm) < len(turn.pcm)
    assert not asyncio.run(asr.transcribe(bare.pcm, 8000)).lower().startswith("hello")


def test_word_times_are_from_the_pcm_start(asr: Transcriber) -> None:
    turn, (speech_start, speech_end) = turn_of("She started in March twenty nineteen.", VadSettings())
    assert turn.pcm_start is not None and turn.pcm_start == turn.start - 200
    text, words = asyncio.run(asr.transcribe_words(turn.pcm, 8000))
    assert "started" in text and len(words) >= 4, (text, words)
    # pcm_start + a word's time is call time: the words lie within the speech, to whisper's precision.
    first, last = words[0], words[-1]
    assert turn.pcm_start + first[1] * 1000 <= speech_start + 300, (turn.pcm_start, first, speech_start)
    assert abs(turn.pcm_start + last[2] * 1000 - speech_end) < 500, (turn.pcm_start, last, speech_end)
