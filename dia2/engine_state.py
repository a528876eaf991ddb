"""What a :class:`dia2.engine.BatchEngine` is built of, before any call: the model and its token layout, the
static frame buffers every call's slot lives in (``dia2/frame.py``), the KV cache (dense, or the paged
block pool), the lead-in lane's small buffers, the bucket sizes every captured graph is shaped for, and the
parts that own state of their own over those buffers: the per-call history and context policy
(``dia2/history.py``), the Mimi rows (``dia2/mimi_rows.py``), the fused frame kernels (``dia2/fused.py``)
and the captured graphs (``dia2/graphs.py``).

:class:`EngineState` only allocates and wires; it holds no call. Its shapes never change after
:meth:`EngineState.build`, so the CUDA graphs captured over them stay valid for the engine's life.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .call_state import EngineOptions
from .frame import RING, FrameBuffers, FrameConstants
from .graphs import FrameGraphs, kernel_choice
from .history import CallHistory
from .mimi_rows import MimiRows
from .model import Dia2Model
from .paged_kv import BlockPool, blocks_for, in_place_unsupported
from .script import WordEncoder
from .state_machine import StateMachine, TokenIds

if TYPE_CHECKING:
    from .fused import FusedFrame


@dataclass
class EngineState:
    model: Dia2Model
    ids: TokenIds
    encoder: WordEncoder
    mimi: Any  # a dia2.mimi.MimiCodec (encode caller audio, stream-decode replies)
    options: EngineOptions
    device: torch.device
    branches: int  # 2 with classifier-free guidance (a conditioned and an unconditioned row per call)
    num_codebooks: int
    delays: list[int]
    max_steps: int  # the context a call may hold, in steps (frames)
    frame_rate: float
    machine: StateMachine
    pool: BlockPool | None  # the paged KV pool (options.paged_kv), else None: a dense cache per row
    buf: FrameBuffers  # one slot per call (+ the spare entry the lane's padding points at)
    consts: FrameConstants
    buckets: list[int]  # call counts the full step's graphs are captured for
    kv_buckets: list[int]  # attended lengths the graphs are captured for
    mimi_rows: MimiRows
    lane_on: bool  # the lead-in lane runs (options.lead_in_lane with skip_lead_in)
    lane_capacity: int
    lane_buckets: list[int]
    lane: FrameBuffers  # the lane's small buffers (their KV cache is a per-step gather of buf's rows)
    lane_slots: torch.Tensor  # which call slot each lane row serves (capacity: a padding row)
    fused: FusedFrame | None
    history: CallHistory
    graphs: FrameGraphs

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def build(
        cls,
        model: Dia2Model,
        ids: TokenIds,
        encoder: WordEncoder,
        mimi: Any,
        opts: EngineOptions,
        second_stream_ahead: int | None,
    ) -> EngineState:
        config = model.config
        device = model.device
        cuda = device.type == "cuda"
        branches = 2 if opts.cfg else 1
        num_codebooks = config.data.num_codebooks
        delays = list(config.data.delay_pattern)
        max_delay = max(delays)
        if max_delay + 2 > RING:
            raise ValueError(f"delays up to {max_delay} need a ring longer than {RING}")
        max_steps = min(
            opts.max_context_steps or config.runtime.max_context_steps, model.transformer.rope_length
        )
        frame_rate = float(mimi.sample_rate) / float(mimi.frame_size)
        machine = StateMachine(
            ids,
            second_stream_ahead=config.data.second_stream_ahead
            if second_stream_ahead is None
            else second_stream_ahead,
            max_padding=opts.max_padding,
            initial_padding=opts.initial_padding,
        )
        pool = block_pool(model, opts, branches, max_steps) if opts.paged_kv else None
        # One spare call entry: the lane's padding entries point there (frame.lane_phase).
        buf = FrameBuffers.allocate(
            model,
            opts.capacity,
            branches,
            max_steps,
            mimi.frame_size,
            spare=1,
            cache=pool.cache if pool is not None else None,
        )
        consts = FrameConstants(
            ids,
            torch.tensor(delays, dtype=torch.long, device=device),
            opts.cfg_filter_k,
            opts.max_top_k,
        )
        buckets = sorted({b for b in opts.buckets if b < opts.capacity} | {opts.capacity})
        kv = opts.kv_buckets
        if pool is not None:  # whole blocks: a bucket's length is what the gathered blocks hold
            size = opts.kv_block_size
            kv = tuple(blocks_for(b, size) * size for b in kv)
        kv_buckets = sorted({b for b in kv if 0 < b < max_steps} | {max_steps})
        mimi_rows = MimiRows(
            mimi.model,
            buf,
            opts.capacity,
            buckets,
            num_codebooks,
            mimi.frame_size,
            overlap=opts.overlap_mimi,
            priority=opts.stream_priority,
        )
        # Lead-in lane: small buffers (their KV cache is a per-step gather of the master's rows).
        lane_on = opts.lead_in_lane and opts.skip_lead_in
        lane_cap = max(1, min(opts.lane_capacity, opts.capacity))
        lane_buckets = sorted({b for b in opts.buckets if b < lane_cap} | {lane_cap})
        lane = FrameBuffers.allocate(model, lane_cap, branches, 1, mimi.frame_size)
        lane_slots = torch.full((lane_cap,), opts.capacity, dtype=torch.long, device=device)
        fused = None
        use_fused = opts.fused if opts.fused is not None else cuda
        if use_fused:
            from .fused import FusedFrame

            kernels, pdl = kernel_choice(opts.kernels, opts.pdl, model, cuda)
            fused = FusedFrame(
                model,
                consts,
                branches,
                compile=opts.compile and cuda,
                kernels=kernels,
                capacity=opts.capacity,
                pdl=pdl,
                kernel_max_rows=None if opts.kernel_max_calls is None else opts.kernel_max_calls * branches,
            )
        history = CallHistory(
            model,
            ids,
            machine,
            buf,
            branches=branches,
            delays=delays,
            num_codebooks=num_codebooks,
            max_steps=max_steps,
            capacity=opts.capacity,
            pool=pool,
        )
        gen: torch.Generator | None = None
        if not cuda:
            gen = torch.Generator(device=device)
            gen.manual_seed(opts.seed if opts.seed is not None else 0)
        elif opts.seed is not None:
            torch.cuda.manual_seed(opts.seed)
        graphs = FrameGraphs(
            model,
            consts,
            buf,
            lane,
            lane_slots,
            mimi_rows,
            fused,
            gen,
            buckets=buckets,
            kv_buckets=kv_buckets,
            lane_buckets=lane_buckets,
        )
        return cls(
            model=model,
            ids=ids,
            encoder=encoder,
            mimi=mimi,
            options=opts,
            device=device,
            branches=branches,
            num_codebooks=num_codebooks,
            delays=delays,
            max_steps=max_steps,
            frame_rate=frame_rate,
            machine=machine,
            pool=pool,
            buf=buf,
            consts=consts,
            buckets=buckets,
            kv_buckets=kv_buckets,
            mimi_rows=mimi_rows,
            lane_on=lane_on,
            lane_capacity=lane_cap,
            lane_buckets=lane_buckets,
            lane=lane,
            lane_slots=lane_slots,
            fused=fused,
            history=history,
            graphs=graphs,
        )


def block_pool(model: Dia2Model, opts: EngineOptions, branches: int, max_steps: int) -> BlockPool:
    """The paged KV pool: ``capacity`` calls x ``kv_pool_steps`` steps (average) in blocks, and a block
    table for every decoder row, the spare call entry's rows included (they stay on the trash block)."""
    dec = model.config.model.decoder
    steps = min(opts.kv_pool_steps or max_steps, max_steps)
    per_row = blocks_for(steps, opts.kv_block_size)
    return BlockPool(
        layers=dec.n_layer,
        kv_heads=dec.kv_heads,
        head_dim=dec.gqa_head_dim,
        rows=(opts.capacity + 1) * branches,
        max_steps=max_steps,
        block_size=opts.kv_block_size,
        blocks=opts.capacity * branches * per_row,
        device=model.device,
        dtype=model.dtype,
        in_place=paged_kernel_choice(opts.paged_attention_kernel, model.device),
    )


def paged_kernel_choice(option: bool | None, device: torch.device) -> bool:
    """``EngineOptions.paged_attention_kernel``: None → where it can run (CUDA); True insists."""
    if option is False:
        return False
    why = in_place_unsupported(device)
    if why is not None and option:
        raise ValueError(f"EngineOptions.paged_attention_kernel=True, but the kernel cannot run: {why}")
    return why is None and bool(option or device.type == "cuda")
