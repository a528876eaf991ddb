"""One engine step on the device and its host side: a full step (every speaking call one frame) or a
lead-in lane step (main decoder only, for calls in their reply's lead-in).

:class:`FrameStepper` owns what a step touches beyond the call rows: the pinned host copies of the step's
actions, codes and bad-code flags, and the step counters. It runs the phases through ``dia2/graphs.py``
(graph or eager), hands the Mimi decode to ``dia2/mimi_rows.py``, advances each call's text state machine
and queues its chunk; a reply that is done is handed back to the engine (``finish_turn``).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Callable

import torch

from .call_state import AudioChunk, CallState, EngineOptions, ReplyState
from .frame import FrameBuffers, FrameConstants
from .graphs import FrameGraphs
from .history import CallHistory
from .mimi_rows import MIMI_PRIME_FRAMES, MimiRows
from .state_machine import StateMachine

__all__ = ["FrameStepper"]

logger = logging.getLogger(__name__)


class FrameStepper:
    def __init__(
        self,
        options: EngineOptions,
        machine: StateMachine,
        consts: FrameConstants,
        buf: FrameBuffers,
        lane: FrameBuffers,
        lane_slots: torch.Tensor,
        history: CallHistory,
        graphs: FrameGraphs,
        mimi_rows: MimiRows,
        finish_turn: Callable[[CallState], None],
        *,
        delays: list[int],
        branches: int,
        max_steps: int,
        buckets: list[int],
        kv_buckets: list[int],
        lane_buckets: list[int],
        lane_on: bool,
        overlap: bool,
    ) -> None:
        self.options, self.machine, self.consts, self.buf = options, machine, consts, buf
        self.lane, self.lane_slots, self.history, self.graphs = lane, lane_slots, history, graphs
        self.mimi_rows, self.finish_turn = mimi_rows, finish_turn
        self.branches, self.max_steps, self.lane_on = branches, max_steps, lane_on
        self.buckets, self.kv_buckets, self.lane_buckets = buckets, kv_buckets, lane_buckets
        self.max_delay = max(delays)
        # Smallest delay of codebooks 1..K-1: a step t whose frame t + 1 - this is still known (or
        # negative) writes no depformer code that is kept (see frame.finish_phase).
        self._dep_min_delay = min(delays[1:]) if len(delays) > 1 else 0
        # The depformer runs before the host's text step when it does not read the text (no text embedding).
        self._overlap = overlap
        self._cuda = buf.step.device.type == "cuda"
        pin, cap = self._cuda, options.capacity
        self._host_action = torch.zeros(cap, dtype=torch.long, pin_memory=pin)
        self._host_codes = torch.zeros(cap, len(delays), dtype=torch.long, pin_memory=pin)
        # Per call: the step's sampler produced an impossible code (frame.FrameBuffers.bad_code).
        self._host_bad = torch.zeros(cap, dtype=torch.bool, pin_memory=pin)
        self.steps_run = self.lane_steps = self.lead_steps = 0
        self.invalid_codes = 0  # replies ended because a sampler produced a code Mimi cannot decode

    # --- a full step ------------------------------------------------------------------------------

    def full_step(self, calls: list[CallState]) -> None:
        n = self.buckets[bisect.bisect_left(self.buckets, max(c.slot for c in calls) + 1)]
        first = self.max_delay - 1  # the frame decoded at step t is t - first
        reset = [
            c.slot
            for c in calls
            if c.turn and not c.turn.prime_at_lead_end and self.step_of(c) - first == c.turn.mimi_reset_frame
        ]
        need = max(self.history.host_index[:n]) + 1
        kv_len = self.kv_buckets[bisect.bisect_left(self.kv_buckets, need)]
        self.graphs.run_main(n, kv_len)
        # Without the lane, a step whose every call is in its lead-in skips the depformer.
        lead = self.options.skip_lead_in and not self.lane_on and all(self.in_lead_in(c) for c in calls)
        self.lead_steps += lead
        if self._cuda:
            self._host_action[:n].copy_(self.buf.action[:n], non_blocking=True)
            done_main = torch.cuda.Event()
            done_main.record()
        if self._overlap:
            self.graphs.run_depformer(n, lead)
        # The previous step's audio (decoding beside this step's main decoder) goes out now.
        self.mimi_rows.flush()
        if self._cuda:
            done_main.synchronize()
            actions = self._host_action[:n].tolist()
        else:
            actions = self.buf.action[:n].tolist()
        for call in calls:
            self.advance_text(call, actions[call.slot])
        r = n * self.branches
        self.buf.text_in[:r].copy_(self.history.host_text[:r], non_blocking=self._cuda)
        if not self._overlap:
            self.graphs.run_depformer(n, lead)
        self.mimi_rows.decode_step(n, reset, self.graphs.run_mimi)
        self._host_codes[:n].copy_(self.buf.emitted[:n], non_blocking=self._cuda)
        self._host_bad[:n].copy_(self.buf.bad_code[:n], non_blocking=self._cuda)
        if self._cuda:
            torch.cuda.current_stream().synchronize()
        self.steps_run += 1
        bad = self._host_bad[:n].tolist()
        for call in calls:
            self.history.host_index[call.slot] += 1
            self.after_step(call, bad[call.slot])

    # --- a lane step ------------------------------------------------------------------------------

    def lane_step(self, lane: list[CallState]) -> None:
        """One main-only step for the lead-in calls ``lane`` only (``frame.lane_phase``)."""
        m = self.lane_buckets[bisect.bisect_left(self.lane_buckets, len(lane))]
        slots = [c.slot for c in lane] + [self.options.capacity] * (m - len(lane))
        self.lane_slots[:m].copy_(torch.tensor(slots, dtype=torch.long), non_blocking=False)
        need = max(self.history.host_index[c.slot] for c in lane) + 1
        kv_len = self.kv_buckets[bisect.bisect_left(self.kv_buckets, need)]
        self.graphs.run_lane(m, kv_len)
        if self._cuda:
            self._host_action[:m].copy_(self.lane.action[:m], non_blocking=True)
            done_main = torch.cuda.Event()
            done_main.record()
        self.mimi_rows.flush()  # audio of the last full step, decoding meanwhile
        if self._cuda:
            done_main.synchronize()
            actions = self._host_action[:m].tolist()
        else:
            actions = self.lane.action[:m].tolist()
        for i, call in enumerate(lane):
            self.advance_text(call, actions[i])
        r = self.options.capacity * self.branches
        self.buf.text_in[:r].copy_(self.history.host_text[:r], non_blocking=self._cuda)
        self._host_bad[:m].copy_(self.lane.bad_code[:m], non_blocking=self._cuda)  # lane entry order
        if self._cuda:
            torch.cuda.current_stream().synchronize()
        self.lane_steps += 1
        self.lead_steps += 1
        bad = self._host_bad[:m].tolist()
        for i, call in enumerate(lane):
            self.history.host_index[call.slot] += 1
            self.after_step(call, bad[i])

    def prime_finished_lead_ins(self, calls: list[CallState]) -> None:
        """Lane mode: a call whose lead-in just ended gets its Mimi row reset and fed the known frames
        the in-line path would have decoded during the lead-in (up to ``MIMI_PRIME_FRAMES``), in one
        multi-frame decode, on the Mimi stream (after any decode that touched the row)."""
        for call in calls:
            turn = call.turn
            if turn is None or not turn.prime_at_lead_end or turn.lead_done or self.in_lead_in(call):
                continue
            turn.lead_done = True
            codes = call.codes[:, turn.mimi_reset_frame : turn.start_frame]
            rows = self.mimi_rows
            if rows.stream is not None:
                rows.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(rows.stream) if rows.stream is not None else contextlib.nullcontext():
                if codes.shape[1] == MIMI_PRIME_FRAMES and self.graphs.replay_prime(call.slot):
                    continue  # one graph replay, the codes from the ring
                rows.prime_eager(call.slot, codes)  # CPU, or a first reply with < 17 known frames

    def step_of(self, call: CallState) -> int:
        assert call.turn is not None
        return call.turn.start_frame + call.turn.steps

    def in_lead_in(self, call: CallState) -> bool:
        """True while every codebook 1..K-1 code this step writes is of a known frame (or before 0):
        the first 17 steps of a reply (Dia2-2B), which then need only the main decoder."""
        assert call.turn is not None
        # start_frame >= 0, so this also covers frames before 0 (a first turn without history).
        return self.step_of(call) + 1 - self._dep_min_delay < call.turn.start_frame

    def advance_text(self, call: CallState, action: int) -> None:
        turn = call.turn
        assert turn is not None
        t = self.step_of(call)
        out = self.machine.process(t, call.machine, action)
        call.text.append((out.main, out.second))
        rows = slice(call.slot * self.branches, (call.slot + 1) * self.branches)
        self.history.host_text[rows, 0] = out.main
        self.history.host_text[rows, 1] = out.second

    def after_step(self, call: CallState, bad_code: bool = False) -> None:
        turn = call.turn
        assert turn is not None
        t = self.step_of(call)
        turn.steps += 1
        frame = t - self.max_delay + 1
        if frame >= turn.start_frame and not turn.cancelled:
            codes = self._host_codes[call.slot].clone()
            call.codes = torch.cat([call.codes, codes.view(-1, 1)], dim=1)
            turn.chunks += 1
            # The audio is filled in by MimiRows.flush once the decode is done (at once on the CPU path).
            chunk = AudioChunk(self.mimi_rows.host_pcm[call.slot], codes, frame, t)
            self.mimi_rows.pending.append((call.slot, _deliver(turn, chunk)))
        if turn.end_step is None and call.machine.end_step is not None:
            turn.end_step = call.machine.end_step
        if bad_code:
            # The frame math replaced the code (frame._write_code), so nothing invalid reaches Mimi or
            # the decoder; the reply cannot be trusted any more, so it ends here (complete frames kept).
            self.invalid_codes += 1
            logger.error(
                "call %d: the sampler produced an audio code outside 0..%d at step %d; reply ended",
                call.slot,
                self.consts.code_limit - 1,
                t,
            )
            self.finish_turn(call)
            return
        finished = (
            (turn.end_step is not None and t + 1 >= turn.end_step + self.max_delay + self.machine.max_padding)
            or turn.steps >= self.options.max_reply_steps
            or t + 2 >= self.max_steps
        )
        if finished:
            self.finish_turn(call)


def _deliver(turn: ReplyState, chunk: AudioChunk) -> Callable[[torch.Tensor], None]:
    """The chunk's hand-out once its audio is decoded (``pcm``: the slot's host row); none if cancelled."""

    def deliver(pcm: torch.Tensor) -> None:
        if not turn.cancelled:
            chunk.pcm = pcm.clone()
            turn.sink(chunk)

    return deliver
