"""End-to-end parity with upstream for every generation case of the fixture (greedy decoding).

Integer arrays must match exactly; float arrays within 1e-5 of the reference's largest magnitude.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dia2.runtime import GenerationResult

from .conftest import GENERATION_CASES
from .parity import assert_close_rel

pytestmark = pytest.mark.parametrize("case", GENERATION_CASES)


def _trace_arrays(result: GenerationResult) -> dict[str, np.ndarray]:
    trace = result.trace
    assert trace is not None
    return {
        "step_tokens": np.stack([t.numpy() for t in trace.step_tokens]),
        "step_positions": np.asarray(trace.positions, dtype=np.int64),
        "step_cache_index": np.asarray(trace.cache_index, dtype=np.int64),
        "step_is_warmup": np.asarray(trace.is_warmup, dtype=bool),
        "step_action_logits": np.stack([t.numpy() for t in trace.action_logits]),
        "machine_trace": np.asarray(trace.machine, dtype=np.int64),
    }


@pytest.mark.parametrize(
    "name",
    ["step_tokens", "step_positions", "step_cache_index", "step_is_warmup", "machine_trace"],
)
def test_step_integers_exact(
    case: str, name: str, case_results: dict[str, GenerationResult], ref_arrays: dict[str, np.ndarray]
) -> None:
    ours = _trace_arrays(case_results[case])[name]
    expected = ref_arrays[f"{case}_{name}"]
    assert ours.shape == expected.shape, f"{case}_{name}: shape {ours.shape} != {expected.shape}"
    mismatch = np.argwhere(ours != expected)
    assert mismatch.size == 0, f"{case}_{name}: first mismatches at {mismatch[:5].tolist()}"


def test_step_action_logits(
    case: str, case_results: dict[str, GenerationResult], ref_arrays: dict[str, np.ndarray]
) -> None:
    ours = _trace_arrays(case_results[case])["step_action_logits"]
    assert_close_rel(ours, ref_arrays[f"{case}_step_action_logits"], f"{case}_step_action_logits")


@pytest.mark.parametrize("name", ["audio_delayed", "audio_aligned_uncropped", "audio_tokens"])
def test_audio_grids_exact(
    case: str, name: str, case_results: dict[str, GenerationResult], ref_arrays: dict[str, np.ndarray]
) -> None:
    details = case_results[case].details
    ours = {
        "audio_delayed": details.audio_delayed,
        "audio_aligned_uncropped": details.audio_aligned_uncropped,
        "audio_tokens": case_results[case].audio_tokens,
    }[name].numpy()
    np.testing.assert_array_equal(ours, ref_arrays[f"{case}_{name}"], err_msg=f"{case}_{name}")


def test_waveform(
    case: str, case_results: dict[str, GenerationResult], ref_arrays: dict[str, np.ndarray]
) -> None:
    result = case_results[case]
    assert result.sample_rate == 24000
    assert_close_rel(result.waveform.numpy(), ref_arrays[f"{case}_waveform"], f"{case}_waveform")


def test_reference_json_fields(
    case: str, case_results: dict[str, GenerationResult], ref_json: dict[str, Any]
) -> None:
    expected = ref_json["cases"][case]
    result = case_results[case]
    d = result.details
    trace = result.trace
    assert trace is not None
    assert d.start_step == expected["start_step"]
    assert d.first_word_frame == expected["first_word_frame"]
    assert d.crop_frames == expected["crop_frames"]
    assert d.end_step == expected["end_step"]
    assert d.last_generated_step == expected["last_generated_step"]
    assert sum(not w for w in trace.is_warmup) == expected["generation_steps"]
    assert sum(trace.is_warmup) == expected["warmup_steps"]
    assert d.audio_delayed.shape[-1] == expected["delayed_frames"]
    assert d.audio_aligned_uncropped.shape[-1] == expected["aligned_frames_uncropped"]
    assert result.audio_tokens.shape[-1] == expected["aligned_frames"]
    assert result.waveform.shape[-1] == expected["waveform_samples"]
    assert [[w, s] for w, s in d.transcript] == expected["transcript"]
    assert d.consumption_times == expected["consumption_times"]
    assert len(result.timestamps) == len(expected["timestamps"])
    for (word, sec), (ref_word, ref_sec) in zip(result.timestamps, expected["timestamps"], strict=True):
        assert word == ref_word
        assert sec == pytest.approx(ref_sec, abs=1e-9)
