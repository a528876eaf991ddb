"""Shared fixtures of the Dia2 tests: the reference fixture folder and a runtime loaded from it.

The folder comes from ``DIA2_FIXTURE_DIR`` (default ``tests/fixtures/dia2-tiny``), so the same
parity tests can be pointed at any fixture produced the same way. Running the cases is
``dia2.reference``'s job, shared with ``bench/dia2_gpu_parity.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported: any test module collected before
# test_kernels.py that pulls Triton in (through transformers, torch._dynamo) would otherwise fix it off
# and every interpreter test would fail in a whole-suite run. Set it before anything imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dia2.generate import GenerationOptions
from dia2.prefix import PrefixPlan
from dia2.reference import GENERATION_CASES, ReferenceFixture
from dia2.runtime import Dia2, GenerationResult

# This VM has 2 shared vCPUs; with 2 intra-op threads torch gets 10-30x slower here.
torch.set_num_threads(1)

DEFAULT_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"

__all__ = ["GENERATION_CASES", "dia2_fixture_path"]


def dia2_fixture_path() -> Path:
    return Path(os.environ.get("DIA2_FIXTURE_DIR") or DEFAULT_FIXTURE)


@pytest.fixture(scope="session")
def reference() -> ReferenceFixture:
    folder = dia2_fixture_path()
    try:
        return ReferenceFixture.load(folder)
    except FileNotFoundError as exc:
        pytest.fail(f"{exc} (set DIA2_FIXTURE_DIR)")


@pytest.fixture(scope="session")
def fixture_dir(reference: ReferenceFixture) -> Path:
    return reference.folder


@pytest.fixture(scope="session")
def ref_arrays(reference: ReferenceFixture) -> dict[str, np.ndarray]:
    return reference.arrays


@pytest.fixture(scope="session")
def ref_json(reference: ReferenceFixture) -> dict[str, Any]:
    return reference.reference


@pytest.fixture(scope="session")
def inputs(reference: ReferenceFixture) -> dict[str, Any]:
    return reference.inputs


@pytest.fixture(scope="session")
def runtime(reference: ReferenceFixture) -> Dia2:
    return reference.load_runtime("cpu", "float32")


@pytest.fixture(scope="session")
def prefix_plan(runtime: Dia2, reference: ReferenceFixture) -> PrefixPlan:
    return reference.prefix_plan(runtime)


@pytest.fixture(scope="session")
def case_options(reference: ReferenceFixture) -> dict[str, GenerationOptions]:
    return {name: reference.options(name) for name in reference.inputs["cases"]}


@pytest.fixture(scope="session")
def case_results(
    runtime: Dia2, reference: ReferenceFixture, prefix_plan: PrefixPlan
) -> dict[str, GenerationResult]:
    """Every generation case of the fixture, run once per session with the trace recorded."""
    return reference.run_cases(runtime, plan=prefix_plan)
