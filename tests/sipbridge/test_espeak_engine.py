"""The espeak engine's shared sentences (sipbridge/engine/espeak.py): calls that say the same sentence at once
(a burst of calls greeted together) or later (a script's prompts) read one espeak-ng run's audio; a run no
call reads any more is killed. Real espeak-ng processes."""

from __future__ import annotations

import asyncio

import numpy as np

from sipbridge.config import EspeakEngineConfig
from sipbridge.engine.espeak import EspeakEngine, EspeakSession

GREETING = "Hello, this is sipbridge. How can I help?"


async def said(session: EspeakSession, text: str) -> np.ndarray:
    return np.concatenate([chunk async for chunk in session.speak(text)])


async def engine() -> EspeakEngine:
    e = EspeakEngine(EspeakEngineConfig())
    await e.start()
    return e


def test_a_burst_of_calls_saying_the_same_greeting_costs_one_process() -> None:
    async def main() -> None:
        e = await engine()
        alone = await said(e.open_session("first"), GREETING)  # one run; now cached
        e.phrases.clear()  # forget it: the burst below starts cold, all 16 calls at once
        runs = e.processes
        sessions = [e.open_session(f"call-{i}") for i in range(16)]
        audio = await asyncio.gather(*(said(s, GREETING) for s in sessions))
        assert e.processes - runs == 2  # two sentences ("Hello, ..." and "How can I help?"), once each
        for a in audio:
            np.testing.assert_array_equal(a, alone)  # the same samples a call alone gets
        again = await said(e.open_session("later"), GREETING)  # a later call: from the cache, no process
        assert e.processes - runs == 2 and e.shared >= 2 * 15 + 2
        np.testing.assert_array_equal(again, alone)
        await e.close()

    asyncio.run(main())


def test_a_burst_at_the_call_rate_is_resampled_once_per_sentence() -> None:
    """16 calls at 8 kHz saying the greeting together read the very same resampled chunks (one FIR pass per
    sentence, not one per call), equal to a FIR over each sentence's espeak audio."""
    from audio.resample import make_resampler

    async def main() -> None:
        e = await engine()
        sessions = [e.open_session(f"call-{i}") for i in range(16)]

        async def chunks(s: EspeakSession) -> list[np.ndarray]:
            return [c async for c in s.speak_at(GREETING, 8000)]

        heard = await asyncio.gather(*(chunks(s) for s in sessions))
        assert e.processes == 2
        first = heard[0]
        for other in heard[1:]:
            assert len(other) == len(first) and all(a is b for a, b in zip(other, first, strict=True))
        expected = []
        for phrase in e.phrases.values():  # each sentence: its own FIR pass, tail included
            fir = make_resampler(22050, 8000)
            expected += [fir.process(c) for c in phrase.chunks] + [fir.flush()]
            assert list(phrase.rates) == [8000]
        np.testing.assert_allclose(np.concatenate(first), np.concatenate(expected), atol=1e-7)
        await e.close()

    asyncio.run(main())


def test_a_sentence_no_call_reads_any_more_is_killed_and_not_kept() -> None:
    async def main() -> None:
        e = await engine()
        long = " ".join(["This sentence is long enough to be cut while espeak is still writing it"] * 6)
        session = e.open_session("barged")
        stream = session.speak(long)
        first = await stream.__anext__()  # audio is flowing: the run is under way
        assert len(first) > 0
        (phrase,) = e.phrases.values()
        session.cancel()  # barge-in: the only reader leaves
        rest = [chunk async for chunk in stream]
        assert rest == []
        assert phrase.task is not None
        await asyncio.wait_for(asyncio.gather(phrase.task, return_exceptions=True), 10)
        assert phrase.task.cancelled() and not phrase.done  # killed before its end ...
        assert e.phrases == {}  # ... and its partial audio is not served to the next call
        runs = e.processes
        whole = await said(e.open_session("other"), long)
        assert e.processes > runs and len(whole) / 22050 > 10.0  # made again, whole
        await e.close()

    asyncio.run(main())


def test_one_reader_leaving_does_not_cut_the_others() -> None:
    async def main() -> None:
        text = "Please hold while I look that up for you, it will only take a moment."
        reference = await said((await engine()).open_session("alone"), text)
        e = await engine()
        staying, leaving = e.open_session("staying"), e.open_session("leaving")
        stays = asyncio.create_task(said(staying, text))
        left = leaving.speak(text)
        await left.__anext__()  # both read the first sentence's run by now
        leaving.cancel()
        assert [c async for c in left] == []
        whole = await stays
        np.testing.assert_array_equal(whole, reference)  # every sample, though a reader left mid-run
        assert e.shared >= 1
        await e.close()

    asyncio.run(main())
