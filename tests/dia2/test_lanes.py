"""dia2/lanes.py's scheduler on a clock the test moves: which step runs next, and the policy's effect on first
audio in bench/lane_policy.py's simulation (the same scheduler deciding every step)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from bench import lane_policy
from dia2.lanes import LaneScheduler


@dataclass
class _Turn:
    steps: int = 0
    lead_done: bool = False
    chunks: int = 0


@dataclass
class _Call:
    turn: _Turn


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _scheduler(clock: _Clock, first_chunk_first: bool = True) -> LaneScheduler:
    return LaneScheduler(
        on=True, capacity=8, min_call_fps=15.0, first_chunk_first=first_chunk_first, steps_per_full=None,
        in_lead_in=lambda c: not c.turn.lead_done, clock=clock,
    )  # fmt: skip


def _measured(sched: LaneScheduler, clock: _Clock, full_ms: float, lane_ms: float) -> None:
    """One full step and one lane step of the given times: the scheduler's averages start there."""
    t0 = sched.full_started()
    clock.now += full_ms / 1000
    sched.full_done(t0)
    t0 = clock.now
    clock.now += lane_ms / 1000
    sched.lane_done(t0)


def test_lane_steps_fill_the_full_step_period_and_no_more() -> None:
    """Full steps 40 ms, lane steps 4 ms, 15 full steps a second (66.7 ms periods): after a full step, lane
    steps start while start + 1.25 x 4 ms stays inside the period, then the full step is due."""
    clock = _Clock()
    sched = _scheduler(clock)
    calls: list[Any] = [_Call(_Turn()), _Call(_Turn(lead_done=True, chunks=5))]
    _measured(sched, clock, 40.0, 4.0)
    t0 = sched.full_started()
    clock.now += 0.040
    sched.full_done(t0)
    lanes = 0
    while sched.choose(calls):
        clock.now += 0.004
        lanes += 1
    # the 6th starts at 60 ms (60 + 5 <= 66.7); a 7th at 64 ms would not (69 > 66.7)
    assert lanes == 6 and abs(1000 * (clock.now - t0) - 64.0) < 1e-6


def test_a_first_chunk_forces_the_full_step_only_when_it_outnumbers_the_lane() -> None:
    """One call waiting for its first chunk while two are in their lead-in: the lane goes on (forcing would
    cost both of them a full step's time); two waiting against two in the lead-in: the full step runs now.
    With first_chunk_first off, the budget alone decides."""
    clock = _Clock()
    lead = [_Call(_Turn()), _Call(_Turn())]
    waiting = [_Call(_Turn(lead_done=True)), _Call(_Turn(lead_done=True))]
    speaking = [_Call(_Turn(lead_done=True, chunks=9))]
    sched = _scheduler(clock)
    _measured(sched, clock, 40.0, 4.0)
    sched.full_started()
    assert sched.choose([*lead, waiting[0], *speaking]) == lead
    assert sched.choose([*lead, *waiting, *speaking]) == []
    off = _scheduler(clock, first_chunk_first=False)
    _measured(off, clock, 40.0, 4.0)
    off.full_started()
    assert off.choose([*lead, *waiting, *speaking]) == lead


def test_under_reply_churn_the_balanced_policy_keeps_first_audio_low() -> None:
    """bench/lane_policy.py at 128 calls, 50 ms full steps, 25 replies a second: first_chunk_first as it is
    now keeps p95 first audio near never forcing (~0.4 s) where always forcing gave ~0.9 s; at 32 calls
    and light churn it keeps forcing's low tail."""

    def run(calls: int, full_ms: float, lane_ms: float, rate: float, fcf: bool) -> float:
        args = argparse.Namespace(
            calls=calls, full_ms=full_ms, lane_ms=lane_ms, lane_capacity=8, replies_per_s=rate,
            reply_frames=38, seconds=20.0, seed=1,
        )  # fmt: skip
        return float(lane_policy.simulate(args, fcf, 15.0)["first_audio_ms"]["p95"])

    heavy_on, heavy_off = run(128, 50.0, 4.0, 25.0, True), run(128, 50.0, 4.0, 25.0, False)
    assert heavy_on < 1.15 * heavy_off and heavy_on < 600
    light_on, light_off = run(32, 15.0, 3.0, 6.0, True), run(32, 15.0, 3.0, 6.0, False)
    assert light_on < light_off
