"""The lead-in lane's scheduler: which calls get a lane step, and whether one may run now.

A call in its reply's lead-in needs only the main decoder; the lane gives such calls main-only steps of
their own rows between the batch's full steps, as many as the other speaking calls' real-time slack
allows (docs/DIA2.md, "Lead-in lane"). :class:`LaneScheduler` owns the host state of that decision: the
moving averages of a full and a lane step's wall time, when the last full step started, and how many lane
steps ran since. It is pure host logic (no tensors), so the policy is tested on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .call_state import CallState

__all__ = ["LaneScheduler"]


def _ema(old: float | None, new: float, alpha: float = 0.3) -> float:
    """Moving average of a step's wall time (the scheduler's estimate)."""
    return new if old is None else (1 - alpha) * old + alpha * new


class LaneScheduler:
    def __init__(
        self,
        *,
        on: bool,
        capacity: int,
        min_call_fps: float,
        first_chunk_first: bool,
        steps_per_full: int | None,
        in_lead_in: Callable[[CallState], bool],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clock = clock  # seconds; bench/lane_policy.py replays the policy on a simulated one
        self.on, self.capacity, self.min_call_fps = on, capacity, min_call_fps
        self.first_chunk_first, self.steps_per_full = first_chunk_first, steps_per_full
        self.in_lead_in = in_lead_in
        self.since_full = 0
        self.last_full_start = 0.0
        self.full_ms: float | None = None  # moving averages of a full / lane step's wall time
        self.lane_ms: float | None = None

    def choose(self, calls: list[CallState]) -> list[CallState]:
        """The calls of the next lane step, or [] when the next step is a full one."""
        lane = self.lane_calls(calls)
        return lane if lane and self.allowed(calls, lane) else []

    def lane_calls(self, calls: list[CallState]) -> list[CallState]:
        """Calls that get lane steps: in their lead-in, lane on, oldest reply first, up to capacity."""
        if not self.on:
            return []
        lead = [c for c in calls if self.in_lead_in(c)]
        lead.sort(key=lambda c: c.turn.steps if c.turn else 0, reverse=True)
        return lead[: self.capacity]

    def allowed(self, calls: list[CallState], lane: list[CallState]) -> bool:
        """The real-time bound: a lane step runs only if every other speaking call still gets its next
        full step in time. Full steps must start at least ``min_call_fps`` times a second, so a lane
        step may start only while (now + its expected time) stays inside the current full-step period."""
        if len(lane) == len(calls):
            return True  # nobody else is waiting: lead-in calls alone, the cheapest step for them
        if self.first_chunk_first and self.first_chunks_waiting(calls) >= len(lane):
            # Lead-ins are over: their first chunks come with the next full step, run it now. Only while they
            # are at least as many as the lane's calls: a forced full step costs each of those a full step's
            # time for one step instead of a lane step's, and under reply churn (a lead-in ending at almost
            # every full step) forcing always left the lane ~1 step per full step (bench/lane_policy.py:
            # first audio p95 877 -> 427 ms at 128 calls, 50 ms full steps, 25 replies/s; unchanged at 32).
            return False
        if self.steps_per_full is not None:
            allowed = self.since_full < self.steps_per_full
        elif self.full_ms is None:
            allowed = False  # no full step measured yet: one first
        else:
            lane_ms = self.lane_ms if self.lane_ms is not None else self.full_ms
            deadline = self.last_full_start + 1.0 / self.min_call_fps
            # 1.25: margin for jitter (host work between steps, a slower step than the average).
            allowed = self.clock() + 1.25 * lane_ms / 1000 <= deadline
        if allowed:
            self.since_full += 1
        return allowed

    @staticmethod
    def first_chunks_waiting(calls: list[CallState]) -> int:
        """Calls whose lead-in is over and whose first chunk has not come yet."""
        return sum(1 for c in calls if c.turn is not None and c.turn.lead_done and c.turn.chunks == 0)

    def full_started(self) -> float:
        """A full step starts now: the lane's budget restarts. Returns the start time."""
        t0 = self.last_full_start = self.clock()
        self.since_full = 0
        return t0

    def full_done(self, t0: float) -> None:
        self.full_ms = _ema(self.full_ms, 1000 * (self.clock() - t0))

    def lane_done(self, t0: float) -> None:
        self.lane_ms = _ema(self.lane_ms, 1000 * (self.clock() - t0))
