"""Speculative replies with Dia2 (turn.speculative_reply, issue 17 item 2): the reply to a pause's words is
spoken ahead although Dia2 keeps what is said in its context. The guess marks the context and has it hear
the turn so far; discarded, the context is rewound to the mark; used, the turn and the reply stay and the
turn's end does not hear that turn again.

Real objects on the tiny checkpoint (CPU, greedy) with the bundled whisper tiny.en: a `CallSession` with the
echo agent gets the worker's turn frames; this test plays the worker (PlaybackDone for each utterance it was
sent). The oracle is a second call on the same engine that never had the guess: same context (segments,
frames) and the same next reply (Mimi decodes the same codes to within an int16 step between rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbridge import frames as f
from sipbridge.agents import make_agent
from sipbridge.asr import Transcriber
from sipbridge.call.speculation import Guess
from sipbridge.config import AsrConfig, Config
from sipbridge.engine.base import Chunk
from sipbridge.engine.dia2 import Dia2Engine, Dia2Session
from sipbridge.session import CallSession
from sipbridge.sip.pool import WorkerHandle
from sipbridge.store import Store
from sipbridge.store_writer import StoreWriter

from .peers import caller_audio

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
RATE = 8000
NEXT = "Is there anything else?"  # a reply after the turn: it shows the whole context, cache included
FIRST, WHOLE = "I need some help", "I need some help with a reference letter."  # a pause after FIRST


@pytest.fixture(scope="module")
def asr() -> Iterator[Transcriber]:
    transcriber = Transcriber(AsrConfig())
    asyncio.run(transcriber.start())
    yield transcriber
    transcriber.close()


@dataclass
class Wire(WorkerHandle):
    """The worker's end of the call: every frame the supervisor sent it, in order."""

    frames: asyncio.Queue[f.Frame] = field(default_factory=asyncio.Queue)

    def send(self, frame: f.Frame) -> bool:
        self.frames.put_nowait(frame)
        return True


@dataclass
class Call:
    session: CallSession
    wire: Wire

    @property
    def engine_session(self) -> Dia2Session:
        session = self.session.ctx.engine_session
        assert isinstance(session, Dia2Session)
        return session

    def send(self, frame: f.Frame) -> None:
        self.session.handle(frame)

    async def played(self) -> bytes:
        """The next utterance's audio as the worker gets it, then its PlaybackDone (played to the end)."""
        pcm: list[bytes] = []
        while True:
            frame = await self.wire.frames.get()
            if isinstance(frame, f.PlayAudio):
                pcm.append(frame.pcm)
            elif isinstance(frame, f.EndOfUtterance):
                ms = len(b"".join(pcm)) // 2 * 1000 // RATE
                self.send(f.PlaybackDone(self.session.call_id, frame.utterance, 0, ms, False, 0))
                return b"".join(pcm)

    async def context(self) -> tuple[Any, int]:
        state = await self.engine_session.state()
        return state["segments"], state["context_steps"]

    async def guess(self) -> Guess:
        """The reply made ahead for the latest pause (TurnTaker keeps it beside that pause's words)."""
        early = self.session.turns._early
        assert early is not None and early.guess is not None, "no guess was made at the pause"
        guess = await early.guess
        assert guess is not None
        return guess


def config(tmp_path: Path, name: str, speculative: bool) -> Config:
    return Config.model_validate(
        {
            "engine": {
                "kind": "dia2",
                "dia2": {"model": str(TINY), "device": "cpu", "dtype": "float32", "max_batch": 2,
                         "temperature": 0.0},
            },
            "agent": {"kind": "echo", "greeting": "Hello there."},
            "turn": {"speculative_reply": speculative},
            "storage": {"sqlite_path": str(tmp_path / f"{name}.sqlite3")},
        }
    )  # fmt: skip


@contextlib.asynccontextmanager
async def started(tmp_path: Path) -> AsyncIterator[Dia2Engine]:
    engine = Dia2Engine(config(tmp_path, "engine", True).engine.dia2)
    await engine.start()
    # Greedy text too (engine.dia2.temperature is the audio's): a reply depends on the context alone.
    engine.speak_options = dataclasses.replace(engine.speak_options, text=engine.speak_options.audio)
    try:
        yield engine
    finally:
        await engine.close()


async def open_call(
    tmp_path: Path, engine: Dia2Engine, asr: Transcriber, name: str, speculative: bool
) -> Call:
    """A call whose greeting was played out: the caller may speak."""
    cfg = config(tmp_path, name, speculative)
    store = StoreWriter(Store(cfg.storage.sqlite_path))
    start = f.CallStarted(name, "sip:caller@127.0.0.1", "sip:bot@127.0.0.1", "127.0.0.1:5062", "PCMU", name)
    wire = Wire(index=0)
    call = Call(CallSession(start, wire, cfg, store, engine, make_agent(cfg.agent), asr), wire)
    call.session.open()
    await call.played()
    return call


async def hang_up(*calls: Call) -> None:
    for call in calls:
        await call.session.close(None, lost_reason="the test is over")


async def in_engine(tmp_path: Path, run: Callable[[Dia2Engine], Awaitable[None]]) -> None:
    async with started(tmp_path) as engine:
        await run(engine)


def pcm_of(text: str) -> bytes:
    return caller_audio(text, lead_s=0.3, tail_s=0.0).pcm.tobytes()


def span(pcm: bytes) -> tuple[int, int]:
    return 300, len(pcm) // 2 * 1000 // RATE


def same_audio(a: bytes | np.ndarray[Any, Any], b: bytes | np.ndarray[Any, Any]) -> bool:
    """The same codes decoded: Mimi's float decode differs by a rounding between engine rows (at most one
    int16 step on the wire, measured); another context gives other codes, audio apart by orders more."""
    x, y = (np.frombuffer(v, np.int16) / 32768 if isinstance(v, bytes) else v for v in (a, b))
    return len(x) == len(y) and float(np.abs(x - y).max()) <= 2 / 32768


async def audio(chunks: AsyncIterator[Chunk]) -> np.ndarray[Any, Any]:
    return np.concatenate([c async for c in chunks])


async def oracle_of(tmp_path: Path, engine: Dia2Engine, asr: Transcriber, turn: bytes) -> tuple[Call, bytes]:
    """A call without speculation answering the same turn: what the guessed call must equal."""
    oracle = await open_call(tmp_path, engine, asr, "oracle", speculative=False)
    start, end = span(turn)
    oracle.send(f.TurnEnded("oracle", start, end, "silence", turn, 0))
    return oracle, await oracle.played()


async def assert_same_context(call: Call, oracle: Call) -> None:
    assert await call.context() == await oracle.context()
    ours = await audio(call.engine_session.speak(NEXT))
    theirs = await audio(oracle.engine_session.speak(NEXT))
    assert same_audio(ours, theirs), "the next reply differs: the contexts (or caches) are not the same"


async def pause_for_a_guess(call: Call, said: bytes) -> tuple[Guess, int, int]:
    """The caller says ``said`` and pauses: the guess the call made on it (heard, its reply begun), and
    the speech's start and pause (ms)."""
    start, paused = span(said)
    call.send(f.SpeechStarted("guessed", start))
    call.send(f.TurnPaused("guessed", start, paused, said, 0))
    guess = await call.guess()
    assert guess.heard and guess.utt is not None
    return guess, start, paused


async def answer_equals_a_call_without_the_guess(
    tmp_path: Path, engine: Dia2Engine, asr: Transcriber, call: Call, start: int, whole: bytes
) -> None:
    """The caller's whole turn ends: what the call answers, and its context, are an oracle call's that only
    ever heard ``whole``."""
    _, end = span(whole)
    call.send(f.TurnEnded("guessed", start, end, "silence", whole, 0))
    answer = await call.played()
    segments, _ = await call.context()
    assert [kind for kind, _, _ in segments] == ["reply", "user", "reply"]
    oracle, expected = await oracle_of(tmp_path, engine, asr, whole)
    assert same_audio(answer, expected)
    await assert_same_context(call, oracle)
    await hang_up(call, oracle)


def test_a_used_guess_is_heard_once_and_its_held_audio_sent(tmp_path: Path, asr: Transcriber) -> None:
    async def run(engine: Dia2Engine) -> None:
        call = await open_call(tmp_path, engine, asr, "guessed", speculative=True)
        turn = pcm_of("I need some help with my account.")
        guess, start, end = await pause_for_a_guess(call, turn)
        assert guess.utt is not None
        await guess.utt.made.wait()
        assert guess.utt.complete and guess.utt.held_frames, "the reply was made ahead, held"
        assert call.wire.frames.empty(), "nothing of it reached the worker before the turn ended"
        held = b"".join(guess.utt.held_frames)
        call.send(f.TurnEnded("guessed", start, end, "silence", turn, 0))
        sent = await call.played()
        assert sent == held  # the audio made in the silence, sent as it was
        segments, _ = await call.context()
        assert [kind for kind, _, _ in segments] == ["reply", "user", "reply"]  # greeting, turn, reply once

        oracle, answer = await oracle_of(tmp_path, engine, asr, turn)
        assert same_audio(answer, sent)  # the reply made ahead is the one made after the turn
        await assert_same_context(call, oracle)
        await hang_up(call, oracle)

    asyncio.run(in_engine(tmp_path, run))


def test_a_discarded_guess_leaves_the_context_of_a_call_without_it(tmp_path: Path, asr: Transcriber) -> None:
    async def run(engine: Dia2Engine) -> None:
        call = await open_call(tmp_path, engine, asr, "guessed", speculative=True)
        guess, start, paused = await pause_for_a_guess(call, pcm_of(FIRST))
        assert guess.utt is not None
        await guess.utt.made.wait()
        assert guess.utt.complete, "the guess's reply was in the context before the caller went on"
        call.send(f.TurnResumed("guessed", start, paused + 200))
        await answer_equals_a_call_without_the_guess(tmp_path, engine, asr, call, start, pcm_of(WHOLE))

    asyncio.run(in_engine(tmp_path, run))


def test_a_guess_dropped_while_its_reply_is_made_is_forgotten(tmp_path: Path, asr: Transcriber) -> None:
    """The caller goes on as soon as the guess exists: its reply has begun (measured: no chunk yet) when it
    is dropped; that reply ends, nothing of it is sent, and the context is rewound once it has ended."""

    async def run(engine: Dia2Engine) -> None:
        call = await open_call(tmp_path, engine, asr, "guessed", speculative=True)
        guess, start, paused = await pause_for_a_guess(call, pcm_of(FIRST))
        assert guess.utt is not None
        call.send(f.TurnResumed("guessed", start, paused + 200))
        await guess.utt.made.wait()
        assert guess.utt.cancelled and not guess.utt.complete
        await answer_equals_a_call_without_the_guess(tmp_path, engine, asr, call, start, pcm_of(WHOLE))

    asyncio.run(in_engine(tmp_path, run))


def test_the_session_forgets_a_guess_mid_reply(tmp_path: Path) -> None:
    """`Dia2Session` alone: two chunks of the reply made ahead, then `forget_ahead` while its iterator is
    suspended: no further chunk comes, and the context is a session's that never heard the guess."""

    async def run(engine: Dia2Engine) -> None:
        guessed, oracle = engine.open_session("guessed"), engine.open_session("oracle")
        for session in (guessed, oracle):
            await audio(session.speak("Hello there."))
        caller = caller_audio("I need some help", lead_s=0.3, tail_s=0.0).pcm
        assert await guessed.hear_ahead(caller, RATE, "I need some help")
        assert not await guessed.hear_ahead(caller, RATE, "again"), "one guess at a time"
        chunks = guessed.speak_ahead("You said: I need some help")
        got = [await anext(chunks), await anext(chunks)]
        guessed.forget_ahead()
        rest = [c async for c in chunks]
        assert len(got) == 2 and rest == [], len(rest)
        assert not guessed.holds_ahead()
        assert (await guessed.state())["segments"] == (await oracle.state())["segments"]
        ours = await audio(guessed.speak(NEXT))
        theirs = await audio(oracle.speak(NEXT))
        assert same_audio(ours, theirs)
        for session in (guessed, oracle):
            await session.close()

    asyncio.run(in_engine(tmp_path, run))
