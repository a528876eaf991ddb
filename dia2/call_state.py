"""What a call is, host side, and the options of the engine and of a reply (``dia2/engine.py`` runs them).

:class:`CallState` is the host side of one call: its slot, its text state machine, its history (every
known frame and the text input of every step) and the reply in progress (:class:`ReplyState`). The modules
around the engine (``dia2/lanes.py``, ``dia2/mimi_rows.py``) read these; none of them imports the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .prefix import PrefixWord
from .sampling import SamplingParams
from .script import ScriptStream
from .state_machine import Entry, MachineState

__all__ = [
    "DEFAULT_BUCKETS",
    "AudioChunk",
    "CallState",
    "ContextOverflowError",
    "EngineOptions",
    "ReplyState",
    "Sink",
    "SpeakOptions",
    "VoicePrompt",
]

# Batch buckets: powers of two up to 128 calls, then steps of 64 (a 192-call batch need not run 256 rows).
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384)


@dataclass(frozen=True)
class EngineOptions:
    capacity: int = 8  # calls held at once (each keeps its KV cache between turns)
    cfg: bool = True  # run the unconditional branch (2 rows per call); False halves the rows
    max_context_steps: int | None = None  # cache slots per call; None → config.runtime.max_context_steps
    reply_reserve_steps: int = 250  # room a spoken turn must have before it starts (20 s)
    max_reply_steps: int = 1000  # a reply never runs longer than this many steps
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    cfg_filter_k: int = 50
    max_top_k: int = 64  # per-call top_k is capped here (static shapes)
    initial_padding: int = 2
    max_padding: int = 6
    cuda_graphs: bool = True  # capture on CUDA; CPU always runs the same code eagerly
    # Known frames (caller turns, re-warms) into the KV cache through captured graphs per (calls,
    # frames) bucket (dia2/prefill_graphs.py) instead of an eager forward per drain: the eager one was
    # ~28 ms of the engine thread per turn at Dia2-2B. None: on CUDA with cuda_graphs (dense or paged);
    # True on the CPU runs the same bucketed inputs eagerly (tests).
    prefill_graphs: bool | None = None
    # Caller turns' Mimi encodes on a thread and CUDA stream of their own from the moment a turn is
    # submitted (dia2/encode_worker.py), instead of inside the engine thread's drain, where each delayed
    # every speaking call's next step. None: on CUDA.
    encode_thread: bool | None = None
    # Those encodes replayed from CUDA graphs per (turns, frames) bucket (dia2/encode_graphs.py): eager,
    # the encode thread's ~1 000 launches a batch held the GIL beside the engine thread (128 calls on an
    # H100: the engine waited for turn codes 19 % of its time). None: on CUDA with cuda_graphs.
    encode_graphs: bool | None = None
    # CUDA stream priority of the engine thread's work, the Mimi decode stream and the turn encoder's
    # (lower = scheduled first; the ASR runs at the default 0; the engine waits for a turn's codes). At 128
    # calls on an H100 the engine thread waited on the GPU it shares with the batched ASR (py-spy,
    # 2026-12-05); None: the default stream (docs/PERFORMANCE.md, eighth session).
    stream_priority: int | None = None
    # Layers/stages through dia2/fused.py's shared functions; None → on CUDA, off on CPU.
    fused: bool | None = None
    compile: bool = True  # torch.compile the fused functions (CUDA only; needs Triton)
    # Depformer stages on dia2/kernels.py (Triton; 22 launches a stage instead of ~84). Needs the fused
    # path. None → on where it can run (CUDA + Triton); True insists (CPU: only under TRITON_INTERPRET=1).
    kernels: bool | None = None
    # Launch those kernels with programmatic dependent launch: each starts (and prefetches its weights
    # into L2) while the previous one finishes (dia2/kernels.py pdl_supported). None → on where it can
    # run (the kernels on a Hopper or later GPU): measured on an H200, bit-identical and 1.5 % faster at
    # one call (docs/PERFORMANCE.md, "Issue 23"). True insists (an error where it cannot run).
    pdl: bool | None = None
    # Buckets of more calls than this run the compiled torch functions (cuBLAS) instead of the Triton
    # kernels, whose tiles are tuned for a few rows (None: the kernels at every size). 64: on an H200
    # the torch main step at 256 calls took 24.6 ms against the kernels' 29.7, and the engine held
    # 21.7 / 19.8 frames/s per call at 192 / 256 calls against 21.4 / 18.6 (docs/PERFORMANCE.md).
    kernel_max_calls: int | None = 64
    skip_lead_in: bool = True  # no depformer on steps whose codebook 1..K-1 codes are all known
    # Attention reads only the first L cache slots, L the smallest of these covering every row of the
    # step's bucket (one main graph per batch bucket and length); the full length is always added.
    kv_buckets: tuple[int, ...] = (128, 256, 512, 1024)
    # Paged KV (dia2/paged_kv.py): a call holds blocks of kv_block_size steps of its context, taken from one
    # pool as the context grows and given back when it shrinks or the call closes, instead of
    # max_context_steps slots per slot (82 GiB at 256 Dia2-2B calls; docs/DIA2.md "GPU memory at 256
    # calls"). Off until the next GPU run measures its speed (on CUDA attention reads the blocks in place,
    # paged_attention_kernel below); tokens are the dense cache's (tested). kv_buckets are rounded up to
    # whole blocks.
    paged_kv: bool = False
    kv_block_size: int = 16
    # Pool size: capacity x this many steps per call, as an average (a call may hold up to
    # max_context_steps while others hold less). None: max_context_steps (never short, saves nothing).
    # Short of blocks, a turn's context policy drops the call's oldest turns as if its context were full,
    # a reply that cannot grow ends (complete frames kept), known frames that cannot fit raise
    # KVPoolExhaustedError.
    kv_pool_steps: int | None = None
    # Paged KV: a step's attention reads the blocks in place (dia2/paged_attention.py, Triton) instead of
    # a gathered dense copy per layer and step. None → on where it can run (CUDA + Triton); True insists
    # (CPU: only under TRITON_INTERPRET=1); False: the gather (the reference). Prefill always gathers.
    paged_attention_kernel: bool | None = None
    # Lead-in lane (needs skip_lead_in): calls in a reply's lead-in also get main-only steps of their own
    # rows (a small batch), between the batch's full steps, as many as the other speaking calls' real-time
    # slack allows (each keeps >= min_call_fps full steps per second). docs/DIA2.md, "Lead-in lane".
    lead_in_lane: bool = True
    lane_capacity: int = 8  # calls per lane step; more calls in lead-in ride the full steps only
    min_call_fps: float = 15.0  # real time (12.5) + 20 %: the rate every speaking call is kept above
    # Fixed lane steps between two full steps instead of the timed budget (deterministic tests).
    lane_steps_per_full: int | None = None
    # Calls whose lead-in just ended get the next full step at once (their first chunk), when they are at
    # least as many as the lane's calls (dia2/lanes.py says why; bench/lane_policy.py measures it).
    first_chunk_first: bool = True
    # CUDA: the streaming Mimi decode of a step's frame runs on a second stream, beside the next step's
    # main decoder; its chunks go out as soon as it is done (docs/DIA2.md, "Mimi on a second stream").
    overlap_mimi: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class SpeakOptions:
    text: SamplingParams = field(default_factory=lambda: SamplingParams(0.6, 50))
    audio: SamplingParams = field(default_factory=lambda: SamplingParams(0.8, 50))
    cfg_scale: float = 2.0


@dataclass
class AudioChunk:
    """One Mimi frame of a reply: 1920 float32 samples at 24 kHz in [-1, 1] (CPU)."""

    pcm: torch.Tensor
    codes: torch.Tensor  # [K] the frame's codes
    frame: int  # index of the frame in the call's history
    step: int  # engine step that completed it


Sink = Callable[[AudioChunk | None], None]  # None marks the end of the turn


class ContextOverflowError(ValueError):
    """Known audio (a voice, a caller turn) that the call's context cannot hold. Raised before the call
    changes, so the call stays usable (``reset``, another voice, ``speak``)."""

    def __init__(
        self, what: str, frames: int, max_frames: int, max_context_steps: int, frame_rate: float, why: str
    ) -> None:
        self.what, self.frames, self.max_frames = what, frames, max_frames
        self.max_context_steps = max_context_steps
        super().__init__(
            f"{what} of {frames} frames ({frames / frame_rate:.1f} s) does not fit the context: "
            f"max_context_steps is {max_context_steps}{why}, so a {what} may have at most {max_frames} "
            f"frames ({max_frames / frame_rate:.1f} s)"
        )


@dataclass(frozen=True)
class VoicePrompt:
    """A recording encoded once (``BatchEngine.encode_voice``): its Mimi codes and timed words. Any call of
    the engine may use it as its voice (``BatchEngine.set_voice_prompt``) or as a caller turn
    (``BatchEngine.user_spoke_prompt``) without running the Mimi encoder again."""

    codes: torch.Tensor  # [K, frames] long, on the CPU
    words: tuple[PrefixWord, ...]

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])


@dataclass
class ReplyState:
    """A reply in progress."""

    start_frame: int
    steps: int
    options: SpeakOptions
    sink: Sink
    script: ScriptStream | None
    mimi_reset_frame: int
    # Lane mode: the Mimi row is reset and primed with the known frames once, when the lead-in ends
    # (the full steps of the lead-in decode whatever their row holds), instead of at the reply's start.
    prime_at_lead_end: bool = False
    lead_done: bool = False
    end_step: int | None = None
    cancelled: bool = False
    chunks: int = 0


@dataclass
class CallState:
    """Host side of one call. ``text[t]`` is the text input (main, second) of step t; ``codes`` holds
    every known aligned frame ``[K, frames]``; ``segments`` are (kind, first frame, end frame)."""

    slot: int
    machine: MachineState
    codes: torch.Tensor
    text: list[tuple[int, int]]
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    # The voice prefix, one (codes, entries, forced word steps) per speaker: the AI's (speaker 1) and
    # optionally a partner's (speaker 2); both are kept through every turn drop and re-warm.
    voice: list[tuple[torch.Tensor, list[Entry], list[int]]] | None = None
    turn: ReplyState | None = None
    dropped_segments: int = 0
    closed: bool = False

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])
