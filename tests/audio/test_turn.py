"""End of turn: our Whisper features against transformers', the Smart Turn model from the pipecat wheel, the
word rule. (Accuracy is a bench: bench/turn_eot.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from audio.testsignals import espeak
from audio.turn import SmartTurn, fit_window, log_mel, smart_turn_model_path
from audio.turn.features import N_FRAMES, N_MELS, WINDOW_SAMPLES
from audio.turn.words import ends_sentence, ends_unfinished


def test_features_match_transformers_whisper_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    speech = espeak("Yes, she worked for us as a nurse for three years.", 16000)
    noise = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.01
    window = fit_window(np.concatenate([speech, noise]))
    ref = WhisperFeatureExtractor(chunk_length=8)(
        window,
        sampling_rate=16000,
        padding="max_length",
        max_length=WINDOW_SAMPLES,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features[0]
    ours = log_mel(window)
    assert ours.shape == ref.shape == (N_MELS, N_FRAMES) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-4


def test_window_keeps_the_end_and_pads_the_front() -> None:
    short = np.ones(16000, np.float32)
    w = fit_window(short)
    assert len(w) == WINDOW_SAMPLES and w[-16000:].all() and not w[:-16000].any()
    long = np.arange(WINDOW_SAMPLES + 5, dtype=np.float32)
    assert fit_window(long)[0] == 5.0  # the first 5 samples fell off the front
    with pytest.raises(ValueError, match="128000"):
        log_mel(short)


def test_smart_turn_loads_from_the_wheel_and_scores_8k_and_16k() -> None:
    assert smart_turn_model_path().name == "smart-turn-v3.2-cpu.onnx"
    model = SmartTurn()
    speech16 = espeak("Can you send the request by email?", 16000)
    p16 = model.complete_prob(speech16, 16000)
    pcm8 = (espeak("Can you send the request by email?", 8000) * 20000).astype(np.int16)
    p8 = model.complete_prob(pcm8, 8000)
    assert 0.0 <= p8 <= 1.0 and 0.0 <= p16 <= 1.0
    assert p16 == model.complete_prob(speech16, 16000)  # no state between runs
    # A question ending a sentence vs the same audio cut in the middle of its last word: the model must
    # hear the difference (measured 0.93 vs < 0.1 at 16 kHz on the development VM).
    cut = speech16[: int(len(speech16) * 0.55)]
    assert model.complete_prob(cut, 16000) < p16
    assert model.complete_prob(np.zeros(0, np.int16), 8000) == 0.0


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("Yes, that is correct.", False),
        ("He worked here for five years.", False),
        ("I worked there from", True),
        ("I worked there from.", True),  # Whisper puts a full stop on most things
        ("My name is John and...", True),
        ("The dates were, um", True),
        ("So,", True),
        ("", False),
    ],
)
def test_word_rule(text: str, unfinished: bool) -> None:
    assert ends_unfinished(text) is unfinished


def test_sentence_rule_needs_a_full_stop_and_no_continuation_word() -> None:
    assert ends_sentence("Yes, that is correct.") and ends_sentence("Can you send it by email?")
    assert not ends_sentence("Yes that is correct")  # no stop: Whisper heard no end
    assert not ends_sentence("I worked there from.") and not ends_sentence("")
