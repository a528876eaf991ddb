"""Paged KV cache of the main decoder: a shared pool of fixed-size blocks and a block table per row.

Why: the dense cache (``model.DecoderCache``) gives every call slot ``max_context_steps`` (1500) slots per CFG
row whether the call has spoken for two seconds or two minutes; at 256 calls of Dia2-2B that is 82 GiB
(docs/DIA2.md, "GPU memory at 256 calls"). Here a call holds ``ceil(steps / block_size)`` blocks per row,
taken from one pool as its context grows and given back when its context shrinks (a turn's end rewinds to
its complete frames, the context policy drops turns) or the call closes. The pool is preallocated (static
storage, so the captured CUDA graphs keep pointing at it) and sized by ``EngineOptions.kv_pool_steps``.

Layout: ``keys``/``values`` ``[L, blocks, Hkv, block_size, Dh]``; ``table [rows, W]`` holds each row's block
ids for its slots ``0 .. W * block_size - 1`` in order. Block 0 is the *trash* block: never handed out,
every unallocated table entry points at it. Writes of rows that do not own the slot they write (an idle
call's row in the step's bucket, a lane step's padding entries, a closed slot) land there; reads of it are
always masked (slots past a row's cache index), so its contents never matter.

Attention: a step's one-frame attention (:meth:`PagedDecoderCache.attend`) reads the blocks in place with
the Triton kernel of ``dia2/paged_attention.py`` when ``in_place`` is on (``EngineOptions.
paged_attention_kernel``: by default on CUDA). Otherwise, and for prefill's many-frame attention, a row's
blocks are gathered into the dense ``[B, Hkv, W * block_size, Dh]`` layout (:meth:`PagedDecoderCache.read`):
the same values in the same slot order as the dense cache, so the tokens are the dense path's exactly
(tested), at the price of a copy per layer and step. The gather stays the reference the kernel is tested
against and the path of the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .model import attend_slots

__all__ = [
    "TRASH_BLOCK",
    "BlockPool",
    "KVPoolExhaustedError",
    "PagedDecoderCache",
    "blocks_for",
    "in_place_unsupported",
]

TRASH_BLOCK = 0


class KVPoolExhaustedError(RuntimeError):
    """The pool has no free block for known frames a call must hold (a voice, a caller turn)."""


def blocks_for(steps: int, block_size: int) -> int:
    """Blocks that hold slots ``0 .. steps - 1``."""
    return -(-steps // block_size)


def in_place_unsupported(device: torch.device) -> str | None:
    """Why the in-place attention kernel (dia2/paged_attention.py) cannot run here (None: it can)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "") != "1":
        return "needs CUDA (or TRITON_INTERPRET=1)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


@dataclass
class PagedDecoderCache:
    """The decoder's KV cache as a block pool + block table; the interface of ``model.DecoderCache``."""

    keys: torch.Tensor  # [L, blocks, Hkv, block_size, Dh]
    values: torch.Tensor
    table: torch.Tensor  # [rows, W] long: block of slots w*block_size .. (w+1)*block_size - 1
    block_size: int
    # One-frame attention reads the blocks in place (dia2/paged_attention.py) instead of a gathered copy.
    in_place: bool = False

    @property
    def max_steps(self) -> int:
        return self.table.shape[1] * self.block_size

    def write(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v [B, Hkv, T, Dh]`` at slots ``index [B, T]``: block ``table[b, i // size]``, offset
        ``i % size``. Rows writing into the trash block may collide there; nothing reads it unmasked."""
        block = self.table.gather(1, torch.div(index, self.block_size, rounding_mode="floor"))
        offset = index.remainder(self.block_size)
        keys, values = self.keys[layer], self.values[layer]
        keys[block, :, offset] = k.transpose(1, 2).to(keys.dtype)  # [B, T, Hkv, Dh]
        values[block, :, offset] = v.transpose(1, 2).to(values.dtype)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, Hkv, W * block_size, Dh]``: each row's blocks in slot order (a gathered copy)."""
        return self._gather(self.keys[layer]), self._gather(self.values[layer])

    def attend(
        self, layer: int, q: torch.Tensor, cache_index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """One query frame ``q [B, H, 1, Dh]`` over slots ``<= cache_index [B]`` → ``[B, H, 1, Dh]``: the
        kernel reads ``cache_index`` (``valid`` is the same mask, built for the gathered copy)."""
        if not self.in_place:
            keys, values = self.read(layer)
            return attend_slots(q, keys, values, valid)
        from .paged_attention import paged_decode

        out = paged_decode(q[:, :, 0], self.keys[layer], self.values[layer], self.table, cache_index)
        return out.unsqueeze(2)

    def _gather(self, pool: torch.Tensor) -> torch.Tensor:
        b, w = self.table.shape
        blocks = pool[self.table]  # [B, W, Hkv, size, Dh]
        return blocks.transpose(1, 2).reshape(b, pool.shape[1], w * self.block_size, pool.shape[3])

    def rows(self, rows: slice | torch.Tensor) -> PagedDecoderCache:
        """The cache of some rows: same pool, their table rows (a view for a slice)."""
        table = self.table[rows] if isinstance(rows, slice) else self.table.index_select(0, rows)
        return replace(self, table=table)

    def limit(self, kv_len: int) -> PagedDecoderCache:
        """Attention over the blocks that hold the first ``kv_len`` slots (rounded up to whole blocks)."""
        w = blocks_for(kv_len, self.block_size)
        if w >= self.table.shape[1]:
            return self
        return replace(self, table=self.table[:, :w])


class BlockPool:
    """The host side of the pool: which blocks each row holds, the free list, and the device table.

    Rows are decoder rows (``branches`` per call); every call's rows always hold the same number of
    blocks. The free list hands out the lowest free id first, so a run is reproducible.
    """

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        rows: int,
        max_steps: int,
        block_size: int,
        blocks: int,
        device: torch.device,
        dtype: torch.dtype,
        in_place: bool = False,
    ) -> None:
        if block_size <= 0 or blocks <= 0:
            raise ValueError(f"block_size ({block_size}) and blocks ({blocks}) must be positive")
        self.block_size = block_size
        self.width = blocks_for(max_steps, block_size)
        shape = (layers, blocks + 1, kv_heads, block_size, head_dim)  # + the trash block
        self.cache = PagedDecoderCache(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            torch.full((rows, self.width), TRASH_BLOCK, dtype=torch.long, device=device),
            block_size,
            in_place,
        )
        self.held: list[list[int]] = [[] for _ in range(rows)]
        self._free = list(range(blocks, 0, -1))  # a stack: pop() gives the lowest id

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def total_blocks(self) -> int:
        return self.cache.keys.shape[1] - 1

    def room(self, rows: Sequence[int]) -> int:
        """Slots each of ``rows`` could hold if it took every free block (shared equally between them)."""
        per_row = min(len(self.held[r]) for r in rows) + self.free_blocks // len(rows)
        return min(per_row, self.width) * self.block_size

    def ensure(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[int]:
        """For each (rows, steps): give every row blocks for slots ``0 .. steps - 1``. All rows of a
        request get them or none does. Returns the indices of the requests that did not fit. The device
        table is written once for all the new blocks."""
        failed, rows_w, cols_w, ids_w = [], [], [], []
        for i, (rows, steps) in enumerate(requests):
            want = min(blocks_for(steps, self.block_size), self.width)
            need = sum(max(0, want - len(self.held[r])) for r in rows)
            if need > len(self._free):
                failed.append(i)
                continue
            for r in rows:
                for col in range(len(self.held[r]), want):
                    block = self._free.pop()
                    self.held[r].append(block)
                    rows_w.append(r)
                    cols_w.append(col)
                    ids_w.append(block)
        if ids_w:
            self._set(rows_w, cols_w, ids_w)
        return failed

    def truncate(self, rows: Sequence[int], steps: int) -> None:
        """Keep only the blocks of slots ``0 .. steps - 1`` of ``rows``; the rest go back to the pool."""
        keep = blocks_for(max(steps, 0), self.block_size)
        rows_w, cols_w = [], []
        for r in rows:
            while len(self.held[r]) > keep:
                self._free.append(self.held[r].pop())
                rows_w.append(r)
                cols_w.append(len(self.held[r]))
        if rows_w:
            self._free.sort(reverse=True)
            self._set(rows_w, cols_w, [TRASH_BLOCK] * len(rows_w))

    def release(self, rows: Sequence[int]) -> None:
        self.truncate(rows, 0)

    def _set(self, rows: list[int], cols: list[int], ids: list[int]) -> None:
        dev = self.cache.table.device
        index = (torch.tensor(rows, device=dev), torch.tensor(cols, device=dev))
        self.cache.table.index_put_(index, torch.tensor(ids, dtype=torch.long, device=dev))
