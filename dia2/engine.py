"""The conversation engine: many calls advance together, one batched frame per step.

One :class:`Engine` owns the model, the static frame buffers (``dia2/frame.py``), one streaming Mimi
decoder row per call and, on CUDA, the captured graphs. Each call (a :class:`CallState`) owns a *slot*:
its ``branches`` rows of the KV cache, its ring of recent frames, its Mimi row. The host side of a call
is its text state machine, its history (every known frame and the text input of every step) and the
turn in progress.

Threading: all methods named without a leading ``submit`` run on the *engine thread* (or, in tests and
the benchmark, on the caller's thread with no engine thread at all). :meth:`Engine.start` runs the
loop in its own thread: GPU work and the per-frame host sync then never block the asyncio loop of the
SIP supervisor, and ``dia2.conversation`` talks to it through :meth:`Engine.submit` (thread-safe) and
per-turn sinks that hop back with ``loop.call_soon_threadsafe``. See docs/DIA2.md for why a thread and
not an asyncio task.

Conversation model (docs/DIA2.md has the full story): steps and aligned frames advance together.
Between turns a call's cache holds exactly the steps ``0 .. frames - 1``; a turn that ingests ``n``
known frames (voice prefix, caller audio) feeds steps ``frames .. frames + n - 1`` in one prefill; a
spoken turn starts at step ``frames``, forces the codes of frames it already knows, and ends with its
last complete frame, so the next turn starts where the history is fully known.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .frame import RING, FrameBuffers, FrameConstants, depformer_phase, finish_phase, lane_phase, main_phase
from .model import DecoderCache, Dia2Model
from .prefix import SPEAKER1_STEP_OFFSET, PrefixWord, words_to_entries
from .sampling import SamplingParams
from .script import ScriptStream, WordEncoder
from .state_machine import Entry, MachineState, StateMachine, TokenIds
from .wavfile import resample_linear

__all__ = [
    "AudioChunk", "CallState", "ContextOverflowError", "Engine", "EngineOptions", "SpeakOptions",
    "VoicePrompt",
]

logger = logging.getLogger(__name__)

# Batch buckets: powers of two up to 128 calls, then steps of 64 (a 192-call batch need not run 256 rows).
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384)
MIMI_PRIME_FRAMES = 17  # known frames decoded (and discarded) before a reply's first frame


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
    # Lead-in lane (needs skip_lead_in): calls in a reply's lead-in also get main-only steps of their own
    # rows (a small batch), between the batch's full steps, as many as the other speaking calls' real-time
    # slack allows (each keeps >= min_call_fps full steps per second). docs/DIA2.md, "Lead-in lane".
    lead_in_lane: bool = True
    lane_capacity: int = 8  # calls per lane step; more calls in lead-in ride the full steps only
    min_call_fps: float = 15.0  # real time (12.5) + 20 %: the rate every speaking call is kept above
    # Fixed lane steps between two full steps instead of the timed budget (deterministic tests).
    lane_steps_per_full: int | None = None
    # A call whose lead-in just ended gets the next full step at once (its first chunk). Measured on
    # the H100 under heavy barge-in churn this caps lane steps near one per full step (docs/PERFORMANCE.md,
    # "Lead-in lane"); False leaves the full step to the rate budget (not yet measured on the GPU).
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

    def __init__(self, what: str, frames: int, max_frames: int, max_context_steps: int, frame_rate: float,
                 why: str) -> None:
        self.what, self.frames, self.max_frames = what, frames, max_frames
        self.max_context_steps = max_context_steps
        super().__init__(
            f"{what} of {frames} frames ({frames / frame_rate:.1f} s) does not fit the context: "
            f"max_context_steps is {max_context_steps}{why}, so a {what} may have at most {max_frames} "
            f"frames ({max_frames / frame_rate:.1f} s)"
        )


@dataclass(frozen=True)
class VoicePrompt:
    """A recording encoded once (:meth:`Engine.encode_voice`): its Mimi codes and timed words. Any call
    of the engine may use it as its voice (:meth:`Engine.set_voice_prompt`) or as a caller turn
    (:meth:`Engine.user_spoke_prompt`) without running the Mimi encoder again."""

    codes: torch.Tensor  # [K, frames] long, on the CPU
    words: tuple[PrefixWord, ...]

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])


def _ema(old: float | None, new: float, alpha: float = 0.3) -> float:
    """Moving average of a step's wall time (the scheduler's estimate)."""
    return new if old is None else (1 - alpha) * old + alpha * new


@dataclass
class _Turn:
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
    turn: _Turn | None = None
    dropped_segments: int = 0
    closed: bool = False

    @property
    def frames(self) -> int:
        return int(self.codes.shape[1])


class Engine:
    def __init__(
        self,
        model: Dia2Model,
        ids: TokenIds,
        encoder: WordEncoder,
        mimi: Any,
        options: EngineOptions | None = None,
        *,
        second_stream_ahead: int | None = None,
    ) -> None:
        """``mimi`` is a :class:`dia2.mimi.MimiCodec` (encode caller audio, stream-decode replies)."""
        from .mimi_stream import MimiStreamState, StreamingMimiDecoder

        self.model, self.ids, self.encoder, self.mimi = model, ids, encoder, mimi
        self.options = opts = options or EngineOptions()
        config = model.config
        self.device = model.device
        self.branches = 2 if opts.cfg else 1
        self.num_codebooks = config.data.num_codebooks
        self.delays = list(config.data.delay_pattern)
        self.max_delay = max(self.delays)
        if self.max_delay + 2 > RING:
            raise ValueError(f"delays up to {self.max_delay} need a ring longer than {RING}")
        self.max_steps = min(opts.max_context_steps or config.runtime.max_context_steps,
                             model.transformer.rope_length)
        self.frame_rate = float(mimi.sample_rate) / float(mimi.frame_size)
        self.machine = StateMachine(
            ids,
            second_stream_ahead=config.data.second_stream_ahead if second_stream_ahead is None
            else second_stream_ahead,
            max_padding=opts.max_padding,
            initial_padding=opts.initial_padding,
        )
        # One spare call entry: the lane's padding entries point there (frame.lane_phase).
        self.buf = FrameBuffers.allocate(
            model, opts.capacity, self.branches, self.max_steps, mimi.frame_size, spare=1
        )
        self.consts = FrameConstants(
            ids, torch.tensor(self.delays, dtype=torch.long, device=self.device),
            opts.cfg_filter_k, opts.max_top_k,
        )
        self.buckets = sorted({b for b in opts.buckets if b < opts.capacity} | {opts.capacity})
        # One Mimi decoder object per bucket, all over views of one state (so a call keeps its row).
        master = StreamingMimiDecoder(mimi.model, batch_size=opts.capacity)
        self._mimi: dict[int, StreamingMimiDecoder] = {}
        for b in self.buckets:
            dec = master if b == opts.capacity else StreamingMimiDecoder(mimi.model, batch_size=b)
            if dec is not master:
                s = master.state
                dec.state = MimiStreamState(
                    offset=s.offset[:b], fresh=s.fresh[:b],
                    conv_history=[t[:b] for t in s.conv_history], convtr_tail=[t[:b] for t in s.convtr_tail],
                    keys=[t[:b] for t in s.keys], values=[t[:b] for t in s.values],
                )
            self._mimi[b] = dec
        self._mimi_master = master
        self._mimi_rows: dict[int, StreamingMimiDecoder] = {}  # per slot, over the master's row (priming)
        # Priming graph (CUDA): a 1-row scratch decoder is reset, decodes the slot's 17 known frames
        # (gathered from its ring on the device) and its state is copied into the master's row.
        self._prime_dec = StreamingMimiDecoder(mimi.model, batch_size=1)
        self._prime_slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self._prime_graph: Any = None
        self._cuda = self.device.type == "cuda"
        # Lead-in lane: small buffers (their KV cache is a per-step gather of the master's rows).
        self.lane_on = opts.lead_in_lane and opts.skip_lead_in
        lane_cap = max(1, min(opts.lane_capacity, opts.capacity))
        self.lane_buckets = sorted({b for b in opts.buckets if b < lane_cap} | {lane_cap})
        self.lane = FrameBuffers.allocate(model, lane_cap, self.branches, 1, mimi.frame_size)
        self.lane_slots = torch.full((lane_cap,), opts.capacity, dtype=torch.long, device=self.device)
        self._lane_graphs: dict[tuple[int, int], Any] = {}
        self.lane_steps = 0
        self._lane_since_full = 0
        self._last_full_start = 0.0
        self._full_ms: float | None = None  # moving averages of a full / lane step's wall time
        self._lane_ms: float | None = None
        # Mimi on a second stream (CUDA): its input is a copy of the step's codes, so the next step may
        # overwrite ``emitted`` while the decode still runs.
        self._mimi_in = torch.zeros(opts.capacity, self.num_codebooks, dtype=torch.long, device=self.device)
        self._mimi_stream: Any = None
        if self._cuda and opts.overlap_mimi:
            self._mimi_stream = torch.cuda.Stream()
        self._mimi_done: Any = None  # event: the last decode (and its copy to the host) finished
        self._pending: list[tuple[_Turn, int, AudioChunk]] = []  # chunks whose audio is still being decoded
        self._overlap = model.depformer.text_embed is None
        # Smallest delay of codebooks 1..K-1: a step t whose frame t + 1 - this is still known (or
        # negative) writes no depformer code that is kept (see frame.finish_phase).
        self._dep_min_delay = min(self.delays[1:]) if len(self.delays) > 1 else 0
        self.fused = None
        use_fused = opts.fused if opts.fused is not None else self._cuda
        if use_fused:
            from .fused import FusedFrame

            kernels, pdl = _kernel_choice(opts, model, self._cuda)
            self.fused = FusedFrame(model, self.consts, self.branches, compile=opts.compile and self._cuda,
                                    kernels=kernels, capacity=opts.capacity, pdl=pdl,
                                    kernel_max_rows=None if opts.kernel_max_calls is None
                                    else opts.kernel_max_calls * self.branches)
        self.lead_steps = 0
        self.kv_buckets = sorted({b for b in opts.kv_buckets if 0 < b < self.max_steps} | {self.max_steps})
        # Host mirror of each slot's next cache slot (never below the device's): picks the step's length.
        self._host_index = [0] * opts.capacity
        self._main_graphs: dict[tuple[int, int], Any] = {}
        self._gen: torch.Generator | None = None
        if not self._cuda:
            self._gen = torch.Generator(device=self.device)
            self._gen.manual_seed(opts.seed if opts.seed is not None else 0)
        elif opts.seed is not None:
            torch.cuda.manual_seed(opts.seed)
        pin = self._cuda
        r = opts.capacity * self.branches
        self._host_action = torch.zeros(opts.capacity, dtype=torch.long, pin_memory=pin)
        self._host_text = torch.zeros(r, 2, dtype=torch.long, pin_memory=pin)
        self._host_pcm = torch.zeros(opts.capacity, mimi.frame_size, pin_memory=pin)
        self._host_codes = torch.zeros(opts.capacity, self.num_codebooks, dtype=torch.long, pin_memory=pin)
        # Per call: the step's sampler produced an impossible code (frame.FrameBuffers.bad_code).
        self._host_bad = torch.zeros(opts.capacity, dtype=torch.bool, pin_memory=pin)
        self.invalid_codes = 0  # replies ended because a sampler produced a code Mimi cannot decode
        self.calls: dict[int, CallState] = {}
        self.steps_run = 0
        self.mimi_encodes = 0  # Mimi encoder runs (voices, caller turns): what cached VoicePrompts save
        self._graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self.graph_errors: list[str] = []
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        if self._cuda and opts.cuda_graphs:
            self._capture_all()

    # ---------------------------------------------------------------------------------------------
    # Threading
    # ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the engine loop in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dia2-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn()`` on the engine thread between two steps; thread-safe, returns a future."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None:
            raise RuntimeError("engine thread not started (call start(), or call the methods directly)")
        self._commands.put((fn, fut))
        self._wake.set()
        return fut

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop:
                self._drain_commands()
                if not self.step():
                    self._wake.wait()
                    self._wake.clear()

    def _drain_commands(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # the caller gets it through the future
                    logger.exception("engine command failed")
                    fut.set_exception(exc)

    # ---------------------------------------------------------------------------------------------
    # Calls
    # ---------------------------------------------------------------------------------------------

    def open_call(self) -> CallState:
        used = {c.slot for c in self.calls.values()}
        free = [s for s in range(self.options.capacity) if s not in used]
        if not free:
            raise RuntimeError(f"engine is full ({self.options.capacity} calls)")
        call = CallState(
            slot=free[0],
            machine=self.machine.new_state([]),
            codes=torch.zeros(self.num_codebooks, 0, dtype=torch.long),
            text=[(self.ids.bos, self.ids.pad)],
        )
        self.calls[call.slot] = call
        return call

    def close_call(self, call: CallState) -> None:
        self.cancel(call)
        self._finish_turn(call)
        call.closed = True
        self.calls.pop(call.slot, None)

    def encode_voice(
        self, audio: torch.Tensor, sample_rate: int, words: Sequence[PrefixWord]
    ) -> VoicePrompt:
        """Mimi-encode a recording once (mono float audio at any rate, its words timed in seconds); the
        result is reusable by every call. Runs the model: call it on the engine thread."""
        audio = torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
        rate = int(self.mimi.sample_rate)
        if sample_rate != rate:
            audio = resample_linear(audio, sample_rate, rate)
        self.mimi_encodes += 1
        codes = self.mimi.encode(audio).cpu().to(torch.long)
        return VoicePrompt(codes, tuple(words))

    @property
    def max_voice_frames(self) -> int:
        """The longest voice a call takes: it must leave a reply its reserve (``reply_reserve_steps``)."""
        return max(self.max_steps - 1 - self.options.reply_reserve_steps, 0)

    def check_voice(self, prompt: VoicePrompt, partner: VoicePrompt | None = None) -> None:
        """:class:`ContextOverflowError` if ``prompt`` (with ``partner``) is too long to be a call's voice."""
        frames = prompt.frames + (partner.frames if partner is not None else 0)
        if frames > self.max_voice_frames:
            raise ContextOverflowError(
                "voice" if partner is None else "voice with its partner prefix", frames,
                self.max_voice_frames, self.max_steps, self.frame_rate,
                f" and a reply needs reply_reserve_steps={self.options.reply_reserve_steps}",
            )

    def set_voice(
        self, call: CallState, audio: torch.Tensor, words: Sequence[PrefixWord],
        partner: VoicePrompt | None = None,
    ) -> None:
        """The AI's voice: mono 24 kHz audio and its words (speaker 1). Resets the call. ``partner``:
        see :meth:`set_voice_prompt`."""
        self.set_voice_prompt(call, self.encode_voice(audio, int(self.mimi.sample_rate), words), partner)

    def set_voice_prompt(
        self, call: CallState, prompt: VoicePrompt, partner: VoicePrompt | None = None
    ) -> None:
        """The AI's voice from precomputed codes (:meth:`encode_voice`). Resets the call. A voice that
        does not fit raises before anything changes: the call keeps its previous voice and context.

        ``partner``: a second speaker's turn (speaker 2, e.g. a recorded caller saying a sentence) heard
        after the voice, as upstream's ``--prefix-s2``. Dia2 was trained on two-speaker dialogue; with only
        speaker 1's prefix the first replies of a call (before the caller's own audio is in the context)
        can drift away from the voice. Both prefixes are part of the voice: kept through every context
        drop and re-warm, re-ingested by :meth:`reset`."""
        self.check_voice(prompt, partner)
        entries, steps = words_to_entries(prompt.words, self.encoder, "[S1]", self.frame_rate)
        # Upstream's +3 "legacy" shift of speaker 1's forced word starts, kept for the voice prefix.
        voice = [(prompt.codes, entries, [s + SPEAKER1_STEP_OFFSET for s in steps])]
        if partner is not None:
            entries2, steps2 = words_to_entries(partner.words, self.encoder, "[S2]", self.frame_rate)
            voice.append((partner.codes, entries2, steps2))
        call.voice = voice
        self.reset(call)

    def reset(self, call: CallState) -> None:
        """Forget every turn; keep the voice (re-warmed)."""
        self.cancel(call)
        self._finish_turn(call)
        call.machine = self.machine.new_state([])
        call.codes = torch.zeros(self.num_codebooks, 0, dtype=torch.long)
        call.text = [(self.ids.bos, self.ids.pad)]
        call.segments = []
        for codes, entries, steps in call.voice or []:
            self._ingest(call, "voice", codes, entries, steps)

    def user_spoke(self, call: CallState, audio: torch.Tensor, words: Sequence[PrefixWord]) -> None:
        """The caller's turn: mono 24 kHz audio and its words (speaker 2, times relative to the audio)."""
        self.user_spoke_prompt(call, self.encode_voice(audio, int(self.mimi.sample_rate), words))

    def user_spoke_prompt(self, call: CallState, prompt: VoicePrompt) -> None:
        """The caller's turn from precomputed codes (:meth:`encode_voice`)."""
        entries, steps = words_to_entries(prompt.words, self.encoder, "[S2]", self.frame_rate)
        self.ingest_codes(call, prompt.codes, entries, steps)

    def ingest_codes(
        self, call: CallState, codes: torch.Tensor, entries: list[Entry], steps: list[int], kind: str = "user"
    ) -> None:
        if call.turn is not None:
            raise RuntimeError("a reply is in progress: cancel it before ingesting the caller's turn")
        n = int(codes.shape[1])
        # Dropping every turn but the voice is the most room there is; check it before dropping anything.
        voice = sum(b - a for kind_, a, b in call.segments if kind_ == "voice")
        most = self.max_steps - 1 - voice
        if n > most:
            what = "caller turn" if kind == "user" else kind
            raise ContextOverflowError(what, n, most, self.max_steps, self.frame_rate,
                                       f" and the voice holds {voice} frames")
        # The turn's frames must fit whole (no half-of-the-room cap, unlike a reply's reserve).
        self._ensure_room(call, min(n + 1, most), keep_half=False)
        self._ingest(call, kind, codes.cpu(), entries, steps)

    def speak(
        self,
        call: CallState,
        text: str | None,
        sink: Sink,
        options: SpeakOptions | None = None,
        *,
        more_text: bool = False,
    ) -> None:
        """Start a reply. With ``more_text`` the text is incomplete: :meth:`push_text` adds to it and
        ``push_text(..., final=True)`` closes it; until then an empty word queue waits, never ends."""
        if call.turn is not None:
            raise RuntimeError("a reply is already in progress on this call")
        opts = options or SpeakOptions()
        self._ensure_room(call, self.options.reply_reserve_steps)
        script = ScriptStream(self.encoder, self.ids, self.frame_rate)
        state = call.machine
        # Only the reply's own words from here on (ingest already cleared these; a reply never re-enters
        # entries of a voice prefix or of a caller turn).
        state.entries.clear()
        state.pending_tokens.clear()
        state.lookahead_tokens.clear()
        state.awaiting_text = more_text
        # A reply starts like upstream's generation: fresh padding counters, no end of script yet.
        state.padding_budget = state.forced_padding = self.options.initial_padding
        state.end_step = None
        start = call.frames
        call.turn = _Turn(
            start_frame=start, steps=0, options=opts, sink=sink, script=script,
            mimi_reset_frame=max(start - MIMI_PRIME_FRAMES, 0), prime_at_lead_end=self.lane_on,
        )
        self._feed_script(call, text or "", final=not more_text)
        self._load_row(call, active=True)

    def push_text(self, call: CallState, delta: str, *, final: bool = False) -> None:
        turn = call.turn
        if turn is None or turn.script is None:
            return  # the reply ended or was cancelled: late text is dropped
        self._feed_script(call, delta, final=final)

    def cancel(self, call: CallState) -> None:
        """Barge-in: no further chunk for this reply; its rows stop advancing from the next step.
        A chunk whose frame the last step produced (audio still decoding) is delivered first."""
        self._flush_audio()
        if call.turn is not None:
            call.turn.cancelled = True
            self._finish_turn(call)

    # ---------------------------------------------------------------------------------------------
    # One step for every speaking call
    # ---------------------------------------------------------------------------------------------

    def speaking(self) -> list[CallState]:
        return [c for c in self.calls.values() if c.turn is not None]

    def step(self) -> bool:
        """Advance the speaking calls by one step: a full step (every speaking call one frame), or a
        lane step (only calls in their lead-in, main-only). Returns False when no call is speaking."""
        calls = self.speaking()
        if not calls:
            self._flush_audio()
            return False
        with torch.inference_mode():
            lane = self._lane_calls(calls)
            if lane and self._lane_allowed(calls, lane):
                t0 = time.perf_counter()
                self._lane_step(lane)
                self._lane_ms = _ema(self._lane_ms, 1000 * (time.perf_counter() - t0))
            else:
                t0 = time.perf_counter()
                self._last_full_start = t0
                self._lane_since_full = 0
                self._full_step(calls)
                self._full_ms = _ema(self._full_ms, 1000 * (time.perf_counter() - t0))
            self._prime_finished_lead_ins(calls)
            if self._mimi_stream is None:
                self._flush_audio()
        return True

    # --- scheduler ---------------------------------------------------------------------------------

    def _lane_calls(self, calls: list[CallState]) -> list[CallState]:
        """Calls that get lane steps: in their lead-in, lane on, oldest reply first, up to capacity."""
        if not self.lane_on:
            return []
        lead = [c for c in calls if self._in_lead_in(c)]
        lead.sort(key=lambda c: (c.turn.steps if c.turn else 0), reverse=True)
        return lead[: self.lane.capacity]

    def _lane_allowed(self, calls: list[CallState], lane: list[CallState]) -> bool:
        """The real-time bound: a lane step runs only if every other speaking call still gets its next
        full step in time. Full steps must start at least ``min_call_fps`` times a second, so a lane
        step may start only while (now + its expected time) stays inside the current full-step period."""
        if len(lane) == len(calls):
            return True  # nobody else is waiting: lead-in calls alone, the cheapest step for them
        if self.options.first_chunk_first and any(
            c.turn is not None and c.turn.lead_done and c.turn.chunks == 0 for c in calls
        ):
            return False  # a call's lead-in is over: its first chunk is the next full step, run it now
        fixed = self.options.lane_steps_per_full
        if fixed is not None:
            allowed = self._lane_since_full < fixed
        elif self._full_ms is None:
            allowed = False  # no full step measured yet: one first
        else:
            lane_ms = self._lane_ms if self._lane_ms is not None else self._full_ms
            period = 1.0 / self.options.min_call_fps
            deadline = self._last_full_start + period
            # 1.25: margin for jitter (host work between steps, a slower step than the average).
            allowed = time.perf_counter() + 1.25 * lane_ms / 1000 <= deadline
        if allowed:
            self._lane_since_full += 1
        return allowed

    # --- a full step ------------------------------------------------------------------------------

    def _full_step(self, calls: list[CallState]) -> None:
        n = self.buckets[bisect.bisect_left(self.buckets, max(c.slot for c in calls) + 1)]
        first = self.max_delay - 1  # the frame decoded at step t is t - first
        reset = [
            c.slot for c in calls
            if c.turn and not c.turn.prime_at_lead_end and self._step_of(c) - first == c.turn.mimi_reset_frame
        ]
        need = max(self._host_index[:n]) + 1
        kv_len = self.kv_buckets[bisect.bisect_left(self.kv_buckets, need)]
        self._run_main(n, kv_len)
        # Without the lane, a step whose every call is in its lead-in skips the depformer.
        lead = self.options.skip_lead_in and not self.lane_on and all(self._in_lead_in(c) for c in calls)
        self.lead_steps += lead
        if self._cuda:
            self._host_action[:n].copy_(self.buf.action[:n], non_blocking=True)
            done_main = torch.cuda.Event()
            done_main.record()
        if self._overlap:
            self._run_depformer(n, lead)
        # The previous step's audio (decoding beside this step's main decoder) goes out now.
        self._flush_audio()
        if self._cuda:
            done_main.synchronize()
            actions = self._host_action[:n].tolist()
        else:
            actions = self.buf.action[:n].tolist()
        for call in calls:
            self._advance_text(call, actions[call.slot])
        r = n * self.branches
        self.buf.text_in[:r].copy_(self._host_text[:r], non_blocking=self._cuda)
        if not self._overlap:
            self._run_depformer(n, lead)
        self._decode_step_audio(n, reset)
        self._host_codes[:n].copy_(self.buf.emitted[:n], non_blocking=self._cuda)
        self._host_bad[:n].copy_(self.buf.bad_code[:n], non_blocking=self._cuda)
        if self._cuda:
            torch.cuda.current_stream().synchronize()
        self.steps_run += 1
        bad = self._host_bad[:n].tolist()
        for call in calls:
            self._host_index[call.slot] += 1
            self._after_step(call, bad[call.slot])

    def _decode_step_audio(self, n: int, reset: list[int]) -> None:
        """Mimi decode of the step's completed frames. On the second stream (CUDA, ``overlap_mimi``) it
        waits only for this step's codes (copied to ``_mimi_in``, so the next step may rewrite
        ``emitted``) and runs beside the next step's main decoder; :meth:`_flush_audio` hands the chunks
        out once its event fires. Otherwise it runs in line, as before."""
        self._flush_audio()  # the host copy of the previous decode is taken before this one overwrites it
        side = self._mimi_stream
        cur = torch.cuda.current_stream() if self._cuda else None
        if side is not None and cur is not None and self._mimi_done is not None:
            cur.wait_event(self._mimi_done)  # the previous decode has read _mimi_in (long done by now)
        self._mimi_in[:n].copy_(self.buf.emitted[:n])
        if side is None or cur is None:
            self._reset_mimi(reset)
            self._run_mimi(n)
            self._host_pcm[:n].copy_(self.buf.pcm[:n], non_blocking=self._cuda)
            return
        codes_ready = torch.cuda.Event()
        codes_ready.record(cur)
        with torch.cuda.stream(side):
            side.wait_event(codes_ready)
            self._reset_mimi(reset)
            self._run_mimi(n)
            self._host_pcm[:n].copy_(self.buf.pcm[:n], non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        self._mimi_done = done

    def _reset_mimi(self, slots: list[int]) -> None:
        if slots:
            mask = torch.zeros(self.options.capacity, dtype=torch.bool)
            mask[slots] = True
            self._mimi_master.reset(mask.to(self.device))

    def _run_mimi(self, n: int) -> None:
        graphs = self._graphs.get(n)
        if graphs is not None and graphs[2] is not None:
            graphs[2].replay()
        else:
            self._decode_audio(n)

    def _flush_audio(self) -> None:
        """Hand out the chunks whose audio was decoding (waits for that decode if it still runs)."""
        if not self._pending:
            return
        if self._mimi_done is not None:
            self._mimi_done.synchronize()
        pending, self._pending = self._pending, []
        for turn, slot, chunk in pending:
            if turn.cancelled:
                continue
            chunk.pcm = self._host_pcm[slot].clone()
            turn.sink(chunk)

    # --- a lane step ------------------------------------------------------------------------------

    def _lane_step(self, lane: list[CallState]) -> None:
        """One main-only step for the lead-in calls ``lane`` only (``frame.lane_phase``)."""
        m = self.lane_buckets[bisect.bisect_left(self.lane_buckets, len(lane))]
        slots = [c.slot for c in lane] + [self.options.capacity] * (m - len(lane))
        self.lane_slots[:m].copy_(torch.tensor(slots, dtype=torch.long), non_blocking=False)
        need = max(self._host_index[c.slot] for c in lane) + 1
        kv_len = self.kv_buckets[bisect.bisect_left(self.kv_buckets, need)]
        graph = self._lane_graphs.get((m, kv_len))
        if graph is not None:
            graph.replay()
        else:
            lane_phase(self.model, self.buf, self.lane.view(m), self.lane_slots[:m], self.consts, self._gen,
                       self.fused, kv_len)
        if self._cuda:
            self._host_action[:m].copy_(self.lane.action[:m], non_blocking=True)
            done_main = torch.cuda.Event()
            done_main.record()
        self._flush_audio()  # audio of the last full step, decoding meanwhile
        if self._cuda:
            done_main.synchronize()
            actions = self._host_action[:m].tolist()
        else:
            actions = self.lane.action[:m].tolist()
        for i, call in enumerate(lane):
            self._advance_text(call, actions[i])
        r = self.options.capacity * self.branches
        self.buf.text_in[:r].copy_(self._host_text[:r], non_blocking=self._cuda)
        self._host_bad[:m].copy_(self.lane.bad_code[:m], non_blocking=self._cuda)  # lane entry order
        if self._cuda:
            torch.cuda.current_stream().synchronize()
        self.lane_steps += 1
        self.lead_steps += 1
        bad = self._host_bad[:m].tolist()
        for i, call in enumerate(lane):
            self._host_index[call.slot] += 1
            self._after_step(call, bad[i])

    def _prime_finished_lead_ins(self, calls: list[CallState]) -> None:
        """Lane mode: a call whose lead-in just ended gets its Mimi row reset and fed the known frames
        the in-line path would have decoded during the lead-in (up to ``MIMI_PRIME_FRAMES``), in one
        multi-frame decode, on the Mimi stream (after any decode that touched the row)."""
        for call in calls:
            turn = call.turn
            if turn is None or not turn.prime_at_lead_end or turn.lead_done or self._in_lead_in(call):
                continue
            turn.lead_done = True
            codes = call.codes[:, turn.mimi_reset_frame : turn.start_frame]
            side = self._mimi_stream
            if side is not None:
                side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                if self._prime_graph is not None and codes.shape[1] == MIMI_PRIME_FRAMES:
                    # One graph replay, no host copy: the codes come from the ring (a kernel fill of
                    # the slot index keeps several primes in one step ordered on this stream).
                    self._prime_slot.fill_(call.slot)
                    self._prime_graph.replay()
                    continue
                dec = self._mimi_row(call.slot)  # eager: CPU, or a first reply with < 17 known frames
                dec.reset()
                if codes.shape[1]:
                    dec.decode_frame(codes.unsqueeze(0).to(self.device))

    def _prime_body(self) -> None:
        """Reset the scratch row, decode frames ``known - 17 .. known - 1`` of ``_prime_slot`` (still in
        its ring: a lead-in writes only frames >= known, 15+ steps away from wrapping onto these), and
        copy the scratch state into the master's row of that slot."""
        dec = self._prime_dec
        dec.reset()
        slot = self._prime_slot
        frames = self.buf.known.index_select(0, slot) - MIMI_PRIME_FRAMES + torch.arange(
            MIMI_PRIME_FRAMES, device=self.device
        )
        ring = self.buf.ring.index_select(0, slot)  # [1, K, RING]
        codes = ring.gather(2, frames.remainder(RING).view(1, 1, -1).expand(1, ring.shape[1], -1))
        dec.decode_frame(codes)
        for dst, src in zip(self._mimi_master.state.tensors(), dec.state.tensors(), strict=True):
            dst.index_copy_(0, slot, src)

    def _mimi_row(self, slot: int) -> Any:
        dec = self._mimi_rows.get(slot)
        if dec is None:
            from .mimi_stream import MimiStreamState, StreamingMimiDecoder

            dec = StreamingMimiDecoder(self.mimi.model, batch_size=1)
            s, r = self._mimi_master.state, slice(slot, slot + 1)
            dec.state = MimiStreamState(
                offset=s.offset[r], fresh=s.fresh[r],
                conv_history=[t[r] for t in s.conv_history], convtr_tail=[t[r] for t in s.convtr_tail],
                keys=[t[r] for t in s.keys], values=[t[r] for t in s.values],
            )
            self._mimi_rows[slot] = dec
        return dec

    def _step_of(self, call: CallState) -> int:
        assert call.turn is not None
        return call.turn.start_frame + call.turn.steps

    def _in_lead_in(self, call: CallState) -> bool:
        """True while every codebook 1..K-1 code this step writes is of a known frame (or before 0):
        the first 17 steps of a reply (Dia2-2B), which then need only the main decoder."""
        assert call.turn is not None
        # start_frame >= 0, so this also covers frames before 0 (a first turn without history).
        return self._step_of(call) + 1 - self._dep_min_delay < call.turn.start_frame

    def _run_main(self, n: int, kv_len: int | None = None) -> None:
        kv_len = kv_len or self.max_steps
        graph = self._main_graphs.get((n, kv_len))
        if graph is not None:
            graph.replay()
        else:
            main_phase(self.model, self.buf.view(n), self.consts, self._gen, self.fused, kv_len)

    def _run_depformer(self, n: int, lead: bool = False) -> None:
        graphs = self._graphs.get(n)
        if graphs is None:
            if lead:
                finish_phase(self.buf.view(n), self.consts)
            else:
                depformer_phase(self.model, self.buf.view(n), self.consts, self._gen, self.fused)
        else:
            graphs[3 if lead else 1].replay()

    def _decode_audio(self, n: int) -> None:
        pcm = self._mimi[n].decode_frame(self._mimi_in[:n].unsqueeze(-1))
        self.buf.pcm[:n].copy_(pcm.clamp(-1.0, 1.0))

    def _advance_text(self, call: CallState, action: int) -> None:
        turn = call.turn
        assert turn is not None
        t = self._step_of(call)
        out = self.machine.process(t, call.machine, action)
        call.text.append((out.main, out.second))
        rows = slice(call.slot * self.branches, (call.slot + 1) * self.branches)
        self._host_text[rows, 0] = out.main
        self._host_text[rows, 1] = out.second

    def _after_step(self, call: CallState, bad_code: bool = False) -> None:
        turn = call.turn
        assert turn is not None
        t = self._step_of(call)
        turn.steps += 1
        frame = t - self.max_delay + 1
        if frame >= turn.start_frame and not turn.cancelled:
            codes = self._host_codes[call.slot].clone()
            call.codes = torch.cat([call.codes, codes.view(-1, 1)], dim=1)
            turn.chunks += 1
            # The audio is filled in by _flush_audio once the decode is done (at once on the CPU path).
            self._pending.append((turn, call.slot, AudioChunk(self._host_pcm[call.slot], codes, frame, t)))
        if turn.end_step is None and call.machine.end_step is not None:
            turn.end_step = call.machine.end_step
        if bad_code:
            # The frame math replaced the code (frame._write_code), so nothing invalid reaches Mimi or
            # the decoder; the reply cannot be trusted any more, so it ends here (complete frames kept).
            self.invalid_codes += 1
            logger.error("call %d: the sampler produced an audio code outside 0..%d at step %d; "
                         "reply ended", call.slot, self.consts.code_limit - 1, t)
            self._finish_turn(call)
            return
        finished = (
            (turn.end_step is not None and t + 1 >= turn.end_step + self.max_delay + self.machine.max_padding)
            or turn.steps >= self.options.max_reply_steps
            or t + 2 >= self.max_steps
        )
        if finished:
            self._finish_turn(call)

    def _finish_turn(self, call: CallState) -> None:
        """End the reply: history keeps its complete frames, the cache is rewound to them."""
        turn = call.turn
        if turn is None:
            return
        self._flush_audio()  # the last chunks before the end marker
        call.turn = None
        end = call.frames  # frames emitted so far are exactly the complete ones
        del call.text[end + 1 :]
        if end > turn.start_frame:
            call.segments.append(("reply", turn.start_frame, end))
        call.machine.entries.clear()
        call.machine.pending_tokens.clear()
        call.machine.lookahead_tokens.clear()
        call.machine.awaiting_text = False
        self.buf.active[call.slot] = False
        turn.script = None
        turn.sink(None)

    def _feed_script(self, call: CallState, delta: str, *, final: bool) -> None:
        turn = call.turn
        assert turn is not None and turn.script is not None
        call.machine.entries.extend(turn.script.feed(delta, final=final))
        if final:
            call.machine.awaiting_text = False

    # ---------------------------------------------------------------------------------------------
    # Rows, ingest, context policy
    # ---------------------------------------------------------------------------------------------

    def _load_row(self, call: CallState, *, active: bool) -> None:
        """Point the call's device rows at its history: next step = ``frames``, ring = last frames."""
        buf, s, br = self.buf, call.slot, self.branches
        a = call.frames
        rows = slice(s * br, (s + 1) * br)
        buf.step[s] = a
        buf.known[s] = a
        buf.positions[rows] = a
        buf.cache_index[rows] = a
        self._host_index[s] = a
        ring = torch.zeros(self.num_codebooks, RING, dtype=torch.long)
        lo = max(0, a - RING)
        if a > lo:
            idx = torch.arange(lo, a)
            ring[:, idx % RING] = call.codes[:, lo:a]
        buf.ring[s].copy_(ring.to(self.device))
        main, second = call.text[a]
        self._host_text[rows, 0], self._host_text[rows, 1] = main, second
        buf.text_in[rows] = torch.tensor([main, second], device=self.device)
        if call.turn is not None:
            o = call.turn.options
            buf.cfg_scale[s] = o.cfg_scale
            buf.text.set_row(s, o.text)
            buf.audio.set_row(s, o.audio)
        buf.active[s] = active

    def _step_tokens(self, call: CallState, start: int, stop: int) -> torch.Tensor:
        """Decoder inputs ``[branches, stop - start, C]`` of known steps (text recorded, audio known)."""
        steps = torch.arange(start, stop).view(-1, 1)
        frames = steps - torch.tensor(self.delays).view(1, -1)  # [T, K]
        safe = frames.clamp(min=0, max=max(call.frames - 1, 0))
        audio = call.codes.t()[safe, torch.arange(self.num_codebooks)] if call.frames else torch.zeros_like(
            frames
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

    def _prefill(self, call: CallState, start: int, stop: int) -> Any:
        if stop <= start:
            return None
        tokens = self._step_tokens(call, start, stop).to(self.device)
        br = self.branches
        pos = torch.arange(start, stop, device=self.device).view(1, -1).expand(br, -1)
        rows = slice(call.slot * br, (call.slot + 1) * br)
        cache = DecoderCache(self.buf.cache.keys[:, rows], self.buf.cache.values[:, rows])
        with torch.inference_mode():
            return self.model.transformer.prefill(tokens, pos, pos, cache)

    def _ingest(
        self, call: CallState, kind: str, codes: torch.Tensor, entries: list[Entry], steps: list[int]
    ) -> Any:
        """Known frames (and their forced words) into history and cache, in one prefill."""
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
        return self._prefill(call, a0, a0 + n)

    def _ensure_room(self, call: CallState, need: int, *, keep_half: bool = True) -> None:
        """Context policy: keep the voice, drop the oldest turns until ``need`` more steps fit, re-warm."""
        limit = self.max_steps - 1
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
        logger.info("call %d: context full, re-warmed %d frames (%d turns dropped so far)",
                    call.slot, call.frames, call.dropped_segments)
        self._prefill(call, 0, call.frames)
        if need <= 0 or call.frames + need > limit:
            raise RuntimeError(f"context of {self.max_steps} steps cannot hold the voice and a turn")

    # ---------------------------------------------------------------------------------------------
    # CUDA graphs
    # ---------------------------------------------------------------------------------------------

    def _capture_all(self) -> None:
        """Capture the frame graphs of every bucket once (main step; depformer; Mimi decode), then clear
        the buffers the warm-up touched. A failed capture leaves that part eager (logged, reported)."""
        pool = torch.cuda.graph_pool_handle()
        # The Mimi graphs replay on their own stream beside the frame graphs: a pool of their own, so
        # the two never share scratch memory.
        mimi_pool = torch.cuda.graph_pool_handle()
        self.buf.active.fill_(True)
        self.graph_errors = []
        with torch.inference_mode():
            for n in self.buckets:
                view = self.buf.view(n)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up: lazy inits, cuBLAS handles, allocator
                        main_phase(self.model, view, self.consts, None, self.fused)
                        depformer_phase(self.model, view, self.consts, None, self.fused)
                        finish_phase(view, self.consts)
                        self._decode_audio(n)
                    for kv_len in self.kv_buckets:
                        main_phase(self.model, view, self.consts, None, self.fused, kv_len)
                torch.cuda.current_stream().wait_stream(side)
                try:
                    g_main, g_dep, g_lead = (torch.cuda.CUDAGraph() for _ in range(3))
                    with torch.cuda.graph(g_main, pool=pool):
                        main_phase(self.model, view, self.consts, None, self.fused)
                    with torch.cuda.graph(g_dep, pool=pool):
                        depformer_phase(self.model, view, self.consts, None, self.fused)
                    with torch.cuda.graph(g_lead, pool=pool):
                        finish_phase(view, self.consts)
                    for kv_len in self.kv_buckets[:-1]:
                        g = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(g, pool=pool):
                            main_phase(self.model, view, self.consts, None, self.fused, kv_len)
                        self._main_graphs[(n, kv_len)] = g
                    self._main_graphs[(n, self.max_steps)] = g_main
                except RuntimeError as exc:
                    logger.exception("frame graph capture failed for %d calls; running eagerly", n)
                    self.graph_errors.append(f"frame[{n}]: {exc}")
                    continue
                g_mimi: Any = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(g_mimi, pool=mimi_pool):
                        self._decode_audio(n)
                except RuntimeError as exc:
                    logger.exception("Mimi graph capture failed for %d calls; decoding eagerly", n)
                    self.graph_errors.append(f"mimi[{n}]: {exc}")
                    g_mimi = None
                self._graphs[n] = (g_main, g_dep, g_mimi, g_lead)
                logger.info("captured frame graphs for %d calls", n)
            if self.lane_on:
                self._capture_lane(pool)
                self._capture_prime(mimi_pool)
        torch.cuda.synchronize()
        for t in (self.buf.step, self.buf.known, self.buf.positions, self.buf.cache_index, self.buf.ring):
            t.zero_()
        self._host_index = [0] * self.options.capacity
        self.buf.active.fill_(False)
        self.lane_slots.fill_(self.options.capacity)
        self._mimi_master.reset()

    def _capture_prime(self, pool: Any) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._prime_body()
        torch.cuda.current_stream().wait_stream(side)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self._prime_body()
            self._prime_graph = g
        except RuntimeError as exc:
            logger.exception("Mimi priming graph capture failed; priming eagerly")
            self.graph_errors.append(f"prime: {exc}")

    def _capture_lane(self, pool: Any) -> None:
        """Lane graphs: one per (lane bucket, KV length), captured on real slots 0..m-1."""
        for m in self.lane_buckets:
            self.lane_slots[:m].copy_(torch.arange(m, device=self.device))
            args = (self.model, self.buf, self.lane.view(m), self.lane_slots[:m], self.consts, None,
                    self.fused)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for kv_len in self.kv_buckets:
                    lane_phase(*args, kv_len)
            torch.cuda.current_stream().wait_stream(side)
            try:
                for kv_len in self.kv_buckets:
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool):
                        lane_phase(*args, kv_len)
                    self._lane_graphs[(m, kv_len)] = g
            except RuntimeError as exc:
                logger.exception("lane graph capture failed for %d calls; running eagerly", m)
                self.graph_errors.append(f"lane[{m}]: {exc}")
                self._lane_graphs = {k: v for k, v in self._lane_graphs.items() if k[0] != m}
        logger.info("captured lane graphs for %s calls", self.lane_buckets)

    # ---------------------------------------------------------------------------------------------
    # Introspection
    # ---------------------------------------------------------------------------------------------

    def describe(self, call: CallState) -> dict[str, Any]:
        turn = call.turn
        return {
            "slot": call.slot,
            "context_steps": call.frames,
            "max_context_steps": self.max_steps,
            "speaking": turn is not None,
            "reply_chunks": turn.chunks if turn else 0,
            "segments": list(call.segments),
            "dropped_turns": call.dropped_segments,
            "words_waiting": len(call.machine.entries),
            "awaiting_text": call.machine.awaiting_text,
        }


def _kernel_choice(opts: EngineOptions, model: Dia2Model, cuda: bool) -> tuple[bool, bool]:
    """(Triton kernels, programmatic dependent launch) for the fused path. ``kernels=None`` means "where
    they can run"; ``True`` insists and names what is missing."""
    from .fused import kernels_supported

    kernels = False
    if opts.kernels is not False:
        why = kernels_supported(model)
        if why is not None and opts.kernels:
            raise ValueError(f"EngineOptions.kernels=True, but the depformer kernels cannot run: {why}")
        kernels = why is None and (opts.kernels or cuda)
    if opts.pdl is False:
        return kernels, False
    why = "the Triton kernels are off"
    if kernels:
        from .kernels import pdl_supported

        why = pdl_supported(model.device)
    if why is not None and opts.pdl:
        raise ValueError(f"EngineOptions.pdl=True, but the kernels cannot use PDL: {why}")
    return kernels, why is None
