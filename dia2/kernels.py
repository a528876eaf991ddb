"""Triton kernels for the depformer: a stage in 22 launches instead of ~84.

Why: at one call a Dia2-2B frame is bound by kernel *count*, not bytes (docs/PERFORMANCE.md,
"Per-phase breakdown"). The compiled torch path (``dia2/fused.py``) still issues ~84 kernels per
depformer stage, 2,600 per frame, most of them a few microseconds of launch and tail for a few
kilobytes of work, plus cuBLAS GEMVs that reach a fraction of the bandwidth at two rows. Here every
projection is one kernel with its neighbours folded in (RMSNorm in the prologue; the residual add or
the SwiGLU gate in the epilogue), the attention over the stage's 31 slots is one kernel (QK-norm, RoPE,
cache write, softmax), and the head's CFG filter, top-k sampling, ring update and the *next* stage's
input are one kernel per call. Per stage: 4 layers x 5 + head + sample = 22 launches.

The math is :mod:`dia2.fused`'s, rounding included where it is cheap to keep: each projection's fp32
accumulator is rounded to the weight dtype before the epilogue, as ``F.linear`` then ``+`` would.
Tested against the torch path on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``,
tests/dia2/test_kernels.py) and on CUDA (token-exact in float32 on the fixture,
tests/dia2/test_engine_gpu.py).

This module imports Triton at import time; callers import it only when they use it (CUDA + Triton).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.3: grid dependency control (programmatic dependent launch, Hopper and later)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: pdl_supported() says no
    gdc_launch_dependents = gdc_wait = None

__all__ = [
    "LinearBlocks",
    "attention_stage",
    "embed_sum",
    "linear",
    "pdl_supported",
    "qk_rope_cache",
    "sample_stage",
]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def pdl_supported(device: torch.device) -> str | None:
    """Why these kernels cannot be launched with programmatic dependent launch here (None: they can).

    With PDL a kernel's programs start while the kernel before it is still finishing: each one prefetches
    its static weights into L2, then waits (``griddepcontrol.wait``) for the previous kernel's writes and
    only then lets the next kernel launch, so at most one kernel runs ahead. At one call a depformer
    projection moves 2-12 MB in ~6.6 us, far under the bandwidth: its start-up and tail are the cost,
    and overlapping them with the neighbour's is the expected saving. Opt-in (``EngineOptions.pdl``)
    until measured on a GPU: docs/PERFORMANCE.md says how."""
    if _interpreting():
        return "Triton's interpreter has no grid dependency control"
    if gdc_wait is None:
        return f"Triton {triton.__version__} has no grid dependency control"
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        return "programmatic dependent launch needs a Hopper (sm_90) or later GPU"
    return None


def _launch_opts(pdl: bool) -> dict[str, bool]:
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def _inputs_ready(PDL: tl.constexpr):
    """Under PDL: wait until the previous kernel's writes are visible, then let the next kernel launch.
    Every kernel launched with PDL calls this before its first read of another kernel's output and
    before its first write (so it neither reads early nor overwrites what the previous one still reads);
    because each waits for its predecessor, the chain orders any kernel after every earlier one."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _prefetch_l2(ptrs):
    """Ask L2 for the 128-byte lines at ``ptrs`` (no registers held, nothing waits on it)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@dataclass(frozen=True)
class LinearBlocks:
    """Tile sizes of :func:`linear`: M rows per program (>= 16 for tensor cores; small batches are
    padded by masking), N outputs per program, K per loop iteration."""

    m: int
    n: int
    k: int
    warps: int = 4
    stages: int = 3


# Best tilings at one call (2 rows) on an H100, per (outputs, inputs): bench/dia2_kernels.py,
# docs/results/2026-11-25-h100-dia2-kernel-tiles.json. (n, k, warps, stages)
TUNED_SMALL: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (3072, 1024): (32, 512, 4, 3),  # depformer q/k/v
    (1024, 1024): (16, 128, 4, 4),  # depformer attention output
    (3072 * 2, 1024): (32, 256, 4, 3),  # depformer gate/up (SwiGLU: n = rows of w)
    (1024, 3072): (16, 256, 4, 4),  # depformer MLP output
    (2050, 1024): (16, 512, 4, 4),  # depformer codebook head
    (4096, 2048): (32, 512, 4, 4),  # main q/k/v
    (2048, 2048): (16, 128, 4, 3),  # main attention output
    (6144 * 2, 2048): (32, 256, 4, 3),  # main gate/up
    (2048, 6144): (16, 256, 4, 3),  # main MLP output
}


# The sampler's ~60 bisection rounds are each a reduction over the vocabulary: more warps share the
# compares, fewer warps avoid a shared-memory barrier per round. bench/dia2_kernels.py times both.
SAMPLER_WARPS = 4  # H100, one call: 1 → 26.3 us, 2 → 21.2, 4 → 16.8, 8 → 18.3 (bench/dia2_kernels.py)


# A projection prefetches its weights only when they fit L2 (50 MB on an H100) with room to spare: the
# depformer's (2-12 MB) do, the main decoder's MLP (25-50 MB) would only evict what the next one needs.
PREFETCH_MAX_BYTES = 16 << 20


def pick_blocks(m: int, n: int, k: int, w_rows: int | None = None) -> LinearBlocks:
    """Memory-bound at small ``m``: many narrow column tiles so every SM streams weights; wider tiles
    once the batch makes the multiply itself count. ``w_rows``: rows of the weight (2n for SwiGLU)."""
    bk = min(256, max(16, triton.next_power_of_2(k)))
    if _interpreting():  # numpy runs each program in turn: few, large tiles are what is fast there
        return LinearBlocks(
            max(16, triton.next_power_of_2(m)),
            min(4096, triton.next_power_of_2(n)),
            max(16, triton.next_power_of_2(k)),
        )
    if m <= 16:
        tuned = TUNED_SMALL.get((w_rows or n, k))
        if tuned is not None:
            return LinearBlocks(16, *tuned)
        return LinearBlocks(16, 16, bk)
    if m <= 32:
        return LinearBlocks(32, 32, min(bk, 128))
    if m <= 64:
        return LinearBlocks(64, 32, min(bk, 128))
    return LinearBlocks(64, 64, min(bk, 64), warps=4, stages=4)


@triton.jit
def _prefetch_tile(
    w_ptr, rn, N, stride_wn, up_offset, K, SWIGLU: tl.constexpr, LINE: tl.constexpr, BLOCK_L: tl.constexpr
):
    """Prefetch the weight rows ``rn`` (and their SwiGLU "up" rows) into L2, one request per line."""
    rows = tl.minimum(rn, N - 1)
    cols = tl.minimum(tl.arange(0, BLOCK_L) * LINE, K - 1)
    _prefetch_l2(w_ptr + rows[:, None] * stride_wn + cols[None, :])
    if SWIGLU:
        _prefetch_l2(w_ptr + (rows + up_offset)[:, None] * stride_wn + cols[None, :])


@triton.jit
def _linear_tile(
    x_ptr,
    w_ptr,
    nw_ptr,
    rm,
    rn,
    m_ok,
    n_ok,
    stride_xm,
    stride_wn,
    up_offset,
    eps,
    K: tl.constexpr,
    HAS_NORM: tl.constexpr,
    SWIGLU: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` tile of ``epilogue(rms_norm(x) @ w.T)`` in float32 (values rounded to the
    weight dtype as F.linear's output is; SwiGLU applied), before any residual."""
    rk = tl.arange(0, BLOCK_K)
    wdt = w_ptr.dtype.element_ty
    if HAS_NORM:
        # RMSNorm of each input row, recomputed per program: the rows are a few KB and sit in L2.
        ss = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + rk
            xt = tl.load(
                x_ptr + rm[:, None] * stride_xm + ks[None, :],
                mask=m_ok[:, None] & (ks[None, :] < K),
                other=0.0,
            ).to(tl.float32)
            ss += tl.sum(xt * xt, axis=1)
        rstd = 1.0 / tl.sqrt(ss / K + eps)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        k_ok = ks < K
        xt = tl.load(
            x_ptr + rm[:, None] * stride_xm + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0
        )
        if HAS_NORM:
            nw = tl.load(nw_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            xt = (xt.to(tl.float32) * rstd[:, None] * nw[None, :]).to(wdt)
        else:
            xt = xt.to(wdt)
        wt = tl.load(
            w_ptr + rn[:, None] * stride_wn + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0
        )
        if IEEE:  # float32 weights: a true float32 product, not TF32
            acc = tl.dot(xt.to(tl.float32), tl.trans(wt.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, tl.trans(wt), acc)
        if SWIGLU:
            ut = tl.load(
                w_ptr + (rn + up_offset)[:, None] * stride_wn + ks[None, :],
                mask=n_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if IEEE:
                acc_up = tl.dot(
                    xt.to(tl.float32), tl.trans(ut.to(tl.float32)), acc_up, input_precision="ieee"
                )
            else:
                acc_up = tl.dot(xt, tl.trans(ut), acc_up)
    # Round to the weight dtype first, as F.linear's output would be.
    out = acc.to(wdt).to(tl.float32)
    if SWIGLU:
        up = acc_up.to(wdt).to(tl.float32)
        out = out / (1.0 + tl.exp(-out)) * up
    return out


@triton.jit
def _linear_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    nw_ptr,
    res_ptr,
    M,
    N,
    stride_xm,
    stride_wn,
    stride_ym,
    stride_rm,
    up_offset,
    eps,
    K: tl.constexpr,
    HAS_NORM: tl.constexpr,
    SWIGLU: tl.constexpr,
    HAS_RES: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
    PREFETCH: tl.constexpr,
    LINE: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    wdt = w_ptr.dtype.element_ty
    if PREFETCH:  # the weights are static: fetch this program's rows while the previous kernel runs
        if pid_m == 0:
            _prefetch_tile(w_ptr, rn, N, stride_wn, up_offset, K, SWIGLU, LINE, BLOCK_L)
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
        up_offset,
        eps,
        K,
        HAS_NORM,
        SWIGLU,
        IEEE,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
    )
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        res = tl.load(res_ptr + rm[:, None] * stride_rm + rn[None, :], mask=mask, other=0.0)
        out = res.to(tl.float32) + out.to(wdt).to(tl.float32)
    out = out.to(wdt)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor,
    *,
    norm: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    blocks: LinearBlocks | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """``out = [residual +] epilogue(rms_norm(x, norm) @ w.T)``.

    ``swiglu``: ``w`` holds [gate; up] rows and ``out = silu(x @ gate.T) * (x @ up.T)`` (half the rows).
    ``residual`` may be ``out`` itself (each output tile is read and written by one program only).
    Rows of ``x``/``out``/``residual`` need unit stride along the last dimension.
    ``pdl``: launch with programmatic dependent launch (see :func:`pdl_supported`); weights of at most
    ``PREFETCH_MAX_BYTES`` are prefetched into L2 before the wait.
    """
    m, k = x.shape
    n = w.shape[0] // 2 if swiglu else w.shape[0]
    assert w.shape[1] == k and out.shape == (m, n), (x.shape, w.shape, out.shape)
    assert x.stride(1) == 1 and w.stride(1) == 1 and out.stride(1) == 1
    b = blocks or pick_blocks(m, n, k, w.shape[0])
    grid = (triton.cdiv(n, b.n), triton.cdiv(m, b.m))
    res = residual if residual is not None else out
    line = max(1, 128 // w.element_size())
    _linear_kernel[grid](
        x,
        w,
        out,
        norm if norm is not None else w,
        res,
        m,
        n,
        x.stride(0),
        w.stride(0),
        out.stride(0),
        res.stride(0),
        n,
        eps,
        K=k,
        HAS_NORM=norm is not None,
        SWIGLU=swiglu,
        HAS_RES=residual is not None,
        # Triton's CPU interpreter multiplies bfloat16 tiles wrongly; there the product runs in float32
        # (exact products of bf16 values, float32 sums: what the tensor cores do too).
        IEEE=w.dtype == torch.float32 or _interpreting(),
        BLOCK_M=b.m,
        BLOCK_N=b.n,
        BLOCK_K=b.k,
        num_warps=b.warps,
        num_stages=b.stages,
        PDL=pdl,
        PREFETCH=pdl and w.numel() * w.element_size() <= PREFETCH_MAX_BYTES,
        LINE=line,
        BLOCK_L=triton.next_power_of_2(triton.cdiv(k, line)),
        **_launch_opts(pdl),
    )
    return out


@triton.jit
def _norm_rope(x1, x2, w1, w2, c1, s1, c2, s2, eps, dim, dt):
    """One head given as its two halves (float32): RMSNorm times its weight, rounded to ``dt`` as the
    module's norm output is, then rotate-half RoPE (``[x1, x2] * cos + [-x2, x1] * sin``), rounded."""
    r = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / dim + eps)
    n1 = (x1 * r * w1.to(tl.float32)).to(dt).to(tl.float32)
    n2 = (x2 * r * w2.to(tl.float32)).to(dt).to(tl.float32)
    return (n1 * c1 - n2 * s1).to(dt), (n2 * c2 + n1 * s2).to(dt)


@triton.jit
def _head_lanes(HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """This program's (row, head) and the lanes of half a head."""
    d = tl.arange(0, BLOCK_HALF)
    return tl.program_id(0), tl.program_id(1), d, d < HALF


@triton.jit
def _attend_row(
    q1,
    q2,
    k1,
    k2,
    v1,
    v2,
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
    HALF: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """One (row, head) given its projected q/k halves (float32 of ``dt`` values) and v halves (``dt``):
    QK-RMSNorm, RoPE at position ``stage``, K/V into cache slot ``stage``, softmax attention over slots
    0..stage (scale 1.0), output into ``out[row, head]``. Rounds to the cache's dtype (the activations')."""
    dim = 2 * HALF
    dt = kc_ptr.dtype.element_ty
    c1 = tl.load(cos_ptr + stage * dim + d, mask=dm, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + stage * dim + HALF + d, mask=dm, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + stage * dim + d, mask=dm, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + stage * dim + HALF + d, mask=dm, other=0.0).to(tl.float32)
    rq1, rq2 = _norm_rope(
        q1,
        q2,
        tl.load(qn_ptr + d, mask=dm, other=0.0),
        tl.load(qn_ptr + HALF + d, mask=dm, other=0.0),
        c1,
        s1,
        c2,
        s2,
        eps,
        dim,
        dt,
    )
    rq1, rq2 = rq1.to(tl.float32), rq2.to(tl.float32)
    rk1, rk2 = _norm_rope(
        k1,
        k2,
        tl.load(kn_ptr + d, mask=dm, other=0.0),
        tl.load(kn_ptr + HALF + d, mask=dm, other=0.0),
        c1,
        s1,
        c2,
        s2,
        eps,
        dim,
        dt,
    )
    cache = row * stride_cr + head * stride_ch
    tl.store(kc_ptr + cache + stage * stride_cs + d, rk1, mask=dm)
    tl.store(kc_ptr + cache + stage * stride_cs + HALF + d, rk2, mask=dm)
    tl.store(vc_ptr + cache + stage * stride_cs + d, v1, mask=dm)
    tl.store(vc_ptr + cache + stage * stride_cs + HALF + d, v2, mask=dm)
    # Earlier stages' keys from the cache; this stage's from registers (no read-after-write).
    s = tl.arange(0, SLOTS)
    earlier = (s < stage)[:, None] & dm[None, :]
    this = (s == stage)[:, None]
    kp = kc_ptr + cache + s[:, None] * stride_cs + d[None, :]
    vp = vc_ptr + cache + s[:, None] * stride_cs + d[None, :]
    key1 = tl.where(this, rk1[None, :], tl.load(kp, mask=earlier, other=0.0)).to(tl.float32)
    key2 = tl.where(this, rk2[None, :], tl.load(kp + HALF, mask=earlier, other=0.0)).to(tl.float32)
    val1 = tl.where(this, v1[None, :], tl.load(vp, mask=earlier, other=0.0)).to(tl.float32)
    val2 = tl.where(this, v2[None, :], tl.load(vp + HALF, mask=earlier, other=0.0)).to(tl.float32)
    score = tl.sum(key1 * rq1[None, :], axis=1) + tl.sum(key2 * rq2[None, :], axis=1)
    score = tl.where(s <= stage, score, float("-inf"))
    p = tl.exp(score - tl.max(score, axis=0))
    p = p / tl.sum(p, axis=0)
    o1 = tl.sum(p[:, None] * val1, axis=0)
    o2 = tl.sum(p[:, None] * val2, axis=0)
    ob = out_ptr + row * stride_out + head * dim
    tl.store(ob + d, o1.to(out_ptr.dtype.element_ty), mask=dm)
    tl.store(ob + HALF + d, o2.to(out_ptr.dtype.element_ty), mask=dm)


@triton.jit
def _attention_kernel(
    qkv_ptr,
    kc_ptr,
    vc_ptr,
    qn_ptr,
    kn_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    stage,
    eps,
    stride_qkv,
    stride_out,
    stride_cr,
    stride_ch,
    stride_cs,
    HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    SLOTS: tl.constexpr,
    PDL: tl.constexpr,
):
    """One (row, head): QK-RMSNorm, RoPE at position ``stage``, K/V into cache slot ``stage``, softmax
    attention over slots 0..stage (scale 1.0), output into ``out[row, head]``."""
    _inputs_ready(PDL)
    row, head, d, dm = _head_lanes(HALF, BLOCK_HALF)
    dim = 2 * HALF
    base = qkv_ptr + row * stride_qkv + head * dim
    q1 = tl.load(base + d, mask=dm, other=0.0).to(tl.float32)
    q2 = tl.load(base + HALF + d, mask=dm, other=0.0).to(tl.float32)
    k1 = tl.load(base + HEADS * dim + d, mask=dm, other=0.0).to(tl.float32)
    k2 = tl.load(base + HEADS * dim + HALF + d, mask=dm, other=0.0).to(tl.float32)
    v1 = tl.load(base + 2 * HEADS * dim + d, mask=dm, other=0.0)
    v2 = tl.load(base + 2 * HEADS * dim + HALF + d, mask=dm, other=0.0)
    _attend_row(
        q1,
        q2,
        k1,
        k2,
        v1,
        v2,
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


def attention_stage(
    qkv: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    stage: int,
    eps: float,
    *,
    warps: int = 1,
    pdl: bool = False,
) -> torch.Tensor:
    """``qkv [R, 3*H*Dh]`` (q, k, v blocks) → ``out [R, H*Dh]``; ``keys``/``values [R, H, S, Dh]`` (S a
    power of two > stage) get slot ``stage``; ``cos``/``sin [depth, Dh]``."""
    rows, heads, slots, dim = keys.shape
    assert qkv.shape == (rows, 3 * heads * dim) and out.shape == (rows, heads * dim)
    assert slots == triton.next_power_of_2(slots) and stage < slots and dim % 2 == 0
    assert keys.stride(3) == 1 and keys.stride() == values.stride()
    half = dim // 2
    _attention_kernel[(rows, heads)](
        qkv,
        keys,
        values,
        q_norm,
        k_norm,
        cos,
        sin,
        out,
        stage,
        eps,
        qkv.stride(0),
        out.stride(0),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        HEADS=heads,
        HALF=half,
        BLOCK_HALF=triton.next_power_of_2(half),
        SLOTS=slots,
        num_warps=warps,
        PDL=pdl,
        **_launch_opts(pdl),
    )
    return out


@triton.jit
def _qk_rope_cache_kernel(
    qkv_ptr,
    q_ptr,
    kc_ptr,
    vc_ptr,
    qn_ptr,
    kn_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    index_ptr,
    eps,
    stride_qkv,
    stride_q,
    stride_cr,
    stride_ch,
    stride_cs,
    QH: tl.constexpr,
    KVH: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    PDL: tl.constexpr,
):
    """Main decoder, one (row, head): QK-RMSNorm and RoPE at the row's position; query heads go to
    ``q [R, QH, Dh]``, key/value heads into the cache at the row's slot."""
    _inputs_ready(PDL)
    row, head, d, dm = _head_lanes(HALF, BLOCK_HALF)
    dim = 2 * HALF
    dt = qkv_ptr.dtype.element_ty
    pos = tl.load(pos_ptr + row)
    c1 = tl.load(cos_ptr + pos * dim + d, mask=dm, other=0.0).to(dt).to(tl.float32)
    c2 = tl.load(cos_ptr + pos * dim + HALF + d, mask=dm, other=0.0).to(dt).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * dim + d, mask=dm, other=0.0).to(dt).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * dim + HALF + d, mask=dm, other=0.0).to(dt).to(tl.float32)
    is_q = head < QH
    src = qkv_ptr + row * stride_qkv + head * dim  # q heads, then k heads: contiguous in qkv
    x1 = tl.load(src + d, mask=dm, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + d, mask=dm, other=0.0).to(tl.float32)
    w1 = tl.where(is_q, tl.load(qn_ptr + d, mask=dm, other=0.0), tl.load(kn_ptr + d, mask=dm, other=0.0))
    w2 = tl.where(
        is_q, tl.load(qn_ptr + HALF + d, mask=dm, other=0.0), tl.load(kn_ptr + HALF + d, mask=dm, other=0.0)
    )
    o1, o2 = _norm_rope(x1, x2, w1, w2, c1, s1, c2, s2, eps, dim, dt)
    if is_q:
        dst = q_ptr + row * stride_q + head * dim
        tl.store(dst + d, o1, mask=dm)
        tl.store(dst + HALF + d, o2, mask=dm)
    else:
        kh = head - QH
        slot = tl.load(index_ptr + row)
        at = row * stride_cr + kh * stride_ch + slot * stride_cs
        tl.store(kc_ptr + at + d, o1, mask=dm)
        tl.store(kc_ptr + at + HALF + d, o2, mask=dm)
        vsrc = qkv_ptr + row * stride_qkv + (QH + KVH) * dim + kh * dim
        tl.store(vc_ptr + at + d, tl.load(vsrc + d, mask=dm, other=0.0), mask=dm)
        tl.store(vc_ptr + at + HALF + d, tl.load(vsrc + HALF + d, mask=dm, other=0.0), mask=dm)


def qk_rope_cache(
    qkv: torch.Tensor,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    cache_index: torch.Tensor,
    eps: float,
    *,
    pdl: bool = False,
) -> torch.Tensor:
    """``qkv [R, (QH + 2*KVH)*Dh]`` → ``q [R, QH, Dh]`` (normed, rotated) and the rotated key / the value
    of each row into ``keys``/``values [R, KVH, S, Dh]`` at slot ``cache_index[r]``; ``cos``/``sin``
    ``[positions, Dh]`` (any float dtype: rounded to the activations' dtype, as the module does)."""
    rows, qh, dim = q.shape
    kvh = keys.shape[1]
    assert qkv.shape == (rows, (qh + 2 * kvh) * dim) and keys.stride() == values.stride()
    assert keys.stride(3) == 1 and q.stride(2) == 1 and qkv.stride(1) == 1 and dim % 2 == 0
    half = dim // 2
    _qk_rope_cache_kernel[(rows, qh + kvh)](
        qkv,
        q,
        keys,
        values,
        q_norm,
        k_norm,
        cos,
        sin,
        positions,
        cache_index,
        eps,
        qkv.stride(0),
        q.stride(0),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        QH=qh,
        KVH=kvh,
        HALF=half,
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=1,
        PDL=pdl,
        **_launch_opts(pdl),
    )
    return q


@triton.jit
def _embed_sum_kernel(
    x_ptr,
    tok_ptr,
    table_ptr,
    stride_x,
    stride_tok,
    first,
    vocab,
    dim,
    BOOKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    """``x[r] += table[k][tokens[r, first + k]]`` for every codebook k, in order, rounding after each
    add as the module's chain of ``x = x + embedding(...)`` does."""
    _inputs_ready(PDL)
    row = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < dim
    acc = tl.load(x_ptr + row * stride_x + d, mask=dm, other=0.0)
    for k in tl.static_range(BOOKS):
        tok = tl.load(tok_ptr + row * stride_tok + first + k)
        e = tl.load(table_ptr + (k * vocab + tok) * dim + d, mask=dm, other=0.0)
        acc = (acc.to(tl.float32) + e.to(tl.float32)).to(x_ptr.dtype.element_ty)
    tl.store(x_ptr + row * stride_x + d, acc, mask=dm)


def embed_sum(
    x: torch.Tensor,
    tokens: torch.Tensor,
    tables: torch.Tensor,
    first: int,
    books: int,
    *,
    pdl: bool = False,
) -> None:
    """Add ``books`` codebook embeddings (``tables [books * vocab, D]``, stacked) into ``x [R, D]``."""
    rows, dim = x.shape
    vocab = tables.shape[0] // books
    assert tables.shape[1] == dim and tables.is_contiguous() and x.stride(1) == 1
    block = min(1024, triton.next_power_of_2(dim))
    _embed_sum_kernel[(rows, triton.cdiv(dim, block))](
        x,
        tokens,
        tables,
        x.stride(0),
        tokens.stride(0),
        first,
        vocab,
        dim,
        BOOKS=books,
        BLOCK_D=block,
        num_warps=4,
        PDL=pdl,
        **_launch_opts(pdl),
    )


@triton.jit
def _kth_largest_key(key, valid, k, lo, hi, ITERS: tl.constexpr):
    """Largest t in [lo, hi] with at least ``k`` valid keys >= t, i.e. the k-th largest key (int64
    keys; bisection: ITERS = ceil(log2(hi - lo + 1)) rounds of one compare and one count each)."""
    for _ in range(ITERS):
        mid = (lo + hi + 1) // 2
        enough = tl.sum(tl.where(valid & (key >= mid), 1, 0), axis=0) >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    return lo


@triton.jit
def _sample_call(
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
    x_ptr,
    stride_l,
    stride_noise,
    stride_ring_n,
    ring_k_offset,
    delay,
    stride_din,
    stride_x,
    dim,
    BRANCHES: tl.constexpr,
    VLIM: tl.constexpr,
    BLOCK_V: tl.constexpr,
    FILTER_K: tl.constexpr,
    TOPK: tl.constexpr,
    RING: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Call ``n``: CFG candidate filter, top-k sampling by exponential race, the ring write of the
    sampled (or known) code, and the next stage's input rows ``din + table[token]``.

    The k-th largest values are found by bisection over the values' bit patterns (no sort): a float's
    bits, with the non-sign bits flipped for negatives, order like the float."""
    # Logits are read from L2 (.cg), as the removed fused head + sampler kernel needed (other programs of
    # its grid wrote them); kept so that this kernel's code, measured on the H100, is unchanged.
    v = tl.arange(0, BLOCK_V)
    vm = v < VLIM
    ninf = float("-inf")
    cond = tl.load(logits_ptr + (n * BRANCHES) * stride_l + v, mask=vm, other=ninf, cache_modifier=".cg").to(
        tl.float32
    )
    if BRANCHES > 1 and FILTER_K > 0:
        unc = tl.load(
            logits_ptr + (n * BRANCHES + 1) * stride_l + v, mask=vm, other=ninf, cache_modifier=".cg"
        ).to(tl.float32)
        scale = tl.load(scale_ptr + n)
        # torch.lerp(unc, cond, scale), both of its formulas.
        diff = cond - unc
        guided = tl.where(scale < 0.5, unc + scale * diff, cond - diff * (1.0 - scale))
        bits = guided.to(tl.int32, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
        lo = tl.full((), -(2**31), tl.int64)
        hi = tl.full((), 2**31 - 1, tl.int64)
        threshold = _kth_largest_key(key, vm, FILTER_K, lo, hi, 32)
        filtered = tl.where(key >= threshold, cond, ninf)
        cond = tl.where(scale != 1.0, filtered, cond)
    greedy = tl.argmax(cond, axis=0, tie_break_left=True)
    temp = tl.load(temp_ptr + n)
    z = cond / tl.maximum(temp, 1e-6)
    z = z - tl.max(z, axis=0)
    e = tl.where(vm, tl.exp(z), 0.0)
    probs = e / tl.sum(e, axis=0)
    probs = tl.where(probs == probs, probs, 0.0)  # NaN (every logit -inf) → 0, as nan_to_num
    k_req = tl.load(topk_ptr + n)
    limit = tl.where((k_req <= 0) | (k_req > TOPK), TOPK, k_req)
    pkey = probs.to(tl.int32, bitcast=True).to(tl.int64)  # probabilities are >= 0: bits order like values
    # With guidance on, only ~filter_k ids have a probability above 0: when they are no more than the
    # row's top-k, the limit-th largest key is 0 and every id stays a candidate (zeros never win a race
    # another id enters), so the second bisection is skipped. That is the production case (50 and 50).
    nonzero = tl.sum(tl.where(vm & (pkey > 0), 1, 0), axis=0)
    if nonzero <= limit:
        pthreshold = tl.full((), 0, tl.int64)
    else:
        lo = tl.full((), 0, tl.int64)
        hi = tl.full((), 0x3F800000, tl.int64)  # the bits of 1.0
        pthreshold = _kth_largest_key(pkey, vm, limit, lo, hi, 30)
    noise = tl.load(noise_ptr + n * stride_noise + v, mask=vm, other=1.0)
    race = tl.where(vm & (pkey >= pthreshold), probs, 0.0) / noise
    sampled = tl.argmax(race, axis=0, tie_break_left=True)
    token = tl.where(temp <= 0.0, greedy, sampled).to(tl.int64)
    # Ring write (frame._write_code): known frames keep their code, others get the sample.
    frame = tl.load(step_ptr + n) + 1 - delay
    slot = ((frame % RING) + RING) % RING
    rp = ring_ptr + n * stride_ring_n + ring_k_offset + slot
    old = tl.load(rp)
    forced = (frame < tl.load(known_ptr + n)) & (frame >= 0)
    active = tl.load(active_ptr + n) != 0
    keep = forced | (frame < 0) | (active == 0)
    tl.store(rp, tl.where(keep, old, token))
    prev = tl.where(forced, old, token)
    tl.store(code_ptr + n, prev)
    if HAS_NEXT:
        dd = tl.arange(0, BLOCK_D)
        dmask = dd < dim
        emb = tl.load(table_ptr + prev * dim + dd, mask=dmask, other=0.0).to(tl.float32)
        for b in tl.static_range(BRANCHES):
            r = n * BRANCHES + b
            din = tl.load(din_ptr + r * stride_din + dd, mask=dmask, other=0.0).to(tl.float32)
            tl.store(x_ptr + r * stride_x + dd, (din + emb).to(x_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _sample_kernel(
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
    x_ptr,
    stride_l,
    stride_noise,
    stride_ring_n,
    ring_k_offset,
    delay,
    stride_din,
    stride_x,
    dim,
    BRANCHES: tl.constexpr,
    VLIM: tl.constexpr,
    BLOCK_V: tl.constexpr,
    FILTER_K: tl.constexpr,
    TOPK: tl.constexpr,
    RING: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per call: :func:`_sample_call`."""
    _inputs_ready(PDL)
    _sample_call(
        tl.program_id(0),
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
        x_ptr,
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


def sample_stage(
    logits: torch.Tensor,
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
    x: torch.Tensor | None = None,
    warps: int = SAMPLER_WARPS,
    pdl: bool = False,
) -> None:
    """For each of the ``N`` calls: choose codebook ``codebook``'s token from ``logits [N*branches, V]``
    (float32; ``noise [N, >= vocab_limit]`` is the Exp(1) draw per id, see ``sampling.race_rows``),
    write it into ``ring [N, K, RING]`` (long) like ``frame._write_code``, put the frame's
    real token in ``code [N]`` and, when ``next_din`` is given, the next stage's input
    ``x[r] = next_din[r] + next_table[code[r // branches]]``."""
    n = code.shape[0]
    top = min(top_k_cap, vocab_limit)
    assert logits.shape[0] == n * branches and logits.stride(1) == 1 and noise.stride(1) == 1
    assert noise.shape[1] >= vocab_limit
    assert (ring.is_contiguous() and 0 < filter_k <= vocab_limit) or filter_k == 0
    has_next = next_din is not None
    dim = next_table.shape[1] if next_table is not None else 1
    _sample_kernel[(n,)](
        logits,
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
        x if has_next else logits,
        logits.stride(0),
        noise.stride(0),
        ring.stride(0),
        codebook * ring.stride(1),
        delay,
        next_din.stride(0) if next_din is not None else 0,
        x.stride(0) if has_next and x is not None else 0,
        dim,
        BRANCHES=branches,
        VLIM=vocab_limit,
        BLOCK_V=triton.next_power_of_2(vocab_limit),
        FILTER_K=filter_k if branches > 1 else 0,
        TOPK=top,
        RING=ring.shape[2],
        HAS_NEXT=has_next,
        BLOCK_D=triton.next_power_of_2(dim),
        num_warps=warps,
        PDL=pdl,
        **_launch_opts(pdl),
    )
