"""What the CPU engine tests share: greedy sampling, two short scripts, a small batch engine on a runtime."""

from __future__ import annotations

from dia2.engine import BatchEngine, EngineOptions, SpeakOptions
from dia2.runtime import Dia2
from dia2.sampling import SamplingParams

GREEDY = SamplingParams(0.0, 1)
SCRIPT_A = "[S1] Hello, this is a verification call. [S2] Yes, speaking."
SCRIPT_B = "[S1] Thanks for taking my call. [S2] Sure, go ahead."


def greedy(cfg_scale: float = 1.0) -> SpeakOptions:
    return SpeakOptions(text=GREEDY, audio=GREEDY, cfg_scale=cfg_scale)


def make_engine(runtime: Dia2, **kw: object) -> BatchEngine:
    """Four calls, short replies: enough to interleave calls on the tiny checkpoint in seconds."""
    opts = {"capacity": 4, "max_reply_steps": 160, "reply_reserve_steps": 40, **kw}
    return BatchEngine(runtime.model, runtime.ids, runtime.tokenizer, runtime.mimi, EngineOptions(**opts))
