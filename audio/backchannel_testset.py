"""A labelled backchannel set from espeak-ng: what a caller says *while the bot is speaking*.

* **backchannel**: "mm-hmm", "uh-huh", "yeah", "okay", "right", ... the listener's "go on": the bot must not
  stop for it (`vad.backchannel_ms` holds the cut, the words decide: sipbridge/turn_policy.py
  `is_backchannel`).
* **interruption**: "no", "wait", "hold on", "sorry, what?", a short answer ("yes", "that's right"), and
  backchannel words followed by more ("okay, stop"): the bot must stop and answer.

Each phrase is spoken by several espeak-ng voices at several rates, then put through the telephone band
(300-3400 Hz, 8 kHz, µ-law round trip) with 300 ms of silence either side. Used by bench/backchannel.py
(the whole set) and tests/sipbridge/test_backchannel_set.py (a few clips).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from audio.testsignals import Scene, espeak, speech_extent, telephone_band

__all__ = ["BACKCHANNELS", "INTERRUPTIONS", "RATES", "VOICES", "Clip", "build_clips", "make_clip"]

Label = Literal["backchannel", "interruption"]

BACKCHANNELS = [
    "Mm-hmm.", "Uh-huh.", "Yeah.", "Okay.", "Right.", "Yep.", "Sure.", "Mhm.", "Yeah, yeah.", "Okay, okay.",
    "Alright.", "Right, right.",
]  # fmt: skip
INTERRUPTIONS = [
    "No.", "Wait.", "Stop.", "Hold on.", "Sorry, what?", "Yes.", "What?", "Excuse me.", "Okay, stop.",
    "Yeah, but no.", "Hang on a second.", "That's wrong.", "Uh-uh.", "Not now.",
]  # fmt: skip
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp+f2"]
RATES = [140, 175]
_PAD_S = 0.3


@dataclass(frozen=True)
class Clip:
    text: str
    label: Label
    voice: str
    rate: int
    pcm: npt.NDArray[np.int16]  # 8 kHz, telephone band, silence either side
    speech_ms: float  # how long the speech itself lasts


def make_clip(text: str, label: Label, voice: str, rate: int) -> Clip:
    speech = espeak(text, 16000, voice=voice, speed=rate)
    first, last = speech_extent(speech)
    speech = speech[first:last] * (0.5 / max(1e-6, float(np.abs(speech[first:last]).max())))
    pad = np.zeros(int(_PAD_S * 16000), np.float32)
    phone = telephone_band(Scene(np.concatenate([pad, speech, pad]), 16000, [], [], []))
    pcm = (np.clip(phone.audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    return Clip(text, label, voice, rate, pcm, (last - first) * 1000 / 16000)


def build_clips(voices: list[str] = VOICES, rates: list[int] = RATES) -> list[Clip]:
    phrases = [(t, "backchannel") for t in BACKCHANNELS] + [(t, "interruption") for t in INTERRUPTIONS]
    return [
        make_clip(text, label, voice, rate)  # type: ignore[arg-type]
        for (text, label), voice, rate in itertools.product(phrases, voices, rates)
    ]
