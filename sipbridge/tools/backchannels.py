"""What the call path does with a short caller sound while the bot speaks: go on, or stop (issue 17 item 5).

`judge` runs one clip through the worker's real `Inbound` (Silero segmenter, energy onset, the barge-in timer
raised to `vad.backchannel_ms`) over interruptible bot audio, then what the session does with the turn: the
supervisor's ASR and `is_backchannel` decide whether a turn shorter than `backchannel_ms` lets the bot go on.
bench/backchannel.py scores audio/backchannel_testset.py with it; a test runs a few clips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from audio.vad import VadSettings, make_segmenter
from sipbridge import frames as f
from sipbridge.asr import Transcriber
from sipbridge.media.inbound import Inbound
from sipbridge.media.playback import PlaybackQueue
from sipbridge.turn_policy import is_backchannel

FRAME = 160  # 20 ms at 8 kHz


@dataclass(frozen=True)
class Judgement:
    bot_goes_on: bool
    why: str  # "timer" (barge-in cut before the words), "words", "backchannel", "no turn"
    words: str
    asr_ms: float


async def judge(pcm: npt.NDArray[np.int16], asr: Transcriber, backchannel_ms: int) -> Judgement:
    """`pcm`: 8 kHz caller audio heard while the bot plays; the bot's fate as a call would decide it."""
    playback = PlaybackQueue(FRAME * 2)
    playback.push(1, True, bytes(FRAME * 2) * (len(pcm) // FRAME + 100))
    events: list[f.Frame] = []
    inbound = Inbound(
        "bench", make_segmenter(VadSettings(), 8000), playback, events.append, max(200, backchannel_ms)
    )
    tail = np.zeros(8000, np.int16)  # the turn's end needs its hangover of silence
    audio = np.concatenate([pcm, tail])
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        playback.pop()
        inbound.on_frame(audio[i : i + FRAME].tobytes())
    turns = [e for e in events if isinstance(e, f.TurnEnded)]
    if any(isinstance(e, f.BargeIn) for e in events):
        return Judgement(False, "timer", "", 0.0)
    if not turns:
        return Judgement(True, "no turn", "", 0.0)
    turn = turns[0]
    t0 = time.perf_counter()
    words = await asr.transcribe(np.frombuffer(turn.pcm, np.int16), 8000)
    asr_ms = (time.perf_counter() - t0) * 1000
    short = turn.end_ms - turn.start_ms < backchannel_ms  # as CallSession's TurnTaker judges it
    if short and is_backchannel(words):
        return Judgement(True, "backchannel", words, asr_ms)
    return Judgement(False, "words", words, asr_ms)
