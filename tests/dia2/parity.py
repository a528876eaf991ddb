"""Comparison helpers shared by the parity tests."""

from __future__ import annotations

import numpy as np


def assert_close_rel(actual: np.ndarray, expected: np.ndarray, name: str, rel: float = 1e-5) -> None:
    """Float parity rule of the fixture: max abs error ≤ rel × the reference's largest magnitude."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel} x {scale:.3g}"
