"""Tokenizer, script parsing and the state machine, checked against upstream's recorded behaviour."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dia2.runtime import Dia2
from dia2.script import normalize_script, parse_script
from dia2.state_machine import Entry, StateMachine

from .conftest import GENERATION_CASES


def _entries(raw: list[dict[str, Any]]) -> list[Entry]:
    return [Entry(tokens=tuple(e["tokens"]), text=e["text"], padding=e["padding"]) for e in raw]


def test_token_ids(runtime: Dia2, ref_json: dict[str, Any]) -> None:
    ids = ref_json["token_ids"]
    assert runtime.tokenizer.bos_token_id == 0  # what the tokenizer declares...
    assert runtime.ids.bos == ids["bos"] == 1  # ...and what upstream's `or 1` turns it into
    assert (runtime.ids.spk1, runtime.ids.spk2) == (ids["spk1"], ids["spk2"])
    assert (runtime.ids.new_word, runtime.ids.pad, runtime.ids.zero) == (
        ids["new_word"],
        ids["pad"],
        ids["zero"],
    )
    assert (runtime.ids.audio_bos, runtime.ids.audio_pad) == (ids["audio_bos"], ids["audio_pad"])
    assert runtime.ids.ungenerated == ids["ungenerated"]


@pytest.mark.parametrize("case", GENERATION_CASES)
def test_script_entries_match_upstream(runtime: Dia2, ref_json: dict[str, Any], case: str) -> None:
    expected = _entries(ref_json["cases"][case]["entries_script"])
    assert runtime.script_entries(ref_json["cases"][case]["script"]) == expected


def test_script_quirks(runtime: Dia2) -> None:
    ids = runtime.ids
    tok = runtime.tokenizer
    # A script that opens with [S2] still gets [S1] prepended (upstream parses one line, index 0).
    first = runtime.script_entries("[S2] Yes, hello.")[0]
    assert first.tokens[:2] == (ids.spk1, ids.spk2)
    # Untagged scripts are speaker 1.
    assert runtime.script_entries("hello.")[0].tokens[0] == ids.spk1
    # Pauses become token-less entries of round(seconds * 12.5) frames; ':' is a separator.
    entries = parse_script('[S1] Hi:there <break time="0.4s"/> call.', tok, ids, 12.5)
    assert [e.text for e in entries] == ["Hi", "there", "", "call."]
    assert entries[2] == Entry(tokens=(), text="", padding=5)
    assert entries[3].padding == len(entries[3].tokens)
    assert normalize_script(["  [S1] a ", "b  "]) == "[S1] a\nb"


@pytest.mark.parametrize("case", GENERATION_CASES)
def test_state_machine_replays_upstream_trace(
    runtime: Dia2, ref_json: dict[str, Any], ref_arrays: dict[str, np.ndarray], case: str
) -> None:
    """Feed the recorded inputs of every state-machine call; outputs must equal upstream's."""
    info = ref_json["cases"][case]
    entries = _entries(info.get("prefix_entries", [])) + _entries(info["entries_script"])
    machine = StateMachine(runtime.ids, second_stream_ahead=2, max_padding=6, initial_padding=2)
    state = machine.new_state(entries)
    for step, token, forced, main, second, consumed in ref_arrays[f"{case}_machine_trace"].tolist():
        out = machine.process(step, state, token, forced=bool(forced))
        assert (out.main, out.second, int(out.consumed_new_word)) == (main, second, consumed), f"step {step}"
    assert state.end_step == info["end_step"]
    assert state.consumption_times == info["consumption_times"]
    assert [[w, s] for w, s in state.transcript] == info["transcript"]


def test_state_machine_rules(runtime: Dia2) -> None:
    ids = runtime.ids
    words = [Entry((100, 101), "ab", 2), Entry((102,), "c", 1), Entry((103,), "d", 1), Entry((104,), "e", 1)]
    machine = StateMachine(ids, second_stream_ahead=2, max_padding=6, initial_padding=2)
    state = machine.new_state(words)
    # Initial padding: a new-word action is refused for 2 frames.
    assert machine.process(0, state, 1).main == ids.pad
    assert machine.process(1, state, 1).main == ids.pad
    out = machine.process(2, state, 1)
    # New word: marker on the second stream, first piece on the main stream.
    assert (out.main, out.second, out.consumed_new_word) == (100, ids.new_word, True)
    # Next frame: the second piece, and the look-ahead word (2 entries ahead: "d") on stream 2.
    out = machine.process(3, state, 1)
    assert (out.main, out.second) == (101, 103)
    # Padding budget 6: after 6 pads the machine forces the next word.
    outs = [machine.process(4 + i, state, 0) for i in range(7)]
    assert [o.consumed_new_word for o in outs] == [False] * 5 + [True, False]
