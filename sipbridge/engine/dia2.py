"""Dia2 engine adapter over dia2's conversation API (dia2/conversation.py, dia2/engine.py).

One `dia2.engine.Engine` per supervisor advances every call's conversation in one batched step on its own
thread; each call gets a `dia2.conversation.Conversation` (one engine row, its own KV cache). This adapter
maps our engine interface onto it:

* `open_session` is synchronous in our interface, the conversation's `open` is not: the session opens its
  conversation lazily, and every operation waits for the one before it (`_chain`), so `user_spoke`
  (fire-and-forget here) always lands before the `speak` that answers it;
* caller words come from ASR as text without timings; Dia2 wants `PrefixWord`s with times, so the words
  are spread evenly over the turn's audio (good enough for context; word timestamps from ASR would be
  better and cost ~30 % more ASR time);
* chunks come back as 1920-sample float32 tensors at 24 kHz and leave as numpy arrays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sipbridge.config import Dia2EngineConfig
from sipbridge.engine.base import Chunk, EngineError, TextSource, text_pieces

log = logging.getLogger(__name__)

_DEFAULT_MIMI = "kyutai/mimi"


def spread_words(words: str, duration_s: float) -> list[tuple[str, float, float]]:
    """Evenly timed (word, start, end) over `duration_s`: ASR text has no timings."""
    tokens = words.split()
    if not tokens or duration_s <= 0:
        return []
    step = duration_s / len(tokens)
    return [(w, i * step, (i + 1) * step) for i, w in enumerate(tokens)]


@dataclass
class Dia2Session:
    call_id: str
    engine: Dia2Engine
    sample_rate: int = 24000
    _conv: Any = None
    _chain: asyncio.Task[None] | None = None
    _closed: bool = False

    def _then(self, op: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        previous = self._chain

        async def run() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            await op()

        self._chain = asyncio.ensure_future(run())
        return self._chain

    async def _conversation(self) -> Any:
        if self._conv is None:
            from dia2.conversation import Conversation

            try:
                self._conv = await Conversation.open(self.engine.dia2_engine)
            except Exception as exc:  # the engine raises plain errors when it is full
                raise EngineError(f"dia2 cannot open a conversation: {exc}") from exc
            if self.engine.voice is not None:
                audio, rate, words = self.engine.voice
                await self._conv.set_voice(audio, rate, words)
        return self._conv

    def user_spoke(self, pcm: npt.NDArray[np.int16], rate: int, words: str) -> None:
        import torch

        from dia2.prefix import PrefixWord

        audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
        timed = [PrefixWord(w, a, b) for w, a, b in spread_words(words, len(pcm) / rate)]

        async def op() -> None:
            conv = await self._conversation()
            await conv.user_spoke(audio, rate, timed)

        task = self._then(op)
        task.add_done_callback(self._log_failure)

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: dia2 user_spoke failed: %r", self.call_id, task.exception())

    async def speak(self, text: TextSource) -> AsyncIterator[Chunk]:
        if self._chain is not None:
            await asyncio.shield(self._chain)
        conv = await self._conversation()
        source: Any = text if isinstance(text, str) else text_pieces(text)
        try:
            async for chunk in conv.speak(source, self.engine.speak_options):
                yield chunk.pcm.numpy().astype(np.float32, copy=False)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"dia2 failed while speaking: {exc}") from exc

    def cancel(self) -> None:
        if self._conv is not None:
            self._conv.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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
    name: str = "dia2"
    sample_rate: int = 24000
    sessions: dict[str, Dia2Session] = field(default_factory=dict)
    dia2_engine: Any = None
    speak_options: Any = None
    voice: tuple[Any, int, list[Any]] | None = None

    async def start(self) -> None:
        try:
            import dia2.conversation  # noqa: F401  (fail early with a clear message if the API is missing)
        except ImportError as exc:
            raise EngineError(
                f"engine.kind is dia2 but dia2's conversation API cannot be imported: {exc}"
            ) from exc
        t0 = time.monotonic()
        await asyncio.to_thread(self._load)
        log.info(
            "engine dia2 ready: %s on %s (%s), %d conversations, in %.1f s",
            self.config.model, self.config.device, self.config.dtype, self.config.max_batch,
            time.monotonic() - t0,
        )  # fmt: skip

    def _load(self) -> None:
        import torch

        from dia2.engine import Engine, EngineOptions, SpeakOptions
        from dia2.prefix import PrefixWord
        from dia2.runtime import Dia2
        from dia2.sampling import SamplingParams

        cfg = self.config
        if cfg.device == "cpu":
            torch.set_num_threads(1)  # 2 intra-op threads are 10-30x slower on small VMs (recipes §8)
        try:
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
        steps = runtime.config.runtime.max_context_steps
        options = EngineOptions(
            capacity=cfg.max_batch,
            cfg=cfg.cfg_scale > 1.0,
            reply_reserve_steps=min(250, steps // 4),
            max_reply_steps=min(1000, steps // 2),
        )
        self.dia2_engine = Engine(runtime.model, runtime.ids, runtime.tokenizer, runtime.mimi, options)
        self.dia2_engine.start()
        self.speak_options = SpeakOptions(
            audio=SamplingParams(cfg.temperature, cfg.top_k), cfg_scale=cfg.cfg_scale
        )
        if cfg.voice.prefix_wav is not None:
            from audio.wav import read_wav

            audio, rate = read_wav(cfg.voice.prefix_wav)
            words = [
                PrefixWord(w, a, b) for w, a, b in spread_words(cfg.voice.transcript or "", len(audio) / rate)
            ]
            self.voice = (torch.from_numpy(audio), rate, words)

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
            "sessions": len(self.sessions),
            "rows_in_use": len(engine.calls) if engine is not None else 0,
            "steps_run": engine.steps_run if engine is not None else 0,
        }

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        if self.dia2_engine is not None:
            await asyncio.to_thread(self.dia2_engine.stop)
