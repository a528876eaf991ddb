"""What the Triton kernel tests share: the device they run on and how close a kernel must come to the torch
math it replaces. Without CUDA the kernels run in Triton's CPU interpreter: tests/dia2/conftest.py sets
``TRITON_INTERPRET=1`` before anything imports Triton (it is read once, at Triton's import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Largest relative error (of the reference's largest value) a kernel may show: float32 sums in another
# order than torch does; bfloat16 rounds its inputs (and a flash-style p·V its probabilities); float16 the
# same with 3 more mantissa bits (8x finer).
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2.5e-3}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a``'s largest error against ``b``, relative to ``b``'s largest magnitude."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


ROOT = Path(__file__).resolve().parents[2]


def compile_apart(script: str, *args: str, timeout: float = 300, **env: str) -> Any:
    """Run a Triton compile ``script`` (its last stdout line is JSON) in a fresh interpreter without
    ``TRITON_INTERPRET``: this process imported Triton in interpreter mode, which cannot compile."""
    child = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    for key, value in env.items():
        child.setdefault(key, value)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=child,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
