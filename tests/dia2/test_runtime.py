"""Runtime behaviour beyond the fixture's greedy cases: seeds, dtypes, options, hooks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dia2.generate import GenerationOptions
from dia2.prefix import PrefixPlan
from dia2.runtime import Dia2
from dia2.sampling import SamplingParams

SCRIPT = "[S1] Hello, this is a verification call."


def test_seed_reproduces_a_sampled_run(runtime: Dia2) -> None:
    runs = [
        runtime.generate(SCRIPT, temperature=0.9, top_k=30, seed=s, max_steps=40, decode=False).audio_tokens
        for s in (5, 5, 6)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert runs[0].shape != runs[2].shape or not torch.equal(runs[0], runs[2])
    assert int(runs[0].max()) < 2048 and int(runs[0].min()) >= 0


def test_on_step_hook_sees_every_step(
    runtime: Dia2,
    inputs: dict[str, Any],
    ref_json: dict[str, Any],
    case_options: dict[str, GenerationOptions],
) -> None:
    seen: list[int] = []
    runtime.generate(
        inputs["cases"]["capped"]["script"],
        options=case_options["capped"],
        on_step=seen.append,
        decode=False,
    )
    assert seen == list(range(ref_json["cases"]["capped"]["generation_steps"]))


def test_include_prefix_audio_keeps_prefix(
    runtime: Dia2,
    inputs: dict[str, Any],
    prefix_plan: PrefixPlan,
    ref_arrays: dict[str, np.ndarray],
    case_options: dict[str, GenerationOptions],
) -> None:
    case = inputs["cases"]["prefix"]
    base = case_options["prefix"]
    opts = GenerationOptions(**{**base.__dict__, "include_prefix_audio": True})
    res = runtime.generate(case["script"], prefix=prefix_plan, options=opts, decode=False)
    assert res.details.crop_frames == 0
    np.testing.assert_array_equal(res.audio_tokens.numpy(), ref_arrays["prefix_audio_aligned_uncropped"])


def test_consistent_positions_option_is_off_by_default(
    runtime: Dia2, inputs: dict[str, Any], prefix_plan: PrefixPlan, case_options: dict[str, GenerationOptions]
) -> None:
    case = inputs["cases"]["prefix"]
    base = case_options["prefix"]
    assert base.prefix_consistent_positions is False
    opts = GenerationOptions(**{**base.__dict__, "prefix_consistent_positions": True, "max_steps": 5})
    res = runtime.generate(case["script"], prefix=prefix_plan, options=opts, trace=True, decode=False)
    trace = res.trace
    assert trace is not None
    gen = [i for i, w in enumerate(trace.is_warmup) if not w]
    assert all(trace.positions[i] == trace.cache_index[i] for i in gen)


def test_bfloat16_on_cpu_runs_the_greedy_case(
    fixture_dir: Any, inputs: dict[str, Any], runtime: Dia2, case_options: dict[str, GenerationOptions]
) -> None:
    bf16 = Dia2(runtime.config, _bf16_model(fixture_dir), runtime.tokenizer, runtime.mimi)
    res = bf16.generate(inputs["cases"]["greedy"]["script"], options=case_options["greedy"])
    assert res.audio_tokens.dtype == torch.long
    assert res.audio_tokens.shape[0] == 32
    assert torch.isfinite(res.waveform).all()


def _bf16_model(fixture_dir: Any):
    from dia2.checkpoint import load_model

    return load_model(fixture_dir / "config.json", fixture_dir / "model.safetensors", dtype="bfloat16")


def test_greedy_options_need_no_generator(runtime: Dia2) -> None:
    greedy = SamplingParams(0.0, 1)
    opts = GenerationOptions(text=greedy, audio=greedy, cfg_scale=1.0, max_steps=20)
    a = runtime.generate(SCRIPT, options=opts, decode=False).audio_tokens
    b = runtime.generate(SCRIPT, options=opts, decode=False).audio_tokens
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_max_steps_validation(runtime: Dia2) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        runtime.generate(SCRIPT, options=GenerationOptions(max_steps=-1), decode=False)
