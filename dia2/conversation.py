"""asyncio face of the engine: one :class:`EngineConversation` per phone call.

Every method may be called from the supervisor's event loop; the work itself runs on the engine thread
(:meth:`dia2.engine.BatchEngine.start`), reached through :meth:`BatchEngine.submit` (thread-safe). Audio
comes back as an async iterator of :class:`~dia2.engine.AudioChunk` (1920 float32 samples at 24 kHz each)::

    engine = BatchEngine(tts.model, tts.ids, tts.tokenizer, tts.mimi, EngineOptions(capacity=64))
    engine.start()
    conv = await EngineConversation.open(engine)
    await conv.set_voice(voice_wav, 24000, voice_words)
    await conv.user_spoke(caller_pcm, 8000, caller_words)
    async for chunk in conv.speak(llm_deltas()):   # str or AsyncIterable[str]
        send(chunk.pcm)
    conv.cancel()                                  # barge-in: the iterator ends, no further chunk

A voice used by many conversations is encoded once (``prompt = await encode_voice(engine, wav, 24000,
words)``) and set from its codes (``await conv.set_voice_prompt(prompt)``): no Mimi encoder run per use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .engine import AudioChunk, BatchEngine, CallState, ContextMark, SpeakOptions, VoicePrompt
from .prefix import PrefixWord
from .wavfile import resample_linear

__all__ = ["ConversationState", "EngineConversation", "encode_voice"]

SUPPORTED_RATES = (8000, 16000, 24000)


@dataclass(frozen=True)
class ConversationState:
    slot: int
    context_steps: int  # frames of history in the KV cache
    max_context_steps: int
    speaking: bool
    reply_chunks: int
    segments: list[tuple[str, int, int]]  # ("voice" | "user" | "reply", first frame, end frame)
    dropped_turns: int
    words_waiting: int
    awaiting_text: bool


async def encode_voice(
    engine: BatchEngine, audio: torch.Tensor, sample_rate: int, words: Sequence[PrefixWord]
) -> VoicePrompt:
    """Mimi codes of a recording (8/16/24 kHz mono float) and its words, for any number of
    :meth:`EngineConversation.set_voice_prompt` / :meth:`EngineConversation.user_spoke_prompt` calls. The
    encoder runs on the engine thread, between steps, like every other model call."""
    audio = EngineConversation._to_24k(audio, sample_rate)
    return await asyncio.wrap_future(engine.submit(lambda: engine.encode_voice(audio, 24000, words)))


class EngineConversation:
    def __init__(self, engine: BatchEngine, call: CallState) -> None:
        self._engine = engine
        self._call = call
        self._replies = 0  # reply counter: cancel() ends the current one at once, on this side too
        self._cancelled = -1

    @classmethod
    async def open(cls, engine: BatchEngine) -> EngineConversation:
        call = await asyncio.wrap_future(engine.submit(engine.open_call))
        return cls(engine, call)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self._engine.submit(lambda: fn(*args, **kwargs)))

    @staticmethod
    def _to_24k(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"sample_rate must be one of {SUPPORTED_RATES}, got {sample_rate}")
        audio = torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
        return audio if sample_rate == 24000 else resample_linear(audio, sample_rate, 24000)

    async def set_voice(
        self,
        audio: torch.Tensor,
        sample_rate: int,
        words: Sequence[PrefixWord],
        partner: VoicePrompt | None = None,
    ) -> None:
        """The AI's voice (speaker 1): audio and its words with timings. Resets the conversation.
        ``partner``: a speaker-2 prefix heard after it (:meth:`dia2.engine.BatchEngine.set_voice_prompt`)."""
        await self._run(self._engine.set_voice, self._call, self._to_24k(audio, sample_rate), words, partner)

    async def set_voice_prompt(self, prompt: VoicePrompt, partner: VoicePrompt | None = None) -> None:
        """The AI's voice from precomputed codes (:func:`encode_voice`), with an optional speaker-2
        ``partner`` prefix. Resets the conversation; a voice that does not fit the context raises
        :class:`~dia2.engine.ContextOverflowError`, nothing changed."""
        await self._run(self._engine.set_voice_prompt, self._call, prompt, partner)

    async def user_spoke_prompt(self, prompt: VoicePrompt) -> None:
        """The caller's turn from precomputed codes (:func:`encode_voice`)."""
        await self._run(self._engine.user_spoke_prompt, self._call, prompt)

    async def user_spoke(
        self, audio: torch.Tensor, sample_rate: int, words: Sequence[PrefixWord], *, end_reply: bool = False
    ) -> None:
        """The caller's turn (8/16/24 kHz mono float, words timed from the start of ``audio``).
        ``end_reply``: end a reply still in progress first (:meth:`BatchEngine.submit_turn`); without it
        such a turn raises."""
        # Its encode is batched with other calls' turns queued meanwhile (callers often stop together).
        audio = self._to_24k(audio, sample_rate)
        if end_reply:
            self._cancelled = self._replies  # its chunks already queued on this side are dropped too
        await asyncio.wrap_future(self._engine.submit_turn(self._call, audio, words, end_reply=end_reply))

    async def speak(
        self, text: str | AsyncIterable[str], options: SpeakOptions | None = None
    ) -> AsyncIterator[AudioChunk]:
        """Speak ``text`` (whole, or deltas as they come from an LLM); yields chunks until the reply ends
        or :meth:`cancel` is called. Closing the iterator early cancels the reply."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[AudioChunk | None] = asyncio.Queue()
        engine, call = self._engine, self._call

        def sink(item: AudioChunk | None) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, item)

        self._replies += 1
        reply = self._replies
        streamed = not isinstance(text, str)
        await self._run(engine.speak, call, None if streamed else text, sink, options, more_text=streamed)
        feeder = None
        if streamed:
            assert not isinstance(text, str)
            feeder = asyncio.ensure_future(self._feed(text))
        try:
            while (item := await chunks.get()) is not None and self._cancelled != reply:
                yield item
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            engine.submit(lambda: engine.cancel(call))

    async def _feed(self, deltas: AsyncIterable[str]) -> None:
        engine, call = self._engine, self._call
        try:
            async for delta in deltas:
                engine.submit(functools.partial(engine.push_text, call, delta))
        finally:
            engine.submit(lambda: engine.push_text(call, "", final=True))

    def cancel(self) -> concurrent.futures.Future[int]:
        """Barge-in. Thread-safe; the reply's iterator ends and its rows are free from the next step.

        Returns a future of how many engine steps ran between this request and the cancel taking effect
        on the engine thread (at the next step boundary): 0 or 1, as commands run before every step. The
        count is read right before the command is queued, so it measures the engine, not the caller."""
        self._cancelled = self._replies  # chunks already queued on this side are dropped too
        engine, call = self._engine, self._call
        asked = engine.steps_run

        def cancel() -> int:
            engine.cancel(call)
            return int(engine.steps_run - asked)

        return engine.submit(cancel)

    async def keep_played(self, first: AudioChunk, frames: int) -> int:
        """Barge-in: only the first ``frames`` frames of the reply whose first chunk was ``first`` were
        heard; the rest leaves the context (:meth:`BatchEngine.keep_played`). Returns the frames dropped."""
        engine, call = self._engine, self._call
        dropped: int = await self._run(engine.keep_played, call, first.frame, frames, first.codes)
        return dropped

    async def mark(self) -> ContextMark:
        """The context's position now (:meth:`BatchEngine.mark`), for a speculative turn: taken between
        replies, owned by whoever may later :meth:`rewind` to it."""
        mark: ContextMark = await self._run(self._engine.mark, self._call)
        return mark

    async def rewind(self, mark: ContextMark) -> None:
        """Forget everything since ``mark`` (a guessed caller turn and the reply spoken to it): the reply
        in progress ends, history, text state and cache are the mark's again (:meth:`BatchEngine.rewind`)."""
        self._cancelled = self._replies  # chunks already queued on this side are dropped too
        await self._run(self._engine.rewind, self._call, mark)

    async def reset(self) -> None:
        """Forget all turns (keeps and re-warms the voice)."""
        await self._run(self._engine.reset, self._call)

    async def state(self) -> ConversationState:
        return ConversationState(**await self._run(self._engine.describe, self._call))

    async def close(self) -> None:
        await self._run(self._engine.close_call, self._call)
