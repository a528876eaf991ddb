"""Shared fixtures of the Dia2 tests: the reference fixture folder and a runtime loaded from it.

The folder comes from ``DIA2_FIXTURE_DIR`` (default ``tests/fixtures/dia2-tiny``), so the same
parity tests can be pointed at any fixture produced the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dia2.generate import GenerationOptions
from dia2.prefix import PrefixPlan, PrefixSpeaker, PrefixWord, load_prefix_audio
from dia2.runtime import Dia2, GenerationResult
from dia2.sampling import SamplingParams

# This VM has 2 shared vCPUs; with 2 intra-op threads torch gets 10-30x slower here.
torch.set_num_threads(1)

DEFAULT_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dia2-tiny"
GENERATION_CASES = ("greedy", "prefix", "cfg", "capped")


def dia2_fixture_path() -> Path:
    return Path(os.environ.get("DIA2_FIXTURE_DIR") or DEFAULT_FIXTURE)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    folder = dia2_fixture_path()
    if not (folder / "reference.npz").is_file():
        pytest.fail(f"Dia2 fixture not found at {folder} (set DIA2_FIXTURE_DIR)")
    return folder


@pytest.fixture(scope="session")
def ref_arrays(fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixture_dir / "reference.npz") as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="session")
def ref_json(fixture_dir: Path) -> dict[str, Any]:
    return json.loads((fixture_dir / "reference.json").read_text())


@pytest.fixture(scope="session")
def inputs(fixture_dir: Path) -> dict[str, Any]:
    return json.loads((fixture_dir / "inputs.json").read_text())


@pytest.fixture(scope="session")
def runtime(fixture_dir: Path, inputs: dict[str, Any]) -> Dia2:
    # The fixture's config names kyutai/mimi like a production config; its stand-in codec is mimi/.
    return Dia2.from_pretrained(
        fixture_dir, device="cpu", dtype="float32", mimi=fixture_dir / inputs["mimi"]["path"]
    )


def prefix_speakers(fixture_dir: Path, inputs: dict[str, Any]) -> list[PrefixSpeaker]:
    speakers = []
    for key in ("speaker_1", "speaker_2"):
        spec = inputs["prefix"].get(key)
        if spec is None:
            continue
        audio = load_prefix_audio(fixture_dir / spec["wav"], 24000)
        speakers.append(PrefixSpeaker(audio, tuple(PrefixWord(**w) for w in spec["words"])))
    return speakers


@pytest.fixture(scope="session")
def prefix_plan(runtime: Dia2, fixture_dir: Path, inputs: dict[str, Any]) -> PrefixPlan:
    speakers = prefix_speakers(fixture_dir, inputs)
    return runtime.prefix_plan(speakers[0], speakers[1] if len(speakers) > 1 else None)


def options_for(case: dict[str, Any]) -> GenerationOptions:
    gen = case["generation_config"]
    return GenerationOptions(
        text=SamplingParams(gen["text"]["temperature"], gen["text"]["top_k"]),
        audio=SamplingParams(gen["audio"]["temperature"], gen["audio"]["top_k"]),
        cfg_scale=gen["cfg_scale"],
        cfg_filter_k=gen["cfg_filter_k"],
        initial_padding=gen["initial_padding"],
        max_steps=case["max_context_steps"],
        include_prefix_audio=bool(gen["prefix"] and gen["prefix"]["include_audio"]),
    )


@pytest.fixture(scope="session")
def case_results(
    runtime: Dia2, inputs: dict[str, Any], prefix_plan: PrefixPlan
) -> dict[str, GenerationResult]:
    """Every generation case of the fixture, run once per session with the trace recorded."""
    results = {}
    for name in GENERATION_CASES:
        case = inputs["cases"][name]
        prefix = prefix_plan if case["generation_config"]["prefix"] else None
        results[name] = runtime.generate(case["script"], prefix=prefix, options=options_for(case), trace=True)
    return results
