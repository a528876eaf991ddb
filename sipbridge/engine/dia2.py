"""Dia2 engine adapter over dia2's conversation API (dia2/conversation.py, dia2/engine.py).

One `dia2.engine.BatchEngine` per supervisor advances every call's conversation in one batched step on its
own thread; each call gets a `dia2.conversation.EngineConversation` (one engine row, its own KV cache). This
adapter maps our engine interface onto it:

* `open_session` is synchronous in our interface, the conversation's `open` is not: the session opens its
  conversation lazily, and every operation waits for the one before it (`_chain`), so `user_spoke`
  (fire-and-forget here) always lands before the `speak` that answers it;
* Dia2 wants `PrefixWord`s with times: `wants_word_timings` makes the call session ask ASR for word
  timestamps (~30 % more ASR time, so only for this engine); plain text (no timings) is spread evenly;
* a voice prefix configured without its transcript is transcribed at start with the supervisor's ASR
  (timed words), cached by the WAV's content hash in `voice-transcripts.json` next to the database;
* a voice used many times (the configured prefix, the conversation API's named voices) is Mimi-encoded once
  (`prepare_voice`, a `dia2.engine.VoicePrompt`) and set from its codes; `health` counts encoder runs;
* a voice or turn longer than the context allows is refused by dia2 (`ContextOverflowError`, a
  ValueError) before the row changes, and leaves here as `EngineRejected`: the session stays usable;
* chunks come back as 1920-sample float32 tensors at 24 kHz and leave as numpy arrays;
* `word_times`: the step at which the text state machine took each word of the reply (its
  `MachineState.transcript`, appended on the engine thread) less the reply's first frame, in 80 ms frames:
  the text at step t and the audio frame t are aligned, so this is where the word starts in the audio;
* speaking ahead (turn.speculative_reply): `hear_ahead` marks the conversation (`EngineConversation.mark`)
  and hears the caller's turn so far, `speak_ahead` says the reply to it; `keep_ahead` leaves both in the
  context (the turn is not heard again), `forget_ahead` ends that reply and rewinds to the mark, so the
  context is that of a call that never had the guess. Any other `speak` forgets a held guess first: its
  reply must not follow a turn the caller may not have finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sipbridge.config import Dia2EngineConfig
from sipbridge.engine.base import (
    Chunk,
    EngineError,
    EngineRejected,
    PreparedVoice,
    SpeakParams,
    TextSource,
    Words,
    WordTime,
    text_pieces,
)
from sipbridge.text.frontend import DIA2_TAG, TextFrontend
from sipbridge.text.shape import ShapePolicy

if TYPE_CHECKING:
    from dia2.call_state import EngineOptions
    from sipbridge.asr import Transcriber

log = logging.getLogger(__name__)

_DEFAULT_MIMI = "kyutai/mimi"
# BENCHMARK ONLY (bench/system_load.py): random weights at real shapes instead of engine.dia2.model. An
# environment switch, never a config key, so no config file can turn it on; and it needs its confirmation
# beside it, so one stray variable refuses to start instead of speaking noise to callers.
BENCH_RANDOM_ENV = "SIPBRIDGE_BENCH_RANDOM_DIA2"  # a dia2 preset (2b, 1b) or a checkpoint folder (its shapes)
BENCH_CONFIRM_ENV = "SIPBRIDGE_I_KNOW_THIS_IS_A_BENCHMARK"
BENCH_CONFIRM_VALUE = "random weights speak noise"


def bench_random_shape(env: Mapping[str, str]) -> str | None:
    """The random-weights shape the benchmark switch asks for (None: load engine.dia2.model as always)."""
    shape = env.get(BENCH_RANDOM_ENV)
    if not shape:
        return None
    if env.get(BENCH_CONFIRM_ENV) != BENCH_CONFIRM_VALUE:
        raise EngineError(
            f"{BENCH_RANDOM_ENV} is set (random Dia2 weights: benchmarks only, callers would hear noise) "
            f"without {BENCH_CONFIRM_ENV}={BENCH_CONFIRM_VALUE!r}: refusing to start (unset the first)"
        )
    return shape


# Voice prefix transcripts by "<sha256 of the WAV>:<ASR model>", for this process (the JSON file persists).
_VOICE_CACHE: dict[str, list[tuple[str, float, float]]] = {}
_DIA2_POLICY = ShapePolicy(speaker_tag=DIA2_TAG, breaks=True)  # replaced by make_engine from the config


def spread_words(words: str, duration_s: float) -> list[tuple[str, float, float]]:
    """Evenly timed (word, start, end) over `duration_s`: ASR text has no timings."""
    tokens = words.split()
    if not tokens or duration_s <= 0:
        return []
    step = duration_s / len(tokens)
    return [(w, i * step, (i + 1) * step) for i, w in enumerate(tokens)]


def timed_words(words: Words, duration_s: float) -> list[Any]:
    """Dia2 `PrefixWord`s: timed triples as given, plain text spread evenly over the audio."""
    from dia2.prefix import PrefixWord

    triples = spread_words(words, duration_s) if isinstance(words, str) else list(words)
    return [PrefixWord(w, a, b) for w, a, b in triples]


def _prompt_of(voice: PreparedVoice) -> Any:
    if voice.engine != "dia2" or voice.data is None:
        raise EngineError(f"a voice prepared by the {voice.engine} engine cannot be used by dia2")
    return voice.data


def engine_options(cfg: Dia2EngineConfig, context_steps: int) -> EngineOptions:
    """The batch engine's options from engine.dia2 and the checkpoint's context length."""
    from dia2.call_state import EngineOptions  # torch: imported when a dia2 engine is made

    return EngineOptions(
        capacity=cfg.max_batch,
        cfg=cfg.cfg_scale > 1.0,
        reply_reserve_steps=min(250, context_steps // 4),
        max_reply_steps=min(1000, context_steps // 2),
        paged_kv=cfg.paged_kv,
        kv_pool_steps=cfg.kv_pool_steps,
        lane_capacity=cfg.lane_capacity,
        first_chunk_first=cfg.first_chunk_first,
        stream_priority=-1 if cfg.gpu_priority else None,
    )


@dataclass
class _Ahead:
    """A guess held by a session: the caller's turn heard ahead of its end and the reply spoken to it."""

    reply_state: tuple[Any, Any, int, int | None]  # the session's latest-reply bookkeeping before it
    mark: Any = None  # dia2's ContextMark, once taken (None: nothing of the guess reached the context)
    forgotten: bool = False
    speech: asyncio.Future[None] | None = None  # its reply being spoken; done once that reply has ended


@dataclass
class Dia2Session:
    call_id: str
    engine: Dia2Engine
    sample_rate: int = 24000
    last_heard: list[Any] = field(default_factory=list)  # PrefixWords of the latest caller turn
    dropped_frames: int = 0  # unheard reply frames taken out of the context after barge-ins (`played`)
    _first_chunk: Any = None  # the latest reply's first dia2 AudioChunk (its history frame and codes)
    # The latest reply's words (word_times): its machine state, the transcript length before it, its first
    # history frame (set by its first chunk; None until then).
    _machine: Any = None
    _words_from: int = 0
    _frame0: int | None = None
    _conv: Any = None
    _chain: asyncio.Task[None] | None = None
    _closed: bool = False
    speaks_ahead: bool = True  # mark/rewind: a discarded guess leaves no trace in the context
    _ahead: _Ahead | None = None  # the guess held now (hear_ahead .. keep_ahead / forget_ahead)
    _speaking: int = 0  # replies being spoken now (a guess is heard between replies only)

    def _then(self, op: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        previous = self._chain

        async def run() -> None:
            if previous is not None:
                # A failed earlier op was reported to its own waiter (or logged); it must not poison
                # every later op of the session.
                with contextlib.suppress(Exception):
                    await asyncio.shield(previous)
            await op()

        self._chain = asyncio.ensure_future(run())
        return self._chain

    async def _conversation(self) -> Any:
        if self._conv is None:
            from dia2.conversation import EngineConversation

            try:
                self._conv = await EngineConversation.open(self.engine.dia2_engine)
            except Exception as exc:  # the engine raises plain errors when it is full
                raise EngineError(f"dia2 cannot open a conversation: {exc}") from exc
            if self.engine.voice is not None:
                await self._conv.set_voice_prompt(self.engine.voice.data)
        return self._conv

    def user_spoke(self, pcm: npt.NDArray[np.int16], rate: int, words: Words) -> None:
        import torch

        audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
        timed = timed_words(words, len(pcm) / rate)
        self.last_heard = timed
        log.info(
            "call %s: dia2 hears %d words (%s), first at %.2f s of %.2f s",
            self.call_id, len(timed), "spread evenly" if isinstance(words, str) else "asr-timed",
            timed[0].start if timed else 0.0, len(pcm) / rate,
        )  # fmt: skip

        async def op() -> None:
            conv = await self._conversation()
            # A reply the engine is still making when the caller's next turn is heard answers nothing
            # any more (the caller went on; a slow engine under load): it ends, and the turn lands in the
            # context. Without this the turn failed and was lost from the context (128 calls on an H100:
            # 248 turns).
            await conv.user_spoke(audio, rate, timed, end_reply=True)

        task = self._then(op)
        task.add_done_callback(self._log_failure)

    def _log_failure(self, task: asyncio.Task[None], what: str = "user_spoke") -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: dia2 %s failed: %r", self.call_id, what, task.exception())

    def played(self, seconds: float) -> None:
        """Barge-in: only the first `seconds` of the latest reply were played. Its frames past that leave
        the conversation's history and KV cache (whole 80 ms frames heard are kept), in order with the
        other ops, so the next reply is conditioned on what the caller heard."""
        first, self._first_chunk = self._first_chunk, None
        if first is None or self._conv is None:
            return  # no frame of it was made: nothing of it is in the context
        conv = self._conv
        frames = int(seconds * self.engine.dia2_engine.frame_rate + 1e-6)

        async def op() -> None:
            dropped = await conv.keep_played(first, frames)
            self.dropped_frames += dropped
            log.info(
                "call %s: dia2 context keeps %d heard frames of the cut reply, drops %d unheard",
                self.call_id, frames, dropped,
            )  # fmt: skip

        task = self._then(op)
        task.add_done_callback(lambda t: self._log_failure(t, "keep_played"))

    async def _awaited(self, what: str, op: Callable[[Any], Awaitable[None]]) -> None:
        """Run `op(conversation)` in order after the queued ops and wait for it; errors as EngineError."""

        async def run() -> None:
            await op(await self._conversation())

        from dia2.engine import ContextOverflowError

        try:
            await asyncio.shield(self._then(run))
        except EngineError:
            raise
        except ContextOverflowError as exc:  # checked before the row changed: the session is fine
            raise EngineRejected(str(exc)) from exc
        except Exception as exc:
            raise EngineError(f"dia2 {what} failed: {exc}") from exc

    async def hear(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        import torch

        audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
        timed = timed_words(words, len(pcm) / rate)
        await self._awaited("user_spoke", lambda conv: conv.user_spoke(audio, rate, timed))

    async def set_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        import torch

        audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
        timed = timed_words(words, len(pcm) / rate)
        await self._awaited("set_voice", lambda conv: conv.set_voice(audio, rate, timed))

    async def set_prepared_voice(self, voice: PreparedVoice) -> None:
        prompt = _prompt_of(voice)
        await self._awaited("set_voice", lambda conv: conv.set_voice_prompt(prompt))

    async def hear_prepared(self, voice: PreparedVoice) -> None:
        prompt = _prompt_of(voice)
        await self._awaited("user_spoke", lambda conv: conv.user_spoke_prompt(prompt))

    async def reset(self) -> None:
        await self._awaited("reset", lambda conv: conv.reset())

    async def state(self) -> dict[str, Any]:
        if self._chain is not None:  # what the ops queued before it (a turn heard, a reply trimmed) made
            with contextlib.suppress(Exception):
                await asyncio.shield(self._chain)
        conv = await self._conversation()
        try:
            return dataclasses.asdict(await conv.state())
        except Exception as exc:
            raise EngineError(f"dia2 state failed: {exc}") from exc

    async def speak(self, text: TextSource, params: SpeakParams | None = None) -> AsyncIterator[Chunk]:
        if self._ahead is not None:
            self.forget_ahead()  # not the guess's reply: it must not follow a turn the caller may not finish
        async for chunk in self._speak(text, params, None):
            yield chunk

    async def _speak(
        self, text: TextSource, params: SpeakParams | None, ahead: _Ahead | None
    ) -> AsyncIterator[Chunk]:
        self._speaking += 1
        try:
            async for chunk in self._speak_after_ops(text, params, ahead):
                yield chunk
        finally:
            self._speaking -= 1

    async def _speak_after_ops(
        self, text: TextSource, params: SpeakParams | None, ahead: _Ahead | None
    ) -> AsyncIterator[Chunk]:
        t0 = time.monotonic()
        if self._chain is not None:
            with contextlib.suppress(Exception):  # a failed user_spoke was logged; still answer
                await asyncio.shield(self._chain)
        if ahead is not None and ahead.forgotten:
            return  # discarded before it began: nothing of it may reach the context
        conv = await self._conversation()
        engine = self.engine.dia2_engine
        waited, steps0 = time.monotonic() - t0, (engine.steps_run, engine.lane_steps)
        whole = isinstance(text, str)
        text = self.engine.text.source(text, params)  # normalised, "[S1]" once, sentence segments
        if whole and not isinstance(text, str):
            # A whole text stays whole: the model reads the complete script at once, as before shaping,
            # instead of an input stream whose end arrives a few loop turns later (a timing the sampled
            # audio would depend on).
            text = " ".join([segment.strip() async for segment in text])
        source: Any = text if isinstance(text, str) else text_pieces(text)
        self._first_chunk = None
        self._watch_words(conv)
        try:
            # Closed here, not left to the garbage collector: a rewind waits for this reply's end.
            async with contextlib.aclosing(conv.speak(source, self.engine.options_for(params))) as chunks:
                async for chunk in chunks:
                    if ahead is not None and ahead.forgotten:
                        break
                    if self._first_chunk is None:
                        self._first_chunk = chunk
                        self._frame0 = chunk.frame  # a reply's frames start at its first step
                        self._log_first_chunk(t0, waited, steps0)
                    yield chunk.pcm.numpy().astype(np.float32, copy=False)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"dia2 failed while speaking: {exc}") from exc

    def _log_first_chunk(self, t0: float, waited: float, steps0: tuple[int, int]) -> None:
        """Where a reply's first-chunk time went (a load run's turn gap is read from these): the ops queued
        before it (the caller's turn heard, a cut reply trimmed) and the engine steps until its first frame
        was decoded."""
        engine = self.engine.dia2_engine
        log.info(
            "call %s: dia2 first chunk %.0f ms after speak (earlier ops %.0f ms; %d full, %d lane steps)",
            self.call_id, (time.monotonic() - t0) * 1000, waited * 1000,
            engine.steps_run - steps0[0], engine.lane_steps - steps0[1],
        )  # fmt: skip

    # ------------------------------------------------------------------ speaking ahead (speculative reply)

    async def hear_ahead(self, pcm: npt.NDArray[np.int16], rate: int, words: Words) -> bool:
        """The caller's turn so far, heard under a mark of the context (`EngineConversation.mark`), for a
        reply made before the turn ends. False, nothing changed: a guess is already held, a reply is being
        spoken (a mark is taken between replies), or it failed."""
        if self._ahead is not None or self._speaking or self._closed:
            return False
        import torch

        audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
        timed = timed_words(words, len(pcm) / rate)
        ahead = self._ahead = _Ahead(self._reply_state())

        async def op() -> None:
            conv = await self._conversation()
            ahead.mark = await conv.mark()
            await conv.user_spoke(audio, rate, timed)

        try:
            await asyncio.shield(self._then(op))  # in order with the other ops, whatever happens to us
        except asyncio.CancelledError:
            self.forget_ahead(ahead)  # queued after the op: the turn it heard goes again
            raise
        except Exception as exc:
            log.warning("call %s: dia2 could not hear ahead: %r", self.call_id, exc)
            self.forget_ahead(ahead)
            return False
        return self._ahead is ahead  # not forgotten meanwhile (another reply began)

    async def speak_ahead(self, text: TextSource, params: SpeakParams | None = None) -> AsyncIterator[Chunk]:
        ahead = self._ahead
        if ahead is None or ahead.speech is not None:
            return  # forgotten (or already answered): nothing of it may reach the context
        ahead.speech = asyncio.get_running_loop().create_future()
        try:
            async for chunk in self._speak(text, params, ahead):
                yield chunk
        finally:
            ahead.speech.set_result(None)

    def holds_ahead(self) -> bool:
        return self._ahead is not None

    def keep_ahead(self) -> None:
        self._ahead = None  # the mark is dropped: the turn and its reply are the context's for good

    def forget_ahead(self, ahead: _Ahead | None = None) -> None:
        """Discard the held guess (or `ahead`, if it is still the held one): its reply ends at once, and once
        it has ended the context is rewound to the mark, in order with the other ops."""
        ahead = self._ahead if ahead is None else ahead
        if ahead is None or ahead is not self._ahead:
            return
        self._ahead = None
        ahead.forgotten = True
        if ahead.speech is not None and not ahead.speech.done() and self._conv is not None:
            self._conv.cancel()  # its iterator ends at the next chunk

        async def op() -> None:
            if ahead.speech is not None:
                await ahead.speech  # a rewind mid-reply would race the reply's own last commands
            if ahead.mark is None:
                return  # the mark failed: the guessed turn never went in
            conv = await self._conversation()
            await conv.rewind(ahead.mark)
            self._first_chunk, self._machine, self._words_from, self._frame0 = ahead.reply_state
            if self._machine is not None:
                self._machine = conv._call.machine  # rewind put a copy of the marked machine state there

        task = self._then(op)
        task.add_done_callback(lambda t: self._log_failure(t, "rewind"))

    def _reply_state(self) -> tuple[Any, Any, int, int | None]:
        """What `played` and `word_times` know of the latest reply, restored when a guess is forgotten."""
        return self._first_chunk, self._machine, self._words_from, self._frame0

    def _watch_words(self, conv: Any) -> None:
        """Mark where the next reply's words begin in the call's transcript. Read between replies (no step
        of this call is running), so the length is exact; a `reset` replaces the machine state, hence
        the reference. dia2's conversation API exposes no transcript, so its call state is read directly
        (the engine thread only appends to the list: a copy here is consistent)."""
        self._machine = conv._call.machine
        self._words_from = len(self._machine.transcript)
        self._frame0 = None

    def word_times(self) -> list[WordTime] | None:
        machine, frame0 = self._machine, self._frame0
        if machine is None or frame0 is None:
            return []
        rate = float(self.engine.dia2_engine.frame_rate)
        # A context re-warm at the reply's start re-forces the voice prefix's words: their steps lie before
        # the reply's first frame.
        taken = machine.transcript[self._words_from :]
        return [WordTime(word, (step - frame0) / rate) for word, step in taken if step >= frame0]

    def cancel(self) -> concurrent.futures.Future[int] | None:
        if self._conv is None:
            return None
        steps: concurrent.futures.Future[int] = self._conv.cancel()
        return steps

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ahead = None  # its mark dies with the conversation
        self.engine.sessions.pop(self.call_id, None)
        if self._chain is not None and not self._chain.done():
            self._chain.cancel()
        if self._conv is not None:
            self._conv.cancel()
            try:
                await self._conv.close()  # frees the engine row
            except Exception as exc:
                log.warning("call %s: closing its dia2 conversation failed: %r", self.call_id, exc)


@dataclass
class Dia2Engine:
    config: Dia2EngineConfig
    asr: Transcriber | None = None  # transcribes a voice prefix without transcript
    cache_dir: Path | None = None  # where voice-transcripts.json lives (None: memory only)
    name: str = "dia2"
    sample_rate: int = 24000
    wants_word_timings: bool = True  # caller turns reach user_spoke as ASR-timed words
    sessions: dict[str, Dia2Session] = field(default_factory=dict)
    dia2_engine: Any = None
    speak_options: Any = None
    voice: PreparedVoice | None = None  # the configured prefix, encoded once at start
    random_shape: str | None = None  # set only by the benchmark switch (BENCH_RANDOM_ENV): weights are random
    text: TextFrontend = field(default_factory=lambda: TextFrontend(policy=_DIA2_POLICY))

    async def start(self) -> None:
        try:
            import dia2.conversation  # noqa: F401  (fail early with a clear message if the API is missing)
        except ImportError as exc:
            raise EngineError(
                f"engine.kind is dia2 but dia2's conversation API cannot be imported: {exc}"
            ) from exc
        t0 = time.monotonic()
        if self.config.gil_switch_ms is not None:
            sys.setswitchinterval(self.config.gil_switch_ms / 1000)
        await asyncio.to_thread(self._load)
        await self._load_voice()
        log.info(
            "engine dia2 ready: %s on %s (%s), %d conversations, in %.1f s",
            self.health()["model"], self.config.device, self.config.dtype, self.config.max_batch,
            time.monotonic() - t0,
        )  # fmt: skip

    def _load(self) -> None:
        import torch

        from dia2.engine import BatchEngine, SpeakOptions
        from dia2.runtime import Dia2
        from dia2.sampling import SamplingParams

        cfg = self.config
        if cfg.device == "cpu":
            torch.set_num_threads(1)  # 2 intra-op threads are 10-30x slower on small VMs (recipes §8)
        self.random_shape = bench_random_shape(os.environ)
        try:
            if self.random_shape is not None:
                from dia2.random_weights import random_runtime

                log.warning(
                    "BENCHMARK ONLY: dia2 runs RANDOM weights of shape %s (%s); engine.dia2.model is not "
                    "loaded and every reply is noise", self.random_shape, BENCH_RANDOM_ENV,
                )  # fmt: skip
                runtime = random_runtime(self.random_shape, device=cfg.device, dtype=cfg.dtype)
            else:
                runtime = Dia2.from_pretrained(
                    cfg.model,
                    device=cfg.device,
                    dtype=cfg.dtype,
                    mimi=None if cfg.mimi == _DEFAULT_MIMI else cfg.mimi,  # a checkpoint's own codec wins
                    tokenizer=cfg.tokenizer,
                    revision=cfg.revision,
                )
        except Exception as exc:
            raise EngineError(f"cannot load dia2 model {cfg.model!r}: {exc}") from exc
        options = engine_options(cfg, runtime.config.runtime.max_context_steps)
        self.dia2_engine = BatchEngine(runtime.model, runtime.ids, runtime.tokenizer, runtime.mimi, options)
        self.dia2_engine.start()
        self.speak_options = SpeakOptions(
            audio=SamplingParams(cfg.temperature, cfg.top_k), cfg_scale=cfg.cfg_scale
        )

    async def _load_voice(self) -> None:

        from audio.wav import read_wav

        voice = self.config.voice
        if voice.prefix_wav is None:
            return
        audio, rate = read_wav(voice.prefix_wav)
        words: Words = voice.transcript or ""
        if not voice.transcript or not voice.transcript.strip():
            words = await self._voice_words(voice.prefix_wav, audio, rate)
        try:
            self.voice = await self.prepare_voice(audio, rate, words)
        except EngineRejected as exc:
            raise EngineError(f"engine.dia2.voice.prefix_wav {voice.prefix_wav}: {exc}") from exc
        log.info("engine dia2: voice %s encoded once (%.1f s)", voice.prefix_wav, self.voice.seconds)

    async def prepare_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> PreparedVoice:
        """Mimi codes and timed words of a recording, computed once on the engine thread; refused
        (EngineRejected) when it is longer than a voice may be in this engine's context."""
        import torch

        from dia2.conversation import encode_voice
        from dia2.engine import ContextOverflowError

        if self.dia2_engine is None:
            raise EngineError("dia2 engine is not started")
        audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
        seconds = len(pcm) / rate
        try:
            prompt = await encode_voice(self.dia2_engine, audio, rate, timed_words(words, seconds))
        except Exception as exc:
            raise EngineError(f"dia2 cannot encode the voice: {exc}") from exc
        try:
            self.dia2_engine.check_voice(prompt)  # reads constants only: safe off the engine thread
        except ContextOverflowError as exc:
            raise EngineRejected(str(exc)) from exc
        text = words if isinstance(words, str) else " ".join(w for w, _, _ in words)
        return PreparedVoice(self.name, text, seconds, prompt)

    async def _voice_words(self, path: Path, audio: npt.NDArray[np.float32], rate: int) -> Words:
        """Timed words of the voice prefix from ASR, cached by content hash (and ASR model): a restart or a
        second supervisor with the same voice does not transcribe it again."""
        if self.asr is None or self.asr.config.backend == "none":
            log.warning("engine dia2: voice %s has no transcript and no ASR to make one", path)
            return ""
        key = f"{hashlib.sha256(path.read_bytes()).hexdigest()}:{self.asr.config.model}"
        cached = _VOICE_CACHE.get(key)
        cache_file = self.cache_dir / "voice-transcripts.json" if self.cache_dir is not None else None
        if cached is None and cache_file is not None and cache_file.is_file():
            try:
                entry = json.loads(cache_file.read_text()).get(key)
            except (OSError, ValueError):
                entry = None  # a corrupt cache only costs a transcription
            if entry is not None:
                cached = [(str(w), float(a), float(b)) for w, a, b in entry["words"]]
        if cached is None:
            t0 = time.monotonic()
            text, cached = await self.asr.transcribe_words(audio, rate)
            log.info("engine dia2: voice %s transcribed in %.2f s: %r", path, time.monotonic() - t0, text)
            if cache_file is not None:
                try:
                    data = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
                except (OSError, ValueError):
                    data = {}
                data[key] = {"file": str(path), "text": text, "words": cached}
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1))
                tmp.replace(cache_file)  # atomic: a crash never leaves half a cache
        else:
            log.info("engine dia2: voice %s transcript from cache", path)
        _VOICE_CACHE[key] = cached
        return cached

    def options_for(self, params: SpeakParams | None) -> Any:
        """dia2 SpeakOptions for one utterance: the configured ones with the request's overrides.

        Like `Dia2.generate`, a given temperature/top_k applies to the text (action) and audio sampling
        alike. The engine caps top_k at its `max_top_k` (64, static shapes), and a cfg_scale only acts when
        the engine was started with CFG (config cfg_scale > 1): otherwise there is no unconditional row.
        """
        if params is None or dataclasses.replace(params, normalize=None) == SpeakParams():
            return self.speak_options
        from dia2.engine import SpeakOptions
        from dia2.sampling import SamplingParams

        base = self.speak_options
        temperature = base.audio.temperature if params.temperature is None else params.temperature
        top_k = base.audio.top_k if params.top_k is None else params.top_k
        overridden = params.temperature is not None or params.top_k is not None
        return SpeakOptions(
            text=SamplingParams(temperature, top_k) if overridden else base.text,
            audio=SamplingParams(temperature, top_k),
            cfg_scale=base.cfg_scale if params.cfg_scale is None else params.cfg_scale,
        )

    def open_session(self, call_id: str) -> Dia2Session:
        if self.dia2_engine is None:
            raise EngineError("dia2 engine is not started")
        if len(self.sessions) >= self.config.max_batch:
            raise EngineError(f"dia2 engine is full ({self.config.max_batch} conversations)")
        session = Dia2Session(call_id, self)
        self.sessions[call_id] = session
        return session

    def health(self) -> dict[str, Any]:
        engine = self.dia2_engine
        return {
            "ok": engine is not None,
            "kind": self.name,
            "model": self.config.model if self.random_shape is None else f"RANDOM:{self.random_shape}",
            "device": self.config.device,
            "sessions": len(self.sessions),
            "rows_in_use": len(engine.calls) if engine is not None else 0,
            "steps_run": engine.steps_run if engine is not None else 0,
            "mimi_encodes": engine.mimi_encodes if engine is not None else 0,  # voices and caller turns
            "thread": engine.thread.time.as_dict() if engine is not None else {},
        }

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        if self.dia2_engine is not None:
            await asyncio.to_thread(self.dia2_engine.stop)
