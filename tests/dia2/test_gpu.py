"""CUDA runs of the fixture cases (skipped without a GPU; bench/dia2_gpu_parity.py runs them anywhere).

float32 on CUDA must reproduce the CPU reference tokens; bfloat16 may differ, so it only reports the
agreement (run with ``-s`` to see it) and checks that the outputs are well formed.
"""

from __future__ import annotations

import pytest
import torch

from dia2.reference import ReferenceFixture, step_token_agreement

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_cases(reference: ReferenceFixture, dtype: str) -> None:
    results = reference.run_cases(reference.load_runtime("cuda", dtype))
    for name, res in results.items():
        agreement = step_token_agreement(res, reference.arrays[f"{name}_step_tokens"])
        print(f"[{dtype}] {name}: {agreement}")
        assert res.audio_tokens.min() >= 0 and res.audio_tokens.max() < 2048
        assert torch.isfinite(res.waveform).all()
        if dtype == "float32":
            assert agreement["exact"], f"cuda float32 {name}: {agreement}"
