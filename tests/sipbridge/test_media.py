"""The worker's media logic without a SIP stack: playback queue, barge-in, IPC frames, outcomes."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import numpy as np
import pytest

from audio.testsignals import espeak, speech_extent
from audio.vad import VadSettings, make_segmenter
from sipbridge import frames as f
from sipbridge.media.inbound import EchoGate, Inbound
from sipbridge.media.playback import PlaybackQueue
from sipbridge.outcomes import OUTCOME_BY_ENDER, call_outcome, refusal_outcome
from sipbridge.sip.account import SourceFilter
from sipbridge.sip.ipc import ProtocolError, SyncChannel, decode, encode, read_frame, write_frame

FRAME = 320  # 20 ms of 8 kHz int16


def frames_of(value: int, n: int) -> bytes:
    return np.full(n * FRAME // 2, value, np.int16).tobytes()


def test_playback_plays_in_order_pads_the_tail_and_counts_underruns() -> None:
    q = PlaybackQueue(FRAME)
    assert q.pop() == q.silence  # idle: silence, not an underrun
    q.push(1, True, frames_of(1, 2)[:-100])  # 1.7 frames
    q.push(2, True, frames_of(2, 1))
    assert np.frombuffer(q.pop(), np.int16)[0] == 1
    assert q.pop() == q.silence  # utterance 1 not ended and its partial frame not complete: underrun
    assert q.underruns == 1
    q.end(1)
    last = np.frombuffer(q.pop(), np.int16)
    assert last[0] == 1 and last[-1] == 0  # padded with silence
    q.end(2)
    assert np.frombuffer(q.pop(), np.int16)[0] == 2
    assert q.pop() == q.silence
    done = q.take_finished()
    assert [(d.utterance, d.interrupted, d.underruns) for d in done] == [(1, False, 1), (2, False, 0)]


def test_an_utterance_starts_once_its_margin_is_queued_and_then_never_waits_for_it() -> None:
    q = PlaybackQueue(FRAME, start_frames=3)
    q.push(1, True, frames_of(1, 1)[:-2])  # the first chunk is short of a frame (the resampler's lead-in)
    q.push(1, True, frames_of(1, 1))
    assert q.pop() == q.silence and q.pop() == q.silence  # filling the margin: waiting, not an underrun
    assert q.underruns == 0 and q.frames_played == 0
    q.push(1, True, frames_of(1, 2))
    played = [np.frombuffer(q.pop(), np.int16)[0] for _ in range(3)]
    assert played == [1, 1, 1] and q.underruns == 0
    assert q.pop() == q.silence and q.underruns == 1  # started: a missing frame now is an underrun
    q.end(1)
    assert np.frombuffer(q.pop(), np.int16)[0] == 1  # the padded partial frame
    q.push(2, True, frames_of(2, 1))  # shorter than the margin, and ended: it plays at once
    q.end(2)
    assert np.frombuffer(q.pop(), np.int16)[0] == 2
    done = q.take_finished()
    assert [(d.utterance, d.underruns) for d in done] == [(1, 1)]
    assert q.pop() == q.silence and [d.underruns for d in q.take_finished()] == [0]


def test_cancel_drops_queued_audio_and_audio_still_in_flight() -> None:
    q = PlaybackQueue(FRAME)
    q.push(1, False, frames_of(1, 5))
    q.push(2, True, frames_of(2, 5))
    q.pop()
    assert not q.interruptible_playing()  # the protected utterance is at the head
    cut, dropped = q.cancel(interruptible_only=True)
    assert cut == [2] and dropped == 5
    q.push(2, True, frames_of(2, 5))  # late audio of a cut utterance is discarded
    q.end(1)
    played = [np.frombuffer(q.pop(), np.int16)[0] for _ in range(6)]
    assert played == [1, 1, 1, 1, 0, 0]
    q.cancel([7])  # an utterance the worker has not seen yet: its audio will be dropped when it comes
    q.push(7, True, frames_of(7, 2))
    assert q.pop() == q.silence


def test_a_withdrawn_provisional_start_stops_everything_until_the_supervisor_resumes() -> None:
    # AMD's provisional "human" was withdrawn: not-interruptible audio (the disclosure) stops too, audio
    # still on its way (even of an utterance the worker never saw) is dropped, until ResumePlayback says
    # from which id audio is live again; older ids stay dead after it.
    q = PlaybackQueue(FRAME)
    q.push(1, False, frames_of(1, 5))
    q.pop()
    cut, dropped = q.withdraw()
    assert cut == [1] and dropped == 4
    assert [(d.utterance, d.interrupted) for d in q.take_finished()] == [(1, True)]
    q.push(1, False, frames_of(1, 2))
    q.push(2, True, frames_of(2, 2))  # sent before the supervisor heard of the withdrawal
    q.end(2)
    assert q.pop() == q.silence
    q.resume(3)
    q.push(2, True, frames_of(2, 2))
    q.push(3, False, frames_of(3, 2))
    assert [np.frombuffer(q.pop(), np.int16)[0] for _ in range(3)] == [3, 3, 0]


def test_inbound_barges_in_once_the_caller_spoke_barge_in_min_ms() -> None:
    speech = (espeak("Hello, I would like some help please.", 8000) * 20000).astype(np.int16)
    audio = np.concatenate([np.zeros(8000, np.int16), speech, np.zeros(8000, np.int16)])
    q = PlaybackQueue(FRAME)
    q.push(1, True, frames_of(1000, 500))
    events: list[f.Frame] = []
    settings = VadSettings()
    inbound = Inbound("c", make_segmenter(settings, 8000), q, events.append, barge_in_min_ms=200)
    cut_at = None
    for i in range(0, len(audio) - 160 + 1, 160):
        inbound.on_frame(audio[i : i + 160].tobytes())
        q.pop()
        if cut_at is None and any(isinstance(e, f.BargeIn) for e in events):
            cut_at = inbound.segmenter.now_ms
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["SpeechStarted", "BargeIn"] and "TurnEnded" in kinds
    start = events[0].t_ms  # type: ignore[attr-defined]
    assert cut_at is not None and 200 <= cut_at - start <= 200 + 100  # decided within VAD's onset lag
    assert q.pop() == q.silence  # nothing of the cut utterance plays after the decision
    assert kinds.count("BargeIn") == 1


def test_every_frame_type_survives_the_wire() -> None:
    samples = [
        f.WorkerReady(0, 123, 5060, None),
        f.CallStarted("c", "sip:a@b", "sip:c@d", "127.0.0.1:5", "PCMU", "x"),
        f.TurnEnded("c", 100, 900, "silence", frames_of(3, 2)),
        f.PlayAudio("c", 4, False, frames_of(5, 1)),
        f.CancelUtterances("c", [1, 2]),
        f.AmdProvisional("c", "withdraw", 1680, "speech again"),
        f.ResumePlayback("c", 3),
        f.CallEnded("c", 200, "OK", "remote", 10, 11, 0),
        f.Ping(5, 6, b"\x01\x02"),
    ]
    for frame in samples:
        data = encode(frame)
        header_len = int.from_bytes(data[:4], "little")
        assert decode(data[8 : 8 + header_len], data[8 + header_len :]) == frame
    with pytest.raises(ProtocolError):
        decode(b'{"type": "Nope"}', b"")


def test_sync_and_async_ends_talk() -> None:
    async def scenario() -> list[f.Frame]:
        a, b = socket.socketpair()
        worker = SyncChannel(a)
        reader, writer = await asyncio.open_connection(sock=b)
        worker.send(f.Dtmf("c", "5"))
        got = [await read_frame(reader)]
        write_frame(writer, f.Hangup("c", 200, "bye"))
        await writer.drain()
        got.append(await asyncio.to_thread(worker.recv))
        writer.close()
        worker.close()
        return got

    assert asyncio.run(scenario()) == [f.Dtmf("c", "5"), f.Hangup("c", 200, "bye")]


def test_source_filter() -> None:
    sf = SourceFilter(["127.0.0.0/8", "10.1.0.0/16", "::1/128"])
    assert sf.allows("127.0.0.1:5060") and sf.allows("10.1.2.3:5070") and sf.allows("[::1]:5060")
    assert not sf.allows("10.2.0.1:5060") and not sf.allows("[2001:db8::1]:5060") and not sf.allows("junk")


@pytest.mark.parametrize(
    ("by", "failure", "outcome"),
    [
        *((by, None, outcome) for by, outcome in OUTCOME_BY_ENDER.items()),
        ("remote", "engine: boom", "failed"),
    ],
)
def test_outcome_table(by: str, failure: str | None, outcome: str) -> None:
    assert call_outcome(by, failure) == outcome


def test_refusal_outcomes_keep_488_and_shutdown_apart_from_the_acls_403() -> None:
    assert [refusal_outcome(c) for c in (403, 488, 486, 487, 599)] == [
        "rejected", "not_acceptable", "busy", "cancelled", "rejected",
    ]  # fmt: skip
    assert call_outcome("shutdown", None) == "interrupted" != call_outcome("remote", None)


def test_frames_are_frozen_dataclasses() -> None:
    for cls in f.FRAME_TYPES.values():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def _inbound(min_ms: int, out: list[f.Frame]) -> Inbound:
    playback = PlaybackQueue(320)
    playback.push(1, True, bytes(320) * 500)  # 10 s of interruptible bot audio queued
    return Inbound("c", make_segmenter(VadSettings(), 8000), playback, out.append, min_ms)


@pytest.mark.parametrize("min_ms", [0, 200])
def test_barge_in_energy_onset_is_immediate_but_a_noise_burst_needs_the_minimum(min_ms: int) -> None:
    """Energy pre-trigger: with 0 ms the frame the sound arrives in cuts; with 200 ms a 100 ms noise
    burst (loud, not speech) never does, and speech cuts once it has lasted 200 ms."""
    out: list[f.Frame] = []
    ib = _inbound(min_ms, out)
    for _ in range(10):
        ib.on_frame(bytes(320))
    noise = (np.random.default_rng(1).standard_normal(800) * 4000).astype(np.int16)
    for k in range(5):  # 100 ms
        ib.on_frame(noise[160 * k : 160 * (k + 1)].tobytes())
    cuts = [x for x in out if isinstance(x, f.BargeIn)]
    if min_ms == 0:
        assert len(cuts) == 1 and cuts[0].onset_ms == 200 and cuts[0].t_ms == 220  # the burst's first frame
        assert cuts[0].decided_at is not None
        return
    assert not cuts
    for _ in range(40):  # quiet: the burst is over (a dropped non-turn at most)
        ib.on_frame(bytes(320))
    speech = (espeak("Hello, I would like some help please.", 8000) * 0.7 * 32767).astype(np.int16)
    start = int(np.argmax(np.abs(speech) > 1000)) // 160 * 160
    onset_frame = ib.frames
    for k in range(start, len(speech) - 160, 160):
        ib.on_frame(speech[k : k + 160].tobytes())
    (cut,) = [x for x in out if isinstance(x, f.BargeIn)]
    assert cut.onset_ms is not None and cut.onset_ms >= onset_frame * 20
    # Dated from the sound's onset (or Silero's lag-corrected start if a frame earlier), not Silero's event.
    assert 160 <= cut.t_ms - cut.onset_ms <= 200, cut


def test_inbound_says_when_the_caller_goes_on_after_a_pause() -> None:
    """A 350 ms pause mid-sentence sends TurnPaused then TurnResumed (the supervisor's end-of-turn judgement
    of that pause is void); the final pause sends TurnPaused then TurnEnded, with no TurnResumed."""
    first, second = (espeak(text, 8000) for text in ("I need some help", "with my account please"))
    first, second = ((x[slice(*speech_extent(x))] * 20000).astype(np.int16) for x in (first, second))
    gap = np.zeros(2800, np.int16)  # 350 ms
    audio = np.concatenate([np.zeros(4000, np.int16), first, gap, second, np.zeros(8000, np.int16)])
    events: list[f.Frame] = []
    settings = VadSettings(pause_ms=150)
    inbound = Inbound("c", make_segmenter(settings, 8000), PlaybackQueue(FRAME), events.append, 200)
    for i in range(0, len(audio) - 160 + 1, 160):
        inbound.on_frame(audio[i : i + 160].tobytes())
    kinds = [type(e).__name__ for e in events if not isinstance(e, f.BargeIn)]
    assert kinds == ["SpeechStarted", "TurnPaused", "TurnResumed", "TurnPaused", "TurnEnded"], kinds
    resumed = next(e for e in events if isinstance(e, f.TurnResumed))
    second_onset_ms = (4000 + len(first) + len(gap)) / 8
    assert abs(resumed.t_ms - second_onset_ms) <= 40, (resumed.t_ms, second_onset_ms)
    assert resumed.start_ms == events[0].t_ms  # type: ignore[attr-defined]


def _echo_call(
    gate: EchoGate | None, caller_at_s: float | None, echo_db: float | None = -10.0
) -> tuple[list[f.Frame], int]:
    """A bot reply played while the line sends it back `echo_db` down and 100 ms late (a hybrid's echo;
    None: no echo), and maybe the caller talking over it from `caller_at_s`; returns the events and the
    caller's onset (ms)."""
    bot = (espeak("Thank you for calling. " * 4, 8000, speed=170) * 0.7 * 32767).astype(np.int16)
    bot = bot[: len(bot) // 160 * 160]
    playback = PlaybackQueue(FRAME)
    playback.push(1, True, bot.tobytes())
    playback.end(1)
    events: list[f.Frame] = []
    inbound = Inbound("c", make_segmenter(VadSettings(), 8000), playback, events.append, 200, echo=gate)
    caller = (espeak("Sorry, I need to stop you there.", 8000) * 0.7 * 32767).astype(np.int16)
    caller = caller[slice(*speech_extent(caller))]
    start = -1 if caller_at_s is None else int(caller_at_s * 8000) // 160 * 160
    sent: list[np.ndarray] = []
    for tick in range(len(bot) // 160 + 60):
        sent.append(np.frombuffer(playback.pop(), np.int16))  # the clock thread's tick
        inbound.on_bot_frame(sent[-1].tobytes())
        heard = sent[-6] * 10 ** (echo_db / 20) if len(sent) > 5 and echo_db is not None else np.zeros(160)
        if 0 <= start <= tick * 160 < start + len(caller) - 160:
            heard = heard + caller[tick * 160 - start : tick * 160 - start + 160]
        inbound.on_frame(np.clip(heard, -32768, 32767).astype(np.int16).tobytes())
    return events, start // 8


def test_the_bots_own_echo_never_barges_in_but_the_caller_still_does() -> None:
    gate = EchoGate.of(-10.0, 500)
    events, _ = _echo_call(None, None)  # no gate: the echo is speech to the VAD and cuts the bot
    assert any(isinstance(e, f.BargeIn) for e in events)

    events, _ = _echo_call(gate, None)
    assert not [e for e in events if isinstance(e, f.BargeIn | f.TurnEnded | f.TurnPaused)], events

    events, onset_ms = _echo_call(EchoGate.of(-10.0, 500), 3.0)  # the echo delay is measured by then
    (cut,) = [e for e in events if isinstance(e, f.BargeIn)]
    assert 0 <= cut.t_ms - onset_ms <= 260, (cut, onset_ms)  # the default barge_in_min_ms: 200
    assert any(isinstance(e, f.TurnEnded) for e in events)  # and the caller's words are a turn
