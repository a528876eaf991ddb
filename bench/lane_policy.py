"""The lead-in lane's scheduling policy replayed on a simulated clock: first audio and real time per policy.

    python bench/lane_policy.py [--calls 128] [--full-ms 40] [--lane-ms 3.5] [--replies-per-s 25] \
        [--seconds 60] [--json out.json]

Why: on the GPU every policy run costs device time, and the system runs at 128 calls (docs/PERFORMANCE.md,
issue 16, run F) showed a reply's lead-in riding ~13 full steps, not the lane. dia2/lanes.py's
`LaneScheduler` is pure host logic, so here it decides every step exactly as in the engine, on a clock that
advances by modelled step times instead of GPU work: a full step costs `--full-ms` (every speaking call one
frame), a lane step `--lane-ms` (the lane's calls one main-only step), each with ±10 % jitter. Replies
start as a Poisson process at `--replies-per-s` over the idle calls; each is a 17-step lead-in (Dia2-2B's
deepest codebook delay) and then `--reply-frames` frames, a frame per full step. A reply's first audio is its
first full step after its lead-in. Reported per policy: first audio p50/p95/p99 (ms), full steps per second
(each speaking call's frames per second: real time is 12.5), lane steps per full step.

What it leaves out: host work between steps, caller-turn prefills, the Mimi stream. Its numbers rank
policies under a load; the GPU runs measure them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dia2.lanes import LaneScheduler

LEAD_IN = 17  # Dia2-2B: steps before a reply's first frame is complete


@dataclass
class _Turn:
    start_s: float
    steps: int = 0
    chunks: int = 0
    lead_done: bool = False


@dataclass
class _Call:
    turn: _Turn | None = None
    first_audio_ms: list[float] = field(default_factory=list)


@dataclass
class _Sim:
    now: float = 0.0

    def clock(self) -> float:
        return self.now


def simulate(args: argparse.Namespace, first_chunk_first: bool, min_call_fps: float) -> dict[str, Any]:
    rng = random.Random(args.seed)
    sim = _Sim()
    calls = [_Call() for _ in range(args.calls)]
    sched = LaneScheduler(
        on=True, capacity=args.lane_capacity, min_call_fps=min_call_fps, first_chunk_first=first_chunk_first,
        steps_per_full=None, clock=sim.clock,
        in_lead_in=lambda c: c.turn is not None and c.turn.steps < LEAD_IN,
    )  # fmt: skip
    next_reply = rng.expovariate(args.replies_per_s)
    full_steps = lane_steps = 0
    while sim.now < args.seconds:
        while next_reply <= sim.now:  # replies due by now start on idle calls
            idle = [c for c in calls if c.turn is None]
            if idle:
                rng.choice(idle).turn = _Turn(start_s=next_reply)
            next_reply += rng.expovariate(args.replies_per_s)
        speaking = [c for c in calls if c.turn is not None]
        if not speaking:
            sim.now = next_reply
            continue
        lane = sched.choose(speaking)  # type: ignore[arg-type]
        if lane:
            t0 = sim.now
            sim.now += args.lane_ms / 1000 * rng.uniform(0.9, 1.1)
            sched.lane_done(t0)
            for c in lane:
                _advance(c, sim.now, full=False)  # type: ignore[arg-type]
            lane_steps += 1
        else:
            t0 = sched.full_started()
            sim.now += args.full_ms / 1000 * rng.uniform(0.9, 1.1)
            sched.full_done(t0)
            for c in speaking:
                _advance(c, sim.now, full=True, frames=args.reply_frames)
            full_steps += 1
    ms = sorted(x for c in calls for x in c.first_audio_ms)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "first_chunk_first": first_chunk_first, "min_call_fps": min_call_fps, "replies": len(ms),
        "first_audio_ms": {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1)},
        "full_steps_per_s": round(full_steps / sim.now, 2),
        "lane_steps_per_full": round(lane_steps / max(1, full_steps), 2),
    }  # fmt: skip


def _advance(call: _Call, now: float, *, full: bool, frames: int = 0) -> None:
    """One step of one call: a lead-in step, or (full steps only) a frame of audio after the lead-in."""
    turn = call.turn
    assert turn is not None
    if turn.lead_done:
        if full:
            if turn.chunks == 0:
                call.first_audio_ms.append(1000 * (now - turn.start_s))
            turn.chunks += 1
            if turn.chunks >= frames:
                call.turn = None
        return
    turn.steps += 1
    turn.lead_done = turn.steps >= LEAD_IN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=128)
    ap.add_argument("--full-ms", type=float, default=40.0, help="a full step's time at this load")
    ap.add_argument("--lane-ms", type=float, default=3.5, help="a lane step's time (up to --lane-capacity)")
    ap.add_argument("--lane-capacity", type=int, default=8)
    ap.add_argument("--replies-per-s", type=float, default=25.0)
    ap.add_argument("--reply-frames", type=int, default=38, help="frames of audio a reply lasts (3 s)")
    ap.add_argument("--min-call-fps", type=float, nargs="+", default=[15.0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = [simulate(args, fcf, fps) for fps in args.min_call_fps for fcf in (True, False)]
    model = {k: v for k, v in vars(args).items() if k != "json"}
    out = {"bench": "lane_policy", "model": model, "runs": runs}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
