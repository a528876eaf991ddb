"""Answering-machine detection and beep detection on espeak-ng calls through the telephone band."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from audio.amd import (
    DEFAULT_MACHINE_PHRASES,
    AmdSettings,
    AnsweringMachineDetector,
    Decision,
    GreetingFeed,
    MessageCue,
)
from audio.amd_testset import (
    BEEPS,
    SCREENER_PROMPTS,
    SENTENCE_PAUSES_MS,
    SHORT_MACHINE_GREETINGS,
    AmdCase,
    build_short_machine_cases,
    human_case,
    machine_case,
)
from audio.beep import Beep, BeepDetector, BeepSettings
from audio.testsignals import SceneBuilder, espeak, telephone_band

GREETING = MACHINE = (
    "Hi, you've reached the HR department of Acme Corporation. We can't take your call right now. "
    "Please leave a message after the tone."
)
FRAME = 160


def run(case: AmdCase, settings: AmdSettings | None = None, **kwargs: object) -> tuple[Decision, int]:
    """Decision and the index of the frame that made it."""
    amd = AnsweringMachineDetector(settings, **kwargs)  # type: ignore[arg-type]
    for i, frame in enumerate(case.frames()):
        decision = amd.process(frame)
        if decision is not None:
            return decision, i
    return amd.finish(), len(case.frames())


def message_cue(case: AmdCase, settings: AmdSettings | None = None) -> tuple[Decision, MessageCue | None]:
    amd = AnsweringMachineDetector(settings)
    frames = case.frames()
    decision, index = run(case, settings)
    # Replay: run() used its own detector; redo it here to keep the stream in one detector.
    for frame in frames[: index + 1]:
        amd.process(frame)
    waiter = amd.wait_for_beep()
    cue = waiter.process(None)
    for frame in frames[index + 1 :]:
        cue = cue or waiter.process(frame)
    return decision, cue


@pytest.mark.parametrize(
    ("text", "voice", "speed", "noise"),
    [
        ("Hello?", "en-us", 150, "clean"),
        ("HR, this is Dana.", "en-gb", 175, "noise-40dBFS"),
        ("Yes?", "en-us+f3", 130, "noise-30dBFS"),
        ("Acme payroll, how can I help?", "en-us+m3", 165, "noise-50dBFS"),
    ],
)
def test_human_answer_is_human(text: str, voice: str, speed: int, noise: str) -> None:
    case = human_case(text, voice, speed, noise, seed=7)
    decision, _ = run(case)
    assert decision.kind == "human", decision.reasons
    assert decision.reasons[0].startswith("short greeting")
    # Decided after the answer ended plus the after-greeting silence, not before.
    assert case.greeting_end_ms + 800 - 60 <= decision.decided_at_ms <= case.greeting_end_ms + 800 + 200
    assert decision.decided_at_ms <= AmdSettings().total_analysis_ms


@pytest.mark.parametrize(
    ("voice", "speed", "noise"), [("en-us", 150, "clean"), ("en-gb", 175, "noise-30dBFS")]
)
def test_long_greeting_is_machine(voice: str, speed: int, noise: str) -> None:
    case = machine_case(GREETING, voice, speed, noise, beep=None, seed=3)
    decision, _ = run(case)
    assert decision.kind == "machine", decision.reasons
    assert decision.reasons[0].startswith("long greeting")
    start = case.scene.turns[0][0]
    # greeting_ms of speech after the greeting started (VAD onset lag ~60 ms, frame rounding).
    assert start + 2500 <= decision.decided_at_ms <= start + 2500 + 200
    assert decision.speech_ms >= 2500 and decision.initial_silence_ms == pytest.approx(start, abs=120)


@pytest.mark.parametrize(
    ("beep", "noise"),
    list(zip(BEEPS, ["clean", "noise-50dBFS", "noise-40dBFS", "noise-30dBFS"], strict=True)),
)
def test_beep_found_within_40ms_and_message_starts_after_it(
    beep: tuple[float, float, float], noise: str
) -> None:
    case = machine_case(GREETING, "en-us", 150, noise, beep=beep, seed=11)
    start, end, freq = case.scene.tones[0]
    detector = BeepDetector()
    reports = [b for b in map(detector.process, case.frames()) if b is not None]
    assert len(reports) == 2  # once at min_ms, once at its end
    early, done = reports
    assert early.end_ms is None and abs(early.start_ms - start) <= 40
    assert done.end_ms is not None and abs(done.end_ms - end) <= 40
    assert done.freq_hz == pytest.approx(freq, abs=5)
    assert detector.beeps == [done]
    decision, cue = message_cue(case)
    assert decision.kind == "machine"
    assert cue is not None and cue.reason == "beep"
    assert end - 40 <= cue.at_ms <= end + 40


def test_no_beep_in_speech_noise_and_bursts() -> None:
    cases = [
        human_case(text, voice, speed, noise, seed=i)
        for i, (text, (voice, speed), noise) in enumerate(
            zip(
                ["Good morning, human resources.", "Hello, this is Mark speaking.", "Hi, who's calling?"],
                [("en-us+f3", 130), ("en-gb-scotland", 200), ("en-us", 150)],
                ["clean", "noise-40dBFS", "noise-30dBFS"],
                strict=True,
            )
        )
    ]
    cases.append(machine_case(GREETING, "en-us+m3", 165, "clean", beep=None, seed=5))
    for case in cases:
        detector = BeepDetector()
        assert [b for b in map(detector.process, case.frames()) if b is not None] == [], case.name
    b = SceneBuilder(16000, seed=1).silence(300).burst(600, 0.1).silence(300).burst(500, 0.1, "brown")
    noise_only = telephone_band(b.silence(300).build(noise_rms=0.01))
    pcm = noise_only.int16()
    detector = BeepDetector()
    assert all(detector.process(pcm[i : i + FRAME]) is None for i in range(0, len(pcm) - FRAME + 1, FRAME))


def test_tones_that_are_not_beeps() -> None:
    def tone(freq: float, ms: int, amplitude: float = 0.3) -> list[npt.NDArray[np.int16]]:
        x = amplitude * np.sin(2 * np.pi * freq * np.arange(ms * 8) / 8000)
        pcm = (x * 32767).astype(np.int16)
        return [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]

    silence = [np.zeros(FRAME, np.int16)] * 5
    for frames in (
        tone(1000, 100),
        tone(200, 400),
        tone(3000, 400),
        tone(1000, 6000),
        tone(1000, 400, 0.003),
    ):
        detector = BeepDetector()
        for frame in [*frames, *silence]:
            detector.process(frame)
        assert detector.beeps == []
    detector = BeepDetector()
    two = [detector.process(f) for f in [*tone(1000, 300), *tone(1300, 300), *silence]]
    assert [(b.start_ms, b.end_ms) for b in two if b is not None and b.end_ms] == [(0, 300), (300, 600)]


def test_initial_silence_rule() -> None:
    case = human_case("Hello?", seed=1)
    silent = dataclasses.replace(case, scene=dataclasses.replace(case.scene, audio=case.scene.audio * 0))
    decision, _ = run(silent)
    assert (decision.kind, decision.decided_at_ms) == ("machine", 2500)
    assert decision.reasons[0] == "initial silence 2500 ms >= 2500"
    decision, _ = run(silent, AmdSettings(initial_silence_decision="not_sure"))
    assert decision.kind == "not_sure"


WORDS = AmdSettings(asr=True)
SAM = "Hi, this is Sam. Leave a message."


def run_with_words(
    case: AmdCase, words: dict[int, tuple[str, int]], settings: AmdSettings = WORDS
) -> Decision:
    """Feed the case; ``words[i]`` = (text, audio_ms) reaches the detector just before frame ``i`` (after
    frame i-1, at ``i * 20`` ms of audio), as a transcript from the supervisor's ASR would."""
    amd = AnsweringMachineDetector(settings)
    for i, frame in enumerate(case.frames()):
        if i in words:
            amd.add_transcript(*words[i])
        decision = amd.process(frame)
        if decision is not None:
            return decision
    return amd.finish()


def at(ms: int) -> int:
    """Index of the frame before which a transcript arriving at `ms` of audio is handed over."""
    assert ms % 20 == 0
    return ms // 20


def test_short_machine_greeting_is_machine_by_its_words_even_after_the_timing_rule() -> None:
    case = machine_case(SAM, "en-gb", 175, "clean", beep=None, seed=2)
    timing = run(case)[0]
    assert timing.kind == "human"  # too short for the timing rules: the known weak spot
    # Words arrive late: the complete phrase comes 300 ms after timing alone would have said human.
    partial = (at(1000), ("Hi, this is", 1000))
    whole = at(timing.decided_at_ms + 300), (SAM, timing.decided_at_ms - 500)
    decision = run_with_words(case, dict([partial, whole]))
    assert decision.kind == "machine", decision.reasons
    assert decision.reasons[0] == "voicemail phrase 'leave a message' in greeting"
    assert decision.decided_at_ms == timing.decided_at_ms + 320  # on the frame after the words came
    assert decision.transcript == SAM and decision.transcript_ms == timing.decided_at_ms - 500
    assert f"words {SAM!r} of the first {timing.decided_at_ms - 500} ms" in decision.reasons[-1]


def test_human_decision_is_held_until_the_words_cover_the_greeting() -> None:
    case = human_case("Hello?", seed=7)
    timing = run(case)[0]
    t_h = timing.decided_at_ms
    end = int(case.greeting_end_ms)
    words = {
        at(600): ("Hel", 500),  # a partial transcript (the chunk cut the word): not the whole greeting
        at(t_h + 100): ("", 400),  # stale (covers less than the last one): ignored
        at(t_h + 200): ("Hello?", end + 240 - end % 20),  # covers the greeting's last word
    }
    decision = run_with_words(case, words)
    assert decision.kind == "human"
    assert decision.reasons[0] == f"{timing.reasons[0]}; no voicemail phrase in its words".replace(
        "then 800 ms", "then 1020 ms"
    )
    assert (decision.decided_at_ms, decision.held_ms) == (t_h + 220, 220)
    assert decision.transcript == "Hello?"


def test_words_already_in_when_the_silence_rule_fires_cost_no_time() -> None:
    case = human_case("HR, this is Dana.", "en-gb", 175, seed=3)
    timing = run(case)[0]
    covered = timing.decided_at_ms - 300
    decision = run_with_words(case, {at(covered + 100): ("HR, this is Dana.", covered)})
    assert (decision.kind, decision.decided_at_ms, decision.held_ms) == ("human", timing.decided_at_ms, 0)


@pytest.mark.parametrize("wait_ms", [1000, 400])
def test_no_words_in_time_decides_on_timing_alone(wait_ms: int) -> None:
    case = human_case("Hello?", seed=7)
    t_h = run(case)[0].decided_at_ms
    decision = run_with_words(case, {}, AmdSettings(asr=True, asr_wait_ms=wait_ms))
    assert decision.kind == "human"
    assert (decision.decided_at_ms, decision.held_ms) == (t_h + wait_ms, wait_ms)
    assert decision.reasons[0].startswith("short greeting")
    assert decision.reasons[0].endswith(
        f"no words of the whole greeting within asr_wait_ms {wait_ms}: timing alone"
    )
    assert decision.reasons[-1] == "no words from ASR yet" and decision.transcript is None


def test_hold_never_goes_past_total_analysis() -> None:
    case = human_case("Hello?", seed=7)
    t_h = run(case)[0].decided_at_ms
    total = t_h + 300
    settings = AmdSettings(
        asr=True, total_analysis_ms=total, greeting_ms=min(2500, total), initial_silence_ms=min(2500, total)
    )
    decision = run_with_words(case, {}, settings)
    assert (decision.kind, decision.decided_at_ms, decision.held_ms) == ("human", total, 300)
    assert decision.reasons[0].endswith(
        f"total_analysis_ms {total} reached before the words of the whole greeting: timing alone"
    )


def test_long_greeting_stays_machine_on_timing_whatever_the_words() -> None:
    case = machine_case(GREETING, "en-us", 150, "clean", beep=None, seed=3)
    timing = run(case)[0]
    heard = "Hi, you've reached the HR department"
    decision = run_with_words(case, {at(1500): (heard, 1500)})
    assert decision.kind == "machine" and decision.reasons[0].startswith("long greeting")
    assert decision.decided_at_ms == timing.decided_at_ms and decision.transcript == heard


def test_more_greeting_during_the_hold_starts_a_new_hold() -> None:
    """Timing says human after "Hi, this is Sam." and its pause, the words are not in yet, and the greeting
    goes on: the hold starts again at the next silence (a hold that kept its first start would run out
    then and say human on timing alone), and the words of the whole greeting make it a machine."""
    b = SceneBuilder(16000, seed=4).silence(400).speech(espeak("Hi, this is Sam.", 16000), gain=0.8)
    b.silence(900).speech(espeak("Leave a message.", 16000), gain=0.8).silence(3000)
    scene = telephone_band(b.build())
    case = AmdCase("machine/pause", "machine", scene, "clean", scene.turns[-1][1])
    first_hold = run(case)[0].decided_at_ms  # timing alone: human after the first part
    assert scene.turns[1][0] < first_hold + 1000  # the second part starts inside the first hold
    settings = AmdSettings(asr=True, total_analysis_ms=8000)
    no_words = run_with_words(case, {}, settings)
    second_hold = no_words.decided_at_ms - 1000
    assert no_words.kind == "human" and no_words.held_ms == 1000 and second_hold > scene.turns[1][1]
    words = {
        at(first_hold + 600): ("Hi, this is Sam.", first_hold),  # late, and only the first part
        at(second_hold + 300): (SAM, second_hold - 500),
    }
    decision = run_with_words(case, words, settings)
    assert decision.kind == "machine" and decision.reasons[0].startswith("voicemail phrase")
    assert decision.decided_at_ms == second_hold + 320


def test_no_beep_message_waits_for_the_end_of_the_greeting() -> None:
    case = machine_case(GREETING, "en-us", 150, "noise-40dBFS", beep=None, seed=9)
    decision, cue = message_cue(case)
    assert decision.kind == "machine"
    assert cue is not None and cue.reason == "greeting_end"
    # no_beep_timeout_ms (2000) of silence after the greeting, give or take the VAD's offset lag.
    assert case.greeting_end_ms + 2000 <= cue.at_ms <= case.greeting_end_ms + 2000 + 200


def test_decisions_stay_within_total_analysis_and_are_reported_once() -> None:
    settings = AmdSettings(total_analysis_ms=3000, greeting_ms=3000, initial_silence_ms=3000)
    amd = AnsweringMachineDetector(settings)
    case = machine_case("Hello? " * 12, "en-us", 150, "clean", beep=None, seed=1)  # short words, pauses
    decisions = [d for d in map(amd.process, case.frames()) if d is not None]
    assert len(decisions) == 1 and decisions[0].decided_at_ms <= 3000
    assert amd.finish() is decisions[0]


def test_finish_before_a_decision_is_not_sure() -> None:
    amd = AnsweringMachineDetector()
    for frame in human_case("Hello?", seed=1).frames()[:20]:
        assert amd.process(frame) is None
    decision = amd.finish()
    assert decision.kind == "not_sure" and decision.decided_at_ms == 400
    assert "audio ended after 400 ms" in decision.reasons[0]


def test_energy_vad_on_a_clean_line() -> None:
    assert run(human_case("Hello?", seed=4), AmdSettings(vad="energy"))[0].kind == "human"


def test_bad_frames() -> None:
    amd = AnsweringMachineDetector()
    with pytest.raises(ValueError, match="expected 160 int16 samples"):
        amd.process(np.zeros(80, np.int16))
    with pytest.raises(ValueError, match="expected 160 int16 samples"):
        amd.process(np.zeros(160, np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"greeting_ms": 0}, "amd.greeting_ms must be a positive integer"),
        ({"total_analysis_ms": -5}, "amd.total_analysis_ms must be a positive integer"),
        ({"min_word_length_ms": 1.5}, "amd.min_word_length_ms must be a positive integer"),
        ({"maximum_number_of_words": True}, "amd.maximum_number_of_words must be a positive integer"),
        ({"greeting_ms": 6000}, "amd.greeting_ms .6000. is longer than amd.total_analysis_ms"),
        ({"initial_silence_ms": 5001}, "amd.initial_silence_ms .5001. is longer"),
        ({"initial_silence_decision": "fax"}, "amd.initial_silence_decision must be"),
        ({"vad": "silence"}, "amd.vad must be one of silero, webrtc, energy"),
        ({"vad_threshold": 1.0}, "amd.vad_threshold must be in"),
        ({"vad_aggressiveness": 4}, "amd.vad_aggressiveness must be 0..3"),
        ({"silence_threshold": -1}, "amd.silence_threshold must be 0..32767"),
        ({"maximum_word_length_ms": 50}, "amd.maximum_word_length_ms must be at least"),
        ({"machine_phrases": ("leave a message", " ")}, "empty phrase"),
        ({"asr_wait_ms": 0}, "amd.asr_wait_ms must be a positive integer"),
        ({"asr_chunk_ms": -500}, "amd.asr_chunk_ms must be a positive integer"),
        ({"short_greeting_ms": 2500}, "amd.short_greeting_ms .2500. must be positive and below"),
        ({"short_greeting_ms": True}, "amd.short_greeting_ms must be an integer or null"),
        (
            {"short_greeting_ms": 1000, "after_short_greeting_silence_ms": 900},
            "amd.after_short_greeting_silence_ms .900. is longer than amd.after_greeting_silence_ms",
        ),
        ({"after_short_greeting_silence_ms": 0}, "amd.after_short_greeting_silence_ms must be a positive"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AmdSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_freq_hz": 2000, "max_freq_hz": 400}, "beep.min_freq_hz must be > 0 and below"),
        ({"min_ms": 0}, "beep.min_ms must be > 0"),
        ({"min_ms": 300, "max_ms": 200}, "beep.max_ms .200. must be greater"),
        ({"tonality": 1.0}, "beep.tonality must be in"),
        ({"max_drift_hz": 0}, "beep.max_drift_hz must be > 0"),
        ({"min_level_dbfs": 3}, "beep.min_level_dbfs must be < 0"),
    ],
)
def test_beep_settings_validation(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        BeepSettings(**kwargs)  # type: ignore[arg-type]


def test_beep_detector_rejects_band_above_nyquist() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        BeepDetector(8000, 20, BeepSettings(max_freq_hz=4500))
    assert Beep(100, 1000.0, 400).duration_ms == 300


def test_greeting_feed_sends_nothing_before_speech_then_chunks_from_the_answer_on() -> None:
    # The worker's chunking, shared with bench/amd_accuracy.py --asr: 500 ms chunks at 8 kHz.
    feed = GreetingFeed(8000, 500 * 8 * 2)
    frames = [np.full(FRAME, i, np.int16) for i in range(60)]  # 1.2 s, each frame tagged with its index
    chunks = [feed.add(frame, heard_speech=i >= 30) for i, frame in enumerate(frames)]
    sent = [(i, chunk) for i, chunk in enumerate(chunks) if chunk is not None]
    # Speech heard at 620 ms: the first chunk then holds all 620 ms from the answer on; the next one 500 ms
    # later (and nothing more: 1.2 s is not another whole chunk).
    assert [(i, start, len(pcm)) for i, (start, pcm) in sent] == [
        (30, 0, 31 * FRAME * 2),
        (55, 620, 25 * FRAME * 2),
    ]
    assert np.frombuffer(sent[1][1][1], "<i2")[0] == 31  # contiguous: chunk 2 starts where chunk 1 ended


def test_short_machine_greetings_say_a_voicemail_phrase_and_have_no_beep() -> None:
    cases = build_short_machine_cases(noises=("clean",), quick=True)
    assert len(cases) == 6 and all(c.kind == "machine" and c.beep is None for c in cases)
    for text in SHORT_MACHINE_GREETINGS:
        said = text.lower().replace(".", "").replace(",", "")
        assert any(phrase in said for phrase in DEFAULT_MACHINE_PHRASES), text


def test_a_short_answer_is_a_person_after_the_shorter_silence_and_a_long_one_is_not() -> None:
    # "Hello?" (~0.5 s): short_greeting_ms 1500 lets 400 ms of silence decide it, 400 ms before the default.
    settings = AmdSettings(short_greeting_ms=1500, after_short_greeting_silence_ms=400)
    hello = human_case("Hello?", "en-us", 150, "noise-50dBFS", seed=7)
    default, _ = run(hello)
    short, _ = run(hello, settings)
    assert short.kind == default.kind == "human"
    assert short.reasons[0].endswith(">= 400") and default.reasons[0].endswith(">= 800")
    assert short.decided_at_ms == default.decided_at_ms - 400
    assert short.trailing_silence_ms == 400 and default.trailing_silence_ms == 800
    # 1.8 s of speech is more than short_greeting_ms: it waits the whole after_greeting_silence_ms.
    long_answer = human_case("Good morning, human resources.", "en-us", 150, "clean", seed=7)
    decision, _ = run(long_answer, settings)
    assert decision.kind == "human" and decision.reasons[0].endswith(">= 800"), decision.reasons


def test_greeting_with_a_long_pause_after_its_first_sentence_is_what_the_short_silence_gets_wrong() -> None:
    # What the held-out group measures: "Hello. [700 ms] I can't answer ..." is a machine by the default
    # rules (the pause is under 800 ms, then the greeting goes on), a person by a 400 ms short-answer rule.
    text = "Hello. I can't answer the phone right now. Please leave a message."
    case = machine_case(text, "en-us", 150, "clean", beep=None, seed=5, sentence_pause_ms=(700.0, 701.0))
    assert len(case.scene.turns) == 3 and "/pauses700-701ms" in case.name
    pause = case.scene.turns[1][0] - case.scene.turns[0][1]
    assert 700 <= pause <= 702
    assert run(case)[0].kind == "machine"
    shorter = AmdSettings(short_greeting_ms=1500, after_short_greeting_silence_ms=400)
    assert run(case, shorter)[0].kind == "human"
    assert SENTENCE_PAUSES_MS[1] < AmdSettings().after_greeting_silence_ms


def test_a_call_screener_is_a_machine_by_its_length_alone() -> None:
    # Why there is no "call screener" class from timing: its prompt is a long greeting without a beep.
    case = machine_case(SCREENER_PROMPTS[2], "en-gb", 175, "noise-40dBFS", beep=None, seed=30002)
    decision, _ = run(case)
    assert decision.kind == "machine" and decision.reasons[0].startswith("long greeting"), decision.reasons


def proposals(case: AmdCase, settings: AmdSettings) -> tuple[Decision, list[tuple[str, int]]]:
    """The verdict and every provisional proposal up to it, as (action, at_ms), read per frame from
    `provisional_change` as the worker does."""
    amd = AnsweringMachineDetector(settings)
    seen: list[tuple[str, int]] = []
    for frame in case.frames():
        decision = amd.process(frame)
        if amd.provisional_change is not None:
            seen.append((amd.provisional_change.action, amd.provisional_change.at_ms))
        if decision is not None:
            assert [(p.action, p.at_ms) for p in amd.provisionals] == seen
            return decision, seen
    return amd.finish(), seen


def test_a_provisional_start_comes_after_the_short_silence_and_the_verdict_confirms_it() -> None:
    hello = human_case("Hello?", "en-us", 150, "noise-50dBFS", seed=7)
    default, _ = run(hello)
    decision, seen = proposals(hello, AmdSettings(provisional_silence_ms=300))
    # The verdict is the default rules' own, at the same frame; the caller could talk 500 ms before it.
    assert (decision.kind, decision.decided_at_ms, decision.reasons) == (
        default.kind,
        default.decided_at_ms,
        default.reasons,
    )
    assert seen == [("start", default.decided_at_ms - 500)]
    assert decision.provisional_since_ms == default.decided_at_ms - 500
    assert default.provisional_since_ms is None  # off by default in the detector


def test_speech_after_a_provisional_start_withdraws_it_and_a_machine_verdict_follows_unchanged() -> None:
    # "Hello. [700 ms] I can't answer ...": a start in the pause, withdrawn by the next sentence's first
    # voiced frame, and the same machine verdict as without proposals.
    text = "Hello. I can't answer the phone right now. Please leave a message."
    case = machine_case(text, "en-us", 150, "clean", beep=None, seed=5, sentence_pause_ms=(700.0, 701.0))
    default, _ = run(case)
    decision, seen = proposals(case, AmdSettings(provisional_silence_ms=300))
    assert decision.kind == default.kind == "machine" and decision.decided_at_ms == default.decided_at_ms
    assert [action for action, _ in seen][:2] == ["start", "withdraw"], seen
    start, withdraw = seen[0][1], seen[1][1]
    second_sentence = case.scene.turns[1][0]
    # Withdrawn within 200 ms of the second sentence's onset: all the machine heard of the bot.
    assert start < second_sentence <= withdraw <= second_sentence + 200, (seen, second_sentence)
    assert withdraw - start < 700
    # Proposals alternate start/withdraw; none stands at the machine verdict here (it came mid-speech,
    # after the withdrawal), or if one does, the verdict says so for the worker to stop it.
    assert all(a == ("start" if i % 2 == 0 else "withdraw") for i, (a, _) in enumerate(seen))
    standing = seen[-1][1] if seen[-1][0] == "start" else None
    assert decision.provisional_since_ms == standing


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"provisional_silence_ms": 0}, "amd.provisional_silence_ms must be a positive integer or null"),
        ({"provisional_silence_ms": True}, "amd.provisional_silence_ms must be a positive integer or null"),
        (
            {"provisional_silence_ms": 800},
            r"amd.provisional_silence_ms \(800\) must be shorter .* \(800 ms\)",
        ),
        (
            {
                "provisional_silence_ms": 500,
                "short_greeting_ms": 1000,
                "after_short_greeting_silence_ms": 400,
            },
            r"must be shorter than the silence that decides human \(400 ms\)",
        ),
    ],
)
def test_provisional_settings_validation(kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AmdSettings(**kwargs)  # type: ignore[arg-type]
