"""Barge-in leaves Dia2's own context holding only what the caller heard (issue 17, "context = what was
heard"): `BatchEngine.keep_played` drops a cut reply's unplayed frames from the call's history and cache.

The oracle is a second call whose reply really was cancelled right after the heard frames: the trimmed
call must hold the same frames, text inputs, segments and cache, and speak the same next reply, whether
the trim comes before the caller's next turn is ingested or after it (frames then move down).
"""

from __future__ import annotations

import pytest
import torch

from dia2.engine import AudioChunk, BatchEngine, CallState
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2

from .engine_kit import SCRIPT_A, greedy, make_engine

HEARD = 4  # frames of the reply the caller heard (320 ms)


def _run(engine: BatchEngine) -> None:
    while engine.step():
        pass


def _reply(
    engine: BatchEngine, call: CallState, text: str, stop_after: int | None = None
) -> list[AudioChunk]:
    got: list[AudioChunk | None] = []
    engine.speak(call, text, got.append, greedy())
    if stop_after is None:
        _run(engine)
    else:
        while len(got) < stop_after:
            assert engine.step()
        engine.cancel(call)
    return [c for c in got if c is not None]


def _codes(chunks: list[AudioChunk]) -> torch.Tensor:
    return torch.stack([c.codes for c in chunks], dim=1)


def _opened(engine: BatchEngine, reference: ReferenceFixture) -> CallState:
    voice, caller = reference.prefix_speakers()
    call = engine.open_call()
    engine.set_voice(call, voice.audio, voice.words)
    engine.user_spoke(call, caller.audio, caller.words)
    return call


def _same_history(engine: BatchEngine, a: CallState, b: CallState) -> None:
    assert a.segments == b.segments
    assert torch.equal(a.codes, b.codes)
    assert a.text == b.text
    n, rows = a.frames, engine.branches
    keys = engine.buf.cache.keys
    ka, kb = (
        keys[:, a.slot * rows : (a.slot + 1) * rows, :, :n],
        keys[:, b.slot * rows : (b.slot + 1) * rows, :, :n],
    )
    torch.testing.assert_close(ka, kb, rtol=0, atol=1e-5)


@pytest.mark.parametrize("caller_first", [False, True], ids=["trim-then-turn", "turn-then-trim"])
def test_a_cut_reply_keeps_only_its_heard_frames(
    runtime: Dia2, reference: ReferenceFixture, caller_first: bool
) -> None:
    engine = make_engine(runtime, capacity=2)
    caller = reference.prefix_speakers()[1]
    cut, oracle = _opened(engine, reference), _opened(engine, reference)
    start = cut.frames
    whole = _reply(engine, cut, SCRIPT_A)  # generated ahead of playback: all of it is in the history
    assert len(whole) > HEARD + 5 and cut.segments[-1] == ("reply", start, start + len(whole))
    heard = _reply(engine, oracle, SCRIPT_A, stop_after=HEARD)
    assert torch.equal(_codes(heard), _codes(whole[:HEARD]))  # the oracle said the same first frames

    if caller_first:  # the caller's turn reached the engine before the bot's PlaybackDone
        engine.user_spoke(cut, caller.audio, caller.words)
    dropped = engine.keep_played(cut, whole[0].frame, HEARD, whole[0].codes)
    assert dropped == len(whole) - HEARD
    if not caller_first:
        engine.user_spoke(cut, caller.audio, caller.words)
    engine.user_spoke(oracle, caller.audio, caller.words)

    assert [s[0] for s in cut.segments] == ["voice", "user", "reply", "user"]
    assert cut.segments[2] == ("reply", start, start + HEARD)
    _same_history(engine, cut, oracle)
    # The next reply is conditioned on the heard frames only: token for token the oracle's.
    assert torch.equal(
        _codes(_reply(engine, cut, "[S1] Okay.")), _codes(_reply(engine, oracle, "[S1] Okay."))
    )


def test_keep_played_leaves_other_replies_alone(runtime: Dia2, reference: ReferenceFixture) -> None:
    engine = make_engine(runtime, capacity=1)
    call = _opened(engine, reference)
    first = _reply(engine, call, SCRIPT_A)
    frames = call.frames
    # All of it was heard; a frame that is not the reply's first; other codes at its start: nothing moves.
    assert engine.keep_played(call, first[0].frame, len(first), first[0].codes) == 0
    assert engine.keep_played(call, first[0].frame + 1, 1) == 0
    assert engine.keep_played(call, first[0].frame, 1, first[0].codes + 1) == 0
    assert call.frames == frames
    segments = list(call.segments)
    # A later reply in progress: the earlier one is not rewritten under it.
    got: list[AudioChunk | None] = []
    engine.speak(call, "[S1] Go on.", got.append, greedy())
    while len(got) < 2:
        assert engine.step()
    assert engine.keep_played(call, first[0].frame, 1, first[0].codes) == 0
    # Cut before a frame of it was heard: that reply leaves the history whole (cancelled on the way).
    second = [c for c in got if c is not None]
    assert engine.keep_played(call, second[0].frame, 0, second[0].codes) == 2
    assert call.turn is None and call.frames == frames and call.segments == segments
