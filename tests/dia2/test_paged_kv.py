"""Paged KV cache (``EngineOptions.paged_kv``, dia2/paged_kv.py) on the tiny fixture checkpoint (CPU).

The engine with the paged cache must give the dense cache's tokens exactly, for several calls of different
lengths that join and leave while others speak (a left call's blocks are reused by the next one), and hold
only the blocks its calls' contexts need; a pool that runs short ends a reply cleanly and recovers.
"""

from __future__ import annotations

import torch

from dia2.engine import AudioChunk, BatchEngine
from dia2.model import DecoderCache
from dia2.paged_kv import TRASH_BLOCK, BlockPool, blocks_for
from dia2.reference import ReferenceFixture
from dia2.runtime import Dia2

from . import engine_kit
from .engine_kit import SCRIPT_A, SCRIPT_B, greedy


def make_engine(runtime: Dia2, **kw: object) -> BatchEngine:
    return engine_kit.make_engine(runtime, kv_buckets=(16, 32, 64), lane_steps_per_full=2, **kw)


def test_block_pool_hands_out_and_takes_back_blocks() -> None:
    pool = BlockPool(
        layers=2,
        kv_heads=2,
        head_dim=4,
        rows=4,
        max_steps=40,
        block_size=8,
        blocks=6,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert pool.width == 5 and pool.free_blocks == 6
    assert pool.ensure([([0, 1], 17)]) == []  # 3 blocks per row
    assert pool.held[0] == [1, 2, 3] and pool.held[1] == [4, 5, 6] and pool.free_blocks == 0
    assert pool.ensure([([2, 3], 1), ([0, 1], 24)]) == [0]  # no block left; 24 steps fit in 3 blocks
    assert pool.room([0, 1]) == 24
    pool.truncate([0, 1], 9)  # slots 0..8: 2 blocks each
    assert pool.held[0] == [1, 2] and pool.free_blocks == 2
    assert pool.ensure([([2, 3], 3)]) == []
    assert pool.held[2] == [3] and pool.held[3] == [6]  # lowest free ids first
    table = pool.cache.table
    for r in range(4):
        held = pool.held[r]
        assert table[r, : len(held)].tolist() == held
        assert (table[r, len(held) :] == TRASH_BLOCK).all()
    pool.release([0, 1, 2, 3])
    assert pool.free_blocks == 6 and (table == TRASH_BLOCK).all()


def test_paged_reads_equal_dense_reads() -> None:
    """Writes at per-row slots (one step and several at once) read back as the dense cache holds them."""
    gen = torch.Generator().manual_seed(0)
    rows, steps, size = 3, 24, 4
    pool = BlockPool(
        layers=1,
        kv_heads=2,
        head_dim=4,
        rows=rows,
        max_steps=steps,
        block_size=size,
        blocks=18,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    dense = DecoderCache(torch.zeros(1, rows, 2, steps, 4), torch.zeros(1, rows, 2, steps, 4))
    paged = pool.cache
    lengths = [5, 13, 22]
    for r, n in enumerate(lengths):
        assert pool.ensure([([r], n)]) == []
    index = torch.stack([torch.arange(n - 5, n) for n in lengths])  # 5 slots per row
    k, v = torch.randn(2, rows, 2, 5, 4, generator=gen)
    k1, v1 = torch.randn(2, rows, 2, 1, 4, generator=gen)
    for cache in (dense, paged):
        cache.write(0, index, k, v)
        cache.write(0, index[:, 2:3], k1, v1)  # one slot each, over an earlier write
    got, want = paged.read(0), dense.read(0)
    for r, n in enumerate(lengths):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a[r, :, :n], b[r, :, :n])
    short = paged.limit(9)
    assert short.read(0)[0].shape[2] == 12 and short.max_steps == 12


def _scenario(engine: BatchEngine, reference: ReferenceFixture) -> dict[str, list[AudioChunk]]:
    """Calls of different lengths joining and leaving while others speak: a (caller turn, two replies),
    b (no history, leaves mid-reply), c (joins later), d (takes b's slot and, paged, its blocks)."""
    caller = reference.prefix_speakers()[1]
    got: dict[str, list[AudioChunk | None]] = {k: [] for k in ("a", "a2", "b", "c", "d")}
    a, b = engine.open_call(), engine.open_call()
    engine.user_spoke(a, caller.audio, caller.words)
    engine.speak(a, SCRIPT_A, got["a"].append, greedy(2.0))
    for _ in range(3):
        engine.step()
    engine.speak(b, SCRIPT_B, got["b"].append, greedy())
    for _ in range(8):
        engine.step()
    c = engine.open_call()
    engine.user_spoke(c, caller.audio[: caller.audio.shape[0] // 2], [])
    engine.speak(c, "[S1] Go on, please.", got["c"].append, greedy(2.0))
    for _ in range(12):
        engine.step()
    engine.close_call(b)  # leaves mid-reply: its rows are reset (moshi-style reset(mask)), paged blocks freed
    rows = slice(b.slot * engine.branches, (b.slot + 1) * engine.branches)
    assert (
        not engine.buf.cache_index[rows].any()
        and not engine.buf.step[b.slot]
        and not engine.buf.active[b.slot]
    )
    assert engine.history.host_index[b.slot] == 0
    if engine.pool is not None:
        assert all(not engine.pool.held[r] for r in range(rows.start, rows.stop))
    d = engine.open_call()
    assert d.slot == b.slot
    engine.speak(d, SCRIPT_A, got["d"].append, greedy())
    while engine.step():
        pass
    engine.speak(a, SCRIPT_B, got["a2"].append, greedy(2.0))  # a second reply on a longer context
    while engine.step():
        pass
    if engine.pool is not None:  # held blocks = what the contexts need, per row
        size = engine.options.kv_block_size
        held = sum(engine.branches * blocks_for(call.frames, size) for call in engine.calls.values())
        assert engine.pool.total_blocks - engine.pool.free_blocks == held
        for call in list(engine.calls.values()):
            engine.close_call(call)
        assert engine.pool.free_blocks == engine.pool.total_blocks
    return {k: [c for c in v if c is not None] for k, v in got.items()}


def test_paged_engine_equals_dense_engine(runtime: Dia2, reference: ReferenceFixture) -> None:
    dense = _scenario(make_engine(runtime), reference)
    # A pool of 64 steps per call on average (the fixture's context is 160): a uses more, b and d less.
    paged = _scenario(make_engine(runtime, paged_kv=True, kv_block_size=8, kv_pool_steps=64), reference)
    assert all(len(dense[k]) > 5 for k in ("a", "a2", "c", "d")) and dense["b"]
    for name, chunks in dense.items():
        assert len(paged[name]) == len(chunks), name
        for x, y in zip(paged[name], chunks, strict=True):
            assert torch.equal(x.codes, y.codes), name
            assert torch.equal(x.pcm, y.pcm), name


def test_short_pool_ends_the_reply_and_recovers(runtime: Dia2) -> None:
    """A pool of 40 steps for one call: a reply past it ends (complete frames kept, end marker sent), its
    blocks are given back at the rewind, and the next reply on the call (context dropped to fit) runs."""
    engine = make_engine(runtime, capacity=1, paged_kv=True, kv_block_size=8, kv_pool_steps=40, fused=True)
    call = engine.open_call()
    got: list[AudioChunk | None] = []
    engine.speak(call, SCRIPT_A + " " + SCRIPT_B, got.append, greedy())
    while engine.step():
        pass
    assert engine.kv_pool_ends == 1 and got[-1] is None
    # Steps 0..39 fit (5 blocks of 8 per row); frame f is complete after step f + 17.
    assert call.frames == len(got) - 1 == 40 - 17
    assert engine.pool is not None
    assert engine.pool.total_blocks - engine.pool.free_blocks == 2 * blocks_for(call.frames, 8)
    again: list[AudioChunk | None] = []
    engine.speak(call, "[S1] Go on.", again.append, greedy())
    while engine.step():
        pass
    assert again[-1] is None and len(again) > 1
