"""Decode attention over the paged KV cache, reading the blocks where they lie in the pool.

Why: ``PagedDecoderCache.read`` gathers every row's blocks into a dense ``[B, Hkv, W * block_size, Dh]``
copy per layer and step before SDPA reads it again: the gather moves the context three times (read,
write, read) where the dense cache's attention moves it once, so the paged engine's full step was slower
than the dense one's and left no slack for lead-in lane steps (docs/PERFORMANCE.md, issue 23). Here one
program per (row, KV head) walks the row's block table and reads each K/V block from the pool once.

The math is ``model._attend``'s for one query frame: scale 1.0 (Dia2's QK-norm weights carry 1/sqrt(d)),
slots ``0 .. cache_index[b]`` of row b visible (the dense path's ``valid``), GQA (query head h reads KV
head ``h // (H / Hkv)``, as SDPA's ``enable_gqa``). Softmax is online over tiles of slots, in float32;
the ``H / Hkv`` query heads of a KV head share one program, so each block is read once for all of them.
Blocks past the row's cache index are never read (the loop stops at the last visible slot), so trash-block
entries beyond it cost nothing; masked lanes of the last tile read block 0 (the trash) at most.

Nothing here syncs with the host and every shape is static per launch (the loop bound is read on the
device), so a CUDA graph captures it like the gather. Tested against the gather + SDPA path on the CPU
through Triton's interpreter (tests/dia2/test_paged_attention.py).

This module imports Triton at import time; ``dia2.paged_kv`` imports it only when the kernel is on.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["paged_decode"]

# Slots per loop iteration: at least one block, and at least 64 slots so that a 16-slot block size
# still gives each iteration a [16, 64] score tile (several blocks, each its own row gather).
MIN_TILE = 64
# tl.dot needs every dimension >= 16: the GQA group (2 query heads per KV head in Dia2-2B) and a small
# head width are padded with masked (zero) lanes.
MIN_DOT = 16


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    index_ptr,
    out_ptr,
    width,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_t,
    stride_ob,
    stride_oh,
    GROUP: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One (row, KV head): its ``GROUP`` query heads against slots ``0 .. cache_index[row]`` of the row's
    blocks; output ``out[row, kvh * GROUP + g]``."""
    row = tl.program_id(0)
    kvh = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    gm = g < GROUP
    dm = d < DIM
    head = kvh * GROUP + g
    q = tl.load(
        q_ptr + row * stride_qb + head[:, None] * stride_qh + d[None, :],
        mask=gm[:, None] & dm[None, :],
        other=0.0,
    )
    # Visible slots: 0 .. cache_index, at most the table's width (a limited view sees all its slots, as the
    # dense mask over max_steps does for an index past it).
    visible = tl.minimum(tl.load(index_ptr + row) + 1, width * BLOCK_SIZE).to(tl.int32)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if IEEE:
        q = q.to(tl.float32)
    kv_base = kvh * stride_kh
    s_in = tl.arange(0, TILE)
    # Every tile holds at least one visible slot, so each row of the running max is finite after the
    # first tile (no -inf - -inf).
    for start in range(0, visible, TILE):
        s = start + s_in
        ok = s < visible
        blk = tl.load(table_ptr + row * stride_t + s // BLOCK_SIZE, mask=ok, other=0)
        at = blk.to(tl.int64) * stride_kb + kv_base + (s % BLOCK_SIZE) * stride_ks
        kv_mask = ok[:, None] & dm[None, :]
        k = tl.load(k_ptr + at[:, None] + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + at[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if IEEE:  # float32 inputs (or bfloat16 in the interpreter, whose bf16 dot is wrong): exact fp32 dots
            score = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            score = tl.dot(q, tl.trans(k))
        score = tl.where(ok[None, :], score, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(score, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(score - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = tl.dot(p, v.to(tl.float32), acc * alpha[:, None], input_precision="ieee")
        else:  # tensor cores: p rounded to the values' dtype, sums in float32 (as flash attention does)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + row * stride_ob + head[:, None] * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=gm[:, None] & dm[None, :],
    )


def paged_decode(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    table: torch.Tensor,
    cache_index: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    warps: int = 4,
    tile: int | None = None,
    stages: int | None = None,
) -> torch.Tensor:
    """``q [B, H, Dh]`` (one query frame per row) against one layer's pool ``keys``/``values [blocks, Hkv,
    block_size, Dh]`` through ``table [B, W]`` (block ids, any row stride), slots ``<= cache_index [B]``
    → ``out [B, H, Dh]`` (q's dtype unless given). ``warps``/``tile`` (slots per iteration, a power of two
    >= 16): launch settings, untuned until bench/dia2_paged_attention.py has run on a GPU. ``stages``:
    Triton's ``num_stages`` (None: its default). With a head width that is a multiple of 16 and strides
    that are too, Triton pipelines the K/V loads through shared memory (cp.async, a copy ahead of the
    loop's use); at 1 it does not, so a GPU run can tell a pipelining fault from the kernel's math (the
    interpreter runs neither)."""
    rows, heads, dim = q.shape
    _, kv_heads, block_size, _ = keys.shape
    assert keys.shape[3] == dim and keys.stride() == values.stride() and heads % kv_heads == 0
    assert keys.stride(3) == 1 and table.stride(1) == 1
    assert table.shape[0] == rows and cache_index.shape == (rows,)
    if q.stride(2) != 1:  # a compiled producer may hand over another layout; the copy is [B, H, Dh] only
        q = q.contiguous()
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.stride(2) == 1
    group = heads // kv_heads
    assert tile is None or (tile >= MIN_DOT and tile == triton.next_power_of_2(tile))
    # Exact fp32 dots for float32, and for bfloat16 under the interpreter: its bf16 tl.dot returns garbage
    # (Triton 3.9, off by 1e10 on a 16x32 product) while its fp16 one is right, so float16 runs the
    # tensor-core branch's code (p rounded to the values' dtype) on the CPU too (tests/dia2/
    # test_paged_attention.py).
    _paged_decode_kernel[(rows, kv_heads)](
        q,
        keys,
        values,
        table,
        cache_index,
        out,
        table.shape[1],
        q.stride(0),
        q.stride(1),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        table.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        DIM=dim,
        BLOCK_SIZE=block_size,
        BLOCK_G=max(MIN_DOT, triton.next_power_of_2(group)),
        BLOCK_D=max(MIN_DOT, triton.next_power_of_2(dim)),
        TILE=tile or max(MIN_TILE, triton.next_power_of_2(block_size)),
        IEEE=keys.dtype == torch.float32 or (keys.dtype == torch.bfloat16 and _interpreting()),
        num_warps=warps,
        **({} if stages is None else {"num_stages": stages}),
    )
    return out
