"""Known frames (caller turns, re-warms) into the dense KV cache through captured CUDA graphs.

Why: a turn's eager prefill is ~28 layers x ~20 small ops, launch-bound: ~28 ms of the engine thread's
Python per caller turn on an H100 (py-spy, 32 calls, 2026-12-05), plus ~20 ms of Mimi encode. Every other
speaking call's next step waits behind it, so at 32 calls a reply's first audio came ~1.3 s after it was
asked for, most of it other calls' turns being ingested (docs/PERFORMANCE.md, issue 16, sixth session).

:class:`PrefillGraphs` owns one graph per (calls, frames) bucket, each with its own static inputs (the
rows' tokens, their cache slots, which cache rows), captured once beside the frame graphs. A prefill is
cut into rounds of at most the largest frame bucket (round k holds chunk k of every call, so a call's
later frames see its earlier ones in the cache) and each round into groups of at most the largest calls
bucket. Padding never touches a real slot: a padded frame or a padded call writes its K/V into the spare
slot ``max_steps - 1`` (never attended: every real frame's slot lies below it; with paged KV mostly the
trash block, where that slot's block is not allocated), and outputs are dropped.
Without CUDA (or where a capture failed) the same bucketed inputs run eagerly, which is what the CPU tests
check against a call prefilled alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .model import Dia2Model
from .paged_kv import PagedDecoderCache

__all__ = ["PrefillGraphs", "PrefillSpan", "RowsOf", "padded"]

logger = logging.getLogger(__name__)

# 16 frames: a 1.3 s turn; 128: 10 s (longer turns run in rounds of 128). Up to 8 calls a graph: the
# drains of a 128-call run held 1-12 turns each; more run in groups.
CALL_BUCKETS = (1, 2, 4, 8)
FRAME_BUCKETS = (16, 32, 64, 128)


class RowsOf:
    """Some rows of the dense decoder cache, picked by an index tensor, written in place (``rows`` of a
    cache with an index tensor returns a copy): what a prefill of several calls' rows writes into."""

    def __init__(self, cache: Any, rows: torch.Tensor) -> None:
        self.cache, self.rows = cache, rows

    @property
    def max_steps(self) -> int:
        return int(self.cache.max_steps)

    def write(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """``k``/``v [B, Hkv, T, Dh]`` at slots ``index [B, T]`` of the picked rows."""
        b, t = index.shape
        heads = k.shape[1]
        row = self.rows.view(b, 1, 1).expand(b, heads, t)
        head = torch.arange(heads, device=index.device).view(1, heads, 1).expand(b, heads, t)
        slot = index.view(b, 1, t).expand(b, heads, t)
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[row, head, slot] = k.to(keys.dtype)
        values[row, head, slot] = v.to(values.dtype)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        return keys.index_select(0, self.rows), values.index_select(0, self.rows)


@dataclass(frozen=True)
class PrefillSpan:
    """One call's known frames: ``tokens [branches, n, C]`` (host) written at cache slots ``start ..``."""

    rows: list[int]  # the call's cache rows, one per CFG branch
    tokens: torch.Tensor
    start: int

    @property
    def frames(self) -> int:
        return int(self.tokens.shape[1])

    def chunk(self, lo: int, hi: int) -> PrefillSpan:
        return PrefillSpan(self.rows, self.tokens[:, lo:hi], self.start + lo)


@dataclass
class _Bucket:
    """Static inputs of one (calls, frames) bucket, and its graph once captured."""

    tokens: torch.Tensor  # [calls x branches, frames, C]
    at: torch.Tensor  # [calls x branches, frames]: cache slot = position of each frame
    rows: torch.Tensor  # [calls x branches]: which cache rows
    graph: Any = None


def rounds(spans: list[PrefillSpan], most: int) -> Iterator[list[PrefillSpan]]:
    """Round k: chunk k (frames ``k*most ..``) of every span that has one, in order."""
    longest = max((s.frames for s in spans), default=0)
    for lo in range(0, longest, most):
        yield [s.chunk(lo, min(lo + most, s.frames)) for s in spans if s.frames > lo]


def bucket_of(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest size holding ``n`` (callers never pass more than the largest)."""
    return next(s for s in sizes if s >= n)


def padded(
    group: list[PrefillSpan], calls: int, frames: int, branches: int, spare: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Host inputs of one forward over ``calls`` x ``frames``: tokens, cache slots (= positions) and cache
    rows. A span's missing frames repeat its last token at the spare slot; missing calls repeat the last
    span's rows writing only the spare slot."""
    tokens, at, rows = [], [], []
    for i in range(calls):
        span = group[min(i, len(group) - 1)]
        tok = span.tokens
        pad = frames - span.frames
        tokens.append(torch.cat([tok, tok[:, -1:].expand(-1, pad, -1)], dim=1) if pad else tok)
        slots = torch.arange(span.start, span.start + frames)
        real = (slots < span.start + span.frames) & (i < len(group))
        at.append(torch.where(real, slots, spare).view(1, -1).expand(branches, -1))
        rows.extend(span.rows)
    return torch.cat(tokens), torch.cat(at), torch.tensor(rows, dtype=torch.long)


class PrefillGraphs:
    def __init__(
        self,
        model: Dia2Model,
        cache: Any,
        *,
        branches: int,
        codebook_channels: int,
        device: torch.device,
        call_buckets: tuple[int, ...] = CALL_BUCKETS,
        frame_buckets: tuple[int, ...] = FRAME_BUCKETS,
    ) -> None:
        self.model, self.cache, self.branches = model, cache, branches
        self.call_buckets, self.frame_buckets = call_buckets, frame_buckets
        self.spare = int(cache.max_steps) - 1
        self.buckets: dict[tuple[int, int], _Bucket] = {}
        for calls in call_buckets:
            r = calls * branches
            for frames in frame_buckets:
                self.buckets[(calls, frames)] = _Bucket(
                    tokens=torch.zeros(r, frames, codebook_channels, dtype=torch.long, device=device),
                    at=torch.full((r, frames), self.spare, dtype=torch.long, device=device),
                    rows=torch.zeros(r, dtype=torch.long, device=device),
                )
        self.replays = 0  # graph replays (tests and benches read them)
        self.eager_runs = 0
        self.errors: list[str] = []

    # --- prefill ------------------------------------------------------------------------------------

    def prefill(self, spans: list[PrefillSpan]) -> None:
        """Every span's frames into the cache, as a prefill of each call alone would leave it."""
        most_calls = self.call_buckets[-1]
        for group in rounds([s for s in spans if s.frames > 0], self.frame_buckets[-1]):
            for i in range(0, len(group), most_calls):
                self._run(group[i : i + most_calls])

    def _run(self, group: list[PrefillSpan]) -> None:
        calls = bucket_of(len(group), self.call_buckets)
        frames = bucket_of(max(s.frames for s in group), self.frame_buckets)
        b = self.buckets[(calls, frames)]
        tokens, at, rows = padded(group, calls, frames, self.branches, self.spare)
        b.tokens.copy_(tokens, non_blocking=True)
        b.at.copy_(at, non_blocking=True)
        b.rows.copy_(rows, non_blocking=True)
        if b.graph is not None:
            b.graph.replay()
            self.replays += 1
        else:
            self._body(b)
            self.eager_runs += 1

    def _body(self, b: _Bucket) -> None:
        with torch.inference_mode():
            self.model.transformer.prefill(b.tokens, b.at, b.at, self._rows(b.rows))

    def _rows(self, rows: torch.Tensor) -> Any:
        """The picked rows, written in place: the paged cache's ``rows`` copies only the block table (its
        writes land in the shared pool); the dense cache's would copy the K/V, hence :class:`RowsOf`."""
        if isinstance(self.cache, PagedDecoderCache):
            return self.cache.rows(rows)
        return RowsOf(self.cache, rows)

    # --- capture (CUDA) -----------------------------------------------------------------------------

    def capture(self) -> None:
        """One graph per bucket, largest first (they share one memory pool: they never run at once and
        their outputs are dropped). Capture runs on the spare slot of row 0 only. A failed capture leaves
        its bucket eager (logged, in ``errors``)."""
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        order = sorted(self.buckets, key=lambda k: k[0] * k[1], reverse=True)
        with torch.cuda.stream(side):
            for key in order:  # warm-up: lazy inits, cuBLAS handles, the allocator
                self._body(self.buckets[key])
        torch.cuda.current_stream().wait_stream(side)
        for key in order:
            b = self.buckets[key]
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=pool):
                    self._body(b)
            except RuntimeError as exc:
                logger.exception("prefill graph capture failed for %s (calls, frames); eager there", key)
                self.errors.append(f"prefill{key}: {exc}")
                continue
            b.graph = graph
        torch.cuda.synchronize()
        logger.info("captured %d prefill graphs", sum(b.graph is not None for b in self.buckets.values()))
