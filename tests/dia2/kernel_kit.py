"""What the Triton kernel tests share: the device they run on and how close a kernel must come to the torch
math it replaces. Without CUDA the kernels run in Triton's CPU interpreter: tests/dia2/conftest.py sets
``TRITON_INTERPRET=1`` before anything imports Triton (it is read once, at Triton's import)."""

from __future__ import annotations

import torch

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Largest relative error (of the reference's largest value) a kernel may show: float32 sums in another
# order than torch does; bfloat16 rounds its inputs (and a flash-style p·V its probabilities); float16 the
# same with 3 more mantissa bits (8x finer).
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2.5e-3}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a``'s largest error against ``b``, relative to ``b``'s largest magnitude."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())
