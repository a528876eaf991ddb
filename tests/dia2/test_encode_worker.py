"""dia2/encode_worker.py: caller turns encoded on their own thread keep their place in the engine's
command order, give the codes an in-drain encode gives, and a failed encode fails only its own turns."""

from __future__ import annotations

import threading

import pytest
import torch

from dia2.encode_worker import EncodeWorker
from dia2.engine import BatchEngine
from dia2.engine_thread import EngineThread
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2

from .engine_kit import greedy, make_engine
from .test_engine import codes_of, reply

TEXT = "[S1] Sure, one moment."


def test_turns_encoded_beside_the_engine_thread_keep_their_order(
    runtime: Dia2, reference: ReferenceFixture
) -> None:
    """Two callers' turns submitted while the engine thread is held, each followed by its reply: the
    worker encodes them (not the drain), each reply follows its own turn, and equals the reply of the
    same turn heard on an engine without the worker."""
    voice, caller = reference.prefix_speakers()
    clips = [caller.audio, caller.audio[: caller.audio.numel() // 2]]
    plain = make_engine(runtime, capacity=4)
    want = []
    for clip in clips:
        call = plain.open_call()
        plain.set_voice(call, voice.audio, voice.words)
        plain.user_spoke(call, clip, caller.words)
        want.append(codes_of(reply(plain, call, TEXT, greedy())))

    engine = make_engine(runtime, capacity=4, encode_thread=True)
    calls = [engine.open_call() for _ in clips]
    for call in calls:
        engine.set_voice(call, voice.audio, voice.words)
    got: list[list[object]] = [[], []]
    engine.start()
    try:
        gate = threading.Event()
        engine.thread.submit(gate.wait)
        turns = [engine.submit_turn(c, clip, caller.words) for c, clip in zip(calls, clips, strict=True)]
        for call, sink in zip(calls, got, strict=True):
            engine.submit(lambda c=call, s=sink: engine.speak(c, TEXT, s.append, greedy()))
        gate.set()
        for fut in turns:
            fut.result(timeout=60)
        _wait_for_ends(engine, got)
    finally:
        engine.stop()
    worker = engine.thread._encoder
    assert worker is not None and worker.stats.encoded == 2
    assert engine.thread.time.encode_batches == 0  # nothing encoded inside a drain
    for sink, expected in zip(got, want, strict=True):
        assert sink[-1] is None
        assert torch.equal(codes_of([c for c in sink if c is not None]), expected)  # type: ignore[misc]


def _wait_for_ends(engine: BatchEngine, sinks: list[list[object]]) -> None:
    """Until every reply's sink got its end: a command queued behind the replies' last steps."""
    while not all(s and s[-1] is None for s in sinks):
        engine.submit(lambda: None).result(timeout=60)


def test_a_failed_encode_fails_only_its_turns() -> None:
    """The worker hands an encode's error to the turns of that batch and goes on with the next."""
    calls: list[int] = []

    def encode_many(audio: list[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(len(audio))
        if any(a.dim() != 1 for a in audio):
            raise ValueError("encode_many expects 1-D float mono waveforms")
        return [a[:2].long() for a in audio]

    worker = EncodeWorker(encode_many, cuda=False)
    worker.start()
    try:
        bad = worker.submit(torch.zeros(2, 3))
        with pytest.raises(ValueError, match="1-D"):
            bad.result(timeout=10)
        good = worker.submit(torch.arange(5.0))
        assert torch.equal(good.result(timeout=10), torch.tensor([0, 1]))
    finally:
        worker.stop()
    assert worker.stats.encoded == 1 and calls == [1, 1]


def test_the_engine_steps_on_while_a_turns_codes_are_being_made() -> None:
    """A turn whose encode is slow holds back only itself and the commands queued after it (order kept):
    the engine thread goes on stepping the speaking calls meanwhile instead of waiting in its drain; the
    codes' arrival runs them, even once nothing is left to step (the thread sleeps until then)."""
    release = threading.Event()

    def encode_many(audio: list[torch.Tensor]) -> list[torch.Tensor]:
        release.wait(timeout=30)
        return [a[:2].long() for a in audio]

    speaking = threading.Event()
    speaking.set()
    steps: list[int] = []
    ran: list[str] = []
    stepped_while_held = threading.Event()

    def step() -> bool:
        if not speaking.is_set():
            return False
        steps.append(1)
        if thread._held and len(steps) > 50:
            stepped_while_held.set()
        return True

    thread = EngineThread(step, encode_many, None, EncodeWorker(encode_many, cuda=False))
    thread.start()
    try:
        turn = thread.submit_encoded(torch.arange(4.0), lambda codes: ran.append(f"turn {codes.tolist()}"))
        after = thread.submit(lambda: ran.append("reply"))
        assert stepped_while_held.wait(timeout=30), "the engine thread did not step while the codes were made"
        assert ran == [] and not turn.done() and not after.done()
        speaking.clear()  # nothing left to step: the thread sleeps; the codes must wake it
        release.set()
        turn.result(timeout=30)
        after.result(timeout=30)
    finally:
        release.set()
        thread.stop()
    assert ran == ["turn [0, 1]", "reply"]
    assert thread.time.holds >= 1 and thread.time.encode_wait_s < 1.0
