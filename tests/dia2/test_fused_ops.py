"""Exactness of the fused path's rewrites that save operators per frame (dia2/fused.py, issue 23)."""

from __future__ import annotations

import pytest
import torch

from dia2.fused import rope_signed, signed_sin
from dia2.model import apply_rope, rope_table


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_with_a_signed_sine_is_bit_identical(dtype: torch.dtype) -> None:
    cos, sin = rope_table(8, 1.0, 10000.0, 40, torch.device("cpu"))
    x = torch.randn(3, 2, 40, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    c, s = cos.to(dtype), sin.to(dtype)
    assert torch.equal(rope_signed(x, c, signed_sin(sin).to(dtype)), apply_rope(x, c, s))
