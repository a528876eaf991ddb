"""The engine on CUDA: captured frame graphs give the parity loop's tokens (float32 is token-exact on
CUDA, see docs/PERFORMANCE.md), batched calls inside a bucket equal the same calls alone, and graphs
are captured once and reused across turns and calls."""

from __future__ import annotations

import pytest
import torch

from dia2.engine import AudioChunk, BatchEngine, EngineOptions, SpeakOptions
from dia2.reference import ReferenceFixture
from dia2.sampling import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

GREEDY = SamplingParams(0.0, 1)


def _reply(engine: BatchEngine, call: object, text: str, opts: SpeakOptions) -> torch.Tensor:
    got: list[AudioChunk | None] = []
    engine.speak(call, text, got.append, opts)  # type: ignore[arg-type]
    while engine.step():
        pass
    return torch.stack([c.codes for c in got if c is not None], dim=1)


@pytest.mark.parametrize(
    ("graphs", "paged"), [(True, None), (False, None), (True, "kernel"), (True, "gather")]
)
def test_cuda_engine_matches_parity_loop(
    reference: ReferenceFixture, graphs: bool, paged: str | None
) -> None:
    """Also with the paged KV cache inside the captured graphs (a pool of 64 steps per call on average:
    the calls' blocks are taken and given back between turns while the graphs keep their table), its
    attention on the in-place kernel (dia2/paged_attention.py, the CUDA default) and on the gather."""
    runtime = reference.load_runtime("cuda", "float32")
    torch.backends.cuda.matmul.allow_tf32 = False
    paging: dict[str, object] = {}
    if paged is not None:
        paging = {"paged_kv": True, "kv_block_size": 8, "kv_pool_steps": 64}
        paging["paged_attention_kernel"] = paged == "kernel"
    engine = BatchEngine(
        runtime.model,
        runtime.ids,
        runtime.tokenizer,
        runtime.mimi,
        EngineOptions(capacity=4, max_reply_steps=160, reply_reserve_steps=40, cuda_graphs=graphs, **paging),
    )
    assert bool(engine.graphs.steps) == graphs
    assert engine.pool is None or engine.pool.cache.in_place == (paged == "kernel")
    captured = dict(engine.graphs.steps)
    for case in ("greedy", "cfg"):
        opts = reference.options(case)
        script = reference.inputs["cases"][case]["script"]
        expected = runtime.generate(script, options=opts).audio_tokens.cpu()
        speak = SpeakOptions(opts.text, opts.audio, opts.cfg_scale)
        calls = [engine.open_call() for _ in range(3)]
        # Three calls in one bucket, started together: each must equal the one-call loop.
        sinks: list[list[AudioChunk | None]] = [[] for _ in calls]
        for call, sink in zip(calls, sinks, strict=True):
            engine.speak(call, script, sink.append, speak)
        while engine.step():
            pass
        for sink in sinks:
            got = torch.stack([c.codes for c in sink if c is not None], dim=1)
            assert torch.equal(got, expected), case
        # A second turn on the same call reuses the same graphs.
        assert _reply(engine, calls[0], script, speak).shape[0] == 32
        for call in calls:
            engine.close_call(call)
        if engine.pool is not None:
            assert engine.pool.free_blocks == engine.pool.total_blocks
    assert engine.graphs.steps == captured


def test_cuda_lead_in_lane_and_mimi_stream_keep_tokens(reference: ReferenceFixture) -> None:
    """A reply started while another speaks runs its lead-in in lane graphs between full steps, and the
    Mimi decode runs on its own stream: both calls still give the parity loop's tokens, every chunk
    comes out, and the audio matches the in-line path."""
    runtime = reference.load_runtime("cuda", "float32")
    torch.backends.cuda.matmul.allow_tf32 = False
    opts = reference.options("greedy")
    script = reference.inputs["cases"]["greedy"]["script"]
    expected = runtime.generate(script, options=opts).audio_tokens.cpu()
    speak = SpeakOptions(opts.text, opts.audio, opts.cfg_scale)
    common = {"capacity": 4, "max_reply_steps": 160, "reply_reserve_steps": 40}
    engine = BatchEngine(
        runtime.model,
        runtime.ids,
        runtime.tokenizer,
        runtime.mimi,
        EngineOptions(lane_steps_per_full=2, **common),
    )
    assert engine.graphs.lane_graphs and engine.mimi_rows.stream is not None
    a, b = engine.open_call(), engine.open_call()
    got_a: list[AudioChunk | None] = []
    got_b: list[AudioChunk | None] = []
    engine.speak(a, script, got_a.append, speak)
    while len(got_a) < 5:
        engine.step()
    engine.speak(b, script, got_b.append, speak)
    while engine.step():
        pass
    assert engine.lane_steps > 17
    for got in (got_a, got_b):
        assert got[-1] is None
        assert torch.equal(torch.stack([c.codes for c in got if c is not None], dim=1), expected)
    inline = BatchEngine(
        runtime.model,
        runtime.ids,
        runtime.tokenizer,
        runtime.mimi,
        EngineOptions(lead_in_lane=False, overlap_mimi=False, **common),
    )
    ref: list[AudioChunk | None] = []
    inline.speak(inline.open_call(), script, ref.append, speak)
    while inline.step():
        pass
    want = torch.cat([c.pcm for c in ref if c is not None])
    for got in (got_a, got_b):
        pcm = torch.cat([c.pcm for c in got if c is not None])
        # Float rounding only: cuDNN picks other conv algorithms for a 2-call bucket than for 1 call.
        assert float((pcm - want).abs().max() / want.abs().max()) < 1e-3


@pytest.mark.parametrize("special", ["audio_pad", "audio_bos", "ungenerated"])
def test_cuda_rigged_sampler_specials_never_reach_mimi(
    reference: ReferenceFixture, monkeypatch: pytest.MonkeyPatch, special: str
) -> None:
    """Issue 23: a sampler that emits BOS/PAD/"ungenerated" codes inside the captured graphs must not
    take the CUDA context down (an out-of-range Mimi lookup is a device-side assert): the reply ends,
    the context and the engine stay usable. The rig is captured into the graphs and switched by a
    device flag, as real bad logits would arrive."""
    import dia2.frame as frame_mod

    runtime = reference.load_runtime("cuda", "float32")
    code = getattr(runtime.ids, special)
    on = torch.zeros((), dtype=torch.bool, device="cuda")
    real = frame_mod.sample_rows

    def rigged(logits: torch.Tensor, *args: object) -> torch.Tensor:
        out = real(logits, *args)
        if logits.shape[-1] > 2:  # audio draws only
            out = torch.where(on, torch.full_like(out, code), out)
        return out

    monkeypatch.setattr(frame_mod, "sample_rows", rigged)
    engine = BatchEngine(
        runtime.model,
        runtime.ids,
        runtime.tokenizer,
        runtime.mimi,
        EngineOptions(capacity=2, max_reply_steps=120, reply_reserve_steps=40),
    )
    assert engine.graphs.steps
    call = engine.open_call()
    greedy = SpeakOptions(GREEDY, GREEDY, 1.0)
    got: list[AudioChunk | None] = []
    engine.speak(call, "[S1] Hello, this is a verification call.", got.append, greedy)
    for _ in range(60):
        if len(got) >= 3:
            break
        engine.step()
    on.fill_(True)
    for _ in range(40):
        if got and got[-1] is None:
            break
        engine.step()
    torch.cuda.synchronize()  # a device-side assert would surface here
    assert got[-1] is None and engine.invalid_codes >= 1
    limit = runtime.mimi.codebook_size
    assert all(c is not None and int(c.codes.max()) < limit and int(c.codes.min()) >= 0 for c in got[:-1])
    on.fill_(False)
    assert _reply(engine, call, "[S1] Okay.", greedy).shape[0] == 32
    torch.cuda.synchronize()


def test_cuda_engine_thread_on_a_high_priority_stream(reference: ReferenceFixture) -> None:
    """EngineOptions.stream_priority: the engine thread's steps (and the Mimi stream) on high-priority
    streams give the parity loop's tokens, replies started from another thread as the product does."""
    runtime = reference.load_runtime("cuda", "float32")
    torch.backends.cuda.matmul.allow_tf32 = False
    opts = reference.options("greedy")
    script = reference.inputs["cases"]["greedy"]["script"]
    expected = runtime.generate(script, options=opts).audio_tokens.cpu()
    engine = BatchEngine(
        runtime.model,
        runtime.ids,
        runtime.tokenizer,
        runtime.mimi,
        EngineOptions(capacity=4, max_reply_steps=160, reply_reserve_steps=40, stream_priority=-1),
    )
    assert engine.mimi_rows.stream is not None and engine.mimi_rows.stream.priority < 0
    call = engine.open_call()
    got: list[AudioChunk | None] = []
    engine.start()
    try:
        engine.submit(
            lambda: engine.speak(call, script, got.append, SpeakOptions(opts.text, opts.audio, 0.0))
        )
        while not (got and got[-1] is None):
            engine.submit(lambda: None).result(timeout=60)
    finally:
        engine.stop()
    assert torch.equal(torch.stack([c.codes for c in got if c is not None], dim=1), expected)
