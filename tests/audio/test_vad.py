"""VAD backends and the turn segmenter: exact event arithmetic on scripted decisions, then real espeak-ng
speech (sentences in noise with a loud burst, wideband and telephone band) against known boundaries."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from audio.testsignals import Scene, SceneBuilder, telephone_band
from audio.vad import (
    GatedSilero,
    SileroVad,
    SpeechPaused,
    SpeechStart,
    TurnEnd,
    TurnSegmenter,
    TurnTooShort,
    VadEvent,
    VadSettings,
    WebRtcVad,
    make_segmenter,
    silero_model_path,
)

TOLERANCE_MS = 80


@dataclass
class Scripted:
    """A classifier that replays a fixed decision per frame: tests the segmenter, not a model."""

    decisions: list[float]
    sample_rate: int = 8000
    onset_lag_ms: int = 0
    offset_lag_ms: int = 0
    i: int = 0

    def speech_prob(self, frame: npt.NDArray[np.int16]) -> float:
        p = self.decisions[self.i]
        self.i += 1
        return p

    def reset(self) -> None:
        self.i = 0


def _feed(seg: TurnSegmenter, pcm: npt.NDArray[np.int16]) -> list[tuple[int, VadEvent]]:
    """All events with the stream time (ms) at which each was emitted."""
    n = seg.frame_samples
    events = []
    for i in range(0, len(pcm) - n + 1, n):
        events += [(seg.now_ms + 0, ev) for ev in seg.process(pcm[i : i + n])]
    events += [(seg.now_ms, ev) for ev in seg.flush()]
    return events


def _frames_pcm(n_frames: int) -> npt.NDArray[np.int16]:
    return np.arange(n_frames * 160, dtype=np.int64).astype(
        np.int16
    )  # distinct samples: slices are checkable


# ---------------------------------------------------------------- segmenter arithmetic (scripted decisions)


def test_event_times_and_pcm_are_exact() -> None:
    # 10 silent frames, 30 speech frames with a 4-frame gap inside, then 40 silent frames.
    d = [0.0] * 10 + [1.0] * 12 + [0.0] * 4 + [1.0] * 14 + [0.0] * 40
    settings = VadSettings(start_hangover_ms=60, stop_hangover_ms=200, min_turn_ms=100)
    seg = TurnSegmenter(Scripted(d), settings, 8000)
    pcm = _frames_pcm(len(d))
    events = _feed(seg, pcm)
    assert [type(e) for _, e in events] == [SpeechStart, TurnEnd]
    (t_start, start), (t_end, end) = events
    assert isinstance(start, SpeechStart) and isinstance(end, TurnEnd)
    assert start.t == 200 and t_start == 200 + 60  # onset at frame 10, announced after 3 speech frames
    assert (end.start, end.end, end.reason) == (200, 800, "silence")  # the 80 ms gap did not end the turn
    assert t_end - settings.stop_hangover_ms == end.end  # the documented definition of "end"
    # pcm: the default 200 ms pre-roll before the start (here all 10 frames the stream had), then the turn.
    assert end.pcm_start == 0 and end.preroll_ms == 200
    np.testing.assert_array_equal(end.pcm, pcm[0 * 160 : 40 * 160])


@pytest.mark.parametrize(
    ("preroll_ms", "lead", "pcm_from"), [(0, 20, 18), (200, 20, 8), (200, 4, 0), (250, 20, 5), (1000, 20, 0)]
)
def test_preroll_keeps_audio_before_the_start_as_far_as_the_stream_goes(
    preroll_ms: int, lead: int, pcm_from: int
) -> None:
    """`start` stays the (lag-corrected) speech onset; pcm begins `preroll_ms` earlier (whole frames, at
    least that long), never before the stream; SpeechPaused carries the same pcm_start."""
    d = [0.0] * lead + [1.0] * 20 + [0.0] * 30
    clf = Scripted(d, onset_lag_ms=40)
    settings = VadSettings(
        start_hangover_ms=60, stop_hangover_ms=300, min_turn_ms=100, pause_ms=200, preroll_ms=preroll_ms
    )
    pcm = _frames_pcm(len(d))
    events = [e for _, e in _feed(TurnSegmenter(clf, settings, 8000), pcm)]
    paused, end = events[1], events[2]
    assert isinstance(paused, SpeechPaused) and isinstance(end, TurnEnd)
    assert end.start == (lead - 2) * 20  # the onset lag correction is unchanged by the pre-roll
    assert end.pcm_start == paused.pcm_start == pcm_from * 20
    np.testing.assert_array_equal(end.pcm, pcm[pcm_from * 160 : (lead + 20) * 160])
    np.testing.assert_array_equal(paused.pcm, end.pcm)


def test_short_turn_is_dropped_and_short_blip_never_starts() -> None:
    d = [0.0] * 5 + [1.0] * 2 + [0.0] * 5 + [1.0] * 6 + [0.0] * 20
    seg = TurnSegmenter(
        Scripted(d), VadSettings(start_hangover_ms=60, stop_hangover_ms=100, min_turn_ms=200), 8000
    )
    events = [e for _, e in _feed(seg, _frames_pcm(len(d)))]
    # the 2-frame blip is below the start hangover; the 6-frame (120 ms) run starts a turn but is too short
    assert events == [SpeechStart(t=240), TurnTooShort(start=240, end=360)]


def test_max_turn_forces_an_end_and_flush_closes_the_last_turn() -> None:
    d = [1.0] * 130
    settings = VadSettings(start_hangover_ms=20, stop_hangover_ms=200, min_turn_ms=0, max_turn_ms=1000)
    seg = TurnSegmenter(Scripted(d), settings, 8000)
    events = [e for _, e in _feed(seg, _frames_pcm(len(d)))]
    ends = [e for e in events if isinstance(e, TurnEnd)]
    assert [(e.start, e.end, e.reason) for e in ends] == [
        (0, 1000, "max_turn"),
        (1000, 2000, "max_turn"),
        (2000, 2600, "flush"),
    ]
    assert sum(len(e.pcm) for e in ends) == 130 * 160  # nothing lost at the cuts
    assert seg.now_ms == 0  # flush resets the stream


def test_lag_correction_moves_boundaries_back_and_keeps_the_end_definition() -> None:
    d = [0.0] * 20 + [1.0] * 30 + [0.0] * 40
    clf = Scripted(d, onset_lag_ms=40, offset_lag_ms=80)
    settings = VadSettings(start_hangover_ms=60, stop_hangover_ms=300, min_turn_ms=100)
    seg = TurnSegmenter(clf, settings, 8000)
    pcm = _frames_pcm(len(d))
    events = _feed(seg, pcm)
    start = events[0][1]
    t_end, end = events[1]
    assert isinstance(start, SpeechStart) and isinstance(end, TurnEnd)
    assert start.t == 400 - 40
    assert end.end == 1000 - 80
    assert t_end - 300 == end.end
    np.testing.assert_array_equal(end.pcm, pcm[8 * 160 : 46 * 160])  # 200 ms pre-roll before the start


def test_speech_paused_carries_the_turn_so_far_once_per_pause() -> None:
    """With pause_ms: a SpeechPaused pause_ms after the speech stops (lag-corrected end, as TurnEnd's),
    holding what TurnEnd would hold then. Speech after a pause gives a later end and, at the next pause,
    another SpeechPaused; the last one equals the TurnEnd that closes the turn."""
    # speech 20 frames, 12 silent (a pause, < the 15-frame hangover), speech 10 frames, silence 30
    d = [0.0] * 5 + [1.0] * 20 + [0.0] * 12 + [1.0] * 10 + [0.0] * 30
    clf = Scripted(d, offset_lag_ms=40)
    settings = VadSettings(start_hangover_ms=20, stop_hangover_ms=300, min_turn_ms=100, pause_ms=200)
    seg = TurnSegmenter(clf, settings, 8000)
    pcm = _frames_pcm(len(d))
    events = _feed(seg, pcm)
    assert [type(e) for _, e in events] == [SpeechStart, SpeechPaused, SpeechPaused, TurnEnd]
    (_, _), (t1, p1), (t2, p2), (t_end, end) = events
    assert isinstance(p1, SpeechPaused) and isinstance(p2, SpeechPaused) and isinstance(end, TurnEnd)
    assert (p1.start, p1.end) == (100, 500 - 40) and t1 - 200 == p1.end  # pause_ms after the corrected end
    np.testing.assert_array_equal(p1.pcm, pcm[0 * 160 : 23 * 160])  # from the stream's start: pre-roll
    assert (p2.start, p2.end) == (end.start, end.end) == (100, 940 - 40) and t2 - 200 == p2.end
    np.testing.assert_array_equal(p2.pcm, end.pcm)
    assert t_end - 300 == end.end  # TurnEnd's own timing is unchanged by the pauses
    # Without pause_ms: the same turn, no SpeechPaused.
    plain = _feed(
        TurnSegmenter(
            Scripted(d, offset_lag_ms=40),
            VadSettings(start_hangover_ms=20, stop_hangover_ms=300, min_turn_ms=100),
            8000,
        ),
        pcm,
    )
    assert [type(e) for _, e in plain] == [SpeechStart, TurnEnd]
    assert (plain[1][1].start, plain[1][1].end) == (end.start, end.end)  # type: ignore[union-attr]


def test_no_speech_paused_for_a_turn_that_would_be_dropped() -> None:
    d = [0.0] * 5 + [1.0] * 4 + [0.0] * 20
    seg = TurnSegmenter(
        Scripted(d),
        VadSettings(start_hangover_ms=20, stop_hangover_ms=200, min_turn_ms=200, pause_ms=60),
        8000,
    )
    assert [type(e) for _, e in _feed(seg, _frames_pcm(len(d)))] == [SpeechStart, TurnTooShort]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="backend"):
        VadSettings(backend="energy")
    with pytest.raises(ValueError, match="aggressiveness"):
        VadSettings(aggressiveness=4)
    with pytest.raises(ValueError, match="threshold"):
        VadSettings(threshold=1.0)
    with pytest.raises(ValueError, match="max_turn_ms"):
        VadSettings(min_turn_ms=500, max_turn_ms=400)
    with pytest.raises(ValueError, match="pause_ms"):
        VadSettings(stop_hangover_ms=500, pause_ms=500)
    with pytest.raises(ValueError, match="preroll_ms"):
        VadSettings(preroll_ms=-20)
    seg = make_segmenter(VadSettings(backend="webrtc"), 8000)
    with pytest.raises(ValueError, match="160 int16"):
        seg.process(np.zeros(320, dtype=np.int16))


# ---------------------------------------------------------------- backends


def test_silero_runs_without_torch_or_the_silero_package() -> None:
    code = (
        "import sys, numpy as np\n"
        "from audio.vad import SileroVad\n"
        "v = SileroVad(8000)\n"
        "v.speech_prob(np.zeros(160, np.int16))\n"
        "bad = [m for m in ('torch', 'silero_vad') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert silero_model_path().name == "silero_vad.onnx"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_backends_score_speech_high_and_silence_low(
    rate: int, sentences_16k: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    scene = SceneBuilder(16000).silence(500).speech(sentences_16k[0]).build()
    if rate == 8000:
        scene = telephone_band(scene)
    pcm = scene.int16()
    n = rate // 50
    s0, s1 = (int(t * rate / 1000) for t in scene.turns[0])
    for clf in (SileroVad(rate), WebRtcVad(rate, 2)):
        probs = np.array([clf.speech_prob(pcm[i : i + n]) for i in range(0, len(pcm) - n + 1, n)])
        frame_t = np.arange(len(probs)) * 20
        speech = probs[(frame_t >= s0 * 1000 / rate + 100) & (frame_t < s1 * 1000 / rate - 100)]
        silence = probs[frame_t < 400]
        assert speech.mean() > 0.7, type(clf).__name__
        assert silence.max() < 0.5, type(clf).__name__
    with pytest.raises(ValueError, match="aggressiveness"):
        WebRtcVad(8000, 5)
    with pytest.raises(ValueError, match="8000"):
        SileroVad(44100)


# ---------------------------------------------------------------- real speech, known boundaries


def _call_scene(sentences: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]) -> Scene:
    """Two sentences in light background noise (-50 dBFS), with a loud 0.6 s white-noise burst
    (-21 dBFS RMS, louder than the speech) in the gap between them."""
    return (
        SceneBuilder(16000, seed=5)
        .silence(1000)
        .speech(sentences[0], gain=0.7)
        .silence(900)
        .burst(600, rms=0.09)
        .silence(900)
        .speech(sentences[1], gain=0.5)
        .silence(1200)
        .build(noise_rms=0.003)
    )


@pytest.mark.parametrize("band", ["wideband16k", "telephone8k"])
def test_default_segmenter_on_speech_with_noise_burst(
    band: str, sentences_16k: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    scene = _call_scene(sentences_16k)
    if band == "telephone8k":
        scene = telephone_band(scene)
    settings = VadSettings()  # the shipped defaults (silero)
    seg = make_segmenter(settings, scene.sample_rate)
    events = _feed(seg, scene.int16())
    turns = [(t, e) for t, e in events if isinstance(e, TurnEnd)]
    starts = [e for _, e in events if isinstance(e, SpeechStart)]
    assert not [e for _, e in events if isinstance(e, TurnTooShort)]
    assert len(turns) == 2 and len(starts) == 2, [e for _, e in events]  # the burst made no turn at all
    for (t_emit, turn), start, (t0, t1) in zip(turns, starts, scene.turns, strict=True):
        assert abs(turn.start - t0) <= TOLERANCE_MS, (turn.start, t0)
        assert abs(turn.end - t1) <= TOLERANCE_MS, (turn.end, t1)
        assert start.t == turn.start and turn.reason == "silence"
        assert t_emit - settings.stop_hangover_ms == turn.end
        assert turn.preroll_ms == 200  # the shipped pre-roll, all of it (the scene had silence before)
        assert len(turn.pcm) == (turn.end - turn.start + 200) * scene.sample_rate // 1000
    burst0, burst1 = scene.bursts[0]
    assert all(turn.end <= burst0 or turn.start >= burst1 for _, turn in turns)


def test_webrtc_finds_both_sentences_in_quiet(
    sentences_16k: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    scene = SceneBuilder(16000).silence(800).speech(sentences_16k[0]).silence(1200).speech(sentences_16k[1])
    built = scene.silence(1000).build()
    seg = make_segmenter(VadSettings(backend="webrtc", aggressiveness=3), 16000)
    turns = [e for _, e in _feed(seg, built.int16()) if isinstance(e, TurnEnd)]
    assert len(turns) == 2
    for turn, (t0, t1) in zip(turns, built.turns, strict=True):
        assert abs(turn.start - t0) <= TOLERANCE_MS and abs(turn.end - t1) <= TOLERANCE_MS, (turn, t0, t1)


@pytest.mark.parametrize("band", ["wideband16k", "telephone8k"])
def test_gated_silero_finds_the_same_turns_and_sleeps_through_quiet(
    band: str, sentences_16k: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    """vad.gate: Silero runs only around sound, yet the turns are Silero's own (the lead-in is replayed)."""
    scene = (
        SceneBuilder(16000, seed=3)
        .silence(3000)
        .speech(sentences_16k[0], gain=0.5)
        .silence(3000)
        .speech(sentences_16k[1], gain=0.5)
        .silence(3000)
        .build(noise_rms=0.002)  # -54 dBFS line noise
    )
    if band == "telephone8k":
        scene = telephone_band(scene)
    pcm = scene.int16()
    plain = [e for _, e in _feed(make_segmenter(VadSettings(), scene.sample_rate), pcm)]
    gated_seg = make_segmenter(VadSettings(gate=True), scene.sample_rate)
    gated = [e for _, e in _feed(gated_seg, pcm)]
    spans = [[(e.start, e.end) for e in events if isinstance(e, TurnEnd)] for events in (plain, gated)]
    assert len(spans[0]) == len(spans[1]) == 2, spans
    for (a0, a1), (b0, b1), (t0, t1) in zip(*spans, scene.turns, strict=True):
        assert abs(b0 - t0) <= TOLERANCE_MS and abs(b1 - t1) <= TOLERANCE_MS, (spans, scene.turns)
        assert abs(a0 - b0) <= 60 and abs(a1 - b1) <= 60, spans  # within 3 frames of Silero alone
    classifier = gated_seg.classifier
    assert isinstance(classifier, GatedSilero)
    # Asleep through the 9 s of line noise (450 frames): Silero ran on the speech and ~1 s after each turn.
    speech_frames = sum(t1 - t0 for t0, t1 in scene.turns) // 20
    assert classifier.frames_scored < speech_frames + 2 * 60, (classifier.frames_scored, speech_frames)
