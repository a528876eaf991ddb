"""espeak-ng as a speech engine: a subprocess per sentence, its WAV streamed from stdout as it is written.

Robotic but intelligible, needs no GPU or weights, starts speaking in a few milliseconds: the default engine
and the one end-to-end tests check words with. It has no conversation context, so `user_spoke` is a no-op,
a voice recording is only noted (`state`) and the sampling overrides of `SpeakParams` are ignored.

Its output depends on the text alone, so the engine shares it (`_Phrase`): every session that speaks a
sentence while it is being made, or later while it is in the cache, reads the same chunks. A burst of calls
answered together all say the same greeting; they cost one espeak-ng process, not one each (spawning it on
the supervisor's loop, fork + exec + asyncio's watcher thread per child, was half of that loop's time in a
32-call burst: docs/PERFORMANCE.md). A script agent's fixed prompts hit the cache all day. Finished sentences
are kept up to `_CACHE_S` seconds of audio, least recently used out first. A phrase is also resampled once
per call rate (`speak_at`), not once per call: in a 100-call burst the calls' own FIR passes over the same
greeting were 58 % of the supervisor loop's busy time (docs/PERFORMANCE.md, "The set-up burst").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from audio.resample import FirResampler, StreamResampler, make_resampler
from sipbridge.config import EspeakEngineConfig
from sipbridge.engine.base import (
    Chunk,
    EngineError,
    PreparedVoice,
    SpeakParams,
    TextSource,
    Words,
    WordTime,
    text_pieces,
)
from sipbridge.text.frontend import TextFrontend

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050  # espeak-ng's only output rate
_WAV_HEADER = 44  # espeak-ng writes a canonical 44-byte header with "unknown length" sizes
# A read returns what the pipe holds, up to this: the first chunk is as early as espeak writes it, and
# later ones are as large as espeak ran ahead (it runs ~10x real time). A 20 ms cap made every 20 ms of audio
# one resampler pass and one IPC message, ~40 % of the supervisor's event loop at 8 calls (py-spy).
_READ_BYTES = 2 * ESPEAK_RATE  # up to 1 s per read
# Audio kept for sentences said again (greetings, a script's prompts): 120 s is ~10 MB of float32.
_CACHE_S = 120.0
_CACHE_TEXT_MAX = 600  # longer text (an LLM's paragraph) is not worth keeping: it will not come again


@dataclass
class _AtRate:
    """A phrase's audio at one call rate, resampled once for every session reading it at that rate: chunk by
    chunk as the phrase grows, the filter's tail added when it is done."""

    resampler: FirResampler | StreamResampler
    chunks: list[npt.NDArray[np.float32]] = field(default_factory=list)
    source: int = 0  # the phrase's chunks resampled so far
    flushed: bool = False

    def catch_up(self, phrase: _Phrase) -> None:
        while self.source < len(phrase.chunks):
            out = self.resampler.process(phrase.chunks[self.source])
            self.source += 1
            if len(out):
                self.chunks.append(np.asarray(out, np.float32))
        if phrase.done and phrase.error is None and not self.flushed:
            tail = self.resampler.flush()
            self.flushed = True
            if len(tail):
                self.chunks.append(np.asarray(tail, np.float32))


@dataclass
class _Phrase:
    """One espeak-ng run's audio, shared by every session speaking that text. `grown` is set (and replaced)
    whenever a chunk arrives or the run ends; `readers` counts sessions reading it: when the last one leaves
    before the end (barge-in), the process is killed, as a session's own process was."""

    key: tuple[str, int, str]
    chunks: list[npt.NDArray[np.float32]] = field(default_factory=list)
    grown: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    error: EngineError | None = None
    readers: int = 0
    task: asyncio.Task[None] | None = None
    rates: dict[int, _AtRate] = field(default_factory=dict)  # its audio at each call rate read so far

    @property
    def seconds(self) -> float:
        return sum(len(c) for c in self.chunks) / ESPEAK_RATE

    def wake(self) -> None:
        woken, self.grown = self.grown, asyncio.Event()
        woken.set()

    def at(self, rate: int | None) -> _AtRate | None:
        """Its audio at ``rate``, caught up with what espeak has written (None: espeak's own rate)."""
        if rate is None or rate == ESPEAK_RATE:
            return None
        at = self.rates.get(rate)
        if at is None:
            at = self.rates[rate] = _AtRate(make_resampler(ESPEAK_RATE, rate))
        at.catch_up(self)
        return at


@dataclass
class EspeakSession:
    call_id: str
    engine: EspeakEngine
    sample_rate: int = ESPEAK_RATE
    # Its speech depends on the text alone (nothing said is remembered): a reply can be made ahead of the
    # turn's end and thrown away unheard (turn.speculative_reply), with nothing to forget.
    speaks_ahead = True
    _phrase: _Phrase | None = None  # the sentence being read now
    _cancelled: bool = False
    _closed: bool = False
    turns_heard: list[str] = field(default_factory=list)
    voice_words: str | None = None  # espeak cannot clone a voice; kept so `state` reports it was set
    replies: int = 0

    @property
    def start_margin_s(self) -> float:
        """Audio the call path gathers before a reply's first send (engine.espeak.start_margin_ms)."""
        return self.engine.config.start_margin_ms / 1000

    def user_spoke(self, pcm: npt.NDArray[np.int16], rate: int, words: Words) -> None:
        # No context model; kept for health/debugging only.
        self.turns_heard.append(words if isinstance(words, str) else " ".join(w for w, _, _ in words))

    def played(self, seconds: float) -> None:
        pass  # no context model: nothing said is remembered

    def word_times(self) -> list[WordTime] | None:
        return None  # espeak's pipe gives audio only; compat's alignment estimates from the text

    async def hear(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        self.turns_heard.append(words if isinstance(words, str) else " ".join(w for w, _, _ in words))

    async def set_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> None:
        self.voice_words = words if isinstance(words, str) else " ".join(w for w, _, _ in words)
        await self.reset()

    # espeak cannot clone a voice: a prepared voice is its transcript only (see EspeakEngine.prepare_voice).
    async def set_prepared_voice(self, voice: PreparedVoice) -> None:
        self.voice_words = voice.transcript
        await self.reset()

    async def hear_prepared(self, voice: PreparedVoice) -> None:
        self.turns_heard.append(voice.transcript)

    async def reset(self) -> None:
        self.cancel()
        self.turns_heard.clear()
        self.replies = 0

    async def state(self) -> dict[str, Any]:
        return {
            "turns": len(self.turns_heard) + self.replies,
            "user_turns": len(self.turns_heard),
            "replies": self.replies,
            "voice_set": self.voice_words is not None,
        }

    async def speak(self, text: TextSource, params: SpeakParams | None = None) -> AsyncIterator[Chunk]:
        async for chunk in self.speak_at(text, None, params):
            yield chunk

    async def speak_at(
        self, text: TextSource, rate: int | None, params: SpeakParams | None = None
    ) -> AsyncIterator[Chunk]:
        """`speak` with the audio already at ``rate`` (a call's rate), resampled once per sentence and rate
        for every call saying it; each sentence ends with its resampler's tail. None: espeak's rate."""
        self.replies += 1
        self._cancelled = False
        # Normalised text comes in sentence segments (sipbridge/text): one espeak-ng run each.
        async for piece in text_pieces(self.engine.text.source(text, params)):
            if self._cancelled or self._closed:
                return
            if not piece.strip():
                continue
            async for chunk in self._speak_one(piece, rate):
                yield chunk

    async def _speak_one(self, text: str, rate: int | None) -> AsyncIterator[Chunk]:
        phrase = self.engine.phrase(text)
        self._phrase = phrase
        phrase.readers += 1
        try:
            i = 0
            while not self._cancelled and not self._closed:
                at = phrase.at(rate)
                chunks = phrase.chunks if at is None else at.chunks
                if i < len(chunks):
                    i += 1
                    yield chunks[i - 1]
                elif phrase.error is not None:
                    raise phrase.error
                elif phrase.done:
                    return
                else:
                    await phrase.grown.wait()
        finally:
            self._phrase = None
            phrase.readers -= 1
            self.engine.left(phrase)

    def cancel(self) -> None:  # no engine step to count; the process dies when no other call reads it
        self._cancelled = True
        if self._phrase is not None:
            self._phrase.wake()  # this session's reader stops now (the others read on)

    async def close(self) -> None:
        self.cancel()
        self._closed = True
        self.engine.sessions.pop(self.call_id, None)


@dataclass
class EspeakEngine:
    config: EspeakEngineConfig
    name: str = "espeak"
    sample_rate: int = ESPEAK_RATE
    exe: str = ""
    sessions: dict[str, EspeakSession] = field(default_factory=dict)
    text: TextFrontend = field(default_factory=TextFrontend)  # normaliser and shaping of what it speaks
    # Sentences being made or kept (module docstring), by (voice, words per minute, text); oldest first.
    phrases: OrderedDict[tuple[str, int, str], _Phrase] = field(default_factory=OrderedDict)
    processes: int = 0  # espeak-ng runs started
    shared: int = 0  # sentences read from a run another session started, or from the cache

    async def start(self) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise EngineError("espeak-ng is not installed (apt-get install -y espeak-ng)")
        self.exe = exe
        log.info("engine espeak ready (%s, voice %s)", exe, self.config.voice)

    def open_session(self, call_id: str) -> EspeakSession:
        session = EspeakSession(call_id, self)
        self.sessions[call_id] = session
        return session

    async def prepare_voice(self, pcm: npt.NDArray[np.float32], rate: int, words: Words) -> PreparedVoice:
        """Nothing to prepare (no voice cloning, no codec): keeps the transcript, for `state`."""
        text = words if isinstance(words, str) else " ".join(w for w, _, _ in words)
        return PreparedVoice(self.name, text, len(pcm) / rate)

    def health(self) -> dict[str, Any]:
        return {
            "ok": bool(self.exe),
            "kind": self.name,
            "sessions": len(self.sessions),
            "processes": self.processes,
            "sentences_shared": self.shared,
            "cached_s": round(sum(p.seconds for p in self.phrases.values() if p.done), 1),
        }

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()
        tasks = [p.task for p in self.phrases.values() if p.task is not None and not p.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # their processes are killed and reaped
        self.phrases.clear()

    # ------------------------------------------------------------------------------ shared sentences

    def phrase(self, text: str) -> _Phrase:
        """The sentence's audio: being made, cached, or started now (one espeak-ng run)."""
        key = (self.config.voice, self.config.words_per_minute, text)
        found = self.phrases.get(key)
        if found is not None and found.error is None:
            self.phrases.move_to_end(key)
            self.shared += 1
            return found
        phrase = _Phrase(key)
        phrase.task = asyncio.create_task(self._make(phrase), name="espeak")
        self.phrases[key] = phrase
        return phrase

    def left(self, phrase: _Phrase) -> None:
        """A session stopped reading `phrase`: a run no one reads any more is stopped, and not kept."""
        if phrase.readers == 0 and not phrase.done and phrase.task is not None:
            phrase.task.cancel()
            self._forget(phrase)

    def _forget(self, phrase: _Phrase) -> None:
        if self.phrases.get(phrase.key) is phrase:
            del self.phrases[phrase.key]

    def _keep(self, phrase: _Phrase) -> None:
        if len(phrase.key[2]) > _CACHE_TEXT_MAX:
            self._forget(phrase)
            return
        total = sum(p.seconds for p in self.phrases.values() if p.done)
        for old in list(self.phrases.values()):
            if total <= _CACHE_S:
                break
            if old.done and old is not phrase and old.readers == 0:
                total -= old.seconds
                self._forget(old)

    async def _make(self, phrase: _Phrase) -> None:
        try:
            async for chunk in self._run(phrase.key[2]):
                phrase.chunks.append(chunk)
                phrase.wake()
            phrase.done = True
            self._keep(phrase)
        except EngineError as exc:
            phrase.error = exc
            self._forget(phrase)
        finally:
            phrase.wake()

    async def _run(self, text: str) -> AsyncIterator[npt.NDArray[np.float32]]:
        """One espeak-ng process: its audio as it writes it. Killed if the reading stops (cancel)."""
        cfg = self.config
        self.processes += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                self.exe,
                "-v",
                cfg.voice,
                "-s",
                str(cfg.words_per_minute),
                "--stdout",
                "--",
                text,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise EngineError(f"cannot run espeak-ng: {exc}") from exc
        assert proc.stdout is not None
        try:
            header = await proc.stdout.readexactly(_WAV_HEADER)
            if header[:4] != b"RIFF" or header[36:40] != b"data":
                raise EngineError("espeak-ng wrote something that is not a WAV stream")
            carry = b""
            while True:
                data = await proc.stdout.read(_READ_BYTES)
                if not data:
                    break
                data = carry + data
                usable = len(data) // 2 * 2
                carry = data[usable:]
                if usable:
                    yield np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        except asyncio.IncompleteReadError:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            raise EngineError(f"espeak-ng failed: {err or 'no output'}") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            # Drain the pipes: after a cancel, stdout may hold enough unread audio that its transport paused
            # reading, so it never sees EOF; asyncio (3.11) completes `wait()` only once every pipe closed,
            # so an undrained pipe hung the cancelled run here forever.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(Exception):
                        await pipe.read()
            await proc.wait()
