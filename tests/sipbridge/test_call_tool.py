"""`sipbridge call`'s pure parts: turn taking on real speech through the real VAD, targets, transcript."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from audio.testsignals import espeak, speech_extent
from audio.vad import VadSettings, make_segmenter
from sipbridge.tools import dialogue as d
from sipbridge.tools.transcript import Target, TargetError, Transcript, mapped, parse_target, printable, said

RATE = 8000
FRAME = RATE // 50


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x = espeak("Hello, this is the bot speaking. How can I help?", RATE)
    first, last = speech_extent(x)  # espeak-ng pads with silence: keep the speech only
    return (x[first:last] * 0.7 * 32767).astype(np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.int16)


class Run:
    """Feeds the other side's audio to a Dialogue frame by frame and keeps every event with its time."""

    def __init__(self, lines: list[d.Line] | None, reply_timeout_ms: int = 3000) -> None:
        vad = VadSettings(stop_hangover_ms=500)
        self.dialogue = d.Dialogue(lines, make_segmenter(vad, RATE), reply_timeout_ms)
        self.events: list[d.Event] = []

    def feed(self, pcm: np.ndarray) -> None:
        pcm = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME, np.int16)])
        for i in range(0, len(pcm), FRAME):
            self.events += self.dialogue.bot_frame(pcm[i : i + FRAME])

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def play_last(self) -> int:
        """Our line that the dialogue asked for plays now, for as long as it lasts: returns its end (ms)."""
        speak = self.of(d.Speak)[-1]
        start = self.dialogue.now_ms
        self.feed(silence(len(speak.line.pcm) * 1000 // RATE))
        end = self.dialogue.now_ms
        self.events += self.dialogue.played(speak.index, start, end)
        return end


def line(text: str, ms: int = 600) -> d.Line:
    return d.Line(text, np.full(RATE * ms // 1000, 1000, np.int16), words=text)


def test_each_line_follows_the_end_of_the_other_sides_turn_and_the_gap_is_measured(
    speech: np.ndarray,
) -> None:
    run = Run([line("Hi"), line("Yes")])
    run.feed(np.concatenate([silence(400), speech, silence(300)]))
    assert run.of(d.Speak) == []  # 300 ms of silence is not the end of a turn yet
    run.feed(silence(300))
    (greeting,) = run.of(d.BotSaid)
    (speak,) = run.of(d.Speak)
    assert speak.index == 0 and speak.at_ms >= greeting.end_ms + 500
    assert abs(greeting.start_ms - 400) <= 60  # the VAD's lag is corrected back to the speech onset
    (started,) = run.of(d.BotStarted)
    assert started.gap_ms is None  # nothing of ours to answer yet

    end = run.play_last()
    run.feed(np.concatenate([silence(700), speech, silence(600)]))
    second = run.of(d.BotStarted)[-1]
    assert second.gap_ms is not None and abs(second.gap_ms - 700) <= 60
    assert second.at_ms - end == second.gap_ms
    assert [s.index for s in run.of(d.Speak)] == [0, 1]

    run.play_last()
    run.feed(np.concatenate([silence(300), speech, silence(600)]))
    assert len(run.of(d.DialogueDone)) == 1 and len(run.of(d.BotSaid)) == 3
    assert len(run.dialogue.state.gaps_ms) == 2 and run.dialogue.bot_spoke


def test_a_silent_other_side_is_reported_and_the_lines_go_on() -> None:
    run = Run([line("Hi")], reply_timeout_ms=2000)
    run.feed(silence(1980))
    assert run.events == []
    run.feed(silence(40))
    assert [type(e) for e in run.events] == [d.BotSilent, d.Speak]
    run.play_last()
    run.feed(silence(2020))
    assert [type(e) for e in run.events] == [d.BotSilent, d.Speak, d.BotSilent, d.DialogueDone]
    assert not run.dialogue.bot_spoke


def test_talking_over_our_line_is_no_gap_and_the_turn_in_progress_is_not_an_answer(
    speech: np.ndarray,
) -> None:
    run = Run([line("Hi", ms=1500), line("Yes")], reply_timeout_ms=20000)
    run.feed(np.concatenate([speech, silence(600)]))
    speak = run.of(d.Speak)[0]
    start = run.dialogue.now_ms
    run.feed(np.concatenate([silence(200), speech]))  # it talks while our 1.5 s line plays...
    assert run.of(d.BotStarted)[-1].over_you
    run.events += run.dialogue.played(speak.index, start, start + 1500)
    run.feed(silence(600))  # ...and its turn ends after ours: now the next line
    assert [s.index for s in run.of(d.Speak)] == [0, 1]
    assert run.dialogue.state.gaps_ms == []


def test_speech_that_began_before_our_line_ended_is_no_gap(speech: np.ndarray) -> None:
    """The VAD dates speech back to its onset; an answer dated before our line's end overlapped it."""
    run = Run([line("Hi"), line("Yes")], reply_timeout_ms=20000)
    run.feed(np.concatenate([speech, silence(600)]))
    speak = run.of(d.Speak)[0]
    start = run.dialogue.now_ms
    run.feed(silence(600))
    run.events += run.dialogue.played(speak.index, start, run.dialogue.now_ms + 40)  # ends 40 ms from now
    run.feed(speech)
    started = run.of(d.BotStarted)[-1]
    assert started.over_you and started.gap_ms is None
    assert run.dialogue.state.gaps_ms == []


def test_listening_only_finishes_after_the_greeting(speech: np.ndarray) -> None:
    run = Run([])
    run.feed(np.concatenate([speech, silence(600)]))
    assert [type(e) for e in run.events] == [d.BotStarted, d.BotSaid, d.DialogueDone]


def test_hang_up_mid_turn_still_hands_over_what_was_said(speech: np.ndarray) -> None:
    run = Run(None)
    run.feed(speech[: len(speech) // 2])
    (said_event,) = [e for e in run.dialogue.hung_up() if isinstance(e, d.BotSaid)]
    assert said_event.end_ms > said_event.start_ms


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("sip:bot@127.0.0.1:5060", Target("sip:bot@127.0.0.1:5060", "127.0.0.1", 5060, "udp")),
        ("127.0.0.1:5070", Target("sip:bot@127.0.0.1:5070", "127.0.0.1", 5070, "udp")),
        ("alice@pbx.example", Target("sip:alice@pbx.example", "pbx.example", 5060, "udp")),
        (
            "sip:1000@10.0.0.5;transport=tcp",
            Target("sip:1000@10.0.0.5;transport=tcp", "10.0.0.5", 5060, "tcp"),
        ),
    ],
)
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("sips:bot@host", "TLS"),
        ("sip:bot@host:70000", "out of range"),
        ("sip:bot@host;transport=sctp", "transport"),
        ("sip:bot@[::1]:5060", "IPv6"),
        ("sip:", "not a SIP URI"),
    ],
)
def test_bad_targets_say_why(text: str, why: str) -> None:
    with pytest.raises(TargetError, match=why):
        parse_target(text)


def test_a_line_waiting_for_its_words_holds_back_the_later_ones() -> None:
    printed: list[str] = []
    transcript = Transcript(printed.append)
    words: concurrent.futures.Future[str] = concurrent.futures.Future()
    transcript.add(mapped(words, lambda w: said("bot", 420, 2000, w)))
    transcript.add('you 3.10 s: "Hi"')
    assert printed == []
    words.set_result(" Hello there. ")
    transcript.flush()
    assert printed == ['bot 0.42 s: "Hello there."', 'you 3.10 s: "Hi"']
    transcript.add(mapped(concurrent.futures.Future(), lambda w: w))
    transcript.drain(0.01)
    assert printed[-1] == "(words not ready)"
    assert said("bot", 1000, 2500, "") == "bot 1.00 s: (1.50 s of speech, no words recognised)"


def test_the_microphone_buffer_hands_out_whole_frames_and_stays_short() -> None:
    from sipbridge.tools.devices import MicBuffer

    mic = MicBuffer(frame_bytes=320, rate=RATE)
    mic.push(b"\x01\x00" * 100)
    assert mic.pop() is mic.silence  # less than a frame: silence this tick, the samples wait
    mic.push(b"\x02\x00" * 100)
    frame = mic.pop()
    assert len(frame) == 320 and frame[:2] == b"\x01\x00" and frame[-2:] == b"\x02\x00"
    mic.push(bytes(2 * RATE))  # one second at once: only the newest 200 ms are kept
    frames = [mic.pop() for _ in range(12)]
    assert [f is mic.silence for f in frames] == [False] * 10 + [True] * 2


def test_a_peers_reason_phrase_cannot_drive_the_terminal() -> None:
    assert printable("Busy\x1b[2J\x1b]0;owned\x07 Here\r\n") == "Busy?[2J?]0;owned? Here??"
    assert len(printable("x" * 5000)) == 120
    assert printable("Busy Here") == "Busy Here"
