"""Speculative reply (issue 17): `BatchEngine.mark` / `rewind` put a call's context back exactly where it
was before a guessed turn, so a discarded guess leaves no trace.

The oracle is a second call that never had the guess: after the rewind and the real caller turn, the
guessed call must hold the same frames, text inputs, segments and cache, and speak the same reply.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from dia2.conversation import EngineConversation
from dia2.engine import BatchEngine, CallState
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2

from .engine_kit import SCRIPT_A, greedy, make_engine
from .test_heard_context import _codes, _opened, _reply, _same_history


def _same(engine: BatchEngine, a: CallState, b: CallState, paged: bool) -> None:
    """Same history; with dense KV the same cache rows too (the paged pool has no per-slot view: the
    next reply's tokens check its cache)."""
    if paged:
        assert (a.segments, a.text) == (b.segments, b.text) and torch.equal(a.codes, b.codes)
    else:
        _same_history(engine, a, b)


@pytest.mark.parametrize("paged", [False, True], ids=["dense", "paged"])
@pytest.mark.parametrize("guess_frames", [3, None], ids=["guess-cut", "guess-finished"])
def test_rewind_forgets_a_guessed_turn(
    runtime: Dia2, reference: ReferenceFixture, guess_frames: int | None, paged: bool
) -> None:
    kw = {"paged_kv": True, "kv_block_size": 8} if paged else {}
    engine = make_engine(runtime, capacity=2, **kw)
    caller = reference.prefix_speakers()[1]
    guessed, oracle = _opened(engine, reference), _opened(engine, reference)
    before = (guessed.frames, list(guessed.segments))
    pool = engine.history.pool
    free = None if pool is None else pool.free_blocks

    mark = engine.mark(guessed)
    half = caller.audio[: caller.audio.numel() // 2]
    engine.user_spoke(guessed, half, [w for w in caller.words if w.end <= 0.5 * caller.audio.numel() / 24000])
    guess = _reply(engine, guessed, SCRIPT_A, stop_after=guess_frames)
    assert guess and guessed.frames > before[0]
    engine.rewind(guessed, mark)
    assert (guessed.frames, guessed.segments) == before
    assert pool is None or pool.free_blocks == free  # the guess's blocks went back to the pool
    _same(engine, guessed, oracle, paged)

    engine.user_spoke(guessed, caller.audio, caller.words)
    engine.user_spoke(oracle, caller.audio, caller.words)
    _same(engine, guessed, oracle, paged)
    assert _codes(_reply(engine, guessed, "[S1] Okay.")).equal(_codes(_reply(engine, oracle, "[S1] Okay.")))


def test_rewind_mid_reply_ends_it(runtime: Dia2, reference: ReferenceFixture) -> None:
    engine = make_engine(runtime, capacity=1)
    call = _opened(engine, reference)
    mark = engine.mark(call)
    got: list[object] = []
    engine.speak(call, SCRIPT_A, got.append)
    assert engine.step()
    with pytest.raises(RuntimeError):
        engine.mark(call)  # a mark is taken between replies
    engine.rewind(call, mark)
    assert call.turn is None and got[-1] is None  # the reply ended (its end marker went out)
    assert not engine.step()


def test_conversation_rewind_after_a_held_guess(runtime: Dia2, reference: ReferenceFixture) -> None:
    """The asyncio face: mark, the guessed turn and a few chunks of its reply, rewind; the real turn's
    reply is then the one a conversation without the guess speaks."""
    voice, caller = reference.prefix_speakers()
    engine = make_engine(runtime, capacity=2)
    engine.start()

    async def main() -> None:
        guessed, oracle = await EngineConversation.open(engine), await EngineConversation.open(engine)
        for conv in (guessed, oracle):
            await conv.set_voice(voice.audio, 24000, voice.words)
        mark = await guessed.mark()
        await guessed.user_spoke(caller.audio[:4800], 24000, [])
        held = []
        async for chunk in guessed.speak(SCRIPT_A, greedy()):
            held.append(chunk)
            if len(held) == 2:
                await guessed.rewind(mark)  # the guess's iterator ends: nothing more of it comes
        assert len(held) == 2
        assert replace(await guessed.state(), slot=0) == replace(await oracle.state(), slot=0)
        replies = []
        for conv in (guessed, oracle):
            await conv.user_spoke(caller.audio, 24000, caller.words)
            replies.append(_codes([c async for c in conv.speak("[S1] Okay.", greedy())]))
        assert replies[0].equal(replies[1])

    try:
        asyncio.run(main())
    finally:
        engine.stop()


def test_rewind_after_the_guess_rewarmed_the_context(runtime: Dia2, reference: ReferenceFixture) -> None:
    """The guess needed room: the context policy dropped the oldest caller turn. Rewind brings it back
    (history and cache prefilled again from the mark)."""
    probe = _opened(make_engine(runtime, capacity=1), reference)
    small = probe.frames + 30  # the opened call fits; a guessed turn plus a reply's reserve does not
    engine = make_engine(runtime, capacity=2, max_context_steps=small)
    caller = reference.prefix_speakers()[1]
    guessed, oracle = _opened(engine, reference), _opened(engine, reference)
    mark = engine.mark(guessed)
    engine.user_spoke(guessed, caller.audio[: caller.audio.numel() // 2], [])  # not the marked turn's frames
    _reply(engine, guessed, SCRIPT_A, stop_after=3)
    assert guessed.dropped_segments > 0  # the guess did re-warm the context
    engine.rewind(guessed, mark)
    assert guessed.dropped_segments == 0
    _same(engine, guessed, oracle, paged=False)
    assert _codes(_reply(engine, guessed, "[S1] Okay.")).equal(_codes(_reply(engine, oracle, "[S1] Okay.")))
