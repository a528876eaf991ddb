"""The engine's streaming Mimi decoders: one decoder row per call slot, the priming rows, the second stream.

:class:`MimiRows` owns every piece of Mimi decode state the engine keeps: the master decoder (one row
per slot), a decoder per batch bucket over views of the master's state (so a call keeps its row whatever
bucket a step runs), a 1-row view per slot for eager priming, the 1-row scratch decoder the priming graph
uses, the copy of the step's codes the decode reads, and, on CUDA with ``overlap_mimi``, the second stream
the decode runs on and the chunks waiting for it (docs/DIA2.md, "Mimi on a second stream").

Graphs are captured elsewhere (``dia2/graphs.py``); this module runs the eager bodies they capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .frame import RING, FrameBuffers

if TYPE_CHECKING:  # imported where used: it pulls in transformers, which dia2.engine's importers may skip
    from .mimi_stream import StreamingMimiDecoder

__all__ = ["MIMI_PRIME_FRAMES", "MimiRows"]

MIMI_PRIME_FRAMES = 17  # known frames decoded (and discarded) before a reply's first frame

# A chunk waiting for its audio: (slot, deliver(host pcm row of that slot)).
Pending = tuple[int, Callable[[torch.Tensor], None]]


def _row_view(master: StreamingMimiDecoder, rows: slice, model: Any, batch: int) -> StreamingMimiDecoder:
    """A decoder of ``batch`` rows whose state is a view of ``rows`` of the master's state."""
    from .mimi_stream import MimiStreamState, StreamingMimiDecoder

    dec = StreamingMimiDecoder(model, batch_size=batch)
    s = master.state
    dec.state = MimiStreamState(
        offset=s.offset[rows],
        fresh=s.fresh[rows],
        conv_history=[t[rows] for t in s.conv_history],
        convtr_tail=[t[rows] for t in s.convtr_tail],
        keys=[t[rows] for t in s.keys],
        values=[t[rows] for t in s.values],
    )
    return dec


class MimiRows:
    def __init__(
        self,
        mimi_model: Any,
        buf: FrameBuffers,
        capacity: int,
        buckets: list[int],
        num_codebooks: int,
        frame_size: int,
        *,
        overlap: bool,
        priority: int | None = None,
    ) -> None:
        from .mimi_stream import StreamingMimiDecoder

        self.model, self.buf, self.capacity = mimi_model, buf, capacity
        self.device = buf.step.device
        cuda = self.device.type == "cuda"
        # One Mimi decoder object per bucket, all over views of one state (so a call keeps its row).
        self.master = master = StreamingMimiDecoder(mimi_model, batch_size=capacity)
        self.by_bucket = {
            b: master if b == capacity else _row_view(master, slice(0, b), mimi_model, b) for b in buckets
        }
        self._rows: dict[int, StreamingMimiDecoder] = {}  # per slot, over the master's row (priming)
        # Priming graph (CUDA): a 1-row scratch decoder is reset, decodes the slot's 17 known frames
        # (gathered from its ring on the device) and its state is copied into the master's row.
        self.prime_dec = StreamingMimiDecoder(mimi_model, batch_size=1)
        self.prime_slot = torch.zeros(1, dtype=torch.long, device=self.device)
        # Mimi on a second stream (CUDA): its input is a copy of the step's codes, so the next step may
        # overwrite ``emitted`` while the decode still runs.
        self.inputs = torch.zeros(capacity, num_codebooks, dtype=torch.long, device=self.device)
        self.stream: Any = torch.cuda.Stream(priority=priority or 0) if cuda and overlap else None
        self.done: Any = None  # event: the last decode (and its copy to the host) finished
        self.host_pcm = torch.zeros(capacity, frame_size, pin_memory=cuda)
        self.pending: list[Pending] = []  # chunks whose audio is still being decoded
        self._cuda = cuda

    def reset(self, slots: list[int]) -> None:
        """Fresh decoder rows for ``slots`` (moshi-style ``reset(mask)`` of the master's state)."""
        if slots:
            mask = torch.zeros(self.capacity, dtype=torch.bool)
            mask[slots] = True
            self.master.reset(mask.to(self.device))

    def decode(self, n: int) -> None:
        """The eager decode (what the Mimi graph of bucket ``n`` captures): ``inputs`` → ``buf.pcm``."""
        pcm = self.by_bucket[n].decode_frame(self.inputs[:n].unsqueeze(-1))
        self.buf.pcm[:n].copy_(pcm.clamp(-1.0, 1.0))

    def decode_step(self, n: int, reset: list[int], run: Callable[[int], None]) -> None:
        """Mimi decode of the step's completed frames (``run(n)``: the graph or :meth:`decode`). On the
        second stream it waits only for this step's codes (copied to ``inputs``, so the next step may
        rewrite ``emitted``) and runs beside the next step's main decoder; :meth:`flush` hands the chunks
        out once its event fires. Otherwise it runs in line."""
        self.flush()  # the host copy of the previous decode is taken before this one overwrites it
        side = self.stream
        cur = torch.cuda.current_stream() if self._cuda else None
        if side is not None and cur is not None and self.done is not None:
            cur.wait_event(self.done)  # the previous decode has read inputs (long done by now)
        self.inputs[:n].copy_(self.buf.emitted[:n])
        if side is None or cur is None:
            self.reset(reset)
            run(n)
            self.host_pcm[:n].copy_(self.buf.pcm[:n], non_blocking=self._cuda)
            return
        codes_ready = torch.cuda.Event()
        codes_ready.record(cur)
        with torch.cuda.stream(side):
            side.wait_event(codes_ready)
            self.reset(reset)
            run(n)
            self.host_pcm[:n].copy_(self.buf.pcm[:n], non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        self.done = done

    def flush(self) -> None:
        """Hand out the chunks whose audio was decoding (waits for that decode if it still runs)."""
        if not self.pending:
            return
        if self.done is not None:
            self.done.synchronize()
        pending, self.pending = self.pending, []
        for slot, deliver in pending:
            deliver(self.host_pcm[slot])

    def prime_eager(self, slot: int, codes: torch.Tensor) -> None:
        """Reset the slot's row and decode ``codes`` ``[K, frames]`` into it (CPU, or fewer than 17)."""
        dec = self.row(slot)
        dec.reset()
        if codes.shape[1]:
            dec.decode_frame(codes.unsqueeze(0).to(self.device))

    def prime_body(self) -> None:
        """Reset the scratch row, decode frames ``known - 17 .. known - 1`` of ``prime_slot`` (still in
        its ring: a lead-in writes only frames >= known, 15+ steps away from wrapping onto these), and
        copy the scratch state into the master's row of that slot."""
        dec = self.prime_dec
        dec.reset()
        slot = self.prime_slot
        frames = (
            self.buf.known.index_select(0, slot)
            - MIMI_PRIME_FRAMES
            + torch.arange(MIMI_PRIME_FRAMES, device=self.device)
        )
        ring = self.buf.ring.index_select(0, slot)  # [1, K, RING]
        codes = ring.gather(2, frames.remainder(RING).view(1, 1, -1).expand(1, ring.shape[1], -1))
        dec.decode_frame(codes)
        for dst, src in zip(self.master.state.tensors(), dec.state.tensors(), strict=True):
            dst.index_copy_(0, slot, src)

    def row(self, slot: int) -> StreamingMimiDecoder:
        dec = self._rows.get(slot)
        if dec is None:
            dec = self._rows[slot] = _row_view(self.master, slice(slot, slot + 1), self.model, 1)
        return dec
