"""A call's history on the device: its KV-cache rows, ring and next-step text, and the context policy.

:class:`CallHistory` owns the host mirrors of the call rows (``host_index``: each slot's next cache slot,
``host_text``: each row's next text input) and everything that writes a call's known history into its
device rows: a prefill of known frames (voice prefix, caller turn), loading the rows before a reply, and
the context policy (keep the voice, drop the oldest turns, re-warm). The engine (``dia2/engine.py``) runs
the steps; this module is what a call's past looks like to them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from .call_state import CallState
from .frame import RING, FrameBuffers
from .model import Dia2Model
from .paged_kv import BlockPool, KVPoolExhaustedError
from .prefill_graphs import PrefillGraphs, PrefillSpan, RowsOf, padded
from .state_machine import Entry, MachineState, StateMachine, TokenIds

__all__ = ["CallHistory", "ContextMark", "RowsOf"]  # RowsOf: dia2/prefill_graphs.py

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextMark:
    """A call's context at one moment (:meth:`BatchEngine.mark`); only :meth:`BatchEngine.rewind` reads it."""

    codes: torch.Tensor
    text: tuple[tuple[int, int], ...]
    segments: tuple[tuple[str, int, int], ...]
    dropped_segments: int
    machine: MachineState


class CallHistory:
    def __init__(
        self,
        model: Dia2Model,
        ids: TokenIds,
        machine: StateMachine,
        buf: FrameBuffers,
        *,
        branches: int,
        delays: list[int],
        num_codebooks: int,
        max_steps: int,
        capacity: int,
        pool: BlockPool | None = None,
    ) -> None:
        self.model, self.ids, self.machine, self.buf = model, ids, machine, buf
        # Paged KV (EngineOptions.paged_kv): the blocks each call's rows hold; None: the dense cache.
        self.pool = pool
        self.branches, self.delays, self.max_steps = branches, delays, max_steps
        self.device = model.device
        self.num_codebooks = num_codebooks
        # Host mirror of each slot's next cache slot (never below the device's): picks the step's length.
        self.host_index = [0] * capacity
        # Each row's next text input, written on the host and copied to ``buf.text_in`` once a step.
        pin = self.device.type == "cuda"
        self.host_text = torch.zeros(capacity * branches, 2, dtype=torch.long, pin_memory=pin)
        self.batched_prefills = 0  # prefill_many forwards that carried several calls' turns
        # EngineOptions.prefill_graphs: every prefill through bucketed (captured) forwards.
        self.graphs: PrefillGraphs | None = None

    def load_row(self, call: CallState, *, active: bool) -> None:
        """Point the call's device rows at its history: next step = ``frames``, ring = last frames."""
        buf, s, br = self.buf, call.slot, self.branches
        a = call.frames
        rows = slice(s * br, (s + 1) * br)
        buf.step[s] = a
        buf.known[s] = a
        buf.positions[rows] = a
        buf.cache_index[rows] = a
        self.host_index[s] = a
        ring = torch.zeros(self.num_codebooks, RING, dtype=torch.long)
        lo = max(0, a - RING)
        if a > lo:
            idx = torch.arange(lo, a)
            ring[:, idx % RING] = call.codes[:, lo:a]
        buf.ring[s].copy_(ring.to(self.device))
        main, second = call.text[a]
        self.host_text[rows, 0], self.host_text[rows, 1] = main, second
        buf.text_in[rows] = torch.tensor([main, second], device=self.device)
        if call.turn is not None:
            o = call.turn.options
            buf.cfg_scale[s] = o.cfg_scale
            buf.text.set_row(s, o.text)
            buf.audio.set_row(s, o.audio)
        buf.active[s] = active

    def step_tokens(self, call: CallState, start: int, stop: int) -> torch.Tensor:
        """Decoder inputs ``[branches, stop - start, C]`` of known steps (text recorded, audio known)."""
        steps = torch.arange(start, stop).view(-1, 1)
        frames = steps - torch.tensor(self.delays).view(1, -1)  # [T, K]
        safe = frames.clamp(min=0, max=max(call.frames - 1, 0))
        audio = (
            call.codes.t()[safe, torch.arange(self.num_codebooks)]
            if call.frames
            else torch.zeros_like(frames)
        )
        audio = torch.where(frames < 0, torch.full_like(audio, self.ids.audio_bos), audio)
        text = torch.tensor(call.text[start:stop], dtype=torch.long).view(-1, 2)
        cond = torch.cat([text, audio], dim=1)
        rows = [cond]
        if self.branches > 1:
            uncond = cond.clone()
            uncond[:, 0], uncond[:, 1] = self.ids.zero, self.ids.pad
            rows.append(uncond)
        return torch.stack(rows)

    # --- paged KV: the blocks a call holds ---------------------------------------------------------

    def rows_of(self, call: CallState) -> list[int]:
        return list(range(call.slot * self.branches, (call.slot + 1) * self.branches))

    def grow(self, calls: list[CallState]) -> list[CallState]:
        """Paged KV: blocks for the slot each call's next step writes. Returns the calls the pool had no
        block for (their reply must end before the step)."""
        if self.pool is None:
            return []
        failed = self.pool.ensure([(self.rows_of(c), self.host_index[c.slot] + 1) for c in calls])
        return [calls[i] for i in failed]

    def shrink(self, call: CallState, steps: int) -> None:
        """Paged KV: give back the blocks past the call's first ``steps`` slots (0: all of them)."""
        if self.pool is not None:
            self.pool.truncate(self.rows_of(call), steps)

    def room(self, call: CallState) -> int:
        """Cache slots the call may fill: ``max_steps``, or less when the pool is short of blocks."""
        if self.pool is None:
            return self.max_steps
        return min(self.max_steps, self.pool.room(self.rows_of(call)))

    def prefill(self, call: CallState, start: int, stop: int) -> Any:
        if stop <= start:
            return None
        self._ensure(call, stop)
        if self.graphs is not None:
            self.graphs.prefill([self.span(call, start, stop)])
            return None
        tokens = self.step_tokens(call, start, stop).to(self.device)
        br = self.branches
        pos = torch.arange(start, stop, device=self.device).view(1, -1).expand(br, -1)
        cache = self.buf.cache.rows(slice(call.slot * br, (call.slot + 1) * br))
        with torch.inference_mode():
            return self.model.transformer.prefill(tokens, pos, pos, cache)

    def _ensure(self, call: CallState, stop: int) -> None:
        """Paged KV: blocks for the call's slots below ``stop`` before a prefill writes them."""
        if self.pool is not None and self.pool.ensure([(self.rows_of(call), stop)]):
            raise KVPoolExhaustedError(
                f"call {call.slot}: the KV pool has {self.pool.free_blocks} free blocks of "
                f"{self.pool.block_size} steps; {stop} steps of known frames need more "
                "(EngineOptions.kv_pool_steps sizes the pool)"
            )

    def span(self, call: CallState, start: int, stop: int) -> PrefillSpan:
        return PrefillSpan(self.rows_of(call), self.step_tokens(call, start, stop), start)

    def prefill_many(self, spans: list[tuple[CallState, int, int]]) -> None:
        """Known frames of several calls (``(call, start, stop)`` each) in one batched forward: the caller
        turns of one engine-thread drain. One prefill per turn was half of the engine thread's time at
        128 calls (H100, 2026-12-05), each a launch-bound forward of a few dozen frames.

        Rows are padded to the longest span; a padding step writes its K/V into the spare slot
        ``max_steps - 1`` (never attended: every real frame's slot lies below it) and its output is
        dropped, so each call ends exactly as its own :meth:`prefill` would leave it. The paged cache
        (whose spare slot may lie in an unallocated block) prefills call by call."""
        spans = [(c, a, b) for c, a, b in spans if b > a]
        if self.graphs is not None:
            for call, _, stop in spans:
                self._ensure(call, stop)
            self.graphs.prefill([self.span(c, a, b) for c, a, b in spans])
            return
        if self.pool is not None or len(spans) < 2:
            for call, start, stop in spans:
                self.prefill(call, start, stop)
            return
        group = [self.span(c, a, b) for c, a, b in spans]
        tokens, at, rows = padded(
            group, len(group), max(s.frames for s in group), self.branches, self.max_steps - 1
        )
        at = at.to(self.device)
        cache = RowsOf(self.buf.cache, rows.to(self.device))
        with torch.inference_mode():
            self.model.transformer.prefill(tokens.to(self.device), at, at, cache)
        self.batched_prefills += 1

    def ingest(
        self,
        call: CallState,
        kind: str,
        codes: torch.Tensor,
        entries: list[Entry],
        steps: list[int],
        *,
        prefill: bool = True,
    ) -> tuple[int, int]:
        """Known frames (and their forced words) into history and, unless ``prefill`` is False (the caller
        prefills the returned span later, e.g. batched: :meth:`prefill_many`), the cache."""
        a0, n = call.frames, int(codes.shape[1])
        state = call.machine
        state.entries.clear()
        state.entries.extend(entries)
        forced = {a0 + s for s in steps}
        for t in range(a0, a0 + n):
            token = self.ids.new_word if t in forced else self.ids.pad
            out = self.machine.process(t, state, token, forced=True)
            call.text.append((out.main, out.second))
        # Words whose forced start lies past the audio are dropped, not spoken by the next reply, and so
        # are the unspelled pieces of a word started near the end (main stream) and the look-ahead pieces
        # of the words after it (second stream): a reply must never read the prefix's transcript aloud.
        state.entries.clear()
        state.pending_tokens.clear()
        state.lookahead_tokens.clear()
        call.codes = torch.cat([call.codes, codes.to(torch.long)], dim=1)
        call.segments.append((kind, a0, a0 + n))
        if prefill:
            self.prefill(call, a0, a0 + n)
        return a0, a0 + n

    def drop_frames(self, call: CallState, lo: int, hi: int) -> None:
        """Forget known frames ``[lo, hi)`` (a reply's unplayed tail after a barge-in): later frames move
        down, segments shrink (an emptied one goes), the cache is rewound to ``lo`` and what followed is
        prefilled again at its new place. Text inputs go with their steps; step ``lo``'s input stays the
        one the last kept step emitted (``text[lo]``), as if the dropped steps had never run."""
        if not 0 <= lo < hi <= call.frames:
            raise ValueError(f"frames [{lo}, {hi}) are not in the call's {call.frames} known frames")
        n = hi - lo

        def moved(frame: int) -> int:
            return frame if frame <= lo else max(frame - n, lo)

        call.codes = torch.cat([call.codes[:, :lo], call.codes[:, hi:]], dim=1)
        call.text = call.text[: lo + 1] + call.text[hi + 1 :]
        segments = [(kind, moved(a), moved(b)) for kind, a, b in call.segments]
        call.segments = [s for s in segments if s[2] > s[1]]
        self.shrink(call, lo)
        self.prefill(call, lo, call.frames)

    def mark(self, call: CallState) -> ContextMark:
        """The call's context now (its frames, text inputs, segments and text machine), to restore later."""
        return ContextMark(
            codes=call.codes.clone(),
            text=tuple(call.text),
            segments=tuple(call.segments),
            dropped_segments=call.dropped_segments,
            machine=copy.deepcopy(call.machine),
        )

    def restore(self, call: CallState, mark: ContextMark) -> None:
        """The context of ``mark`` again, and its cache: cut back to the marked frames when only appends
        happened since (paged blocks given back), else (a re-warm moved frames) prefilled from the start."""
        prefix_kept = call.dropped_segments == mark.dropped_segments
        call.codes = mark.codes.clone()
        call.text = list(mark.text)
        call.segments = list(mark.segments)
        call.dropped_segments = mark.dropped_segments
        call.machine = copy.deepcopy(mark.machine)
        if prefix_kept:
            self.shrink(call, call.frames)
        else:
            self.shrink(call, 0)
            self.prefill(call, 0, call.frames)

    def ensure_room(self, call: CallState, need: int, *, keep_half: bool = True) -> None:
        """Context policy: keep the voice, drop the oldest turns until ``need`` more steps fit, re-warm.
        With paged KV the room is also what the pool can give the call (memory pressure shrinks a
        context the way a full one does)."""
        limit = self.room(call) - 1
        keep = list(call.segments)
        voice = [s for s in keep if s[0] == "voice"]
        # Never reserve more than half of what the voice leaves, so some history always survives; a
        # reply longer than its reserve still runs on until the cache is full. Known frames (keep_half
        # False) must fit whole: the caller checked that they fit beside the voice.
        if keep_half:
            need = min(need, (limit - sum(s[2] - s[1] for s in voice)) // 2)
        if call.frames + need <= limit:
            return
        rest = [s for s in keep if s[0] != "voice"]
        total = sum(s[2] - s[1] for s in keep)
        while rest and total + need > limit:
            dropped = rest.pop(0)
            total -= dropped[2] - dropped[1]
            call.dropped_segments += 1
        kept = voice + rest
        codes = [call.codes[:, a:b] for _, a, b in kept]
        text = [t for _, a, b in kept for t in call.text[a:b]] + [call.text[call.frames]]
        if not text[:-1]:
            text = [(self.ids.bos, self.ids.pad)]
        segments, at = [], 0
        for kind, a, b in kept:
            segments.append((kind, at, at + b - a))
            at += b - a
        call.codes = torch.cat(codes, dim=1) if codes else call.codes[:, :0]
        call.text, call.segments = text, segments
        logger.info(
            "call %d: context full, re-warmed %d frames (%d turns dropped so far)",
            call.slot,
            call.frames,
            call.dropped_segments,
        )
        self.shrink(call, call.frames)
        self.prefill(call, 0, call.frames)
        if need <= 0 or call.frames + need > limit:
            if limit < self.max_steps - 1:
                raise KVPoolExhaustedError(
                    f"call {call.slot}: the KV pool leaves room for {limit + 1} steps, too few for the "
                    "voice and a turn (EngineOptions.kv_pool_steps sizes the pool)"
                )
            raise RuntimeError(f"context of {self.max_steps} steps cannot hold the voice and a turn")
