"""CUDA runs of the fixture cases (skipped without a GPU; the lead runs these on the lent machine).

float32 on CUDA must reproduce the CPU reference tokens; bfloat16 may differ, so it only reports the
agreement (run with ``-s`` to see it) and checks that the outputs are well formed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dia2.runtime import Dia2

from .conftest import GENERATION_CASES, options_for, prefix_speakers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _run_cases(fixture_dir: Path, inputs: dict[str, Any], dtype: str) -> dict[str, Any]:
    rt = Dia2.from_pretrained(
        fixture_dir, device="cuda", dtype=dtype, mimi=fixture_dir / inputs["mimi"]["path"]
    )
    speakers = prefix_speakers(fixture_dir, inputs)
    plan = rt.prefix_plan(speakers[0], speakers[1] if len(speakers) > 1 else None)
    out = {}
    for name in GENERATION_CASES:
        case = inputs["cases"][name]
        prefix = plan if case["generation_config"]["prefix"] else None
        out[name] = rt.generate(case["script"], prefix=prefix, options=options_for(case), trace=True)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_cases(
    fixture_dir: Path, inputs: dict[str, Any], ref_arrays: dict[str, np.ndarray], dtype: str
) -> None:
    results = _run_cases(fixture_dir, inputs, dtype)
    for name, res in results.items():
        ours = np.stack([t.numpy() for t in res.trace.step_tokens])
        ref = ref_arrays[f"{name}_step_tokens"]
        n = min(len(ours), len(ref))
        agree = float((ours[:n] == ref[:n]).mean()) if n else 0.0
        print(f"[{dtype}] {name}: steps {len(ours)} vs {len(ref)}, step-token agreement {agree:.4f}")
        assert res.audio_tokens.min() >= 0 and res.audio_tokens.max() < 2048
        assert torch.isfinite(res.waveform).all()
        if dtype == "float32":
            np.testing.assert_array_equal(ours, ref, err_msg=f"cuda float32 {name}")
