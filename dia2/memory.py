"""Where the engine's GPU memory goes: a breakdown computed from shapes, and the same read off a live engine.

:func:`engine_memory` gives the bytes of every buffer a :class:`dia2.engine.BatchEngine` allocates, from the
checkpoint's config and the engine's options alone, so the full-size figure for any number of calls is known
without a GPU (docs/DIA2.md, "GPU memory at 256 calls"). :func:`engine_tensor_bytes` sums the tensors a live
engine really holds under the same names; a test checks that the two agree on the tiny checkpoint, for the
dense and the paged cache. Transient activations (what the captured graphs' memory pools keep for the
largest bucket) are an estimate and are reported apart (:func:`activation_estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .call_state import EngineOptions
from .config import Dia2Config
from .model import Dia2Model
from .paged_kv import blocks_for

__all__ = [
    "KYUTAI_MIMI",
    "MimiFootprint",
    "activation_estimate",
    "engine_memory",
    "engine_tensor_bytes",
    "mimi_footprint",
]

GIB = 2**30
DEPFORMER_KERNEL_SLOTS = 32  # fused.DepformerKernels: a power of two >= depth slots per layer


@dataclass(frozen=True)
class MimiFootprint:
    weight_bytes: int  # parameters and buffers of the codec (float32)
    row_bytes: int  # streaming decoder state of one call (conv history, transposed-conv tails, KV window)


# kyutai/mimi shapes (transformers MimiConfig defaults, float32): 79,308,609 parameters + 67,372,248 bytes of
# buffers; a decoder row holds 8 layers x K/V x 8 heads x 250 steps x 64 x 4 B = 8,192,000 B of attention
# window plus 50,688 B of conv state (measured on MimiModel(MimiConfig()) with dia2.mimi_stream).
KYUTAI_MIMI = MimiFootprint(weight_bytes=79_308_609 * 4 + 67_372_248, row_bytes=8_242_697)


def mimi_footprint(codec_model: Any, decoder: Any) -> MimiFootprint:
    """The footprint of a loaded codec (``MimiModel``) and one row of its streaming decoder state."""
    weights = sum(t.numel() * t.element_size() for t in (*codec_model.parameters(), *codec_model.buffers()))
    rows = decoder.state.batch_size
    return MimiFootprint(weights, sum(_nbytes(t) for t in decoder.state.tensors()) // rows)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _weights(config: Dia2Config, dtype_bytes: int) -> int:
    with torch.device("meta"):
        model = Dia2Model(config)
    return sum(p.numel() for p in model.parameters()) * dtype_bytes


def _decoder_kv(config: Dia2Config, opts: EngineOptions, branches: int, max_steps: int, b: int) -> int:
    dec = config.model.decoder
    per_slot = 2 * dec.n_layer * dec.kv_heads * dec.gqa_head_dim * b  # keys + values, every layer
    if not opts.paged_kv:
        return opts.capacity * branches * max_steps * per_slot
    size = opts.kv_block_size
    steps = min(opts.kv_pool_steps or max_steps, max_steps)
    blocks = opts.capacity * branches * blocks_for(steps, size) + 1  # + the trash block
    table = (opts.capacity + 1) * branches * blocks_for(max_steps, size) * 8
    return blocks * size * per_slot + table


def _depformer_kv(config: Dia2Config, opts: EngineOptions, branches: int, kernels: bool, b: int) -> int:
    dep = config.model.depformer
    per_row_slot = 2 * dep.n_layer * dep.gqa_query_heads * dep.gqa_head_dim * b
    lane_cap = max(1, min(opts.lane_capacity, opts.capacity))
    rows = (opts.capacity + 1 + lane_cap) * branches  # master (+ spare entry) and lane buffers
    total = rows * config.depth * per_row_slot
    if kernels:
        total += opts.capacity * branches * DEPFORMER_KERNEL_SLOTS * per_row_slot
    return total


def _lane_kv(config: Dia2Config, opts: EngineOptions, branches: int, max_steps: int, b: int) -> int:
    """The dense lane's gathered KV rows at the longest length (kept by the lane graphs' pool), and the lane
    buffers' own one-slot cache. Paged: only the one-slot cache (the lane reads the pool in place)."""
    dec = config.model.decoder
    per_slot = 2 * dec.n_layer * dec.kv_heads * dec.gqa_head_dim * b
    lane_rows = max(1, min(opts.lane_capacity, opts.capacity)) * branches
    gathered = 0 if opts.paged_kv or not (opts.lead_in_lane and opts.skip_lead_in) else max_steps
    return lane_rows * (gathered + 1) * per_slot


def engine_memory(
    config: Dia2Config,
    options: EngineOptions,
    *,
    dtype_bytes: int = 2,
    mimi: MimiFootprint = KYUTAI_MIMI,
    kernels: bool = True,
) -> dict[str, int]:
    """Bytes of every persistent engine buffer for ``options.capacity`` calls, by component.

    ``kernels``: the Triton depformer path is on (its own 32-slot K/V cache). The keys are those of
    :func:`engine_tensor_bytes`; ``total`` is their sum (activations are not included: see
    :func:`activation_estimate`)."""
    branches = 2 if options.cfg else 1
    max_steps = options.max_context_steps or config.runtime.max_context_steps
    b = dtype_bytes
    out = {
        "weights": _weights(config, b),
        "mimi_weights": mimi.weight_bytes,
        "decoder_kv": _decoder_kv(config, options, branches, max_steps, b),
        "lane_kv": _lane_kv(config, options, branches, max_steps, b),
        "depformer_kv": _depformer_kv(config, options, branches, kernels, b),
        "mimi_state": (options.capacity + 1) * mimi.row_bytes,  # one row per call + the priming row
    }
    out["total"] = sum(out.values())
    return out


def activation_estimate(
    config: Dia2Config, options: EngineOptions, *, dtype_bytes: int = 2, paged_gather: bool | None = None
) -> dict[str, int]:
    """The largest transients of a full-batch main step (an estimate: what the graph pools must hold).

    ``mlp``: the gate/up projection ``[R, 2 * n_hidden]``; ``scores``: attention weights ``[R, Hq, S]`` in
    float32 (the math path; flash kernels keep less); ``paged_gather``: with the paged cache, one layer's
    keys and values gathered into ``[R, Hkv, S, Dh]`` (the copy :meth:`PagedDecoderCache.read` makes), only
    where the step's attention gathers: ``paged_attention_kernel=False`` (None is the kernel on the GPU these
    estimates are for; prefill still gathers, one call's rows at a time: negligible)."""
    dec = config.model.decoder
    branches = 2 if options.cfg else 1
    rows = options.capacity * branches
    steps = options.max_context_steps or config.runtime.max_context_steps
    if paged_gather is None:
        paged_gather = options.paged_kv and options.paged_attention_kernel is False
    paged = paged_gather
    gather = 2 * rows * dec.kv_heads * steps * dec.gqa_head_dim * dtype_bytes if paged else 0
    return {
        "mlp": rows * 2 * dec.n_hidden * dtype_bytes,
        "scores": rows * dec.gqa_query_heads * steps * 4,
        "paged_gather": gather,
    }


def engine_tensor_bytes(engine: Any) -> dict[str, int]:
    """The same components summed over a live :class:`dia2.engine.BatchEngine`'s tensors."""
    model = engine.model
    cache = engine.buf.cache
    kv = sum(_nbytes(t) for t in (cache.keys, cache.values))
    if getattr(cache, "table", None) is not None:
        kv += _nbytes(cache.table)
    lane = engine.lane.cache
    dep = [engine.buf.dep_cache, engine.lane.dep_cache]
    kernels = engine.fused.kernels if engine.fused is not None else None
    dep_bytes = sum(_nbytes(c.keys) + _nbytes(c.values) for c in dep)
    if kernels is not None:
        dep_bytes += _nbytes(kernels.keys) + _nbytes(kernels.values)
    rows = engine.mimi_rows
    out = {
        "weights": sum(_nbytes(p) for p in model.parameters()),
        "mimi_weights": mimi_footprint(engine.mimi.model, rows.master).weight_bytes,
        "decoder_kv": kv,
        "lane_kv": _nbytes(lane.keys) + _nbytes(lane.values) + _lane_gather_bytes(engine),
        "depformer_kv": dep_bytes,
        "mimi_state": sum(_nbytes(t) for d in (rows.master, rows.prime_dec) for t in d.state.tensors()),
    }
    out["total"] = sum(out.values())
    return out


def _lane_gather_bytes(engine: Any) -> int:
    """What the dense lane gathers at its longest length (a transient on the CPU, kept by a CUDA pool)."""
    if engine.pool is not None or not engine.lane_on:
        return 0
    keys = engine.buf.cache.keys
    per_row = _nbytes(keys[:, :1]) * 2
    return engine.lane.capacity * engine.branches * per_row
