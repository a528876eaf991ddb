"""Fused depformer stage kernels: 17 launches a stage instead of :mod:`dia2.kernels`' 22 (opt-in).

Why: at one call the depformer's 31 stages are bound by kernel count (docs/PERFORMANCE.md, issue 23:
700 launches, 4.63 ms for ~1 ms of weight bytes on an H200). Two joins of that chain need only a little
work after a projection that every program contributes to, so they are done by the *last program to
finish* instead of a second launch:

* :func:`qkv_attention`: RMSNorm + the q/k/v projection, split over K so that ~128 programs stream the
  weights (a head's 3 x head_dim rows x a K chunk each, float32 partial sums into a scratch); the program
  that finishes a head last (an atomic ticket per head) sums the partials in a fixed order (deterministic),
  rounds as F.linear would, and runs the head's QK-norm, RoPE, cache write and attention for every row
  (:func:`dia2.kernels._attend_row`). Replaces ``linear`` + ``attention_stage``: one launch per layer.
* :func:`head_sample`: final norm + codebook head (the ``linear`` tiles), then the last program of a row
  tile samples that tile's calls (:func:`dia2.kernels._sample_call`: CFG filter, top-k race, ring write,
  next stage's input). Replaces ``linear`` + ``sample_stage``: one launch per stage.

Per stage: 4 layers x (qkv_attention, output + residual, gate/up, down + residual) + head_sample = 17.

The "last program" pattern needs no co-residency (nobody spins): every program stores its partials, a
CTA barrier, then one acq_rel atomic per program at GPU scope; the program that draws the final ticket
reads the others' partials (from L2, ``.cg``) after its acquire, and resets the ticket for the next launch.
The work after the ticket runs in one program per head (per row tile for sampling), serially over its
rows/calls: meant for a few calls (``EngineOptions.stage_fusion_max_calls``), measured only on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernels import (
    PREFETCH_MAX_BYTES,
    SAMPLER_WARPS,
    LinearBlocks,
    _attend_row,
    _inputs_ready,
    _interpreting,
    _launch_opts,
    _linear_tile,
    _prefetch_l2,
    _prefetch_tile,
    _sample_call,
    pick_blocks,
)

__all__ = ["head_sample", "pick_ksplit", "qkv_attention", "split_plan"]

# Programs the split q/k/v projection aims for: at 1-2 rows ~128 programs (of an H100/H200's 132 SMs)
# stream the 6 MB of a depformer in_proj; 64 columns of K per program at Dia2-2B (8 heads x 16 splits).
TARGET_PROGRAMS = 128
MIN_CHUNK = 64


def pick_ksplit(k: int, heads: int) -> int:
    """K splits of :func:`qkv_attention` (a power of two): enough programs to stream the weights, chunks of
    at least ``MIN_CHUNK`` inputs. The interpreter runs programs one by one: one split there."""
    if _interpreting():
        return 1
    split = max(1, min(k // MIN_CHUNK, TARGET_PROGRAMS // max(1, heads)))
    return 1 << (split.bit_length() - 1)


def split_plan(k: int, ksplit: int) -> tuple[int, int, int]:
    """(inputs per split, inputs per loop step, splits) for ``ksplit`` requested splits of ``k`` inputs:
    a chunk is whole loop steps, so there may be fewer splits than requested."""
    chunk = triton.cdiv(k, max(1, ksplit))
    # Tensor cores need >= 16; the interpreter takes any width (the tiny checkpoint's K is 16).
    block_k = triton.next_power_of_2(chunk)
    if not _interpreting():
        block_k = min(128, max(16, block_k))
    chunk = triton.cdiv(chunk, block_k) * block_k
    return chunk, block_k, triton.cdiv(k, chunk)


@triton.jit
def _dot_rows(xt, w_ptr, rows, row_ok, ks, k_ok, stride_wn, acc, IEEE: tl.constexpr):
    """``acc += xt @ w[rows, ks].T`` (masked rows and columns read as 0)."""
    wt = tl.load(
        w_ptr + rows[:, None] * stride_wn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
    )
    if IEEE:
        return tl.dot(xt.to(tl.float32), tl.trans(wt.to(tl.float32)), acc, input_precision="ieee")
    return tl.dot(xt, tl.trans(wt), acc)


@triton.jit
def _store_part(part_ptr, split, rm, m_ok, cols, dm, stride_ps, stride_pm, acc):
    tl.store(
        part_ptr + split * stride_ps + rm[:, None] * stride_pm + cols[None, :],
        acc,
        mask=m_ok[:, None] & dm[None, :],
    )


@triton.jit
def _sum_parts(part_ptr, row, cols, dm, stride_ps, stride_pm, KSPLIT: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """The row's K partial sums of ``cols``, added in split order (the same float32 result every run)."""
    acc = tl.zeros([BLOCK_HALF], dtype=tl.float32)
    for s in tl.static_range(KSPLIT):
        acc += tl.load(
            part_ptr + s * stride_ps + row * stride_pm + cols, mask=dm, other=0.0, cache_modifier=".cg"
        )
    return acc


@triton.jit
def _qkv_attention_kernel(
    x_ptr,
    w_ptr,
    nw_ptr,
    part_ptr,
    cnt_ptr,
    kc_ptr,
    vc_ptr,
    qn_ptr,
    kn_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    stage,
    M,
    eps,
    stride_xm,
    stride_wn,
    stride_ps,
    stride_pm,
    stride_out,
    stride_cr,
    stride_ch,
    stride_cs,
    K: tl.constexpr,
    CHUNK: tl.constexpr,
    KSPLIT: tl.constexpr,
    HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    SLOTS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
    PREFETCH: tl.constexpr,
    LINE: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Program (head, split, row tile): the head's 6 half-head blocks of ``rms_norm(x) @ w.T`` over one
    K chunk into the partials; the head's last program finishes it (module docstring)."""
    head = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    d = tl.arange(0, BLOCK_HALF)
    dm = d < HALF
    dim = 2 * HALF
    # Columns of qkv (= rows of w) of this head: q, k, v blocks, each as its two RoPE halves.
    q1 = head * dim + d
    k1 = (HEADS + head) * dim + d
    v1 = (2 * HEADS + head) * dim + d
    k_lo = split * CHUNK
    if PREFETCH:  # the weights are static: fetch this program's chunk while the previous kernel runs
        if pid_m == 0:
            cols = tl.minimum(k_lo + tl.arange(0, BLOCK_L) * LINE, K - 1)
            for first in tl.static_range(3):
                rows = tl.minimum(
                    first * HEADS * dim + head * dim + tl.arange(0, 2 * BLOCK_HALF), 3 * HEADS * dim - 1
                )
                _prefetch_l2(w_ptr + rows[:, None] * stride_wn + cols[None, :])
    _inputs_ready(PDL)
    wdt = w_ptr.dtype.element_ty
    rk = tl.arange(0, BLOCK_K)
    # RMSNorm of each input row over all of K (a few KB per row, from L2), as linear's prologue.
    ss = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        xt = tl.load(
            x_ptr + rm[:, None] * stride_xm + ks[None, :], mask=m_ok[:, None] & (ks[None, :] < K), other=0.0
        ).to(tl.float32)
        ss += tl.sum(xt * xt, axis=1)
    rstd = 1.0 / tl.sqrt(ss / K + eps)
    aq1 = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    aq2 = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    ak1 = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    ak2 = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    av1 = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    av2 = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    for k0 in range(k_lo, k_lo + CHUNK, BLOCK_K):
        ks = k0 + rk
        k_ok = ks < K
        xt = tl.load(
            x_ptr + rm[:, None] * stride_xm + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0
        )
        nw = tl.load(nw_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        xt = (xt.to(tl.float32) * rstd[:, None] * nw[None, :]).to(wdt)
        aq1 = _dot_rows(xt, w_ptr, q1, dm, ks, k_ok, stride_wn, aq1, IEEE)
        aq2 = _dot_rows(xt, w_ptr, q1 + HALF, dm, ks, k_ok, stride_wn, aq2, IEEE)
        ak1 = _dot_rows(xt, w_ptr, k1, dm, ks, k_ok, stride_wn, ak1, IEEE)
        ak2 = _dot_rows(xt, w_ptr, k1 + HALF, dm, ks, k_ok, stride_wn, ak2, IEEE)
        av1 = _dot_rows(xt, w_ptr, v1, dm, ks, k_ok, stride_wn, av1, IEEE)
        av2 = _dot_rows(xt, w_ptr, v1 + HALF, dm, ks, k_ok, stride_wn, av2, IEEE)
    _store_part(part_ptr, split, rm, m_ok, q1, dm, stride_ps, stride_pm, aq1)
    _store_part(part_ptr, split, rm, m_ok, q1 + HALF, dm, stride_ps, stride_pm, aq2)
    _store_part(part_ptr, split, rm, m_ok, k1, dm, stride_ps, stride_pm, ak1)
    _store_part(part_ptr, split, rm, m_ok, k1 + HALF, dm, stride_ps, stride_pm, ak2)
    _store_part(part_ptr, split, rm, m_ok, v1, dm, stride_ps, stride_pm, av1)
    _store_part(part_ptr, split, rm, m_ok, v1 + HALF, dm, stride_ps, stride_pm, av2)
    # Every thread's stores before the ticket (release at GPU scope); the last ticket acquires them all.
    tl.debug_barrier()
    ticket_ptr = cnt_ptr + pid_m * HEADS + head
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == KSPLIT - 1:
        tl.atomic_xchg(ticket_ptr, 0, sem="relaxed", scope="gpu")  # ready for the next launch
        dt = kc_ptr.dtype.element_ty
        for r in range(0, BLOCK_M):
            row = pid_m * BLOCK_M + r
            if row < M:
                # Rounded to the activations' dtype, as F.linear's output (linear's qkv) is.
                _attend_row(
                    _sum_parts(part_ptr, row, q1, dm, stride_ps, stride_pm, KSPLIT, BLOCK_HALF)
                    .to(dt)
                    .to(tl.float32),
                    _sum_parts(part_ptr, row, q1 + HALF, dm, stride_ps, stride_pm, KSPLIT, BLOCK_HALF)
                    .to(dt)
                    .to(tl.float32),
                    _sum_parts(part_ptr, row, k1, dm, stride_ps, stride_pm, KSPLIT, BLOCK_HALF)
                    .to(dt)
                    .to(tl.float32),
                    _sum_parts(part_ptr, row, k1 + HALF, dm, stride_ps, stride_pm, KSPLIT, BLOCK_HALF)
                    .to(dt)
                    .to(tl.float32),
                    _sum_parts(part_ptr, row, v1, dm, stride_ps, stride_pm, KSPLIT, BLOCK_HALF).to(dt),
                    _sum_parts(part_ptr, row, v1 + HALF, dm, stride_ps, stride_pm, KSPLIT, BLOCK_HALF).to(dt),
                    kc_ptr,
                    vc_ptr,
                    qn_ptr,
                    kn_ptr,
                    cos_ptr,
                    sin_ptr,
                    out_ptr,
                    row,
                    head,
                    stage,
                    eps,
                    stride_out,
                    stride_cr,
                    stride_ch,
                    stride_cs,
                    d,
                    dm,
                    HALF,
                    SLOTS,
                )


def qkv_attention(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    stage: int,
    eps: float,
    partials: torch.Tensor,
    tickets: torch.Tensor,
    *,
    ksplit: int,
    pdl: bool = False,
) -> torch.Tensor:
    """``linear(x, w, qkv, norm=norm)`` then ``attention_stage(qkv, keys, values, ...)`` in one launch:
    ``x [R, D]``, ``w [3*H*Dh, D]`` (q, k, v blocks), ``out [R, H*Dh]``, ``keys``/``values [R, H, S, Dh]``.
    ``partials``: float32 scratch ``[>= ksplit, >= R, 3*H*Dh]``; ``tickets``: int32 zeros, one per head
    and row tile (left zero after the launch)."""
    rows, dim_in = x.shape
    _, heads, slots, hd = keys.shape
    assert w.shape == (3 * heads * hd, dim_in) and out.shape == (rows, heads * hd) and hd % 2 == 0
    assert slots == triton.next_power_of_2(slots) and stage < slots
    assert keys.stride(3) == 1 and keys.stride() == values.stride()
    assert x.stride(1) == 1 and w.stride(1) == 1 and out.stride(1) == 1
    chunk, block_k, splits = split_plan(dim_in, ksplit)
    block_m = max(16, triton.next_power_of_2(min(rows, 64)))
    tiles = triton.cdiv(rows, block_m)
    assert partials.dtype == torch.float32 and partials.shape[0] >= splits and partials.shape[1] >= rows
    assert partials.shape[2] == 3 * heads * hd and partials.stride(2) == 1
    assert tickets.dtype == torch.int32 and tickets.numel() >= tiles * heads and tickets.is_contiguous()
    half = hd // 2
    line = max(1, 128 // w.element_size())
    _qkv_attention_kernel[(heads, splits, tiles)](
        x,
        w,
        norm,
        partials,
        tickets,
        keys,
        values,
        q_norm,
        k_norm,
        cos,
        sin,
        out,
        stage,
        rows,
        eps,
        x.stride(0),
        w.stride(0),
        partials.stride(0),
        partials.stride(1),
        out.stride(0),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        K=dim_in,
        CHUNK=chunk,
        KSPLIT=splits,
        HEADS=heads,
        HALF=half,
        # Half a head is a dot's N: tensor cores need >= 16 (the tiny checkpoint's half head is 4).
        BLOCK_HALF=triton.next_power_of_2(half) if _interpreting() else max(16, triton.next_power_of_2(half)),
        SLOTS=slots,
        IEEE=w.dtype == torch.float32 or _interpreting(),  # see kernels.linear
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        num_warps=4,
        num_stages=3,
        PDL=pdl,
        PREFETCH=pdl and w.numel() * w.element_size() <= PREFETCH_MAX_BYTES,
        LINE=line,
        BLOCK_L=triton.next_power_of_2(triton.cdiv(chunk, line)),
        **_launch_opts(pdl),
    )
    return out


@triton.jit
def _head_sample_kernel(
    x_ptr,
    w_ptr,
    nw_ptr,
    logits_ptr,
    cnt_ptr,
    M,
    N,
    stride_xm,
    stride_wn,
    eps,
    scale_ptr,
    temp_ptr,
    topk_ptr,
    noise_ptr,
    ring_ptr,
    step_ptr,
    known_ptr,
    active_ptr,
    code_ptr,
    din_ptr,
    table_ptr,
    xo_ptr,
    stride_l,
    stride_noise,
    stride_ring_n,
    ring_k_offset,
    delay,
    stride_din,
    stride_x,
    dim,
    K: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
    PREFETCH: tl.constexpr,
    LINE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BRANCHES: tl.constexpr,
    VLIM: tl.constexpr,
    BLOCK_V: tl.constexpr,
    FILTER_K: tl.constexpr,
    TOPK: tl.constexpr,
    RING: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (column tile, row tile): a tile of ``rms_norm(x) @ head.T`` into the float32 logits; the
    row tile's last program samples its calls. ``xo`` (the next stage's input) may be ``x``: the last
    program writes it after every program of its row tile has read it."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    if PREFETCH:
        if pid_m == 0:
            _prefetch_tile(w_ptr, rn, N, stride_wn, 0, K, False, LINE, BLOCK_L)
    _inputs_ready(PDL)
    out = _linear_tile(
        x_ptr,
        w_ptr,
        nw_ptr,
        rm,
        rn,
        m_ok,
        n_ok,
        stride_xm,
        stride_wn,
        0,
        eps,
        K,
        True,
        False,
        IEEE,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
    )
    out = out.to(w_ptr.dtype.element_ty)  # as linear's store of a projection into float32 logits
    tl.store(
        logits_ptr + rm[:, None] * stride_l + rn[None, :],
        out.to(logits_ptr.dtype.element_ty),
        mask=m_ok[:, None] & n_ok[None, :],
    )
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr + pid_m, 1, sem="acq_rel", scope="gpu")
    if ticket == tl.num_programs(0) - 1:
        tl.atomic_xchg(cnt_ptr + pid_m, 0, sem="relaxed", scope="gpu")
        for c in range(0, BLOCK_M // BRANCHES):
            n = pid_m * (BLOCK_M // BRANCHES) + c
            if n * BRANCHES < M:
                _sample_call(
                    n,
                    logits_ptr,
                    scale_ptr,
                    temp_ptr,
                    topk_ptr,
                    noise_ptr,
                    ring_ptr,
                    step_ptr,
                    known_ptr,
                    active_ptr,
                    code_ptr,
                    din_ptr,
                    table_ptr,
                    xo_ptr,
                    stride_l,
                    stride_noise,
                    stride_ring_n,
                    ring_k_offset,
                    delay,
                    stride_din,
                    stride_x,
                    dim,
                    BRANCHES,
                    VLIM,
                    BLOCK_V,
                    FILTER_K,
                    TOPK,
                    RING,
                    HAS_NEXT,
                    BLOCK_D,
                )


def head_sample(
    x: torch.Tensor,
    head: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    logits: torch.Tensor,
    tickets: torch.Tensor,
    cfg_scale: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    noise: torch.Tensor,
    ring: torch.Tensor,
    step: torch.Tensor,
    known: torch.Tensor,
    active: torch.Tensor,
    code: torch.Tensor,
    *,
    codebook: int,
    delay: int,
    branches: int,
    vocab_limit: int,
    filter_k: int,
    top_k_cap: int,
    next_din: torch.Tensor | None = None,
    next_table: torch.Tensor | None = None,
    x_next: torch.Tensor | None = None,
    blocks: LinearBlocks | None = None,
    pdl: bool = False,
) -> None:
    """``linear(x, head, logits, norm=norm)`` then :func:`dia2.kernels.sample_stage` (same arguments) in
    one launch. ``tickets``: int32 zeros, one per row tile (left zero). ``x_next`` may be ``x``.
    ``blocks``: the head's tiles (default :func:`dia2.kernels.pick_blocks`'); rows per tile a multiple of
    ``branches``."""
    rows, k = x.shape
    n_out = head.shape[0]
    n = code.shape[0]
    assert rows == n * branches and logits.shape[0] >= rows and logits.shape[1] == n_out
    assert logits.dtype == torch.float32 and logits.stride(1) == 1 and noise.stride(1) == 1
    assert x.stride(1) == 1 and head.stride(1) == 1 and noise.shape[1] >= vocab_limit
    assert (ring.is_contiguous() and 0 < filter_k <= vocab_limit) or filter_k == 0
    b = blocks or pick_blocks(rows, n_out, k)
    assert b.m % branches == 0, (b.m, branches)
    tiles = triton.cdiv(rows, b.m)
    assert tickets.dtype == torch.int32 and tickets.numel() >= tiles and tickets.is_contiguous()
    has_next = next_din is not None
    assert not has_next or (next_table is not None and x_next is not None)
    dim = next_table.shape[1] if next_table is not None else 1
    line = max(1, 128 // head.element_size())
    _head_sample_kernel[(triton.cdiv(n_out, b.n), tiles)](
        x,
        head,
        norm,
        logits,
        tickets,
        rows,
        n_out,
        x.stride(0),
        head.stride(0),
        eps,
        cfg_scale,
        temperature,
        top_k,
        noise,
        ring,
        step,
        known,
        active,
        code,
        next_din if has_next else logits,
        next_table if has_next else logits,
        x_next if has_next else logits,
        logits.stride(0),
        noise.stride(0),
        ring.stride(0),
        codebook * ring.stride(1),
        delay,
        next_din.stride(0) if next_din is not None else 0,
        x_next.stride(0) if has_next and x_next is not None else 0,
        dim,
        K=k,
        IEEE=head.dtype == torch.float32 or _interpreting(),
        BLOCK_M=b.m,
        BLOCK_N=b.n,
        BLOCK_K=b.k,
        PDL=pdl,
        PREFETCH=pdl and head.numel() * head.element_size() <= PREFETCH_MAX_BYTES,
        LINE=line,
        BLOCK_L=triton.next_power_of_2(triton.cdiv(k, line)),
        BRANCHES=branches,
        VLIM=vocab_limit,
        BLOCK_V=triton.next_power_of_2(vocab_limit),
        FILTER_K=filter_k if branches > 1 else 0,
        TOPK=min(top_k_cap, vocab_limit),
        RING=ring.shape[2],
        HAS_NEXT=has_next,
        BLOCK_D=triton.next_power_of_2(dim),
        # The sampler (the last program's work) is tuned at SAMPLER_WARPS; the head tiles at b.warps.
        num_warps=max(b.warps, SAMPLER_WARPS),
        num_stages=b.stages,
        **_launch_opts(pdl),
    )
