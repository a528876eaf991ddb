"""The streaming, batched conversation engine on the tiny fixture checkpoint (CPU, eager).

Every test drives the real engine (``BatchEngine.step`` on this thread, or its thread through the asyncio
``EngineConversation``); nothing of the engine is mocked, and no test waits on time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
import torch

from dia2.conversation import EngineConversation
from dia2.engine import AudioChunk, BatchEngine, CallState, ContextOverflowError, SpeakOptions
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2, GenerationResult

from .engine_kit import SCRIPT_A, SCRIPT_B, greedy, make_engine


def run_until_quiet(engine: BatchEngine) -> int:
    steps = 0
    while engine.step():
        steps += 1
    return steps


def reply(engine: BatchEngine, call: CallState, text: str, options: SpeakOptions) -> list[AudioChunk]:
    chunks: list[AudioChunk | None] = []
    engine.speak(call, text, chunks.append, options)
    run_until_quiet(engine)
    assert chunks and chunks[-1] is None and all(c is not None for c in chunks[:-1])
    return [c for c in chunks if c is not None]


def codes_of(chunks: list[AudioChunk]) -> torch.Tensor:
    return torch.stack([c.codes for c in chunks], dim=1)


@pytest.fixture(scope="module")
def engine(runtime: Dia2) -> BatchEngine:
    return make_engine(runtime)


@pytest.mark.parametrize("case", ["greedy", "cfg"])
def test_streaming_equals_non_streaming_generation(
    engine: BatchEngine, reference: ReferenceFixture, case_results: dict[str, GenerationResult], case: str
) -> None:
    """Same tokens as the parity loop, token for token; the streamed audio equals its one-shot decode."""
    opts = reference.options(case)
    call = engine.open_call()
    try:
        chunks = reply(
            engine,
            call,
            reference.inputs["cases"][case]["script"],
            SpeakOptions(opts.text, opts.audio, opts.cfg_scale),
        )
    finally:
        engine.close_call(call)
    expected = case_results[case]
    assert torch.equal(codes_of(chunks), expected.audio_tokens)
    assert [c.frame for c in chunks] == list(range(len(chunks)))
    pcm = torch.cat([c.pcm for c in chunks])
    err = (pcm - expected.waveform).abs().max() / expected.waveform.abs().max()
    assert err < 1e-5


def _converse(engine: BatchEngine, call: CallState, reference: ReferenceFixture) -> None:
    voice, caller = reference.prefix_speakers()
    engine.set_voice(call, voice.audio, voice.words)
    engine.user_spoke(call, caller.audio, caller.words)
    reply(engine, call, "[S1] Sure, one moment.", greedy())


def test_incremental_turns_equal_a_full_rewarm(runtime: Dia2, reference: ReferenceFixture) -> None:
    """Voice, caller, reply, caller again, each ingested incrementally, leave the same cache and logits
    as one prefill of the whole recorded history into a fresh call."""
    engine = make_engine(runtime, capacity=2)
    call = engine.open_call()
    _converse(engine, call, reference)
    caller = reference.prefix_speakers()[1]
    codes = runtime.mimi.encode(caller.audio).cpu()
    before = call.frames
    start, stop = engine.history.ingest(call, "user", codes, *_entries(engine, caller), prefill=False)
    last = engine.history.prefill(call, start, stop)
    n = call.frames
    assert n == before + codes.shape[1]
    assert [s[0] for s in call.segments] == ["voice", "user", "reply", "user"]

    fresh = engine.open_call()
    fresh.codes, fresh.text = call.codes.clone(), list(call.text)
    full = engine.history.prefill(fresh, 0, n)
    torch.testing.assert_close(full.action_logits[:, before:], last.action_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(full.cb0_logits[:, before:], last.cb0_logits, rtol=0, atol=1e-5)
    rows = engine.branches
    keys = engine.buf.cache.keys
    a, b = keys[:, :rows, :, :n], keys[:, rows : 2 * rows, :, :n]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    # And the next reply of both calls is the same.
    one = reply(engine, call, "[S1] Okay.", greedy())
    two = reply(engine, fresh, "[S1] Okay.", greedy())
    assert torch.equal(codes_of(one), codes_of(two))


def _entries(engine: BatchEngine, speaker: object) -> tuple[list, list[int]]:
    from dia2.prefix import words_to_entries

    return words_to_entries(speaker.words, engine.encoder, "[S2]", engine.frame_rate)  # type: ignore[attr-defined]


def test_cancel_stops_within_one_frame(runtime: Dia2) -> None:
    engine = make_engine(runtime, capacity=2)
    a, b = engine.open_call(), engine.open_call()
    got_a: list[AudioChunk | None] = []
    got_b: list[AudioChunk | None] = []
    engine.speak(a, SCRIPT_A, got_a.append, greedy())
    engine.speak(b, SCRIPT_B, got_b.append, greedy())
    while len(got_a) < 3:
        assert engine.step()
    engine.cancel(a)
    assert got_a[-1] is None and len(got_a) == 4  # 3 chunks, then the end marker, at once
    assert not bool(engine.buf.active[a.slot]) and engine.speaking() == [b]
    frames_a = a.frames
    b_before = len(got_b)
    assert engine.step()
    assert len(got_a) == 4 and a.frames == frames_a  # no chunk and no step for the cancelled call
    assert len(got_b) == b_before + 1
    run_until_quiet(engine)
    assert got_b[-1] is None and len(got_b) > b_before + 10
    # The cancelled call keeps exactly the frames it produced, and can speak again.
    assert a.segments[-1] == ("reply", 0, 3)
    again = reply(engine, a, "[S1] Go on.", greedy())
    assert again[0].frame == 3


def test_batched_rows_equal_calls_run_alone(runtime: Dia2) -> None:
    """Two calls at different steps, different texts and CFG settings, one batch: each call gets the
    tokens it gets alone."""
    alone_a = reply(engine_a := make_engine(runtime), engine_a.open_call(), SCRIPT_A, greedy(2.0))
    alone_b = reply(engine_b := make_engine(runtime), engine_b.open_call(), SCRIPT_B, greedy(1.0))

    engine = make_engine(runtime)
    engine.open_call()  # slot 0 stays idle: idle rows inside the bucket must not disturb the others
    a, b = engine.open_call(), engine.open_call()
    got_a: list[AudioChunk | None] = []
    got_b: list[AudioChunk | None] = []
    engine.speak(a, SCRIPT_A, got_a.append, greedy(2.0))
    for _ in range(5):
        engine.step()
    engine.speak(b, SCRIPT_B, got_b.append, greedy(1.0))
    run_until_quiet(engine)
    assert torch.equal(codes_of([c for c in got_a if c]), codes_of(alone_a))
    assert torch.equal(codes_of([c for c in got_b if c]), codes_of(alone_b))


def test_streamed_text_in_time_equals_whole_text(runtime: Dia2) -> None:
    """Words pushed one at a time, each before the state machine needs it (2 words of look-ahead),
    give the same tokens as the whole text; and a reply waits (pads) while more text is promised."""
    engine = make_engine(runtime)
    whole = reply(engine, engine.open_call(), SCRIPT_A, greedy())

    call = engine.open_call()
    words = SCRIPT_A.split(" ")
    got: list[AudioChunk | None] = []
    engine.speak(call, " ".join(words[:3]) + " ", got.append, greedy(), more_text=True)
    pushed = 3
    while engine.step():
        # "In time": the queue never runs below the look-ahead while words remain.
        while pushed < len(words) and len(call.machine.entries) < 3:
            last = pushed == len(words) - 1
            engine.push_text(call, words[pushed] + ("" if last else " "), final=last)
            pushed += 1
    assert torch.equal(codes_of([c for c in got if c]), codes_of(whole))

    # Text that stops coming: the reply holds instead of ending, then ends once the text is closed.
    late = engine.open_call()
    got2: list[AudioChunk | None] = []
    engine.speak(late, "[S1] Hello ", got2.append, greedy(), more_text=True)
    for _ in range(120):
        assert engine.step()
    assert late.turn is not None and late.machine.end_step is None and got2[-1] is not None
    engine.push_text(late, "there.", final=True)
    run_until_quiet(engine)
    assert got2[-1] is None and late.turn is None


def test_long_call_keeps_working(runtime: Dia2, reference: ReferenceFixture) -> None:
    """max_context_steps policy: the voice stays, the oldest turns go, the call goes on."""
    engine = make_engine(runtime, capacity=1, reply_reserve_steps=60, max_reply_steps=60)
    call = engine.open_call()
    voice, caller = reference.prefix_speakers()
    engine.set_voice(call, voice.audio, voice.words)
    voice_frames = call.frames
    for _ in range(5):
        engine.user_spoke(call, caller.audio[:24000], caller.words[:2])
        chunks = reply(engine, call, "[S1] Yes, I understand.", greedy())
        assert len(chunks) > 5
        assert call.frames < engine.max_steps
        assert call.segments[0] == ("voice", 0, voice_frames)
    assert call.dropped_segments > 0


def test_oversized_voice_is_refused_and_the_call_keeps_working(
    runtime: Dia2, reference: ReferenceFixture
) -> None:
    """A voice longer than the context allows raises a clear ValueError before the call changes: the call
    keeps its voice and context, resets, takes a new voice and speaks as a fresh call would."""
    engine = make_engine(runtime, capacity=2)
    voice, caller = reference.prefix_speakers()
    call = engine.open_call()
    engine.set_voice(call, voice.audio, voice.words)
    engine.user_spoke(call, caller.audio, caller.words)
    before = (call.frames, list(call.segments))
    too_long = engine.max_voice_frames + 1
    big = torch.randn(too_long * runtime.mimi.frame_size, generator=torch.Generator().manual_seed(0)) * 0.1
    with pytest.raises(ContextOverflowError) as refused:
        engine.set_voice(call, big, voice.words)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert f"voice of {too_long} frames" in message and f"max_context_steps is {engine.max_steps}" in message
    assert f"at most {engine.max_voice_frames} frames" in message
    assert (call.frames, call.segments) == before  # nothing changed
    engine.reset(call)  # used to fail for ever with IndexError
    assert call.segments == [("voice", 0, before[1][0][2])]

    # A caller turn longer than the whole context is refused the same way, the call unchanged.
    huge = torch.zeros(engine.max_steps * runtime.mimi.frame_size)
    with pytest.raises(ContextOverflowError, match=r"caller turn of .* max_context_steps is"):
        engine.user_spoke(call, huge, caller.words)
    assert call.segments == [("voice", 0, before[1][0][2])]

    # A new voice, then speech: the same tokens as on a call that never saw the oversized voice.
    engine.set_voice(call, caller.audio, caller.words)
    got = reply(engine, call, "[S1] Sure, one moment.", greedy())
    fresh = engine.open_call()
    engine.set_voice(fresh, caller.audio, caller.words)
    assert torch.equal(codes_of(got), codes_of(reply(engine, fresh, "[S1] Sure, one moment.", greedy())))


def test_voice_prompt_is_encoded_once(runtime: Dia2, reference: ReferenceFixture) -> None:
    """A voice encoded once (codes + words) and set on several calls costs one Mimi encoder run and
    speaks exactly as the voice set from its audio."""
    engine = make_engine(runtime, capacity=2)
    voice, caller = reference.prefix_speakers()
    from_audio = engine.open_call()
    engine.set_voice(from_audio, voice.audio, voice.words)
    engine.user_spoke(from_audio, caller.audio, caller.words)
    expected = codes_of(reply(engine, from_audio, "[S1] Sure, one moment.", greedy()))
    engine.close_call(from_audio)

    encodes = engine.mimi_encodes
    prompt = engine.encode_voice(voice.audio, 24000, voice.words)
    heard = engine.encode_voice(caller.audio, 24000, caller.words)
    assert engine.mimi_encodes == encodes + 2
    for _ in range(2):
        call = engine.open_call()
        engine.set_voice_prompt(call, prompt)
        engine.user_spoke_prompt(call, heard)
        assert torch.equal(codes_of(reply(engine, call, "[S1] Sure, one moment.", greedy())), expected)
        engine.close_call(call)
    assert engine.mimi_encodes == encodes + 2  # no encoder run for the calls themselves


def test_turns_queued_together_share_one_mimi_encode(runtime: Dia2, reference: ReferenceFixture) -> None:
    """Callers who stop together: their turns' audio goes through Mimi's encoder in one batched run and
    their frames through one batched prefill (the engine thread's time at 128 calls was mostly one encode
    and one prefill per turn), and each call's context and next reply are exactly those of a turn
    ingested alone: the encoder is causal (a row never sees the zeros padding it to the longest), and a
    shorter turn's padding steps write only the spare cache slot."""
    voice, caller = reference.prefix_speakers()
    lengths = [caller.audio.numel(), caller.audio.numel() * 2 // 3, 5000, 1]
    clips = [caller.audio[:n] for n in lengths]
    engine = make_engine(runtime, capacity=4)
    alone = [engine.mimi.encode_many([clip])[0] for clip in clips]
    together = engine.mimi.encode_many(clips)
    assert [c.shape[1] for c in together] == [engine.mimi.frames_for(n) for n in lengths]
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
    whole = clips[0][: 2 * engine.mimi.frame_size]  # whole frames: the same codes as the plain encode
    assert torch.equal(engine.mimi.encode_many([whole, clips[1]])[0], engine.mimi.encode(whole))

    expected = []
    for clip in clips[:2]:
        call = engine.open_call()
        engine.set_voice(call, voice.audio, voice.words)
        engine.user_spoke(call, clip, caller.words)
        expected.append(codes_of(reply(engine, call, "[S1] Sure, one moment.", greedy())))
        engine.close_call(call)
    calls = [engine.open_call() for _ in clips[:2]]
    for call in calls:
        engine.set_voice(call, voice.audio, voice.words)
    before = engine.thread.time.encode_batches
    engine.start()
    try:
        # Queued while the thread is held by a command of its own: both land in one drain.
        gate = threading.Event()
        engine.thread.submit(gate.wait)
        futures = [
            engine.submit_turn(c, clip, caller.words) for c, clip in zip(calls, clips[:2], strict=True)
        ]
        gate.set()
        for fut in futures:
            fut.result(timeout=60)
    finally:
        engine.stop()
    assert engine.thread.time.encode_batches == before + 1 and engine.thread.time.encoded >= 2
    assert engine.history.batched_prefills == 1  # and both turns' frames went through one forward
    for call, want in zip(calls, expected, strict=True):
        assert torch.equal(codes_of(reply(engine, call, "[S1] Sure, one moment.", greedy())), want)


def test_a_turn_heard_during_a_reply_ends_it_only_when_asked(
    runtime: Dia2, reference: ReferenceFixture
) -> None:
    """A slow engine may still be making a reply when the caller's next turn comes: the plain turn fails
    (the context is not rewritten under a running reply); with ``end_reply`` the reply ends (its sink gets
    the end) and the turn lands."""
    voice, caller = reference.prefix_speakers()
    engine = make_engine(runtime, capacity=2)
    call = engine.open_call()
    engine.set_voice(call, voice.audio, voice.words)
    frames = call.frames
    chunks: list[AudioChunk | None] = []
    engine.start()
    try:
        for end_reply in (False, True):
            gate = threading.Event()
            engine.thread.submit(gate.wait)  # speak and the turn land in the same drain, before any step
            engine.thread.submit(lambda: engine.speak(call, SCRIPT_A, chunks.append, greedy()))
            turn = engine.submit_turn(call, caller.audio, caller.words, end_reply=end_reply)
            gate.set()
            if end_reply:
                turn.result(timeout=60)
            else:
                with pytest.raises(RuntimeError, match="reply is in progress"):
                    turn.result(timeout=60)
                engine.thread.submit(lambda: engine.cancel(call)).result(timeout=60)
    finally:
        engine.stop()
    assert call.turn is None and chunks[-1] is None
    assert call.segments[-1][0] == "user" and call.frames > frames


def test_encode_batches_keep_rows_times_longest_within_budget() -> None:
    from dia2.engine import _encode_batches

    groups = _encode_batches([30, 10, 100, 20, 250], 100)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    assert groups == [[1, 3, 0], [2], [4]]  # 3 x 30 fits; 4 x 100 does not; 250 alone


def test_conversation_async_api(runtime: Dia2) -> None:
    """The asyncio face over the engine thread: whole text, streamed deltas, barge-in."""
    engine = make_engine(runtime)
    direct = reply(engine, engine.open_call(), SCRIPT_A, greedy())
    engine.start()

    async def deltas() -> AsyncIterator[str]:
        for word in SCRIPT_A.split(" "):
            yield word + " "

    async def main() -> None:
        conv = await EngineConversation.open(engine)
        whole = [c async for c in conv.speak(SCRIPT_A, greedy())]
        assert torch.equal(codes_of(whole), codes_of(direct))
        streamed = [c async for c in conv.speak(deltas(), greedy())]
        assert len(streamed) > 10
        got = []
        async for chunk in conv.speak(SCRIPT_B, greedy()):
            got.append(chunk)
            if len(got) == 2:
                conv.cancel()
        assert len(got) == 2
        state = await conv.state()
        assert not state.speaking and state.segments[-1][0] == "reply"
        await conv.close()

    try:
        asyncio.run(main())
    finally:
        engine.stop()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("case", ["greedy", "cfg"])
def test_lead_in_skip_and_fused_path_keep_tokens(
    runtime: Dia2,
    reference: ReferenceFixture,
    case_results: dict[str, GenerationResult],
    case: str,
    fused: bool,
) -> None:
    """Skipping the depformer on lead-in steps, the layer/stage functions of dia2/fused.py (run eagerly
    here, compiled on CUDA) and length-bucketed attention all keep the parity loop's tokens."""
    opts = reference.options(case)
    results = {}
    for skip in (False, True):
        # The fused run also reads the cache through short length buckets (attention over fewer slots).
        kv = {"kv_buckets": (8, 16, 32, 64)} if fused else {}
        eng = make_engine(runtime, fused=fused, skip_lead_in=skip, **kv)
        call = eng.open_call()
        chunks = reply(
            eng,
            call,
            reference.inputs["cases"][case]["script"],
            SpeakOptions(opts.text, opts.audio, opts.cfg_scale),
        )
        results[skip] = (codes_of(chunks), torch.cat([c.pcm for c in chunks]), eng.lead_steps)
    expected = case_results[case]
    for skip, (codes, pcm, lead) in results.items():
        assert torch.equal(codes, expected.audio_tokens), skip
        assert lead == (17 if skip else 0)
        err = (pcm - expected.waveform).abs().max() / expected.waveform.abs().max()
        assert err < 1e-5


def _pcm_err(got: list[AudioChunk], want: list[AudioChunk]) -> float:
    a, b = torch.cat([c.pcm for c in got]), torch.cat([c.pcm for c in want])
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("fused", [False, True])
def test_lead_in_lane_keeps_every_call_exact(runtime: Dia2, reference: ReferenceFixture, fused: bool) -> None:
    """A reply that starts while another call speaks runs its lead-in as lane steps (its own rows,
    main-only) between the batch's full steps: it reaches its first chunk after at most 6 full steps
    instead of 18, yields the tokens it yields alone (and the same audio, its Mimi row primed at the
    lead-in's end), and the call already speaking is unaffected token for token."""
    caller = reference.prefix_speakers()[1]
    kv = {"kv_buckets": (8, 16, 32, 64), "fused": True} if fused else {}

    def setup(engine: BatchEngine) -> tuple[CallState, CallState]:
        a, b = engine.open_call(), engine.open_call()
        engine.user_spoke(b, caller.audio, caller.words)  # b has history: its Mimi row is primed
        return a, b

    ref = make_engine(runtime, lead_in_lane=False, **kv)  # the in-line path, each call alone
    a0, b0 = setup(ref)
    alone_a = reply(ref, a0, SCRIPT_A, greedy(2.0))
    alone_b = reply(ref, b0, SCRIPT_B, greedy(1.0))
    assert b0.segments[-1][1] > 17

    engine = make_engine(runtime, lane_steps_per_full=3, **kv)
    a, b = setup(engine)
    got_a: list[AudioChunk | None] = []
    got_b: list[AudioChunk | None] = []
    engine.speak(a, SCRIPT_A, got_a.append, greedy(2.0))
    while len(got_a) < 4:
        assert engine.step()
    full0, lane0 = engine.steps_run, engine.lane_steps
    engine.speak(b, SCRIPT_B, got_b.append, greedy(1.0))
    while not got_b:
        assert engine.step()
    # The 17 lead-in steps: at most 3 lane steps per full step (b rides the full steps too); the full
    # step after them completes frame 0. In line it would be 18 full steps.
    full, lane = engine.steps_run - full0, engine.lane_steps - lane0
    assert full <= 6 and lane + full - 1 == 17
    run_until_quiet(engine)
    chunks_a = [c for c in got_a if c is not None]
    chunks_b = [c for c in got_b if c is not None]
    assert torch.equal(codes_of(chunks_a), codes_of(alone_a))
    assert torch.equal(codes_of(chunks_b), codes_of(alone_b))
    assert _pcm_err(chunks_a, alone_a) < 1e-5
    assert _pcm_err(chunks_b, alone_b) < 1e-4  # primed in one multi-frame decode: float rounding only


def test_priming_graph_body_equals_eager_priming(runtime: Dia2, reference: ReferenceFixture) -> None:
    """The CUDA priming graph's body (codes gathered from the ring, scratch row copied into the slot)
    leaves the Mimi row exactly as the eager priming from the host history does."""
    engine = make_engine(runtime)
    engine.open_call()
    call = engine.open_call()
    caller = reference.prefix_speakers()[1]
    engine.user_spoke(call, caller.audio, caller.words)
    engine.speak(call, "[S1] Hello there.", lambda chunk: None, greedy())
    while engine.stepper.in_lead_in(call):
        engine.step()  # the step that ends the lead-in primes the row (eagerly on the CPU)
    eager = [t[call.slot].clone() for t in engine.mimi_rows.master.state.tensors()]
    engine.cancel(call)
    engine.mimi_rows.prime_slot.fill_(call.slot)
    with torch.inference_mode():
        engine.mimi_rows.prime_body()
    for a, b in zip(eager, [t[call.slot] for t in engine.mimi_rows.master.state.tensors()], strict=True):
        assert torch.equal(a, b)
