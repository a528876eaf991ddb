"""dia2/prefill_graphs.py: prefills through (calls, frames) buckets leave every call's cache and next reply
exactly as a call prefilled alone does. On the CPU the bucketed inputs run eagerly (the graphs' bodies);
tests/dia2/test_engine_gpu.py replays the captured graphs on a card.
"""

from __future__ import annotations

import threading

import pytest
import torch

from dia2.engine import BatchEngine, CallState
from dia2.prefill_graphs import PrefillGraphs, PrefillSpan, bucket_of, rounds
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2

from .engine_kit import greedy, make_engine
from .test_engine import codes_of, reply


def test_rounds_cut_every_span_at_the_largest_bucket_in_order() -> None:
    spans = [
        PrefillSpan([0, 1], torch.zeros(2, n, 3, dtype=torch.long), 10 * i) for i, n in enumerate([9, 3, 0])
    ]
    got = [[(s.rows, s.start, s.frames) for s in r] for r in rounds(spans, 4)]
    assert got == [
        [([0, 1], 0, 4), ([0, 1], 10, 3)],
        [([0, 1], 4, 4)],
        [([0, 1], 8, 1)],
    ]
    assert [bucket_of(n, (1, 2, 4)) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]


def _small_buckets(engine: BatchEngine) -> PrefillGraphs:
    """Buckets small enough that the fixture's turns need several rounds and groups."""
    graphs = engine.new_prefill_graphs(call_buckets=(1, 2), frame_buckets=(4, 16))
    engine.history.graphs = graphs
    return graphs


def _cache_of(engine: BatchEngine, call: CallState) -> tuple[torch.Tensor, torch.Tensor]:
    """The call's K/V of its known frames, ``[L, rows, Hkv, frames, Dh]`` (dense or paged)."""
    rows = engine.buf.cache.rows(torch.tensor(engine.history.rows_of(call), device=engine.device))
    layers = [rows.read(layer) for layer in range(len(engine.model.transformer.layers))]
    n = call.frames
    return torch.stack([k[:, :, :n] for k, _ in layers]), torch.stack([v[:, :, :n] for _, v in layers])


def test_bucketed_prefills_equal_each_call_alone(runtime: Dia2, reference: ReferenceFixture) -> None:
    """Three callers' turns of different lengths (one longer than the largest frame bucket: rounds; three
    calls over call buckets of at most 2: groups, one padded) queued into one drain, on voices that went
    in through the buckets too: each call's cache slots and its next greedy reply equal those of the
    same call on an engine without buckets. The padding wrote nothing but the spare slot."""
    plain = make_engine(runtime, capacity=4)
    bucketed = make_engine(runtime, capacity=4, prefill_graphs=True)
    assert bucketed.history.graphs is not None and plain.history.graphs is None
    graphs = _small_buckets(bucketed)
    _check_against_alone(plain, bucketed, reference, longest_bucket=16)
    assert graphs.eager_runs > 3 and graphs.replays == 0


def test_bucketed_prefills_into_paged_blocks(runtime: Dia2, reference: ReferenceFixture) -> None:
    """The same over the paged KV cache: the buckets write through each call's block table (blocks taken
    for the span first), padding into the trash block or the spare slot."""
    plain = make_engine(runtime, capacity=4, paged_kv=True, kv_block_size=8, kv_pool_steps=128)
    bucketed = make_engine(
        runtime, capacity=4, paged_kv=True, kv_block_size=8, kv_pool_steps=128, prefill_graphs=True
    )
    graphs = _small_buckets(bucketed)
    _check_against_alone(plain, bucketed, reference, longest_bucket=16)
    assert graphs.eager_runs > 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("paged", [False, True])
def test_captured_prefill_graphs_equal_each_call_alone(reference: ReferenceFixture, paged: bool) -> None:
    """The same on CUDA in float32 with the captured graphs of the default buckets (replayed, not run
    eagerly) against an engine that prefills eagerly; dense and paged (the graphs read the block table
    that the pool updates in place)."""
    runtime = reference.load_runtime("cuda", "float32")
    torch.backends.cuda.matmul.allow_tf32 = False
    kv: dict[str, object] = {"paged_kv": True, "kv_block_size": 8, "kv_pool_steps": 128} if paged else {}
    plain = make_engine(runtime, capacity=4, prefill_graphs=False, **kv)
    bucketed = make_engine(runtime, capacity=4, **kv)
    graphs = bucketed.history.graphs
    assert graphs is not None and not graphs.errors
    assert all(b.graph is not None for b in graphs.buckets.values())
    _check_against_alone(plain, bucketed, reference, longest_bucket=None)
    assert graphs.replays >= 2 and graphs.eager_runs == 0


def _check_against_alone(
    plain: BatchEngine, bucketed: BatchEngine, reference: ReferenceFixture, longest_bucket: int | None
) -> None:
    voice, caller = reference.prefix_speakers()
    clips = [caller.audio, caller.audio[: caller.audio.numel() // 2], caller.audio[:6000]]
    want = []
    for clip in clips:
        call = plain.open_call()
        plain.set_voice(call, voice.audio, voice.words)
        plain.user_spoke(call, clip, caller.words)
        want.append((_cache_of(plain, call), call))
    calls = [bucketed.open_call() for _ in clips]
    for call in calls:
        bucketed.set_voice(call, voice.audio, voice.words)
    before = bucketed.buf.cache.keys.clone()  # [L, rows, Hkv, S, Dh]
    voiced = [c.frames for c in calls]
    bucketed.start()
    try:
        gate = threading.Event()
        bucketed.thread.submit(gate.wait)  # the three turns land in one drain
        futures = [bucketed.submit_turn(c, clip, caller.words) for c, clip in zip(calls, clips, strict=True)]
        gate.set()
        for fut in futures:
            fut.result(timeout=60)
    finally:
        bucketed.stop()
    turns = [c.frames - v for c, v in zip(calls, voiced, strict=True)]
    if longest_bucket is not None:
        assert max(turns) > longest_bucket > min(turns)  # a turn of several rounds, and a padded one
    for call, ((keys, values), alone) in zip(calls, want, strict=True):
        assert call.frames == alone.frames
        got_k, got_v = _cache_of(bucketed, call)
        torch.testing.assert_close(got_k, keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_v, values, rtol=1e-5, atol=1e-5)
    if bucketed.pool is None:  # (the pool's blocks are laid out otherwise; a stray write shows in the calls')
        changed = (bucketed.buf.cache.keys != before).any(dim=4).any(dim=2).any(dim=0)  # [rows, S]
        allowed = torch.zeros_like(changed)
        allowed[:, -1] = True  # the spare slot: padding
        for call in calls:
            allowed[bucketed.history.rows_of(call), : call.frames] = True
        assert changed[:, -1].any() and not (changed & ~allowed).any()
    for call, (_, alone) in zip(calls, want, strict=True):
        got = codes_of(reply(bucketed, call, "[S1] Sure, one moment.", greedy()))
        assert torch.equal(got, codes_of(reply(plain, alone, "[S1] Sure, one moment.", greedy())))
