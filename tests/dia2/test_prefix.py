"""Conversation prefix: audio loading, Mimi codes, entries and warm-up plan against upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dia2.prefix import PrefixPlan, PrefixWord, load_prefix_audio, load_words_json, words_to_entries
from dia2.runtime import Dia2


def test_prefix_pcm_and_codes(
    runtime: Dia2, fixture_dir: Path, inputs: dict[str, Any], ref_arrays: dict[str, np.ndarray]
) -> None:
    for key, short in (("speaker_1", "s1"), ("speaker_2", "s2")):
        audio = load_prefix_audio(fixture_dir / inputs["prefix"][key]["wav"], 24000)
        np.testing.assert_array_equal(audio.numpy(), ref_arrays[f"prefix_{short}_pcm"])
        codes = runtime.mimi.encode(audio)
        np.testing.assert_array_equal(codes.numpy(), ref_arrays[f"prefix_{short}_codes"])


def test_prefix_plan(
    prefix_plan: PrefixPlan, ref_arrays: dict[str, np.ndarray], ref_json: dict[str, Any]
) -> None:
    np.testing.assert_array_equal(
        prefix_plan.aligned_tokens.numpy(), ref_arrays["prefix_plan_aligned_tokens"]
    )
    np.testing.assert_array_equal(
        np.asarray(prefix_plan.new_word_steps), ref_arrays["prefix_plan_new_word_steps"]
    )
    info = ref_json["cases"]["prefix"]
    assert prefix_plan.aligned_frames == info["prefix_aligned_frames"]
    expected = [(tuple(e["tokens"]), e["text"], e["padding"]) for e in info["prefix_entries"]]
    assert [(e.tokens, e.text, e.padding) for e in prefix_plan.entries] == expected


def test_words_to_entries_rules(runtime: Dia2) -> None:
    words = [PrefixWord("Good", 0.0, 0.1), PrefixWord("morning,", 0.08, 0.9)]
    entries, steps = words_to_entries(words, runtime.tokenizer, "[S1]", 12.5)
    # The first word carries the speaker tag and starts no earlier than frame 1.
    assert entries[0].tokens[0] == runtime.ids.spk1
    assert steps[0] == 0
    # The second word cannot start before the first word's pieces are out (start 1 + 2 pieces).
    assert steps[1] == 1 + len(entries[0].tokens)
    # The last word pads up to its own end time (0.9 s → frame 11).
    start2 = steps[1] + 1
    assert entries[1].padding == max(0, max(start2 + len(entries[1].tokens) + 1, 11) - start2 - 1)


def test_load_words_json(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(
        '{"words": [{"text": " Hi ", "start": 0.1, "end": 0.3}, {"word": "", "start": 1, "end": 2}]}'
    )
    assert load_words_json(path) == (PrefixWord("Hi", 0.1, 0.3),)
