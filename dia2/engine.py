"""The conversation engine: many calls advance together, one batched frame per step.

One :class:`BatchEngine` owns the calls; around it, each owning its own state: ``dia2/engine_state.py``
(the model, the static frame buffers of ``dia2/frame.py``, the KV cache or its block pool, the lane's
buffers, built once), ``dia2/replies.py`` (a call's reply from speak to its end, barge-in cuts),
``dia2/engine_thread.py`` (the engine thread and its command queue), ``dia2/stepper.py`` (one step),
``dia2/mimi_rows.py`` (one streaming Mimi decoder row per call, priming, the second stream),
``dia2/graphs.py`` (the captured CUDA graphs, or the same phases run eagerly) and ``dia2/lanes.py`` (the
lead-in lane's scheduler). Each call (a :class:`CallState`, ``dia2/call_state.py``)
owns a *slot*: its ``branches`` rows of the KV cache, its ring of recent frames, its Mimi row. The host
side of a call is its text state machine, its history (every known frame and the text input of every
step) and the turn in progress. The engine keeps the call lifecycle (open, voice, caller turns, reset,
close), the step loop and the public API the parts sit behind.

Threading: all methods named without a leading ``submit`` run on the *engine thread* (or, in tests and
the benchmark, on the caller's thread with no engine thread at all). :meth:`BatchEngine.start` runs the
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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .call_state import (
    DEFAULT_BUCKETS,
    AudioChunk,
    CallState,
    ContextOverflowError,
    EngineOptions,
    Sink,
    SpeakOptions,
    VoicePrompt,
)
from .encode_graphs import EncodeGraphs
from .encode_worker import EncodeWorker
from .engine_state import EngineState
from .engine_thread import EngineThread
from .history import ContextMark
from .lanes import LaneScheduler
from .mimi_rows import MIMI_PRIME_FRAMES
from .model import Dia2Model
from .paged_kv import KVPoolExhaustedError
from .prefill_graphs import PrefillGraphs
from .prefix import SPEAKER1_STEP_OFFSET, PrefixWord, words_to_entries
from .replies import ReplyControl
from .script import WordEncoder
from .state_machine import Entry, TokenIds
from .stepper import FrameStepper
from .wavfile import resample_linear

__all__ = [
    "DEFAULT_BUCKETS",
    "MIMI_PRIME_FRAMES",
    "AudioChunk",
    "BatchEngine",
    "CallState",
    "ContextMark",
    "ContextOverflowError",
    "EngineOptions",
    "KVPoolExhaustedError",
    "SpeakOptions",
    "VoicePrompt",
]

logger = logging.getLogger(__name__)


# Padded samples per batched Mimi encode of caller turns: 100 s of audio (~0.6 GB for the encoder's first
# layer in float32), e.g. 33 three-second turns; a longer turn goes alone.
_ENCODE_BATCH_SAMPLES = 2_400_000


def _encode_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped shortest first so that each group's rows x longest stays within ``budget`` (a row
    longer than the budget alone): similar lengths together waste the least padding."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * lengths[i] <= budget:
            group.append(i)
        else:
            groups.append([i])
    return groups


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
        self.state = st = EngineState.build(
            model, ids, encoder, mimi, options or EngineOptions(), second_stream_ahead
        )
        # Handles on the state's parts (the same objects, never copies): the step loop, tests and benches
        # read them here.
        self.model, self.ids, self.encoder, self.mimi, self.options = model, ids, encoder, mimi, st.options
        self.device, self.branches, self.num_codebooks = st.device, st.branches, st.num_codebooks
        self.delays, self.max_delay, self.max_steps = st.delays, max(st.delays), st.max_steps
        self.frame_rate, self.machine, self.pool = st.frame_rate, st.machine, st.pool
        self.buf, self.consts, self.fused, self.graphs = st.buf, st.consts, st.fused, st.graphs
        self.buckets, self.kv_buckets, self.lane_buckets = st.buckets, st.kv_buckets, st.lane_buckets
        self.lane_on, self.lane, self.lane_slots = st.lane_on, st.lane, st.lane_slots
        self.mimi_rows, self.history = st.mimi_rows, st.history
        self.replies = ReplyControl(st)
        opts = st.options
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
            self.replies.finish,
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
            capacity=st.lane_capacity,
            min_call_fps=opts.min_call_fps,
            first_chunk_first=opts.first_chunk_first,
            steps_per_full=opts.lane_steps_per_full,
            in_lead_in=self.stepper.in_lead_in,
        )
        self.calls: dict[int, CallState] = {}
        self.kv_pool_ends = 0  # replies ended because the paged KV pool had no block for them
        self.mimi_encodes = 0  # Mimi encoder runs (voices, caller turns): what cached VoicePrompts save
        # Caller turns queued before one drain: encoded in one batch, their cache prefilled in one batch.
        self._deferred: list[tuple[CallState, int, int]] = []
        worker = opts.encode_thread if opts.encode_thread is not None else st.cuda
        priority = opts.stream_priority if st.cuda else None
        turn_encoder = EncodeWorker(self.encode_turns, cuda=st.cuda, priority=priority) if worker else None
        self.thread = EngineThread(self.step, self.encode_turns, self.flush_prefills, turn_encoder, priority)
        if st.cuda and opts.cuda_graphs:
            self.graphs.capture(self.lane_on)
            self.history.host_index = [0] * opts.capacity
        self._prefill_graphs(st.cuda)
        self.encode_graphs: EncodeGraphs | None = None
        want = opts.encode_graphs
        if want or (want is None and st.cuda and opts.cuda_graphs):
            self.encode_graphs = EncodeGraphs(self.mimi)
            self.encode_graphs.capture()

    def _prefill_graphs(self, cuda: bool) -> None:
        """EngineOptions.prefill_graphs: the cache's prefills through bucketed graphs (captured on CUDA with
        cuda_graphs; eager on the same bucketed inputs otherwise)."""
        want = self.options.prefill_graphs
        if want or (want is None and cuda and self.options.cuda_graphs):
            self.history.graphs = self.new_prefill_graphs()
            if cuda and self.options.cuda_graphs:
                self.history.graphs.capture()

    def new_prefill_graphs(self, **buckets: tuple[int, ...]) -> PrefillGraphs:
        """Prefill buckets over this engine's dense cache (``call_buckets``/``frame_buckets`` override the
        defaults), not yet captured nor in use."""
        return PrefillGraphs(
            self.model,
            self.buf.cache,
            branches=self.branches,
            codebook_channels=2 + self.num_codebooks,
            device=self.device,
            **buckets,
        )

    @property
    def graph_errors(self) -> list[str]:
        """Captures that failed (that part runs eagerly)."""
        prefill, encode = self.history.graphs, self.encode_graphs
        return (
            self.graphs.errors
            + (prefill.errors if prefill is not None else [])
            + (encode.errors if encode is not None else [])
        )

    # Step counters (the stepper's): full steps, lane steps, steps without the depformer, replies ended
    # on an impossible code.
    steps_run = property(lambda self: self.stepper.steps_run)
    lane_steps = property(lambda self: self.stepper.lane_steps)
    lead_steps = property(lambda self: self.stepper.lead_steps)
    invalid_codes = property(lambda self: self.stepper.invalid_codes)
    # ---------------------------------------------------------------------------------------------
    # Threading (dia2/engine_thread.py)
    # ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the engine loop in a daemon thread (idempotent)."""
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn()`` on the engine thread between two steps; thread-safe, returns a future."""
        return self.thread.submit(fn)

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
        # encode_turns, as submit_turn does: a turn's codes are the same whether it was batched or not.
        self.user_spoke_prompt(call, VoicePrompt(self.encode_turns([audio])[0], tuple(words)))

    def submit_turn(
        self, call: CallState, audio: torch.Tensor, words: Sequence[PrefixWord], *, end_reply: bool = False
    ) -> concurrent.futures.Future[None]:
        """:meth:`user_spoke` on the engine thread (thread-safe), the audio's Mimi encode batched with
        every other turn queued before the same drain (:meth:`EngineThread.submit_encoded`).
        ``end_reply``: a reply still in progress ends first (no further chunk) instead of the turn failing:
        the caller spoke again before it was done, so it answers nothing any more."""
        kept = tuple(words)

        def ingest(codes: torch.Tensor) -> None:
            if end_reply and call.turn is not None:
                self.replies.cancel(call)
            self.user_spoke_prompt(call, VoicePrompt(codes, kept), defer_prefill=True)

        return self.thread.submit_encoded(audio, ingest)

    def encode_turns(self, audio: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mimi codes (on the host) of several 24 kHz recordings, in batches of at most
        ``_ENCODE_BATCH_SAMPLES`` padded samples (the encoder's activations grow with rows x longest)."""
        codes: list[torch.Tensor] = [torch.empty(0)] * len(audio)
        encoder = (
            self.encode_graphs or self.mimi
        )  # the graphs fall back to the codec where none holds a batch
        for batch in _encode_batches([int(a.numel()) for a in audio], _ENCODE_BATCH_SAMPLES):
            for i, c in zip(batch, encoder.encode_many([audio[i] for i in batch]), strict=True):
                codes[i] = c.cpu()
            self.mimi_encodes += len(batch)
        return codes

    def user_spoke_prompt(self, call: CallState, prompt: VoicePrompt, *, defer_prefill: bool = False) -> None:
        """The caller's turn from precomputed codes (:meth:`encode_voice`). ``defer_prefill``: the cache
        is filled by the next :meth:`flush_prefills` (the engine thread's drain batches them)."""
        entries, steps = words_to_entries(prompt.words, self.encoder, "[S2]", self.frame_rate)
        self.ingest_codes(call, prompt.codes, entries, steps, defer_prefill=defer_prefill)

    def flush_prefills(self) -> None:
        """Fill the cache with every deferred turn's frames, in one batched forward. Runs on the engine
        thread before any other command and before the next step, so nothing reads a call's cache before
        its frames are in. A failed batch rebuilds each of its calls' cache alone (from frame 0)."""
        spans, self._deferred = self._deferred, []
        if not spans:
            return
        try:
            self.history.prefill_many(spans)
        except Exception:
            logger.exception("batched prefill of %d turns failed; prefilling each call alone", len(spans))
            for call in {id(c): c for c, _, _ in spans}.values():
                self.history.prefill(call, 0, call.frames)

    def ingest_codes(
        self,
        call: CallState,
        codes: torch.Tensor,
        entries: list[Entry],
        steps: list[int],
        kind: str = "user",
        *,
        defer_prefill: bool = False,
    ) -> None:
        if any(c is call for c, _, _ in self._deferred):
            self.flush_prefills()  # its context policy below may move frames a deferred span points at
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
        span = self.history.ingest(call, kind, codes.cpu(), entries, steps, prefill=not defer_prefill)
        if defer_prefill:
            self._deferred.append((call, *span))

    # ---------------------------------------------------------------------------------------------
    # Replies (dia2/replies.py)
    # ---------------------------------------------------------------------------------------------

    def speak(
        self,
        call: CallState,
        text: str | None,
        sink: Sink,
        options: SpeakOptions | None = None,
        *,
        more_text: bool = False,
    ) -> None:
        """Start a reply (:meth:`dia2.replies.ReplyControl.speak`)."""
        self.replies.speak(call, text, sink, options, more_text=more_text)

    def push_text(self, call: CallState, delta: str, *, final: bool = False) -> None:
        self.replies.push_text(call, delta, final=final)

    def cancel(self, call: CallState) -> None:
        """Barge-in: no further chunk for this reply (:meth:`dia2.replies.ReplyControl.cancel`)."""
        self.replies.cancel(call)

    def keep_played(
        self, call: CallState, start_frame: int, frames: int, first_codes: torch.Tensor | None = None
    ) -> int:
        """Barge-in: drop what the caller did not hear (:meth:`dia2.replies.ReplyControl.keep_played`)."""
        return self.replies.keep_played(call, start_frame, frames, first_codes)

    def mark(self, call: CallState) -> ContextMark:
        """An opaque position of the call's context (speculative reply, issue 17): :meth:`rewind` puts the
        call back here, as if nothing after it had happened. Taken between replies."""
        if call.turn is not None:
            raise RuntimeError("a reply is in progress: a mark is taken between replies")
        return self.history.mark(call)

    def rewind(self, call: CallState, mark: ContextMark) -> None:
        """Discard everything since ``mark``: a reply in progress ends (no further chunk), then the call's
        context is the mark's again (:meth:`CallHistory.restore`)."""
        self.replies.cancel(call)
        self.history.restore(call, mark)

    def _finish_turn(self, call: CallState) -> None:
        self.replies.finish(call)

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
                t0 = self.scheduler.clock()
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
