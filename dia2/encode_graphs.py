"""Caller turns' Mimi encodes replayed from CUDA graphs, one per (turns, frames) bucket.

Why: Mimi's encoder run eagerly is ~1 000 kernel launches from Python per batch (SEANet convolutions, an
8-layer transformer, the downsampling, 32 quantizer stages). At 128 calls on an H100 (2026-12-06, run
"prio" in docs/PERFORMANCE.md) the encode worker's thread was busy in those launches for as long as the
engine thread was in its steps, and the engine thread waited for turn codes 19 % of the time: every
Python thread of the supervisor shares one GIL. A graph replay is one launch.

Mimi's encoder is causal, so a turn's codes do not depend on silence after it (``MimiCodec.encode_many``
relies on the same fact for its batches): turns are zero-padded to the smallest bucket that holds the batch
(rows and frames), the bucket's graph replays on its static input, and each turn keeps its own first
frames. A batch no bucket holds (more turns, or a turn longer than the largest frame bucket) is encoded
eagerly, as is everything off CUDA or when capture failed (logged, in ``errors``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .mimi import MimiCodec

__all__ = ["EncodeGraphs"]

logger = logging.getLogger("dia2.engine")

ROW_BUCKETS = (1, 2, 4)
FRAME_BUCKETS = (16, 32, 64, 128, 256)  # 1.3 s .. 20.5 s of audio at 12.5 frames/s
# The largest bucket's activations are the graphs' memory pool (Mimi's first convolutions hold 64 channels at
# 24 kHz): 4 turns of 10 s or 2 of 20 s, ~1 GB in float32; larger batches run eagerly.
MAX_TURN_FRAMES = 512


@dataclass
class _Bucket:
    rows: int
    frames: int
    audio: torch.Tensor  # [rows, 1, frames * frame_size]: the static input
    codes: torch.Tensor | None = None  # [rows, K, frames]: the graph's output
    graph: torch.cuda.CUDAGraph | None = None


class EncodeGraphs:
    def __init__(
        self,
        mimi: MimiCodec,
        *,
        row_buckets: Sequence[int] = ROW_BUCKETS,
        frame_buckets: Sequence[int] = FRAME_BUCKETS,
    ) -> None:
        self.mimi = mimi
        self.errors: list[str] = []
        # The static buffers are one batch's: the encode worker and a direct BatchEngine.user_spoke on the
        # engine thread may both encode (uncontended in the product, where only the worker does).
        self._lock = threading.Lock()
        size = mimi.frame_size
        self.buckets = {
            (r, f): _Bucket(r, f, torch.zeros(r, 1, f * size, device=mimi.device, dtype=mimi.dtype))
            for r in sorted(row_buckets)
            for f in sorted(frame_buckets)
            if r * f <= MAX_TURN_FRAMES
        }

    def bucket(self, rows: int, frames: int) -> _Bucket | None:
        """The smallest bucket holding `rows` turns of at most `frames` frames (fewest padded samples)."""
        fits = [b for b in self.buckets.values() if b.rows >= rows and b.frames >= frames]
        return min(fits, key=lambda b: (b.rows * b.frames, b.rows), default=None)

    def capture(self) -> None:
        """One graph per bucket, largest first (one shared memory pool: they never run at once)."""
        pool = torch.cuda.graph_pool_handle()
        order = sorted(self.buckets.values(), key=lambda b: b.rows * b.frames, reverse=True)
        side = torch.cuda.Stream(device=self.mimi.device)
        side.wait_stream(torch.cuda.current_stream(self.mimi.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for b in order:  # warm-up: lazy inits, cuDNN's algorithm choice, the allocator
                self._body(b)
            for b in order:
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph, pool=pool, stream=side):
                        b.codes = self._body(b)
                except RuntimeError as exc:
                    logger.exception("Mimi encode graph capture failed for %s (turns, frames); eager there",
                                     (b.rows, b.frames))  # fmt: skip
                    self.errors.append(f"encode{(b.rows, b.frames)}: {exc}")
                    b.codes = None
                    continue
                b.graph = graph
        torch.cuda.current_stream(self.mimi.device).wait_stream(side)
        logger.info("captured %d Mimi encode graphs", sum(b.graph is not None for b in self.buckets.values()))

    def _body(self, b: _Bucket) -> torch.Tensor:
        out = self.mimi.model.encode(b.audio, num_quantizers=self.mimi.num_codebooks).audio_codes
        return out.to(torch.long)

    def encode_many(self, wavs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``MimiCodec.encode_many``'s codes (on the device), from a bucket's graph where one holds the batch
        and was captured; eagerly otherwise."""
        frames = [self.mimi.frames_for(int(w.numel())) for w in wavs]
        longest = max(frames, default=0)
        b = self.bucket(len(wavs), longest) if longest else None
        if b is None or b.graph is None or b.codes is None:
            return self.mimi.encode_many(wavs)
        with self._lock:
            b.audio.zero_()
            for i, w in enumerate(wavs):
                b.audio[i, 0, : w.numel()].copy_(w.to(dtype=self.mimi.dtype).view(-1), non_blocking=True)
            b.graph.replay()
            codes = [b.codes[i, :, :n].clone() for i, n in enumerate(frames)]
            # done before another thread's stream may overwrite the buffers (the caller copies them to the
            # host next anyway)
            torch.cuda.current_stream(self.mimi.device).synchronize()
            return codes
