"""The conversation engine: many calls advance together, one batched frame per step.

One :class:`BatchEngine` owns the model, the static frame buffers (``dia2/frame.py``) and the calls; around
it, each owning its own state: ``dia2/mimi_rows.py`` (one streaming Mimi decoder row per call, priming,
the second stream), ``dia2/graphs.py`` (the captured CUDA graphs, or the same phases run eagerly) and
``dia2/lanes.py`` (the lead-in lane's scheduler). Each call (a :class:`CallState`, ``dia2/call_state.py``)
owns a *slot*: its ``branches`` rows of the KV cache, its ring of recent frames, its Mimi row. The host
side of a call is its text state machine, its history (every known frame and the text input of every
step) and the turn in progress. The engine keeps the thread shell, the call lifecycle, the step loop and
the context policy.

Threading: all methods named without a leading ``submit`` run on the *engine thread* (or, in tests and
the benchmark, on the caller's thread with no engine thread at all). :meth:`Engine.start` runs the
loop in its own thread: GPU work and the per-frame host sync then never block the asyncio loop of the
SIP supervisor, and ``dia2.conversation`` talks to it through :meth:`BatchEngine.submit` (thread-safe) and
per-turn sinks that hop back with ``loop.call_soon_threadsafe``. See docs/DIA2.md for why a thread and
not an asyncio task.

Conversation model (docs/DIA2.md has the full story): steps and aligned frames advance together.
Between turns a call's cache holds exactly the steps ``0 .. frames - 1``; a turn that ingests ``n``
known frames (voice prefix, caller audio) feeds steps ``frames .. frames + n - 1`` in one prefill; a
spoken turn starts at step ``frames``, forces the codes of frames it already knows, and ends with its
last complete frame, so the next turn starts where the history is fully known.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .call_state import (
    DEFAULT_BUCKETS,
    AudioChunk,
    CallState,
    ContextOverflowError,
    EngineOptions,
    ReplyState,
    Sink,
    SpeakOptions,
    VoicePrompt,
)
from .frame import RING, FrameBuffers, FrameConstants
from .graphs import FrameGraphs, kernel_choice
from .history import CallHistory
from .lanes import LaneScheduler
from .mimi_rows import MIMI_PRIME_FRAMES, MimiRows
from .model import Dia2Model
from .paged_kv import BlockPool, KVPoolExhaustedError, blocks_for
from .prefix import SPEAKER1_STEP_OFFSET, PrefixWord, words_to_entries
from .script import ScriptStream, WordEncoder
from .state_machine import Entry, StateMachine, TokenIds
from .stepper import FrameStepper
from .wavfile import resample_linear

__all__ = [
    "DEFAULT_BUCKETS",
    "MIMI_PRIME_FRAMES",
    "AudioChunk",
    "BatchEngine",
    "CallState",
    "ContextOverflowError",
    "EngineOptions",
    "KVPoolExhaustedError",
    "SpeakOptions",
    "VoicePrompt",
]

logger = logging.getLogger(__name__)


class BatchEngine:
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
        self.model, self.ids, self.encoder, self.mimi = model, ids, encoder, mimi
        self.options = opts = options or EngineOptions()
        config = model.config
        self.device = model.device
        self._cuda = self.device.type == "cuda"
        self.branches = 2 if opts.cfg else 1
        self.num_codebooks = config.data.num_codebooks
        self.delays = list(config.data.delay_pattern)
        self.max_delay = max(self.delays)
        if self.max_delay + 2 > RING:
            raise ValueError(f"delays up to {self.max_delay} need a ring longer than {RING}")
        self.max_steps = min(
            opts.max_context_steps or config.runtime.max_context_steps, model.transformer.rope_length
        )
        self.frame_rate = float(mimi.sample_rate) / float(mimi.frame_size)
        self.machine = StateMachine(
            ids,
            second_stream_ahead=config.data.second_stream_ahead
            if second_stream_ahead is None
            else second_stream_ahead,
            max_padding=opts.max_padding,
            initial_padding=opts.initial_padding,
        )
        self.pool = self._block_pool(opts) if opts.paged_kv else None
        # One spare call entry: the lane's padding entries point there (frame.lane_phase).
        self.buf = FrameBuffers.allocate(
            model,
            opts.capacity,
            self.branches,
            self.max_steps,
            mimi.frame_size,
            spare=1,
            cache=self.pool.cache if self.pool is not None else None,
        )
        self.consts = FrameConstants(
            ids,
            torch.tensor(self.delays, dtype=torch.long, device=self.device),
            opts.cfg_filter_k,
            opts.max_top_k,
        )
        self.buckets = sorted({b for b in opts.buckets if b < opts.capacity} | {opts.capacity})
        kv = opts.kv_buckets
        if self.pool is not None:  # whole blocks: a bucket's length is what the gathered blocks hold
            size = opts.kv_block_size
            kv = tuple(blocks_for(b, size) * size for b in kv)
        self.kv_buckets = sorted({b for b in kv if 0 < b < self.max_steps} | {self.max_steps})
        self.mimi_rows = MimiRows(
            mimi.model,
            self.buf,
            opts.capacity,
            self.buckets,
            self.num_codebooks,
            mimi.frame_size,
            overlap=opts.overlap_mimi,
        )
        # Lead-in lane: small buffers (their KV cache is a per-step gather of the master's rows).
        self.lane_on = opts.lead_in_lane and opts.skip_lead_in
        lane_cap = max(1, min(opts.lane_capacity, opts.capacity))
        self.lane_buckets = sorted({b for b in opts.buckets if b < lane_cap} | {lane_cap})
        self.lane = FrameBuffers.allocate(model, lane_cap, self.branches, 1, mimi.frame_size)
        self.lane_slots = torch.full((lane_cap,), opts.capacity, dtype=torch.long, device=self.device)
        self.fused = None
        use_fused = opts.fused if opts.fused is not None else self._cuda
        if use_fused:
            from .fused import FusedFrame

            kernels, pdl = kernel_choice(opts.kernels, opts.pdl, model, self._cuda)
            self.fused = FusedFrame(
                model,
                self.consts,
                self.branches,
                compile=opts.compile and self._cuda,
                kernels=kernels,
                capacity=opts.capacity,
                pdl=pdl,
                kernel_max_rows=None
                if opts.kernel_max_calls is None
                else opts.kernel_max_calls * self.branches,
            )
        self.history = CallHistory(
            model,
            ids,
            self.machine,
            self.buf,
            branches=self.branches,
            delays=self.delays,
            num_codebooks=self.num_codebooks,
            max_steps=self.max_steps,
            capacity=opts.capacity,
            pool=self.pool,
        )
        gen: torch.Generator | None = None
        if not self._cuda:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(opts.seed if opts.seed is not None else 0)
        elif opts.seed is not None:
            torch.cuda.manual_seed(opts.seed)
        self.graphs = FrameGraphs(
            model,
            self.consts,
            self.buf,
            self.lane,
            self.lane_slots,
            self.mimi_rows,
            self.fused,
            gen,
            buckets=self.buckets,
            kv_buckets=self.kv_buckets,
            lane_buckets=self.lane_buckets,
        )
        self.stepper = FrameStepper(
            opts,
            self.machine,
            self.consts,
            self.buf,
            self.lane,
            self.lane_slots,
            self.history,
            self.graphs,
            self.mimi_rows,
            self._finish_turn,
            delays=self.delays,
            branches=self.branches,
            max_steps=self.max_steps,
            buckets=self.buckets,
            kv_buckets=self.kv_buckets,
            lane_buckets=self.lane_buckets,
            lane_on=self.lane_on,
            overlap=model.depformer.text_embed is None,
        )
        self.scheduler = LaneScheduler(
            on=self.lane_on,
            capacity=lane_cap,
            min_call_fps=opts.min_call_fps,
            first_chunk_first=opts.first_chunk_first,
            steps_per_full=opts.lane_steps_per_full,
            in_lead_in=self.stepper.in_lead_in,
        )
        self.calls: dict[int, CallState] = {}
        self.kv_pool_ends = 0  # replies ended because the paged KV pool had no block for them
        self.mimi_encodes = 0  # Mimi encoder runs (voices, caller turns): what cached VoicePrompts save
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        if self._cuda and opts.cuda_graphs:
            self.graphs.capture(self.lane_on)
            self.history.host_index = [0] * opts.capacity

    def _block_pool(self, opts: EngineOptions) -> BlockPool:
        """The paged KV pool: ``capacity`` calls x ``kv_pool_steps`` steps (average) in blocks, and a block
        table for every decoder row, the spare call entry's rows included (they stay on the trash block)."""
        dec = self.model.config.model.decoder
        steps = min(opts.kv_pool_steps or self.max_steps, self.max_steps)
        per_row = blocks_for(steps, opts.kv_block_size)
        return BlockPool(
            layers=dec.n_layer,
            kv_heads=dec.kv_heads,
            head_dim=dec.gqa_head_dim,
            rows=(opts.capacity + 1) * self.branches,
            max_steps=self.max_steps,
            block_size=opts.kv_block_size,
            blocks=opts.capacity * self.branches * per_row,
            device=self.device,
            dtype=self.model.dtype,
        )

    @property
    def graph_errors(self) -> list[str]:
        """Captures that failed (that part runs eagerly)."""
        return self.graphs.errors

    # Step counters (the stepper's): full steps, lane steps, steps without the depformer, replies ended
    # on an impossible code.
    steps_run = property(lambda self: self.stepper.steps_run)
    lane_steps = property(lambda self: self.stepper.lane_steps)
    lead_steps = property(lambda self: self.stepper.lead_steps)
    invalid_codes = property(lambda self: self.stepper.invalid_codes)
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
        self.history.shrink(call, 0)  # paged KV: the call's blocks go back to the pool
        mask = torch.zeros(self.buf.capacity, dtype=torch.bool)
        mask[call.slot] = True
        self.buf.reset(mask.to(self.device))
        self.history.host_index[call.slot] = 0
        self.calls.pop(call.slot, None)

    def encode_voice(self, audio: torch.Tensor, sample_rate: int, words: Sequence[PrefixWord]) -> VoicePrompt:
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
                "voice" if partner is None else "voice with its partner prefix",
                frames,
                self.max_voice_frames,
                self.max_steps,
                self.frame_rate,
                f" and a reply needs reply_reserve_steps={self.options.reply_reserve_steps}",
            )

    def set_voice(
        self,
        call: CallState,
        audio: torch.Tensor,
        words: Sequence[PrefixWord],
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
        self.history.shrink(call, 0)
        for codes, entries, steps in call.voice or []:
            self.history.ingest(call, "voice", codes, entries, steps)

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
            raise ContextOverflowError(
                what, n, most, self.max_steps, self.frame_rate, f" and the voice holds {voice} frames"
            )
        # The turn's frames must fit whole (no half-of-the-room cap, unlike a reply's reserve).
        self.history.ensure_room(call, min(n + 1, most), keep_half=False)
        self.history.ingest(call, kind, codes.cpu(), entries, steps)

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
        self.history.ensure_room(call, self.options.reply_reserve_steps)
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
        call.turn = ReplyState(
            start_frame=start,
            steps=0,
            options=opts,
            sink=sink,
            script=script,
            mimi_reset_frame=max(start - MIMI_PRIME_FRAMES, 0),
            prime_at_lead_end=self.lane_on,
        )
        self._feed_script(call, text or "", final=not more_text)
        self.history.load_row(call, active=True)

    def push_text(self, call: CallState, delta: str, *, final: bool = False) -> None:
        turn = call.turn
        if turn is None or turn.script is None:
            return  # the reply ended or was cancelled: late text is dropped
        self._feed_script(call, delta, final=final)

    def cancel(self, call: CallState) -> None:
        """Barge-in: no further chunk for this reply; its rows stop advancing from the next step.
        A chunk whose frame the last step produced (audio still decoding) is delivered first."""
        self.mimi_rows.flush()
        if call.turn is not None:
            call.turn.cancelled = True
            self._finish_turn(call)

    def keep_played(
        self, call: CallState, start_frame: int, frames: int, first_codes: torch.Tensor | None = None
    ) -> int:
        """Barge-in: of the reply that began at history frame ``start_frame`` the caller heard only the
        first ``frames`` frames; the rest leaves the call's history and cache, so the next reply is
        conditioned on what was heard, not on audio nobody heard. ``first_codes``: the codes of the
        reply's first chunk, checked against the history (a re-warm may have moved other frames there).
        Returns the frames dropped: 0 when there is nothing past ``frames``, that reply is no longer in
        the history as it was (the context policy re-warmed or dropped it), or another reply is in
        progress (history is not rewritten under a running reply)."""
        if call.turn is not None:
            if call.turn.start_frame != start_frame:
                return 0
            self.cancel(call)  # still speaking: cut here first (its complete frames become the segment)
        end = next((b for kind, a, b in call.segments if kind == "reply" and a == start_frame), None)
        keep = start_frame + max(frames, 0)
        if end is None or keep >= end:
            return 0
        if first_codes is not None and not torch.equal(call.codes[:, start_frame].cpu(), first_codes.cpu()):
            return 0
        self.history.drop_frames(call, keep, end)
        return end - keep

    # ---------------------------------------------------------------------------------------------
    # One step for every speaking call
    # ---------------------------------------------------------------------------------------------

    def speaking(self) -> list[CallState]:
        return [c for c in self.calls.values() if c.turn is not None]

    def step(self) -> bool:
        """Advance the speaking calls by one step: a full step (every speaking call one frame), or a
        lane step (only calls in their lead-in, main-only). Returns False when no call is speaking."""
        calls = self.speaking()
        for call in self.history.grow(calls):  # paged KV: a reply the pool cannot grow ends here
            self.kv_pool_ends += 1
            logger.warning(
                "call %d: the KV pool is out of blocks; reply ended at frame %d", call.slot, call.frames
            )
            self._finish_turn(call)
            calls.remove(call)
        if not calls:
            self.mimi_rows.flush()
            return False
        with torch.inference_mode():
            lane = self.scheduler.choose(calls)
            if lane:
                t0 = time.perf_counter()
                self.stepper.lane_step(lane)
                self.scheduler.lane_done(t0)
            else:
                t0 = self.scheduler.full_started()
                self.stepper.full_step(calls)
                self.scheduler.full_done(t0)
            self.stepper.prime_finished_lead_ins(calls)
            if self.mimi_rows.stream is None:
                self.mimi_rows.flush()
        return True

    def _finish_turn(self, call: CallState) -> None:
        """End the reply: history keeps its complete frames, the cache is rewound to them."""
        turn = call.turn
        if turn is None:
            return
        self.mimi_rows.flush()  # the last chunks before the end marker
        call.turn = None
        end = call.frames  # frames emitted so far are exactly the complete ones
        del call.text[end + 1 :]
        if end > turn.start_frame:
            call.segments.append(("reply", turn.start_frame, end))
        self.history.shrink(call, end)  # the cache is rewound to the complete frames
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
    # CUDA graphs
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
