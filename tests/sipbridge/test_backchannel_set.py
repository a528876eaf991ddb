"""The labelled backchannel set (audio/backchannel_testset.py) through the call path's decision
(sipbridge/tools/backchannels.py: the worker's Inbound with `vad.backchannel_ms: 700`, then tiny.en and
`is_backchannel`): a few clips here; bench/backchannel.py scores the whole set (docs/PERFORMANCE.md)."""

from __future__ import annotations

import asyncio

from audio.backchannel_testset import make_clip
from sipbridge.asr import Transcriber
from sipbridge.config import AsrConfig
from sipbridge.tools.backchannels import judge

GO_ON = ["Yeah.", "Okay.", "Right.", "Sure."]
STOP = ["No.", "Stop.", "Yes.", "Hold on."]


def test_backchannels_let_the_bot_go_on_and_short_interruptions_stop_it() -> None:
    async def run() -> dict[str, tuple[bool, str, str]]:
        asr = Transcriber(AsrConfig())
        await asr.start()
        try:
            out = {}
            for text in GO_ON + STOP:
                clip = make_clip(text, "backchannel" if text in GO_ON else "interruption", "en-us", 175)
                j = await judge(clip.pcm, asr, 700)
                out[text] = (j.bot_goes_on, j.why, j.words)
            return out
        finally:
            asr.close()

    got = asyncio.run(run())
    assert all(got[t][0] for t in GO_ON), got
    assert not any(got[t][0] for t in STOP), got
    # "Hold on." outlasts the hold: the barge-in timer cuts before any words; the others are judged by words.
    assert got["Hold on."][1] == "timer" and got["Yes."][1] == "words", got
