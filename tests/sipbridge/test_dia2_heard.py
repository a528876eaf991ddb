"""The dia2 adapter keeps only the heard part of a cut reply in the call's Dia2 context (issue 17, "context =
what was heard"): `Dia2Session.played(seconds)` after a barge-in drops the reply's frames past the played
audio from the conversation (its history and KV cache), on the tiny checkpoint (CPU)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.config import Dia2EngineConfig
from sipbridge.engine.dia2 import Dia2Engine

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
FRAME_S = 0.08  # one Dia2 frame: 1920 samples at 24 kHz


def test_a_cut_reply_leaves_only_its_played_frames_in_the_context() -> None:
    config = Dia2EngineConfig.model_validate(
        {"model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 2}
    )

    async def run() -> tuple[list[Any], list[Any], int, int]:
        engine = Dia2Engine(config)
        await engine.start()
        try:
            session = engine.open_session("c1")
            caller = np.zeros(8000, np.int16)  # one second of the caller's turn
            session.user_spoke(caller, 8000, "hello there")
            chunks = [c async for c in session.speak("Thanks for calling.")]
            before = (await session.state())["segments"]
            # The caller heard 0.35 s of it (4 whole frames and part of a fifth): the rest was never played.
            session.played(0.35)
            after = (await session.state())["segments"]
            session.played(0.1)  # once per reply: a second call for the same reply changes nothing
            again = (await session.state())["segments"]
            assert again == after
            await session.close()
            return before, after, len(chunks), session.dropped_frames
        finally:
            await engine.close()

    before, after, n, dropped = asyncio.run(run())
    kind, start, end = before[-1]
    assert kind == "reply" and end - start == n and n > 6, before
    assert after[:-1] == before[:-1] and after[-1] == ("reply", start, start + 4), after
    assert dropped == n - 4
